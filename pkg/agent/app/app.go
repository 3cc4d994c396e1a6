// Package app is the bridge-agent command: flags (package options) in, a running agent.Server out.
// With --service the agent runs in the cluster: package agentcontrol supplies its sessions from
// Leases and keeps the intercepted Service switched, and puts it back when the agent stops.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent/options"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/agentcontrol"
	bversion "github.com/kubectl-bridge/kubectl-bridge/pkg/version"
)

// NewCommand returns the bridge-agent root command. version is reported to CLIs in the tunnel
// handshake; empty takes the version stamped into the binary (package version).
func NewCommand(version string) *cobra.Command {
	o := options.NewOptions()
	if version == "" {
		version = bversion.Version()
	}
	cmd := &cobra.Command{
		Use:   "bridge-agent",
		Short: "In-cluster agent of kubectl-bridge intercepts",
		Long: "bridge-agent serves every port of an intercepted Service: connections go to a developer's laptop\n" +
			"through the session's tunnel (steal), are copied to it (mirror), or pass through to the shadow Service.",
		Args:    cobra.NoArgs,
		Version: version,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.Config(version)
			if err != nil {
				return err
			}
			// Arguments are valid: from here on, failures are not usage errors.
			cmd.SilenceUsage = true
			if o.Service == "" {
				return Run(cmd.Context(), cfg)
			}
			return RunInCluster(cmd.Context(), cfg, o)
		},
	}
	cmd.SilenceErrors = false
	o.AddFlags(cmd.Flags())
	return cmd
}

// Run serves cfg until ctx ends (SIGTERM), then shuts down within the configured grace.
func Run(ctx context.Context, cfg agent.Config) error {
	srv, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if err := srv.Run(ctx); err != nil {
		return fmt.Errorf("bridge-agent: %w", err)
	}
	return nil
}

// RunInCluster serves the Service named by o.Service with sessions from the cluster, until the
// last session has been gone for the idle grace, the Service is deleted, or the pod is stopped.
// Whatever the reason, the Service's selector is restored before the agent stops serving.
func RunInCluster(ctx context.Context, cfg agent.Config, o *options.Options) error {
	log := cfg.Logger
	rc, err := rest.InClusterConfig()
	if err != nil {
		return fmt.Errorf("bridge-agent: in-cluster config: %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("bridge-agent: client: %w", err)
	}
	ctl := agentcontrol.New(agentcontrol.Config{
		Client: client, Namespace: o.Namespace, Service: o.Service, PodName: o.PodName,
		IdleGrace: o.IdleGrace, Logger: log,
	})
	cfg.Sessions = ctl // Lookup waits until the session cache is synced
	cfg.OnSessionEvent = ctl.OnSessionEvent
	up := newUpstreams(client, o.Namespace, cfg.Ports, cfg.DialUpstream, log)
	cfg.DialUpstream = up.dial
	cfg.UpstreamReady = up.routable
	srv, err := agent.New(cfg)
	if err != nil {
		return err
	}
	// Listen before the first API call: the kubelet probes readiness as soon as it sees the
	// container running, and a probe that finds nothing listening costs a whole probe period
	// (1 s) before the Service can be switched. Until the calls below return, connections wait
	// for the upstream address and tunnels for the session cache; none is refused.
	if err := srv.Start(); err != nil {
		return fmt.Errorf("bridge-agent: %w", err)
	}
	go up.resolve(ctx)
	if err := ctl.Start(ctx); err != nil {
		// Ready already, so the Service may have been switched to this pod: put it back before
		// going away, as on any other stop.
		cleanupCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
		defer cancel()
		errs := []error{fmt.Errorf("start watching sessions: %w", err)}
		if err := ctl.Shutdown(cleanupCtx); err != nil {
			errs = append(errs, fmt.Errorf("restore service: %w", err))
		}
		_ = srv.Shutdown(cleanupCtx)
		return fmt.Errorf("bridge-agent: %w", errors.Join(errs...))
	}
	outcome, runErr := ctl.Run(ctx, srv)
	log.Info("agent stopping", "outcome", outcome)

	// Restore first (the original pods take new connections at once), then drain.
	cleanupCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var errs []error
	if outcome == agentcontrol.OutcomeStopped {
		if err := ctl.Shutdown(cleanupCtx); err != nil {
			errs = append(errs, fmt.Errorf("restore service on shutdown: %w", err))
		}
	}
	srv.Drain(context.Background(), cfg.ShutdownDrain)
	grace, cancelGrace := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancelGrace()
	if err := srv.Shutdown(grace); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, runErr)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bridge-agent: %w", err)
	}
	return nil
}

// upstreams resolves each upstream given as a Service name (the shadow Service) to that Service's
// ClusterIP, once: ClusterIPs never change, and dialing an IP saves a DNS lookup per connection.
// Dials wait for the resolution; if it fails, the name is dialed as given (cluster DNS).
type upstreams struct {
	client    kubernetes.Interface
	namespace string
	names     []string // upstreams that are bare Service names, host:port
	next      func(ctx context.Context, network, addr string) (net.Conn, error)
	log       *slog.Logger
	done      chan struct{}
	resolved  map[string]string
	// selectors are the upstream Services' selectors, by Service name.
	selectors map[string]map[string]string
}

func newUpstreams(client kubernetes.Interface, namespace string, ports []agent.DataPort,
	next func(ctx context.Context, network, addr string) (net.Conn, error), log *slog.Logger) *upstreams {
	if next == nil {
		next = (&net.Dialer{Timeout: agent.DefaultDialTimeout}).DialContext
	}
	u := &upstreams{client: client, namespace: namespace, next: next, log: log, done: make(chan struct{}),
		resolved: map[string]string{}, selectors: map[string]map[string]string{}}
	for _, p := range ports {
		host, _, err := net.SplitHostPort(p.Upstream)
		// Only a bare name is a Service of this namespace; IPs and DNS names are dialed as given.
		if err == nil && net.ParseIP(host) == nil && !strings.Contains(host, ".") {
			u.names = append(u.names, p.Upstream)
		}
	}
	return u
}

func (u *upstreams) resolve(ctx context.Context) {
	defer close(u.done)
	ips := map[string]string{}
	for _, hp := range u.names {
		host, port, _ := net.SplitHostPort(hp)
		ip, ok := ips[host]
		if !ok {
			svc, err := u.client.CoreV1().Services(u.namespace).Get(ctx, host, metav1.GetOptions{})
			if err != nil {
				u.log.Warn("resolve upstream service; dialing it by name", "service", host, "err", err)
				continue
			}
			if ip = svc.Spec.ClusterIP; ip == "None" {
				ip = ""
			}
			ips[host] = ip
			u.selectors[host] = svc.Spec.Selector
		}
		if ip != "" {
			u.resolved[hp] = net.JoinHostPort(ip, port)
		}
	}
}

// routable reports whether every upstream (a shadow Service) can take connections: one is
// accepted. A Service whose pods are all down is routable when the node refuses the connection
// (kube-proxy rejects connections to a Service without endpoints); while any of its pods is
// Ready, a refusal means kube-proxy has not caught up with the new Service's endpoints yet, and a
// timeout that it has not programmed the Service at all. Until then the agent is not Ready, so a
// switched Service never sends it connections it would have to reset.
func (u *upstreams) routable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	seen := map[string]bool{}
	for _, hp := range u.names {
		if seen[hp] {
			continue
		}
		seen[hp] = true
		conn, err := u.dial(ctx, "tcp", hp)
		if err == nil {
			_ = conn.Close()
			continue
		}
		host, _, _ := net.SplitHostPort(hp)
		if errors.Is(err, syscall.ECONNREFUSED) && !u.anyPodReady(ctx, host) {
			continue
		}
		return fmt.Errorf("upstream %s: %w", hp, err)
	}
	return nil
}

// anyPodReady reports whether a Ready pod matches the upstream Service's selector (true when it
// cannot tell: the agent then waits for a connection to be accepted).
func (u *upstreams) anyPodReady(ctx context.Context, service string) bool {
	sel, ok := u.selectors[service]
	if !ok || len(sel) == 0 {
		return true
	}
	pods, err := u.client.CoreV1().Pods(u.namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(sel).String()})
	if err != nil {
		return true
	}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
				return true
			}
		}
	}
	return false
}

func (u *upstreams) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	select {
	case <-u.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if ip, ok := u.resolved[addr]; ok {
		addr = ip
	}
	return u.next(ctx, network, addr)
}
