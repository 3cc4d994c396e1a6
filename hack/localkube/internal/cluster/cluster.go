// Package cluster starts, stops and reports on the local single-node cluster: one per machine,
// on fixed ports, its processes started in the background and recorded machine-wide so that
// any checkout can find and clean up the last cluster started on this machine.
package cluster

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// Fixed cluster parameters: there is one cluster per machine.
const (
	// RunDir holds sockets and runtime state that must have short paths (unix sockets).
	RunDir = "/run/kubectl-bridge-localkube"
	// RecordDir holds the machine-wide record of the last started cluster.
	RecordDir = "/var/lib/kubectl-bridge-localkube"

	NodeName     = "localkube"
	ClusterCIDR  = "10.244.0.0/16"
	PodCIDR      = "10.244.0.0/24"
	ServiceCIDR  = "10.96.0.0/16"
	APIServiceIP = "10.96.0.1"
	DNSServiceIP = "10.96.0.10"
	// CNINetwork is the CNI network name; CNIBridge its bridge device.
	CNINetwork = "localkube"
	CNIBridge  = "cni0"

	APIServerPort = 6443
	RegistryAddr  = "127.0.0.1:5001"

	PauseImage   = "localkube.local/pause:3.10"
	CoreDNSImage = "localkube.local/coredns:v1.12.1"
)

// ContainerdSocket is the CRI endpoint of the cluster's containerd.
var ContainerdSocket = filepath.Join(RunDir, "containerd.sock")

// Options are the inputs shared by up, down and status.
type Options struct {
	StateDir string
	// Images are docker-archive tarballs imported into containerd on up (pause, coredns).
	Images []string
	// Imgtool is the imgtool binary that serves the loopback registry; empty: no registry.
	Imgtool string
	// Timeout bounds how long up waits for the cluster to become ready.
	Timeout string
}

// NewCommand returns the root command for up, down and status.
func NewCommand() *cobra.Command {
	o := &Options{StateDir: "_output/localkube", Timeout: "180s"}
	root := &cobra.Command{
		Use:           "localkube",
		Short:         "A single-node Kubernetes cluster on this machine",
		SilenceErrors: false,
		SilenceUsage:  true,
	}
	root.PersistentFlags().StringVar(&o.StateDir, "state-dir", o.StateDir, "directory holding the cluster's state, configs and logs")

	up := &cobra.Command{
		Use:   "up",
		Short: "Start the cluster (a no-op when it already runs healthy from this state dir)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Up(ctx, o)
		},
	}
	up.Flags().StringArrayVar(&o.Images, "image", o.Images, "docker-archive tarball to import into containerd (repeatable)")
	up.Flags().StringVar(&o.Imgtool, "imgtool", o.Imgtool, "imgtool binary serving the loopback registry on "+RegistryAddr)
	up.Flags().StringVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for the cluster to become ready")

	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the cluster started last on this machine and remove everything it made",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Down(context.Background(), o)
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Report the cluster's processes and health; exit non-zero when it is not healthy",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Status(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	root.AddCommand(up, down, status)
	return root
}

// absStateDir returns the state dir as an absolute, clean path.
func absStateDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	return abs, nil
}
