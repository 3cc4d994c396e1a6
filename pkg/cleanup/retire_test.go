package cleanup

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
)

func switchedState(t *testing.T, annotations map[string]string, extra ...runtime.Object) *fake.Clientset {
	t.Helper()
	job := objects.AgentJob(objects.AgentParams{Namespace: "dev", Service: "api"})
	job.UID = "job-1"
	api := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev", Annotations: annotations},
		Spec:       corev1.ServiceSpec{Selector: objects.AgentSelector("api")},
	}
	shadow := objects.ShadowService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "api"}}}, job)
	return fake.NewClientset(append([]runtime.Object{job, api, shadow}, extra...)...)
}

var saved = map[string]string{objects.AnnotationOriginalSelector: `{"app":"api"}`, objects.AnnotationAgent: "bridge-agent-api"}

func TestRetireKeepsAnAgentWithALiveSession(t *testing.T) {
	now := time.Now()
	c := switchedState(t, saved, lease(t, "mine0001", "api", now), lease(t, "new00001", "api", now))
	ctx := context.Background()
	r, err := Retire(ctx, c, inventory.ServiceKey{Namespace: "dev", Name: "api"}, RetireOptions{By: "me", Except: []string{"mine0001"}})
	if err != nil || r.Live != 1 || r.Job != "" {
		t.Fatalf("Retire = %+v, %v; want the agent kept for one live session", r, err)
	}
	job, err := c.BatchV1().Jobs("dev").Get(ctx, objects.AgentName("api"), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("agent job: %v", err)
	}
	if m := job.Annotations[objects.AnnotationClosing]; m != "" {
		t.Fatalf("the closing mark stayed on a kept agent: %q", m)
	}
	svc, _ := c.CoreV1().Services("dev").Get(ctx, "api", metav1.GetOptions{})
	if !maps.Equal(svc.Spec.Selector, objects.AgentSelector("api")) {
		t.Fatalf("a kept agent's Service was restored: %v", svc.Spec.Selector)
	}
}

func TestRetireRestoresThenDeletes(t *testing.T) {
	now := time.Now()
	c := switchedState(t, saved, lease(t, "dead0001", "api", now.Add(-time.Hour)))
	ctx := context.Background()
	r, err := Retire(ctx, c, inventory.ServiceKey{Namespace: "dev", Name: "api"}, RetireOptions{By: "me"})
	if err != nil || r.Live != 0 || r.Job != "job-1" || !r.Restored {
		t.Fatalf("Retire = %+v, %v", r, err)
	}
	svc, _ := c.CoreV1().Services("dev").Get(ctx, "api", metav1.GetOptions{})
	if !maps.Equal(svc.Spec.Selector, map[string]string{"app": "api"}) {
		t.Fatalf("selector = %v, want the original", svc.Spec.Selector)
	}
	if _, err := c.BatchV1().Jobs("dev").Get(ctx, objects.AgentName("api"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("agent job not deleted: %v", err)
	}
}

// TestRetireDeletesNothingWithoutARestore: annotation and shadow lost, the Service points at the
// agent: the agent Job is the one thing still serving it, so it stays.
func TestRetireDeletesNothingWithoutARestore(t *testing.T) {
	c := switchedState(t, nil)
	ctx := context.Background()
	if err := c.CoreV1().Services("dev").Delete(ctx, objects.ShadowName("api"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Retire(ctx, c, inventory.ServiceKey{Namespace: "dev", Name: "api"}, RetireOptions{By: "me"}); err == nil {
		t.Fatal("Retire succeeded with no copy of the original selector")
	}
	job, err := c.BatchV1().Jobs("dev").Get(ctx, objects.AgentName("api"), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the agent job was deleted while the Service points at it: %v", err)
	}
	if m := job.Annotations[objects.AnnotationClosing]; m != "" {
		t.Fatalf("a failed retire left the closing mark: %q", m)
	}
}

// TestExecuteKeepsTheCopiesWhenARestoreFails: clean on a Service whose annotation is corrupt
// restores from the shadow; with the shadow gone too, nothing else of the Service is deleted.
func TestExecuteKeepsTheCopiesWhenARestoreFails(t *testing.T) {
	ctx := context.Background()
	key := inventory.ServiceKey{Namespace: "dev", Name: "api"}

	c := switchedState(t, map[string]string{objects.AnnotationOriginalSelector: "{corrupt"})
	if err := Execute(ctx, c, ServiceTeardown(key, nil), false, &strings.Builder{}); err != nil {
		t.Fatalf("teardown with a corrupt annotation: %v", err)
	}
	svc, _ := c.CoreV1().Services("dev").Get(ctx, "api", metav1.GetOptions{})
	if !maps.Equal(svc.Spec.Selector, map[string]string{"app": "api"}) {
		t.Fatalf("selector = %v, want the shadow's copy", svc.Spec.Selector)
	}

	c = switchedState(t, nil)
	// A shadow whose selector is unusable: no copy is left anywhere.
	sh, _ := c.CoreV1().Services("dev").Get(ctx, objects.ShadowName("api"), metav1.GetOptions{})
	sh.Spec.Selector = nil
	if _, err := c.CoreV1().Services("dev").Update(ctx, sh, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := Execute(ctx, c, ServiceTeardown(key, nil), false, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "not restored") {
		t.Fatalf("teardown without a copy: %v; want the deletes skipped", err)
	}
	if _, err := c.BatchV1().Jobs("dev").Get(ctx, objects.AgentName("api"), metav1.GetOptions{}); err != nil {
		t.Fatalf("agent job deleted after a failed restore: %v", err)
	}
	if _, err := c.CoreV1().Services("dev").Get(ctx, objects.ShadowName("api"), metav1.GetOptions{}); err != nil {
		t.Fatalf("shadow deleted after a failed restore: %v", err)
	}
}

// TestOwnerScopedDelete: a delete restricted to a retired Job's UID leaves a new agent's
// same-named object alone.
func TestOwnerScopedDelete(t *testing.T) {
	c := switchedState(t, saved)
	ctx := context.Background()
	act := Action{Verb: VerbDelete, Kind: KindService, Namespace: "dev", Name: objects.ShadowName("api"), Service: "api", Owner: "job-0"}
	if err := Execute(ctx, c, []Action{act}, false, &strings.Builder{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Services("dev").Get(ctx, objects.ShadowName("api"), metav1.GetOptions{}); err != nil {
		t.Fatalf("another Job's shadow was deleted: %v", err)
	}
	act.Owner = "job-1"
	if err := Execute(ctx, c, []Action{act}, false, &strings.Builder{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Services("dev").Get(ctx, objects.ShadowName("api"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the retired Job's shadow survived: %v", err)
	}
}
