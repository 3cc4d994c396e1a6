package doctor

import (
	"slices"
	"testing"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
)

// An intercept creates the agent's Role, and RBAC refuses a Role granting anything its creator
// does not hold: every verb of the agent's rules must be in what intercept needs, or users with
// exactly the printed RBAC could not start an agent.
func TestAgentRulesAreHeldByIntercept(t *testing.T) {
	held := map[string]bool{}
	for _, p := range RequiredPermissions() {
		if slices.Contains(p.Commands, "intercept") {
			held[p.String()] = true
		}
	}
	for _, rule := range objects.AgentRules("api") {
		for _, g := range rule.APIGroups {
			for _, r := range rule.Resources {
				for _, v := range rule.Verbs {
					p := Permission{Verb: v, Group: g, Resource: r}
					if !held[p.String()] {
						t.Errorf("the agent's Role grants %q, which intercept's permissions lack", p.String())
					}
				}
			}
		}
	}
}
