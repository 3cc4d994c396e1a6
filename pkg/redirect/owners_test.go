package redirect

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Managed-fields sets as the API server records them for a Service: one whose applier wrote the
// selector (an atomic map, so owned whole), and one that only touched an annotation.
const (
	selectorFields   = `{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:ports":{"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:port":{},"f:protocol":{}}},"f:selector":{}}}`
	annotationFields = `{"f:metadata":{"f:annotations":{".":{},"f:team":{}}}}`
)

func fieldsEntry(manager string, op metav1.ManagedFieldsOperationType, at *metav1.Time, fields string) metav1.ManagedFieldsEntry {
	return metav1.ManagedFieldsEntry{
		Manager: manager, Operation: op, APIVersion: "v1", Time: at,
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)},
	}
}

func selectorEntry(manager string, op metav1.ManagedFieldsOperationType, at *metav1.Time) metav1.ManagedFieldsEntry {
	return fieldsEntry(manager, op, at, selectorFields)
}

func mfTime(minute int) *metav1.Time {
	t := metav1.NewTime(time.Date(2025, 3, 1, 10, minute, 0, 0, time.UTC))
	return &t
}

func TestSelectorManager(t *testing.T) {
	apply, update := metav1.ManagedFieldsOperationApply, metav1.ManagedFieldsOperationUpdate
	status := selectorEntry("kube-controller-manager", update, mfTime(9))
	status.Subresource = "status"
	for _, tc := range []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		wantMgr string
		wantOp  metav1.ManagedFieldsOperationType
	}{
		{
			name: "server-side apply by another manager",
			entries: []metav1.ManagedFieldsEntry{
				selectorEntry("kustomize-controller", apply, mfTime(1)),
				// Later, but never wrote the selector.
				fieldsEntry("kubectl-annotate", update, mfTime(5), annotationFields),
			},
			wantMgr: "kustomize-controller", wantOp: apply,
		},
		{
			name:    "client-side apply",
			entries: []metav1.ManagedFieldsEntry{selectorEntry("kubectl-client-side-apply", update, mfTime(1))},
			wantMgr: "kubectl-client-side-apply", wantOp: update,
		},
		{
			name: "our own managers ignored",
			entries: []metav1.ManagedFieldsEntry{
				selectorEntry("argocd-controller", apply, mfTime(1)),
				selectorEntry("kubectl-bridge", update, mfTime(2)),
				selectorEntry("bridge-agent", update, mfTime(3)),
				selectorEntry("kubectl-bridge.exe", update, mfTime(4)),
			},
			wantMgr: "argocd-controller", wantOp: apply,
		},
		{
			name:    "only our own manager",
			entries: []metav1.ManagedFieldsEntry{selectorEntry("kubectl-bridge", update, mfTime(2))},
		},
		{
			name: "latest time wins whatever the order",
			entries: []metav1.ManagedFieldsEntry{
				selectorEntry("helm-controller", update, mfTime(7)),
				selectorEntry("kubectl-client-side-apply", update, mfTime(3)),
			},
			wantMgr: "helm-controller", wantOp: update,
		},
		{
			name: "tie goes to the later entry",
			entries: []metav1.ManagedFieldsEntry{
				selectorEntry("kustomize-controller", apply, mfTime(3)),
				selectorEntry("kubectl", update, mfTime(3)),
			},
			wantMgr: "kubectl", wantOp: update,
		},
		{
			name: "nil times take the last entry",
			entries: []metav1.ManagedFieldsEntry{
				selectorEntry("first", apply, nil),
				selectorEntry("second", update, nil),
			},
			wantMgr: "second", wantOp: update,
		},
		{
			name: "a time beats no time",
			entries: []metav1.ManagedFieldsEntry{
				selectorEntry("timed", apply, mfTime(1)),
				selectorEntry("untimed", update, nil),
			},
			wantMgr: "timed", wantOp: apply,
		},
		{
			name: "status subresource, unreadable fields and no fields skipped",
			entries: []metav1.ManagedFieldsEntry{
				selectorEntry("kubectl-client-side-apply", update, mfTime(1)),
				status,
				fieldsEntry("garbled", update, mfTime(8), `{"f:spec":`),
				{Manager: "fieldless", Operation: update, Time: mfTime(9)},
			},
			wantMgr: "kubectl-client-side-apply", wantOp: update,
		},
		{
			name:    "nobody wrote the selector",
			entries: []metav1.ManagedFieldsEntry{fieldsEntry("kubectl-annotate", update, mfTime(5), annotationFields)},
		},
		{name: "no managed fields"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev", ManagedFields: tc.entries}}
			mgr, op := SelectorManager(svc)
			if mgr != tc.wantMgr || op != tc.wantOp {
				t.Fatalf("SelectorManager = %q, %q; want %q, %q", mgr, op, tc.wantMgr, tc.wantOp)
			}
		})
	}
}

const (
	argoShopExemption = `# In the Argo CD Application "shop", merged into its existing lists:
spec:
  ignoreDifferences:
    - group: ""
      kind: Service
      name: api
      namespace: dev
      jsonPointers:
        - /spec/selector
  syncPolicy:
    syncOptions:
      - RespectIgnoreDifferences=true
# ignoreDifferences alone only keeps the selector out of the diff: a sync (automated, self-heal or
# manual) still applies the one from Git. RespectIgnoreDifferences=true makes syncs leave it too.
`
	kustomizeExemptionText = `kubectl annotate --overwrite --namespace dev service/api kustomize.toolkit.fluxcd.io/reconcile=disabled
# This pauses kustomize-controller's reconciliation of this Service while the annotation is set:
# it no longer applies changes to it (nor prunes it). After the intercept, resume with:
# kubectl annotate --namespace dev service/api kustomize.toolkit.fluxcd.io/reconcile-
`
	helmShopExemption = `# In the Flux HelmRelease "flux-system/shop", merged into its existing lists:
spec:
  driftDetection:
    ignore:
      - paths: ["/spec/selector"]
        target:
          kind: Service
          name: api
          namespace: dev
# helm-controller corrects drift only when spec.driftDetection.mode is enabled; this rule keeps
# it from resetting the selector.
`
)

func TestGitOpsOf(t *testing.T) {
	helmChart := map[string]string{"app.kubernetes.io/instance": "shop", "app.kubernetes.io/managed-by": "Helm"}
	for _, tc := range []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		manager     string
		wantTool    string // "" for nil
		// wantExemption is the exact text when set; otherwise every wantIn must appear in it.
		wantExemption string
		wantIn        []string
	}{
		{name: "Helm instance label alone is not Argo CD", labels: helmChart},
		{name: "Helm instance label and Helm's own manager", labels: helmChart, manager: "helm"},
		{name: "nothing to go on", manager: "kubectl-client-side-apply"},
		{
			name:        "Argo tracking-id annotation",
			annotations: map[string]string{"argocd.argoproj.io/tracking-id": "shop:/Service:dev/api"},
			wantTool:    ToolArgoCD, wantExemption: argoShopExemption,
		},
		{
			name:     "Argo custom instance label",
			labels:   map[string]string{"argocd.argoproj.io/instance": "shop"},
			wantTool: ToolArgoCD, wantExemption: argoShopExemption,
		},
		{
			name:        "Argo instance annotation",
			annotations: map[string]string{"argocd.argoproj.io/instance": "shop"},
			wantTool:    ToolArgoCD, wantExemption: argoShopExemption,
		},
		{
			name:     "instance label names the Application once the manager is Argo CD",
			labels:   helmChart,
			manager:  "argocd-application-controller",
			wantTool: ToolArgoCD, wantExemption: argoShopExemption,
		},
		{
			name:     "Flux kustomize labels",
			labels:   map[string]string{"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"},
			wantTool: ToolFlux, wantExemption: kustomizeExemptionText,
		},
		{
			name: "Flux helm labels",
			labels: map[string]string{
				"helm.toolkit.fluxcd.io/name": "shop", "helm.toolkit.fluxcd.io/namespace": "flux-system",
				"app.kubernetes.io/instance": "shop",
			},
			wantTool: ToolFlux, wantExemption: helmShopExemption,
		},
		{
			name:     "manager-name-only: argocd-controller",
			manager:  "argocd-controller",
			wantTool: ToolArgoCD,
			wantIn:   []string{`the Argo CD Application that deploys service dev/api`, "name: api", "namespace: dev", "- /spec/selector", "RespectIgnoreDifferences=true"},
		},
		{
			name:     "manager-name-only: argocd-application-controller",
			manager:  "argocd-application-controller",
			wantTool: ToolArgoCD,
			wantIn:   []string{`the Argo CD Application that deploys service dev/api`, "- /spec/selector"},
		},
		{
			name:     "manager-name-only: kustomize-controller",
			manager:  "kustomize-controller",
			wantTool: ToolFlux, wantExemption: kustomizeExemptionText,
		},
		{
			name:     "manager-name-only: helm-controller",
			manager:  "helm-controller",
			wantTool: ToolFlux,
			wantIn:   []string{`the Flux HelmRelease that deploys service dev/api`, `paths: ["/spec/selector"]`, "kind: Service", "name: api", "namespace: dev"},
		},
		{
			name:        "the manager that wrote the selector decides over stale tracking metadata",
			annotations: map[string]string{"argocd.argoproj.io/tracking-id": "shop:/Service:dev/api"},
			manager:     "kustomize-controller",
			wantTool:    ToolFlux, wantExemption: kustomizeExemptionText,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{
				Name: "api", Namespace: "dev", Labels: tc.labels, Annotations: tc.annotations,
			}}
			got := GitOpsOf(svc, tc.manager)
			if tc.wantTool == "" {
				if got != nil {
					t.Fatalf("GitOpsOf = %+v, want nil", got)
				}
				return
			}
			if got == nil || got.Tool != tc.wantTool {
				t.Fatalf("GitOpsOf = %+v, want tool %q", got, tc.wantTool)
			}
			if tc.wantExemption != "" && got.Exemption != tc.wantExemption {
				t.Fatalf("exemption:\n%s\nwant:\n%s", got.Exemption, tc.wantExemption)
			}
			for _, s := range tc.wantIn {
				if !strings.Contains(got.Exemption, s) {
					t.Errorf("exemption lacks %q:\n%s", s, got.Exemption)
				}
			}
		})
	}
}
