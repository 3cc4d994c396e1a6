package session

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

var t0 = time.Date(2026, 4, 1, 10, 0, 0, 0, time.UTC)

func forwardSpec() Spec {
	return Spec{
		Kind:          KindForward,
		User:          "alice",
		Host:          "laptop",
		PluginVersion: "v0.1.0",
		StartTime:     t0,
		Forward: &ForwardSpec{Targets: []ForwardTarget{{
			Resource: "svc/db",
			Ports:    []ForwardPort{{Name: "pg", Remote: 5432, Local: []string{"127.0.0.1:5432"}}},
		}}},
	}
}

func TestSpecRoundTrip(t *testing.T) {
	for _, spec := range []Spec{
		forwardSpec(),
		{Kind: KindIntercept, User: "bob", StartTime: t0, Intercept: &InterceptSpec{
			Service: "api", Port: 80, Mode: "steal", TokenHash: "sha256:ab",
			Match: []MatchRule{{Type: "header", Name: "owner", Value: "bob"}},
		}},
	} {
		enc, err := EncodeSpec(spec)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeSpec(enc)
		if err != nil {
			t.Fatal(err)
		}
		spec.Version = SpecVersion
		if enc2, _ := EncodeSpec(got); enc2 != enc {
			t.Errorf("round trip changed the spec:\n%s\n%s", enc, enc2)
		}
		if got.Version != SpecVersion || got.Kind != spec.Kind {
			t.Errorf("decoded %+v", got)
		}
	}
}

func TestDecodeVersions(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{`{"version":1,"kind":"forward","startTime":"2026-04-01T10:00:00Z","someFutureField":1}`, ""},
		{`{"version":2,"kind":"forward"}`, "upgrade kubectl-bridge"},
		{`{"kind":"forward"}`, "missing version"},
		{`not json`, "invalid character"},
	}
	for _, tt := range tests {
		_, err := DecodeSpec(tt.in)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("DecodeSpec(%s) error = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
	if _, err := DecodeSpec(`{"version":9}`); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("want ErrUnsupportedVersion, got %v", err)
	}
	if _, err := EncodeSpec(Spec{}); err == nil {
		t.Error("EncodeSpec accepted a spec without kind")
	}
}

func TestNewLease(t *testing.T) {
	lease, err := NewLease("dev", "abc123", "alice@laptop", 30*time.Second, forwardSpec(), t0)
	if err != nil {
		t.Fatal(err)
	}
	if lease.Name != "bridge-abc123" || lease.Namespace != "dev" {
		t.Errorf("name %s/%s", lease.Namespace, lease.Name)
	}
	for k, v := range map[string]string{
		"app.kubernetes.io/managed-by": "kubectl-bridge",
		"kubectl-bridge.io/session":    "abc123",
		"kubectl-bridge.io/kind":       "forward",
	} {
		if lease.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, lease.Labels[k], v)
		}
	}
	if !Selector(KindForward).Matches(labelsOf(lease)) || Selector(KindIntercept).Matches(labelsOf(lease)) || !Selector("").Matches(labelsOf(lease)) {
		t.Error("selectors do not match the labels")
	}
	if *lease.Spec.HolderIdentity != "alice@laptop" || *lease.Spec.LeaseDurationSeconds != 30 {
		t.Errorf("spec %+v", lease.Spec)
	}
	info := FromLease(lease)
	if info.SpecErr != nil || info.Spec.User != "alice" || info.ID != "abc123" || info.Kind != KindForward {
		t.Errorf("FromLease = %+v", info)
	}
}

func labelsOf(l *coordinationv1.Lease) labels.Set { return labels.Set(l.Labels) }

func TestExpired(t *testing.T) {
	renew := metav1.NewMicroTime(t0)
	tests := []struct {
		name  string
		lease coordinationv1.Lease
		now   time.Time
		want  bool
	}{
		{"fresh", coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{RenewTime: &renew, LeaseDurationSeconds: ptr.To[int32](30)}}, t0.Add(29 * time.Second), false},
		{"at deadline", coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{RenewTime: &renew, LeaseDurationSeconds: ptr.To[int32](30)}}, t0.Add(30 * time.Second), false},
		{"missed", coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{RenewTime: &renew, LeaseDurationSeconds: ptr.To[int32](30)}}, t0.Add(31 * time.Second), true},
		{"default duration", coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{AcquireTime: &renew}}, t0.Add(31 * time.Second), true},
		{"creation time only", coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(t0)}}, t0.Add(10 * time.Second), false},
	}
	for _, tt := range tests {
		if got := Expired(&tt.lease, tt.now); got != tt.want {
			t.Errorf("%s: Expired = %v, want %v", tt.name, got, tt.want)
		}
		if got := FromLease(&tt.lease).Expired(tt.now); got != tt.want {
			t.Errorf("%s: Info.Expired = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	clk := clocktesting.NewFakeClock(t0)
	s, err := Create(ctx, client.CoordinationV1(), Config{Namespace: "dev", Spec: forwardSpec(), Holder: "alice@laptop", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ID) != 8 {
		t.Errorf("id %q", s.ID)
	}
	clk.Step(10 * time.Second)
	if err := s.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := SetStatus(ctx, client.CoordinationV1(), "dev", s.ID, Status{Phase: PhaseActive, Agent: "bridge-agent-api-x", ObservedTime: t0}); err != nil {
		t.Fatal(err)
	}
	infos, err := List(ctx, client.CoordinationV1(), "", KindForward)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 {
		t.Fatalf("List = %d sessions", len(infos))
	}
	info := infos[0]
	if !info.RenewTime.Equal(t0.Add(10*time.Second)) || info.Status == nil || info.Status.Phase != PhaseActive || info.Spec.User != "alice" {
		t.Errorf("info = %+v status %+v", info, info.Status)
	}
	if info.Expired(t0.Add(39*time.Second)) || !info.Expired(t0.Add(41*time.Second)) {
		t.Error("expiry does not follow the renewal")
	}
	if err := s.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if err := Delete(ctx, client.CoordinationV1(), "dev", s.ID); err != nil {
		t.Errorf("package Delete of a gone lease: %v", err)
	}
	if err := s.Renew(ctx); !errors.Is(err, ErrGone) {
		t.Errorf("Renew after delete = %v, want ErrGone", err)
	}
}

func TestHeartbeat(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	patches := make(chan struct{}, 10)
	failNext := true
	client.PrependReactor("patch", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		patches <- struct{}{}
		if failNext {
			// The first renewal fails: the heartbeat must survive it.
			failNext = false
			return true, nil, errors.New("apiserver unavailable")
		}
		return false, nil, nil
	})
	clk := clocktesting.NewFakeClock(t0)
	s, err := Create(ctx, client.CoordinationV1(), Config{Namespace: "dev", Spec: forwardSpec(), Clock: clk, LeaseDuration: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- s.Heartbeat(ctx) }()
	for i := 0; i < 2; i++ {
		for !clk.HasWaiters() {
			time.Sleep(time.Millisecond)
		}
		clk.Step(10 * time.Second)
		<-patches
	}
	lease, err := client.CoordinationV1().Leases("dev").Get(ctx, s.LeaseName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !lease.Spec.RenewTime.Time.Equal(t0.Add(20 * time.Second)) {
		t.Errorf("renewTime = %v", lease.Spec.RenewTime)
	}

	// Someone runs `kubectl bridge clean`: the heartbeat reports it.
	if err := client.CoordinationV1().Leases("dev").Delete(ctx, s.LeaseName(), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(10 * time.Second)
	if err := <-done; !errors.Is(err, ErrGone) {
		t.Errorf("Heartbeat = %v, want ErrGone", err)
	}
}

func TestHeartbeatStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	client := fake.NewClientset()
	s, err := Create(ctx, client.CoordinationV1(), Config{Namespace: "dev", Spec: forwardSpec()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- s.Heartbeat(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Heartbeat = %v", err)
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if len(id) != 8 || strings.Trim(id, idAlphabet) != "" || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
}
