package redirect

import (
	"context"
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

func TestSwitchReappliesAfterForeignReset(t *testing.T) {
	saved := objects.EncodeSelector(map[string]string{"app": "api"})
	// GitOps re-applied a new selector while the switch was live: that selector is what the owner
	// wants now, so it becomes the one to restore.
	c := fake.NewClientset(service(map[string]string{"app": "api-v2"}, map[string]string{objects.AnnotationOriginalSelector: saved}))
	res, err := Switch(context.Background(), c.CoreV1(), "dev", "api")
	if err != nil || res != Reapplied {
		t.Fatalf("Switch = %v, %v; want reapplied", res, err)
	}
	svc := get(t, c)
	if got := objects.OriginalSelector(svc); !maps.Equal(got, map[string]string{"app": "api-v2"}) {
		t.Fatalf("saved selector = %v, want the re-applied one", got)
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
	b, err := RestorePatch(svc)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"metadata":{"annotations":{"kubectl-bridge.io/agent":null,"kubectl-bridge.io/original-selector":null},"resourceVersion":"7"},"spec":{"selector":{"app":"api","kubectl-bridge.io/agent-for":null}}}`
	if string(b) != want {
		t.Fatalf("RestorePatch =\n%s\nwant\n%s", b, want)
	}
	if b, _ := RestorePatch(service(map[string]string{"app": "api"}, nil)); b != nil {
		t.Fatalf("RestorePatch of an unswitched Service = %s, want nil", b)
	}
}
