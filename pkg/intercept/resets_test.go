package intercept

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// TestWatchResetsNamesWhoResetTheSelector: a re-apply by another tool is reported with its field
// manager; the agent's own restore (our annotation gone, our manager) is not.
func TestWatchResetsNamesWhoResetTheSelector(t *testing.T) {
	switched := svc("api", func(s *corev1.Service) {
		s.Spec.Selector = objects.AgentSelector("api")
		s.Annotations = map[string]string{objects.AnnotationOriginalSelector: `{"app":"api"}`}
	})
	c := fakeCluster(nil, switched, pod("api"))
	p, err := Prepare(context.Background(), Config{Client: c, Namespace: "dev", Service: "api", Port: "http", Mode: tunnel.ModeSteal, Image: "img:v1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resets := make(chan Reset, 4)
	seen := make(chan struct{})
	go (&Intercept{plan: p}).watchResets(ctx, func(r Reset) { resets <- r }, func() { close(seen) })
	// The fake clientset tracks managed fields like the API server, by the writer's field manager.
	update := func(manager string, mutate func(*corev1.Service)) {
		t.Helper()
		s, err := c.CoreV1().Services("dev").Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mutate(s)
		if _, err := c.CoreV1().Services("dev").Update(ctx, s, metav1.UpdateOptions{FieldManager: manager}); err != nil {
			t.Fatal(err)
		}
	}
	<-seen
	update("kubectl-client-side-apply", func(s *corev1.Service) {
		s.Spec.Selector = map[string]string{"app": "api", objects.LabelAgentFor: "api"}
	})
	select {
	case r := <-resets:
		if r.Manager != "kubectl-client-side-apply" || r.Count != 1 || r.Selector["app"] != "api" || len(r.Selector) != 1 {
			t.Fatalf("reset = %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a client-side apply during the intercept was not reported")
	}
	// The agent switches it back, later gives it back itself: no report.
	update("bridge-agent", func(s *corev1.Service) {
		s.Spec.Selector = objects.AgentSelector("api")
	})
	update("bridge-agent", func(s *corev1.Service) {
		s.Spec.Selector = map[string]string{"app": "api"}
		s.Annotations = nil
	})
	select {
	case r := <-resets:
		t.Fatalf("our own restore reported as a reset: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
}
