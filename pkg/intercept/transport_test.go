package intercept

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

// fakeDial counts its calls and answers with err, or a pipe; hang makes it wait for its context.
type fakeDial struct {
	calls atomic.Int32
	err   error
	hang  bool
}

func (f *fakeDial) dial(ctx context.Context, _ portforward.PodRef, _ int32) (net.Conn, error) {
	f.calls.Add(1)
	if f.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	a, b := net.Pipe()
	_ = b.Close()
	return a, nil
}

func TestTunnelDialer(t *testing.T) {
	pod := portforward.PodRef{Namespace: "ns", Name: "agent"}
	forbidden := errors.New("upgrade refused (HTTP 403)")
	gone := errors.New("pod gone")

	t.Run("auto uses the proxy when it works", func(t *testing.T) {
		px, pf := &fakeDial{}, &fakeDial{}
		d := &TunnelDialer{Mode: TransportAuto, Proxy: px.dial, PortForward: pf.dial}
		for range 2 {
			if _, err := d.Dial(context.Background(), pod, 7070); err != nil {
				t.Fatal(err)
			}
		}
		if px.calls.Load() != 2 || pf.calls.Load() != 0 || d.Last() != TransportProxy {
			t.Fatalf("proxy %d, port-forward %d, last %q", px.calls.Load(), pf.calls.Load(), d.Last())
		}
	})

	t.Run("auto settles on port-forward once it worked where the proxy did not", func(t *testing.T) {
		px, pf := &fakeDial{err: forbidden}, &fakeDial{}
		var told []error
		d := &TunnelDialer{Mode: TransportAuto, Proxy: px.dial, PortForward: pf.dial, OnFallback: func(err error) { told = append(told, err) }}
		for range 3 {
			if _, err := d.Dial(context.Background(), pod, 7070); err != nil {
				t.Fatal(err)
			}
		}
		if px.calls.Load() != 1 || pf.calls.Load() != 3 || d.Last() != TransportPortForward {
			t.Fatalf("proxy %d, port-forward %d, last %q", px.calls.Load(), pf.calls.Load(), d.Last())
		}
		if len(told) != 1 || !errors.Is(told[0], forbidden) {
			t.Fatalf("told %v", told)
		}
	})

	t.Run("auto keeps trying the proxy while both fail", func(t *testing.T) {
		px, pf := &fakeDial{err: gone}, &fakeDial{err: gone}
		d := &TunnelDialer{Mode: TransportAuto, Proxy: px.dial, PortForward: pf.dial, OnFallback: func(error) { t.Error("fell back") }}
		_, err := d.Dial(context.Background(), pod, 7070)
		if err == nil || !strings.Contains(err.Error(), "proxy: pod gone") || !strings.Contains(err.Error(), "port-forward: pod gone") {
			t.Fatalf("want both failures named, got %v", err)
		}
		px.err = nil
		if _, err := d.Dial(context.Background(), pod, 7070); err != nil || d.Last() != TransportProxy {
			t.Fatalf("second dial: %v, last %q", err, d.Last())
		}
	})

	t.Run("a proxy attempt that hangs is bounded", func(t *testing.T) {
		px, pf := &fakeDial{hang: true}, &fakeDial{}
		d := &TunnelDialer{Mode: TransportAuto, Proxy: px.dial, PortForward: pf.dial, ProxyAttempt: 50 * time.Millisecond}
		start := time.Now()
		if _, err := d.Dial(context.Background(), pod, 7070); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 5*time.Second || d.Last() != TransportPortForward {
			t.Fatalf("took %s, last %q", time.Since(start), d.Last())
		}
	})

	t.Run("explicit modes never fall back", func(t *testing.T) {
		px, pf := &fakeDial{err: forbidden}, &fakeDial{err: gone}
		if _, err := (&TunnelDialer{Mode: TransportProxy, Proxy: px.dial, PortForward: pf.dial}).Dial(context.Background(), pod, 7070); !errors.Is(err, forbidden) {
			t.Fatalf("proxy mode: %v", err)
		}
		if _, err := (&TunnelDialer{Mode: TransportPortForward, Proxy: px.dial, PortForward: pf.dial}).Dial(context.Background(), pod, 7070); !errors.Is(err, gone) {
			t.Fatalf("port-forward mode: %v", err)
		}
		if px.calls.Load() != 1 || pf.calls.Load() != 1 {
			t.Fatalf("proxy %d, port-forward %d", px.calls.Load(), pf.calls.Load())
		}
	})
}
