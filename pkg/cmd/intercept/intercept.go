// Package intercept holds the `kubectl bridge intercept` command.
package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/completion"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/envfile"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
	lib "github.com/kubectl-bridge/kubectl-bridge/pkg/intercept"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/podproxy"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/version"
)

var (
	interceptLong = templates.LongDesc(`
		Send the cluster's traffic for a Service port to a process on this machine.

		--mode steal (default) delivers every connection to the local target, which answers
		it; --mode mirror keeps the original pods serving and sends the local target a copy.
		With --header, --path, --path-prefix, --path-regex or --method only the matching HTTP
		requests are taken, everyone else's are still served by the original pods, and other
		developers can intercept the same Service with their own rules.

		No pod is restarted and no workload is changed: a small agent is started next to the
		Service and the Service's selector is switched to it while sessions last. Ctrl-C,
		the end of '-- COMMAND', or 'kubectl bridge clean' put the Service back; if this
		process dies, the agent puts it back by itself after --idle-grace.

		Switching a selector affects new connections: in-cluster clients holding keep-alive
		connections reach the original pods until they reconnect.`)

	interceptExample = templates.Examples(`
		# All traffic of svc/api port 80 to localhost:8080
		kubectl bridge intercept svc/api --port 80:8080

		# Only requests with the header "x-owner: alice", to a local app on port 3000
		kubectl bridge intercept svc/api --port http --local-port 3000 --header x-owner=alice

		# A copy of the traffic, while the cluster keeps serving it
		kubectl bridge intercept svc/api --mode mirror --to 127.0.0.1:9000

		# Run the local app for the duration of the intercept
		kubectl bridge intercept svc/api --port 80:3000 -- npm start`)
)

// Options are the inputs of `kubectl bridge intercept`.
type Options struct {
	Port             string
	To               string
	LocalPort        int
	Mode             string
	Rules            match.Flags
	Protocol         string
	Image            string
	ImagePullSecrets []string
	AgentResources   string
	AgentDeadline    time.Duration
	IdleGrace        time.Duration
	ServiceAccount   string
	Timeout          time.Duration
	EnvFile          string
	Tunnel           string

	service   string
	env       []envfile.Var
	command   []string
	namespace string
	client    kubernetes.Interface
	config    *rest.Config
	proxy     *podproxy.Dialer
	cfg       lib.Config
	genericiooptions.IOStreams
}

// NewOptions returns Options with defaults.
func NewOptions(streams genericiooptions.IOStreams) *Options {
	return &Options{
		Mode: "steal", AgentDeadline: lib.DefaultActiveDeadline, IdleGrace: lib.DefaultIdleGrace,
		Timeout: lib.DefaultTimeout, Tunnel: lib.TransportAuto, IOStreams: streams,
	}
}

// NewCmdIntercept returns the `kubectl bridge intercept` command.
func NewCmdIntercept(f cmdutil.Factory, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewOptions(streams)
	cmd := &cobra.Command{
		Use:               "intercept svc/NAME [--port REMOTE[:LOCAL]] [--to HOST:PORT] [--mode steal|mirror] [--header K=V]... [-- COMMAND [args...]]",
		Short:             "Send a Service's cluster traffic (or the matching requests) to this machine",
		Long:              interceptLong,
		Example:           interceptExample,
		ValidArgsFunction: completion.SingleTarget(f, completion.Service),
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
	fl := cmd.Flags()
	fl.StringVar(&o.Port, "port", o.Port, "Service port to intercept, by number or name, optionally with the local port: REMOTE[:LOCAL]. Required when the Service has several ports.")
	fl.StringVar(&o.To, "to", o.To, "Local target HOST:PORT that receives the traffic (default 127.0.0.1 and the local or Service port).")
	fl.IntVar(&o.LocalPort, "local-port", o.LocalPort, "Local port that receives the traffic, on 127.0.0.1 (default: the Service port).")
	fl.StringVar(&o.Mode, "mode", o.Mode, "steal: the local target answers; mirror: the cluster answers and the local target gets a copy.")
	fl.StringArrayVar(&o.Rules.Header, "header", nil, "Only requests with this header: NAME=VALUE, or NAME=~REGEX (repeatable; all rules must match).")
	fl.StringArrayVar(&o.Rules.Path, "path", nil, "Only requests for this exact path.")
	fl.StringArrayVar(&o.Rules.PathPrefix, "path-prefix", nil, "Only requests whose path starts with this prefix.")
	fl.StringArrayVar(&o.Rules.PathRegex, "path-regex", nil, "Only requests whose path fully matches this regular expression.")
	fl.StringArrayVar(&o.Rules.Method, "method", nil, "Only requests with this HTTP method.")
	fl.StringVar(&o.Protocol, "protocol", o.Protocol, "The port's protocol when its name and appProtocol do not tell: http or tcp.")
	fl.StringVar(&o.Image, "image", o.Image, "Agent image (default: the release image of this plugin version, or $KUBECTL_BRIDGE_AGENT_IMAGE).")
	fl.StringArrayVar(&o.ImagePullSecrets, "image-pull-secret", nil, "Secret in the namespace to pull the agent image with (repeatable).")
	fl.StringVar(&o.AgentResources, "agent-resources", o.AgentResources, "Agent container resources, e.g. cpu=100m,memory=64Mi: cpu is requested (the agent runs on that many cores, rounded up; 1 when not set), memory is requested and the limit.")
	fl.DurationVar(&o.AgentDeadline, "agent-deadline", o.AgentDeadline, "Longest life of the agent (its Job's activeDeadlineSeconds), a last-resort backstop.")
	fl.DurationVar(&o.IdleGrace, "idle-grace", o.IdleGrace, "How long the agent waits after the last session died before it restores the Service.")
	fl.StringVar(&o.ServiceAccount, "service-account", o.ServiceAccount, "Run the agent as this admin-installed ServiceAccount instead of creating one with its Role (see 'kubectl bridge doctor --print-rbac').")
	fl.DurationVar(&o.Timeout, "timeout", o.Timeout, "How long to wait for the agent to become ready.")
	fl.StringVar(&o.EnvFile, "env-file", o.EnvFile, "Write the intercepted workload's environment (ConfigMap/Secret references, envFrom and downward-API fields resolved) to this dotenv file; '-- COMMAND' gets it too.")
	fl.StringVar(&o.Tunnel, "tunnel", o.Tunnel, "How to reach the agent: proxy (the API server's pod proxy, straight to the agent pod), port-forward (through the kubelet, as kubectl port-forward), or auto: proxy when the API server can reach the pod and you may use pods/proxy, else port-forward.")
	_ = cmd.RegisterFlagCompletionFunc("port", completion.ServicePorts(f))
	_ = cmd.RegisterFlagCompletionFunc("tunnel", cobra.FixedCompletions(lib.Transports(), cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Complete parses arguments and reads the namespace and clients. Nothing in the cluster is read yet.
func (o *Options) Complete(f cmdutil.Factory, cmd *cobra.Command, args []string) error {
	if n := cmd.ArgsLenAtDash(); n >= 0 {
		o.command = args[n:]
		args = args[:n]
	}
	if len(args) != 1 {
		return exitcode.Usagef("intercept takes one Service, e.g. svc/api (got %d arguments)", len(args))
	}
	kind, name, ok := strings.Cut(args[0], "/")
	if !ok {
		kind, name = "svc", args[0]
	}
	switch strings.ToLower(kind) {
	case "svc", "service", "services":
	default:
		return exitcode.Usagef("%q is not a Service: intercept works on Services (svc/NAME); to reach a %s use 'kubectl bridge forward'", args[0], kind)
	}
	if name == "" {
		return exitcode.Usagef("%q names no Service: use svc/NAME", args[0])
	}
	o.service = name
	var err error
	if o.namespace, _, err = f.ToRawKubeConfigLoader().Namespace(); err != nil {
		return fmt.Errorf("read namespace from kubeconfig: %w", err)
	}
	if o.config, err = f.ToRESTConfig(); err != nil {
		return fmt.Errorf("read kubeconfig: %w", err)
	}
	if o.client, err = f.KubernetesClientSet(); err != nil {
		return fmt.Errorf("build client: %w", err)
	}
	if o.proxy, err = podproxy.NewDialer(o.config, o.client.CoreV1().RESTClient(), tunnel.UpgradePath, tunnel.UpgradeProtocol); err != nil {
		return fmt.Errorf("build the pod proxy client: %w", err)
	}
	return nil
}

// Validate checks every flag without contacting the cluster.
func (o *Options) Validate() error {
	mode, err := tunnel.ParseMode(o.Mode)
	if err != nil {
		return exitcode.Usagef("--mode %q: use steal or mirror", o.Mode)
	}
	remote, local, err := splitPort(o.Port)
	if err != nil {
		return exitcode.Usagef("%v", err)
	}
	if o.To != "" && (o.LocalPort != 0 || local != 0) {
		return exitcode.Usagef("--to and --local-port (or --port REMOTE:LOCAL) both name the local target: give one")
	}
	if o.LocalPort != 0 && local != 0 {
		return exitcode.Usagef("--local-port and --port REMOTE:LOCAL both name the local port: give one")
	}
	if o.LocalPort < 0 || o.LocalPort > 65535 {
		return exitcode.Usagef("--local-port %d is not a port number (1-65535)", o.LocalPort)
	}
	if o.LocalPort != 0 {
		local = o.LocalPort
	}
	to := o.To
	if to != "" {
		host, port, err := net.SplitHostPort(to)
		n, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			return exitcode.Usagef("--to %q is not HOST:PORT (e.g. 127.0.0.1:3000)", to)
		}
	} else if local != 0 {
		to = net.JoinHostPort("127.0.0.1", strconv.Itoa(local))
	}
	rules, err := match.ParseFlags(o.Rules)
	if err != nil {
		return exitcode.Usagef("%v", err)
	}
	switch o.Protocol {
	case "", "http", "tcp":
	default:
		return exitcode.Usagef("--protocol %q: use http or tcp", o.Protocol)
	}
	if o.Protocol == "tcp" && len(rules) > 0 {
		return exitcode.Usagef("request rules (--header, --path, --method) need HTTP traffic, but --protocol tcp says the port is not HTTP")
	}
	res, err := parseResources(o.AgentResources)
	if err != nil {
		return exitcode.Usagef("--agent-resources %q: %v (e.g. cpu=100m,memory=64Mi)", o.AgentResources, err)
	}
	if o.AgentDeadline < time.Minute {
		return exitcode.Usagef("--agent-deadline %s is too short: the agent needs at least a minute", o.AgentDeadline)
	}
	if o.Timeout <= 0 || o.IdleGrace <= 0 {
		return exitcode.Usagef("--timeout and --idle-grace must be positive")
	}
	if !slices.Contains(lib.Transports(), o.Tunnel) {
		return exitcode.Usagef("--tunnel %q: use %s", o.Tunnel, strings.Join(lib.Transports(), ", "))
	}
	var mrules []session.MatchRule
	for _, r := range rules {
		mrules = append(mrules, session.MatchRule(r))
	}
	o.cfg = lib.Config{
		Client: o.client, Namespace: o.namespace, Service: o.service, Port: remote, LocalAddress: to,
		Mode: mode, Match: mrules, Protocol: o.Protocol, Image: version.AgentImage(o.Image), ImagePullSecrets: o.ImagePullSecrets,
		Resources: res, ActiveDeadline: o.AgentDeadline, IdleGrace: o.IdleGrace, ServiceAccount: o.ServiceAccount,
		Timeout: o.Timeout, Tunnel: o.Tunnel, Version: version.Version(),
	}
	return nil
}

// splitPort parses --port REMOTE[:LOCAL]: REMOTE a number or name, LOCAL a number.
func splitPort(s string) (string, int, error) {
	if s == "" {
		return "", 0, nil
	}
	remote, localText, hasLocal := strings.Cut(s, ":")
	if remote == "" {
		return "", 0, fmt.Errorf("--port %q: want REMOTE[:LOCAL], e.g. 80, http or 80:3000", s)
	}
	if n, err := strconv.Atoi(remote); err == nil && (n < 1 || n > 65535) {
		return "", 0, fmt.Errorf("--port %q: %d is not a port number (1-65535)", s, n)
	}
	if !hasLocal {
		return remote, 0, nil
	}
	local, err := strconv.Atoi(localText)
	if err != nil || local < 1 || local > 65535 {
		return "", 0, fmt.Errorf("--port %q: local port %q is not a port number (1-65535)", s, localText)
	}
	return remote, local, nil
}

func parseResources(s string) (corev1.ResourceRequirements, error) {
	var rr corev1.ResourceRequirements
	if s == "" {
		return rr, nil
	}
	rr.Requests, rr.Limits = corev1.ResourceList{}, corev1.ResourceList{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || (k != "cpu" && k != "memory") {
			return rr, fmt.Errorf("%q is not cpu=QUANTITY or memory=QUANTITY", kv)
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return rr, fmt.Errorf("%s: %w", kv, err)
		}
		rr.Requests[corev1.ResourceName(k)] = q
		if k == "memory" {
			// Memory is not compressible: a limit equal to the request keeps the agent predictable.
			rr.Limits[corev1.ResourceName(k)] = q
		}
	}
	return rr, nil
}

// Run prepares, starts, serves and finally undoes the intercept.
func (o *Options) Run(ctx context.Context) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	host, _ := os.Hostname()
	o.cfg.Host = host
	o.cfg.User = session.CurrentUser(ctx, o.client.AuthenticationV1(), "")

	plan, err := lib.Prepare(ctx, o.cfg)
	if err != nil {
		return err
	}
	for _, w := range plan.Warnings() {
		fmt.Fprintf(o.ErrOut, "Warning: %s\n", w)
	}
	// The workload's environment is read before anything is created: a missing Secret stops here.
	if o.EnvFile != "" || len(o.command) > 0 {
		if o.env, err = plan.WorkloadEnv(ctx); err != nil {
			return err
		}
		if o.EnvFile != "" {
			if err := envfile.Write(o.EnvFile, o.env); err != nil {
				return fmt.Errorf("write --env-file: %w", err)
			}
			fmt.Fprintf(o.ErrOut, "Wrote %d variables of the workload's environment to %s.\n", len(o.env), o.EnvFile)
		}
	}
	started := time.Now()
	ic, err := plan.Start(ctx, o.ErrOut)
	if err != nil {
		return err
	}
	if ic.AgentReady > 0 {
		fmt.Fprintf(o.ErrOut, "Agent ready in %.1f s.\n", ic.AgentReady.Seconds())
	}
	sp := plan.ServicePort()
	rules := "every connection"
	if len(o.cfg.Match) > 0 {
		var rs []match.Rule
		for _, m := range o.cfg.Match {
			rs = append(rs, match.Rule(m))
		}
		rules = "requests matching " + match.Describe(rs)
	}
	fmt.Fprintf(o.Out, "Intercepting svc/%s port %d in namespace %s → %s (%s, %s), session %s.\n",
		o.service, sp.Port, o.namespace, plan.LocalAddress(), o.cfg.Mode, rules, ic.SessionID())

	watchCtx, stopWatch := context.WithCancel(ctx)
	go ic.WatchResets(watchCtx, o.printReset)
	runErr := o.serve(ctx, ic, started)
	stopWatch()

	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	closed, err := ic.Close(cctx, o.ErrOut)
	if closed.Restored {
		fmt.Fprintf(o.ErrOut, "Service %s restored in %d ms (agent removed in %d ms).\n", o.service,
			closed.SelectorRestored.Milliseconds(), closed.AgentRemoved.Milliseconds())
	}
	if err != nil {
		runErr = errors.Join(runErr, err)
	}
	return runErr
}

// printReset tells the user that someone else wrote the Service's selector, and after the second
// time how to stop it.
func (o *Options) printReset(r lib.Reset) {
	fmt.Fprintf(o.ErrOut, "Warning: the selector of service %s was written by %s during the intercept; the agent switches it back (the owner's selector %s is what will be restored).\n",
		o.service, r, objects.SelectorString(r.Selector))
	if r.Count < 2 {
		return
	}
	if r.GitOps != nil {
		fmt.Fprintf(o.ErrOut, "Warning: %s has reset it %d times: %s\n", r.GitOps.Tool, r.Count, r.GitOps.Exemption)
		return
	}
	fmt.Fprintf(o.ErrOut, "Warning: %s has reset it %d times: exempt /spec/selector of service %s from what %s applies while you intercept (Argo CD: ignoreDifferences with RespectIgnoreDifferences=true; Flux: the kustomize.toolkit.fluxcd.io/reconcile=disabled annotation).\n",
		r.Manager, r.Count, o.service, r.Manager)
}

// transportName says how the tunnel reaches the agent, for the user.
func transportName(t string) string {
	if t == lib.TransportProxy {
		return "via the API server's pod proxy"
	}
	return "via port-forward"
}

// serve runs the tunnel and, when given, the local command; it returns when either ends.
func (o *Options) serve(ctx context.Context, ic *lib.Intercept, started time.Time) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pool := portforward.NewPool(portforward.NewRESTDialer(o.config, o.client.CoreV1().RESTClient(),
		// WebSocket first for the tunnel: yamux's small frames measured slower over SPDY
		// (session 4, before SPDY frames were coalesced), unlike forward's.
		portforward.TransportFromEnv(os.Getenv(string(cmdutil.PortForwardWebsockets)), portforward.WebSocketFirst)), portforward.Options{})
	defer pool.Close()
	dialer := &lib.TunnelDialer{
		Mode: o.Tunnel,
		Proxy: func(ctx context.Context, pod portforward.PodRef, port int32) (net.Conn, error) {
			return o.proxy.Dial(ctx, pod.Namespace, pod.Name, port)
		},
		PortForward: func(ctx context.Context, pod portforward.PodRef, port int32) (net.Conn, error) {
			return pool.Dial(ctx, pod, port)
		},
		OnFallback: func(err error) {
			fmt.Fprintf(o.ErrOut, "The API server's pod proxy did not reach the agent (%v); tunnelling through port-forward instead (--tunnel port-forward skips the attempt).\n", err)
		},
	}

	first := true
	admitted := make(chan struct{})
	tunnelErr := make(chan error, 1)
	go func() {
		tunnelErr <- ic.Run(ctx, lib.RunConfig{
			Dial: dialer.Dial,
			OnState: func(sc tunnel.StateChange) {
				switch sc.State {
				case tunnel.StateConnected:
					if first {
						first = false
						fmt.Fprintf(o.ErrOut, "Tunnel connected in %.1f s (%s); press Ctrl-C to stop.\n", time.Since(started).Seconds(), transportName(dialer.Last()))
						close(admitted)
					} else {
						fmt.Fprintln(o.ErrOut, "Tunnel reconnected.")
					}
				case tunnel.StateDisconnected:
					if !first {
						fmt.Fprintf(o.ErrOut, "Tunnel lost (%v); reconnecting in %s.\n", sc.Err, sc.Retry.Round(time.Millisecond))
					}
				}
			},
			OnStream: o.printStream,
		})
	}()

	if len(o.command) == 0 {
		err := <-tunnelErr
		return o.tunnelError(err)
	}
	// With a command: start it once the session is admitted, end the intercept when it exits.
	select {
	case err := <-tunnelErr:
		return o.tunnelError(err)
	case <-admitted:
	}
	cmd := exec.CommandContext(ctx, o.command[0], o.command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.In, o.Out, o.ErrOut
	cmd.Env = os.Environ()
	for _, v := range o.env {
		cmd.Env = append(cmd.Env, v.String())
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", o.command[0], err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		cancel()
		<-tunnelErr
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return exitcode.Silent(exitErr.ExitCode(), err)
		}
		return err
	case err := <-tunnelErr:
		<-waitErr
		return o.tunnelError(err)
	}
}

func (o *Options) tunnelError(err error) error {
	var refused *tunnel.RefusedError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lib.ErrEnded):
		return err
	case errors.As(err, &refused):
		return fmt.Errorf("the agent refused the intercept: %s", refused.Reason)
	}
	return err
}

func (o *Options) printStream(ev tunnel.StreamEvent) {
	now := time.Now().Format("15:04:05")
	peer := ""
	if ev.Header != nil {
		peer = ev.Header.Peer
	}
	switch ev.Kind {
	case tunnel.LocalUnavailable:
		if ev.NothingListens {
			fmt.Fprintf(o.ErrOut, "%s %s: nothing listens on %s: start your app there (the client's connection was closed)\n", now, peer, ev.Local)
		} else {
			fmt.Fprintf(o.ErrOut, "%s %s: cannot reach %s: %v\n", now, peer, ev.Local, ev.Err)
		}
	case tunnel.StreamClosed:
		fmt.Fprintf(o.Out, "%s %s → %s  %d B in, %d B out, %s\n", now, peer, ev.Local, ev.ToLocal, ev.FromLocal, ev.Duration.Round(time.Millisecond))
	}
}
