// Package forward forwards local TCP ports to the ready pods behind Services, workloads and pods,
// surviving pod restarts: listeners stay open, a backend is picked per accepted connection from an
// informer-fed set of ready pods, and connections travel over the pooled port-forward connections
// of package portforward.
package forward

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Kind is the type of a forward target.
type Kind string

// Target kinds, spelled as users type them.
const (
	KindService     Kind = "svc"
	KindDeployment  Kind = "deploy"
	KindStatefulSet Kind = "sts"
	KindPod         Kind = "pod"
)

// kinds maps every accepted spelling to a Kind.
var kinds = map[string]Kind{
	"svc": KindService, "service": KindService, "services": KindService,
	"deploy": KindDeployment, "deployment": KindDeployment, "deployments": KindDeployment,
	"deployment.apps": KindDeployment, "deployments.apps": KindDeployment,
	"sts": KindStatefulSet, "statefulset": KindStatefulSet, "statefulsets": KindStatefulSet,
	"statefulset.apps": KindStatefulSet, "statefulsets.apps": KindStatefulSet,
	"po": KindPod, "pod": KindPod, "pods": KindPod,
}

// Resource returns the resource name kubectl's builder expects for the kind.
func (k Kind) Resource() string {
	switch k {
	case KindService:
		return "services"
	case KindDeployment:
		return "deployments.apps"
	case KindStatefulSet:
		return "statefulsets.apps"
	case KindPod:
		return "pods"
	}
	return ""
}

// TargetArg is a parsed TARGET argument: KIND/NAME[:PORT] or KIND/NAME:LOCAL:PORT.
type TargetArg struct {
	// Raw is the argument as typed.
	Raw string
	// Kind is the target's type.
	Kind Kind
	// Name is the object's name.
	Name string
	// Port is the remote port: a number or a port name; empty means every port.
	Port string
	// Local is the requested local port when given (0 = any free port); nil picks one.
	Local *int32
}

// Display returns KIND/NAME.
func (t TargetArg) Display() string { return string(t.Kind) + "/" + t.Name }

const targetSyntax = "use TYPE/NAME, TYPE/NAME:PORT or TYPE/NAME:LOCAL:PORT with TYPE svc, deploy, sts or pod (e.g. svc/db:5432)"

// ParseTarget parses a TARGET argument.
func ParseTarget(s string) (TargetArg, error) {
	t := TargetArg{Raw: s}
	kind, rest, ok := strings.Cut(s, "/")
	if !ok {
		return t, fmt.Errorf("target %q has no type: %s", s, targetSyntax)
	}
	if t.Kind, ok = kinds[strings.ToLower(kind)]; !ok {
		return t, fmt.Errorf("target %q: unsupported type %q: %s", s, kind, targetSyntax)
	}
	parts := strings.Split(rest, ":")
	t.Name = parts[0]
	if t.Name == "" {
		return t, fmt.Errorf("target %q has no name: %s", s, targetSyntax)
	}
	if errs := validation.IsDNS1123Subdomain(t.Name); len(errs) > 0 {
		return t, fmt.Errorf("target %q: invalid name %q: %s", s, t.Name, strings.Join(errs, "; "))
	}
	switch len(parts) {
	case 1:
	case 2:
		t.Port = parts[1]
	case 3:
		local, err := strconv.ParseUint(parts[1], 10, 16)
		if err != nil {
			return t, fmt.Errorf("target %q: local port %q is not a number from 0 to 65535: %s", s, parts[1], targetSyntax)
		}
		l := int32(local)
		t.Local = &l
		t.Port = parts[2]
	default:
		return t, fmt.Errorf("target %q has too many colons: %s", s, targetSyntax)
	}
	if len(parts) > 1 {
		if err := validatePort(t.Port); err != nil {
			return t, fmt.Errorf("target %q: %w: %s", s, err, targetSyntax)
		}
	}
	return t, nil
}

func validatePort(p string) error {
	if p == "" {
		return fmt.Errorf("empty port")
	}
	if p[0] >= '0' && p[0] <= '9' {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("port %q is not a number from 1 to 65535", p)
		}
		return nil
	}
	if errs := validation.IsValidPortName(p); len(errs) > 0 {
		return fmt.Errorf("port %q is neither a number nor a valid port name", p)
	}
	return nil
}
