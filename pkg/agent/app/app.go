// Package app is the bridge-agent command: flags (package options) in, a running agent.Server out.
// With --service the agent runs in the cluster: package agentcontrol supplies its sessions from
// Leases and keeps the intercepted Service switched, and puts it back when the agent stops.
package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	if err := resolveUpstreams(ctx, client, o.Namespace, cfg.Ports); err != nil {
		return err
	}
	ctl := agentcontrol.New(agentcontrol.Config{
		Client: client, Namespace: o.Namespace, Service: o.Service, PodName: o.PodName,
		IdleGrace: o.IdleGrace, Logger: log,
	})
	// The session cache must be synced before the first tunnel attaches.
	if err := ctl.Start(ctx); err != nil {
		return fmt.Errorf("bridge-agent: start watching sessions: %w", err)
	}
	cfg.Sessions = ctl
	cfg.OnSessionEvent = ctl.OnSessionEvent
	srv, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("bridge-agent: %w", err)
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

// resolveUpstreams replaces an upstream given as a Service name (the shadow Service) by that
// Service's ClusterIP, once: ClusterIPs never change, and dialing an IP saves a DNS lookup per
// connection.
func resolveUpstreams(ctx context.Context, client kubernetes.Interface, namespace string, ports []agent.DataPort) error {
	for i := range ports {
		host, port, err := net.SplitHostPort(ports[i].Upstream)
		// Only a bare name is a Service of this namespace; IPs and DNS names are dialed as given.
		if err != nil || net.ParseIP(host) != nil || strings.Contains(host, ".") {
			continue
		}
		svc, err := client.CoreV1().Services(namespace).Get(ctx, host, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("bridge-agent: resolve upstream service %s/%s: %w", namespace, host, err)
		}
		if ip := svc.Spec.ClusterIP; ip != "" && ip != "None" {
			ports[i].Upstream = net.JoinHostPort(ip, port)
		}
	}
	return nil
}
