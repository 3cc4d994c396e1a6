// Package forward holds the `kubectl bridge forward` command.
package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/cli-runtime/pkg/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/completion"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/envfile"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
	lib "github.com/kubectl-bridge/kubectl-bridge/pkg/forward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/version"
)

var (
	forwardLong = templates.LongDesc(`
		Forward local ports to Services, workloads or pods, and keep forwarding while
		their pods restart.

		Each TARGET is TYPE/NAME, TYPE/NAME:PORT or TYPE/NAME:LOCAL:PORT, with TYPE one of
		svc, deploy, sts or pod, and PORT a port number or name (of the Service for svc,
		of the containers otherwise). Without PORT every TCP port is forwarded. -l
		forwards every Service matching a label selector.

		The local port is the remote one when it is free, otherwise the next free one
		(--strict-ports fails instead); LOCAL picks it yourself, 0 meaning any free port.
		Every new connection goes to a ready pod, spread over all of them; when a pod goes
		away its connections close and new ones go to another ready pod.

		The forward is recorded in the cluster (a Lease named bridge-SESSION) so that
		'kubectl bridge list' shows it; it is removed when the forward ends.`) +
		// Appended after LongDesc: its Markdown rendering would eat the underscores.
		"\n\n With --env-file, or when a command follows '--', BRIDGE_<SERVICE>_URL, _HOST and _PORT\n" +
		" describe the forwarded ports (BRIDGE_<SERVICE>_<PORTNAME>_URL and so on when a target has\n" +
		" several). The command runs with them; the forward ends with it, with its exit code.\n\n" +
		" forward talks to the API server over SPDY, which moves bulk data faster and costs the\n" +
		" API server less than kubectl's WebSocket tunnel, and falls back to WebSocket where\n" +
		" something in between refuses SPDY. kubectl's own switch chooses otherwise:\n" +
		" KUBECTL_PORT_FORWARD_WEBSOCKETS=true tries WebSocket first (kubectl's order), =false\n" +
		" uses SPDY only."

	forwardExample = templates.Examples(`
		# Reach svc/db on localhost (its port 5432 → 127.0.0.1:5432 when free)
		kubectl bridge forward svc/db

		# Two Services at once, one of them on a chosen local port
		kubectl bridge forward svc/db svc/api:8080:http

		# Every Service labelled tier=backend, on all local IPv4 and IPv6 loopback addresses
		kubectl bridge forward -l tier=backend --address localhost

		# Run the tests against the cluster's database, then stop forwarding
		kubectl bridge forward svc/db -- go test ./...

		# Write the variables for other tools, and print the mapping for scripts
		kubectl bridge forward svc/db --env-file .env.bridge -o json`)
)

const (
	defaultPodRunningTimeout = time.Minute
	leaseDuration            = 30 * time.Second
	// teardownTimeout bounds deleting the Lease after Ctrl-C.
	teardownTimeout = 10 * time.Second
	// defaultMaxProcs: forward shovels bytes between sockets and wakes up for every chunk that
	// arrives. With more than one P, each wake-up also wakes an idle thread to look for work,
	// which spins and sleeps again: a quarter of forward's CPU in a bulk download. One P does
	// the same work without it; at that cost one CPU would move ~590 MB/s here, twice what the
	// API server, the kubelet and the runtime deliver to one client (docs/benchmarks.md,
	// session 9).
	defaultMaxProcs = 1
)

// Options are the inputs of `kubectl bridge forward`.
type Options struct {
	Selector          string
	Addresses         []string
	StrictPorts       bool
	EnvFile           string
	Output            string
	ConnectTimeout    time.Duration
	PodRunningTimeout time.Duration
	// BufferSize is the copy buffer per direction and connection (hidden flag, for measurements).
	BufferSize int
	// CoalesceFrames writes each SPDY frame in one piece, one WebSocket message or TLS record
	// (hidden flag, for measurements).
	CoalesceFrames bool
	// EarlyData sends a connection's first bytes without waiting for the kubelet to acknowledge
	// its streams (hidden flag, for measurements).
	EarlyData bool
	// BatchReceives wakes this process once per batch of received bytes during a bulk download
	// rather than once per TLS record (hidden flag, for measurements).
	BatchReceives bool
	// MaxProcs is how many CPUs run this process's Go code at once (GOMAXPROCS); 0 leaves Go's
	// default, one per CPU. An environment's GOMAXPROCS wins (hidden flag, for measurements).
	MaxProcs int

	targets   []lib.TargetArg
	command   []string
	addrs     []lib.ListenAddr
	namespace string
	kubeUser  string
	client    kubernetes.Interface
	config    *rest.Config
	builder   func() *resource.Builder
	// transport is SPDY first, or what kubectl's KUBECTL_PORT_FORWARD_WEBSOCKETS asks for.
	transport portforward.Transport

	genericiooptions.IOStreams
}

// NewOptions returns Options with defaults.
func NewOptions(streams genericiooptions.IOStreams) *Options {
	return &Options{
		Addresses:         []string{"127.0.0.1"},
		ConnectTimeout:    lib.DefaultConnectTimeout,
		PodRunningTimeout: defaultPodRunningTimeout,
		CoalesceFrames:    true,
		EarlyData:         true,
		BatchReceives:     true,
		MaxProcs:          defaultMaxProcs,
		IOStreams:         streams,
	}
}

// NewCmdForward returns the `kubectl bridge forward` command.
func NewCmdForward(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewOptions(streams)
	cmd := &cobra.Command{
		Use:                   "forward TARGET... [-l SELECTOR] [--address ADDR] [--env-file FILE] [-- COMMAND [ARGS...]]",
		DisableFlagsInUseLine: true,
		Short:                 "Forward local ports to Services, workloads or pods, across pod restarts",
		Long:                  forwardLong,
		Example:               forwardExample,
		ValidArgsFunction:     completion.Targets(f, completion.Service, completion.Deployment, completion.StatefulSet, completion.Pod),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(f, cmd, args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			cmd.SilenceUsage = true
			return o.Run(cmd.Context())
		},
	}
	flags := cmd.Flags()
	flags.StringVarP(&o.Selector, "selector", "l", o.Selector, "Forward every Service matching this label selector (e.g. -l tier=backend), in addition to the TARGETs.")
	flags.StringSliceVar(&o.Addresses, "address", o.Addresses, "Local addresses to listen on (comma separated): IPs of this machine, or localhost for 127.0.0.1 and ::1.")
	flags.BoolVar(&o.StrictPorts, "strict-ports", o.StrictPorts, "Fail when a remote port is not free locally instead of picking the next free one.")
	flags.StringVar(&o.EnvFile, "env-file", o.EnvFile, "Write the BRIDGE_* variables of the forwarded ports to this file (dotenv format).")
	flags.StringVarP(&o.Output, "output", "o", o.Output, "Output format: json prints the port mapping once, for scripts.")
	flags.DurationVar(&o.ConnectTimeout, "connect-timeout", o.ConnectTimeout, "How long a new local connection waits for a ready pod before it is closed.")
	flags.IntVar(&o.BufferSize, "buffer-size", portforward.DefaultBufferSize, "Copy buffer per direction and connection, in bytes.")
	_ = flags.MarkHidden("buffer-size")
	flags.BoolVar(&o.CoalesceFrames, "coalesce-frames", o.CoalesceFrames, "Write each SPDY frame in one piece (one WebSocket message or TLS record).")
	_ = flags.MarkHidden("coalesce-frames")
	flags.BoolVar(&o.EarlyData, "early-data", o.EarlyData, "Send a connection's first bytes without waiting for the kubelet to acknowledge its streams.")
	_ = flags.MarkHidden("early-data")
	flags.BoolVar(&o.BatchReceives, "batch-receives", o.BatchReceives, "During bulk downloads, wake once per batch of received bytes rather than once per TLS record.")
	_ = flags.MarkHidden("batch-receives")
	flags.IntVar(&o.MaxProcs, "max-procs", o.MaxProcs, "CPUs that run Go code at once (GOMAXPROCS); 0 for one per CPU.")
	_ = flags.MarkHidden("max-procs")
	cmdutil.AddPodRunningTimeoutFlag(cmd, defaultPodRunningTimeout)
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Complete parses the arguments and builds the clients.
func (o *Options) Complete(f cmdutil.Factory, cmd *cobra.Command, args []string) error {
	if dash := cmd.ArgsLenAtDash(); dash >= 0 {
		o.command = args[dash:]
		args = args[:dash]
	}
	for _, a := range args {
		t, err := lib.ParseTarget(a)
		if err != nil {
			return exitcode.Usagef("%v", err)
		}
		o.targets = append(o.targets, t)
	}
	var err error
	if o.PodRunningTimeout, err = cmdutil.GetPodRunningTimeoutFlag(cmd); err != nil {
		return exitcode.Usagef("%v", err)
	}
	loader := f.ToRawKubeConfigLoader()
	if o.namespace, _, err = loader.Namespace(); err != nil {
		return fmt.Errorf("read namespace from kubeconfig: %w", err)
	}
	if raw, err := loader.RawConfig(); err == nil {
		if c := raw.Contexts[raw.CurrentContext]; c != nil {
			o.kubeUser = c.AuthInfo
		}
	}
	if o.config, err = f.ToRESTConfig(); err != nil {
		return fmt.Errorf("read kubeconfig: %w", err)
	}
	if o.client, err = f.KubernetesClientSet(); err != nil {
		return fmt.Errorf("build client: %w", err)
	}
	o.builder = f.NewBuilder
	o.transport = portforward.TransportFromEnv(os.Getenv(string(cmdutil.PortForwardWebsockets)), portforward.SPDYFirst)
	return nil
}

// Validate checks what can be checked without the cluster.
func (o *Options) Validate() error {
	if len(o.targets) == 0 && o.Selector == "" {
		if len(o.command) > 0 {
			return exitcode.Usagef("no TARGET before '--': name what to forward, e.g. kubectl bridge forward svc/db -- %s", strings.Join(o.command, " "))
		}
		return exitcode.Usagef("no TARGET: name what to forward, e.g. svc/db, svc/db:5432 or deploy/api:8080, or use -l SELECTOR")
	}
	if o.Selector != "" {
		if _, err := labels.Parse(o.Selector); err != nil {
			return exitcode.Usagef("-l %q is not a label selector: %v", o.Selector, err)
		}
	}
	addrs, err := lib.ParseAddresses(o.Addresses)
	if err != nil {
		return exitcode.Usagef("%v", err)
	}
	o.addrs = addrs
	if o.MaxProcs < 0 {
		return exitcode.Usagef("--max-procs %d: give a number of CPUs, or 0 for one per CPU", o.MaxProcs)
	}
	switch o.Output {
	case "", "json":
	default:
		return exitcode.Usagef("--output %q: the only output format is json", o.Output)
	}
	if o.ConnectTimeout <= 0 {
		return exitcode.Usagef("--connect-timeout must be positive")
	}
	if o.EnvFile != "" {
		if st, err := os.Stat(filepath.Dir(o.EnvFile)); err != nil || !st.IsDir() {
			return exitcode.Usagef("--env-file %s: directory %s does not exist", o.EnvFile, filepath.Dir(o.EnvFile))
		}
	}
	return nil
}

// Run forwards until interrupted or until the command ends.
func (o *Options) Run(ctx context.Context) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && o.MaxProcs > 0 {
		defer goruntime.GOMAXPROCS(goruntime.GOMAXPROCS(o.MaxProcs))
	}

	targets, err := o.resolve(ctx)
	if err != nil {
		return err
	}

	// With a command, our own output goes to stderr so that the command's stdout stays its own.
	out, events := o.Out, o.Out
	if len(o.command) > 0 {
		out, events = o.ErrOut, o.ErrOut
	}
	if o.Output == "json" {
		events = o.ErrOut
	}

	dialer := portforward.NewRESTDialer(o.config, o.client.CoreV1().RESTClient(), o.transport)
	dialer.CoalesceFrames = o.CoalesceFrames
	dialer.EarlyData = o.EarlyData
	dialer.BatchReceives = o.BatchReceives
	pool := portforward.NewPool(dialer, portforward.Options{})
	defer pool.Close()
	printer := &eventPrinter{w: events}
	fw, err := lib.New(lib.Config{
		Client:         o.client,
		Pool:           pool,
		Buffers:        portforward.NewBuffers(o.BufferSize),
		Targets:        targets,
		Addresses:      o.addrs,
		StrictPorts:    o.StrictPorts,
		ConnectTimeout: o.ConnectTimeout,
		OnEvent:        printer.print,
	})
	if err != nil {
		return err
	}
	defer fw.Close()
	fw.Start(ctx)

	if err := o.waitReady(ctx, fw); err != nil {
		if ctx.Err() != nil {
			// Ctrl-C while waiting: nothing was created, nothing to report.
			return exitcode.Silent(130, err)
		}
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, portforward.DefaultDialTimeout)
	err = fw.Probe(pctx)
	cancel()
	if err != nil {
		if apierrors.IsForbidden(err) || strings.Contains(err.Error(), "forbidden") {
			return fmt.Errorf("cannot port-forward: %w; ask for 'create' on pods/portforward in namespace %s (see 'kubectl bridge doctor')", err, o.namespace)
		}
		return fmt.Errorf("cannot port-forward: %w; check the connection with 'kubectl bridge doctor'", err)
	}

	sess, err := o.createSession(ctx, fw.Mappings())
	if err != nil {
		return err
	}
	defer func() {
		// The Lease must go even after Ctrl-C cancelled ctx.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
		defer cancel()
		if err := sess.Delete(dctx); err != nil {
			fmt.Fprintf(o.ErrOut, "warning: %v; remove it with 'kubectl bridge clean --session %s -n %s'\n", err, sess.ID, o.namespace)
		}
	}()

	vars := envfile.Vars(endpoints(fw.Mappings()))
	if o.EnvFile != "" {
		if err := envfile.Write(o.EnvFile, vars); err != nil {
			return fmt.Errorf("%w: check that the directory is writable", err)
		}
	}
	if o.Output == "json" {
		if err := printJSON(o.Out, sess.ID, o.namespace, fw.Mappings(), vars); err != nil {
			return err
		}
	} else {
		o.printTable(out, fw, sess.ID)
	}
	printer.enable()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	heartbeat := make(chan error, 1)
	go func() { heartbeat <- sess.Heartbeat(runCtx) }()

	if len(o.command) == 0 {
		select {
		case <-ctx.Done():
			return nil
		case err := <-heartbeat:
			return sessionEnded(err)
		}
	}
	return o.runCommand(runCtx, vars, heartbeat)
}

// resolve fetches the targets with kubectl's resource builder and checks that they can be forwarded.
func (o *Options) resolve(ctx context.Context) ([]*lib.Target, error) {
	var targets []*lib.Target
	for _, arg := range o.targets {
		obj, err := o.builder().
			WithScheme(scheme.Scheme, scheme.Scheme.PrioritizedVersionsAllGroups()...).
			NamespaceParam(o.namespace).DefaultNamespace().
			ResourceNames(arg.Kind.Resource(), arg.Name).
			Do().Object()
		if err != nil {
			if apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("%s not found in namespace %s: check the name with 'kubectl get %s -n %s', or pick the namespace with -n", arg.Display(), o.namespace, arg.Kind, o.namespace)
			}
			return nil, fmt.Errorf("get %s in namespace %s: %w", arg.Display(), o.namespace, err)
		}
		t, err := lib.NewTarget(arg, obj)
		if err != nil {
			return nil, fmt.Errorf("%w (namespace %s)", err, o.namespace)
		}
		targets = append(targets, t)
	}
	if o.Selector != "" {
		infos, err := o.builder().
			WithScheme(scheme.Scheme, scheme.Scheme.PrioritizedVersionsAllGroups()...).
			NamespaceParam(o.namespace).DefaultNamespace().
			LabelSelectorParam(o.Selector).
			ResourceTypes("services").
			Flatten().
			Do().Infos()
		if err != nil {
			return nil, fmt.Errorf("list Services matching %q in namespace %s: %w", o.Selector, o.namespace, err)
		}
		var svcs []*corev1.Service
		for _, info := range infos {
			if s, ok := info.Object.(*corev1.Service); ok {
				svcs = append(svcs, s)
			} else if s, err := toService(info.Object); err == nil {
				svcs = append(svcs, s)
			}
		}
		found, skipped := lib.ServiceTargets(svcs)
		for _, err := range skipped {
			fmt.Fprintf(o.ErrOut, "warning: skipping %v\n", err)
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("no Service that can be forwarded matches -l %s in namespace %s: check with 'kubectl get svc -l %s -n %s'", o.Selector, o.namespace, o.Selector, o.namespace)
		}
		targets = append(targets, found...)
	}
	return targets, nil
}

func toService(obj runtime.Object) (*corev1.Service, error) {
	svc := &corev1.Service{}
	if err := scheme.Scheme.Convert(obj, svc, nil); err != nil {
		return nil, err
	}
	return svc, nil
}

// waitReady waits up to --pod-running-timeout for a ready pod behind every target, telling the
// user when it takes more than a moment.
func (o *Options) waitReady(ctx context.Context, fw *lib.Forwarder) error {
	quick, cancel := context.WithTimeout(ctx, time.Second)
	err := fw.WaitReady(quick)
	cancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Fprintf(o.ErrOut, "Waiting up to %s for ready pods (%s)…\n", o.PodRunningTimeout, err)
	wctx, cancel := context.WithTimeout(ctx, o.PodRunningTimeout-time.Second)
	defer cancel()
	if err := fw.WaitReady(wctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("no ready pod within %s: %s; check the pods with 'kubectl get pods -n %s' and 'kubectl describe pod', or wait longer with --pod-running-timeout", o.PodRunningTimeout, err, o.namespace)
	}
	return nil
}

func (o *Options) createSession(ctx context.Context, mappings []lib.Mapping) (*session.Session, error) {
	host, _ := os.Hostname()
	user := session.CurrentUser(ctx, o.client.AuthenticationV1(), o.kubeUser)
	spec := session.Spec{
		Kind:          session.KindForward,
		User:          user,
		Host:          host,
		PluginVersion: version.Version(),
		Forward:       &session.ForwardSpec{},
	}
	byTarget := map[*lib.Target]int{}
	for _, m := range mappings {
		i, ok := byTarget[m.Target]
		if !ok {
			i = len(spec.Forward.Targets)
			byTarget[m.Target] = i
			spec.Forward.Targets = append(spec.Forward.Targets, session.ForwardTarget{Resource: m.Target.Display})
		}
		spec.Forward.Targets[i].Ports = append(spec.Forward.Targets[i].Ports, session.ForwardPort{Name: m.Port.Name, Remote: m.Port.Number, Local: m.Addrs})
	}
	holder := host
	if user != "" {
		holder = user + "@" + host
	}
	sess, err := session.Create(ctx, o.client.CoordinationV1(), session.Config{
		Namespace:     o.namespace,
		Spec:          spec,
		Holder:        holder,
		LeaseDuration: leaseDuration,
	})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("%w: forward records its session in a Lease; ask for create/update/delete on leases.coordination.k8s.io in namespace %s (see 'kubectl bridge doctor')", err, o.namespace)
		}
		return nil, err
	}
	klog.V(1).InfoS("Session started", "lease", klog.KRef(o.namespace, sess.LeaseName()))
	return sess, nil
}

func sessionEnded(err error) error {
	if errors.Is(err, session.ErrGone) {
		return fmt.Errorf("the session's Lease was deleted (by 'kubectl bridge clean'?); forwarding stopped")
	}
	return err
}

// runCommand runs the command with the variables, passing the terminal through, and returns its
// exit code.
func (o *Options) runCommand(ctx context.Context, vars []envfile.Var, heartbeat <-chan error) error {
	cmd := exec.CommandContext(ctx, o.command[0], o.command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.In, o.Out, o.ErrOut
	cmd.Env = os.Environ()
	for _, v := range vars {
		cmd.Env = append(cmd.Env, v.String())
	}
	// On Ctrl-C or SIGTERM the command gets SIGTERM and a moment to finish before SIGKILL.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return &exitcode.Error{Code: 127, Err: fmt.Errorf("run %s: %w", o.command[0], err)}
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	var err error
	select {
	case err = <-waitErr:
	case herr := <-heartbeat:
		if herr != nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-waitErr
			return sessionEnded(herr)
		}
		err = <-waitErr
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return exitcode.Silent(code, fmt.Errorf("%s exited with code %d", o.command[0], code))
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", o.command[0], err)
	}
	return nil
}

func remoteLabel(p lib.Port) string {
	s := strconv.Itoa(int(p.Number))
	if p.Name != "" {
		s += " (" + p.Name + ")"
	}
	return s
}

func (o *Options) printTable(w io.Writer, fw *lib.Forwarder, id string) {
	tw := printers.GetNewTabWriter(w)
	fmt.Fprintln(tw, "TARGET\tLOCAL\tREMOTE\tREADY PODS\tSTATE")
	for _, m := range fw.Mappings() {
		state, ready := fw.State(m.Target)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", m.Target.Display, strings.Join(m.Addrs, ","), remoteLabel(m.Port), ready, state)
	}
	tw.Flush()
	for _, m := range fw.Mappings() {
		if m.Port.Local == nil && m.LocalPort != int(m.Port.Number) {
			fmt.Fprintf(w, "Local port %d was not free: %s port %d listens on %d.\n", m.Port.Number, m.Target.Display, m.Port.Number, m.LocalPort)
		}
	}
	fmt.Fprintf(w, "Session %s in namespace %s. Press Ctrl-C to stop.\n", id, o.namespace)
}

// endpoints describes the mappings for envfile: the first listen address is the one to use.
func endpoints(ms []lib.Mapping) []envfile.Endpoint {
	var out []envfile.Endpoint
	for _, m := range ms {
		host, _, _ := net.SplitHostPort(m.Addrs[0])
		switch host {
		case "0.0.0.0":
			host = "127.0.0.1"
		case "::":
			host = "::1"
		}
		out = append(out, envfile.Endpoint{
			Service:     m.Target.Name,
			PortName:    m.Port.Name,
			RemotePort:  m.Port.Number,
			AppProtocol: m.Port.AppProtocol,
			Host:        host,
			Port:        m.LocalPort,
		})
	}
	return out
}

// jsonForward is one forwarded port in `-o json`.
type jsonForward struct {
	Target     string   `json:"target"`
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	PortName   string   `json:"portName,omitempty"`
	RemotePort int32    `json:"remotePort"`
	LocalPort  int      `json:"localPort"`
	Addresses  []string `json:"addresses"`
	URL        string   `json:"url"`
}

func printJSON(w io.Writer, id, namespace string, ms []lib.Mapping, vars []envfile.Var) error {
	doc := struct {
		Session   string            `json:"session"`
		Namespace string            `json:"namespace"`
		Forwards  []jsonForward     `json:"forwards"`
		Env       map[string]string `json:"env"`
	}{Session: id, Namespace: namespace, Env: map[string]string{}}
	eps := endpoints(ms)
	for i, m := range ms {
		doc.Forwards = append(doc.Forwards, jsonForward{
			Target:     m.Target.Display,
			Namespace:  m.Target.Namespace,
			Name:       m.Target.Name,
			PortName:   m.Port.Name,
			RemotePort: m.Port.Number,
			LocalPort:  m.LocalPort,
			Addresses:  m.Addrs,
			URL:        envfile.Scheme(m.Port.AppProtocol, m.Port.Name) + "://" + net.JoinHostPort(eps[i].Host, strconv.Itoa(m.LocalPort)),
		})
	}
	for _, v := range vars {
		doc.Env[v.Name] = v.Value
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

// eventPrinter prints a line per state change once the start-up table is out; earlier changes
// are already in the table.
type eventPrinter struct {
	w       io.Writer
	mu      sync.Mutex
	enabled bool
}

func (p *eventPrinter) enable() {
	p.mu.Lock()
	p.enabled = true
	p.mu.Unlock()
}

func (p *eventPrinter) print(ev lib.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now().Format("15:04:05")
	if ev.Conn != "" {
		fmt.Fprintf(p.w, "%s %s: connection from %s: %s\n", now, ev.Target.Display, ev.Conn, ev.Reason)
		return
	}
	if !p.enabled && ev.State != lib.StateFailed {
		return
	}
	switch ev.State {
	case lib.StateHealthy:
		fmt.Fprintf(p.w, "%s %s: %s (%d ready %s)\n", now, ev.Target.Display, ev.State, ev.Ready, plural(ev.Ready, "pod", "pods"))
	default:
		fmt.Fprintf(p.w, "%s %s: %s (%s)\n", now, ev.Target.Display, ev.State, ev.Reason)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
