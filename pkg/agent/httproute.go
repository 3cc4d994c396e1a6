package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// HTTPRouter routes per HTTP request on the ports where some session holds match rules, and per
// connection (as PortRouter) everywhere else.
//
// On a port with rules it peeks at each connection's first bytes. HTTP/1.x and h2c (prior
// knowledge, so gRPC) connections are served by the agent's own HTTP server: every request (every
// HTTP/2 stream) goes, through a reverse proxy, to the laptop of the most specific stealing session
// whose rules match it, or else to the shadow Service; matching mirror sessions get a copy. A
// WebSocket (any Upgrade) follows the route of its upgrade request and stays there. TLS, unknown
// protocols and server-speaks-first protocols (nothing received within Config.SniffTimeout, on
// ports not known to be HTTP) are routed per connection.
//
// Each routed request exchange to a laptop travels on its own tunnel stream: the stream Header
// carries the route (the session's rules) and request metadata (tunnel.MetaMethod…), and the
// stream carries the request as HTTP/1.1, or as h2c when it came as HTTP/2 (gRPC needs trailers),
// so the CLI's Forwarder only pipes bytes to the local app.
type HTTPRouter struct{}

// Route implements Router.
func (HTTPRouter) Route(ctx context.Context, c *Conn, sessions []*Session) Decision {
	s := c.srv
	if !s.reg.table(c.Port).rules {
		return PortRouter{}.Route(ctx, c, sessions)
	}
	timeout := s.cfg.SniffTimeout
	if isHTTP, known := c.Port.SpeaksHTTP(); known && isHTTP {
		// Clients of an HTTP port always speak first, maybe late (pre-warmed pools): wait.
		timeout = 0
	}
	proto, buf, silent, err := sniff(c.Conn, timeout)
	if len(buf) > 0 {
		c.Conn = &replayConn{Conn: c.Conn, buf: buf}
	}
	label := proto.String()
	if silent {
		label = "silent"
	}
	s.metrics.sniffed.WithLabelValues(c.Port.Key(), label).Inc()
	switch {
	case err != nil || (len(buf) == 0 && !silent):
		// The client left (or failed) before saying anything: nothing to route.
		return Decision{Handled: true}
	case proto == ProtocolHTTP1 || proto == ProtocolHTTP2:
		s.httpPorts[c.Port].serve(c)
		return Decision{Handled: true}
	}
	// Sessions may have changed while sniffing.
	return PortRouter{}.Route(ctx, c, s.reg.forPort(c.Port))
}

// Request outcomes, the "outcome" label of bridge_agent_http_requests_total.
const (
	requestLocal    = "local"
	requestOriginal = "original"
	requestError    = "error"
)

// httpPort is the HTTP machinery of one data port: a net/http server fed the sniffed
// connections, and a reverse proxy whose transport picks the laptop or the shadow Service.
type httpPort struct {
	srv  *Server
	port *DataPort

	startOnce sync.Once
	server    *http.Server
	ln        *connListener
	proxy     *httputil.ReverseProxy

	upstream1, upstream2 *http.Transport // to the shadow Service: HTTP/1.1 (pooled), h2c
	local1, local2       *http.Transport // to a laptop: NewClientConn per exchange, over its tunnel stream
}

func newHTTPPort(s *Server, p *DataPort) *httpPort {
	hp := &httpPort{srv: s, port: p, ln: newConnListener()}
	errorLog := slog.NewLogLogger(s.log.With("port", p.Key()).Handler(), slog.LevelDebug)
	dialUp := func(ctx context.Context, _, _ string) (net.Conn, error) { return s.dialUpstream(ctx, p) }
	hp.upstream1 = &http.Transport{
		DialContext:         dialUp,
		DisableCompression:  true, // never add Accept-Encoding nor decompress: bytes pass untouched
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	hp.upstream2 = &http.Transport{DialContext: dialUp, DisableCompression: true, Protocols: protocols(false, true)}
	hp.local1 = &http.Transport{DialContext: takeStream, DisableCompression: true, Protocols: protocols(true, false)}
	hp.local2 = &http.Transport{DialContext: takeStream, DisableCompression: true, Protocols: protocols(false, true)}
	hp.proxy = &httputil.ReverseProxy{
		Director:       hp.direct,
		Transport:      hp,
		FlushInterval:  -1, // stream as it comes: gRPC, server-sent events
		ModifyResponse: trailersOnly,
		ErrorHandler:   hp.proxyError,
		ErrorLog:       errorLog,
		BufferPool:     proxyBuffers{},
	}
	hp.server = &http.Server{
		Handler:   hp,
		Protocols: protocols(true, true), // h2c with prior knowledge is recognized by its preface
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			if rc, ok := nc.(*routedConn); ok {
				ctx = context.WithValue(ctx, connKey{}, rc)
			}
			return ctx
		},
		ErrorLog: errorLog,
	}
	return hp
}

func protocols(http1, h2c bool) *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(http1)
	p.SetUnencryptedHTTP2(h2c)
	return &p
}

// serve hands c to the port's HTTP server and returns once the server is done with it.
func (hp *httpPort) serve(c *Conn) {
	hp.startOnce.Do(func() {
		go func() { _ = hp.server.Serve(hp.ln) }()
		context.AfterFunc(hp.srv.ctx, func() { _ = hp.ln.Close() })
	})
	rc := &routedConn{Conn: c.Conn, c: c, closed: make(chan struct{})}
	rc.upstream = &pinnedUpstream{hp: hp}
	defer rc.upstream.Close()
	select {
	case hp.ln.conns <- rc:
	case <-hp.ln.done:
		return
	}
	select {
	case <-rc.closed:
	case <-hp.srv.ctx.Done():
		_ = rc.Close()
	}
}

// shutdown stops the HTTP server gracefully: idle keep-alive connections are closed at once,
// requests in flight may finish until ctx ends.
func (hp *httpPort) shutdown(ctx context.Context) {
	_ = hp.server.Shutdown(ctx)
	hp.upstream1.CloseIdleConnections()
	hp.upstream2.CloseIdleConnections()
}

type connKey struct{}
type routeKey struct{}

// route is the routing decision of one request, shared by the handler, the proxy's transport and
// its error handler through the request context.
type route struct {
	c        *Conn
	upstream *pinnedUpstream // the client connection's own upstream connection
	steal    *Session        // nil: the shadow Service
	h2       bool
	// failed is set by the proxy's error handler; fellBack when the laptop was unreachable before
	// anything was sent and the shadow Service answered instead.
	failed   error
	fellBack bool
}

func routeOf(r *http.Request) *route {
	rt, _ := r.Context().Value(routeKey{}).(*route)
	return rt
}

// ServeHTTP routes one request.
func (hp *httpPort) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := hp.srv
	rc, _ := r.Context().Value(connKey{}).(*routedConn)
	if rc == nil {
		http.Error(w, "kubectl-bridge: request without connection", http.StatusInternalServerError)
		return
	}
	t := s.reg.table(hp.port)
	rt := &route{c: rc.c, upstream: rc.upstream, h2: r.ProtoMajor == 2}
	for _, sess := range t.steals {
		if sess.rules.Matches(r.Method, r.URL.Path, r.Header) {
			rt.steal = sess
			break
		}
	}
	var mirrors []*Session
	for _, sess := range t.mirrors {
		if sess.rules.Matches(r.Method, r.URL.Path, r.Header) {
			mirrors = append(mirrors, sess)
		}
	}
	out := r.WithContext(context.WithValue(r.Context(), routeKey{}, rt))
	// ReverseProxy appends the client to X-Forwarded-For unless it cannot parse RemoteAddr: the
	// agent is invisible, it invents no forwarding headers.
	out.RemoteAddr = ""
	var tee *bodyTee
	if len(mirrors) > 0 && !isUpgrade(r.Header) {
		tee = &bodyTee{rc: r.Body, limit: s.cfg.MirrorBuffer}
		out.Body = tee
	}
	hp.proxy.ServeHTTP(w, out)

	outcome, sessID := requestOriginal, ""
	if rt.steal != nil {
		outcome, sessID = requestLocal, rt.steal.Spec.ID
	}
	if rt.failed != nil {
		outcome = requestError
	}
	s.metrics.requests.WithLabelValues(hp.port.Key(), sessID, outcome).Inc()
	if rt.steal != nil {
		rt.steal.requests.Add(1)
	}
	for _, m := range mirrors {
		m.requests.Add(1)
	}
	if tee != nil {
		hp.mirror(rt, r, tee, mirrors)
	}
}

// direct points the outgoing request at its destination; Host is left as the client sent it.
func (hp *httpPort) direct(out *http.Request) {
	out.URL.Scheme = "http"
	if routeOf(out).steal != nil {
		out.URL.Host = laptopHost
	} else {
		out.URL.Host = hp.port.Upstream
	}
}

// laptopHost is the URL host of requests sent to a laptop: the dial ignores it (the tunnel stream
// is the connection), and Host headers are the client's.
const laptopHost = "laptop.kubectl-bridge.invalid"

var errNoStream = errors.New("no tunnel stream to the laptop")

// RoundTrip sends a proxied request where its route says.
func (hp *httpPort) RoundTrip(req *http.Request) (*http.Response, error) {
	rt := routeOf(req)
	if rt.steal != nil {
		resp, err := hp.toLaptop(req, rt, rt.steal, tunnel.ModeSteal)
		if err == nil || !errors.Is(err, errNoStream) || (req.Body != nil && req.Body != http.NoBody) {
			return resp, err
		}
		// The tunnel is going away: as for whole connections, the original pods beat an error.
		// Only safe without a body, which the failed attempt would have consumed.
		hp.srv.log.Debug("laptop unreachable, serving from the original pods", "session", rt.steal.Spec.ID, "err", err)
		rt.steal, rt.fellBack = nil, true
		req = req.Clone(req.Context())
		req.URL.Host = hp.port.Upstream
	}
	var t http.RoundTripper = hp.upstream1
	switch {
	case rt.h2:
		t = hp.upstream2
	case pinnable(req):
		t = rt.upstream
	}
	resp, err := t.RoundTrip(req)
	// During a rollout the shadow Service may hand a request to a pod that is going away (refused,
	// or a pooled connection it closed). A request that got no answer and can be sent again is
	// retried, on another connection that kube-proxy balances anew: unmatched traffic must not see
	// a failure that the original pods would not have caused for a client reconnecting itself.
	for attempt := 0; err != nil && attempt < 2 && replayable(req, err) && req.Context().Err() == nil; attempt++ {
		hp.srv.log.Debug("retrying a request the original pods did not answer", "port", hp.port.Key(), "err", err)
		resp, err = t.RoundTrip(req)
	}
	return resp, err
}

// replayable reports whether req may be sent again after err: it has no body to re-send, and
// either nothing reached a server (the dial failed) or the method is idempotent.
func replayable(req *http.Request, err error) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// toLaptop opens a tunnel stream to sess for one request exchange and runs it there: HTTP/1.1,
// or h2c for HTTP/2 requests (trailers, gRPC). The stream ends with the response body.
func (hp *httpPort) toLaptop(req *http.Request, rt *route, sess *Session, mode tunnel.Mode) (*http.Response, error) {
	h := rt.c.Header(mode, sess.rules.String())
	h.Meta = requestMeta(req)
	st, err := sess.OpenStream(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoStream, err)
	}
	// A connection of its own, outside any pool: a pooled one could carry another request (or
	// another session's) over this stream.
	ps := &pendingStream{conn: st}
	t := hp.local1
	if rt.h2 {
		t = hp.local2
	}
	cc, err := t.NewClientConn(context.WithValue(req.Context(), streamKey{}, ps), "http", laptopHost+":80")
	ps.closeUnused()
	if err != nil {
		return nil, err
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		_ = cc.Close()
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The body is the upgraded connection (the proxy writes to it); closing it ends the stream.
		return resp, nil
	}
	resp.Body = &closeConnBody{ReadCloser: resp.Body, cc: cc}
	return resp, nil
}

// closeConnBody closes the exchange's connection (its tunnel stream) with the response body.
type closeConnBody struct {
	io.ReadCloser
	cc *http.ClientConn
}

func (b *closeConnBody) Close() error {
	err := b.ReadCloser.Close()
	_ = b.cc.Close()
	return err
}

// requestMeta describes a request in its stream Header, for the CLI's live output.
func requestMeta(req *http.Request) []tunnel.KV {
	path := req.URL.RequestURI()
	if len(path) > 2048 {
		path = path[:2048]
	}
	return []tunnel.KV{
		{Key: tunnel.MetaExchange, Value: "http"},
		{Key: tunnel.MetaMethod, Value: req.Method},
		{Key: tunnel.MetaPath, Value: path},
		{Key: tunnel.MetaProto, Value: req.Proto},
	}
}

type streamKey struct{}

// pendingStream hands an opened tunnel stream to the laptop transport's dial, exactly once.
type pendingStream struct {
	mu    sync.Mutex
	conn  net.Conn
	taken bool
}

func takeStream(ctx context.Context, _, _ string) (net.Conn, error) {
	ps, _ := ctx.Value(streamKey{}).(*pendingStream)
	if ps == nil {
		return nil, errors.New("laptop dial without a tunnel stream")
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.taken {
		return nil, errors.New("tunnel stream already used")
	}
	ps.taken = true
	return ps.conn, nil
}

func (ps *pendingStream) closeUnused() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if !ps.taken {
		ps.taken = true
		_ = ps.conn.Close()
	}
}

// proxyError answers 502 when the chosen side could not answer, saying which side it was.
func (hp *httpPort) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rt := routeOf(r)
	rt.failed = err
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	var msg string
	if rt.steal != nil {
		hp.srv.log.Warn("laptop did not answer", "session", rt.steal.Spec.ID, "port", hp.port.Key(), "err", err)
		msg = fmt.Sprintf("kubectl-bridge: the laptop intercepting this request (session %s, %s) did not answer; is the local app running?\n",
			rt.steal.Spec.ID, rt.steal.rules)
	} else {
		hp.srv.log.Warn("upstream did not answer", "port", hp.port.Key(), "upstream", hp.port.Upstream, "err", err)
		msg = fmt.Sprintf("kubectl-bridge: the original pods (%s) did not answer\n", hp.port.Upstream)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusBadGateway)
	_, _ = io.WriteString(w, msg)
}

// trailersOnly keeps a gRPC "trailers-only" answer (an error status in a lone HEADERS frame that
// ends the stream) valid through the proxy: the proxy flushes response headers early, so the
// status would end up in headers followed by an empty end of stream, which gRPC clients reject.
// Sent as trailers after empty headers it means the same to every gRPC client.
func trailersOnly(res *http.Response) error {
	if res.ProtoMajor != 2 || res.Header.Get("Grpc-Status") == "" {
		return nil
	}
	if res.Trailer == nil {
		res.Trailer = http.Header{}
	}
	for _, k := range []string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin"} {
		if v, ok := res.Header[k]; ok {
			res.Trailer[k] = v
			delete(res.Header, k)
		}
	}
	return nil
}

func isUpgrade(h http.Header) bool {
	return h.Get("Upgrade") != ""
}

// proxyBuffers lends the reverse proxy pooled copy buffers instead of one fresh 32 KiB buffer per
// response.
type proxyBuffers struct{}

var proxyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (proxyBuffers) Get() []byte { return *proxyBufferPool.Get().(*[]byte) }
func (proxyBuffers) Put(b []byte) {
	b = b[:cap(b)]
	proxyBufferPool.Put(&b)
}

// connListener is a net.Listener fed by the router with connections it has already accepted and
// sniffed.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{} }

// routedConn is a data connection served by a port's HTTP server; closed is closed when the server
// (or a hijacking handler) closes it, so that the router's goroutine knows the connection is done.
type routedConn struct {
	net.Conn
	c        *Conn
	upstream *pinnedUpstream
	closed   chan struct{}
	once     sync.Once
}

func (rc *routedConn) Close() error {
	err := rc.Conn.Close()
	rc.once.Do(func() { close(rc.closed) })
	return err
}

// CloseWrite lets net/http close gracefully (FIN, then drain) rather than reset.
func (rc *routedConn) CloseWrite() error {
	if cw, ok := rc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
