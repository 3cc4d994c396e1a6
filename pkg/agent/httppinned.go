package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
)

// pinnedUpstream is the upstream connection that one client connection's unmatched, bodiless
// HTTP/1.1 requests travel on, written and read on the client connection's own goroutine.
//
// An unmatched request is the cost every other user of the Service pays for someone's
// intercept, so it must add as little as possible. http.Transport would hand each request to a
// pooled connection's write loop and the response back from its read loop: two goroutine
// switches per request, which on a busy node cost more than the proxying itself. A client
// connection carries one request at a time, so a connection of its own to the shadow Service
// needs no pool and no hand-offs; it lives and dies with the client connection, as the whole
// connection would without rules. Requests with a body keep using the Transport, whose write
// loop goes on reading the response while the body is still being sent.
type pinnedUpstream struct {
	hp *httpPort

	mu     sync.Mutex
	conn   net.Conn // nil until the first request, and after an error
	br     *bufio.Reader
	bw     *bufio.Writer
	closed bool
}

// pinnable reports whether req may use the pinned connection: an HTTP/1.x request without a
// body, not an upgrade, not waiting for 100-continue.
func pinnable(req *http.Request) bool {
	return req.ProtoMajor == 1 && (req.Body == nil || req.Body == http.NoBody) && req.ContentLength == 0 &&
		!isUpgrade(req.Header) && req.Header.Get("Expect") == "" && len(req.TransferEncoding) == 0
}

// RoundTrip sends req on the pinned connection, dialling it first if needed. The response body
// must be closed before the next call; a body not read to its end closes the connection.
func (p *pinnedUpstream) RoundTrip(req *http.Request) (*http.Response, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, net.ErrClosed
	}
	if p.conn != nil && (p.br.Buffered() > 0 || peerClosed(p.conn)) {
		// The upstream closed the idle connection (a server's keep-alive timeout), or said
		// something unasked: a request sent there would fail, and only idempotent ones could be
		// sent again. The Transport's read loop notices the same and drops the connection.
		p.dropLocked()
	}
	if p.conn == nil {
		c, err := p.hp.srv.dialUpstream(req.Context(), p.hp.port)
		if err != nil {
			return nil, err
		}
		p.conn = c
		if p.br == nil {
			p.br, p.bw = bufio.NewReaderSize(c, 4<<10), bufio.NewWriterSize(c, 4<<10)
		} else {
			p.br.Reset(c)
			p.bw.Reset(c)
		}
	}
	conn := p.conn
	// A client that goes away cancels the request: unblock the exchange by closing its connection.
	stop := context.AfterFunc(req.Context(), func() { _ = conn.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		p.dropLocked()
		return nil, err
	}
	if err := req.Write(p.bw); err != nil {
		return fail(err)
	}
	if err := p.bw.Flush(); err != nil {
		return fail(err)
	}
	for {
		resp, err := http.ReadResponse(p.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			// Informational answers (103 Early Hints) reach the client as the Transport would pass
			// them: through the reverse proxy's trace hook.
			if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return fail(err)
				}
			}
			continue
		}
		keep := !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols
		resp.Body = &pinnedBody{ReadCloser: resp.Body, p: p, conn: conn, stop: stop, keep: keep, eof: resp.Body == http.NoBody}
		return resp, nil
	}
}

// dropLocked closes the current connection; the next request dials a new one.
func (p *pinnedUpstream) dropLocked() {
	if p.conn != nil {
		_ = p.conn.Close()
		p.conn = nil
	}
}

// done ends an exchange on conn: the connection stays for the next request only if the answer
// was read to its end and neither side asked to close.
func (p *pinnedUpstream) done(conn net.Conn, reuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != conn {
		return
	}
	if reuse && !p.closed {
		return
	}
	p.dropLocked()
}

// Close closes the pinned connection with its client connection.
func (p *pinnedUpstream) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.dropLocked()
}

// pinnedBody is a response body on the pinned connection; closing it ends the exchange.
type pinnedBody struct {
	io.ReadCloser
	p    *pinnedUpstream
	conn net.Conn
	stop func() bool
	keep bool

	eof  bool
	once sync.Once
}

func (b *pinnedBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

func (b *pinnedBody) Close() error {
	var err error
	b.once.Do(func() {
		// A cancelled request has had its connection closed under it.
		cancelled := !b.stop()
		reuse := b.keep && b.eof && !cancelled
		if !reuse {
			// Close the connection first: closing an unfinished body would otherwise read the
			// rest of it, maybe an endless stream.
			b.p.done(b.conn, false)
		}
		err = b.ReadCloser.Close()
		if reuse {
			b.p.done(b.conn, true)
		}
	})
	return err
}
