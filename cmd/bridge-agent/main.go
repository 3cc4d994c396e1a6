// Command bridge-agent is the in-cluster agent that kubectl-bridge deploys for intercepts.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent/app"
)

func main() {
	// SIGTERM is how the kubelet stops the pod: cancel, and let the agent drain within its grace.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := app.NewCommand("").ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}
