// Package cmd holds the root `kubectl bridge` command and wires its subcommands.
package cmd

import (
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/clean"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/forward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/intercept"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/list"
)

// NewCmdBridge returns the root `kubectl bridge` command.
func NewCmdBridge(streams genericiooptions.IOStreams) *cobra.Command {
	configFlags := genericclioptions.NewConfigFlags(true).WithDeprecatedPasswordFlag().WithDiscoveryBurst(300).WithDiscoveryQPS(50.0)
	root := &cobra.Command{
		Use:   "bridge",
		Short: "Work on one service of a shared cluster from your laptop",
		Annotations: map[string]string{
			cobra.CommandDisplayNameAnnotation: "kubectl bridge",
		},
	}
	flags := root.PersistentFlags()
	configFlags.AddFlags(flags)
	f := cmdutil.NewFactory(cmdutil.NewMatchVersionFlags(configFlags))

	root.AddCommand(forward.NewCmdForward(f, streams))
	root.AddCommand(intercept.NewCmdIntercept(f, streams))
	root.AddCommand(list.NewCmdList(f, streams))
	root.AddCommand(clean.NewCmdClean(f, streams))
	return root
}
