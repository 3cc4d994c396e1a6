package forward

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Target is a resolved forward target: what to watch for backends and which ports to forward.
type Target struct {
	// Display is KIND/NAME, as shown in tables.
	Display string
	// Kind is the target's type.
	Kind Kind
	// Namespace and Name locate the object.
	Namespace, Name string
	// PodSelector selects the pods of a Deployment or StatefulSet; nil for Services and pods.
	PodSelector labels.Selector
	// Ports are the forwarded ports.
	Ports []Port
}

// Port is one forwarded port of a target.
type Port struct {
	// Name is the Service port's or container port's name, if any.
	Name string
	// Number is the Service port (for Services) or container port number: the REMOTE column and
	// the preferred local port.
	Number int32
	// AppProtocol is the Service port's appProtocol, if any.
	AppProtocol string
	// ContainerPort is what to resolve on each pod of a pod-backed target: a number, or a name
	// looked up per pod (pods of one Deployment may differ during a rollout).
	ContainerPort intstr.IntOrString
	// Local is the requested local port: nil picks one, 0 means any free port.
	Local *int32
}

// key identifies the port in a Backend's port map.
func (t *Target) portKey(p Port) string {
	if t.Kind == KindService {
		return p.Name // EndpointSlice ports carry the Service port's name
	}
	return p.ContainerPort.String()
}

// Label returns the port's name, or its number when unnamed.
func (p Port) Label() string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(int(p.Number))
}

// NewTarget resolves arg against the object it names, refusing what cannot be forwarded.
func NewTarget(arg TargetArg, obj runtime.Object) (*Target, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		return serviceTarget(arg, o)
	case *appsv1.Deployment:
		return workloadTarget(arg, o.Namespace, o.Name, o.Spec.Selector, &o.Spec.Template.Spec)
	case *appsv1.StatefulSet:
		return workloadTarget(arg, o.Namespace, o.Name, o.Spec.Selector, &o.Spec.Template.Spec)
	case *corev1.Pod:
		t, err := podTarget(arg, o.Namespace, o.Name, &o.Spec)
		if err == nil && (o.Status.Phase == corev1.PodSucceeded || o.Status.Phase == corev1.PodFailed) {
			return nil, fmt.Errorf("%s has finished (phase %s): forward to a running pod, or to its Service or Deployment", arg.Display(), o.Status.Phase)
		}
		return t, err
	default:
		return nil, fmt.Errorf("%s: cannot forward to a %T", arg.Raw, obj)
	}
}

// ServiceTargets resolves the Services matched by `-l SELECTOR`: every port of each. Services that
// cannot be forwarded are skipped and reported in skipped rather than failing the whole selection.
func ServiceTargets(svcs []*corev1.Service) (targets []*Target, skipped []error) {
	for _, svc := range svcs {
		t, err := serviceTarget(TargetArg{Raw: "svc/" + svc.Name, Kind: KindService, Name: svc.Name}, svc)
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		targets = append(targets, t)
	}
	return targets, skipped
}

func serviceTarget(arg TargetArg, svc *corev1.Service) (*Target, error) {
	display := arg.Display()
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, fmt.Errorf("%s is an ExternalName Service (pointing to %s): no pod backs it, so there is nothing to forward; connect to %s directly", display, svc.Spec.ExternalName, svc.Spec.ExternalName)
	}
	if len(svc.Spec.Selector) == 0 {
		return nil, fmt.Errorf("%s has no selector: its endpoints are managed by hand, not by pods; forward to a pod (pod/NAME) or workload (deploy/NAME) instead", display)
	}
	t := &Target{Display: display, Kind: KindService, Namespace: svc.Namespace, Name: svc.Name}
	toPort := func(sp corev1.ServicePort) Port {
		return Port{Name: sp.Name, Number: sp.Port, AppProtocol: ptr.Deref(sp.AppProtocol, ""), ContainerPort: sp.TargetPort}
	}
	if arg.Port == "" {
		for _, sp := range svc.Spec.Ports {
			if protocolOf(sp.Protocol) == corev1.ProtocolTCP {
				t.Ports = append(t.Ports, toPort(sp))
			}
		}
		if len(t.Ports) == 0 {
			return nil, fmt.Errorf("%s has no TCP port (%s): only TCP can be forwarded", display, servicePortList(svc))
		}
		return t, nil
	}
	var matched []corev1.ServicePort
	for _, sp := range svc.Spec.Ports {
		if sp.Name == arg.Port || strconv.Itoa(int(sp.Port)) == arg.Port {
			matched = append(matched, sp)
		}
	}
	if len(matched) == 0 {
		return nil, fmt.Errorf("%s has no port %q; its ports are %s: use one of them", display, arg.Port, servicePortList(svc))
	}
	for _, sp := range matched {
		if protocolOf(sp.Protocol) == corev1.ProtocolTCP {
			p := toPort(sp)
			p.Local = arg.Local
			t.Ports = []Port{p}
			return t, nil
		}
	}
	return nil, fmt.Errorf("port %s of %s is %s only: port-forwarding carries TCP only", arg.Port, display, protocolOf(matched[0].Protocol))
}

func protocolOf(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func servicePortList(svc *corev1.Service) string {
	var ps []string
	for _, sp := range svc.Spec.Ports {
		s := strconv.Itoa(int(sp.Port))
		if sp.Name != "" {
			s += " (" + sp.Name + ")"
		}
		if protocolOf(sp.Protocol) != corev1.ProtocolTCP {
			s += "/" + string(sp.Protocol)
		}
		ps = append(ps, s)
	}
	if len(ps) == 0 {
		return "none"
	}
	return strings.Join(ps, ", ")
}

func workloadTarget(arg TargetArg, namespace, name string, selector *metav1.LabelSelector, spec *corev1.PodSpec) (*Target, error) {
	sel, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid selector: %w", arg.Display(), err)
	}
	if sel.Empty() {
		return nil, fmt.Errorf("%s has an empty selector: it would match every pod in the namespace; forward to a pod (pod/NAME) instead", arg.Display())
	}
	t, err := podTarget(arg, namespace, name, spec)
	if err != nil {
		return nil, err
	}
	t.PodSelector = sel
	return t, nil
}

func podTarget(arg TargetArg, namespace, name string, spec *corev1.PodSpec) (*Target, error) {
	display := arg.Display()
	t := &Target{Display: display, Kind: arg.Kind, Namespace: namespace, Name: name}
	declared := containerPorts(spec)
	if arg.Port == "" {
		seen := map[int32]bool{}
		for _, cp := range declared {
			if protocolOf(cp.Protocol) == corev1.ProtocolTCP && !seen[cp.ContainerPort] {
				seen[cp.ContainerPort] = true
				t.Ports = append(t.Ports, Port{Name: cp.Name, Number: cp.ContainerPort, ContainerPort: intstr.FromInt32(cp.ContainerPort)})
			}
		}
		if len(t.Ports) == 0 {
			return nil, fmt.Errorf("%s declares no TCP container port: name the port to forward, e.g. %s:8080", display, display)
		}
		return t, nil
	}
	if n, err := strconv.Atoi(arg.Port); err == nil {
		// Containers may listen on ports they do not declare, as with kubectl port-forward; only a
		// port declared solely as UDP/SCTP is refused.
		p := Port{Number: int32(n), ContainerPort: intstr.FromInt32(int32(n)), Local: arg.Local}
		var other corev1.Protocol
		for _, cp := range declared {
			if cp.ContainerPort != int32(n) {
				continue
			}
			if protocolOf(cp.Protocol) == corev1.ProtocolTCP {
				p.Name, other = cp.Name, ""
				break
			}
			other = protocolOf(cp.Protocol)
		}
		if other != "" {
			return nil, fmt.Errorf("port %d of %s is %s only: port-forwarding carries TCP only", n, display, other)
		}
		t.Ports = []Port{p}
		return t, nil
	}
	for _, cp := range declared {
		if cp.Name != arg.Port {
			continue
		}
		if protocolOf(cp.Protocol) != corev1.ProtocolTCP {
			return nil, fmt.Errorf("port %s of %s is %s only: port-forwarding carries TCP only", arg.Port, display, protocolOf(cp.Protocol))
		}
		t.Ports = []Port{{Name: cp.Name, Number: cp.ContainerPort, ContainerPort: intstr.FromString(cp.Name), Local: arg.Local}}
		return t, nil
	}
	return nil, fmt.Errorf("%s has no container port named %q; its ports are %s: use one of them or a number", display, arg.Port, containerPortList(declared))
}

func containerPorts(spec *corev1.PodSpec) []corev1.ContainerPort {
	var ports []corev1.ContainerPort
	for _, c := range spec.Containers {
		ports = append(ports, c.Ports...)
	}
	// Restartable init containers (sidecars) serve traffic too.
	for _, c := range spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			ports = append(ports, c.Ports...)
		}
	}
	return ports
}

func containerPortList(ports []corev1.ContainerPort) string {
	var ps []string
	for _, cp := range ports {
		s := strconv.Itoa(int(cp.ContainerPort))
		if cp.Name != "" {
			s += " (" + cp.Name + ")"
		}
		ps = append(ps, s)
	}
	if len(ps) == 0 {
		return "none declared"
	}
	sort.Strings(ps)
	return strings.Join(ps, ", ")
}
