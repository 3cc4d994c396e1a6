package intercept

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/redirect"
)

// Reset is a change of the intercepted Service's selector by someone else during the intercept:
// a re-apply of its manifest (the agent switches it back), or a new selector (adopted).
type Reset struct {
	// Manager is the field manager that wrote the selector, Operation how (Apply or Update).
	Manager, Operation string
	// Selector is what the owner wrote (without the agent's key).
	Selector map[string]string
	// Count is how many resets by this manager this CLI has seen.
	Count int
	// GitOps is the controller that manages the Service, if one was recognised, and how to
	// exempt the selector from it.
	GitOps *redirect.GitOps
}

// String names who wrote the selector and how, for the user.
func (r Reset) String() string { return fmt.Sprintf("%s (%s)", r.Manager, r.Operation) }

// WatchResets calls onReset whenever the Service, switched to the agent, has its selector
// written by another field manager, until ctx ends. Our own restores remove our annotation;
// resets by others leave it, or name a manager that is not ours.
func (i *Intercept) WatchResets(ctx context.Context, onReset func(Reset)) {
	i.watchResets(ctx, onReset, func() {})
}

// watchResets is WatchResets telling seen when it has seen the Service's first state.
func (i *Intercept) watchResets(ctx context.Context, onReset func(Reset), seen func()) {
	p := i.plan
	svcs := p.cfg.Client.CoreV1().Services(p.cfg.Namespace)
	lw := listWatch(metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", p.svc.Name).String()}, svcs.List, svcs.Watch)
	wasSwitched, first := false, true
	counts := map[string]int{}
	_, _ = watchtools.UntilWithSync(ctx, lw, &corev1.Service{}, nil, func(ev watch.Event) (bool, error) {
		svc, ok := ev.Object.(*corev1.Service)
		if !ok || ev.Type == watch.Deleted {
			return false, nil
		}
		switched := redirect.Switched(svc)
		if wasSwitched && !switched {
			manager, op := redirect.SelectorManager(svc)
			if manager != "" && len(redirect.OwnerSelector(svc)) > 0 {
				counts[manager]++
				onReset(Reset{Manager: manager, Operation: string(op), Selector: redirect.OwnerSelector(svc), Count: counts[manager],
					GitOps: redirect.GitOpsOf(svc, manager)})
			}
		}
		if first {
			first = false
			seen()
		}
		wasSwitched = switched
		return false, nil
	})
}
