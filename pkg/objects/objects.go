// Package objects builds every Kubernetes object kubectl-bridge creates for an intercept — the
// agent Job with its ServiceAccount, Role and RoleBinding, and the shadow Service — and names the
// labels and annotations it puts on them and on the intercepted Service. One place builds each
// kind of object so that create, list and clean agree on names and labels.
package objects

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"strings"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

// Labels and annotations. Session labels (managed-by, session, kind, service) live in package
// session; these are the ones on agent objects and on the intercepted Service.
const (
	// LabelManagedBy marks every object kubectl-bridge creates.
	LabelManagedBy = session.LabelManagedBy
	// ManagedBy is LabelManagedBy's value.
	ManagedBy = session.ManagedBy
	// LabelService names the intercepted Service on every agent object.
	LabelService = session.LabelService
	// LabelComponent says which part an object is: agent or shadow.
	LabelComponent = "kubectl-bridge.io/component"
	// LabelAgentFor is the only label of the agent pod that the switched Service selects on.
	LabelAgentFor = "kubectl-bridge.io/agent-for"

	// AnnotationOriginalSelector on the intercepted Service holds its selector before the switch,
	// as JSON, so that any machine can restore it.
	AnnotationOriginalSelector = "kubectl-bridge.io/original-selector"
	// AnnotationAgent on the intercepted Service names the agent Job it was switched to.
	AnnotationAgent = "kubectl-bridge.io/agent"
	// AnnotationClosing on the agent Job says that a session's end (or the agent) is retiring it:
	// a CLI that starts meanwhile must not join it but wait for it to go and start a new one.
	// Its value names who retires it.
	AnnotationClosing = "kubectl-bridge.io/closing"

	// ComponentAgent is LabelComponent's value on the agent Job, pod and RBAC objects.
	ComponentAgent = "agent"
	// ComponentShadow is LabelComponent's value on shadow Services.
	ComponentShadow = "shadow"
)

// maxNameLen keeps generated names valid as label values (job-name) and DNS labels.
const maxNameLen = 63

// AgentName is the name of the agent Job (and its ServiceAccount, Role and RoleBinding) of a Service.
func AgentName(service string) string { return boundedName("bridge-agent-", service) }

// ShadowName is the name of the shadow Service of a Service.
func ShadowName(service string) string { return boundedName("bridge-shadow-", service) }

// boundedName joins prefix and name, replacing the end of a too-long name by a short hash so that
// two long names never collide.
func boundedName(prefix, name string) string {
	full := prefix + name
	if len(full) <= maxNameLen {
		return full
	}
	sum := sha256.Sum256([]byte(name))
	h := hex.EncodeToString(sum[:])[:8]
	keep := maxNameLen - len(prefix) - len(h) - 1
	return prefix + strings.TrimRight(name[:keep], "-.") + "-" + h
}

// CommonLabels are the labels of every agent-side object of a Service.
func CommonLabels(service, component string) map[string]string {
	return map[string]string{
		LabelManagedBy: ManagedBy,
		LabelService:   service,
		LabelComponent: component,
	}
}

// AgentSelector is the selector the intercepted Service is switched to.
func AgentSelector(service string) map[string]string {
	return map[string]string{LabelAgentFor: boundedLabelValue(service)}
}

func boundedLabelValue(v string) string {
	if len(v) <= maxNameLen {
		return v
	}
	return boundedName("", v)
}

// EncodeSelector renders a selector for AnnotationOriginalSelector, with sorted keys so that the
// annotation is stable.
func EncodeSelector(sel map[string]string) string {
	b, _ := json.Marshal(sel) // a map[string]string always marshals; encoding/json sorts keys
	return string(b)
}

// DecodeSelector parses AnnotationOriginalSelector.
func DecodeSelector(s string) (map[string]string, error) {
	var sel map[string]string
	if err := json.Unmarshal([]byte(s), &sel); err != nil {
		return nil, fmt.Errorf("decode %s annotation %q: %w", AnnotationOriginalSelector, s, err)
	}
	if len(sel) == 0 {
		return nil, fmt.Errorf("%s annotation %q holds an empty selector", AnnotationOriginalSelector, s)
	}
	return sel, nil
}

// SelectorString renders a selector as kubectl does (k=v,k2=v2, sorted).
func SelectorString(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + sel[k]
	}
	return strings.Join(parts, ",")
}

func merge(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}
