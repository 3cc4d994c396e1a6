package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

var (
	errShutdown = errors.New("agent shutting down")
	errReplaced = errors.New("replaced by a new tunnel of the same session")
)

// Server is the agent: data port listeners, the control port where sessions attach, and the
// health/metrics endpoint.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	reg     *registry

	nextConn atomic.Uint64
	// dataActive counts open data connections (not tunnels), for releasing memory when idle.
	dataActive atomic.Int64
	ready      atomic.Bool
	// upstreamReady latches the first success of Config.UpstreamReady.
	upstreamReady atomic.Bool

	// ctx is cancelled when shutdown ends; sessions and per-connection work derive from it.
	ctx    context.Context
	cancel context.CancelFunc
	// handshakes is cancelled when shutdown starts, so that half-open tunnels do not hold it up.
	handshakes     context.Context
	stopHandshakes context.CancelFunc

	mu        sync.Mutex
	started   bool
	dataLns   map[string]net.Listener
	controlLn net.Listener
	healthLn  net.Listener
	health    *http.Server
	conns     map[net.Conn]struct{} // data and tunnel connections, force-closed after the grace
	inflight  sync.WaitGroup        // data connections
	tunnels   sync.WaitGroup        // tunnel connections
	loops     sync.WaitGroup        // accept loops

	// httpPorts is the per-request HTTP machinery of each data port (used by HTTPRouter).
	httpPorts map[*DataPort]*httpPort
	// mirrorSlots bounds the per-request mirror copies in flight.
	mirrorSlots chan struct{}
}

// New validates cfg and returns a Server; Start or Run it.
func New(cfg Config) (*Server, error) {
	ownRegistry := cfg.Registry == nil
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	if ownRegistry {
		cfg.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	hctx, hcancel := context.WithCancel(ctx)
	s := &Server{
		handshakes:     hctx,
		stopHandshakes: hcancel,
		cfg:            cfg,
		log:            cfg.Logger,
		metrics:        newMetrics(cfg.Registry),
		reg:            newRegistry(),
		ctx:            ctx,
		cancel:         cancel,
		dataLns:        map[string]net.Listener{},
		conns:          map[net.Conn]struct{}{},
		httpPorts:      map[*DataPort]*httpPort{},
		mirrorSlots:    make(chan struct{}, cfg.MirrorConcurrency),
	}
	for i := range s.cfg.Ports {
		p := &s.cfg.Ports[i]
		s.httpPorts[p] = newHTTPPort(s, p)
	}
	return s, nil
}

// Run starts the server and serves until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	return s.Shutdown(sctx)
}

// Start binds every listener (failing if any cannot be bound) and serves in the background.
// The agent reports ready once all data ports listen.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("agent already started")
	}
	s.started = true
	listen := func(port int) (net.Listener, error) {
		return s.cfg.Listen("tcp", net.JoinHostPort(s.cfg.ListenHost, strconv.Itoa(port)))
	}
	var err error
	if s.healthLn, err = listen(s.cfg.HealthPort); err != nil {
		return s.abortStart(fmt.Errorf("listen on health port %d: %w", s.cfg.HealthPort, err))
	}
	if s.controlLn, err = listen(s.cfg.ControlPort); err != nil {
		return s.abortStart(fmt.Errorf("listen on control port %d: %w", s.cfg.ControlPort, err))
	}
	for i := range s.cfg.Ports {
		p := &s.cfg.Ports[i]
		ln, err := listen(int(p.ListenPort))
		if err != nil {
			return s.abortStart(fmt.Errorf("listen on data port %s (%d): %w", p.Key(), p.ListenPort, err))
		}
		s.dataLns[p.Key()] = ln
	}

	s.health = &http.Server{Handler: s.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.health.Serve(s.healthLn) }()
	s.loops.Add(1)
	go s.acceptTunnels(s.controlLn)
	for i := range s.cfg.Ports {
		p := &s.cfg.Ports[i]
		s.loops.Add(1)
		go s.acceptData(s.dataLns[p.Key()], p)
	}
	go s.releaseMemoryWhenIdle(MemoryReleaseInterval)
	s.ready.Store(true)
	s.log.Info("agent started", "control", s.controlLn.Addr().String(), "health", s.healthLn.Addr().String(), "ports", len(s.cfg.Ports))
	return nil
}

func (s *Server) abortStart(err error) error {
	for _, ln := range []net.Listener{s.healthLn, s.controlLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
	for _, ln := range s.dataLns {
		_ = ln.Close()
	}
	return err
}

// Drain marks the agent not ready and keeps serving as before for d. When the agent stops, the
// Service has just been switched back (or this pod is being deleted), but kube-proxy on every
// node keeps sending new connections here until it has synced, at most once a second in iptables
// mode; closing the listeners at once would refuse those, or reset the ones in the accept queue.
// It returns after d, or earlier when ctx ends.
func (s *Server) Drain(ctx context.Context, d time.Duration) {
	s.ready.Store(false)
	if d <= 0 {
		return
	}
	s.log.Info("draining: serving new connections until kube-proxy has caught up", "for", d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Shutdown stops accepting, detaches every session (stolen connections end with their tunnel),
// lets other in-flight connections finish until ctx ends, then closes whatever is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.ready.Store(false)
	s.stopHandshakes()
	s.mu.Lock()
	lns := []net.Listener{s.controlLn}
	for _, ln := range s.dataLns {
		lns = append(lns, ln)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		if ln != nil {
			_ = ln.Close()
		}
	}
	s.loops.Wait()
	for _, sess := range s.reg.all() {
		s.detach(sess, errShutdown)
	}
	// HTTP connections idle between requests close now; requests in flight may finish.
	for _, hp := range s.httpPorts {
		go hp.shutdown(ctx)
	}

	done := make(chan struct{})
	go func() { s.inflight.Wait(); s.tunnels.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		n := len(s.conns)
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.log.Warn("shutdown grace expired, closed connections", "connections", n)
		<-done
		err = fmt.Errorf("shutdown: closed %d connections after the grace period: %w", n, ctx.Err())
	}
	s.cancel()
	if s.health != nil {
		hctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.health.Shutdown(hctx)
	}
	s.log.Info("agent stopped")
	return err
}

// Addr returns the bound address of the data port named key (DataPort.Key), or nil.
func (s *Server) Addr(key string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ln, ok := s.dataLns[key]; ok {
		return ln.Addr()
	}
	return nil
}

// ControlAddr returns the bound control address, or nil before Start.
func (s *Server) ControlAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.controlLn == nil {
		return nil
	}
	return s.controlLn.Addr()
}

// HealthAddr returns the bound health/metrics address, or nil before Start.
func (s *Server) HealthAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.healthLn == nil {
		return nil
	}
	return s.healthLn.Addr()
}

// Sessions returns the specs of the live sessions, for the idle check and status reporting.
func (s *Server) Sessions() []SessionSpec {
	all := s.reg.all()
	out := make([]SessionSpec, len(all))
	for i, sess := range all {
		out[i] = sess.Spec
	}
	return out
}

// SessionRequests returns, per attached session id, the requests routed to it so far.
func (s *Server) SessionRequests() map[string]int64 {
	out := map[string]int64{}
	for _, sess := range s.reg.all() {
		out[sess.Spec.ID] = sess.Requests()
	}
	return out
}

// Evict detaches session id, e.g. because its Lease expired or was deleted. It reports whether the
// session was attached.
func (s *Server) Evict(id, reason string) bool {
	sess := s.reg.get(id)
	if sess == nil {
		return false
	}
	return s.detach(sess, errors.New(reason))
}

func (s *Server) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if check := s.cfg.UpstreamReady; check != nil && !s.upstreamReady.Load() {
			if err := check(r.Context()); err != nil {
				http.Error(w, "upstream not reachable yet: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			s.upstreamReady.Store(true)
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{Registry: s.cfg.Registry}))
	return mux
}

// track registers a connection for forced close at the end of the shutdown grace; it returns
// false when shutdown has already begun.
func (s *Server) track(c net.Conn, wg *sync.WaitGroup) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return false
	}
	s.conns[c] = struct{}{}
	wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn, wg *sync.WaitGroup) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	wg.Done()
}

// acceptLoop accepts until the listener is closed, backing off on transient errors (EMFILE) rather
// than spinning.
func (s *Server) acceptLoop(ln net.Listener, what string, serve func(net.Conn)) {
	defer s.loops.Done()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "listener", what, "err", err, "retry", delay)
			s.metrics.errors.WithLabelValues("accept").Inc()
			time.Sleep(delay)
			continue
		}
		delay = 0
		serve(c)
	}
}

func (s *Server) acceptTunnels(ln net.Listener) {
	s.acceptLoop(ln, "control", func(c net.Conn) {
		if !s.track(c, &s.tunnels) {
			_ = c.Close()
			return
		}
		go func() {
			defer s.untrack(c, &s.tunnels)
			s.serveTunnel(c)
		}()
	})
}

// sessionAuth authenticates a Hello against the store and admits the session, registering it
// before Welcome is sent so that two sessions racing for a port cannot both win.
type sessionAuth struct {
	srv     *Server
	mux     *yamux.Session
	session *Session
	spec    *SessionSpec
	// authenticated is set once the token matched: only then is a refusal the session's own
	// (admission), not a stranger's attempt that must not affect the real session.
	authenticated bool
}

func (a *sessionAuth) Authenticate(ctx context.Context, id, token string) error {
	spec, err := a.srv.cfg.Sessions.Lookup(ctx, id)
	if errors.Is(err, ErrUnknownSession) {
		return tunnel.RefuseRetryable(fmt.Sprintf("session %s is not known to the agent (yet)", id))
	}
	if err != nil {
		return fmt.Errorf("look up session %s: %w", id, err)
	}
	spec.ID = id
	a.spec = &spec
	if !tunnel.VerifyToken(spec.TokenHash, token) {
		return tunnel.Refuse("invalid token for session " + id)
	}
	a.authenticated = true
	rules, err := match.Compile(spec.Match)
	if err != nil {
		return tunnel.Refuse(fmt.Sprintf("session %s: invalid match rules: %v", id, err))
	}
	sctx, cancel := context.WithCancelCause(a.srv.ctx)
	sess := &Session{Spec: spec, Attached: time.Now(), rules: rules, mux: a.mux, ctx: sctx, cancel: cancel}
	replaced, err := a.srv.reg.admit(sess, a.srv.cfg.Admit)
	if err != nil {
		cancel(err)
		return tunnel.Refuse(err.Error())
	}
	a.session = sess
	if replaced != nil {
		a.srv.log.Info("session reconnected, closing its old tunnel", "session", id)
		replaced.close(errReplaced)
		a.srv.emit(SessionEvent{Kind: SessionDetached, SessionID: id, Spec: &replaced.Spec, Reason: errReplaced.Error()})
	}
	return nil
}

// serveTunnel runs one CLI tunnel: yamux server, handshake, then waits until the CLI leaves or
// the connection dies, and detaches the session.
func (s *Server) serveTunnel(conn net.Conn) {
	log := s.log.With("tunnel", conn.RemoteAddr().String())
	// A port-forward starts the tunnel at once; the API server's pods/proxy with an HTTP upgrade.
	tc, err := tunnel.Accept(conn, s.cfg.HandshakeTimeout)
	if err != nil {
		s.metrics.handshakes.WithLabelValues("error").Inc()
		log.Warn("tunnel connection refused", "err", err)
		_ = conn.Close()
		return
	}
	mux, err := tunnel.ServerSession(tc, s.log)
	if err != nil {
		_ = conn.Close()
		log.Error("start tunnel session", "err", err)
		return
	}
	auth := &sessionAuth{srv: s, mux: mux}
	ctrl, hello, err := tunnel.ServerHandshake(s.handshakes, mux, auth, s.cfg.Version, s.cfg.HandshakeTimeout)
	if err != nil {
		var refused *tunnel.RefusedError
		ev := SessionEvent{Kind: SessionRefused, Spec: auth.spec, Reason: err.Error(), Authenticated: auth.authenticated}
		if hello != nil {
			ev.SessionID = hello.SessionID
		}
		switch {
		case errors.As(err, &refused):
			s.metrics.handshakes.WithLabelValues("refused").Inc()
			ev.Reason, ev.Retryable = refused.Reason, refused.Retryable
			log.Warn("session refused", "session", ev.SessionID, "reason", refused.Reason)
		default:
			s.metrics.handshakes.WithLabelValues("error").Inc()
			log.Warn("tunnel handshake failed", "err", err)
		}
		if auth.session != nil {
			// Admitted, but the Welcome could not be delivered.
			s.detach(auth.session, err)
		} else if hello != nil {
			s.emit(ev)
		}
		// yamux's Close drops frames still queued: let the CLI read the refusal (it closes the
		// session itself once it has) before closing, or it would see a bare "session shutdown".
		select {
		case <-mux.CloseChan():
		case <-time.After(time.Second):
		}
		_ = mux.Close()
		return
	}
	sess := auth.session
	s.metrics.handshakes.WithLabelValues("accepted").Inc()
	s.metrics.sessions.Set(float64(s.reg.len()))
	log.Info("session attached", "session", sess.Spec.ID, "user", sess.Spec.User, "port", sess.Spec.Port,
		"mode", sess.Spec.Mode.String(), "client", hello.ClientVersion)
	s.emit(SessionEvent{Kind: SessionAttached, SessionID: sess.Spec.ID, Spec: &sess.Spec})

	// The CLI never opens streams after the control stream; refuse any rather than let them pile
	// up in yamux's accept backlog.
	go func() {
		for {
			st, err := mux.AcceptStream()
			if err != nil {
				return
			}
			_ = st.Close()
		}
	}()
	left := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, ctrl)
		close(left)
	}()
	cause := errors.New("tunnel closed")
	select {
	case <-left:
		cause = errors.New("session ended by the CLI")
	case <-mux.CloseChan():
	case <-sess.Done():
		cause = context.Cause(sess.ctx)
	}
	s.detach(sess, cause)
}

// detach unregisters sess and closes its tunnel; it reports whether sess was still attached.
func (s *Server) detach(sess *Session, cause error) bool {
	// Unregister before closing: closing wakes serveTunnel, which detaches too, and only the first
	// caller may report the session as detached (Evict's answer depends on it).
	removed := s.reg.remove(sess)
	sess.close(cause)
	if !removed {
		return false
	}
	s.metrics.sessions.Set(float64(s.reg.len()))
	s.log.Info("session detached", "session", sess.Spec.ID, "reason", cause.Error())
	s.emit(SessionEvent{Kind: SessionDetached, SessionID: sess.Spec.ID, Spec: &sess.Spec, Reason: cause.Error()})
	return true
}

func (s *Server) emit(ev SessionEvent) {
	if s.cfg.OnSessionEvent != nil {
		s.cfg.OnSessionEvent(ev)
	}
}

func (s *Server) dialUpstream(ctx context.Context, p *DataPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, DefaultDialTimeout)
	defer cancel()
	c, err := s.cfg.DialUpstream(ctx, "tcp", p.Upstream)
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s for port %s: %w", p.Upstream, p.Key(), err)
	}
	return c, nil
}

// MemoryReleaseInterval is how long the agent must be quiet (no new and no open data connection)
// after traffic before it hands freed memory back to the OS.
const MemoryReleaseInterval = 5 * time.Second

// releaseMemoryWhenIdle returns the memory a burst of traffic needed (copy buffers, yamux
// windows, request parsing) to the OS once the agent is quiet again. The Go runtime would keep
// most of it for minutes, and an agent spends most of its life idle next to a team's
// workloads; one forced collection after each burst costs a few milliseconds of CPU.
func (s *Server) releaseMemoryWhenIdle(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	seen, released := s.nextConn.Load(), true
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if n := s.nextConn.Load(); n != seen {
			seen, released = n, false
			continue
		}
		if released || s.dataActive.Load() > 0 {
			continue
		}
		debug.FreeOSMemory()
		released = true
	}
}
