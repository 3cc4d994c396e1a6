// Package forward holds the `kubectl bridge forward` command.
package forward

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
)

// NewCmdForward returns the `kubectl bridge forward` command.
func NewCmdForward(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "forward",
		Short: "forward (not implemented yet)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("forward is not implemented yet")
		},
	}
}
