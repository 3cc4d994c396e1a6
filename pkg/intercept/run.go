package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cleanup"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// PodDialer opens a connection to a pod's port through the API server (a port-forward stream).
type PodDialer interface {
	Dial(ctx context.Context, pod portforward.PodRef, port int32) (*portforward.Stream, error)
}

// RunConfig wires Run to the terminal and the port-forward.
type RunConfig struct {
	Dialer PodDialer
	// OnStream is told about every intercepted connection (for the live output).
	OnStream func(tunnel.StreamEvent)
	// OnState is told about tunnel state changes (connected, reconnecting).
	OnState func(tunnel.StateChange)
	Logger  *slog.Logger
}

// ErrEnded is returned by Run when the session was ended from elsewhere (its Lease deleted).
var ErrEnded = errStopped

// Run attaches the session to the agent through a port-forward to its control port and delivers
// intercepted connections to the local target, reconnecting by itself when the tunnel drops
// (agent restarted, network blip), until ctx ends (nil), the agent refuses the session
// (*tunnel.RefusedError) or the session's Lease is deleted (ErrEnded).
func (i *Intercept) Run(ctx context.Context, rc RunConfig) error {
	p := i.plan
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if err := i.sess.Heartbeat(ctx); errors.Is(err, session.ErrGone) {
			cancel(ErrEnded)
		}
	}()
	fwd := &tunnel.Forwarder{Target: tunnel.StaticTarget(p.cfg.LocalAddress), OnEvent: rc.OnStream}
	client, err := tunnel.NewClient(tunnel.ClientConfig{
		SessionID: i.sess.ID, Token: i.token, Version: p.cfg.Version, Handler: fwd, OnState: rc.OnState, Logger: rc.Logger,
		// An agent pod is replaced in a couple of seconds: redial often enough to notice soon.
		MaxBackoff: 2 * time.Second,
		Dial: func(ctx context.Context) (net.Conn, error) {
			pod, err := i.readyPod(ctx)
			if err != nil {
				return nil, err
			}
			return rc.Dialer.Dial(ctx, portforward.PodRef{Namespace: pod.Namespace, Name: pod.Name}, p.params.ControlPort)
		},
	})
	if err != nil {
		return err
	}
	err = client.Run(ctx)
	if cause := context.Cause(ctx); errors.Is(cause, ErrEnded) {
		return ErrEnded
	}
	return err
}

// Close ends the session: its Lease is deleted and, when no other live session uses the Service's
// agent, the Service is restored and the agent, its RBAC and the shadow Service are deleted. It
// reports whether it restored the Service.
func (i *Intercept) Close(ctx context.Context, out io.Writer) (bool, error) {
	p := i.plan
	if err := i.sess.Delete(ctx); err != nil {
		return false, err
	}
	inv, err := inventory.Collect(ctx, p.cfg.Client, p.cfg.Namespace)
	if err != nil {
		return false, err
	}
	key := inventory.ServiceKey{Namespace: p.cfg.Namespace, Name: p.svc.Name}
	if live := inv.LiveIntercepts(key, time.Now()); len(live) > 0 {
		fmt.Fprintf(out, "The agent keeps serving %d other session(s) on service %s.\n", len(live), p.svc.Name)
		return false, nil
	}
	if err := cleanup.Execute(ctx, p.cfg.Client, cleanup.ServiceTeardown(key, nil), false, io.Discard); err != nil {
		return false, fmt.Errorf("put service %s back: %w (run 'kubectl bridge clean svc/%s -n %s')", p.svc.Name, err, p.svc.Name, p.cfg.Namespace)
	}
	return true, nil
}
