// Package intercept runs an intercept from the CLI: it checks everything before changing the
// cluster (Prepare), creates the session Lease and — for the first session on a Service — the
// agent, its RBAC and the shadow Service, switches the Service once the agent is Ready (Start),
// carries intercepted traffic over the tunnel to the local target (Run), and puts the cluster back
// when the session ends (Close).
package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/agentcontrol"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/envfile"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/redirect"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/workloadenv"
)

// Defaults.
const (
	DefaultActiveDeadline = 4 * time.Hour
	DefaultTimeout        = 2 * time.Minute
	DefaultIdleGrace      = 30 * time.Second
)

// Config is what an intercept is asked to do.
type Config struct {
	Client    kubernetes.Interface
	Namespace string
	Service   string
	// Port is the Service port, by name or number; "" when the Service has one port.
	Port string
	// LocalAddress is where intercepted traffic is delivered (host:port); empty means 127.0.0.1
	// and the Service port's number.
	LocalAddress string
	// Mode is tunnel.ModeSteal or tunnel.ModeMirror.
	Mode tunnel.Mode
	// Match holds request rules; none means the whole port.
	Match []session.MatchRule
	// Protocol overrides what the port's appProtocol and name say it carries: "http" or "tcp".
	Protocol string

	Image            string
	ImagePullPolicy  corev1.PullPolicy
	ImagePullSecrets []string
	Resources        corev1.ResourceRequirements
	ActiveDeadline   time.Duration
	IdleGrace        time.Duration
	// ServiceAccount is an admin-installed agent identity; empty makes the CLI create the agent's
	// ServiceAccount, Role and RoleBinding.
	ServiceAccount string
	// Timeout bounds the wait for the agent to become Ready.
	Timeout time.Duration
	// Tunnel is how the CLI reaches the agent: TransportAuto (""), TransportProxy or
	// TransportPortForward. It decides which permission the preflight requires.
	Tunnel string

	// User, Host and Version describe the session in its Lease.
	User, Host, Version string
}

// Plan is a checked intercept: the Service, the chosen port and the agent configuration, read from
// the cluster without changing it.
type Plan struct {
	cfg    Config
	svc    *corev1.Service
	port   corev1.ServicePort
	params objects.AgentParams
	// dataPorts are the agent's view of the Service's ports.
	dataPorts []agent.DataPort
	warning   []string
}

// Warnings are things the user should know that do not stop the intercept.
func (p *Plan) Warnings() []string { return p.warning }

// ServicePort is the intercepted Service port.
func (p *Plan) ServicePort() corev1.ServicePort { return p.port }

// LocalAddress is where intercepted traffic is delivered.
func (p *Plan) LocalAddress() string { return p.cfg.LocalAddress }

// Prepare validates the request against the cluster. It changes nothing; every refusal names the
// problem and the next step.
func Prepare(ctx context.Context, cfg Config) (*Plan, error) {
	if cfg.ActiveDeadline <= 0 {
		cfg.ActiveDeadline = DefaultActiveDeadline
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.IdleGrace <= 0 {
		cfg.IdleGrace = DefaultIdleGrace
	}
	svc, err := cfg.Client.CoreV1().Services(cfg.Namespace).Get(ctx, cfg.Service, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("service %q not found in namespace %q: check the name with 'kubectl get svc -n %s'", cfg.Service, cfg.Namespace, cfg.Namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("get service %s/%s: %w", cfg.Namespace, cfg.Service, err)
	}
	p := &Plan{cfg: cfg, svc: svc}
	if err := p.checkService(); err != nil {
		return nil, err
	}
	if err := p.choosePort(); err != nil {
		return nil, err
	}
	if p.cfg.LocalAddress == "" {
		p.cfg.LocalAddress = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p.port.Port)))
	}
	if err := p.checkPermissions(ctx); err != nil {
		return nil, err
	}
	if err := p.buildAgent(ctx); err != nil {
		return nil, err
	}
	if err := p.checkConflicts(ctx); err != nil {
		return nil, err
	}
	p.checkSidecars(ctx)
	p.checkGitOps()
	return p, nil
}

func (p *Plan) checkService() error {
	s := p.svc
	switch {
	case s.Spec.Type == corev1.ServiceTypeExternalName:
		return fmt.Errorf("service %s/%s is an ExternalName Service (%s): it has no pods to stand in for; intercept the Service that serves it", s.Namespace, s.Name, s.Spec.ExternalName)
	case len(objects.OriginalSelector(s)) == 0 && s.Spec.Selector[objects.LabelAgentFor] != "":
		return fmt.Errorf("service %s/%s selects only a kubectl-bridge agent and its saved original selector is missing; run 'kubectl bridge clean svc/%s -n %s' to restore it from the shadow Service, then try again", s.Namespace, s.Name, s.Name, s.Namespace)
	case len(objects.OriginalSelector(s)) == 0:
		return fmt.Errorf("service %s/%s has no selector (its endpoints are managed by hand), so its traffic cannot be redirected; intercept a Service with a selector", s.Namespace, s.Name)
	}
	for _, sp := range s.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			return fmt.Errorf("service %s/%s has %s port %s: switching its selector would cut that traffic; only Services whose ports are all TCP can be intercepted", s.Namespace, s.Name, sp.Protocol, portName(sp))
		}
	}
	return nil
}

func (p *Plan) choosePort() error {
	ports := p.svc.Spec.Ports
	var names []string
	for _, sp := range ports {
		names = append(names, portName(sp))
	}
	if p.cfg.Port == "" {
		if len(ports) != 1 {
			return fmt.Errorf("service %s has %d ports (%s): choose one with --port", p.svc.Name, len(ports), strings.Join(names, ", "))
		}
		p.port = ports[0]
		return nil
	}
	n, numErr := strconv.Atoi(p.cfg.Port)
	for _, sp := range ports {
		if (numErr == nil && int(sp.Port) == n) || (sp.Name != "" && sp.Name == p.cfg.Port) {
			p.port = sp
			return nil
		}
	}
	return fmt.Errorf("service %s has no port %q; its ports are %s", p.svc.Name, p.cfg.Port, strings.Join(names, ", "))
}

// appProtocol is what the agent is told the port carries: the --protocol override for the
// intercepted port, else the Service port's own appProtocol.
func (p *Plan) appProtocol(sp corev1.ServicePort) string {
	if sp.Port == p.port.Port && p.cfg.Protocol != "" {
		return p.cfg.Protocol
	}
	if sp.AppProtocol != nil {
		return *sp.AppProtocol
	}
	return ""
}

func portName(sp corev1.ServicePort) string {
	if sp.Name != "" {
		return fmt.Sprintf("%d (%s)", sp.Port, sp.Name)
	}
	return strconv.Itoa(int(sp.Port))
}

// interceptPermissions are what the CLI itself does for an intercept (the agent's identity aside:
// identityPermissions).
func (p *Plan) interceptPermissions() []authorizationv1.ResourceAttributes {
	ns := p.cfg.Namespace
	attrs := []authorizationv1.ResourceAttributes{
		{Verb: "create", Group: "coordination.k8s.io", Resource: "leases"},
		{Verb: "update", Group: "coordination.k8s.io", Resource: "leases"},
		{Verb: "delete", Group: "coordination.k8s.io", Resource: "leases"},
		{Verb: "patch", Resource: "services"},
		{Verb: "create", Resource: "services"},
		{Verb: "delete", Resource: "services"},
		{Verb: "create", Group: "batch", Resource: "jobs"},
		// The Job is created suspended and started once its RBAC exists.
		{Verb: "patch", Group: "batch", Resource: "jobs"},
		{Verb: "delete", Group: "batch", Resource: "jobs"},
		// The CLI watches the agent's pods and the Service's EndpointSlices while it starts.
		{Verb: "watch", Resource: "pods"},
		{Verb: "watch", Group: "discovery.k8s.io", Resource: "endpointslices"},
	}
	// The tunnel: auto needs the port-forward it falls back to; pods/proxy is then a bonus.
	if p.cfg.Tunnel == TransportProxy {
		attrs = append(attrs, authorizationv1.ResourceAttributes{Verb: "get", Resource: "pods", Subresource: "proxy"})
	} else {
		attrs = append(attrs, authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "portforward"})
	}
	for i := range attrs {
		attrs[i].Namespace = ns
	}
	return attrs
}

// identityPermissions are what creating the agent's ServiceAccount, Role and RoleBinding takes;
// none when an admin installed the agent's identity (--service-account).
func (p *Plan) identityPermissions() []authorizationv1.ResourceAttributes {
	var attrs []authorizationv1.ResourceAttributes
	if p.cfg.ServiceAccount == "" {
		attrs = append(attrs,
			authorizationv1.ResourceAttributes{Verb: "create", Resource: "serviceaccounts"},
			authorizationv1.ResourceAttributes{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "roles"},
			authorizationv1.ResourceAttributes{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "rolebindings"},
			// Undoing a failed start reads each of them before deleting it.
			authorizationv1.ResourceAttributes{Verb: "get", Resource: "serviceaccounts"},
			authorizationv1.ResourceAttributes{Verb: "get", Group: "rbac.authorization.k8s.io", Resource: "roles"},
			authorizationv1.ResourceAttributes{Verb: "get", Group: "rbac.authorization.k8s.io", Resource: "rolebindings"},
		)
		// RBAC lets the user grant the agent only what they hold themselves: without this check
		// the refusal would come after the agent's Job exists.
		for _, rule := range objects.AgentRules(p.svc.Name) {
			names := rule.ResourceNames
			if len(names) == 0 {
				names = []string{""}
			}
			for _, g := range rule.APIGroups {
				for _, r := range rule.Resources {
					for _, v := range rule.Verbs {
						for _, n := range names {
							a := authorizationv1.ResourceAttributes{Verb: v, Group: g, Resource: r, Name: n}
							if !slices.Contains(attrs, a) {
								attrs = append(attrs, a)
							}
						}
					}
				}
			}
		}
	}
	for i := range attrs {
		attrs[i].Namespace = p.cfg.Namespace
	}
	return attrs
}

func (p *Plan) checkPermissions(ctx context.Context) error {
	// One review per permission, all at once: on a remote cluster a dozen sequential round trips
	// would be most of the start-up time.
	attrs := p.interceptPermissions()
	base := len(attrs)
	attrs = append(attrs, p.identityPermissions()...)
	allowed := make([]bool, len(attrs))
	g, gctx := errgroup.WithContext(ctx)
	for i := range attrs {
		g.Go(func() error {
			r, err := p.cfg.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(gctx,
				&authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs[i]}}, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("check permissions: %w; run 'kubectl bridge doctor'", err)
			}
			allowed[i] = r.Status.Allowed
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	var missing []string
	identity := false
	for i, a := range attrs {
		if !allowed[i] {
			identity = identity || i >= base
			res := a.Resource
			if a.Group != "" {
				res += "." + a.Group
			}
			if a.Subresource != "" {
				res += "/" + a.Subresource
			}
			if a.Name != "" {
				res += " " + a.Name
			}
			missing = append(missing, a.Verb+" "+res)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	next := fmt.Sprintf("ask a namespace admin to apply 'kubectl bridge doctor --print-rbac -n %s'", p.cfg.Namespace)
	if identity {
		next += ", or to install the agent's ServiceAccount once ('kubectl bridge doctor --print-rbac') and pass --service-account NAME"
	}
	return fmt.Errorf("you may not %s in namespace %q, which intercept needs: %s", strings.Join(missing, ", "), p.cfg.Namespace, next)
}

// checkConflicts runs the agent's own admission (agent.AdmitFor) against the live sessions of the
// Service before anything is created, so the user learns of a conflict (a second whole-port steal,
// a steal next to rules, identical rules) without waiting for an agent. The agent stays the
// authority: it admits again when the tunnel attaches.
func (p *Plan) checkConflicts(ctx context.Context) error {
	infos, err := session.List(ctx, p.cfg.Client.CoordinationV1(), p.cfg.Namespace, session.KindIntercept)
	if err != nil {
		return err
	}
	now := time.Now()
	var live []agent.SessionSpec
	for _, s := range infos {
		if s.Spec.Intercept == nil || s.Spec.Intercept.Service != p.svc.Name || s.Expired(now) ||
			(s.Status != nil && s.Status.Phase == session.PhaseRejected) {
			continue
		}
		spec, err := agentcontrol.SpecOf(s)
		if err != nil {
			continue
		}
		live = append(live, spec)
	}
	candidate := agent.SessionSpec{
		ID: "candidate", User: p.cfg.User, Port: p.port.Port, PortName: p.port.Name, Mode: p.cfg.Mode, StartTime: now,
	}
	for _, m := range p.cfg.Match {
		candidate.Match = append(candidate.Match, agent.MatchRule(m))
	}
	if err := agent.AdmitFor(p.dataPorts)(candidate, live); err != nil {
		return fmt.Errorf("service %s: %w", p.svc.Name, err)
	}
	return nil
}

// buildAgent resolves every Service port to the number the agent must listen on: the Service's
// targetPort, looked up on the original pods when it is a name.
func (p *Plan) buildAgent(ctx context.Context) error {
	named, err := p.namedTargetPorts(ctx)
	if err != nil {
		return err
	}
	params := objects.AgentParams{
		Namespace: p.cfg.Namespace, Service: p.svc.Name, Image: p.cfg.Image, ImagePullPolicy: p.cfg.ImagePullPolicy,
		ImagePullSecrets: p.cfg.ImagePullSecrets, Resources: p.cfg.Resources, ActiveDeadline: p.cfg.ActiveDeadline,
		ServiceAccount: p.cfg.ServiceAccount,
	}
	used := map[int32]string{}
	var args []string
	shadow := objects.ShadowName(p.svc.Name)
	for _, sp := range p.svc.Spec.Ports {
		listen, containerName := int32(sp.TargetPort.IntValue()), ""
		switch {
		case sp.TargetPort.Type == intstr.String:
			listen, containerName = named[sp.TargetPort.StrVal], sp.TargetPort.StrVal
			if listen == 0 {
				return fmt.Errorf("service %s port %s targets the named port %q, but no pod selected by %s declares it: start the workload first", p.svc.Name, portName(sp), sp.TargetPort.StrVal, objects.SelectorString(objects.OriginalSelector(p.svc)))
			}
		case listen == 0:
			listen = sp.Port
		}
		if other, dup := used[listen]; dup {
			return fmt.Errorf("service %s ports %s and %s both target port %d: the agent could not tell their traffic apart, so this Service cannot be intercepted", p.svc.Name, other, portName(sp), listen)
		}
		used[listen] = portName(sp)
		params.DataPorts = append(params.DataPorts, objects.AgentPort{Name: containerName, Port: listen})
		dp := agent.DataPort{Name: sp.Name, Port: sp.Port, ListenPort: listen, Protocol: "TCP", AppProtocol: p.appProtocol(sp),
			Upstream: net.JoinHostPort(shadow, strconv.Itoa(int(sp.Port)))}
		args = append(args, "--data-port="+dp.String())
		p.dataPorts = append(p.dataPorts, dp)
	}
	params.ControlPort, params.HealthPort = freePorts(used)
	args = append(args,
		"--service="+p.svc.Name,
		"--control-port="+strconv.Itoa(int(params.ControlPort)),
		"--health-port="+strconv.Itoa(int(params.HealthPort)),
		"--idle-grace="+p.cfg.IdleGrace.String(),
	)
	params.Args = args
	p.params = params
	return nil
}

// freePorts picks the agent's control and health ports among ports no data port uses.
func freePorts(used map[int32]string) (control, health int32) {
	var picked []int32
	for _, c := range []int32{agent.DefaultControlPort, agent.DefaultHealthPort, 17070, 17071, 27070, 27071} {
		if _, taken := used[c]; !taken {
			picked = append(picked, c)
		}
	}
	return picked[0], picked[1]
}

// namedTargetPorts maps the container port names the Service's named targetPorts use to numbers,
// from the EndpointSlices (which carry the resolved numbers) and, when no pod is ready, from the
// pods' specs.
func (p *Plan) namedTargetPorts(ctx context.Context) (map[string]int32, error) {
	out := map[string]int32{}
	need := false
	byServicePort := map[string]string{} // Service port name → targetPort name
	for _, sp := range p.svc.Spec.Ports {
		if sp.TargetPort.Type == intstr.String {
			need = true
			byServicePort[sp.Name] = sp.TargetPort.StrVal
		}
	}
	if !need {
		return out, nil
	}
	// Only read EndpointSlices when the Service is not switched: a switched Service's slices
	// point at the agent, whose port numbers are the same anyway.
	if !redirect.Switched(p.svc) {
		slices, err := p.cfg.Client.DiscoveryV1().EndpointSlices(p.cfg.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + p.svc.Name})
		if err == nil {
			for _, s := range slices.Items {
				for _, ep := range s.Ports {
					if ep.Name != nil && ep.Port != nil && byServicePort[*ep.Name] != "" {
						out[byServicePort[*ep.Name]] = *ep.Port
					}
				}
			}
		}
	}
	pods, err := p.cfg.Client.CoreV1().Pods(p.cfg.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(objects.OriginalSelector(p.svc)).String()})
	if err != nil {
		return nil, fmt.Errorf("list pods of service %s: %w", p.svc.Name, err)
	}
	for _, pod := range pods.Items {
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name != "" && out[cp.Name] == 0 {
					out[cp.Name] = cp.ContainerPort
				}
			}
		}
	}
	return out, nil
}

// WorkloadEnv is the environment of the container serving the intercepted port in a ready pod of
// the Service (ConfigMap and Secret references, envFrom and downward-API fields resolved), for the
// local process to start with the cluster's configuration.
func (p *Plan) WorkloadEnv(ctx context.Context) ([]envfile.Var, error) {
	pods, err := p.cfg.Client.CoreV1().Pods(p.cfg.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(objects.OriginalSelector(p.svc)).String()})
	if err != nil {
		return nil, fmt.Errorf("list pods of service %s: %w", p.svc.Name, err)
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
			continue
		}
		return workloadenv.Resolve(ctx, p.cfg.Client, pod, workloadenv.Container(pod, p.port.TargetPort))
	}
	return nil, fmt.Errorf("no running pod of service %s to read the environment from (--env-file): start the workload first", p.svc.Name)
}

// checkGitOps warns when a GitOps controller manages the Service: a sync may write the selector
// back during the intercept. The agent switches it back each time and keeps the original, but
// every reset sends new connections to the original pods for about a second.
func (p *Plan) checkGitOps() {
	manager, _ := redirect.SelectorManager(p.svc)
	if g := redirect.GitOpsOf(p.svc, manager); g != nil {
		p.warning = append(p.warning, fmt.Sprintf(
			"service %s is managed by %s, whose sync may reset its selector during the intercept (the agent switches it back, and new connections reach the original pods meanwhile). To exempt the selector: %s",
			p.svc.Name, g.Tool, g.Exemption))
	}
}

// checkSidecars warns when the original pods carry a service-mesh proxy: the mesh may encrypt or
// re-route traffic before it reaches the Service's ClusterIP rules.
func (p *Plan) checkSidecars(ctx context.Context) {
	pods, err := p.cfg.Client.CoreV1().Pods(p.cfg.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(objects.OriginalSelector(p.svc)).String(), Limit: 5})
	if err != nil {
		return
	}
	for _, pod := range pods.Items {
		for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
			if c.Name == "istio-proxy" || c.Name == "linkerd-proxy" {
				p.warning = append(p.warning, fmt.Sprintf(
					"pods of service %s run the %s sidecar: clients inside the mesh may reach pods directly (mTLS, endpoint-level routing) and bypass the intercept; clients outside it are intercepted as usual", p.svc.Name, c.Name))
				return
			}
		}
	}
}

// errStopped is returned by Run when the session ended because its Lease was deleted elsewhere.
var errStopped = errors.New("the session was ended by 'kubectl bridge clean'")
