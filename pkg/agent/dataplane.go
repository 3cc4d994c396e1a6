package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

func (s *Server) acceptData(ln net.Listener, p *DataPort) {
	s.acceptLoop(ln, p.Key(), func(c net.Conn) {
		if !s.track(c, &s.inflight) {
			_ = c.Close()
			return
		}
		go func() {
			defer s.untrack(c, &s.inflight)
			s.serveConn(p, c)
		}()
	})
}

// serveConn routes one data connection and relays it to its end.
func (s *Server) serveConn(p *DataPort, raw net.Conn) {
	active := s.metrics.active.WithLabelValues(p.Key())
	active.Inc()
	s.dataActive.Add(1)
	defer func() {
		active.Dec()
		s.dataActive.Add(-1)
	}()
	defer func() { _ = raw.Close() }()

	c := &Conn{Conn: raw, ID: s.nextConn.Add(1), Port: p, srv: s}
	log := s.log.With("conn", c.ID, "port", p.Key(), "peer", raw.RemoteAddr().String())
	d := s.cfg.Router.Route(s.ctx, c, s.reg.forPort(p))
	if d.Handled {
		s.metrics.connections.WithLabelValues(p.Key(), outcomeRouted).Inc()
		return
	}
	if d.Steal != nil {
		if s.steal(c, d, log) {
			return
		}
		// The tunnel could not take the connection (it is dying): serving it from the original
		// pods beats refusing it.
	}
	s.passThrough(c, d.Mirrors, log)
}

// steal pipes c to the laptop of d.Steal; it returns false if no stream could be opened.
func (s *Server) steal(c *Conn, d Decision, log *slog.Logger) bool {
	sess := d.Steal
	st, err := sess.OpenStream(c.Header(tunnel.ModeSteal, d.RouteID))
	if err != nil {
		s.metrics.connections.WithLabelValues(c.Port.Key(), outcomeTunnelError).Inc()
		log.Warn("steal failed, passing through", "session", sess.Spec.ID, "err", err)
		return false
	}
	// A dropped tunnel ends its stolen connections at once: the client must not hang on a
	// half-open connection whose server is gone.
	stop := context.AfterFunc(sess.ctx, func() {
		_ = c.Close()
		_ = st.Close()
	})
	defer stop()
	start := time.Now()
	in, out, err := s.relay(c, st, s.tees(c, d.Mirrors, d.RouteID, log))
	s.finish(c, outcomeSteal, in, out, err, start, log.With("session", sess.Spec.ID))
	return true
}

// passThrough serves c from the shadow Service, sending a copy to every mirroring session.
func (s *Server) passThrough(c *Conn, mirrors []*Session, log *slog.Logger) {
	up, err := c.DialUpstream(s.ctx)
	if err != nil {
		s.metrics.connections.WithLabelValues(c.Port.Key(), outcomeUpstreamError).Inc()
		log.Warn("upstream unavailable", "err", err)
		// Reset rather than close cleanly, so the client sees a failure and not an empty answer.
		if tc, ok := c.Conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		return
	}
	outcome := outcomePassThrough
	if len(mirrors) > 0 {
		outcome = outcomeMirror
	}
	start := time.Now()
	in, out, err := s.relay(c, up, s.tees(c, mirrors, "", log))
	s.finish(c, outcome, in, out, err, start, log)
}

func (s *Server) finish(c *Conn, outcome string, in, out int64, err error, start time.Time, log *slog.Logger) {
	key := c.Port.Key()
	s.metrics.connections.WithLabelValues(key, outcome).Inc()
	s.metrics.bytes.WithLabelValues(key, "in").Add(float64(in))
	s.metrics.bytes.WithLabelValues(key, "out").Add(float64(out))
	if err != nil {
		s.metrics.errors.WithLabelValues("relay").Inc()
		log.Debug("connection ended with error", "outcome", outcome, "err", err)
	}
	log.Debug("connection closed", "outcome", outcome, "in", in, "out", out, "duration", time.Since(start))
}

// teeSet holds the mirror copies of one connection, per direction.
type teeSet struct {
	requests, responses []*tee
}

// tees starts a mirror copy per mirroring session (and per direction when responses are mirrored).
func (s *Server) tees(c *Conn, mirrors []*Session, routeID string, log *slog.Logger) teeSet {
	var ts teeSet
	for _, m := range mirrors {
		ts.requests = append(ts.requests, s.newTee(c, m, routeID, tunnel.DirectionRequest, log))
		if s.cfg.MirrorResponses {
			ts.responses = append(ts.responses, s.newTee(c, m, routeID, tunnel.DirectionResponse, log))
		}
	}
	return ts
}

// relay pipes client and server both ways; with mirrors it copies through the tees.
func (s *Server) relay(client, server net.Conn, ts teeSet) (in, out int64, err error) {
	if len(ts.requests) == 0 && len(ts.responses) == 0 {
		return tunnel.Pipe(client, server)
	}
	var (
		wg           sync.WaitGroup
		errIn, errOu error
		abort        sync.Once
	)
	closeBoth := func() {
		abort.Do(func() {
			_ = client.Close()
			_ = server.Close()
		})
	}
	half := func(dst, src net.Conn, tees []*tee, n *int64, errp *error) {
		defer wg.Done()
		*n, *errp = teeCopy(dst, src, tees)
		for _, t := range tees {
			t.finish()
		}
		if *errp != nil {
			closeBoth()
			return
		}
		_ = tunnel.CloseWrite(dst)
	}
	wg.Add(2)
	go half(server, client, ts.requests, &in, &errIn)
	go half(client, server, ts.responses, &out, &errOu)
	wg.Wait()
	_ = client.Close()
	_ = server.Close()
	for _, e := range []error{errIn, errOu} {
		if !tunnel.IsClosedError(e) {
			return in, out, e
		}
	}
	return in, out, nil
}

// teeCopy copies src to dst and offers every chunk to the tees. Offering never blocks: the
// original path runs at its own pace whatever the laptops do.
func teeCopy(dst io.Writer, src io.Reader, tees []*tee) (int64, error) {
	bp := tunnel.GetBuffer()
	defer tunnel.PutBuffer(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			for _, t := range tees {
				t.offer(buf[:n])
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// tee sends a copy of one direction of a connection to one mirroring session, through a bounded
// queue drained by its own goroutine. When the queue is full or the laptop stops taking data for
// MirrorStall, the copy is dropped (its stream closed), counted and logged, and the connection
// carries on untouched.
type tee struct {
	srv  *Server
	sess *Session
	hdr  *tunnel.Header
	port string
	log  *slog.Logger

	mu       sync.Mutex
	chunks   []chunk
	queued   int // bytes offered and not yet written, including the batch being written
	finished bool
	dropped  bool
	stream   net.Conn
	wake     chan struct{}
}

type chunk struct {
	buf *[]byte
	n   int
}

func (s *Server) newTee(c *Conn, sess *Session, routeID string, dir tunnel.Direction, log *slog.Logger) *tee {
	h := c.Header(tunnel.ModeMirror, routeID)
	h.Direction = dir
	t := &tee{
		srv: s, sess: sess, hdr: h, port: c.Port.Key(),
		log:  log.With("session", sess.Spec.ID, "direction", dir.String()),
		wake: make(chan struct{}, 1),
	}
	go t.run()
	return t
}

func (t *tee) offer(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dropped || t.finished {
		return
	}
	if t.queued+len(p) > t.srv.cfg.MirrorBuffer {
		t.dropLocked(dropBufferFull, nil)
		return
	}
	for len(p) > 0 {
		b := tunnel.GetBuffer()
		n := copy(*b, p)
		p = p[n:]
		t.chunks = append(t.chunks, chunk{buf: b, n: n})
		t.queued += n
	}
	t.signal()
}

// finish marks the end of the copied direction: the queue is flushed, then the stream half-closed.
func (t *tee) finish() {
	t.mu.Lock()
	t.finished = true
	t.mu.Unlock()
	t.signal()
}

func (t *tee) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *tee) dropLocked(reason string, err error) {
	if t.dropped {
		return
	}
	t.dropped = true
	for _, c := range t.chunks {
		tunnel.PutBuffer(c.buf)
	}
	t.chunks = nil
	if t.stream != nil {
		_ = t.stream.Close()
		if st, ok := t.stream.(*yamux.Stream); ok {
			// Unblock a Write stuck on a full window.
			_ = st.SetWriteDeadline(time.Unix(1, 0))
		}
	}
	t.srv.metrics.mirrorDropped.WithLabelValues(t.port, reason).Inc()
	t.log.Warn("mirror copy dropped; the original connection is unaffected", "reason", reason, "err", err)
	t.signal()
}

func (t *tee) run() {
	st, err := t.sess.OpenStream(t.hdr)
	t.mu.Lock()
	if err != nil {
		t.dropLocked(dropOpenFailed, err)
		t.mu.Unlock()
		return
	}
	if t.dropped {
		t.mu.Unlock()
		_ = st.Close()
		return
	}
	t.stream = st
	t.mu.Unlock()
	stall := t.srv.cfg.MirrorStall
	for {
		t.mu.Lock()
		for len(t.chunks) == 0 && !t.finished && !t.dropped {
			t.mu.Unlock()
			select {
			case <-t.wake:
			case <-t.sess.Done():
				t.mu.Lock()
				t.dropLocked(dropWriteError, context.Cause(t.sess.ctx))
				t.mu.Unlock()
			}
			t.mu.Lock()
		}
		if t.dropped {
			t.mu.Unlock()
			return
		}
		if len(t.chunks) == 0 { // finished and flushed
			t.mu.Unlock()
			_ = st.Close()
			return
		}
		batch := t.chunks
		t.chunks = nil
		t.mu.Unlock()
		for i, c := range batch {
			_ = st.SetWriteDeadline(time.Now().Add(stall))
			n, err := st.Write((*c.buf)[:c.n])
			tunnel.PutBuffer(c.buf)
			t.srv.metrics.mirrorBytes.WithLabelValues(t.port).Add(float64(n))
			t.mu.Lock()
			t.queued -= c.n
			if err != nil {
				reason := dropWriteError
				if errors.Is(err, yamux.ErrTimeout) && !t.dropped {
					reason = dropStalled
				}
				t.dropLocked(reason, err)
				for _, rest := range batch[i+1:] {
					tunnel.PutBuffer(rest.buf)
				}
				t.mu.Unlock()
				return
			}
			t.mu.Unlock()
		}
	}
}
