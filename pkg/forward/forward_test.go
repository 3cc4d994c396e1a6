package forward

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward/portforwardtest"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// podServer answers every line with the pod's name, like the e2e echo workload.
func podServer(t *testing.T, name string) string {
	t.Helper()
	return tunneltest.Serve(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", name)
		}
	}).Addr().String()
}

type env struct {
	client  *fake.Clientset
	kubelet *portforwardtest.Kubelet
	pool    *portforward.Pool
	mu      sync.Mutex
	servers map[string]string
	events  chan Event
}

func newEnv(t *testing.T) *env {
	e := &env{client: fake.NewClientset(), servers: map[string]string{}, events: make(chan Event, 100)}
	e.kubelet = portforwardtest.NewKubelet(func(pod portforward.PodRef, port int32) (string, error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		addr, ok := e.servers[pod.Name]
		if !ok || port != 8080 {
			return "", fmt.Errorf("no such pod or port")
		}
		return addr, nil
	})
	t.Cleanup(e.kubelet.Close)
	cs, err := kubernetes.NewForConfig(e.kubelet.Config())
	if err != nil {
		t.Fatal(err)
	}
	e.pool = portforward.NewPool(portforward.NewRESTDialer(e.kubelet.Config(), cs.CoreV1().RESTClient(), portforward.SPDYOnly), portforward.Options{})
	t.Cleanup(e.pool.Close)
	return e
}

func (e *env) addPod(t *testing.T, name string) {
	e.mu.Lock()
	e.servers[name] = podServer(t, name)
	e.mu.Unlock()
}

// setEndpoints writes the Service's EndpointSlice with the given pods → ready.
func (e *env) setEndpoints(t *testing.T, pods map[string]bool) {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-abc", Namespace: "dev", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for name, ready := range pods {
		s.Endpoints = append(s.Endpoints, endpoint(name, ptr.To(ready)))
	}
	ctx := context.Background()
	if _, err := e.client.DiscoveryV1().EndpointSlices("dev").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		if _, err := e.client.DiscoveryV1().EndpointSlices("dev").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) start(t *testing.T, connectTimeout time.Duration) (*Forwarder, string) {
	target, err := NewTarget(mustParse(t, "svc/web:0:http"), svc("web", corev1.ServicePort{Name: "http", Port: 80}))
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := ParseAddresses(nil)
	f, err := New(Config{Client: e.client, Pool: e.pool, Targets: []*Target{target}, Addresses: addrs, ConnectTimeout: connectTimeout,
		OnEvent: func(ev Event) { e.events <- ev }})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(context.Background())
	t.Cleanup(f.Close)
	return f, f.Mappings()[0].Addrs[0]
}

func (e *env) waitState(t *testing.T, want State) Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-e.events:
			if ev.Conn == "" && ev.State == want {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event", want)
		}
	}
}

// waitReadyCount waits until the forwarder has seen n ready pods: the EndpointSlice informer
// delivers an update some time after the write.
func waitReadyCount(t *testing.T, f *Forwarder, n int) {
	t.Helper()
	target := f.Mappings()[0].Target
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ready := f.State(target); ready == n {
			return
		}
		if time.Now().After(deadline) {
			_, ready := f.State(target)
			t.Fatalf("forwarder sees %d ready pods, want %d", ready, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ask opens a connection, sends one line and returns the pod name that answered.
func ask(t *testing.T, addr string) (string, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "hi\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return "", nil
	}
	return strings.TrimSpace(line), c
}

func TestForwarderSpreadsAndSurvivesPodChanges(t *testing.T) {
	e := newEnv(t)
	e.addPod(t, "web-1")
	e.addPod(t, "web-2")
	e.setEndpoints(t, map[string]bool{"web-1": true, "web-2": true})
	f, addr := e.start(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := e.waitState(t, StateHealthy); ev.Ready != 2 {
		t.Errorf("healthy with %d ready", ev.Ready)
	}

	// Spread: four concurrent connections, two per pod.
	counts := map[string]int{}
	var open []net.Conn
	for i := 0; i < 4; i++ {
		pod, c := ask(t, addr)
		counts[pod]++
		open = append(open, c)
	}
	if counts["web-1"] != 2 || counts["web-2"] != 2 {
		t.Errorf("spread %v", counts)
	}
	if n := e.kubelet.Connections(); n != 2 {
		t.Errorf("%d port-forward connections for 2 pods", n)
	}

	// web-1 goes away: its connections close, the listener stays, new connections go to web-2.
	e.setEndpoints(t, map[string]bool{"web-2": true})
	waitReadyCount(t, f, 1)
	for _, c := range open {
		r := bufio.NewReader(c)
		fmt.Fprintf(c, "again\n")
		line, err := r.ReadString('\n')
		if err == nil {
			if strings.TrimSpace(line) != "web-2" {
				t.Errorf("connection to a gone pod still answered by %q", line)
			}
		}
		c.Close()
	}
	for i := 0; i < 3; i++ {
		if pod, c := ask(t, addr); pod != "web-2" {
			t.Errorf("new connection answered by %q, want web-2", pod)
		} else {
			c.Close()
		}
	}

	// No ready pod: Degraded; a new connection waits and goes through once a pod is ready.
	e.setEndpoints(t, map[string]bool{"web-2": false})
	e.waitState(t, StateDegraded)
	e.addPod(t, "web-3")
	answered := make(chan string)
	go func() {
		pod, c := ask(t, addr)
		if c != nil {
			c.Close()
		}
		answered <- pod
	}()
	select {
	case pod := <-answered:
		t.Fatalf("answered by %q with no ready pod", pod)
	case <-time.After(200 * time.Millisecond):
	}
	e.setEndpoints(t, map[string]bool{"web-2": false, "web-3": true})
	if pod := <-answered; pod != "web-3" {
		t.Errorf("waiting connection answered by %q, want web-3", pod)
	}
	e.waitState(t, StateHealthy)
}

func TestForwarderConnectTimeout(t *testing.T) {
	e := newEnv(t)
	e.setEndpoints(t, map[string]bool{})
	f, addr := e.start(t, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := f.WaitReady(ctx); err == nil || !strings.Contains(err.Error(), "svc/web in namespace dev: no pod") {
		t.Errorf("WaitReady = %v", err)
	}
	if st, _ := f.State(f.Mappings()[0].Target); st != StateStarting {
		t.Errorf("state %s, want Starting until a pod was ever ready", st)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Errorf("read %q", b)
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-e.events:
			if ev.Conn != "" {
				if !strings.Contains(ev.Reason, "no ready pod within 100ms") {
					t.Errorf("reason %q", ev.Reason)
				}
				return
			}
		case <-timeout:
			t.Fatal("no event for the dropped connection")
		}
	}
}

func TestForwarderCloseEndsConnections(t *testing.T) {
	e := newEnv(t)
	e.addPod(t, "web-1")
	e.setEndpoints(t, map[string]bool{"web-1": true})
	f, addr := e.start(t, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	_, c := ask(t, addr)
	done := make(chan struct{})
	go func() { io.ReadAll(c); close(done) }()
	f.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open after Close")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("listener still open after Close")
	}
}

// TestForwarderRetriesRefusedConnections: a pod still listed as ready has stopped listening (it
// got SIGTERM during a rollout). New connections must reach the other pod, with the bytes the
// client sent first.
func TestForwarderRetriesRefusedConnections(t *testing.T) {
	e := newEnv(t)
	e.addPod(t, "web-1")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.servers["web-dying"] = l.Addr().String()
	e.mu.Unlock()
	l.Close()
	e.setEndpoints(t, map[string]bool{"web-1": true, "web-dying": true})
	f, addr := e.start(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		pod, c := ask(t, addr)
		if pod != "web-1" {
			t.Fatalf("connection %d answered by %q, want web-1", i, pod)
		}
		c.Close()
	}
}

// TestForwarderResendsWhatTheKubeletNeverTook: the pod's port-forward connection drops after a
// new connection's streams left but before the kubelet took them; the client's request goes to
// the same pod again on a new connection, and the client never notices.
func TestForwarderResendsWhatTheKubeletNeverTook(t *testing.T) {
	e := newEnv(t)
	e.addPod(t, "web-1")
	e.setEndpoints(t, map[string]bool{"web-1": true})
	var severed atomic.Bool
	e.kubelet.AcceptStream = func(http.Header) error {
		if !severed.Swap(true) {
			e.kubelet.Sever(portforward.PodRef{Namespace: "dev", Name: "web-1"})
		}
		return nil
	}
	f, addr := e.start(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	pod, c := ask(t, addr)
	c.Close()
	if pod != "web-1" {
		t.Fatalf("answered by %q, want web-1", pod)
	}
	if !severed.Load() {
		t.Fatal("the connection was never severed")
	}
	if n := e.kubelet.Connections(); n != 2 {
		t.Errorf("kubelet saw %d connections, want 2 (the severed one and its replacement)", n)
	}
}

func TestNeverConnected(t *testing.T) {
	for msg, want := range map[string]bool{
		`error forwarding port 8080 to pod abc: failed to connect to localhost:8080 inside namespace "x": dial tcp4 127.0.0.1:8080: connect: connection refused`: true,
		`failed to find sandbox "abc" in store: not found`:                          true,
		`read tcp4 127.0.0.1:41234->127.0.0.1:8080: read: connection reset by peer`: false,
		`writeto tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe`:                  false,
	} {
		if got := neverConnected(fmt.Errorf("%s", msg)); got != want {
			t.Errorf("neverConnected(%q) = %v, want %v", msg, got, want)
		}
	}
	if neverConnected(nil) {
		t.Error("nil error counted as refused")
	}
}
