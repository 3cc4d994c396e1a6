package redirect

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Our own field managers, skipped by SelectorManager: a switch is our write, not an owner's.
// Neither binary sets a FieldManager on its writes (there is no such constant in the module; the
// patches in this package send empty metav1.PatchOptions), so the API server names the manager
// after the part of the User-Agent before its first "/", and client-go's default User-Agent
// (rest.DefaultKubernetesUserAgent) starts with the executable's base name: cmd/kubectl-bridge and
// cmd/bridge-agent (the agent image's entrypoint is /bridge-agent). The CLI is matched by prefix
// so that a renamed executable (kubectl-bridge.exe on Windows) is still ours. Should the patches
// ever set FieldManager, these names must follow.
const (
	cliFieldManager   = "kubectl-bridge"
	agentFieldManager = "bridge-agent"
)

// SelectorManager names the field manager that most recently wrote the Service's spec.selector,
// with how it wrote it (Apply for server-side apply, Update for anything else, client-side
// `kubectl apply` included), so that a user whose switch was undone can be told by whom.
// Service selectors are atomic maps, so a write takes the whole selector's ownership, but
// several appliers that applied the same selector co-own it: the entry with the latest time wins.
// Times are whole seconds, so ties are settled by order in the list, the later entry winning (the
// API server sorts entries by operation, then time, so a same-second Update follows an Apply); an
// entry without a time counts as older than any with one. Our own writes are skipped. Empty when
// no other manager wrote the selector.
func SelectorManager(svc *corev1.Service) (manager string, operation metav1.ManagedFieldsOperationType) {
	var (
		found  bool
		latest time.Time
	)
	for _, e := range svc.ManagedFields {
		// A subresource (status) write cannot touch spec; an empty name is no one to report.
		if e.Subresource != "" || e.Manager == "" || ownFieldManager(e.Manager) || !writesSelector(e.FieldsV1) {
			continue
		}
		var at time.Time
		if e.Time != nil {
			at = e.Time.Time
		}
		if !found || !at.Before(latest) {
			found, latest = true, at
			manager, operation = e.Manager, e.Operation
		}
	}
	return manager, operation
}

func ownFieldManager(manager string) bool {
	return manager == agentFieldManager || strings.HasPrefix(manager, cliFieldManager)
}

// writesSelector reports whether a managed-fields set holds spec.selector ("f:spec" →
// "f:selector"). The set is read as plain JSON rather than through structured-merge-diff, which
// the module only has indirectly, because one key lookup is all that is needed.
func writesSelector(fields *metav1.FieldsV1) bool {
	if fields == nil {
		return false
	}
	var top, spec map[string]json.RawMessage
	if json.Unmarshal(fields.Raw, &top) != nil || json.Unmarshal(top["f:spec"], &spec) != nil {
		return false
	}
	_, ok := spec["f:selector"]
	return ok
}

// Tools that GitOpsOf recognises, as GitOps.Tool.
const (
	// ToolArgoCD is Argo CD.
	ToolArgoCD = "Argo CD"
	// ToolFlux is Flux, through its kustomize-controller or helm-controller.
	ToolFlux = "Flux"
)

// GitOps says which GitOps controller manages a Service, and so will undo the switch of its
// selector when it next reconciles, and how to stop it from doing so during an intercept.
type GitOps struct {
	// Tool is ToolArgoCD or ToolFlux.
	Tool string
	// Exemption is the exact text the user adds — YAML for the Argo CD Application or the Flux
	// HelmRelease, or a kubectl command for a Service applied by a Flux Kustomization — followed
	// by "#" comment lines saying what it does.
	Exemption string
}

// Field managers of the GitOps controllers. Argo CD's server-side apply manager is
// argocd-controller (its sync-options documentation names it, and its code's ArgoCDSSAManager);
// argocd-application-controller, the controller's own name, is recognised too because writes
// that set no manager (client-side syncs) may be recorded under it — not something Argo CD's
// documentation states. Flux's controllers apply under their own names.
const (
	argoSSAManager        = "argocd-controller"
	argoControllerManager = "argocd-application-controller"
	fluxKustomizeManager  = "kustomize-controller"
	fluxHelmManager       = "helm-controller"
)

// Tracking metadata that the GitOps controllers put on what they apply.
const (
	// argoTrackingID is Argo CD's tracking annotation, "<application>:<group>/<kind>:<namespace>/<name>"
	// (the default tracking method since Argo CD 3.0).
	argoTrackingID = "argocd.argoproj.io/tracking-id"
	// argoInstance is the tracking label Argo CD's documentation suggests as a custom
	// application.instanceLabelKey; looked for as a label and as an annotation.
	argoInstance = "argocd.argoproj.io/instance"
	// k8sInstance is Argo CD's default tracking label before 3.0, holding the Application's name.
	// Helm charts set it too (to the release name), so alone it proves nothing.
	k8sInstance = "app.kubernetes.io/instance"

	fluxKustomizeName      = "kustomize.toolkit.fluxcd.io/name"
	fluxKustomizeNamespace = "kustomize.toolkit.fluxcd.io/namespace"
	fluxHelmName           = "helm.toolkit.fluxcd.io/name"
	fluxHelmNamespace      = "helm.toolkit.fluxcd.io/namespace"
)

// GitOpsOf recognises a Service managed by Argo CD or Flux, from manager (the field manager that
// wrote its selector, as SelectorManager returns it; may be empty) and from the tracking labels
// and annotations the controllers put on what they apply. The manager decides first, being the
// controller that actually wrote the selector; then Argo CD's own tracking metadata, then Flux's
// helm-controller labels, then its kustomize-controller labels. Nil when nothing matches.
func GitOpsOf(svc *corev1.Service, manager string) *GitOps {
	switch manager {
	case argoSSAManager, argoControllerManager:
		app, _ := argoApplication(svc, true)
		return &GitOps{Tool: ToolArgoCD, Exemption: argoExemption(svc, app)}
	case fluxKustomizeManager:
		return &GitOps{Tool: ToolFlux, Exemption: kustomizeExemption(svc)}
	case fluxHelmManager:
		return &GitOps{Tool: ToolFlux, Exemption: helmExemption(svc)}
	}
	if app, ok := argoApplication(svc, false); ok {
		return &GitOps{Tool: ToolArgoCD, Exemption: argoExemption(svc, app)}
	}
	if _, ok := svc.Labels[fluxHelmName]; ok {
		return &GitOps{Tool: ToolFlux, Exemption: helmExemption(svc)}
	}
	_, name := svc.Labels[fluxKustomizeName]
	_, namespace := svc.Labels[fluxKustomizeNamespace]
	if name || namespace {
		return &GitOps{Tool: ToolFlux, Exemption: kustomizeExemption(svc)}
	}
	return nil
}

// argoApplication reports whether the Service carries Argo CD's tracking metadata, and the name
// of the Application it names (empty when it names none). app.kubernetes.io/instance counts only
// when Argo CD is already known to manage the Service (byManager), because Helm sets it too.
func argoApplication(svc *corev1.Service, byManager bool) (app string, ok bool) {
	if id, ok := svc.Annotations[argoTrackingID]; ok {
		app, _, _ = strings.Cut(id, ":")
		return app, true
	}
	if v, ok := svc.Labels[argoInstance]; ok {
		return v, true
	}
	if v, ok := svc.Annotations[argoInstance]; ok {
		return v, true
	}
	if byManager {
		return svc.Labels[k8sInstance], true
	}
	return "", false
}

// argoExemption follows Argo CD's documentation: "Diffing Customization", Application Level
// Configuration (https://argo-cd.readthedocs.io/en/stable/user-guide/diffing/: ignoreDifferences
// entries with group, kind, name, namespace and jsonPointers; group is the API group without
// version, "" for core) and "Sync Options", Respect ignore differences configs
// (https://argo-cd.readthedocs.io/en/stable/user-guide/sync-options/): by default
// ignoreDifferences only feeds the diff, and a sync applies the desired state as-is;
// RespectIgnoreDifferences=true makes the sync leave the ignored fields alone too.
func argoExemption(svc *corev1.Service, app string) string {
	where := "the Argo CD Application that deploys service " + svc.Namespace + "/" + svc.Name
	if app != "" {
		where = fmt.Sprintf("the Argo CD Application %q", app)
	}
	return fmt.Sprintf(`# In %s, merged into its existing lists:
spec:
  ignoreDifferences:
    - group: ""
      kind: Service
      name: %s
      namespace: %s
      jsonPointers:
        - /spec/selector
  syncPolicy:
    syncOptions:
      - RespectIgnoreDifferences=true
# ignoreDifferences alone only keeps the selector out of the diff: a sync (automated, self-heal or
# manual) still applies the one from Git. RespectIgnoreDifferences=true makes syncs leave it too.
`, where, svc.Name, svc.Namespace)
}

// kustomizeExemption follows Flux's Kustomization documentation, "Suspending and resuming"
// (https://fluxcd.io/flux/components/kustomize/kustomizations/): annotating or labelling the
// in-cluster resource kustomize.toolkit.fluxcd.io/reconcile: disabled stops the controller from
// applying changes to it or pruning it; removing it from the in-cluster object resumes.
// --overwrite because the source may already set the annotation to "enabled".
func kustomizeExemption(svc *corev1.Service) string {
	target := "--namespace " + svc.Namespace + " service/" + svc.Name
	return fmt.Sprintf(`kubectl annotate --overwrite %[1]s kustomize.toolkit.fluxcd.io/reconcile=disabled
# This pauses kustomize-controller's reconciliation of this Service while the annotation is set:
# it no longer applies changes to it (nor prunes it). After the intercept, resume with:
# kubectl annotate %[1]s kustomize.toolkit.fluxcd.io/reconcile-
`, target)
}

// helmExemption follows Flux's HelmRelease documentation, "Drift detection"
// (https://fluxcd.io/flux/components/helm/helmreleases/): helm-controller corrects drift only when
// spec.driftDetection.mode is enabled, and spec.driftDetection.ignore takes JSON pointers with a
// target selector (kind, name, namespace; regular expressions, anchored — a Service name has no
// metacharacters). The helm.toolkit.fluxcd.io/driftDetection: disabled annotation that page also
// describes is not offered: helm-controller looks for it on the objects rendered from the chart
// (fluxcd/helm-controller internal/action/diff.go passes it to fluxcd/pkg ssa/jsondiff, which
// tests the rendered object), which is why the page applies it with a post-renderer; on the
// Service in the cluster it would do nothing.
func helmExemption(svc *corev1.Service) string {
	where := "the Flux HelmRelease that deploys service " + svc.Namespace + "/" + svc.Name
	if name := svc.Labels[fluxHelmName]; name != "" {
		if ns := svc.Labels[fluxHelmNamespace]; ns != "" {
			name = ns + "/" + name
		}
		where = fmt.Sprintf("the Flux HelmRelease %q", name)
	}
	return fmt.Sprintf(`# In %s, merged into its existing lists:
spec:
  driftDetection:
    ignore:
      - paths: ["/spec/selector"]
        target:
          kind: Service
          name: %s
          namespace: %s
# helm-controller corrects drift only when spec.driftDetection.mode is enabled; this rule keeps
# it from resetting the selector.
`, where, svc.Name, svc.Namespace)
}
