// Package cleanup undoes what kubectl-bridge did to a cluster: it plans the patches and deletes
// (restore a Service's selector first, so traffic flows to the original pods again, then delete
// the shadow Service, the agent Job and its RBAC, and session Leases) and carries them out,
// idempotently — an object already gone is not an error. The CLI on exit, the agent when its
// last session is gone, and `kubectl bridge clean` from any machine all use it.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"io"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/redirect"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

// Kinds of objects an Action works on, named as kubectl names them in output.
const (
	KindLease          = "lease.coordination.k8s.io"
	KindService        = "service"
	KindJob            = "job.batch"
	KindServiceAccount = "serviceaccount"
	KindRole           = "role.rbac.authorization.k8s.io"
	KindRoleBinding    = "rolebinding.rbac.authorization.k8s.io"
)

// Verbs of an Action.
const (
	VerbRestore = "restore"
	VerbDelete  = "delete"
)

// Action is one change cleanup makes.
type Action struct {
	Verb, Kind, Namespace, Name string
	// Patch is the merge patch of a restore, shown by dry runs.
	Patch []byte
}

func (a Action) String() string {
	return fmt.Sprintf("%s/%s -n %s", a.Kind, a.Name, a.Namespace)
}

// ServiceTeardown plans the undoing of a Service's intercept state: restore its selector, delete
// its shadow Service, its agent Job and the agent's RBAC. With an inventory, only objects that
// exist are planned (what a dry run shows); without, everything is planned and missing objects are
// skipped when carried out.
func ServiceTeardown(key inventory.ServiceKey, inv *inventory.Inventory) []Action {
	var acts []Action
	agent := objects.AgentName(key.Name)
	if inv == nil {
		acts = append(acts, Action{Verb: VerbRestore, Kind: KindService, Namespace: key.Namespace, Name: key.Name})
		acts = append(acts, Action{Verb: VerbDelete, Kind: KindService, Namespace: key.Namespace, Name: objects.ShadowName(key.Name)})
		acts = append(acts, Action{Verb: VerbDelete, Kind: KindJob, Namespace: key.Namespace, Name: agent})
		return append(acts, rbac(key.Namespace, agent)...)
	}
	for _, s := range inv.Switched {
		if s.Namespace == key.Namespace && s.Name == key.Name {
			patch, _ := redirect.RestorePatch(&s)
			acts = append(acts, Action{Verb: VerbRestore, Kind: KindService, Namespace: s.Namespace, Name: s.Name, Patch: patch})
		}
	}
	for _, s := range inv.Shadows {
		if s.Namespace == key.Namespace && s.Labels[objects.LabelService] == key.Name {
			acts = append(acts, Action{Verb: VerbDelete, Kind: KindService, Namespace: s.Namespace, Name: s.Name})
		}
	}
	for _, j := range inv.Agents {
		if j.Namespace == key.Namespace && j.Labels[objects.LabelService] == key.Name {
			acts = append(acts, Action{Verb: VerbDelete, Kind: KindJob, Namespace: j.Namespace, Name: j.Name})
			acts = append(acts, rbac(j.Namespace, j.Name)...)
		}
	}
	return acts
}

func rbac(ns, name string) []Action {
	return []Action{
		{Verb: VerbDelete, Kind: KindRoleBinding, Namespace: ns, Name: name},
		{Verb: VerbDelete, Kind: KindRole, Namespace: ns, Name: name},
		{Verb: VerbDelete, Kind: KindServiceAccount, Namespace: ns, Name: name},
	}
}

// SessionDelete plans the deletion of a session's Lease.
func SessionDelete(s session.Info) Action {
	return Action{Verb: VerbDelete, Kind: KindLease, Namespace: s.Lease.Namespace, Name: s.Lease.Name}
}

// Execute carries out the actions in order. Each one that changed something is reported to out
// kubectl-style ("service/api restored", "job.batch/x deleted", with "(dry run)" when dryRun; a
// dry-run restore also prints its patch). It goes on after a failure and returns every failure.
func Execute(ctx context.Context, client kubernetes.Interface, acts []Action, dryRun bool, out io.Writer) error {
	var errs []error
	suffix := ""
	if dryRun {
		suffix = " (dry run)"
	}
	for _, a := range acts {
		if dryRun {
			switch a.Verb {
			case VerbRestore:
				fmt.Fprintf(out, "%s/%s restored%s: patch %s\n", a.Kind, a.Name, suffix, a.Patch)
			default:
				fmt.Fprintf(out, "%s/%s deleted%s\n", a.Kind, a.Name, suffix)
			}
			continue
		}
		changed, err := execute(ctx, client, a)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s %s: %w", a.Verb, a, err))
		case changed && a.Verb == VerbRestore:
			fmt.Fprintf(out, "%s/%s restored\n", a.Kind, a.Name)
		case changed:
			fmt.Fprintf(out, "%s/%s deleted\n", a.Kind, a.Name)
		}
	}
	return errors.Join(errs...)
}

func execute(ctx context.Context, client kubernetes.Interface, a Action) (bool, error) {
	if a.Verb == VerbRestore {
		res, err := redirect.Restore(ctx, client.CoreV1(), a.Namespace, a.Name)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return res == redirect.Changed, err
	}
	// Only objects that carry our managed-by label are deleted, and only the very object that was
	// checked (UID precondition): a user's object that happens to have one of our names is safe.
	var (
		obj metav1.Object
		err error
		del func(context.Context, string, metav1.DeleteOptions) error
	)
	get := metav1.GetOptions{}
	switch a.Kind {
	case KindLease:
		c := client.CoordinationV1().Leases(a.Namespace)
		obj, err = c.Get(ctx, a.Name, get)
		del = c.Delete
	case KindService:
		c := client.CoreV1().Services(a.Namespace)
		obj, err = c.Get(ctx, a.Name, get)
		del = c.Delete
	case KindJob:
		c := client.BatchV1().Jobs(a.Namespace)
		obj, err = c.Get(ctx, a.Name, get)
		del = c.Delete
	case KindServiceAccount:
		c := client.CoreV1().ServiceAccounts(a.Namespace)
		obj, err = c.Get(ctx, a.Name, get)
		del = c.Delete
	case KindRole:
		c := client.RbacV1().Roles(a.Namespace)
		obj, err = c.Get(ctx, a.Name, get)
		del = c.Delete
	case KindRoleBinding:
		c := client.RbacV1().RoleBindings(a.Namespace)
		obj, err = c.Get(ctx, a.Name, get)
		del = c.Delete
	default:
		return false, fmt.Errorf("unknown kind %q", a.Kind)
	}
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if obj.GetLabels()[objects.LabelManagedBy] != objects.ManagedBy {
		return false, fmt.Errorf("not deleted: it is not labelled %s=%s, so kubectl-bridge did not create it", objects.LabelManagedBy, objects.ManagedBy)
	}
	uid := obj.GetUID()
	background := metav1.DeletePropagationBackground
	err = del(ctx, a.Name, metav1.DeleteOptions{PropagationPolicy: &background, Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}
