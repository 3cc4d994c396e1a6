package agent

import (
	"context"
	"net"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// Conn is one accepted connection on a data port, as a Router sees it.
type Conn struct {
	// Conn is the client connection. A Router that peeks at the first bytes (to sniff HTTP) may
	// replace it with a wrapper that replays them; the data plane uses whatever is here afterwards.
	net.Conn
	// ID numbers the connection in logs and tunnel headers.
	ID uint64
	// Port is the data port the connection arrived on.
	Port *DataPort

	srv *Server
}

// Header returns the tunnel header describing this connection for a stream to the laptop.
func (c *Conn) Header(mode tunnel.Mode, routeID string) *tunnel.Header {
	return &tunnel.Header{
		ConnID:   c.ID,
		Port:     uint16(c.Port.Port),
		PortName: c.Port.Name,
		RouteID:  routeID,
		Peer:     c.RemoteAddr().String(),
		Mode:     mode,
	}
}

// DialUpstream dials the shadow Service for this connection's port. Routers that serve a
// connection themselves (Decision.Handled) use it for the unmatched traffic.
func (c *Conn) DialUpstream(ctx context.Context) (net.Conn, error) {
	return c.srv.dialUpstream(ctx, c.Port)
}

// Decision is where a Router sends one connection.
type Decision struct {
	// Steal, when set, is the session the connection is piped to; nil means the shadow Service
	// (the original pods) serves it.
	Steal *Session
	// Mirrors get a copy of the client's bytes, whoever serves the connection.
	Mirrors []*Session
	// RouteID names the matched rule, for the laptop's output; empty for whole-port intercepts.
	RouteID string
	// Handled means the Router served the connection itself (e.g. an HTTP reverse proxy routing
	// per request, opening streams with Session.OpenStream) and it has been closed.
	Handled bool
}

// Router decides, per accepted connection, where it goes. It is given the live sessions that
// intercept the connection's port, oldest first. Route is called on the connection's own
// goroutine, so it may block (to peek at the first bytes, or to serve the connection entirely).
//
// The per-request HTTP router slots in here: it sniffs the first bytes, and for HTTP/1.x or h2c
// proxies each request to the session whose rules match (or upstream), returning Handled; for
// anything else it falls back to a per-connection Decision.
type Router interface {
	Route(ctx context.Context, c *Conn, sessions []*Session) Decision
}

// RouterFunc adapts a function to Router.
type RouterFunc func(ctx context.Context, c *Conn, sessions []*Session) Decision

// Route implements Router.
func (f RouterFunc) Route(ctx context.Context, c *Conn, sessions []*Session) Decision {
	return f(ctx, c, sessions)
}

// PortRouter routes whole connections: the oldest session stealing the port without match rules
// takes every connection; every mirroring session without rules gets a copy; otherwise the shadow
// Service serves. Sessions with rules are left to a rule-aware Router.
type PortRouter struct{}

// Route implements Router.
func (PortRouter) Route(_ context.Context, _ *Conn, sessions []*Session) Decision {
	var d Decision
	for _, s := range sessions {
		if len(s.Spec.Match) > 0 {
			continue
		}
		switch s.Spec.Mode {
		case tunnel.ModeSteal:
			if d.Steal == nil {
				d.Steal = s
			}
		case tunnel.ModeMirror:
			d.Mirrors = append(d.Mirrors, s)
		}
	}
	return d
}
