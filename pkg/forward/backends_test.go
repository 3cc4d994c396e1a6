package forward

import (
	"context"
	"testing"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

func be(name string, ready bool) Backend {
	return Backend{Pod: portforward.PodRef{Namespace: "dev", Name: name}, Ready: ready, Ports: map[string]int32{"http": 8080}}
}

func TestBackendSetSpreads(t *testing.T) {
	s := newBackendSet()
	s.update([]Backend{be("a", true), be("b", true), be("c", true), be("d", false)})
	ctx := context.Background()
	counts := map[string]int{}
	var releases []func()
	// Long-lived connections: each pick goes to the least busy pod.
	for i := 0; i < 9; i++ {
		b, release, err := s.acquire(ctx, "http", nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Pod.Name]++
		releases = append(releases, release)
	}
	if counts["a"] != 3 || counts["b"] != 3 || counts["c"] != 3 || counts["d"] != 0 {
		t.Errorf("long-lived spread %v", counts)
	}
	for _, r := range releases {
		r()
		r() // release is idempotent
	}
	// Short connections, one at a time: round-robin.
	var order []string
	for i := 0; i < 6; i++ {
		b, release, _ := s.acquire(ctx, "http", nil)
		order = append(order, b.Pod.Name)
		release()
	}
	seen := map[string]int{}
	for _, n := range order {
		seen[n]++
	}
	if seen["a"] != 2 || seen["b"] != 2 || seen["c"] != 2 {
		t.Errorf("sequential picks %v", order)
	}
	// Excluded pods and pods without the port are skipped.
	b, release, _ := s.acquire(ctx, "http", map[portforward.PodRef]bool{{Namespace: "dev", Name: "a"}: true, {Namespace: "dev", Name: "b"}: true})
	release()
	if b.Pod.Name != "c" {
		t.Errorf("picked %s despite exclusions", b.Pod.Name)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := s.acquire(short, "grpc", nil); err == nil {
		t.Error("picked a pod for a port no pod serves")
	}
}

func TestBackendSetUpdateAndWait(t *testing.T) {
	s := newBackendSet()
	ready, gone := s.update([]Backend{be("a", true), be("b", false)})
	if len(ready) != 1 || ready[0].Name != "a" || len(gone) != 0 {
		t.Errorf("first update: ready %v gone %v", ready, gone)
	}
	// a goes away, b is not ready yet: a connection waits…
	ready, gone = s.update([]Backend{be("b", false)})
	if len(ready) != 0 || len(gone) != 1 || gone[0].Name != "a" {
		t.Errorf("second update: ready %v gone %v", ready, gone)
	}
	got := make(chan string)
	go func() {
		b, release, err := s.acquire(context.Background(), "http", nil)
		if err != nil {
			got <- err.Error()
			return
		}
		release()
		got <- b.Pod.Name
	}()
	select {
	case n := <-got:
		t.Fatalf("acquired %s with no ready pod", n)
	case <-time.After(20 * time.Millisecond):
	}
	// …until b becomes ready.
	if ready, _ = s.update([]Backend{be("b", true)}); len(ready) != 1 {
		t.Errorf("b not reported ready: %v", ready)
	}
	if n := <-got; n != "b" {
		t.Errorf("acquired %s, want b", n)
	}
	if s.readyCount() != 1 {
		t.Errorf("readyCount %d", s.readyCount())
	}
}

// A StatefulSet pod recreated under the same name is a new backend: the old incarnation's
// connections are evicted and the new one gets its own.
func TestBackendSetRecreatedPod(t *testing.T) {
	s := newBackendSet()
	old := be("db-0", true)
	old.Pod.UID = "uid-1"
	s.update([]Backend{old})
	recreated := be("db-0", true)
	recreated.Pod.UID = "uid-2"
	ready, gone := s.update([]Backend{recreated})
	if len(gone) != 1 || gone[0].UID != "uid-1" || len(ready) != 1 || ready[0].UID != "uid-2" {
		t.Errorf("ready %v gone %v", ready, gone)
	}
}
