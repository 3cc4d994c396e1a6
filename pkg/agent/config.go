// Package agent is the in-cluster end of an intercept: one agent per intercepted Service listens on
// every port of the Service (its data ports) and on a control port where CLI sessions attach over a
// tunnel. Each accepted connection is routed: stolen (piped to a session's laptop), mirrored
// (served by the shadow Service, a copy sent to the laptop) or passed through to the shadow Service.
//
// This package is the data plane and imports no Kubernetes code: sessions are looked up through a
// SessionStore and admission results are reported through Config.OnSessionEvent, so the parts that
// read and write Leases plug in from outside.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
)

// DataPort is one port of the intercepted Service as the agent serves it.
type DataPort struct {
	// Name is the Service port's name ("" for a single unnamed port).
	Name string
	// Port is the Service port number: what sessions name when they intercept it.
	Port int32
	// ListenPort is where the agent listens: the Service's target port, since the Service's
	// selector (not its ports) is switched to the agent. Defaults to Port.
	ListenPort int32
	// Protocol is the Service port's protocol; only TCP is served.
	Protocol string
	// Upstream is host:port of the same port on the shadow Service (the original pods), where
	// unintercepted and mirrored traffic goes.
	Upstream string
	// AppProtocol is the Service port's appProtocol, if set. With the port's name it tells whether
	// the port carries HTTP (see SpeaksHTTP): header and path rules are refused on ports known
	// not to, and ports known to are sniffed without a timeout.
	AppProtocol string
}

// SpeaksHTTP tells whether the port carries plain HTTP (HTTP/1.x or h2c), from its appProtocol
// and name; known is false when neither says.
func (p *DataPort) SpeaksHTTP() (isHTTP, known bool) {
	return match.PortSpeaksHTTP(p.AppProtocol, p.Name)
}

// Key is how logs and metrics name the port: its name, else its number.
func (p *DataPort) Key() string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(int(p.Port))
}

// String renders the port in the --data-port flag syntax.
func (p DataPort) String() string {
	ports := strconv.Itoa(int(p.Port))
	if p.ListenPort != 0 && p.ListenPort != p.Port {
		ports += ":" + strconv.Itoa(int(p.ListenPort))
	}
	proto := p.Protocol
	if proto == "" {
		proto = "TCP"
	}
	s := fmt.Sprintf("%s=%s/%s=%s", p.Name, ports, proto, p.Upstream)
	if p.AppProtocol != "" {
		s += "=" + p.AppProtocol
	}
	return s
}

// ParseDataPort parses NAME=PORT[:LISTEN][/PROTOCOL]=UPSTREAM[=APPPROTOCOL], e.g.
// "http=80:8080/TCP=api-shadow:80" or "web=80:8080/TCP=api-shadow:80=kubernetes.io/h2c" (NAME may be
// empty for a Service's single unnamed port; APPPROTOCOL is the Service port's appProtocol).
func ParseDataPort(s string) (DataPort, error) {
	parts := strings.Split(s, "=")
	if len(parts) != 3 && len(parts) != 4 {
		return DataPort{}, fmt.Errorf("data port %q: want NAME=PORT[:LISTEN][/PROTOCOL]=UPSTREAM[=APPPROTOCOL]", s)
	}
	p := DataPort{Name: parts[0], Protocol: "TCP", Upstream: parts[2]}
	if len(parts) == 4 {
		if parts[3] == "" {
			return DataPort{}, fmt.Errorf("data port %q: empty appProtocol after the last =", s)
		}
		p.AppProtocol = parts[3]
	}
	ports := parts[1]
	if i := strings.IndexByte(ports, '/'); i >= 0 {
		p.Protocol = strings.ToUpper(ports[i+1:])
		ports = ports[:i]
	}
	port, listen, hasListen := strings.Cut(ports, ":")
	n, err := parsePortNumber(port)
	if err != nil {
		return DataPort{}, fmt.Errorf("data port %q: %w", s, err)
	}
	p.Port, p.ListenPort = n, n
	if hasListen {
		if p.ListenPort, err = parsePortNumber(listen); err != nil {
			return DataPort{}, fmt.Errorf("data port %q: listen port: %w", s, err)
		}
	}
	if err := p.validate(); err != nil {
		return DataPort{}, err
	}
	return p, nil
}

func parsePortNumber(s string) (int32, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port number %q", s)
	}
	return int32(n), nil
}

func (p *DataPort) validate() error {
	if p.Port < 1 || p.Port > 65535 {
		return fmt.Errorf("data port %s: port %d out of range", p.Key(), p.Port)
	}
	if p.ListenPort < 0 || p.ListenPort > 65535 {
		return fmt.Errorf("data port %s: listen port %d out of range", p.Key(), p.ListenPort)
	}
	if p.Protocol != "" && p.Protocol != "TCP" {
		return fmt.Errorf("data port %s: protocol %s is not supported (only TCP can be intercepted)", p.Key(), p.Protocol)
	}
	if _, _, err := net.SplitHostPort(p.Upstream); err != nil {
		return fmt.Errorf("data port %s: upstream %q: %w", p.Key(), p.Upstream, err)
	}
	return nil
}

// Defaults of Config.
const (
	DefaultControlPort      = 7070
	DefaultHealthPort       = 7071
	DefaultMirrorBuffer     = 1 << 20
	DefaultMirrorStall      = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 5 * time.Second
	DefaultShutdownGrace    = 10 * time.Second
	// DefaultShutdownDrain is how long a stopping agent keeps taking new connections (see
	// Server.Drain): kube-proxy's iptables mode syncs at most once a second.
	DefaultShutdownDrain = 2 * time.Second
	// DefaultSniffTimeout is how long a connection on a port with request rules may stay silent
	// before it is taken for a server-speaks-first protocol and routed whole (unless the port is
	// known to carry HTTP, where the agent waits for the client's first bytes however long).
	DefaultSniffTimeout = 300 * time.Millisecond
	// DefaultMirrorConcurrency bounds the per-request mirror copies in flight to laptops.
	DefaultMirrorConcurrency = 64
)

// Config configures a Server.
type Config struct {
	// Ports are the data ports: every port of the intercepted Service. At least one.
	Ports []DataPort
	// ListenHost is the address data, control and health listeners bind ("" = all interfaces).
	ListenHost string
	// ControlPort is where CLI tunnels attach (through a port-forward).
	ControlPort int
	// HealthPort serves /healthz, /readyz and /metrics.
	HealthPort int
	// Listen opens the listeners; defaults to net.Listen. Tests swap it to bind ephemeral ports.
	Listen func(network, address string) (net.Listener, error)

	// Sessions looks sessions up when they attach. Required.
	Sessions SessionStore
	// Admit decides whether a session may attach next to the live ones; defaults to
	// AdmitFor(Ports), the rule-aware policy.
	Admit func(candidate SessionSpec, live []SessionSpec) error
	// Router decides where each connection goes; defaults to HTTPRouter, which routes whole
	// connections like PortRouter on ports without request rules and per HTTP request on the others.
	Router Router
	// SniffTimeout bounds the wait for a client's first bytes on ports with request rules whose
	// protocol is not known (DataPort.SpeaksHTTP); defaults to DefaultSniffTimeout.
	SniffTimeout time.Duration
	// MirrorConcurrency bounds the per-request mirror copies in flight; beyond it copies are
	// dropped and counted. Defaults to DefaultMirrorConcurrency.
	MirrorConcurrency int
	// OnSessionEvent, if set, is told when sessions attach, are refused and detach (in production
	// it writes the admission result onto the session's Lease). It must not block.
	OnSessionEvent func(SessionEvent)

	// DialUpstream dials the shadow Service; defaults to a net.Dialer with DefaultDialTimeout.
	DialUpstream func(ctx context.Context, network, addr string) (net.Conn, error)
	// MirrorBuffer bounds the bytes queued for one mirror copy; beyond it the copy is dropped so
	// that a slow laptop never slows the original path.
	MirrorBuffer int
	// MirrorStall is how long a mirror stream may refuse data before its copy is dropped.
	MirrorStall time.Duration
	// MirrorResponses also sends the laptop a copy of the upstream's answers (on a second stream).
	MirrorResponses bool
	// HandshakeTimeout bounds a tunnel's handshake.
	HandshakeTimeout time.Duration
	// ShutdownGrace is how long in-flight connections may finish after shutdown starts.
	ShutdownGrace time.Duration
	// UpstreamReady, if set, is asked by /readyz until it first succeeds: an agent whose upstream
	// (the shadow Service) is not routable yet would reset the connections a switched Service
	// sends it, so it must not be Ready before.
	UpstreamReady func(ctx context.Context) error
	// ShutdownDrain is how long a stopping agent keeps serving new connections, not ready, before
	// it closes its listeners (0: none; the command's default is DefaultShutdownDrain).
	ShutdownDrain time.Duration

	// Version is reported to CLIs in the handshake.
	Version string
	// Logger receives JSON logs; nil discards.
	Logger *slog.Logger
	// Registry is where metrics are registered; nil makes a private one (served on /metrics).
	Registry *prometheus.Registry
}

func (c *Config) complete() error {
	if len(c.Ports) == 0 {
		return errors.New("agent config: no data ports")
	}
	if c.Sessions == nil {
		return errors.New("agent config: no session store")
	}
	seen := map[string]bool{}
	listens := map[int32]bool{}
	for i := range c.Ports {
		p := &c.Ports[i]
		if p.ListenPort == 0 {
			p.ListenPort = p.Port
		}
		if p.Protocol == "" {
			p.Protocol = "TCP"
		}
		if err := p.validate(); err != nil {
			return fmt.Errorf("agent config: %w", err)
		}
		if seen[p.Key()] {
			return fmt.Errorf("agent config: data port %s given twice", p.Key())
		}
		seen[p.Key()] = true
		if listens[p.ListenPort] && p.ListenPort != 0 {
			return fmt.Errorf("agent config: two data ports listen on %d", p.ListenPort)
		}
		listens[p.ListenPort] = true
	}
	if c.ControlPort == 0 {
		c.ControlPort = DefaultControlPort
	}
	if c.HealthPort == 0 {
		c.HealthPort = DefaultHealthPort
	}
	if c.Listen == nil {
		c.Listen = net.Listen
	}
	if c.Admit == nil {
		c.Admit = AdmitFor(c.Ports)
	}
	if c.Router == nil {
		c.Router = HTTPRouter{}
	}
	if c.SniffTimeout <= 0 {
		c.SniffTimeout = DefaultSniffTimeout
	}
	if c.MirrorConcurrency <= 0 {
		c.MirrorConcurrency = DefaultMirrorConcurrency
	}
	if c.DialUpstream == nil {
		d := &net.Dialer{Timeout: DefaultDialTimeout}
		c.DialUpstream = d.DialContext
	}
	if c.MirrorBuffer <= 0 {
		c.MirrorBuffer = DefaultMirrorBuffer
	}
	if c.MirrorStall <= 0 {
		c.MirrorStall = DefaultMirrorStall
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	return nil
}
