// Package clean holds the `kubectl bridge clean` command.
package clean

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cleanup"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

var (
	cleanLong = templates.LongDesc(`
		Put the cluster back as it was before kubectl bridge: restore intercepted Services'
		selectors, delete agents, shadow Services and session Leases.

		Everything is read from the cluster, so clean works from any machine, also one that
		never ran the intercept. It is idempotent: running it again, or when there is nothing
		to do, exits 0. A live session whose Lease is deleted notices and stops.`)

	cleanExample = templates.Examples(`
		# Undo every intercept of svc/api in the current namespace
		kubectl bridge clean svc/api

		# End one session (its id is in 'kubectl bridge list')
		kubectl bridge clean --session k7m2xq9p

		# Remove what dead sessions left behind, in every namespace
		kubectl bridge clean --stale -A

		# Show what would be undone, without changing anything
		kubectl bridge clean --all --dry-run

		# End of a CI job: remove everything
		kubectl bridge clean --all -A`)
)

// Options are the inputs of `kubectl bridge clean`.
type Options struct {
	Service       string
	Session       string
	Stale         bool
	All           bool
	AllNamespaces bool
	DryRun        bool

	namespace string
	client    kubernetes.Interface
	now       func() time.Time
	genericiooptions.IOStreams
}

// NewCmdClean returns the `kubectl bridge clean` command.
func NewCmdClean(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	o := &Options{IOStreams: streams, now: time.Now}
	cmd := &cobra.Command{
		Use:     "clean [svc/NAME | --session ID | --stale | --all] [-A] [--dry-run]",
		Short:   "Undo intercepts and remove sessions, from any machine",
		Long:    cleanLong,
		Example: cleanExample,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(f, args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			cmd.SilenceUsage = true
			return o.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&o.Session, "session", o.Session, "End the session with this id (see 'kubectl bridge list').")
	cmd.Flags().BoolVar(&o.Stale, "stale", o.Stale, "Remove expired sessions and agent objects that no live session uses.")
	cmd.Flags().BoolVar(&o.All, "all", o.All, "Remove every session and agent object.")
	cmd.Flags().BoolVarP(&o.AllNamespaces, "all-namespaces", "A", o.AllNamespaces, "Clean in every namespace.")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", o.DryRun, "Print every restore and delete without making it.")
	return cmd
}

// Complete reads the Service argument, the namespace and the client.
func (o *Options) Complete(f cmdutil.Factory, args []string) error {
	if len(args) == 1 {
		kind, name, ok := strings.Cut(args[0], "/")
		if !ok {
			kind, name = "svc", args[0]
		}
		switch kind {
		case "svc", "service", "services":
		default:
			return exitcode.Usagef("clean takes a Service (svc/NAME), not %q", args[0])
		}
		if name == "" {
			return exitcode.Usagef("%q names no Service: use svc/NAME", args[0])
		}
		o.Service = name
	}
	var err error
	if o.namespace, _, err = f.ToRawKubeConfigLoader().Namespace(); err != nil {
		return fmt.Errorf("read namespace from kubeconfig: %w", err)
	}
	if o.AllNamespaces {
		o.namespace = ""
	}
	if o.client, err = f.KubernetesClientSet(); err != nil {
		return fmt.Errorf("build client: %w", err)
	}
	return nil
}

// Validate checks that exactly one thing to clean was named.
func (o *Options) Validate() error {
	n := 0
	for _, set := range []bool{o.Service != "", o.Session != "", o.Stale, o.All} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return exitcode.Usagef("say what to clean: svc/NAME, --session ID, --stale or --all")
	case n > 1:
		return exitcode.Usagef("svc/NAME, --session, --stale and --all exclude each other: give one")
	case o.Service != "" && o.AllNamespaces:
		return exitcode.Usagef("svc/NAME names a Service of one namespace: use -n NAMESPACE instead of -A")
	}
	return nil
}

// Run plans the changes from the cluster's state and carries them out.
func (o *Options) Run(ctx context.Context) error {
	inv, err := inventory.Collect(ctx, o.client, o.namespace)
	if err != nil {
		return fmt.Errorf("%w; check access with 'kubectl bridge doctor'", err)
	}
	acts := o.plan(inv, o.now())
	where := "namespace " + o.namespace
	if o.AllNamespaces {
		where = "any namespace"
	}
	if len(acts) == 0 {
		fmt.Fprintf(o.ErrOut, "Nothing to clean in %s.\n", where)
		return nil
	}
	if err := cleanup.Execute(ctx, o.client, acts, o.DryRun, o.Out); err != nil {
		return fmt.Errorf("could not undo everything (run the command again, or fix the permission it names):\n%w", err)
	}
	return nil
}

// plan lists the actions in a safe order: session Leases first (their CLIs stop), then each
// affected Service is restored before its agent objects are deleted.
func (o *Options) plan(inv *inventory.Inventory, now time.Time) []cleanup.Action {
	var acts []cleanup.Action
	gone := map[string]bool{} // Lease namespace/name planned for deletion
	// --session touches only the Service of the ended session; --stale and --all every Service.
	affected := map[inventory.ServiceKey]bool{}
	for _, s := range inv.Sessions {
		var del bool
		switch {
		case o.All:
			del = true
		case o.Stale:
			del = s.Expired(now)
		case o.Session != "":
			del = s.ID == o.Session
		case o.Service != "":
			del = s.Kind == session.KindIntercept && inventory.InterceptService(s) == o.Service
		}
		if del {
			acts = append(acts, cleanup.SessionDelete(s))
			gone[s.Lease.Namespace+"/"+s.Lease.Name] = true
			if svc := inventory.InterceptService(s); svc != "" {
				affected[inventory.ServiceKey{Namespace: s.Lease.Namespace, Name: svc}] = true
			}
		}
	}
	for _, key := range inv.Services() {
		switch {
		case o.Service != "" && key.Name != o.Service:
			continue
		case o.Session != "" && !affected[key]:
			continue
		}
		live := 0
		for _, s := range inv.LiveIntercepts(key, now) {
			if !gone[s.Lease.Namespace+"/"+s.Lease.Name] {
				live++
			}
		}
		// An agent still serving a live session stays (unless everything goes).
		if live > 0 && !o.All {
			continue
		}
		acts = append(acts, cleanup.ServiceTeardown(key, inv)...)
	}
	return acts
}
