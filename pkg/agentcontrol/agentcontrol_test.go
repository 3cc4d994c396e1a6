package agentcontrol

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/redirect"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

type fakeServer struct {
	sessions []agent.SessionSpec
	evicted  []string
}

func (f *fakeServer) Sessions() []agent.SessionSpec     { return f.sessions }
func (f *fakeServer) SessionRequests() map[string]int64 { return nil }

func (f *fakeServer) Evict(id, _ string) bool {
	f.evicted = append(f.evicted, id)
	return true
}

func lease(t *testing.T, id string, renewed time.Time) *coordinationv1.Lease {
	t.Helper()
	l, err := session.NewLease("dev", id, "me@laptop", 30*time.Second, session.Spec{
		Kind: session.KindIntercept, User: "me", Host: "laptop", StartTime: renewed,
		Intercept: &session.InterceptSpec{Service: "api", Port: 80, PortName: "http", Mode: "steal", TokenHash: tunnel.HashToken("tok")},
	}, renewed)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func setup(t *testing.T, objs ...runtime.Object) (*Controller, *fake.Clientset, *clocktesting.FakeClock) {
	t.Helper()
	orig := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "api"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	agentPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-pod", Namespace: "dev"},
		Status:     corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	job := objects.AgentJob(objects.AgentParams{Namespace: "dev", Service: "api"})
	c := fake.NewClientset(append([]runtime.Object{orig, agentPod, job}, objs...)...)
	clk := clocktesting.NewFakeClock(t0)
	ctl := New(Config{Client: c, Namespace: "dev", Service: "api", PodName: "agent-pod", IdleGrace: 30 * time.Second, Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return ctl, c, clk
}

func getService(t *testing.T, c *fake.Clientset) *corev1.Service {
	t.Helper()
	svc, err := c.CoreV1().Services("dev").Get(context.Background(), "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestLookupFromLease(t *testing.T) {
	ctl, _, clk := setup(t, lease(t, "live0001", t0))
	spec, err := ctl.Lookup(context.Background(), "live0001")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Port != 80 || spec.PortName != "http" || spec.Mode != tunnel.ModeSteal || !tunnel.VerifyToken(spec.TokenHash, "tok") || spec.User != "me on laptop" {
		t.Fatalf("spec = %+v", spec)
	}
	if _, err := ctl.Lookup(context.Background(), "nope0001"); !errors.Is(err, agent.ErrUnknownSession) {
		t.Fatalf("unknown session: %v", err)
	}
	clk.Step(time.Minute)
	var refused *tunnel.RefusedError
	if _, err := ctl.Lookup(context.Background(), "live0001"); !errors.As(err, &refused) || refused.Retryable {
		t.Fatalf("expired session: want a permanent refusal, got %v", err)
	}
}

// TestLookupWaitsForTheCache: the agent listens before its session cache is filled; a tunnel
// attaching meanwhile waits for it, and is told to retry if its handshake time runs out first.
func TestLookupWaitsForTheCache(t *testing.T) {
	c := fake.NewClientset(lease(t, "live0001", t0))
	ctl := New(Config{Client: c, Namespace: "dev", Service: "api", PodName: "agent-pod", Clock: clocktesting.NewFakeClock(t0)})
	short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelShort()
	var refused *tunnel.RefusedError
	if _, err := ctl.Lookup(short, "live0001"); !errors.As(err, &refused) || !refused.Retryable {
		t.Fatalf("before the cache is filled: want a retryable refusal, got %v", err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := ctl.Lookup(context.Background(), "live0001")
		got <- err
	}()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("lookup waiting for the cache: %v", err)
	}
}

func TestSwitchesWhileLiveAndHealsAReset(t *testing.T) {
	ctl, c, _ := setup(t, lease(t, "live0001", t0))
	srv := &fakeServer{sessions: []agent.SessionSpec{{ID: "live0001"}}}
	ctx := context.Background()
	if _, done := ctl.check(ctx, srv); done {
		t.Fatal("check ended the agent")
	}
	if !redirect.Switched(getService(t, c)) {
		t.Fatalf("a live session and a Ready agent: service not switched: %v", getService(t, c).Spec.Selector)
	}
	// Someone re-applies the original selector (GitOps).
	svc := getService(t, c)
	svc.Spec.Selector = map[string]string{"app": "api"}
	if _, err := c.CoreV1().Services("dev").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCache(t, func() bool { s, _ := ctl.services.Services("dev").Get("api"); return !redirect.Switched(s) })
	ctl.check(ctx, srv)
	if svc := getService(t, c); !redirect.Switched(svc) || !maps.Equal(objects.OriginalSelector(svc), map[string]string{"app": "api"}) {
		t.Fatalf("after a reset: selector %v annotations %v", svc.Spec.Selector, svc.Annotations)
	}
}

func TestEvictsAndTearsDownWhenIdle(t *testing.T) {
	ctl, c, clk := setup(t, lease(t, "dead0001", t0))
	srv := &fakeServer{sessions: []agent.SessionSpec{{ID: "dead0001"}}}
	ctx := context.Background()
	if _, err := redirect.Switch(ctx, c.CoreV1(), "dev", "api"); err != nil {
		t.Fatal(err)
	}
	waitCache(t, func() bool { s, _ := ctl.services.Services("dev").Get("api"); return redirect.Switched(s) })

	clk.Step(31 * time.Second) // the Lease expires
	if _, done := ctl.check(ctx, srv); done {
		t.Fatal("torn down before the idle grace")
	}
	if len(srv.evicted) != 1 || srv.evicted[0] != "dead0001" {
		t.Fatalf("evicted = %v, want the expired session", srv.evicted)
	}
	clk.Step(31 * time.Second)
	out, done := ctl.check(ctx, srv)
	if !done || out != OutcomeIdle {
		t.Fatalf("after the grace: %v %v", out, done)
	}
	if svc := getService(t, c); redirect.Switched(svc) || svc.Spec.Selector["app"] != "api" {
		t.Fatalf("service not restored: %v", svc.Spec.Selector)
	}
	if _, err := c.BatchV1().Jobs("dev").Get(ctx, objects.AgentName("api"), metav1.GetOptions{}); err == nil {
		t.Fatal("agent job not deleted")
	}
	if _, err := c.CoordinationV1().Leases("dev").Get(ctx, session.LeaseName("dead0001"), metav1.GetOptions{}); err == nil {
		t.Fatal("the dead session's Lease survived the teardown")
	}
}

func waitCache(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("informer cache never caught up")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOnlyAuthenticatedRefusalsAreRecorded(t *testing.T) {
	ctl := New(Config{Client: fake.NewClientset(), Namespace: "dev", Service: "api"})
	ctl.OnSessionEvent(agent.SessionEvent{Kind: agent.SessionRefused, SessionID: "live0001", Reason: "invalid token"})
	if n := len(ctl.statuses); n != 0 {
		t.Fatalf("a forged attach queued %d status writes against the real session", n)
	}
	ctl.OnSessionEvent(agent.SessionEvent{Kind: agent.SessionRefused, SessionID: "live0001", Reason: "rule conflict", Authenticated: true})
	if u := <-ctl.statuses; u.status.Phase != session.PhaseRejected || u.status.Message != "rule conflict" {
		t.Fatalf("admission refusal recorded as %+v", u.status)
	}
}

// TestGivesTheServiceBackWhenTheTunnelIsGone: a killed CLI's Lease lives on for its duration, but
// its tunnel is gone at once; after the reconnect grace the Service selects the original pods
// again while the agent stays, and a CLI that reconnects gets the switch back.
func TestGivesTheServiceBackWhenTheTunnelIsGone(t *testing.T) {
	ctl, c, clk := setup(t, lease(t, "live0001", t0))
	srv := &fakeServer{sessions: []agent.SessionSpec{{ID: "live0001"}}}
	ctx := context.Background()
	ctl.check(ctx, srv)
	waitCache(t, func() bool { s, _ := ctl.services.Services("dev").Get("api"); return redirect.Switched(s) })

	srv.sessions = nil // the CLI was killed: its tunnel closed
	clk.Step(time.Second)
	ctl.check(ctx, srv)
	if !redirect.Switched(getService(t, c)) {
		t.Fatal("given back within the reconnect grace: a blip would flap the Service")
	}
	clk.Step(DefaultReconnectGrace)
	if _, done := ctl.check(ctx, srv); done {
		t.Fatal("the agent ended while a session's Lease is live")
	}
	svc := getService(t, c)
	if redirect.PointsAtAgent(svc) || !maps.Equal(svc.Spec.Selector, map[string]string{"app": "api"}) {
		t.Fatalf("after the reconnect grace: selector %v, want the original", svc.Spec.Selector)
	}
	waitCache(t, func() bool { s, _ := ctl.services.Services("dev").Get("api"); return !redirect.PointsAtAgent(s) })

	srv.sessions = []agent.SessionSpec{{ID: "live0001"}} // the CLI reconnects
	clk.Step(time.Second)
	ctl.check(ctx, srv)
	if !redirect.Switched(getService(t, c)) {
		t.Fatalf("a reconnected session: selector %v, want the agent's", getService(t, c).Spec.Selector)
	}
}

// TestStartGrace: a session that has not attached yet (its CLI has switched the Service and is
// dialing) keeps the switch for the start grace, from when this agent first saw its Lease, but
// never makes this agent switch: it may be starting against a new agent while this one retires.
func TestStartGrace(t *testing.T) {
	ctl, c, clk := setup(t, lease(t, "live0001", t0))
	srv := &fakeServer{}
	ctx := context.Background()
	ctl.check(ctx, srv)
	if redirect.PointsAtAgent(getService(t, c)) {
		t.Fatal("a session that never attached made the agent switch the Service")
	}
	// Its CLI switches the Service itself.
	if _, err := redirect.Switch(ctx, c.CoreV1(), "dev", "api"); err != nil {
		t.Fatal(err)
	}
	waitCache(t, func() bool { s, _ := ctl.services.Services("dev").Get("api"); return redirect.Switched(s) })
	clk.Step(DefaultStartGrace / 2)
	renew(t, c, "live0001", clk.Now())
	waitCache(t, func() bool { return len(ctl.liveSessions(clk.Now())) == 1 })
	ctl.check(ctx, srv)
	if !redirect.Switched(getService(t, c)) {
		t.Fatal("given back within the start grace")
	}
	// It renews the Lease but never attaches.
	clk.Step(DefaultStartGrace / 2)
	renew(t, c, "live0001", clk.Now())
	waitCache(t, func() bool { return len(ctl.liveSessions(clk.Now())) == 1 })
	ctl.check(ctx, srv)
	if redirect.PointsAtAgent(getService(t, c)) {
		t.Fatal("a session that never attached kept the Service past the start grace")
	}
}

// TestRetiredAgentNeverSwitches: an agent whose Job is being retired does not switch the Service
// back for a session attached to it.
func TestRetiredAgentNeverSwitches(t *testing.T) {
	ctl, c, _ := setup(t, lease(t, "live0001", t0))
	ctx := context.Background()
	patch := []byte(`{"metadata":{"annotations":{"` + objects.AnnotationClosing + `":"me@laptop"}}}`)
	if _, err := c.BatchV1().Jobs("dev").Patch(ctx, objects.AgentName("api"), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	ctl.check(ctx, &fakeServer{sessions: []agent.SessionSpec{{ID: "live0001"}}})
	if redirect.PointsAtAgent(getService(t, c)) {
		t.Fatal("an agent being retired switched the Service to itself")
	}
}

// TestKeepsServingWhileTheRestoreFails: with no copy of the original selector left, the agent
// neither tears down nor exits: the Service points at it, so it keeps serving.
func TestKeepsServingWhileTheRestoreFails(t *testing.T) {
	ctl, c, clk := setup(t)
	ctx := context.Background()
	svc := getService(t, c)
	svc.Spec.Selector = objects.AgentSelector("api") // switched, annotation and shadow lost
	if _, err := c.CoreV1().Services("dev").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCache(t, func() bool { s, _ := ctl.services.Services("dev").Get("api"); return redirect.PointsAtAgent(s) })
	clk.Step(2 * DefaultIdleGrace)
	if out, done := ctl.check(ctx, &fakeServer{}); done {
		t.Fatalf("the agent ended (%s) while the Service points at it", out)
	}
	if _, err := c.BatchV1().Jobs("dev").Get(ctx, objects.AgentName("api"), metav1.GetOptions{}); err != nil {
		t.Fatalf("the agent job was deleted although the Service is not restored: %v", err)
	}
}

func renew(t *testing.T, c *fake.Clientset, id string, now time.Time) {
	t.Helper()
	l, err := c.CoordinationV1().Leases("dev").Get(context.Background(), session.LeaseName(id), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Spec.RenewTime = &metav1.MicroTime{Time: now}
	if _, err := c.CoordinationV1().Leases("dev").Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
