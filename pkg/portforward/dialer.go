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
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

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

// RESTDialer dials pods/portforward through the API server the way kubectl does: WebSocket
// (SPDY tunnelled over WebSocket, the only way through some proxies and the default since
// Kubernetes 1.31), falling back to a SPDY upgrade when the server does not support it.
type RESTDialer struct {
	// CoalesceFrames writes each SPDY frame in one piece, as one WebSocket message or one write
	// to the upgraded SPDY connection, instead of three or more (see frameCoalescer); on by
	// default.
	CoalesceFrames bool

	config     *rest.Config
	client     rest.Interface
	websockets bool
	// spdyOnly remembers a failed WebSocket upgrade so that later dials to the same API server
	// skip the doomed first attempt.
	spdyOnly atomic.Bool
}

// NewRESTDialer returns a dialer for the cluster of config. client is a core/v1 REST client (e.g.
// clientset.CoreV1().RESTClient()), used to build the pods/portforward URLs. websockets false
// forces SPDY (kubectl's KUBECTL_PORT_FORWARD_WEBSOCKETS=false).
func NewRESTDialer(config *rest.Config, client rest.Interface, websockets bool) *RESTDialer {
	return &RESTDialer{config: config, client: client, websockets: websockets, CoalesceFrames: true}
}

// DialPod implements ConnectionDialer.
func (d *RESTDialer) DialPod(ctx context.Context, pod PodRef) (httpstream.Connection, error) {
	u := d.client.Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	conn, err := dialContext(ctx, func() (httpstream.Connection, string, error) { return d.dial(u) })
	if err != nil {
		return nil, fmt.Errorf("port-forward to pod %s: %w", pod, err)
	}
	return conn, nil
}

func (d *RESTDialer) dial(u *url.URL) (httpstream.Connection, string, error) {
	if d.websockets && !d.spdyOnly.Load() {
		conn, proto, err := d.dialWebSocket(u)
		if err == nil || !(httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)) {
			return conn, proto, err
		}
		klog.V(2).InfoS("WebSocket port-forward refused; falling back to SPDY", "err", err)
		d.spdyOnly.Store(true)
	}
	return d.dialSPDY(u)
}

// dialSPDY is client-go's SPDY dial (spdy.RoundTripperFor, then Negotiate) with the frame
// coalescer between the SPDY connection and the upgraded TLS connection: through the API server's
// byte copy, every Write of the framer would otherwise travel as a TLS record, a read and a
// write of its own at each hop.
func (d *RESTDialer) dialSPDY(u *url.URL) (httpstream.Connection, string, error) {
	transport, upgrader, err := spdy.RoundTripperFor(d.config)
	if err != nil {
		return nil, "", err
	}
	if rt, ok := upgrader.(*apispdy.SpdyRoundTripper); ok && d.CoalesceFrames {
		up := &coalescingUpgrader{rt: rt}
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
// does not expose, to put the frame coalescer on it.
type coalescingUpgrader struct {
	rt   *apispdy.SpdyRoundTripper
	conn net.Conn
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
		return nil, err
	}
	return apispdy.NewClientConnectionWithPings(&frameCoalescer{Conn: c.conn}, clientportforward.PingPeriod)
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
	var conn net.Conn = clientportforward.NewTunnelingConnection("client", ws)
	if d.CoalesceFrames {
		conn = &frameCoalescer{Conn: conn}
	}
	spdyConn, err := apispdy.NewClientConnectionWithPings(conn, clientportforward.PingPeriod)
	if err != nil {
		conn.Close()
		return nil, "", err
	}
	return spdyConn, protocol, nil
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
