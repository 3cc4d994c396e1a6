package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// SpecVersion is the version of the JSON documents this package writes into the spec and status
// annotations. Readers accept every version up to their own and refuse newer ones, so that an old
// plugin never misreads a session written by a newer one.
const SpecVersion = 1

// Kind says what a session does.
type Kind string

const (
	// KindForward is a `kubectl bridge forward` session.
	KindForward Kind = "forward"
	// KindIntercept is a `kubectl bridge intercept` session.
	KindIntercept Kind = "intercept"
)

// Spec describes a session: who runs it, where, and what it does. It is stored as JSON in the
// Lease annotation AnnotationSpec and written only by the CLI that owns the session.
type Spec struct {
	// Version is the document version; EncodeSpec sets it.
	Version int `json:"version"`
	// Kind is forward or intercept.
	Kind Kind `json:"kind"`
	// User is the Kubernetes user name (from SelfSubjectReview, else the kubeconfig user).
	User string `json:"user,omitempty"`
	// Host is the host name of the machine running the CLI.
	Host string `json:"host,omitempty"`
	// PluginVersion is the kubectl-bridge version that started the session.
	PluginVersion string `json:"pluginVersion,omitempty"`
	// StartTime is when the session started.
	StartTime time.Time `json:"startTime"`
	// Forward is set for forward sessions.
	Forward *ForwardSpec `json:"forward,omitempty"`
	// Intercept is set for intercept sessions.
	Intercept *InterceptSpec `json:"intercept,omitempty"`
}

// ForwardSpec is what a forward session forwards.
type ForwardSpec struct {
	Targets []ForwardTarget `json:"targets"`
}

// ForwardTarget is one forwarded resource.
type ForwardTarget struct {
	// Resource is the resolved resource, e.g. "svc/db".
	Resource string `json:"resource"`
	// Ports are the forwarded ports of the resource.
	Ports []ForwardPort `json:"ports"`
}

// ForwardPort is one forwarded port.
type ForwardPort struct {
	// Name is the port's name, if it has one.
	Name string `json:"name,omitempty"`
	// Remote is the Service (or container) port number.
	Remote int32 `json:"remote"`
	// Local is the local listen address, host:port.
	Local []string `json:"local"`
}

// InterceptSpec is what an intercept session takes from a Service.
type InterceptSpec struct {
	// Service is the intercepted Service's name.
	Service string `json:"service"`
	// Port is the intercepted Service port number.
	Port int32 `json:"port"`
	// PortName is that port's name, if it has one.
	PortName string `json:"portName,omitempty"`
	// Mode is "steal" or "mirror".
	Mode string `json:"mode"`
	// Match holds the request-matching rules; empty means every request/connection of the port.
	Match []MatchRule `json:"match,omitempty"`
	// LocalAddress is where the CLI delivers intercepted traffic (host:port).
	LocalAddress string `json:"localAddress,omitempty"`
	// TokenHash is the hash of the tunnel token held by the CLI (never the token itself).
	TokenHash string `json:"tokenHash,omitempty"`
}

// MatchRule is one request-matching rule of an intercept, in a form that any version of the agent
// can read; the routing package owns its meaning.
type MatchRule struct {
	// Type is e.g. "header", "header-regex", "path", "path-prefix", "path-regex".
	Type string `json:"type"`
	// Name is the header name for header rules.
	Name string `json:"name,omitempty"`
	// Value is the value, prefix or expression to match.
	Value string `json:"value"`
}

// Phase is the agent's admission decision for an intercept session.
type Phase string

const (
	// PhasePending means no agent has looked at the session yet.
	PhasePending Phase = "Pending"
	// PhaseActive means the agent routes the session's traffic.
	PhaseActive Phase = "Active"
	// PhaseRejected means the agent refused the session; Reason and Message say why.
	PhaseRejected Phase = "Rejected"
)

// Status is written onto a session's Lease (annotation AnnotationStatus) by the agent that admitted
// or rejected it.
type Status struct {
	// Version is the document version; EncodeStatus sets it.
	Version int `json:"version"`
	// Phase is the admission decision.
	Phase Phase `json:"phase"`
	// Reason is a CamelCase machine-readable reason, e.g. "RuleConflict".
	Reason string `json:"reason,omitempty"`
	// Message is a human-readable explanation, naming the other session's user on conflicts.
	Message string `json:"message,omitempty"`
	// Agent is the name of the agent pod that wrote the status.
	Agent string `json:"agent,omitempty"`
	// ObservedTime is when the agent wrote the status.
	ObservedTime time.Time `json:"observedTime"`
	// Requests is how many HTTP requests the agent has routed to the session (request rules
	// only; whole-port intercepts count connections in the agent's metrics instead).
	Requests int64 `json:"requests,omitempty"`
}

// ErrUnsupportedVersion is returned when a document was written by a newer kubectl-bridge.
var ErrUnsupportedVersion = errors.New("unsupported session document version")

// EncodeSpec returns spec as annotation JSON, stamped with SpecVersion.
func EncodeSpec(spec Spec) (string, error) {
	spec.Version = SpecVersion
	if spec.Kind == "" {
		return "", errors.New("encode session spec: kind is empty")
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return "", fmt.Errorf("encode session spec: %w", err)
	}
	return string(b), nil
}

// DecodeSpec parses a spec annotation.
func DecodeSpec(s string) (Spec, error) {
	var spec Spec
	if err := decode(s, &spec); err != nil {
		return Spec{}, fmt.Errorf("decode session spec: %w", err)
	}
	return spec, nil
}

// EncodeStatus returns status as annotation JSON, stamped with SpecVersion.
func EncodeStatus(status Status) (string, error) {
	status.Version = SpecVersion
	b, err := json.Marshal(status)
	if err != nil {
		return "", fmt.Errorf("encode session status: %w", err)
	}
	return string(b), nil
}

// DecodeStatus parses a status annotation.
func DecodeStatus(s string) (Status, error) {
	var status Status
	if err := decode(s, &status); err != nil {
		return Status{}, fmt.Errorf("decode session status: %w", err)
	}
	return status, nil
}

// decode checks the version before decoding the rest, so that a newer document is refused with a
// clear error instead of being half-understood. Unknown fields of a known version are ignored: a
// later minor change may add fields without bumping the version.
func decode(s string, into any) error {
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal([]byte(s), &head); err != nil {
		return err
	}
	switch {
	case head.Version == nil || *head.Version < 1:
		return errors.New("missing version")
	case *head.Version > SpecVersion:
		return fmt.Errorf("%w %d (this kubectl-bridge reads up to %d; upgrade kubectl-bridge)", ErrUnsupportedVersion, *head.Version, SpecVersion)
	}
	return json.Unmarshal([]byte(s), into)
}
