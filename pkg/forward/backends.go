package forward

import (
	"context"
	"sort"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kubectlutil "k8s.io/kubectl/pkg/util"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

// Backend is a pod that can serve a target, with the pod port behind each of the target's ports.
type Backend struct {
	Pod portforward.PodRef
	// Ready pods receive new connections; pods that exist but are not ready (starting,
	// terminating) keep the connections they have.
	Ready bool
	// Ports maps a port key (see Target.portKey) to the pod's port number.
	Ports map[string]int32
}

// backendsFromSlices turns a Service's EndpointSlices into backends. A pod listed in several
// slices (dual-stack, or split by port set) is merged.
func backendsFromSlices(namespace string, slices []*discoveryv1.EndpointSlice) []Backend {
	byPod := map[string]*Backend{}
	for _, slice := range slices {
		for _, ep := range slice.Endpoints {
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" {
				continue // endpoints not backed by a pod cannot be port-forwarded
			}
			key := ep.TargetRef.Name + "/" + string(ep.TargetRef.UID)
			b := byPod[key]
			if b == nil {
				b = &Backend{Pod: portforward.PodRef{Namespace: namespace, Name: ep.TargetRef.Name, UID: ep.TargetRef.UID}, Ports: map[string]int32{}}
				byPod[key] = b
			}
			// A nil ready condition means "unknown" and is to be treated as ready.
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				b.Ready = true
			}
			for _, p := range slice.Ports {
				if p.Port != nil && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
					name := ""
					if p.Name != nil {
						name = *p.Name
					}
					b.Ports[name] = *p.Port
				}
			}
		}
	}
	return sortedBackends(byPod)
}

// backendsFromPods turns pods into backends, resolving each target port on each pod: named ports
// may map to different numbers on different pods.
func backendsFromPods(t *Target, pods []*corev1.Pod) []Backend {
	byPod := map[string]*Backend{}
	for _, pod := range pods {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		b := &Backend{Pod: portforward.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, Ready: podReady(pod), Ports: map[string]int32{}}
		for _, p := range t.Ports {
			if p.ContainerPort.Type == intstr.Int {
				b.Ports[t.portKey(p)] = p.ContainerPort.IntVal
			} else if n, err := kubectlutil.LookupContainerPortNumberByName(*pod, p.ContainerPort.StrVal); err == nil {
				b.Ports[t.portKey(p)] = n
			}
		}
		byPod[pod.Name+"/"+string(pod.UID)] = b
	}
	return sortedBackends(byPod)
}

func podReady(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func sortedBackends(m map[string]*Backend) []Backend {
	out := make([]Backend, 0, len(m))
	for _, b := range m {
		out = append(out, *b)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pod.Name != out[j].Pod.Name {
			return out[i].Pod.Name < out[j].Pod.Name
		}
		return out[i].Pod.UID < out[j].Pod.UID
	})
	return out
}

// backendSet holds a target's backends and hands out ready ones, spreading connections: the ready
// pod with the fewest open connections wins, ties go round-robin.
type backendSet struct {
	mu      sync.Mutex
	all     map[portforward.PodRef]*backend
	ready   []*backend // sorted by pod name
	next    int
	changed chan struct{} // closed and replaced on every update
}

type backend struct {
	Backend
	active int
}

func newBackendSet() *backendSet {
	return &backendSet{all: map[portforward.PodRef]*backend{}, changed: make(chan struct{})}
}

// update replaces the backends. It returns the pods that became ready and the pods that are gone.
func (s *backendSet) update(bs []Backend) (nowReady, gone []portforward.PodRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[portforward.PodRef]bool{}
	s.ready = s.ready[:0]
	for _, b := range bs {
		seen[b.Pod] = true
		cur := s.all[b.Pod]
		if cur == nil {
			cur = &backend{}
			s.all[b.Pod] = cur
		}
		if b.Ready && !cur.Ready {
			nowReady = append(nowReady, b.Pod)
		}
		cur.Backend = b
		if b.Ready {
			s.ready = append(s.ready, cur)
		}
	}
	for pod := range s.all {
		if !seen[pod] {
			delete(s.all, pod)
			gone = append(gone, pod)
		}
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return nowReady, gone
}

// count returns the number of pods, ready or not.
func (s *backendSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.all)
}

// readyCount returns the number of ready pods.
func (s *backendSet) readyCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ready)
}

// acquire returns a ready backend serving port key, skipping pods in exclude, waiting for one
// until ctx ends. release must be called when the connection ends.
func (s *backendSet) acquire(ctx context.Context, key string, exclude map[portforward.PodRef]bool) (Backend, func(), error) {
	for {
		s.mu.Lock()
		if b := s.pickLocked(key, exclude); b != nil {
			b.active++
			picked := b.Backend
			s.mu.Unlock()
			var once sync.Once
			return picked, func() {
				once.Do(func() {
					s.mu.Lock()
					b.active--
					s.mu.Unlock()
				})
			}, nil
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return Backend{}, nil, ctx.Err()
		}
	}
}

func (s *backendSet) pickLocked(key string, exclude map[portforward.PodRef]bool) *backend {
	n := len(s.ready)
	var best *backend
	for i := 0; i < n; i++ {
		b := s.ready[(s.next+i)%n]
		if _, ok := b.Ports[key]; !ok || exclude[b.Pod] {
			continue
		}
		if best == nil || b.active < best.active {
			best = b
		}
	}
	if best != nil {
		s.next = (s.next + 1) % n
	}
	return best
}
