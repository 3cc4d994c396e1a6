package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
)

// TestUpstreamsWaitAndResolve: dials made before the shadow Service is read wait for it, then go
// to its ClusterIP; an address that is not a bare Service name, or a Service that cannot be read,
// is dialed as given.
func TestUpstreamsWaitAndResolve(t *testing.T) {
	client := fake.NewClientset(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api-shadow", Namespace: "dev"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.9"},
	})
	ports := []agent.DataPort{{Upstream: "api-shadow:80"}, {Upstream: "10.1.1.1:81"}, {Upstream: "missing:82"}}
	dialed := make(chan string, 3)
	errDial := errors.New("not dialing in a unit test")
	next := func(_ context.Context, _, addr string) (net.Conn, error) {
		dialed <- addr
		return nil, errDial
	}
	u := newUpstreams(client, "dev", ports, next, slog.New(slog.DiscardHandler))

	early := make(chan struct{})
	go func() {
		_, _ = u.dial(context.Background(), "tcp", "api-shadow:80")
		close(early)
	}()
	select {
	case <-early:
		t.Fatal("a dial went ahead before the upstreams were resolved")
	case <-time.After(20 * time.Millisecond):
	}
	u.resolve(context.Background())
	<-early
	if got := <-dialed; got != "10.96.0.9:80" {
		t.Errorf("dialed %s, want the shadow Service's ClusterIP", got)
	}
	for _, addr := range []string{"10.1.1.1:81", "missing:82"} {
		if _, err := u.dial(context.Background(), "tcp", addr); !errors.Is(err, errDial) {
			t.Fatal(err)
		}
		if got := <-dialed; got != addr {
			t.Errorf("dialed %s, want %s as given", got, addr)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := newUpstreams(client, "dev", ports, next, slog.New(slog.DiscardHandler)).dial(ctx, "tcp", "api-shadow:80"); !errors.Is(err, context.Canceled) {
		t.Errorf("dial with a cancelled context before resolution: %v", err)
	}
}
