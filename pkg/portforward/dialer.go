// Package portforward multiplexes many TCP connections over one Kubernetes port-forward
// connection per pod.
//
// client-go's PortForwarder binds listeners to a single pod and closes its whole connection when
// one forwarded TCP connection reports an error (kubernetes#111825). This package instead keeps one
// upgraded connection (httpstream.Connection) per pod in a Pool and opens an error stream plus a
// data stream per TCP connection, with the same headers as client-go, so that:
//   - a connection reset by the application ends only that stream;
//   - a connection the kubelet closes is replaced on the next Dial;
//   - callers choose the pod per connection (load spreading, pod restarts).
//
// A Stream is a net.Conn, so it also carries other protocols (e.g. a yamux session to an agent).
package portforward

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	apispdy "k8s.io/apimachinery/pkg/util/httpstream/spdy"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	portforwardconstants "k8s.io/apimachinery/pkg/util/portforward"
	"k8s.io/client-go/rest"
	clientportforward "k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/transport/websocket"
	"k8s.io/klog/v2"
)

// PodRef names a pod. UID, when known, tells incarnations of a same-named pod apart (a
// StatefulSet pod that was recreated): each gets its own connection.
type PodRef struct {
	Namespace string
	Name      string
	UID       types.UID
}

// String returns namespace/name.
func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// ConnectionDialer opens a port-forward connection to a pod. The connection must have negotiated
// the portforward.k8s.io protocol.
type ConnectionDialer interface {
	DialPod(ctx context.Context, pod PodRef) (httpstream.Connection, error)
}

// Transport is the order in which a RESTDialer tries the API server's two port-forward protocols.
type Transport int

const (
	// SPDYFirst upgrades the request to SPDY, which the API server relays to the kubelet byte for
	// byte, and falls back to WebSocket when something in front of the API server refuses that
	// upgrade (a gateway that passes only WebSockets). It moves bulk data faster than WebSocket
	// and costs the API server less CPU per byte (docs/benchmarks.md), with the same latency.
	SPDYFirst Transport = iota
	// WebSocketFirst is kubectl's order since Kubernetes 1.31: SPDY tunnelled in WebSocket
	// messages, which the API server unwraps and re-frames, falling back to a SPDY upgrade.
	WebSocketFirst
	// SPDYOnly never tries WebSocket (kubectl's KUBECTL_PORT_FORWARD_WEBSOCKETS=false).
	SPDYOnly
)

// TransportFromEnv reads kubectl's KUBECTL_PORT_FORWARD_WEBSOCKETS: "false" is SPDYOnly, as for
// kubectl; "true", asking for WebSockets explicitly, is kubectl's order (WebSocketFirst); unset
// (or anything else) is def.
func TransportFromEnv(value string, def Transport) Transport {
	switch strings.ToLower(value) {
	case "false":
		return SPDYOnly
	case "true":
		return WebSocketFirst
	}
	return def
}

func (t Transport) String() string {
	switch t {
	case SPDYFirst:
		return "SPDY, WebSocket fallback"
	case WebSocketFirst:
		return "WebSocket, SPDY fallback"
	case SPDYOnly:
		return "SPDY"
	}
	return fmt.Sprintf("Transport(%d)", int(t))
}

// RESTDialer dials pods/portforward through the API server over SPDY or WebSocket (SPDY
// tunnelled in WebSocket messages, the default of kubectl since Kubernetes 1.31), in the order
// its Transport gives, falling back to the other protocol when the first upgrade is refused.
type RESTDialer struct {
	// CoalesceFrames writes each SPDY frame in one piece, as one WebSocket message or one write
	// to the upgraded SPDY connection, instead of three or more (see frameCoalescer); on by
	// default.
	CoalesceFrames bool
	// EarlyData lets a forwarded connection's first bytes follow its streams' SYN frames instead
	// of waiting for the server's replies (see clientConn); on by default.
	EarlyData bool
	// BatchReceives wakes a connection's reader once per batch of received bytes during bulk
	// transfers instead of once per TLS record (see receiveBatcher; Linux); on by default.
	BatchReceives bool

	config    *rest.Config
	client    rest.Interface
	transport Transport
	// fellBack remembers that the first protocol was refused and the second worked, so that
	// later dials to the same API server skip the doomed first attempt.
	fellBack atomic.Bool
	// dialers, replaced in unit tests of the fallback.
	spdy, webSocket func(*url.URL) (httpstream.Connection, string, error)
}

// NewRESTDialer returns a dialer for the cluster of config. client is a core/v1 REST client (e.g.
// clientset.CoreV1().RESTClient()), used to build the pods/portforward URLs.
func NewRESTDialer(config *rest.Config, client rest.Interface, transport Transport) *RESTDialer {
	d := &RESTDialer{config: config, client: client, transport: transport, CoalesceFrames: true, EarlyData: true, BatchReceives: true}
	d.spdy, d.webSocket = d.dialSPDY, d.dialWebSocket
	return d
}

// DialPod implements ConnectionDialer.
func (d *RESTDialer) DialPod(ctx context.Context, pod PodRef) (httpstream.Connection, error) {
	u := d.client.Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	conn, err := dialContext(ctx, func() (httpstream.Connection, string, error) { return d.dial(u) })
	if err != nil {
		return nil, fmt.Errorf("port-forward to pod %s: %w", pod, err)
	}
	if !d.EarlyData {
		return waitingConn{conn}, nil
	}
	return conn, nil
}

func (d *RESTDialer) dial(u *url.URL) (httpstream.Connection, string, error) {
	switch {
	case d.transport == SPDYOnly:
		return d.spdy(u)
	case d.transport == WebSocketFirst && !d.fellBack.Load():
		// client-go's rule (kubectl's NewFallbackDialer).
		conn, proto, err := d.webSocket(u)
		if err == nil || !(httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)) {
			return conn, proto, err
		}
		klog.V(2).InfoS("WebSocket port-forward refused; falling back to SPDY", "err", err)
		d.fellBack.Store(true)
		return d.spdy(u)
	case d.transport == WebSocketFirst:
		return d.spdy(u)
	case d.fellBack.Load():
		return d.webSocket(u)
	}
	conn, proto, err := d.spdy(u)
	if err == nil || !spdyRefused(err) {
		return conn, proto, err
	}
	klog.V(2).InfoS("SPDY port-forward refused; falling back to WebSocket", "err", err)
	conn, proto, wsErr := d.webSocket(u)
	if wsErr != nil {
		// Not remembered: the refusal may have been about this request, not the protocol.
		return nil, "", fmt.Errorf("%w (over WebSocket: %v)", err, wsErr)
	}
	d.fellBack.Store(true)
	return conn, proto, nil
}

// refusedUpgradeError marks a SPDY upgrade request that was answered, but not with an upgrade.
type refusedUpgradeError struct{ err error }

func (e *refusedUpgradeError) Error() string { return e.err.Error() }
func (e *refusedUpgradeError) Unwrap() error { return e.err }

// spdyRefused tells whether a failed SPDY dial is worth a WebSocket attempt: the upgrade request
// reached a server that answered without upgrading, and not with the API server's answers about
// the request itself (who the user is, what they may do, which pod), which WebSocket would get too.
func spdyRefused(err error) bool {
	var refused *refusedUpgradeError
	if !errors.As(err, &refused) {
		return false
	}
	return !apierrors.IsUnauthorized(err) && !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err)
}

// dialSPDY is client-go's SPDY dial (spdy.RoundTripperFor, then Negotiate) through an upgrader
// that keeps the upgraded connection, to put the frame coalescer on it (through the API server's
// byte copy, every Write of the framer would otherwise travel as a TLS record, a read and a write
// of its own at each hop) and to tell a refused upgrade from a failed connection.
func (d *RESTDialer) dialSPDY(u *url.URL) (httpstream.Connection, string, error) {
	transport, upgrader, err := spdy.RoundTripperFor(d.config)
	if err != nil {
		return nil, "", err
	}
	if rt, ok := upgrader.(*apispdy.SpdyRoundTripper); ok {
		up := &coalescingUpgrader{rt: rt, coalesce: d.CoalesceFrames, batch: d.BatchReceives}
		if transport, err = rest.HTTPWrappersForConfig(d.config, up); err != nil {
			return nil, "", err
		}
		upgrader = up
	}
	req, err := http.NewRequest(http.MethodPost, u.String(), nil)
	if err != nil {
		return nil, "", err
	}
	return spdy.Negotiate(upgrader, &http.Client{Transport: transport}, req, clientportforward.PortForwardProtocolV1Name)
}

// coalescingUpgrader performs apimachinery's SPDY upgrade (its round tripper dials, through
// proxies and with the config's TLS) but keeps the upgraded connection, which the round tripper
// does not expose, to put the frame coalescer on it when coalesce is set.
type coalescingUpgrader struct {
	rt       *apispdy.SpdyRoundTripper
	coalesce bool
	batch    bool
	conn     net.Conn
}

func (c *coalescingUpgrader) RoundTrip(req *http.Request) (*http.Response, error) {
	req = utilnet.CloneRequest(req)
	req.Header.Add(httpstream.HeaderConnection, httpstream.HeaderUpgrade)
	req.Header.Add(httpstream.HeaderUpgrade, apispdy.HeaderSpdy31)
	conn, err := c.rt.Dial(req)
	if err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if c.conn != nil { // a redirect: only the last connection is upgraded
		c.conn.Close()
	}
	c.conn = conn
	return resp, nil
}

func (c *coalescingUpgrader) NewConnection(resp *http.Response) (httpstream.Connection, error) {
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		!strings.Contains(strings.ToLower(resp.Header.Get(httpstream.HeaderConnection)), "upgrade") ||
		!strings.Contains(strings.ToLower(resp.Header.Get(httpstream.HeaderUpgrade)), strings.ToLower(apispdy.HeaderSpdy31)) {
		// apimachinery's own check turns the refusal into the error kubectl prints; it reads the
		// body, which still comes from the connection, so the connection closes after it.
		_, err := c.rt.NewConnection(resp)
		if c.conn != nil {
			c.conn.Close()
		}
		return nil, &refusedUpgradeError{err}
	}
	return startConn(c.conn, c.coalesce, c.batch)
}

// startConn starts the SPDY client connection over an upgraded connection, with the frame
// coalescer between them when coalesce is set, and batching receives when batch is set and the
// connection is a TCP socket on Linux.
func startConn(conn net.Conn, coalesce, batch bool) (httpstream.Connection, error) {
	if coalesce {
		conn = &frameCoalescer{Conn: conn}
	}
	var batcher *receiveBatcher
	if batch {
		batcher = newReceiveBatcher(lowWaterSetter(conn))
	}
	c, err := newClientConn(conn, clientportforward.PingPeriod, batcher)
	if err != nil {
		return nil, err // not a nil *clientConn in a non-nil interface
	}
	return c, nil
}

// dialWebSocket is client-go's NewSPDYOverWebsocketDialer with the frame coalescer between the
// SPDY connection and the WebSocket.
func (d *RESTDialer) dialWebSocket(u *url.URL) (httpstream.Connection, string, error) {
	transport, holder, err := websocket.RoundTripperFor(d.config)
	if err != nil {
		return nil, "", err
	}
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", err
	}
	ws, err := websocket.Negotiate(transport, holder, req, portforwardconstants.WebsocketsSPDYTunnelingPortForwardV1)
	if err != nil {
		return nil, "", err
	}
	protocol := strings.TrimPrefix(ws.Subprotocol(), portforwardconstants.WebsocketsSPDYTunnelingPrefix)
	conn, err := startConn(clientportforward.NewTunnelingConnection("client", ws), d.CoalesceFrames, d.BatchReceives)
	if err != nil {
		return nil, "", err
	}
	return conn, protocol, nil
}

// dialContext runs a context-less httpstream dial, returning early when ctx ends; a connection
// that arrives afterwards is closed.
func dialContext(ctx context.Context, dial func() (httpstream.Connection, string, error)) (httpstream.Connection, error) {
	type result struct {
		conn  httpstream.Connection
		proto string
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		c, p, err := dial()
		ch <- result{c, p, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		if r.proto != clientportforward.PortForwardProtocolV1Name {
			r.conn.Close()
			return nil, fmt.Errorf("unable to negotiate protocol: client supports %q, server returned %q", clientportforward.PortForwardProtocolV1Name, r.proto)
		}
		return r.conn, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
}
