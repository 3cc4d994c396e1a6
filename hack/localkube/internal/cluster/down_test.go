package cluster

import (
	"strings"
	"testing"
)

func TestWithoutOurChains(t *testing.T) {
	dump := `*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:CNI-abc123 - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.244.0.2/32 -j CNI-abc123
-A POSTROUTING -o eth0 -j MASQUERADE
-A KUBE-SERVICES -j RETURN
-A CNI-abc123 -d 10.244.0.0/24 -j ACCEPT
-A DOCKER -j RETURN
COMMIT
`
	want := `*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A POSTROUTING -o eth0 -j MASQUERADE
-A DOCKER -j RETURN
COMMIT
`
	got, found := withoutOurChains(dump)
	if !found || got != want {
		t.Fatalf("found=%v, got:\n%s\nwant:\n%s", found, got, want)
	}
	if _, found := withoutOurChains(want); found {
		t.Fatal("a ruleset without our chains reported as having them")
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		"/run/netns/cni-1":        "/run/netns/cni-1",
		`/work/my\040dir/_output`: "/work/my dir/_output",
		`/a\134b`:                 `/a\b`,
		`/trailing\04`:            `/trailing\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestContainsAll(t *testing.T) {
	args := strings.Fields("containerd-shim-runc-v2 -namespace k8s.io -id abc -address /run/kubectl-bridge-localkube/containerd.sock")
	if !containsAll(args, []string{"-address", ContainerdSocket}) {
		t.Fatal("shim of our containerd not matched")
	}
	if containsAll(args, []string{"-address", "/run/containerd/containerd.sock"}) {
		t.Fatal("shim matched another containerd's socket")
	}
}
