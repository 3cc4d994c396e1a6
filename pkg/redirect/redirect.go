// Package redirect switches a Service's selector to its bridge agent and back. The original
// selector is saved in an annotation on the Service itself, so that any machine — the CLI, the
// agent, or `clean` run elsewhere — can restore it, and the shadow Service carries a second copy
// (its own selector), so that an annotation lost to an edit or a tool does not lose the original.
// Every write is a merge patch carrying the resourceVersion that was read, so that a concurrent
// change is never overwritten blindly.
//
// The original is never learned from a switched Service: whatever the Service's owner writes
// into the selector during an intercept (kubectl apply merges its manifest's keys into the
// agent's selector; a server-side apply or a replace resets it) is read without the agent's key.
// Keys of the owner's that remain are the owner's selector now — the same as before (a re-apply)
// or a new one (a real change, adopted) — and only when none remain are the saved copies used.
package redirect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/util/retry"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
)

// Switched reports whether the Service is currently switched to its agent: it carries a valid
// saved selector and selects only the agent.
func Switched(svc *corev1.Service) bool {
	_, err := savedSelector(svc)
	return err == nil && maps.Equal(svc.Spec.Selector, objects.AgentSelector(svc.Name))
}

// PointsAtAgent reports whether any key of the Service's selector is the agent's: the Service
// (also) selects the agent pod, whether switched cleanly or merged with its owner's keys.
func PointsAtAgent(svc *corev1.Service) bool {
	_, ok := svc.Spec.Selector[objects.LabelAgentFor]
	return ok
}

// OwnerSelector is the Service's selector without the agent's key: what its owner wrote. Empty
// when the Service selects only the agent.
func OwnerSelector(svc *corev1.Service) map[string]string {
	sel := maps.Clone(svc.Spec.Selector)
	delete(sel, objects.LabelAgentFor)
	return sel
}

// Result says what Switch or Restore did.
type Result string

const (
	// Unchanged means the Service already was in the wanted state.
	Unchanged Result = "unchanged"
	// Changed means the Service was patched.
	Changed Result = "changed"
	// Reapplied means Switch found the owner's original selector written back during the switch
	// (kubectl apply, Helm, GitOps) and switched it again; the saved original did not change.
	Reapplied Result = "reapplied"
	// Adopted means Switch found a different selector written by the owner during the switch: a
	// real change, which becomes the original to restore (and the shadow Service's selector).
	Adopted Result = "adopted"
	// Repaired means the Service selected only the agent but its saved selector was missing or
	// unreadable; it was written again from the shadow Service's copy.
	Repaired Result = "repaired"
)

// Switch points the Service's selector at the agent, saving the selector it replaces. When the
// original changed (Adopted), it also gives the shadow Service the new selector.
func Switch(ctx context.Context, services corev1client.ServicesGetter, namespace, name string) (Result, error) {
	var res Result
	var original map[string]string
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := services.Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		res, original, err = switchOnce(ctx, services, svc)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("switch service %s/%s to its bridge agent: %w", namespace, name, err)
	}
	if res == Adopted {
		if err := SyncShadow(ctx, services, namespace, name, original); err != nil {
			return res, err
		}
	}
	return res, nil
}

func switchOnce(ctx context.Context, services corev1client.ServicesGetter, svc *corev1.Service) (Result, map[string]string, error) {
	if Switched(svc) {
		return Unchanged, nil, nil
	}
	saved, savedErr := savedSelector(svc)
	_, hadAnnotation := svc.Annotations[objects.AnnotationOriginalSelector]
	original := OwnerSelector(svc)
	var res Result
	switch {
	case len(original) > 0 && savedErr == nil && maps.Equal(original, saved):
		res = Reapplied
	case len(original) > 0 && savedErr == nil:
		res = Adopted
	case len(original) > 0:
		// Nothing saved yet: a first switch. If an annotation was there but unreadable, the
		// owner's selector still wins over any copy: it is what the owner wants now.
		res = Changed
		if hadAnnotation {
			res = Adopted
		}
	default:
		// The Service selects only the agent and its saved selector is gone: the shadow
		// Service's copy.
		shadow, err := shadowSelector(ctx, services, svc)
		if err != nil {
			return "", nil, fmt.Errorf("service %s/%s selects only the agent and %v; %w", svc.Namespace, svc.Name, savedErr, err)
		}
		original, res = shadow, Repaired
	}
	if err := patch(ctx, services, svc, objects.AgentSelector(svc.Name), map[string]*string{
		objects.AnnotationOriginalSelector: ptr(objects.EncodeSelector(original)),
		objects.AnnotationAgent:            ptr(objects.AgentName(svc.Name)),
	}); err != nil {
		return "", nil, err
	}
	return res, original, nil
}

// Original is the selector a restore of svc would give it, and where it comes from: the owner's
// keys in the selector when there are any (what the owner wrote last), else the saved annotation,
// else the shadow Service's copy.
func Original(ctx context.Context, services corev1client.ServicesGetter, svc *corev1.Service) (map[string]string, string, error) {
	return original(svc, func() (map[string]string, error) { return shadowSelector(ctx, services, svc) })
}

func original(svc *corev1.Service, shadow func() (map[string]string, error)) (map[string]string, string, error) {
	if sel := OwnerSelector(svc); len(sel) > 0 {
		return sel, "selector", nil
	}
	saved, savedErr := savedSelector(svc)
	if savedErr == nil {
		return saved, "annotation " + objects.AnnotationOriginalSelector, nil
	}
	sel, err := shadow()
	if err != nil {
		return nil, "", fmt.Errorf("%v, and %w", savedErr, err)
	}
	return sel, "service " + objects.ShadowName(svc.Name), nil
}

// ErrNoOriginal is wrapped by Restore's error when no copy of the original selector is left.
var ErrNoOriginal = errors.New("no copy of the original selector is left")

// Restore gives the Service back its original selector and removes our annotations, then reads it
// back to verify that it no longer selects the agent: callers delete what a restore needs (the
// shadow Service, the agent) only after Restore succeeded. A Service that neither selects the
// agent nor carries our annotations is left alone (Unchanged).
func Restore(ctx context.Context, services corev1client.ServicesGetter, namespace, name string) (Result, error) {
	var res Result
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := services.Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		body, err := restorePatch(svc, func() (map[string]string, error) { return shadowSelector(ctx, services, svc) })
		if err != nil || body == nil {
			res = Unchanged
			return err
		}
		res = Changed
		_, err = services.Services(namespace).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("restore the selector of service %s/%s: %w", namespace, name, err)
	}
	if res == Changed {
		svc, err := services.Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("verify the restore of service %s/%s: %w", namespace, name, err)
		}
		if PointsAtAgent(svc) || len(svc.Spec.Selector) == 0 {
			return "", fmt.Errorf("verify the restore of service %s/%s: its selector is %s after the restore (changed by someone else meanwhile); run 'kubectl bridge clean svc/%s -n %s' again",
				namespace, name, objects.SelectorString(svc.Spec.Selector), name, namespace)
		}
	}
	return res, nil
}

// RestorePatch is the merge patch Restore would send for svc, for `clean --dry-run`, given its
// shadow Service (nil when there is none); nil when the Service needs no restore.
func RestorePatch(svc, shadow *corev1.Service) ([]byte, error) {
	return restorePatch(svc, func() (map[string]string, error) {
		if shadow == nil {
			return nil, fmt.Errorf("its shadow service %s is gone", objects.ShadowName(svc.Name))
		}
		return shadowCopy(shadow)
	})
}

func restorePatch(svc *corev1.Service, shadow func() (map[string]string, error)) ([]byte, error) {
	_, annotated := svc.Annotations[objects.AnnotationOriginalSelector]
	_, agentNamed := svc.Annotations[objects.AnnotationAgent]
	if !PointsAtAgent(svc) && !annotated && !agentNamed {
		return nil, nil
	}
	want := svc.Spec.Selector
	if PointsAtAgent(svc) {
		sel, _, err := original(svc, shadow)
		if err != nil {
			return nil, fmt.Errorf("%w: %v; set the selector by hand (kubectl edit service %s -n %s)", ErrNoOriginal, err, svc.Name, svc.Namespace)
		}
		want = sel
	}
	return buildPatch(svc, want, map[string]*string{
		objects.AnnotationOriginalSelector: nil,
		objects.AnnotationAgent:            nil,
	})
}

// SyncShadow gives the Service's shadow Service the selector sel (the adopted original), so that
// unmatched traffic follows the owner's change. A missing shadow is not an error.
func SyncShadow(ctx context.Context, services corev1client.ServicesGetter, namespace, name string, sel map[string]string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		shadow, err := services.Services(namespace).Get(ctx, objects.ShadowName(name), metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !ours(shadow) || maps.Equal(shadow.Spec.Selector, sel) {
			return nil
		}
		return patch(ctx, services, shadow, sel, nil)
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("give shadow service %s/%s the selector %s: %w", namespace, objects.ShadowName(name), objects.SelectorString(sel), err)
	}
	return nil
}

// savedSelector decodes the annotation; an error says what is wrong with it.
func savedSelector(svc *corev1.Service) (map[string]string, error) {
	raw, ok := svc.Annotations[objects.AnnotationOriginalSelector]
	if !ok {
		return nil, fmt.Errorf("its %s annotation is missing", objects.AnnotationOriginalSelector)
	}
	sel, err := objects.DecodeSelector(raw)
	if err != nil {
		return nil, err
	}
	if _, agent := sel[objects.LabelAgentFor]; agent {
		return nil, fmt.Errorf("its %s annotation holds the agent's selector", objects.AnnotationOriginalSelector)
	}
	return sel, nil
}

// shadowSelector is the shadow Service's selector: the second copy of the original.
func shadowSelector(ctx context.Context, services corev1client.ServicesGetter, svc *corev1.Service) (map[string]string, error) {
	shadow, err := services.Services(svc.Namespace).Get(ctx, objects.ShadowName(svc.Name), metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("its shadow service %s could not be read: %w", objects.ShadowName(svc.Name), err)
	}
	return shadowCopy(shadow)
}

func shadowCopy(shadow *corev1.Service) (map[string]string, error) {
	if !ours(shadow) {
		return nil, fmt.Errorf("service %s was not created by kubectl-bridge", shadow.Name)
	}
	if _, agent := shadow.Spec.Selector[objects.LabelAgentFor]; agent || len(shadow.Spec.Selector) == 0 {
		return nil, fmt.Errorf("its shadow service %s holds no usable selector", shadow.Name)
	}
	return shadow.Spec.Selector, nil
}

func ours(svc *corev1.Service) bool {
	return svc.Labels[objects.LabelManagedBy] == objects.ManagedBy && svc.Labels[objects.LabelComponent] == objects.ComponentShadow
}

// patch replaces the selector wholesale (keys not in want are nulled: a merge patch merges maps)
// and sets or removes (nil) annotations, conditional on the resourceVersion that was read.
func patch(ctx context.Context, services corev1client.ServicesGetter, svc *corev1.Service, want map[string]string, annotations map[string]*string) error {
	body, err := buildPatch(svc, want, annotations)
	if err != nil {
		return err
	}
	_, err = services.Services(svc.Namespace).Patch(ctx, svc.Name, types.MergePatchType, body, metav1.PatchOptions{})
	return err
}

func buildPatch(svc *corev1.Service, want map[string]string, annotations map[string]*string) ([]byte, error) {
	sel := map[string]*string{}
	for k := range svc.Spec.Selector {
		sel[k] = nil
	}
	for k, v := range want {
		sel[k] = ptr(v)
	}
	meta := map[string]any{"resourceVersion": svc.ResourceVersion}
	if annotations != nil {
		meta["annotations"] = annotations
	}
	return json.Marshal(map[string]any{
		"metadata": meta,
		"spec":     map[string]any{"selector": sel},
	})
}

func ptr(s string) *string { return &s }
