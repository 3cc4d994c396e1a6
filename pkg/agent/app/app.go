// Package app is the bridge-agent command: flags (package options) in, a running agent.Server out.
package app

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent/options"
)

// NewCommand returns the bridge-agent root command. version is reported to CLIs in the tunnel
// handshake; empty takes the module version the binary was built with.
func NewCommand(version string) *cobra.Command {
	o := options.NewOptions()
	if version == "" {
		version = buildVersion()
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
			return Run(cmd.Context(), cfg)
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

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "v0.0.0-dev"
}
