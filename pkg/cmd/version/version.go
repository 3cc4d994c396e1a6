// Package version holds the `kubectl bridge version` command.
package version

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/version"
)

var versionExample = templates.Examples(`
	# Print the plugin version and the agent image it deploys
	kubectl bridge version

	# Machine-readable, e.g. for bug reports
	kubectl bridge version -o json`)

// Options holds what `kubectl bridge version` needs.
type Options struct {
	Output string

	genericiooptions.IOStreams
}

// NewCmdVersion returns the `kubectl bridge version` command.
func NewCmdVersion(streams genericiooptions.IOStreams) *cobra.Command {
	o := &Options{IOStreams: streams}
	cmd := &cobra.Command{
		Use:     "version [-o json|yaml]",
		Short:   "Print the version of kubectl bridge and of the agent image it deploys",
		Example: versionExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			cmd.SilenceUsage = true
			return o.Run()
		},
	}
	cmd.Flags().StringVarP(&o.Output, "output", "o", o.Output, "Output format. One of: json|yaml.")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Validate refuses unknown output formats.
func (o *Options) Validate() error {
	switch o.Output {
	case "", "json", "yaml":
		return nil
	}
	return exitcode.Usagef("unknown output format %q: use json or yaml", o.Output)
}

// Run prints the build identity.
func (o *Options) Run() error {
	info := version.Get()
	switch o.Output {
	case "json":
		b, err := json.MarshalIndent(info, "", "  ")
		if err != nil {
			return fmt.Errorf("encode version: %w", err)
		}
		_, err = fmt.Fprintf(o.Out, "%s\n", b)
		return err
	case "yaml":
		b, err := yaml.Marshal(info)
		if err != nil {
			return fmt.Errorf("encode version: %w", err)
		}
		_, err = o.Out.Write(b)
		return err
	}
	fmt.Fprintf(o.Out, "Version:     %s\n", info.Version)
	if info.GitCommit != "" {
		fmt.Fprintf(o.Out, "Git commit:  %s\n", info.GitCommit)
	}
	if info.BuildDate != "" {
		fmt.Fprintf(o.Out, "Build date:  %s\n", info.BuildDate)
	}
	fmt.Fprintf(o.Out, "Go version:  %s\n", info.GoVersion)
	fmt.Fprintf(o.Out, "Platform:    %s\n", info.Platform)
	_, err := fmt.Fprintf(o.Out, "Agent image: %s\n", info.AgentImage)
	return err
}
