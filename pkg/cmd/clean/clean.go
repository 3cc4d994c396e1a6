// Package clean holds the `kubectl bridge clean` command.
package clean

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
)

// NewCmdClean returns the `kubectl bridge clean` command.
func NewCmdClean(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "clean",
		Short: "clean (not implemented yet)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("clean is not implemented yet")
		},
	}
}
