// Package intercept holds the `kubectl bridge intercept` command.
package intercept

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
)

// NewCmdIntercept returns the `kubectl bridge intercept` command.
func NewCmdIntercept(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "intercept",
		Short: "intercept (not implemented yet)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("intercept is not implemented yet")
		},
	}
}
