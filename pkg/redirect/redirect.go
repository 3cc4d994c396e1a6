// Package redirect switches a Service's selector to its bridge agent and back. The original
// selector is saved in an annotation on the Service itself, so that any machine — the CLI, the
// agent, or `clean` run elsewhere — can restore it. Every write is a merge patch carrying the
// resourceVersion that was read, so that a concurrent change is never overwritten blindly.
package redirect

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/util/retry"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
)

// Switched reports whether the Service is currently switched to its agent: it carries our
// annotations and selects only the agent.
func Switched(svc *corev1.Service) bool {
	_, saved := svc.Annotations[objects.AnnotationOriginalSelector]
	return saved && maps.Equal(svc.Spec.Selector, objects.AgentSelector(svc.Name))
}

// Result says what Switch or Restore did.
type Result string

const (
	// Unchanged means the Service already was in the wanted state.
	Unchanged Result = "unchanged"
	// Changed means the Service was patched.
	Changed Result = "changed"
	// Reapplied means Switch found our annotations but a foreign selector (reset by someone else:
	// kubectl apply, GitOps) and switched it back, adopting that selector as the one to restore.
	Reapplied Result = "reapplied"
)

// Switch points the Service's selector at the agent, saving the selector it replaces.
func Switch(ctx context.Context, services corev1client.ServicesGetter, namespace, name string) (Result, error) {
	var res Result
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := services.Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		res, err = switchOnce(ctx, services, svc)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("switch service %s/%s to its bridge agent: %w", namespace, name, err)
	}
	return res, nil
}

func switchOnce(ctx context.Context, services corev1client.ServicesGetter, svc *corev1.Service) (Result, error) {
	agentSel := objects.AgentSelector(svc.Name)
	if Switched(svc) {
		return Unchanged, nil
	}
	_, hadAnnotation := svc.Annotations[objects.AnnotationOriginalSelector]
	// The selector to restore later is the one the Service carries now, unless it already selects
	// the agent (annotations lost to a replace): then keep whatever was saved.
	original := svc.Spec.Selector
	if maps.Equal(original, agentSel) {
		original = objects.OriginalSelector(svc)
	}
	if len(original) == 0 || maps.Equal(original, agentSel) {
		return "", fmt.Errorf("service %s/%s has no selector to save; restore it with `kubectl bridge clean svc/%s`", svc.Namespace, svc.Name, svc.Name)
	}
	if err := patch(ctx, services, svc, agentSel, map[string]*string{
		objects.AnnotationOriginalSelector: ptr(objects.EncodeSelector(original)),
		objects.AnnotationAgent:            ptr(objects.AgentName(svc.Name)),
	}); err != nil {
		return "", err
	}
	if hadAnnotation {
		return Reapplied, nil
	}
	return Changed, nil
}

// Restore gives the Service back its saved selector and removes our annotations. A Service that
// carries no saved selector is left alone.
func Restore(ctx context.Context, services corev1client.ServicesGetter, namespace, name string) (Result, error) {
	var res Result
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := services.Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		raw, ok := svc.Annotations[objects.AnnotationOriginalSelector]
		if !ok {
			res = Unchanged
			return nil
		}
		original, err := objects.DecodeSelector(raw)
		if err != nil {
			return err
		}
		res = Changed
		return patch(ctx, services, svc, original, map[string]*string{
			objects.AnnotationOriginalSelector: nil,
			objects.AnnotationAgent:            nil,
		})
	})
	if err != nil {
		return "", fmt.Errorf("restore the selector of service %s/%s: %w", namespace, name, err)
	}
	return res, nil
}

// RestorePatch is the merge patch Restore would send for svc, for `clean --dry-run`; nil when the
// Service carries no saved selector.
func RestorePatch(svc *corev1.Service) ([]byte, error) {
	raw, ok := svc.Annotations[objects.AnnotationOriginalSelector]
	if !ok {
		return nil, nil
	}
	original, err := objects.DecodeSelector(raw)
	if err != nil {
		return nil, err
	}
	return buildPatch(svc, original, map[string]*string{
		objects.AnnotationOriginalSelector: nil,
		objects.AnnotationAgent:            nil,
	})
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
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": svc.ResourceVersion, "annotations": annotations},
		"spec":     map[string]any{"selector": sel},
	})
}

func ptr(s string) *string { return &s }
