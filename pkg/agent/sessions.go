package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// MatchRule is one request-matching rule of an intercept; package match owns its meaning.
// session.MatchRule converts to it directly: agent.MatchRule(m).
type MatchRule = match.Rule

// SessionSpec is what the agent knows of a session: in production, decoded from its Lease.
type SessionSpec struct {
	// ID is the session id.
	ID string
	// User is who runs it, for refusal messages.
	User string
	// Port is the intercepted Service port number; PortName its name, if any.
	Port     int32
	PortName string
	// Mode is steal or mirror.
	Mode tunnel.Mode
	// Match holds per-request rules; empty means every connection of the port.
	Match []MatchRule
	// TokenHash is the hash of the session's tunnel token (tunnel.HashToken).
	TokenHash string
	// StartTime orders sessions: on equal specificity the older one wins.
	StartTime time.Time
}

// InterceptsPort reports whether s intercepts port p (by number, or by name when both have one).
func (s *SessionSpec) InterceptsPort(p *DataPort) bool {
	if s.PortName != "" && p.Name != "" {
		return s.PortName == p.Name
	}
	return s.Port == p.Port
}

// ErrUnknownSession is returned by a SessionStore for a session it does not know (yet).
var ErrUnknownSession = errors.New("unknown session")

// SessionStore looks up sessions as they attach. In production it reads the Leases of the
// intercepted Service from an informer cache.
type SessionStore interface {
	// Lookup returns the spec of session id, or an error wrapping ErrUnknownSession.
	Lookup(ctx context.Context, id string) (SessionSpec, error)
}

// StaticSessions is a SessionStore holding a fixed set of sessions, for tests and for running the
// agent by hand.
type StaticSessions map[string]SessionSpec

// Lookup implements SessionStore.
func (m StaticSessions) Lookup(_ context.Context, id string) (SessionSpec, error) {
	s, ok := m[id]
	if !ok {
		return SessionSpec{}, fmt.Errorf("session %s: %w", id, ErrUnknownSession)
	}
	return s, nil
}

// DefaultAdmit is AdmitFor without knowledge of the ports' protocols: rules are allowed on every
// port (connections that turn out not to be HTTP are then routed whole).
func DefaultAdmit(candidate SessionSpec, live []SessionSpec) error {
	return admit(nil, candidate, live)
}

// AdmitFor returns the rule-aware admission policy for an agent serving ports. A session is
// refused when its rules do not compile; when it holds header/path rules on a port known not to
// carry HTTP; when it steals a whole port that carries another session's stealing rules (it would
// silently take their traffic); when it holds rules on a port another session steals whole; when
// another session already steals with the identical rule set (it would never get a request);
// and, as before, when a second session steals a whole port. Mirrors never take traffic from
// anyone, so they only conflict with nothing. Refusals name the other session's user and rules.
func AdmitFor(ports []DataPort) func(candidate SessionSpec, live []SessionSpec) error {
	ports = slices.Clone(ports)
	return func(candidate SessionSpec, live []SessionSpec) error {
		return admit(ports, candidate, live)
	}
}

func admit(ports []DataPort, candidate SessionSpec, live []SessionSpec) error {
	if _, err := match.Compile(candidate.Match); err != nil {
		return fmt.Errorf("invalid match rules: %w", err)
	}
	hasRules := len(candidate.Match) > 0
	if hasRules {
		for i := range ports {
			p := &ports[i]
			if !candidate.InterceptsPort(p) {
				continue
			}
			if isHTTP, known := p.SpeaksHTTP(); known && !isHTTP {
				what := "its name " + strconv.Quote(p.Name)
				if p.AppProtocol != "" {
					what = "its appProtocol " + strconv.Quote(p.AppProtocol)
				}
				return fmt.Errorf("port %s does not carry HTTP (%s), so %s can never match; intercept the whole port instead (no --header/--path flags)",
					portLabel(candidate), what, match.Describe(candidate.Match))
			}
		}
	}
	if candidate.Mode != tunnel.ModeSteal {
		return nil
	}
	for _, other := range live {
		if other.ID == candidate.ID || other.Mode != tunnel.ModeSteal || !samePort(candidate, other) {
			continue
		}
		otherRules := len(other.Match) > 0
		switch {
		case !hasRules && !otherRules:
			return fmt.Errorf("port %s is already intercepted (steal) by %s in session %s", portLabel(candidate), userLabel(other.User), other.ID)
		case !hasRules && otherRules:
			return fmt.Errorf("port %s carries request rules (%s, held by %s in session %s): stealing the whole port would take their traffic; add a rule of your own, e.g. --header x-dev=%s",
				portLabel(candidate), match.Describe(other.Match), userLabel(other.User), other.ID, headerHint(candidate.User))
		case hasRules && !otherRules:
			return fmt.Errorf("port %s is wholly stolen by %s in session %s, so %s would never get a request; ask them to intercept with a rule (e.g. --header), or wait until that session ends",
				portLabel(candidate), userLabel(other.User), other.ID, match.Describe(candidate.Match))
		case match.Identical(candidate.Match, other.Match):
			return fmt.Errorf("rule %s on port %s is already held by %s in session %s; choose another value",
				match.Describe(candidate.Match), portLabel(candidate), userLabel(other.User), other.ID)
		}
	}
	return nil
}

func headerHint(user string) string {
	if user == "" {
		return "me"
	}
	return strings.ReplaceAll(strings.Fields(user + " x")[0], "=", "")
}

func samePort(a, b SessionSpec) bool {
	if a.PortName != "" && b.PortName != "" {
		return a.PortName == b.PortName
	}
	return a.Port == b.Port
}

func portLabel(s SessionSpec) string {
	if s.PortName != "" {
		return fmt.Sprintf("%d (%s)", s.Port, s.PortName)
	}
	return fmt.Sprint(s.Port)
}

func userLabel(u string) string {
	if u == "" {
		return "another user"
	}
	return u
}

// Session is a live, attached CLI session.
type Session struct {
	// Spec is the session as looked up when it attached.
	Spec SessionSpec
	// Attached is when the tunnel was accepted.
	Attached time.Time

	rules  *match.Set
	mux    *yamux.Session
	ctx    context.Context
	cancel context.CancelCauseFunc
	// requests counts the requests routed to the session (stolen or mirrored copies), for `list`.
	requests atomic.Int64
}

// Requests is how many requests have been routed to the session since it attached.
func (s *Session) Requests() int64 { return s.requests.Load() }

// Rules returns the session's compiled match rules (empty for a whole-port intercept).
func (s *Session) Rules() *match.Set { return s.rules }

// Done is closed when the session detaches; in-flight stolen connections end with it.
func (s *Session) Done() <-chan struct{} { return s.ctx.Done() }

// OpenStream opens a stream to the session's laptop, prefixed with h. The stream is aborted if the
// session detaches.
func (s *Session) OpenStream(h *tunnel.Header) (net.Conn, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream to session %s: %w", s.Spec.ID, err)
	}
	if err := tunnel.WriteHeader(st, h); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("open stream to session %s: %w", s.Spec.ID, err)
	}
	return st, nil
}

// close ends the session: closing the yamux session closes every stream on it, the control stream
// included, so the CLI notices at once.
func (s *Session) close(cause error) {
	s.cancel(cause)
	_ = s.mux.Close()
}

// SessionEventKind says what happened to a session.
type SessionEventKind string

const (
	// SessionAttached: the session is admitted and routes traffic.
	SessionAttached SessionEventKind = "Attached"
	// SessionRefused: authentication or admission refused the session.
	SessionRefused SessionEventKind = "Refused"
	// SessionDetached: the tunnel dropped or the session was evicted.
	SessionDetached SessionEventKind = "Detached"
)

// SessionEvent reports a session's admission or departure.
type SessionEvent struct {
	Kind      SessionEventKind
	SessionID string
	// Spec is set when the session was known.
	Spec *SessionSpec
	// Reason says why it was refused or detached.
	Reason string
	// Retryable is set on refusals that may clear by themselves (the Lease not seen yet).
	Retryable bool
	// Authenticated is set on refusals of a client that proved the session's token: an
	// admission decision about the session. Refusals of unauthenticated attempts say nothing
	// about the real session and must not be recorded against it.
	Authenticated bool
}

// registry holds the live sessions.
type registry struct {
	mu   sync.Mutex
	byID map[string]*Session
	// tables caches each port's routing table; any change of the sessions bumps gen and clears it.
	tables map[*DataPort]*routeTable
	gen    uint64
}

func newRegistry() *registry {
	return &registry{byID: map[string]*Session{}, tables: map[*DataPort]*routeTable{}}
}

// routeTable is a port's sessions in routing order, for the per-request HTTP router.
type routeTable struct {
	// steals are the stealing sessions in precedence order: more specific rules first, then the
	// older session, then the lower ID. A whole-port steal (no rules) comes last.
	steals []*Session
	// mirrors are the mirroring sessions, oldest first.
	mirrors []*Session
	// rules is set when some session of the port holds rules: HTTP routing is needed.
	rules bool
}

// table returns p's routing table, cached until the sessions change.
func (r *registry) table(p *DataPort) *routeTable {
	r.mu.Lock()
	if t, ok := r.tables[p]; ok {
		r.mu.Unlock()
		return t
	}
	gen := r.gen
	r.mu.Unlock()
	t := &routeTable{}
	for _, s := range r.forPort(p) {
		if !s.rules.Empty() {
			t.rules = true
		}
		switch s.Spec.Mode {
		case tunnel.ModeSteal:
			t.steals = append(t.steals, s)
		case tunnel.ModeMirror:
			t.mirrors = append(t.mirrors, s)
		}
	}
	// forPort's order (oldest, then ID) breaks ties.
	slices.SortStableFunc(t.steals, func(a, b *Session) int {
		return b.rules.Specificity() - a.rules.Specificity()
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	// A table built from sessions that changed meanwhile serves this caller but is not cached.
	if r.gen == gen {
		r.tables[p] = t
	}
	return t
}

// changedLocked invalidates the routing tables; r.mu is held.
func (r *registry) changedLocked() {
	r.gen++
	clear(r.tables)
}

// admit checks s against the live sessions and registers it, atomically so that two sessions
// attaching at once cannot both take a port. A live session with the same ID is the same CLI
// reconnecting (its old tunnel may not have noticed it is dead): it is replaced and returned.
func (r *registry) admit(s *Session, admit func(SessionSpec, []SessionSpec) error) (replaced *Session, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	live := make([]SessionSpec, 0, len(r.byID))
	for id, other := range r.byID {
		if id != s.Spec.ID {
			live = append(live, other.Spec)
		}
	}
	if err := admit(s.Spec, live); err != nil {
		return nil, err
	}
	replaced = r.byID[s.Spec.ID]
	r.byID[s.Spec.ID] = s
	r.changedLocked()
	return replaced, nil
}

// remove unregisters s if it is still the registered session for its ID.
func (r *registry) remove(s *Session) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID[s.Spec.ID] != s {
		return false
	}
	delete(r.byID, s.Spec.ID)
	r.changedLocked()
	return true
}

func (r *registry) get(id string) *Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

// forPort returns the live sessions intercepting p, oldest first (ties broken by ID so that the
// order, and thus routing, is deterministic).
func (r *registry) forPort(p *DataPort) []*Session {
	r.mu.Lock()
	var out []*Session
	for _, s := range r.byID {
		if s.Spec.InterceptsPort(p) {
			out = append(out, s)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b *Session) int {
		if c := a.Spec.StartTime.Compare(b.Spec.StartTime); c != 0 {
			return c
		}
		return strings.Compare(a.Spec.ID, b.Spec.ID)
	})
	return out
}

func (r *registry) all() []*Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Session, 0, len(r.byID))
	for _, s := range r.byID {
		out = append(out, s)
	}
	return out
}

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID)
}
