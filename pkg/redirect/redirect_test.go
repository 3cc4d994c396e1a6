package redirect

import (
	"context"
	"errors"
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
)

func service(sel map[string]string, ann map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev", Annotations: ann, ResourceVersion: "7"},
		Spec:       corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{{Port: 80}}},
	}
}

func get(t *testing.T, c *fake.Clientset) *corev1.Service {
	t.Helper()
	svc, err := c.CoreV1().Services("dev").Get(context.Background(), "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestSwitchAndRestoreRoundTrip(t *testing.T) {
	orig := map[string]string{"app": "api", "tier": "web"}
	c := fake.NewClientset(service(orig, map[string]string{"team": "a"}))
	ctx := context.Background()

	res, err := Switch(ctx, c.CoreV1(), "dev", "api")
	if err != nil || res != Changed {
		t.Fatalf("Switch = %v, %v; want changed", res, err)
	}
	svc := get(t, c)
	if !maps.Equal(svc.Spec.Selector, objects.AgentSelector("api")) {
		t.Fatalf("selector after switch = %v, want only the agent's", svc.Spec.Selector)
	}
	if !Switched(svc) || svc.Annotations[objects.AnnotationAgent] != objects.AgentName("api") {
		t.Fatalf("annotations after switch = %v", svc.Annotations)
	}

	// A second session's Switch changes nothing.
	if res, err := Switch(ctx, c.CoreV1(), "dev", "api"); err != nil || res != Unchanged {
		t.Fatalf("second Switch = %v, %v; want unchanged", res, err)
	}

	if res, err := Restore(ctx, c.CoreV1(), "dev", "api"); err != nil || res != Changed {
		t.Fatalf("Restore = %v, %v; want changed", res, err)
	}
	svc = get(t, c)
	if !maps.Equal(svc.Spec.Selector, orig) {
		t.Fatalf("selector after restore = %v, want %v", svc.Spec.Selector, orig)
	}
	if !maps.Equal(svc.Annotations, map[string]string{"team": "a"}) {
		t.Fatalf("annotations after restore = %v, want only the user's", svc.Annotations)
	}
	if res, err := Restore(ctx, c.CoreV1(), "dev", "api"); err != nil || res != Unchanged {
		t.Fatalf("second Restore = %v, %v; want unchanged (idempotent)", res, err)
	}
}

func shadow(sel map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: objects.ShadowName("api"), Namespace: "dev", ResourceVersion: "3",
			Labels: objects.CommonLabels("api", objects.ComponentShadow)},
		Spec: corev1.ServiceSpec{Selector: sel},
	}
}

// TestSwitchNeverLearnsFromASwitchedService: whatever the owner writes during an intercept, the
// original to restore is the owner's selector, never one that contains the agent's key.
func TestSwitchNeverLearnsFromASwitchedService(t *testing.T) {
	orig := map[string]string{"app": "api"}
	saved := map[string]string{objects.AnnotationOriginalSelector: objects.EncodeSelector(orig), objects.AnnotationAgent: "bridge-agent-api"}
	agentKey := objects.LabelAgentFor
	for _, tc := range []struct {
		name       string
		selector   map[string]string
		ann        map[string]string
		shadow     map[string]string
		want       Result
		wantSaved  map[string]string
		wantShadow map[string]string
	}{
		{name: "client-side apply merges the manifest's keys into the agent's selector",
			selector: map[string]string{"app": "api", agentKey: "api"}, ann: saved, shadow: orig,
			want: Reapplied, wantSaved: orig, wantShadow: orig},
		{name: "server-side apply or replace resets the selector",
			selector: orig, ann: saved, shadow: orig,
			want: Reapplied, wantSaved: orig, wantShadow: orig},
		{name: "the owner changes the selector with kubectl apply (merged)",
			selector: map[string]string{"app": "api-v2", agentKey: "api"}, ann: saved, shadow: orig,
			want: Adopted, wantSaved: map[string]string{"app": "api-v2"}, wantShadow: map[string]string{"app": "api-v2"}},
		{name: "the owner replaces the selector",
			selector: map[string]string{"app": "api-v2"}, ann: saved, shadow: orig,
			want: Adopted, wantSaved: map[string]string{"app": "api-v2"}, wantShadow: map[string]string{"app": "api-v2"}},
		{name: "annotation stripped by a tool: the shadow's copy",
			selector: objects.AgentSelector("api"), ann: map[string]string{"team": "a"}, shadow: orig,
			want: Repaired, wantSaved: orig, wantShadow: orig},
		{name: "annotation corrupt: the shadow's copy",
			selector: objects.AgentSelector("api"), ann: map[string]string{objects.AnnotationOriginalSelector: "{not json"}, shadow: orig,
			want: Repaired, wantSaved: orig, wantShadow: orig},
		{name: "annotation holding the agent's selector is not a copy",
			selector: objects.AgentSelector("api"), ann: map[string]string{objects.AnnotationOriginalSelector: objects.EncodeSelector(map[string]string{"app": "api", agentKey: "api"})}, shadow: orig,
			want: Repaired, wantSaved: orig, wantShadow: orig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset(service(tc.selector, tc.ann), shadow(tc.shadow))
			res, err := Switch(context.Background(), c.CoreV1(), "dev", "api")
			if err != nil || res != tc.want {
				t.Fatalf("Switch = %v, %v; want %v", res, err, tc.want)
			}
			svc := get(t, c)
			if !Switched(svc) {
				t.Fatalf("not switched: selector %v annotations %v", svc.Spec.Selector, svc.Annotations)
			}
			if got, _ := savedSelector(svc); !maps.Equal(got, tc.wantSaved) {
				t.Fatalf("saved selector = %v, want %v", got, tc.wantSaved)
			}
			sh, _ := c.CoreV1().Services("dev").Get(context.Background(), objects.ShadowName("api"), metav1.GetOptions{})
			if !maps.Equal(sh.Spec.Selector, tc.wantShadow) {
				t.Fatalf("shadow selector = %v, want %v", sh.Spec.Selector, tc.wantShadow)
			}
			if _, err := Restore(context.Background(), c.CoreV1(), "dev", "api"); err != nil {
				t.Fatal(err)
			}
			if got := get(t, c).Spec.Selector; !maps.Equal(got, tc.wantSaved) {
				t.Fatalf("selector after restore = %v, want %v", got, tc.wantSaved)
			}
		})
	}
}

func TestSwitchWithNoCopyLeftIsRefused(t *testing.T) {
	c := fake.NewClientset(service(objects.AgentSelector("api"), nil))
	if _, err := Switch(context.Background(), c.CoreV1(), "dev", "api"); err == nil {
		t.Fatal("Switch with neither annotation nor shadow succeeded")
	}
}

// TestRestoreNeverLosesTheOriginal: a restore uses the owner's keys, else the annotation, else the
// shadow Service; with none left it fails (and callers then delete nothing).
func TestRestoreNeverLosesTheOriginal(t *testing.T) {
	orig := map[string]string{"app": "api"}
	for _, tc := range []struct {
		name     string
		selector map[string]string
		ann      map[string]string
		shadow   *corev1.Service
		want     map[string]string
		wantErr  bool
	}{
		{name: "annotation", selector: objects.AgentSelector("api"), ann: map[string]string{objects.AnnotationOriginalSelector: `{"app":"api"}`}, want: orig},
		{name: "corrupt annotation, shadow", selector: objects.AgentSelector("api"), ann: map[string]string{objects.AnnotationOriginalSelector: "{"}, shadow: shadow(orig), want: orig},
		{name: "missing annotation, shadow", selector: objects.AgentSelector("api"), shadow: shadow(orig), want: orig},
		{name: "merged selector after an apply", selector: map[string]string{"app": "api", objects.LabelAgentFor: "api"}, ann: map[string]string{objects.AnnotationOriginalSelector: `{"app":"old"}`}, want: orig},
		{name: "nothing left", selector: objects.AgentSelector("api"), wantErr: true},
		{name: "a shadow of someone else's is no copy", selector: objects.AgentSelector("api"), wantErr: true,
			shadow: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: objects.ShadowName("api"), Namespace: "dev"}, Spec: corev1.ServiceSpec{Selector: orig}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := []runtime.Object{service(tc.selector, tc.ann)}
			if tc.shadow != nil {
				objs = append(objs, tc.shadow)
			}
			c := fake.NewClientset(objs...)
			res, err := Restore(context.Background(), c.CoreV1(), "dev", "api")
			if tc.wantErr {
				if err == nil || !errors.Is(err, ErrNoOriginal) {
					t.Fatalf("Restore = %v, %v; want ErrNoOriginal", res, err)
				}
				if got := get(t, c).Spec.Selector; !maps.Equal(got, tc.selector) {
					t.Fatalf("a failed restore changed the selector to %v", got)
				}
				return
			}
			if err != nil || res != Changed {
				t.Fatalf("Restore = %v, %v", res, err)
			}
			svc := get(t, c)
			if !maps.Equal(svc.Spec.Selector, tc.want) || svc.Annotations[objects.AnnotationOriginalSelector] != "" {
				t.Fatalf("after restore: selector %v annotations %v, want %v", svc.Spec.Selector, svc.Annotations, tc.want)
			}
		})
	}
}

func TestSwitchRefusesServiceWithoutSelector(t *testing.T) {
	c := fake.NewClientset(service(nil, nil))
	if _, err := Switch(context.Background(), c.CoreV1(), "dev", "api"); err == nil {
		t.Fatal("Switch of a Service without selector succeeded")
	}
}

func TestRestorePatchForDryRun(t *testing.T) {
	svc := service(objects.AgentSelector("api"), map[string]string{
		objects.AnnotationOriginalSelector: `{"app":"api"}`, objects.AnnotationAgent: "bridge-agent-api",
	})
	b, err := RestorePatch(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"metadata":{"annotations":{"kubectl-bridge.io/agent":null,"kubectl-bridge.io/original-selector":null},"resourceVersion":"7"},"spec":{"selector":{"app":"api","kubectl-bridge.io/agent-for":null}}}`
	if string(b) != want {
		t.Fatalf("RestorePatch =\n%s\nwant\n%s", b, want)
	}
	if b, _ := RestorePatch(service(map[string]string{"app": "api"}, nil), nil); b != nil {
		t.Fatalf("RestorePatch of an unswitched Service = %s, want nil", b)
	}
}
