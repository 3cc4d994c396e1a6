// Package podproxy opens byte streams to a pod's port through the API server's pods/proxy
// subresource: an HTTP/1.1 Upgrade request that the API server relays to the pod's IP and, once
// the pod answers 101 Switching Protocols, turns into a plain copy of bytes both ways.
//
// Compared with a port-forward (API server → kubelet → container runtime → the pod's loopback),
// the path is API server → pod: two hops and two parsers of every frame fewer. It needs what a
// port-forward does not: the API server must reach pod IPs (it does on most clusters, directly or
// through Konnectivity; a NetworkPolicy may block it), the user "get" on pods/proxy, and a server
// in the pod that answers the upgrade.
package podproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// Dialer opens upgraded connections through pods/proxy. It is safe for concurrent use.
type Dialer struct {
	client rest.Interface
	rt     http.RoundTripper
	// Path is requested after .../pods/NAME:PORT/proxy, and Protocol is the Upgrade token.
	path, protocol string
}

// NewDialer returns a Dialer for the cluster of config, asking for path with the Upgrade token
// protocol. client is a core/v1 REST client (clientset.CoreV1().RESTClient()), used for URLs.
func NewDialer(config *rest.Config, client rest.Interface, path, protocol string) (*Dialer, error) {
	tlsConfig, err := rest.TLSConfigFor(config)
	if err != nil {
		return nil, fmt.Errorf("TLS configuration for the API server: %w", err)
	}
	if tlsConfig != nil {
		// An upgrade is an HTTP/1.1 feature: HTTP/2 has no Upgrade.
		tlsConfig = tlsConfig.Clone()
		tlsConfig.NextProtos = []string{"http/1.1"}
	}
	proxy := http.ProxyFromEnvironment
	if config.Proxy != nil {
		proxy = config.Proxy
	}
	dial := config.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	transport := &http.Transport{
		Proxy: proxy, DialContext: dial, TLSClientConfig: tlsConfig, TLSHandshakeTimeout: 10 * time.Second,
		// Each dial is one upgraded connection, never returned to a pool.
		DisableKeepAlives: true,
	}
	// The same authentication wrappers (bearer tokens, exec plugins, impersonation, user agent)
	// that client-go puts around its own transports.
	rt, err := rest.HTTPWrappersForConfig(config, transport)
	if err != nil {
		return nil, fmt.Errorf("authentication for the API server: %w", err)
	}
	return &Dialer{client: client, rt: rt, path: path, protocol: protocol}, nil
}

// UpgradeError is an API server's or pod's answer other than 101 Switching Protocols.
type UpgradeError struct {
	StatusCode int
	// Message is the start of the answer's body (the API server's Status message, or the pod's).
	Message string
}

func (e *UpgradeError) Error() string {
	msg := strings.TrimSpace(e.Message)
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("upgrade refused (HTTP %d): %s", e.StatusCode, msg)
}

// Dial opens an upgraded connection to port of the pod namespace/name. ctx bounds the dial and
// the upgrade, not the connection's life.
func (d *Dialer) Dial(ctx context.Context, namespace, name string, port int32) (net.Conn, error) {
	u := d.client.Get().Namespace(namespace).Resource("pods").Name(name + ":" + strconv.Itoa(int(port))).
		SubResource("proxy").Suffix(d.path).URL()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", d.protocol)
	resp, err := d.rt.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("pods/proxy to %s/%s port %d: %w", namespace, name, port, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("pods/proxy to %s/%s port %d: %w", namespace, name, port, &UpgradeError{StatusCode: resp.StatusCode, Message: statusMessage(body)})
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok || !strings.EqualFold(resp.Header.Get("Upgrade"), d.protocol) {
		_ = resp.Body.Close()
		return nil, fmt.Errorf("pods/proxy to %s/%s port %d: the answer switched to %q, not %q", namespace, name, port, resp.Header.Get("Upgrade"), d.protocol)
	}
	// net/http hands the upgraded connection over: ending ctx from now on does not close it.
	return &conn{rwc: rwc, remote: podAddr{namespace: namespace, name: name, port: port}}, nil
}

// statusMessage returns the message of a Kubernetes Status body, or the body itself.
func statusMessage(body []byte) string {
	var st metav1.Status
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" && st.Message != "" {
		return st.Message
	}
	return string(body)
}

// ErrDeadlineUnsupported is returned by the deadline methods of a pods/proxy connection: the
// upgraded body net/http hands back cannot interrupt a blocked read or write.
var ErrDeadlineUnsupported = errors.New("pods/proxy connections do not support deadlines")

// conn is an upgraded pods/proxy connection as a net.Conn.
type conn struct {
	rwc    io.ReadWriteCloser
	remote podAddr
}

func (c *conn) Read(p []byte) (int, error)       { return c.rwc.Read(p) }
func (c *conn) Write(p []byte) (int, error)      { return c.rwc.Write(p) }
func (c *conn) Close() error                     { return c.rwc.Close() }
func (c *conn) LocalAddr() net.Addr              { return podAddr{} }
func (c *conn) RemoteAddr() net.Addr             { return c.remote }
func (c *conn) SetDeadline(time.Time) error      { return ErrDeadlineUnsupported }
func (c *conn) SetReadDeadline(time.Time) error  { return ErrDeadlineUnsupported }
func (c *conn) SetWriteDeadline(time.Time) error { return ErrDeadlineUnsupported }

type podAddr struct {
	namespace, name string
	port            int32
}

func (a podAddr) Network() string { return "pods/proxy" }
func (a podAddr) String() string {
	if a.name == "" {
		return "local"
	}
	return fmt.Sprintf("%s/%s:%d", a.namespace, a.name, a.port)
}
