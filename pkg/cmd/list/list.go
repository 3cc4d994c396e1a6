// Package list holds the `kubectl bridge list` command.
package list

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/client-go/kubernetes"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

var (
	listLong = templates.LongDesc(`
		List every forward and intercept session, read from the cluster (not from this
		machine), with who runs it, where, since when and whether it is still alive.

		STATE is active (the CLI renews its Lease), stale (the Lease expired: the CLI is
		gone), pending (an intercept not yet admitted by the agent) or rejected. Rows of
		KIND orphan are agent-side objects that no live session explains; remove them with
		'kubectl bridge clean --stale'.`)

	listExample = templates.Examples(`
		# Sessions in the current namespace
		kubectl bridge list

		# In every namespace, with rules and local addresses
		kubectl bridge list -A -o wide

		# For scripts
		kubectl bridge list -o json`)
)

// APIVersion and kinds of the objects `list -o json|yaml|name` prints.
const (
	APIVersion  = "kubectl-bridge.io/v1alpha1"
	KindSession = "Session"
	KindOrphan  = "Orphan"
)

// Options are the inputs of `kubectl bridge list`.
type Options struct {
	PrintFlags    *genericclioptions.PrintFlags
	AllNamespaces bool

	namespace string
	client    kubernetes.Interface
	now       func() time.Time
	genericiooptions.IOStreams
}

// NewOptions returns Options with defaults.
func NewOptions(streams genericiooptions.IOStreams) *Options {
	return &Options{
		PrintFlags: genericclioptions.NewPrintFlags(""),
		now:        time.Now,
		IOStreams:  streams,
	}
}

// NewCmdList returns the `kubectl bridge list` command.
func NewCmdList(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewOptions(streams)
	cmd := &cobra.Command{
		Use:     "list [-A] [-o wide|json|yaml|name]",
		Aliases: []string{"ls"},
		Short:   "List forward and intercept sessions and leftover agent objects",
		Long:    listLong,
		Example: listExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(f); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			cmd.SilenceUsage = true
			return o.Run(cmd.Context())
		},
	}
	cmd.Flags().BoolVarP(&o.AllNamespaces, "all-namespaces", "A", o.AllNamespaces, "List sessions in every namespace.")
	o.PrintFlags.AddFlags(cmd)
	return cmd
}

// Complete resolves the namespace and the client.
func (o *Options) Complete(f cmdutil.Factory) error {
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

// Validate checks the output format.
func (o *Options) Validate() error {
	format := ptrString(o.PrintFlags.OutputFormat)
	if format == "" || format == "wide" {
		return nil
	}
	if _, err := o.PrintFlags.ToPrinter(); err != nil {
		return exitcode.Usagef("%v", err)
	}
	return nil
}

// Run reads the cluster's state and prints it.
func (o *Options) Run(ctx context.Context) error {
	inv, err := inventory.Collect(ctx, o.client, o.namespace)
	if err != nil {
		return fmt.Errorf("%w; check access with 'kubectl bridge doctor'", err)
	}
	now := o.now()
	rows := Rows(inv, now)
	format := ptrString(o.PrintFlags.OutputFormat)
	if format != "" && format != "wide" {
		printer, err := o.PrintFlags.ToPrinter()
		if err != nil {
			return err
		}
		return printer.PrintObj(toList(rows), o.Out)
	}
	if len(rows) == 0 {
		where := "namespace " + o.namespace
		if o.AllNamespaces {
			where = "any namespace"
		}
		fmt.Fprintf(o.ErrOut, "No bridge sessions found in %s.\n", where)
		return nil
	}
	table := Table(rows, now, format == "wide")
	p := printers.NewTablePrinter(printers.PrintOptions{Wide: format == "wide", WithNamespace: o.AllNamespaces})
	return p.PrintObj(table, o.Out)
}

// Row is one line of `list`: a session or an orphan.
type Row struct {
	Namespace, Name, Kind, Target, Mode, User, Host, State string
	Rules, Local, Requests                                 string
	Created, Renewed                                       time.Time
	// Object is what -o json|yaml prints for the row.
	Object map[string]any
}

// Rows turns an inventory into rows, sessions first (oldest first), then orphans.
func Rows(inv *inventory.Inventory, now time.Time) []Row {
	var rows []Row
	for _, s := range inv.Sessions {
		r := Row{
			Namespace: s.Lease.Namespace, Name: s.ID, Kind: string(s.Kind),
			User: s.Spec.User, Host: s.Spec.Host, Created: s.Lease.CreationTimestamp.Time, Renewed: s.RenewTime,
			Mode: "-", Target: "-", Rules: "-", Local: "-", Requests: "-",
		}
		if s.Status != nil && s.Status.Requests > 0 {
			r.Requests = fmt.Sprint(s.Status.Requests)
		}
		if !s.Spec.StartTime.IsZero() {
			r.Created = s.Spec.StartTime
		}
		state := sessionState(s, now)
		r.State = state
		switch {
		case s.Spec.Forward != nil:
			var targets, locals []string
			for _, t := range s.Spec.Forward.Targets {
				targets = append(targets, t.Resource)
				for _, p := range t.Ports {
					locals = append(locals, p.Local...)
				}
			}
			r.Target, r.Local = strings.Join(targets, ","), orDash(strings.Join(locals, ","))
		case s.Spec.Intercept != nil:
			ic := s.Spec.Intercept
			r.Target = fmt.Sprintf("svc/%s:%d", ic.Service, ic.Port)
			r.Mode = ic.Mode
			r.Local = orDash(ic.LocalAddress)
			var rules []string
			for _, m := range ic.Match {
				rules = append(rules, ruleString(m))
			}
			r.Rules = orDash(strings.Join(rules, ","))
		}
		status := map[string]any{"state": state, "renewTime": s.RenewTime.UTC().Format(time.RFC3339), "holder": s.Holder}
		if s.Status != nil {
			status["admission"] = s.Status
		}
		if s.SpecErr != nil {
			status["error"] = s.SpecErr.Error()
		}
		r.Object = object(KindSession, r.Namespace, r.Name, r.Created, s.Spec, status)
		rows = append(rows, r)
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Created.Before(rows[j].Created) })
	orphans := inv.Orphans(now)
	sort.SliceStable(orphans, func(i, j int) bool { return orphans[i].Service.String() < orphans[j].Service.String() })
	for _, o := range orphans {
		r := Row{
			Namespace: o.Service.Namespace, Name: "-", Kind: "orphan", Target: orphanTarget(o), Mode: "-",
			User: "-", Host: "-", State: o.Reason, Rules: "-", Local: "-", Requests: "-", Created: o.Created,
		}
		r.Object = object(KindOrphan, o.Service.Namespace, orphanTarget(o), o.Created,
			map[string]any{"service": o.Service.Name, "kind": o.Kind, "name": o.Name},
			map[string]any{"reason": o.Reason})
		rows = append(rows, r)
	}
	return rows
}

func sessionState(s session.Info, now time.Time) string {
	switch {
	case s.Expired(now):
		return "stale"
	case s.Status != nil && s.Status.Phase == session.PhaseRejected:
		return "rejected"
	case s.Kind == session.KindIntercept && (s.Status == nil || s.Status.Phase == session.PhasePending):
		return "pending"
	default:
		return "active"
	}
}

func orphanTarget(o inventory.Orphan) string {
	switch o.Kind {
	case "agent":
		return "job/" + o.Name
	default:
		return "svc/" + o.Name
	}
}

func ruleString(m session.MatchRule) string {
	switch {
	case m.Name != "" && strings.HasSuffix(m.Type, "regex"):
		return m.Name + "=~" + m.Value
	case m.Name != "":
		return m.Name + "=" + m.Value
	default:
		return m.Type + ":" + m.Value
	}
}

// Table renders rows as a kubectl table.
func Table(rows []Row, now time.Time, wide bool) *metav1.Table {
	t := &metav1.Table{ColumnDefinitions: []metav1.TableColumnDefinition{
		{Name: "Session", Type: "string"},
		{Name: "Kind", Type: "string"},
		{Name: "Target", Type: "string"},
		{Name: "Mode", Type: "string"},
		{Name: "User", Type: "string"},
		{Name: "Host", Type: "string"},
		{Name: "Age", Type: "string"},
		{Name: "State", Type: "string"},
		{Name: "Rules", Type: "string", Priority: 1},
		{Name: "Requests", Type: "string", Priority: 1},
		{Name: "Local", Type: "string", Priority: 1},
		{Name: "Renewed", Type: "string", Priority: 1},
	}}
	for _, r := range rows {
		renewed := "-"
		if !r.Renewed.IsZero() {
			renewed = duration.HumanDuration(now.Sub(r.Renewed)) + " ago"
		}
		u := &unstructured.Unstructured{}
		u.SetNamespace(r.Namespace)
		u.SetName(r.Name)
		t.Rows = append(t.Rows, metav1.TableRow{
			Cells: []any{r.Name, r.Kind, r.Target, r.Mode, orDash(r.User), orDash(r.Host),
				duration.HumanDuration(now.Sub(r.Created)), r.State, r.Rules, r.Requests, r.Local, renewed},
			Object: runtime.RawExtension{Object: u},
		})
	}
	return t
}

func object(kind, ns, name string, created time.Time, spec, status any) map[string]any {
	return map[string]any{
		"apiVersion": APIVersion,
		"kind":       kind,
		"metadata":   map[string]any{"name": name, "namespace": ns, "creationTimestamp": created.UTC().Format(time.RFC3339)},
		"spec":       toMap(spec),
		"status":     toMap(status),
	}
}

func toMap(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var m any
	_ = json.Unmarshal(b, &m)
	return m
}

func toList(rows []Row) runtime.Object {
	list := &unstructured.UnstructuredList{Object: map[string]any{"apiVersion": APIVersion, "kind": "List"}}
	for _, r := range rows {
		list.Items = append(list.Items, unstructured.Unstructured{Object: r.Object})
	}
	return list
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ptrString(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
