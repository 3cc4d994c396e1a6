// Package completion holds the `kubectl bridge completion` command, which prints
// shell completion scripts for the kubectl-bridge binary.
package completion

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
)

// BinaryName is the name shells complete: the plugin executable. `kubectl
// bridge <TAB>` goes through kubectl instead, which runs kubectl_complete-bridge.
const BinaryName = "kubectl-bridge"

var (
	completionLong = templates.LongDesc(`
		Print a shell completion script for kubectl-bridge.

		Completion covers subcommands, flags, resource names (svc/NAME, deploy/NAME,
		pod/NAME, sts/NAME), Service ports, namespaces and contexts, read from the
		current cluster.

		Two ways to complete:

		* "kubectl bridge <TAB>" (kubectl 1.26 or newer): put an executable named
		  kubectl_complete-bridge on your PATH that runs "kubectl-bridge __complete"
		  (a link to the kubectl-bridge binary works); kubectl's own completion then
		  asks it. With krew:
		  ln -s "${KREW_ROOT:-$HOME/.krew}/bin/kubectl-bridge" "${KREW_ROOT:-$HOME/.krew}/bin/kubectl_complete-bridge"

		* "kubectl-bridge <TAB>": load the script this command prints.`)

	completionExample = templates.Examples(`
		# bash (needs the bash-completion package)
		source <(kubectl bridge completion bash)

		# zsh
		kubectl bridge completion zsh > "${fpath[1]}/_kubectl-bridge"

		# fish
		kubectl bridge completion fish > ~/.config/fish/completions/kubectl-bridge.fish

		# PowerShell
		kubectl bridge completion powershell | Out-String | Invoke-Expression`)
)

// generator returns cobra's script generator for a shell, nil for others.
func generator(shell string) func(root *cobra.Command, out io.Writer) error {
	switch shell {
	case "bash":
		return func(root *cobra.Command, out io.Writer) error { return root.GenBashCompletionV2(out, true) }
	case "zsh":
		return func(root *cobra.Command, out io.Writer) error { return root.GenZshCompletion(out) }
	case "fish":
		return func(root *cobra.Command, out io.Writer) error { return root.GenFishCompletion(out, true) }
	case "powershell":
		return func(root *cobra.Command, out io.Writer) error { return root.GenPowerShellCompletionWithDesc(out) }
	}
	return nil
}

// NewCmdCompletion returns the `kubectl bridge completion SHELL` command.
func NewCmdCompletion(streams genericiooptions.IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "completion bash|zsh|fish|powershell",
		DisableFlagsInUseLine: true,
		Short:                 "Print the shell completion script for bash, zsh, fish or PowerShell",
		Long:                  completionLong,
		Example:               completionExample,
		ValidArgs:             []string{"bash", "zsh", "fish", "powershell"},
		Args:                  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			gen := generator(args[0])
			if gen == nil {
				return exitcode.Usagef("unsupported shell %q: use bash, zsh, fish or powershell", args[0])
			}
			cmd.SilenceUsage = true
			return Generate(cmd.Root(), gen, streams.Out)
		},
	}
	return cmd
}

// Generate writes a script completing BinaryName. Cobra names the script's
// functions and the completed command after the root's Use, which is "bridge"
// for kubectl's help texts; the shell, however, sees the executable name.
func Generate(root *cobra.Command, gen func(*cobra.Command, io.Writer) error, out io.Writer) error {
	use := root.Use
	root.Use = BinaryName
	defer func() { root.Use = use }()
	if err := gen(root, out); err != nil {
		return fmt.Errorf("generate completion script: %w", err)
	}
	return nil
}
