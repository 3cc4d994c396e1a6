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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
	// Service is the intercepted Service the action belongs to, if any: when its restore fails,
	// Execute deletes none of its other objects (the shadow Service holds a copy of the original
	// selector, and the agent keeps serving while the Service points at it).
	Service string
	// Owner, when set, restricts a delete to an object owned by that UID: what a retired agent
	// Job owned, never the same-named objects of a new agent another session has started.
	Owner types.UID
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
	svc := key.Name
	if inv == nil {
		acts = append(acts, Action{Verb: VerbRestore, Kind: KindService, Namespace: key.Namespace, Name: key.Name, Service: svc})
		acts = append(acts, Action{Verb: VerbDelete, Kind: KindService, Namespace: key.Namespace, Name: objects.ShadowName(key.Name), Service: svc})
		acts = append(acts, Action{Verb: VerbDelete, Kind: KindJob, Namespace: key.Namespace, Name: agent, Service: svc})
		return append(acts, AgentRBAC(key.Namespace, svc, "")...)
	}
	var shadow *corev1.Service
	for k, s := range inv.Shadows {
		if s.Namespace == key.Namespace && s.Labels[objects.LabelService] == key.Name {
			shadow = &inv.Shadows[k]
		}
	}
	for _, s := range inv.Switched {
		if s.Namespace == key.Namespace && s.Name == key.Name {
			patch, err := redirect.RestorePatch(&s, shadow)
			if err != nil {
				patch = []byte(err.Error())
			}
			acts = append(acts, Action{Verb: VerbRestore, Kind: KindService, Namespace: s.Namespace, Name: s.Name, Service: svc, Patch: patch})
		}
	}
	if shadow != nil {
		acts = append(acts, Action{Verb: VerbDelete, Kind: KindService, Namespace: shadow.Namespace, Name: shadow.Name, Service: svc})
	}
	for _, j := range inv.Agents {
		if j.Namespace == key.Namespace && j.Labels[objects.LabelService] == key.Name {
			acts = append(acts, Action{Verb: VerbDelete, Kind: KindJob, Namespace: j.Namespace, Name: j.Name, Service: svc})
			acts = append(acts, AgentRBAC(j.Namespace, svc, "")...)
		}
	}
	return acts
}

// AgentRBAC plans the deletion of the agent's ServiceAccount, Role and RoleBinding; with owner
// set, only if the agent Job of that UID owns them.
func AgentRBAC(ns, service string, owner types.UID) []Action {
	name := objects.AgentName(service)
	return []Action{
		{Verb: VerbDelete, Kind: KindRoleBinding, Namespace: ns, Name: name, Service: service, Owner: owner},
		{Verb: VerbDelete, Kind: KindRole, Namespace: ns, Name: name, Service: service, Owner: owner},
		{Verb: VerbDelete, Kind: KindServiceAccount, Namespace: ns, Name: name, Service: service, Owner: owner},
	}
}

// SessionDelete plans the deletion of a session's Lease.
func SessionDelete(s session.Info) Action {
	return Action{Verb: VerbDelete, Kind: KindLease, Namespace: s.Lease.Namespace, Name: s.Lease.Name}
}

// Execute carries out the actions in order. Each one that changed something is reported to out
// kubectl-style ("service/api restored", "job.batch/x deleted", with "(dry run)" when dryRun; a
// dry-run restore also prints its patch). It goes on after a failure and returns every failure,
// except that after a failed restore nothing else of that Service is deleted: the shadow Service
// keeps the last copy of its original selector and the agent keeps serving it.
func Execute(ctx context.Context, client kubernetes.Interface, acts []Action, dryRun bool, out io.Writer) error {
	var errs []error
	unrestored := map[string]bool{} // namespace/service whose restore failed
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
		if a.Service != "" && a.Kind != KindLease && unrestored[a.Namespace+"/"+a.Service] {
			errs = append(errs, fmt.Errorf("%s %s: skipped: service %s is not restored, and this is needed to restore it or keeps serving it", a.Verb, a, a.Service))
			continue
		}
		changed, err := execute(ctx, client, a)
		if err != nil && a.Verb == VerbRestore {
			unrestored[a.Namespace+"/"+a.Name] = true
		}
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
	if a.Owner != "" && !ownedBy(obj, a.Owner) {
		// A new agent's object of the same name: not ours to delete.
		return false, nil
	}
	uid := obj.GetUID()
	background := metav1.DeletePropagationBackground
	err = del(ctx, a.Name, metav1.DeleteOptions{PropagationPolicy: &background, Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func ownedBy(obj metav1.Object, uid types.UID) bool {
	for _, ref := range obj.GetOwnerReferences() {
		if ref.UID == uid {
			return true
		}
	}
	return false
}
