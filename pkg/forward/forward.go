package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

// State is a target's health.
type State string

// Target states, in the order a healthy forward goes through them.
const (
	StateStarting State = "Starting"
	StateHealthy  State = "Healthy"
	StateDegraded State = "Degraded"
	StateFailed   State = "Failed"
)

// Event reports a target's state change, or (with Conn set) a connection that could not be
// forwarded.
type Event struct {
	Target *Target
	State  State
	// Ready is the number of ready pods.
	Ready int
	// Reason explains Degraded and Failed states, or a failed connection.
	Reason string
	// Conn is the local peer of a failed connection, empty for state changes.
	Conn string
}

// DefaultConnectTimeout is how long an accepted connection waits for a ready pod.
const DefaultConnectTimeout = 30 * time.Second

// Config configures a Forwarder.
type Config struct {
	// Client reads EndpointSlices and pods.
	Client kubernetes.Interface
	// Pool opens the port-forward streams; the caller closes it after the Forwarder.
	Pool *portforward.Pool
	// Buffers are the copy buffers; portforward.DefaultBufferSize when nil.
	Buffers *portforward.Buffers
	// Targets to forward.
	Targets []*Target
	// Addresses are the parsed --address values (see ParseAddresses).
	Addresses []ListenAddr
	// StrictPorts refuses to pick another local port than the remote one.
	StrictPorts bool
	// ConnectTimeout bounds the wait of an accepted connection for a ready pod.
	ConnectTimeout time.Duration
	// OnEvent receives state changes and failed connections, one call at a time.
	OnEvent func(Event)
	// Listen opens listeners; net.Listen when nil.
	Listen func(network, address string) (net.Listener, error)
}

// Mapping is one forwarded port and where it listens.
type Mapping struct {
	Target *Target
	Port   Port
	// LocalPort is the bound local port, the same on every address.
	LocalPort int
	// Addrs are the bound local addresses (host:port).
	Addrs []string
}

// Forwarder forwards the targets' ports. Create it with New, then Start it; Close ends it.
type Forwarder struct {
	cfg      Config
	mappings []Mapping
	lists    [][]net.Listener // per mapping
	targets  []*targetState

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}

	eventMu sync.Mutex
}

type targetState struct {
	t        *Target
	backends *backendSet
	synced   chan struct{}
	mu       sync.Mutex
	state    State
	reason   string
	ready    int
}

// New binds the local listeners; nothing touches the cluster yet, so a taken port fails early.
func New(cfg Config) (*Forwarder, error) {
	if cfg.Buffers == nil {
		cfg.Buffers = portforward.NewBuffers(0)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.Listen == nil {
		cfg.Listen = net.Listen
	}
	if cfg.OnEvent == nil {
		cfg.OnEvent = func(Event) {}
	}
	if len(cfg.Addresses) == 0 {
		addrs, err := ParseAddresses(nil)
		if err != nil {
			return nil, err
		}
		cfg.Addresses = addrs
	}
	f := &Forwarder{cfg: cfg, conns: map[net.Conn]struct{}{}}
	picker := portPicker{addrs: cfg.Addresses, strict: cfg.StrictPorts, listen: cfg.Listen}
	for _, t := range cfg.Targets {
		for _, p := range t.Ports {
			ls, port, err := picker.pick(t.Display, p.Local, p.Number)
			if err != nil {
				f.closeListeners()
				return nil, err
			}
			m := Mapping{Target: t, Port: p, LocalPort: port}
			for _, l := range ls {
				m.Addrs = append(m.Addrs, l.Addr().String())
			}
			f.mappings = append(f.mappings, m)
			f.lists = append(f.lists, ls)
		}
		f.targets = append(f.targets, &targetState{t: t, backends: newBackendSet(), synced: make(chan struct{}), state: StateStarting})
	}
	return f, nil
}

// Mappings returns the forwarded ports in target order.
func (f *Forwarder) Mappings() []Mapping { return f.mappings }

// Start watches the targets' backends and starts accepting connections. It returns at once.
func (f *Forwarder) Start(ctx context.Context) {
	f.ctx, f.cancel = context.WithCancel(ctx)
	for _, ts := range f.targets {
		f.watch(ts)
	}
	for i, m := range f.mappings {
		ts := f.stateOf(m.Target)
		for _, l := range f.lists[i] {
			f.wg.Add(1)
			go f.accept(l, ts, m)
		}
	}
}

// WaitReady waits until every target has a ready pod, or ctx ends; then it names the targets that
// have none.
func (f *Forwarder) WaitReady(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var waiting []*targetState
		for _, ts := range f.targets {
			if ts.backends.readyCount() == 0 {
				waiting = append(waiting, ts)
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		var msgs []string
		for _, ts := range waiting {
			ts.mu.Lock()
			state, reason := ts.state, ts.reason
			ts.mu.Unlock()
			if state != StateFailed {
				// Not the Degraded reason: say how many pods there are, none of them ready.
				switch n := ts.backends.count(); n {
				case 0:
					reason = "no pod"
				case 1:
					reason = "1 pod, not ready"
				default:
					reason = fmt.Sprintf("%d pods, none ready", n)
				}
			}
			msgs = append(msgs, fmt.Sprintf("%s in namespace %s: %s", ts.t.Display, ts.t.Namespace, reason))
		}
		return fmt.Errorf("%s", strings.Join(msgs, "; "))
	}
}

// Probe opens the port-forward connection to one ready pod of every target, so that a problem on
// the way (RBAC forbidding pods/portforward, a proxy refusing the upgrade, an unreachable kubelet)
// is reported before the forward is announced rather than on the first client connection.
func (f *Forwarder) Probe(ctx context.Context) error {
	for _, ts := range f.targets {
		b, release, err := ts.backends.acquire(ctx, ts.t.portKey(ts.t.Ports[0]), nil)
		if err != nil {
			return fmt.Errorf("%s in namespace %s: no ready pod to probe: %w", ts.t.Display, ts.t.Namespace, err)
		}
		release()
		if err := f.cfg.Pool.Warm(ctx, b.Pod); err != nil {
			return fmt.Errorf("%s in namespace %s: %w", ts.t.Display, ts.t.Namespace, err)
		}
	}
	return nil
}

// State returns a target's current state and ready pod count.
func (f *Forwarder) State(t *Target) (State, int) {
	ts := f.stateOf(t)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.state, ts.ready
}

func (f *Forwarder) stateOf(t *Target) *targetState {
	for _, ts := range f.targets {
		if ts.t == t {
			return ts
		}
	}
	panic("forward: unknown target") // only called with targets from Config
}

// Close stops accepting, ends every forwarded connection and stops the watches.
func (f *Forwarder) Close() {
	if f.cancel != nil {
		f.cancel()
	}
	f.closeListeners()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *Forwarder) closeListeners() {
	for _, ls := range f.lists {
		for _, l := range ls {
			l.Close()
		}
	}
}

// watch starts the informer that feeds a target's backends.
func (f *Forwarder) watch(ts *targetState) {
	t := ts.t
	var informer cache.SharedIndexInformer
	var recompute func()
	if t.Kind == KindService {
		factory := informers.NewSharedInformerFactoryWithOptions(f.cfg.Client, 0, informers.WithNamespace(t.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=" + t.Name }))
		informer = factory.Discovery().V1().EndpointSlices().Informer()
		recompute = func() {
			var slices []*discoveryv1.EndpointSlice
			for _, o := range informer.GetStore().List() {
				slices = append(slices, o.(*discoveryv1.EndpointSlice))
			}
			f.setBackends(ts, backendsFromSlices(t.Namespace, slices))
		}
	} else {
		factory := informers.NewSharedInformerFactoryWithOptions(f.cfg.Client, 0, informers.WithNamespace(t.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				if t.PodSelector != nil {
					o.LabelSelector = t.PodSelector.String()
				} else {
					o.FieldSelector = fields.OneTermEqualSelector("metadata.name", t.Name).String()
				}
			}))
		informer = factory.Core().V1().Pods().Informer()
		recompute = func() {
			var pods []*corev1.Pod
			for _, o := range informer.GetStore().List() {
				pods = append(pods, o.(*corev1.Pod))
			}
			f.setBackends(ts, backendsFromPods(t, pods))
		}
	}
	_ = informer.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
			f.setState(ts, StateFailed, fmt.Sprintf("cannot watch backends: %v", err))
			return
		}
		klog.V(2).InfoS("Backend watch interrupted; retrying", "target", t.Display, "err", err)
	})
	var once sync.Once
	var recomputeMu sync.Mutex
	onChange := func() {
		if !informer.HasSynced() {
			return
		}
		once.Do(func() { close(ts.synced) })
		// Serialized so that the last run always reads the latest store.
		recomputeMu.Lock()
		defer recomputeMu.Unlock()
		recompute()
	}
	_, _ = informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onChange() },
		UpdateFunc: func(any, any) { onChange() },
		DeleteFunc: func(any) { onChange() },
	})
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		informer.RunWithContext(f.ctx)
	}()
	go func() {
		// An empty list produces no event: settle the state once synced.
		defer f.wg.Done()
		if cache.WaitForCacheSync(f.ctx.Done(), informer.HasSynced) {
			onChange()
		}
	}()
}

// setBackends applies a new backend list: warms connections to newly ready pods, evicts the
// connections of pods that are gone, and reports the state.
func (f *Forwarder) setBackends(ts *targetState, bs []Backend) {
	nowReady, gone := ts.backends.update(bs)
	for _, pod := range gone {
		klog.V(1).InfoS("Pod gone; closing its connections", "target", ts.t.Display, "pod", pod)
		f.cfg.Pool.Evict(pod)
	}
	for _, pod := range nowReady {
		go func() {
			// Opening the pod's connection now spares the next client the upgrade round trips.
			if err := f.cfg.Pool.Warm(f.ctx, pod); err != nil && f.ctx.Err() == nil {
				klog.V(1).InfoS("Could not open port-forward connection ahead of time", "pod", pod, "err", err)
			}
		}()
	}
	ready := ts.backends.readyCount()
	state, reason := StateHealthy, ""
	if ready == 0 {
		state, reason = StateDegraded, "no ready pod"
		if len(bs) == 0 {
			reason = "no pod"
		}
	}
	ts.mu.Lock()
	ts.ready = ready
	ts.mu.Unlock()
	f.setState(ts, state, reason)
}

func (f *Forwarder) setState(ts *targetState, state State, reason string) {
	ts.mu.Lock()
	// One line per state change: a new reason within the same state ("no pod" after "no ready
	// pod" while pods are replaced) is kept for WaitReady but not announced.
	if ts.state == state {
		ts.reason = reason
		ts.mu.Unlock()
		return
	}
	// Stay Starting until a pod is ready for the first time: "Degraded" at start-up would only
	// be noise while pods come up.
	if ts.state == StateStarting && state == StateDegraded {
		ts.reason = reason
		ts.mu.Unlock()
		return
	}
	ts.state, ts.reason = state, reason
	ev := Event{Target: ts.t, State: state, Ready: ts.ready, Reason: reason}
	ts.mu.Unlock()
	f.emit(ev)
}

func (f *Forwarder) emit(ev Event) {
	f.eventMu.Lock()
	defer f.eventMu.Unlock()
	f.cfg.OnEvent(ev)
}

func (f *Forwarder) accept(l net.Listener, ts *targetState, m Mapping) {
	defer f.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || f.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and similar: back off instead of spinning.
			klog.ErrorS(err, "Accept failed", "address", l.Addr())
			select {
			case <-time.After(100 * time.Millisecond):
			case <-f.ctx.Done():
				return
			}
			continue
		}
		f.mu.Lock()
		if f.ctx.Err() != nil {
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[c] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go func() {
			defer f.wg.Done()
			f.handle(c, ts, m)
			f.mu.Lock()
			delete(f.conns, c)
			f.mu.Unlock()
		}()
	}
}

// maxPodAttempts bounds how many pods one connection tries when opening a stream fails.
const maxPodAttempts = 3

func (f *Forwarder) handle(c net.Conn, ts *targetState, m Mapping) {
	defer c.Close()
	key := ts.t.portKey(m.Port)
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.ConnectTimeout)
	defer cancel()
	// During a rollout a pod may still be listed as ready after it stopped listening: a
	// connection it refuses moves to another pod with what the client already sent.
	rc := newReplayConn(c)
	tried := map[portforward.PodRef]bool{}
	var lastErr error
	for attempt := 0; attempt < maxPodAttempts; attempt++ {
		b, release, err := ts.backends.acquire(ctx, key, tried)
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			reason := fmt.Sprintf("no ready pod within %s", f.cfg.ConnectTimeout)
			if lastErr != nil {
				reason = lastErr.Error()
			}
			f.emit(Event{Target: ts.t, Reason: reason + "; closed the connection", Conn: c.RemoteAddr().String()})
			return
		}
		s, err := f.cfg.Pool.Dial(ctx, b.Pod, b.Ports[key])
		if err != nil {
			release()
			tried[b.Pod] = true
			lastErr = err
			klog.V(1).InfoS("Could not open a stream; trying another pod", "target", ts.t.Display, "pod", b.Pod, "err", err)
			continue
		}
		klog.V(4).InfoS("Forwarding connection", "target", ts.t.Display, "from", c.RemoteAddr(), "pod", b.Pod, "port", b.Ports[key])
		res := f.cfg.Buffers.Pipe(rc, s)
		release()
		// The pod's port-forward connection closed before the kubelet took the stream: nothing
		// reached the pod, so the same pod is tried again, on a new connection.
		notTaken := errors.Is(res.RemoteErr, portforward.ErrNotAcknowledged)
		if res.Received == 0 && (notTaken || neverConnected(res.RemoteErr)) && f.ctx.Err() == nil && rc.rewind() {
			if !notTaken {
				tried[b.Pod] = true
			}
			lastErr = res.RemoteErr
			klog.V(1).InfoS("Pod did not take the connection; trying again", "target", ts.t.Display, "pod", b.Pod, "err", res.RemoteErr)
			continue
		}
		rc.stop()
		if res.RemoteErr != nil {
			klog.V(1).InfoS("Connection ended by the pod with an error", "target", ts.t.Display, "pod", b.Pod, "err", res.RemoteErr)
			// Pass the reset on, so that the client sees what an in-cluster client would.
			if tcp, ok := c.(*net.TCPConn); ok {
				_ = tcp.SetLinger(0)
			}
		}
		klog.V(4).InfoS("Connection closed", "target", ts.t.Display, "pod", b.Pod, "sent", res.Sent, "received", res.Received)
		return
	}
	f.emit(Event{Target: ts.t, Reason: fmt.Sprintf("could not reach a pod: %v; closed the connection", lastErr), Conn: c.RemoteAddr().String()})
}

// SortMappings orders mappings by target then local port, for stable output.
func SortMappings(ms []Mapping) {
	sort.SliceStable(ms, func(i, j int) bool {
		if ms[i].Target.Display != ms[j].Target.Display {
			return ms[i].Target.Display < ms[j].Target.Display
		}
		return ms[i].LocalPort < ms[j].LocalPort
	})
}
