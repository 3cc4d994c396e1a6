// Package cmd holds the root `kubectl bridge` command, wires its subcommands and
// runs it the way kubectl runs its own: one-line errors, stable exit codes
// (see package exitcode), klog verbosity flags and every kubectl global flag.
package cmd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	// Exec, OIDC and cloud auth providers referenced from kubeconfigs.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/logs"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/clean"
	cmdcompletion "github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/completion"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/doctor"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/forward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/intercept"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/list"
	cmdversion "github.com/kubectl-bridge/kubectl-bridge/pkg/cmd/version"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/completion"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
)

// CompletionExecutable is the name kubectl looks up on PATH to complete the
// arguments of `kubectl bridge` (kubectl ≥ 1.26). The kubectl-bridge binary
// answers to it too: invoked under that name it runs `__complete`.
const CompletionExecutable = "kubectl_complete-bridge"

var (
	bridgeLong = templates.LongDesc(`
		Work on one service of a shared Kubernetes cluster from your laptop.

		forward reaches cluster Services as if they were local and survives pod restarts;
		intercept sends the cluster's traffic for a Service (all of it, a copy, or only
		the requests matching a header or path) to a process on your machine. Everything
		runs through your kubeconfig: no kubectl subprocess, no changes to your workloads
		other than the intercepted Service's selector, restored when you are done.

		Find more information at https://github.com/kubectl-bridge/kubectl-bridge.`)

	bridgeExample = templates.Examples(`
		# Check that your kubeconfig and permissions are good enough
		kubectl bridge doctor

		# Reach the cluster's database on localhost:5432
		kubectl bridge forward svc/db

		# Send the requests carrying "owner: me" for svc/api to your local port 3000
		kubectl bridge intercept svc/api --port 80:3000 --header owner=me

		# Who is forwarding or intercepting what
		kubectl bridge list -A

		# Put the namespace back as it was
		kubectl bridge clean --all`)
)

// raiseClientLimits lifts client-go's default client-side rate limit (5 requests/s, bursts of
// 10), which suits a one-shot kubectl command: starting an intercept makes ~20 requests back to
// back (permission checks, Lease, agent objects, the switch) and the limiter alone stretched that
// by most of a second. The API server's priority and fairness remains the real protection.
func raiseClientLimits(c *rest.Config) *rest.Config {
	if c.QPS == 0 && c.Burst == 0 {
		c.QPS, c.Burst = 50, 100
	}
	return c
}

// NewCmdBridge returns the root `kubectl bridge` command.
func NewCmdBridge(streams genericiooptions.IOStreams) *cobra.Command {
	configFlags := genericclioptions.NewConfigFlags(true).WithDeprecatedPasswordFlag().
		WithDiscoveryBurst(300).WithDiscoveryQPS(50.0).WithWrapConfigFn(raiseClientLimits)
	root := &cobra.Command{
		Use:     "bridge",
		Short:   "Work on one service of a shared cluster from your laptop",
		Long:    bridgeLong,
		Example: bridgeExample,
		Annotations: map[string]string{
			cobra.CommandDisplayNameAnnotation: "kubectl bridge",
		},
		// Errors are printed once, by Execute, with a pointer to --help for
		// command-line errors (kubectl's style, rather than cobra's dump of the
		// whole usage). Each command sets its own SilenceUsage once its
		// arguments are known good (stern's habit); Execute reads that to tell
		// usage errors (exit 2) from failures (exit 1).
		SilenceErrors: true,
		// Cobra's default completion command names the scripts after Use
		// ("bridge"); ours names them after the executable.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		// cobra only defaults this in its own unknown-command path, which a
		// root with Run bypasses.
		SuggestionsMinimumDistance: 2,
		// Flags and arguments have been parsed and checked by cobra when
		// this runs. Subcommands must not define their own PersistentPreRun
		// (cobra would skip this one).
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			cmd.Annotations = withAnnotation(cmd.Annotations, parsedAnnotation, "true")
			logs.InitLogs()
		},
		// A root without Run would print help and exit 0 for `kubectl bridge
		// bogus`; this makes that an "unknown command" usage error instead.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return exitcode.Usagef("unknown command %q for %q%s", args[0], cmd.CommandPath(), suggest(cmd, args[0]))
			}
			return nil
		},
		Run: func(cmd *cobra.Command, args []string) {
			_ = cmd.Help()
		},
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	root.SetGlobalNormalizationFunc(cliflag.WordSepNormalizeFunc)

	flags := root.PersistentFlags()
	configFlags.AddFlags(flags)
	// -v, --vmodule, --log-flush-frequency, as in kubectl.
	logs.AddFlags(flags)
	f := cmdutil.NewFactory(cmdutil.NewMatchVersionFlags(configFlags))

	registerFlagCompletion(root, f)

	groups := templates.CommandGroups{
		{
			Message: "Working with services:",
			Commands: []*cobra.Command{
				forward.NewCmdForward(f, streams),
				intercept.NewCmdIntercept(f, streams),
			},
		},
		{
			Message: "Sessions:",
			Commands: []*cobra.Command{
				list.NewCmdList(f, streams),
				clean.NewCmdClean(f, streams),
			},
		},
		{
			Message: "Troubleshooting and setup:",
			Commands: []*cobra.Command{
				doctor.NewCmdDoctor(f, streams),
				cmdversion.NewCmdVersion(streams),
				cmdcompletion.NewCmdCompletion(streams),
			},
		},
	}
	groups.Add(root)
	root.AddCommand(newCmdOptions(streams))

	// kubectl's help layout: grouped commands, local flags only, and
	// "kubectl bridge options" for the long list of global flags.
	templates.ActsAsRootCommand(root, []string{"options", "help"}, groups...)
	usage := root.UsageFunc()
	root.SetUsageFunc(func(c *cobra.Command) error { return fixUsage(c, usage) })
	// ActsAsRootCommand appends a second line to flag errors; Execute adds
	// the pointer to --help itself. The root's SilenceUsage stays true so
	// that cobra never prints usage on its own (it would go to stdout).
	root.SilenceUsage = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &exitcode.Error{Code: exitcode.Usage, Err: err}
	})
	return root
}

// newCmdOptions returns `kubectl bridge options`, which lists the global flags
// the way `kubectl options` does.
func newCmdOptions(streams genericiooptions.IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "options",
		Short:   "Print the list of flags inherited by all commands",
		Example: "  kubectl bridge options",
		Args:    cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			cmd.SetOut(streams.Out)
			_ = cmd.Usage()
		},
	}
	templates.UseOptionsTemplates(cmd)
	return cmd
}

// fixUsage renders kubectl's usage template, whose help tip names commands by
// cobra Name ("bridge <command> --help"), and writes it with the name users
// type ("kubectl bridge <command> --help").
func fixUsage(c *cobra.Command, usage func(*cobra.Command) error) error {
	out := c.OutOrStderr()
	var buf bytes.Buffer
	c.SetOut(&buf)
	err := usage(c)
	c.SetOut(out)
	root := c.Root()
	fixed := strings.ReplaceAll(buf.String(), `Use "`+root.Name()+" ", `Use "`+root.CommandPath()+" ")
	if _, werr := io.WriteString(out, fixed); werr != nil && err == nil {
		err = werr
	}
	return err
}

func registerFlagCompletion(root *cobra.Command, f cmdutil.Factory) {
	for flag, fn := range map[string]cobra.CompletionFunc{
		"namespace": completion.Namespaces(f),
		"context":   completion.Contexts(f),
		"cluster":   completion.Clusters(f),
		"user":      completion.Users(f),
	} {
		// Only fails for an unknown flag name: a programming error caught by tests.
		_ = root.RegisterFlagCompletionFunc(flag, fn)
	}
}

func suggest(cmd *cobra.Command, arg string) string {
	s := cmd.SuggestionsFor(arg)
	if len(s) == 0 {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", s[0])
}

// Execute runs kubectl-bridge with args (os.Args, program name first) and
// returns the process exit code: 0 success, 1 failure, 2 usage error (see
// package exitcode). Invoked as kubectl_complete-bridge, it answers kubectl's
// plugin completion by running `__complete` with the same words.
func Execute(args []string, streams genericiooptions.IOStreams) int {
	defer logs.FlushLogs()
	root := NewCmdBridge(streams)
	argv := args[1:]
	if len(args) > 0 && isCompletionExecutable(args[0]) {
		argv = append([]string{cobra.ShellCompRequestCmd}, argv...)
	}
	root.SetArgs(argv)
	c, err := root.ExecuteC()
	if err == nil {
		return exitcode.OK
	}
	code := exitcode.Of(err)
	// A failure before the command accepted its arguments is a usage error,
	// whatever type the error has (cobra's argument validators and commands'
	// Validate return plain errors): either cobra stopped before running the
	// command (flags, arguments, unknown command), or the command returned
	// before setting SilenceUsage.
	if code == exitcode.Failure && c != nil && (c.Annotations[parsedAnnotation] == "" || (c != root && !c.SilenceUsage)) {
		code = exitcode.Usage
	}
	var ee *exitcode.Error
	if errors.As(err, &ee) && ee.Silent {
		return code
	}
	fmt.Fprintf(streams.ErrOut, "error: %s\n", oneLine(err.Error()))
	if code == exitcode.Usage && c != nil {
		fmt.Fprintf(streams.ErrOut, "See '%s --help' for usage.\n", c.CommandPath())
	}
	return code
}

// parsedAnnotation marks, on the command being executed, that cobra accepted
// its flags and arguments. An annotation rather than a variable: the command
// tree is the only state of a run.
const parsedAnnotation = "kubectl-bridge.io/parsed"

func withAnnotation(m map[string]string, k, v string) map[string]string {
	if m == nil {
		m = map[string]string{}
	}
	m[k] = v
	return m
}

func isCompletionExecutable(argv0 string) bool {
	name := strings.TrimSuffix(filepath.Base(argv0), ".exe")
	return name == CompletionExecutable
}

// oneLine folds a multi-line error (cobra's "Did you mean this?" block,
// aggregated API errors) into one line so logs and scripts see one record.
func oneLine(s string) string {
	fields := strings.FieldsFunc(strings.TrimSpace(s), func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range fields {
		fields[i] = strings.TrimSpace(fields[i])
	}
	return strings.Join(fields, "; ")
}
