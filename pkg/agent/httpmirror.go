package agent

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// Mirror copy results, the "result" label of bridge_agent_http_mirrors_total.
const (
	mirrorSent       = "sent"
	mirrorBusy       = "dropped_busy"
	mirrorTooLarge   = "dropped_too_large"
	mirrorIncomplete = "dropped_incomplete"
	mirrorFailed     = "failed"
)

// bodyTee keeps a copy of a request body, up to limit bytes, as the proxy reads it.
type bodyTee struct {
	rc    io.ReadCloser
	limit int

	mu   sync.Mutex
	buf  []byte
	over bool
	eof  bool
}

func (t *bodyTee) Read(p []byte) (int, error) {
	n, err := t.rc.Read(p)
	t.mu.Lock()
	if n > 0 && !t.over {
		if len(t.buf)+n > t.limit {
			t.over, t.buf = true, nil
		} else {
			t.buf = append(t.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		t.eof = true
	}
	t.mu.Unlock()
	return n, err
}

func (t *bodyTee) Close() error { return t.rc.Close() }

// body returns the copied body, or why there is none to send.
func (t *bodyTee) body(r *http.Request) ([]byte, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.over:
		return nil, mirrorTooLarge
	case t.eof, r.ContentLength == 0, r.Body == nil, r.Body == http.NoBody:
		return t.buf, ""
	}
	// The original side answered without reading the whole body: no faithful copy exists.
	return nil, mirrorIncomplete
}

// mirror sends a copy of r (answered by now) to every mirroring session whose rules matched, in
// the background and bounded by Config.MirrorConcurrency: when every slot is busy the copy is
// dropped and counted, so laptops never slow the original path.
func (hp *httpPort) mirror(rt *route, r *http.Request, tee *bodyTee, sessions []*Session) {
	s := hp.srv
	body, reason := tee.body(r)
	for _, sess := range sessions {
		if reason != "" {
			s.metrics.mirrors.WithLabelValues(hp.port.Key(), sess.Spec.ID, reason).Inc()
			continue
		}
		select {
		case s.mirrorSlots <- struct{}{}:
		default:
			s.metrics.mirrors.WithLabelValues(hp.port.Key(), sess.Spec.ID, mirrorBusy).Inc()
			continue
		}
		cp := copyRequest(r, body)
		go func() {
			defer func() { <-s.mirrorSlots }()
			result := hp.sendMirror(rt, cp, sess)
			s.metrics.mirrors.WithLabelValues(hp.port.Key(), sess.Spec.ID, result).Inc()
		}()
	}
}

// sendMirror runs the copy against the laptop and discards the answer.
func (hp *httpPort) sendMirror(orig *route, req *http.Request, sess *Session) string {
	ctx, cancel := context.WithTimeout(hp.srv.ctx, hp.srv.cfg.MirrorStall)
	defer cancel()
	rt := &route{c: orig.c, steal: sess, h2: orig.h2}
	req = req.WithContext(context.WithValue(ctx, routeKey{}, rt))
	resp, err := hp.toLaptop(req, rt, sess, tunnel.ModeMirror)
	if err != nil {
		hp.srv.log.Debug("mirror copy failed", "session", sess.Spec.ID, "err", err)
		return mirrorFailed
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, int64(hp.srv.cfg.MirrorBuffer)))
	_ = resp.Body.Close()
	return mirrorSent
}

// copyRequest builds the client request a mirror copy is sent as: same method, target, Host,
// end-to-end headers and body.
func copyRequest(r *http.Request, body []byte) *http.Request {
	u := &url.URL{Scheme: "http", Host: laptopHost, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	if r.URL.Opaque != "" {
		u = &url.URL{Scheme: "http", Host: laptopHost, Opaque: r.URL.Opaque, RawQuery: r.URL.RawQuery}
	}
	h := r.Header.Clone()
	removeHopByHop(h)
	cp := &http.Request{
		Method: r.Method, URL: u, Host: r.Host, Header: h,
		Proto: r.Proto, ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor,
		ContentLength: int64(len(body)), Body: http.NoBody,
	}
	if len(body) > 0 {
		cp.Body = io.NopCloser(bytes.NewReader(body))
		cp.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // keep Go's default User-Agent out of the copy
	}
	return cp
}

// hopByHop are the headers that concern one connection only (RFC 9110 §7.6.1), not copied.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopByHop(h http.Header) {
	trailers := false
	for _, v := range h["Te"] {
		trailers = trailers || strings.Contains(strings.ToLower(v), "trailers")
	}
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
	if trailers {
		h.Set("Te", "trailers") // gRPC servers insist on it
	}
}
