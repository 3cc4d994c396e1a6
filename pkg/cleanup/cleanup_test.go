package cleanup

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

func lease(t *testing.T, id, svc string, renewed time.Time) *coordinationv1.Lease {
	t.Helper()
	l, err := session.NewLease("dev", id, "me@laptop", 30*time.Second, session.Spec{
		Kind: session.KindIntercept, Intercept: &session.InterceptSpec{Service: svc, Port: 80, Mode: "steal"},
	}, renewed)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestOrphanedInterceptIsFound(t *testing.T) {
	now := time.Now()
	job := objects.AgentJob(objects.AgentParams{Namespace: "dev", Service: "api"})
	api := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev", Annotations: map[string]string{
			objects.AnnotationOriginalSelector: `{"app":"api"}`, objects.AnnotationAgent: job.Name}},
		Spec: corev1.ServiceSpec{Selector: objects.AgentSelector("api")},
	}
	shadow := objects.ShadowService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "api"}}}, job)
	// A user's Service that merely looks like a shadow: never touched.
	lookalike := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: objects.ShadowName("web"), Namespace: "dev"}}
	c := fake.NewClientset(job, api, shadow, lookalike, lease(t, "stale001", "api", now.Add(-time.Minute)))
	ctx := context.Background()

	inv, err := inventory.Collect(ctx, c, "dev")
	if err != nil {
		t.Fatal(err)
	}
	key := inventory.ServiceKey{Namespace: "dev", Name: "api"}
	if live := inv.LiveIntercepts(key, now); len(live) != 0 {
		t.Fatalf("expired lease counted as live: %v", live)
	}
	orphans := inv.Orphans(now)
	if len(orphans) != 3 {
		t.Fatalf("orphans = %+v, want agent, shadow and switched service", orphans)
	}

	var out bytes.Buffer
	acts := ServiceTeardown(key, inv)
	if err := Execute(ctx, c, acts, true, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `service/api restored (dry run): patch {"metadata"`) {
		t.Fatalf("dry run output:\n%s", out.String())
	}
	if got, _ := c.CoreV1().Services("dev").Get(ctx, "api", metav1.GetOptions{}); got.Spec.Selector["app"] != "" {
		t.Fatal("dry run changed the service")
	}

	out.Reset()
	if err := Execute(ctx, c, acts, false, &out); err != nil {
		t.Fatalf("execute: %v\n%s", err, out.String())
	}
	got, _ := c.CoreV1().Services("dev").Get(ctx, "api", metav1.GetOptions{})
	if got.Spec.Selector["app"] != "api" || len(got.Spec.Selector) != 1 || len(got.Annotations) != 0 {
		t.Fatalf("service after cleanup: selector %v annotations %v", got.Spec.Selector, got.Annotations)
	}
	if _, err := c.BatchV1().Jobs("dev").Get(ctx, job.Name, metav1.GetOptions{}); err == nil {
		t.Fatal("agent job survived")
	}
	if _, err := c.CoreV1().Services("dev").Get(ctx, lookalike.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("user's look-alike service was deleted: %v", err)
	}

	// Idempotent: a second run finds nothing to do and reports nothing.
	out.Reset()
	if err := Execute(ctx, c, ServiceTeardown(key, nil), false, &out); err != nil || out.Len() != 0 {
		t.Fatalf("second run: err %v, output %q", err, out.String())
	}
}

func TestUnlabelledObjectIsNotDeleted(t *testing.T) {
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: objects.AgentName("api"), Namespace: "dev"},
		Spec: batchv1.JobSpec{Parallelism: ptr.To[int32](1)}}
	c := fake.NewClientset(job)
	err := Execute(context.Background(), c, []Action{{Verb: VerbDelete, Kind: KindJob, Namespace: "dev", Name: job.Name}}, false, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "did not create it") {
		t.Fatalf("deleting an unlabelled job: err = %v", err)
	}
}
