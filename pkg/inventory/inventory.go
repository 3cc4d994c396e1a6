// Package inventory reads everything kubectl-bridge has left in a cluster — session Leases, agent
// Jobs, shadow Services, Services switched to an agent — from the cluster alone, so that `list`
// and `clean` work the same from any machine.
package inventory

import (
	"context"
	"fmt"
	"sort"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

// Inventory is a snapshot of kubectl-bridge's state in one namespace or all of them.
type Inventory struct {
	// Sessions are the session Leases, oldest first.
	Sessions []session.Info
	// Agents are the agent Jobs.
	Agents []batchv1.Job
	// Shadows are the shadow Services.
	Shadows []corev1.Service
	// Switched are user Services that carry our original-selector annotation or select the agent
	// (also when a tool stripped the annotation).
	Switched []corev1.Service
}

// Collect lists our objects in namespace ("" = all namespaces).
func Collect(ctx context.Context, client kubernetes.Interface, namespace string) (_ *Inventory, err error) {
	defer func() {
		if namespace == "" && apierrors.IsForbidden(err) {
			err = fmt.Errorf("%w; every namespace (-A) needs list permissions across the cluster: use -n NAMESPACE for one", err)
		}
	}()
	inv := &Inventory{}
	if inv.Sessions, err = session.List(ctx, client.CoordinationV1(), namespace, ""); err != nil {
		return nil, err
	}
	managed := labels.SelectorFromSet(labels.Set{objects.LabelManagedBy: objects.ManagedBy})
	agentSel := labels.SelectorFromSet(labels.Set{objects.LabelManagedBy: objects.ManagedBy, objects.LabelComponent: objects.ComponentAgent})
	jobs, err := client.BatchV1().Jobs(namespace).List(ctx, metav1.ListOptions{LabelSelector: agentSel.String()})
	if err != nil {
		return nil, fmt.Errorf("list agent jobs: %w", err)
	}
	inv.Agents = jobs.Items
	// Annotations cannot be selected on the server: list Services and keep ours and the switched ones.
	svcs, err := client.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	for _, s := range svcs.Items {
		switch {
		case managed.Matches(labels.Set(s.Labels)) && s.Labels[objects.LabelComponent] == objects.ComponentShadow:
			inv.Shadows = append(inv.Shadows, s)
		case s.Annotations[objects.AnnotationOriginalSelector] != "" || s.Spec.Selector[objects.LabelAgentFor] != "":
			inv.Switched = append(inv.Switched, s)
		}
	}
	return inv, nil
}

// ServiceKey names a Service across namespaces.
type ServiceKey struct{ Namespace, Name string }

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// LiveIntercepts returns the intercept sessions of a Service whose Lease has not expired at now.
func (inv *Inventory) LiveIntercepts(key ServiceKey, now time.Time) []session.Info {
	var out []session.Info
	for _, s := range inv.Sessions {
		if s.Kind == session.KindIntercept && s.Lease.Namespace == key.Namespace && InterceptService(s) == key.Name && !s.Expired(now) {
			out = append(out, s)
		}
	}
	return out
}

// InterceptService is the Service an intercept session is on ("" for other kinds).
func InterceptService(s session.Info) string {
	if s.Kind != session.KindIntercept {
		return ""
	}
	if s.Spec.Intercept != nil {
		return s.Spec.Intercept.Service
	}
	return s.Lease.Labels[session.LabelService]
}

// Services returns every Service that has agent-side state (an agent, a shadow or a switch),
// sorted.
func (inv *Inventory) Services() []ServiceKey {
	seen := map[ServiceKey]bool{}
	for _, j := range inv.Agents {
		seen[ServiceKey{j.Namespace, j.Labels[objects.LabelService]}] = true
	}
	for _, s := range inv.Shadows {
		seen[ServiceKey{s.Namespace, s.Labels[objects.LabelService]}] = true
	}
	for _, s := range inv.Switched {
		seen[ServiceKey{s.Namespace, s.Name}] = true
	}
	keys := make([]ServiceKey, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	return keys
}

// Orphan is agent-side state that no live session explains.
type Orphan struct {
	// Service is the Service the state belongs to.
	Service ServiceKey
	// Kind is "agent", "shadow" or "switched-service".
	Kind string
	// Name is the object's name.
	Name string
	// Reason says why it is an orphan.
	Reason string
	// Created is when the object was created.
	Created time.Time
}

// Orphans lists agents, shadows and switched Services of Services without a live intercept session.
func (inv *Inventory) Orphans(now time.Time) []Orphan {
	var out []Orphan
	for _, key := range inv.Services() {
		if len(inv.LiveIntercepts(key, now)) > 0 {
			continue
		}
		for _, j := range inv.Agents {
			if j.Namespace == key.Namespace && j.Labels[objects.LabelService] == key.Name {
				out = append(out, Orphan{key, "agent", j.Name, "agent with no live session", j.CreationTimestamp.Time})
			}
		}
		for _, s := range inv.Shadows {
			if s.Namespace == key.Namespace && s.Labels[objects.LabelService] == key.Name {
				out = append(out, Orphan{key, "shadow", s.Name, "shadow service with no live session", s.CreationTimestamp.Time})
			}
		}
		for _, s := range inv.Switched {
			if s.Namespace == key.Namespace && s.Name == key.Name {
				reason := "service switched to an agent with no live session"
				if !inv.hasAgent(key) {
					reason = "service switched to an agent that does not exist"
				}
				out = append(out, Orphan{key, "switched-service", s.Name, reason, s.CreationTimestamp.Time})
			}
		}
	}
	return out
}

func (inv *Inventory) hasAgent(key ServiceKey) bool {
	for _, j := range inv.Agents {
		if j.Namespace == key.Namespace && j.Labels[objects.LabelService] == key.Name {
			return true
		}
	}
	return false
}
