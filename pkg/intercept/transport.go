package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

// How the CLI reaches the agent's control port (--tunnel).
const (
	// TransportAuto tries pods/proxy and falls back to port-forward.
	TransportAuto = "auto"
	// TransportProxy is an HTTP upgrade through the API server's pods/proxy: API server → pod IP.
	TransportProxy = "proxy"
	// TransportPortForward is a port-forward: API server → kubelet → container runtime → pod.
	TransportPortForward = "port-forward"
)

// Transports lists the --tunnel values.
func Transports() []string { return []string{TransportAuto, TransportProxy, TransportPortForward} }

// DialFunc opens a connection to a pod's port.
type DialFunc func(ctx context.Context, pod portforward.PodRef, port int32) (net.Conn, error)

// DefaultProxyAttempt bounds a pods/proxy attempt in auto mode. A NetworkPolicy that drops the
// API server's packets to the pod would otherwise hold the tunnel for the API server's own dial
// timeout (30 s) before the port-forward is tried.
const DefaultProxyAttempt = 3 * time.Second

// TunnelDialer dials the agent's control port the way Mode says. In auto mode each dial tries
// pods/proxy first and, when that fails, a port-forward; once a port-forward has worked right
// after pods/proxy failed (the pod was there, the API server could not or would not proxy to
// it), later dials go straight to the port-forward. A failure of both (the agent pod being
// replaced) changes nothing.
type TunnelDialer struct {
	Mode        string
	Proxy       DialFunc
	PortForward DialFunc
	// ProxyAttempt bounds a pods/proxy attempt in auto mode (default DefaultProxyAttempt).
	ProxyAttempt time.Duration
	// OnFallback, if set, is told once when auto mode settles on port-forward, and why.
	OnFallback func(proxyErr error)

	mu      sync.Mutex
	settled bool   // auto mode gave up on pods/proxy
	last    string // the transport of the last successful dial
}

// Dial implements the tunnel's dial.
func (d *TunnelDialer) Dial(ctx context.Context, pod portforward.PodRef, port int32) (net.Conn, error) {
	switch d.Mode {
	case TransportProxy:
		return d.dial(ctx, TransportProxy, d.Proxy, pod, port)
	case TransportPortForward:
		return d.dial(ctx, TransportPortForward, d.PortForward, pod, port)
	case TransportAuto, "":
	default:
		return nil, fmt.Errorf("unknown tunnel transport %q", d.Mode)
	}
	d.mu.Lock()
	settled := d.settled
	d.mu.Unlock()
	if settled {
		return d.dial(ctx, TransportPortForward, d.PortForward, pod, port)
	}
	attempt := d.ProxyAttempt
	if attempt <= 0 {
		attempt = DefaultProxyAttempt
	}
	pctx, cancel := context.WithTimeout(ctx, attempt)
	conn, proxyErr := d.dial(pctx, TransportProxy, d.Proxy, pod, port)
	cancel()
	if proxyErr == nil || ctx.Err() != nil {
		return conn, proxyErr
	}
	conn, err := d.dial(ctx, TransportPortForward, d.PortForward, pod, port)
	if err != nil {
		return nil, errors.Join(proxyErr, err)
	}
	d.mu.Lock()
	first := !d.settled
	d.settled = true
	d.mu.Unlock()
	if first && d.OnFallback != nil {
		d.OnFallback(proxyErr)
	}
	return conn, nil
}

func (d *TunnelDialer) dial(ctx context.Context, name string, dial DialFunc, pod portforward.PodRef, port int32) (net.Conn, error) {
	conn, err := dial(ctx, pod, port)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	d.mu.Lock()
	d.last = name
	d.mu.Unlock()
	return conn, nil
}

// Last returns the transport of the last successful dial ("" before the first).
func (d *TunnelDialer) Last() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}
