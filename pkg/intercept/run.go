package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cleanup"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// RunConfig wires Run to the terminal and the API server.
type RunConfig struct {
	// Dial opens a connection to a pod's port through the API server (TunnelDialer.Dial).
	Dial DialFunc
	// OnStream is told about every intercepted connection (for the live output).
	OnStream func(tunnel.StreamEvent)
	// OnState is told about tunnel state changes (connected, reconnecting).
	OnState func(tunnel.StateChange)
	Logger  *slog.Logger
}

// ErrEnded is returned by Run when the session was ended from elsewhere (its Lease deleted).
var ErrEnded = errStopped

// Run attaches the session to the agent through a connection to its control port and delivers
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
			return rc.Dial(ctx, portforward.PodRef{Namespace: pod.Namespace, Name: pod.Name}, p.params.ControlPort)
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

// Closed says what Close did.
type Closed struct {
	// Restored is set when this was the Service's last session and its selector was restored.
	Restored bool
	// SelectorRestored is how long it took from the start of Close until the Service selected the
	// original pods again; AgentRemoved until the agent's objects were deleted too.
	SelectorRestored, AgentRemoved time.Duration
}

// Close ends the session: its Lease is deleted and, when no other live session uses the Service's
// agent, the Service is restored first (the original pods serve new connections at once), then
// the agent, its RBAC and the shadow Service are deleted. Its errors say how to finish the job.
func (i *Intercept) Close(ctx context.Context, out io.Writer) (Closed, error) {
	p := i.plan
	start := time.Now()
	undo := fmt.Sprintf("run 'kubectl bridge clean svc/%s -n %s'", p.svc.Name, p.cfg.Namespace)
	if err := i.sess.Delete(ctx); err != nil {
		return Closed{}, fmt.Errorf("%w (%s)", err, undo)
	}
	// Retire keeps the agent when another session is live, including one that starts right now.
	key := inventory.ServiceKey{Namespace: p.cfg.Namespace, Name: p.svc.Name}
	r, err := cleanup.Retire(ctx, p.cfg.Client, key, cleanup.RetireOptions{By: i.holder, Except: []string{i.sess.ID}})
	if err != nil {
		return Closed{}, fmt.Errorf("%w (%s)", err, undo)
	}
	if r.Live > 0 {
		fmt.Fprintf(out, "The agent keeps serving %d other session(s) on service %s.\n", r.Live, p.svc.Name)
		return Closed{}, nil
	}
	// The Service was restored first (the original pods take new connections at once), and the
	// agent Job deleted. The shadow Service and RBAC go only once the agent's pod is gone: until
	// kube-proxy has caught up with the restore, the stopping agent keeps taking connections (it
	// drains), and it sends those no session wants to the original pods through the shadow.
	// They are deleted only if the retired Job owns them: a session starting meanwhile has
	// objects of the same names.
	res := Closed{Restored: true, SelectorRestored: time.Since(start)}
	if r.Job == "" {
		return res, nil
	}
	i.waitAgentGone(ctx, r.Job)
	rest := append([]cleanup.Action{{Verb: cleanup.VerbDelete, Kind: cleanup.KindService, Namespace: p.cfg.Namespace,
		Name: objects.ShadowName(p.svc.Name), Service: p.svc.Name, Owner: r.Job}},
		cleanup.AgentRBAC(p.cfg.Namespace, p.svc.Name, r.Job)...)
	if err := cleanup.Execute(ctx, p.cfg.Client, rest, false, io.Discard); err != nil {
		return res, fmt.Errorf("remove the agent of service %s: %w (%s)", p.svc.Name, err, undo)
	}
	res.AgentRemoved = time.Since(start)
	return res, nil
}

// agentGoneTimeout bounds the wait for the agent's pod to end: its drain (2 s) and the grace it
// gives connections in flight (10 s) fit in its pod's termination grace period of 15 s.
const agentGoneTimeout = 20 * time.Second

// waitAgentGone waits until no pod of the retired agent Job (by UID: a new agent has the same
// name) is left, at most agentGoneTimeout; after that, or when listing fails, teardown goes on
// (clean, or the agent, remove what stays).
func (i *Intercept) waitAgentGone(ctx context.Context, job types.UID) {
	sel := metav1.ListOptions{LabelSelector: batchv1.ControllerUidLabel + "=" + string(job)}
	pods := i.plan.cfg.Client.CoreV1().Pods(i.plan.cfg.Namespace)
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, agentGoneTimeout, true, func(ctx context.Context) (bool, error) {
		l, err := pods.List(ctx, sel)
		return err != nil || len(l.Items) == 0, nil
	})
}
