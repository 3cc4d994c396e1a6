// Package portforwardtest provides an in-process stand-in for the kubelet's port-forward endpoint,
// so that port-forward clients can be tested over loopback without a cluster.
package portforwardtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/httpstream/spdy"
	"k8s.io/client-go/rest"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

// Kubelet serves /api/v1/namespaces/NS/pods/NAME/portforward over SPDY like the API server and
// kubelet together: each data stream is connected to the address Backend returns for the pod and
// port, and dial failures are reported on the error stream, as the kubelet does. WebSocket
// upgrades are refused, which exercises the client's SPDY fallback.
type Kubelet struct {
	// Backend returns the TCP address serving port of pod, or an error to report on the error
	// stream (e.g. the pod is gone).
	Backend func(pod portforward.PodRef, port int32) (string, error)
	// AcceptStream, when set, runs before the kubelet replies to a new stream: it may block
	// (holding the reply back) or refuse the stream, which is then reset unanswered. Streams are
	// always checked as the kubelet checks them (a port number and a stream type) first.
	AcceptStream func(headers http.Header) error

	srv         *httptest.Server
	connections atomic.Int64
	streams     atomic.Int64

	mu    sync.Mutex
	conns map[portforward.PodRef][]httpstream.Connection
	raw   map[portforward.PodRef][]net.Conn
}

// NewKubelet starts a fake kubelet. Close it when done.
func NewKubelet(backend func(pod portforward.PodRef, port int32) (string, error)) *Kubelet {
	k := &Kubelet{Backend: backend, conns: map[portforward.PodRef][]httpstream.Connection{}, raw: map[portforward.PodRef][]net.Conn{}}
	k.srv = httptest.NewServer(http.HandlerFunc(k.serve))
	return k
}

// Config returns a client configuration for the fake API server.
func (k *Kubelet) Config() *rest.Config { return &rest.Config{Host: k.srv.URL} }

// Connections returns how many port-forward connections were upgraded so far.
func (k *Kubelet) Connections() int64 { return k.connections.Load() }

// Streams returns how many data streams were served so far.
func (k *Kubelet) Streams() int64 { return k.streams.Load() }

// CloseConnections closes every port-forward connection to pod, as a kubelet does when the pod's
// sandbox goes away or it gives up on the connection.
func (k *Kubelet) CloseConnections(pod portforward.PodRef) {
	for _, c := range take(&k.mu, k.conns, pod) {
		c.Close()
	}
}

// Sever drops every port-forward connection to pod at the TCP level, without a word of SPDY, as
// when the API server or the kubelet goes away.
func (k *Kubelet) Sever(pod portforward.PodRef) {
	for _, c := range take(&k.mu, k.raw, pod) {
		c.Close()
	}
}

// take removes and returns pod's entries of m under mu.
func take[T any](mu *sync.Mutex, m map[portforward.PodRef][]T, pod portforward.PodRef) []T {
	mu.Lock()
	defer mu.Unlock()
	v := m[pod]
	delete(m, pod)
	return v
}

// Close stops the server and every connection.
func (k *Kubelet) Close() {
	k.mu.Lock()
	all := k.conns
	k.conns = map[portforward.PodRef][]httpstream.Connection{}
	k.mu.Unlock()
	for _, conns := range all {
		for _, c := range conns {
			c.Close()
		}
	}
	k.srv.CloseClientConnections()
	k.srv.Close()
}

func (k *Kubelet) serve(w http.ResponseWriter, req *http.Request) {
	// /api/v1/namespaces/{ns}/pods/{name}/portforward
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	if len(parts) != 7 || parts[6] != "portforward" || req.Method != http.MethodPost {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	pod := portforward.PodRef{Namespace: parts[3], Name: parts[5]}
	if _, err := httpstream.Handshake(req, w, []string{"portforward.k8s.io"}); err != nil {
		return // Handshake wrote the response
	}
	streams := make(chan httpstream.Stream, 16)
	hw := &hijackRecorder{ResponseWriter: w}
	conn := spdy.NewResponseUpgrader().UpgradeResponse(hw, req, func(s httpstream.Stream, _ <-chan struct{}) error {
		if err := checkStream(s.Headers()); err != nil {
			return err
		}
		if k.AcceptStream != nil {
			if err := k.AcceptStream(s.Headers()); err != nil {
				return err
			}
		}
		streams <- s
		return nil
	})
	if conn == nil {
		return
	}
	k.connections.Add(1)
	k.mu.Lock()
	k.conns[pod] = append(k.conns[pod], conn)
	k.raw[pod] = append(k.raw[pod], hw.conn)
	k.mu.Unlock()

	pairs := map[string]*pair{}
	for {
		select {
		case <-conn.CloseChan():
			return
		case s := <-streams:
			id := s.Headers().Get(corev1.PortForwardRequestIDHeader)
			p := pairs[id]
			if p == nil {
				p = &pair{}
				pairs[id] = p
			}
			switch s.Headers().Get(corev1.StreamType) {
			case corev1.StreamTypeError:
				p.errs = s
			case corev1.StreamTypeData:
				p.data = s
			}
			if p.errs != nil && p.data != nil {
				delete(pairs, id)
				k.streams.Add(1)
				go k.forward(conn, pod, p)
			}
		}
	}
}

type pair struct{ data, errs httpstream.Stream }

// hijackRecorder keeps the connection the SPDY upgrade takes over, for Sever.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	h.conn = c
	return c, rw, err
}

// checkStream refuses what the kubelet's port-forward handler refuses (httpStreamReceived): a
// missing or invalid port, or an unknown stream type.
func checkStream(h http.Header) error {
	if port, err := strconv.ParseUint(h.Get(corev1.PortHeader), 10, 16); err != nil || port < 1 {
		return fmt.Errorf("invalid %s header %q", corev1.PortHeader, h.Get(corev1.PortHeader))
	}
	switch t := h.Get(corev1.StreamType); t {
	case corev1.StreamTypeError, corev1.StreamTypeData:
		return nil
	default:
		return fmt.Errorf("invalid %s header %q", corev1.StreamType, t)
	}
}

// forward mirrors the kubelet/containerd behaviour: copy both ways, stop when either direction
// ends, report failures on the error stream, then close both streams.
func (k *Kubelet) forward(conn httpstream.Connection, pod portforward.PodRef, p *pair) {
	defer conn.RemoveStreams(p.data, p.errs)
	defer p.data.Close()
	defer p.errs.Close()
	port, _ := strconv.Atoi(p.data.Headers().Get(corev1.PortHeader))
	err := k.pipe(pod, int32(port), p.data)
	if err != nil {
		fmt.Fprintf(p.errs, "error forwarding port %d to pod %s: %v", port, pod, err)
	}
}

func (k *Kubelet) pipe(pod portforward.PodRef, port int32, data httpstream.Stream) error {
	addr, err := k.Backend(pod, port)
	if err != nil {
		return err
	}
	var d net.Dialer
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	errCh := make(chan error, 2)
	go func() {
		_, err := io.Copy(data, c)
		errCh <- err
	}()
	go func() {
		_, err := io.Copy(c, data)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		errCh <- err
	}()
	// Like containerd: the first direction to end starts a one-second grace for the other.
	err = <-errCh
	if err == nil {
		select {
		case err = <-errCh:
		case <-time.After(time.Second):
		}
	}
	return err
}
