// Package doctor holds the `kubectl bridge doctor` command.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/tools/clientcmd"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/util/templates"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/doctor"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
)

var (
	doctorLong = templates.LongDesc(`
		Check, phase by phase, that kubectl bridge can work with your kubeconfig and
		cluster: kubeconfig, TLS, reachability, authentication, authorization (every
		verb each command needs, in the namespace) and server version.

		The first failing phase is named together with what to do next; the following
		phases are skipped. The exit code is 0 when every phase passes and 1 otherwise.

		--print-rbac prints a Role and RoleBinding granting you exactly the missing
		permissions in the namespace, for a namespace admin to apply.`)

	doctorExample = templates.Examples(`
		# Check the current context and namespace
		kubectl bridge doctor

		# Check another namespace, failing fast on a slow network
		kubectl bridge doctor -n team-a --request-timeout=2s

		# For CI: machine-readable report
		kubectl bridge doctor -o json

		# Print what a namespace admin must apply for you, then apply it (as the admin)
		kubectl bridge doctor --print-rbac -n team-a > bridge-rbac.yaml
		kubectl apply -f bridge-rbac.yaml`)
)

// Options holds what `kubectl bridge doctor` needs.
type Options struct {
	Output    string
	PrintRBAC bool

	clientConfig clientcmd.ClientConfig
	context      string
	namespace    string
	timeout      time.Duration
	// run is the doctor library entry point; tests swap it.
	run func(context.Context, doctor.Config) *doctor.Report

	genericiooptions.IOStreams
}

// NewOptions returns Options with defaults.
func NewOptions(streams genericiooptions.IOStreams) *Options {
	return &Options{IOStreams: streams, run: doctor.Run}
}

// NewCmdDoctor returns the `kubectl bridge doctor` command.
func NewCmdDoctor(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewOptions(streams)
	cmd := &cobra.Command{
		Use:     "doctor [--print-rbac] [-o json|yaml]",
		Short:   "Check kubeconfig, connectivity and permissions, phase by phase",
		Long:    doctorLong,
		Example: doctorExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(f, cmd); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			cmd.SilenceUsage = true
			return o.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVarP(&o.Output, "output", "o", o.Output, "Output format. One of: json|yaml. Default: one line per phase.")
	cmd.Flags().BoolVar(&o.PrintRBAC, "print-rbac", o.PrintRBAC, "Print a Role and RoleBinding (YAML) granting the current user exactly the missing permissions in the namespace.")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Complete reads the kubeconfig overrides and --request-timeout.
func (o *Options) Complete(f cmdutil.Factory, cmd *cobra.Command) error {
	o.clientConfig = f.ToRawKubeConfigLoader()
	o.context, _ = cmd.Flags().GetString("context")
	o.namespace, _ = cmd.Flags().GetString("namespace")
	o.timeout = doctor.DefaultTimeout
	if fl := cmd.Flags().Lookup("request-timeout"); fl != nil && fl.Changed && fl.Value.String() != "0" {
		d, err := parseTimeout(fl.Value.String())
		if err != nil {
			return exitcode.Usagef("invalid --request-timeout %q: %v", fl.Value.String(), err)
		}
		o.timeout = d
	}
	return nil
}

// parseTimeout accepts kubectl's --request-timeout forms: "5s", "1m", or a
// bare number of seconds.
func parseTimeout(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	d, err := time.ParseDuration(s + "s")
	if err != nil {
		return 0, fmt.Errorf("use a duration such as 5s or 1m")
	}
	return d, nil
}

// Validate refuses unknown output formats and conflicting flags.
func (o *Options) Validate() error {
	switch o.Output {
	case "", "json", "yaml":
	default:
		return exitcode.Usagef("unknown output format %q: use json or yaml", o.Output)
	}
	if o.PrintRBAC && o.Output != "" {
		return exitcode.Usagef("--print-rbac prints YAML manifests: it cannot be combined with -o")
	}
	return nil
}

// Run runs the checks and prints the report (or the RBAC manifests).
func (o *Options) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	report := o.run(ctx, doctor.Config{
		ClientConfig: o.clientConfig,
		Context:      o.context,
		Namespace:    o.namespace,
		Timeout:      o.timeout,
	})
	if o.PrintRBAC {
		return o.printRBAC(report)
	}
	switch o.Output {
	case "json":
		b, err := json.MarshalIndent(report, "", "  ")
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		fmt.Fprintf(o.Out, "%s\n", b)
	case "yaml":
		b, err := yaml.Marshal(report)
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		_, _ = o.Out.Write(b)
	default:
		PrintHuman(o.Out, report)
	}
	if !report.OK {
		return exitcode.Silent(exitcode.Failure, fmt.Errorf("doctor: %s failed", report.FailedPhase))
	}
	return nil
}

// printRBAC writes the manifests to stdout (so they pipe into kubectl apply)
// and the report to stderr. It succeeds whenever the manifests could be
// computed, i.e. when every phase before authorization passed.
func (o *Options) printRBAC(report *doctor.Report) error {
	PrintHuman(o.ErrOut, report)
	switch report.FailedPhase {
	case "", doctor.PhaseAuthorization, doctor.PhaseServerVersion:
	default:
		return exitcode.Silent(exitcode.Failure, fmt.Errorf("doctor: %s failed", report.FailedPhase))
	}
	if len(report.Missing) == 0 {
		fmt.Fprintf(o.ErrOut, "\nnothing to grant: you hold every permission kubectl bridge needs in namespace %q\n", report.Namespace)
		return nil
	}
	if report.User == "" {
		return fmt.Errorf("cannot name you in a RoleBinding: the server did not say who you are (no SelfSubjectReview API); write the binding by hand")
	}
	role, binding := doctor.RBACFor(report.Namespace, doctor.SubjectFor(report.User), report.Missing)
	b, err := doctor.EncodeYAML(role, binding)
	if err != nil {
		return err
	}
	_, err = o.Out.Write(b)
	return err
}

// PrintHuman writes one line per phase, then the next step of the failed one.
func PrintHuman(w io.Writer, report *doctor.Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range report.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Phase, c.Status, c.Detail)
	}
	_ = tw.Flush()
	for _, c := range report.Checks {
		if c.Status == doctor.StatusFail && c.NextStep != "" {
			fmt.Fprintf(w, "\n%s failed. Next step: %s\n", c.Phase, c.NextStep)
		}
	}
}
