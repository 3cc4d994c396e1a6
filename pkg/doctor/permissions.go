package doctor

import (
	"fmt"
	"strings"
)

// Permission is one verb on one resource that a kubectl-bridge command needs in
// the namespace it works in.
type Permission struct {
	Verb        string   `json:"verb"`
	Group       string   `json:"group,omitempty"`
	Resource    string   `json:"resource"`
	Subresource string   `json:"subresource,omitempty"`
	Commands    []string `json:"commands"`
}

// String reads like `kubectl auth can-i` arguments: "create pods/portforward",
// "delete jobs.batch".
func (p Permission) String() string {
	r := p.Resource
	if p.Group != "" {
		r += "." + p.Group
	}
	if p.Subresource != "" {
		r += "/" + p.Subresource
	}
	return p.Verb + " " + r
}

// rule is a compact row of the permissions table.
type rule struct {
	group, resource, subresource string
	verbs                        []string
	commands                     []string
}

// table is the single list of what every command needs. Command owners: when a
// command starts using a new verb or resource, add it here so that doctor and
// --print-rbac stay exact.
//
// Why each row:
//   - leases: one Lease per session (create, heartbeat update/patch, delete on
//     exit); list/watch for `list`, `clean` and the agent's Role.
//   - services: resolve targets; intercept patches the selector and creates/
//     deletes the shadow Service; clean restores selectors.
//   - endpointslices: forward picks ready pods from an informer; the agent's Role
//     needs them too, and RBAC only lets users grant what they hold.
//   - pods, pods/portforward: the tunnel (WebSocket upgrades are authorized as
//     "get" on servers before 1.35, SPDY as "create").
//   - pods/proxy: intercept's tunnel through the API server's pod proxy, which
//     skips the kubelet and the runtime (without it, intercept uses the
//     port-forward; with --tunnel proxy it is required).
//   - deployments, statefulsets: forward deploy/NAME and sts/NAME targets.
//   - jobs, serviceaccounts, roles, rolebindings: the agent and its identity;
//     each is read before it is deleted (only objects labelled as ours are);
//     the Job is created suspended and patched to start once its RBAC exists.
//   - events (both API groups): granted to the agent, which records selector
//     repairs. RBAC lets a user grant only what they hold, so every rule of
//     objects.AgentRules is in this table too (a test keeps it so). Listing
//     them is how intercept says why an agent did not start.
//   - configmaps, secrets: intercept --env-file and '-- COMMAND' resolve the
//     workload's environment references.
func table() []rule {
	fwd, icp, lst, cln := "forward", "intercept", "list", "clean"
	return []rule{
		{"coordination.k8s.io", "leases", "", []string{"get", "list", "watch"}, []string{fwd, icp, lst, cln}},
		{"coordination.k8s.io", "leases", "", []string{"create", "update", "patch"}, []string{fwd, icp}},
		{"coordination.k8s.io", "leases", "", []string{"delete"}, []string{fwd, icp, cln}},
		{"", "services", "", []string{"get", "list", "watch"}, []string{fwd, icp, cln}},
		{"", "services", "", []string{"patch", "update"}, []string{icp, cln}},
		{"", "services", "", []string{"create"}, []string{icp}},
		{"", "services", "", []string{"delete"}, []string{icp, cln}},
		{"discovery.k8s.io", "endpointslices", "", []string{"get", "list", "watch"}, []string{fwd, icp}},
		{"", "pods", "", []string{"get", "list", "watch"}, []string{fwd, icp}},
		{"", "pods", "portforward", []string{"get", "create"}, []string{fwd, icp}},
		{"", "pods", "proxy", []string{"get"}, []string{icp}},
		{"apps", "deployments", "", []string{"get"}, []string{fwd}},
		{"apps", "statefulsets", "", []string{"get"}, []string{fwd}},
		{"batch", "jobs", "", []string{"get", "list", "watch"}, []string{icp, cln}},
		{"batch", "jobs", "", []string{"create", "patch"}, []string{icp}},
		{"batch", "jobs", "", []string{"delete"}, []string{icp, cln}},
		{"", "serviceaccounts", "", []string{"create"}, []string{icp}},
		{"", "serviceaccounts", "", []string{"get", "delete"}, []string{icp, cln}},
		{"rbac.authorization.k8s.io", "roles", "", []string{"create"}, []string{icp}},
		{"rbac.authorization.k8s.io", "roles", "", []string{"get", "delete"}, []string{icp, cln}},
		{"rbac.authorization.k8s.io", "rolebindings", "", []string{"create"}, []string{icp}},
		{"rbac.authorization.k8s.io", "rolebindings", "", []string{"get", "delete"}, []string{icp, cln}},
		{"", "events", "", []string{"create", "patch", "list"}, []string{icp}},
		{"events.k8s.io", "events", "", []string{"create", "patch"}, []string{icp}},
		{"", "configmaps", "", []string{"get"}, []string{icp}},
		{"", "secrets", "", []string{"get"}, []string{icp}},
	}
}

// RequiredPermissions returns every permission kubectl-bridge needs in a
// namespace, one verb each, in a stable order.
func RequiredPermissions() []Permission {
	var out []Permission
	for _, r := range table() {
		for _, v := range r.verbs {
			out = append(out, Permission{Verb: v, Group: r.group, Resource: r.resource, Subresource: r.subresource, Commands: r.commands})
		}
	}
	return out
}

// summarize lists permissions for a one-line report: "create jobs.batch, …".
func summarize(ps []Permission, max int) string {
	var names []string
	for i, p := range ps {
		if i == max {
			names = append(names, fmt.Sprintf("and %d more", len(ps)-max))
			break
		}
		names = append(names, p.String())
	}
	return strings.Join(names, ", ")
}
