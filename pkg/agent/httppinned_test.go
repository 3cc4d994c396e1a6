package agent_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// countingUpstream is an HTTP/1.1 server standing for the original pods that counts the
// connections it accepted.
type countingUpstream struct {
	addr  string
	conns atomic.Int32
}

func startCountingUpstream(t *testing.T, idle time.Duration, h http.HandlerFunc) *countingUpstream {
	t.Helper()
	u := &countingUpstream{}
	srv := &http.Server{
		Handler:     h,
		IdleTimeout: idle,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				u.conns.Add(1)
			}
		},
	}
	u.addr = serveHTTP(t, srv)
	return u
}

// ruleAgentFor starts an agent on upstream with one session stealing requests with
// "x-owner: alice", so that every other request on the port is an unmatched one.
func ruleAgentFor(t *testing.T, upstream string) *testAgent {
	t.Helper()
	s := ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})
	a := startAgent(t, agent.StaticSessions{"s1": s}, upstream, upstream, nil)
	startCLI(t, a, "s1", "tok-s1", startHTTPApp(t, "laptop").addr).waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	return a
}

// rawExchange writes one request on conn and reads its answer.
func rawExchange(t *testing.T, conn net.Conn, br *bufio.Reader, method, path string, header ...string) (*http.Response, string) {
	t.Helper()
	req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: api\r\n", method, path)
	for _, h := range header {
		req += h + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return resp, string(b)
}

func dialAgent(t *testing.T, a *testAgent) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", a.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn, bufio.NewReader(conn)
}

// A client connection's unmatched requests travel on one upstream connection of their own, as
// the connection would without rules; matched requests on it do not disturb that.
func TestUnmatchedRequestsKeepOneUpstreamConnection(t *testing.T) {
	up := startCountingUpstream(t, 0, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("X-Served-By", "upstream")
			fmt.Fprintf(w, "upstream %s %s", r.Method, r.URL.Path)
		}
	})
	a := ruleAgentFor(t, up.addr)
	conn, br := dialAgent(t, a)
	for i := range 12 {
		method, path, want := "GET", fmt.Sprintf("/r%d", i), fmt.Sprintf("upstream GET /r%d", i)
		var header []string
		switch i % 4 {
		case 1:
			method, want = "HEAD", ""
		case 2:
			path, want = "/empty", ""
		case 3:
			header, want = []string{"X-Owner: alice"}, "laptop GET "+path
		}
		resp, body := rawExchange(t, conn, br, method, path, header...)
		if !strings.HasPrefix(body, want) {
			t.Errorf("%s %s: %s %q, want %q", method, path, resp.Status, body, want)
		}
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("the upstream accepted %d connections for one client connection, want 1", n)
	}
	conn2, br2 := dialAgent(t, a)
	if _, body := rawExchange(t, conn2, br2, "GET", "/other"); body != "upstream GET /other" {
		t.Errorf("second client: %q", body)
	}
	if n := up.conns.Load(); n != 2 {
		t.Errorf("the upstream accepted %d connections for two client connections, want 2", n)
	}
}

// An upstream that closes idle connections (a keep-alive timeout, as most servers have) never
// costs a request: not even a non-idempotent one, which may not be sent twice.
func TestUnmatchedAfterUpstreamClosedIdleConnection(t *testing.T) {
	up := startCountingUpstream(t, 50*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream %s %s", r.Method, r.URL.Path)
	})
	a := ruleAgentFor(t, up.addr)
	conn, br := dialAgent(t, a)
	for i := range 3 {
		path := fmt.Sprintf("/p%d", i)
		resp, body := rawExchange(t, conn, br, "POST", path, "Content-Length: 0")
		if resp.StatusCode != http.StatusOK || body != "upstream POST "+path {
			t.Fatalf("POST %s after the upstream closed the idle connection: %s %q", path, resp.Status, body)
		}
		time.Sleep(200 * time.Millisecond) // the upstream closes the idle connection
	}
	if n := up.conns.Load(); n != 3 {
		t.Errorf("the upstream accepted %d connections, want 3 (one per idle close)", n)
	}
}

// The upstream says close, or its answer is cut short by the client: the next request gets a
// fresh upstream connection and its right answer.
func TestUnmatchedUpstreamConnectionNotReusedAfterClose(t *testing.T) {
	up := startCountingUpstream(t, 0, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		fmt.Fprintf(w, "upstream %s", r.URL.Path)
	})
	a := ruleAgentFor(t, up.addr)
	conn, br := dialAgent(t, a)
	for _, path := range []string{"/close", "/next", "/close", "/last"} {
		if resp, body := rawExchange(t, conn, br, "GET", path); body != "upstream "+path {
			t.Fatalf("GET %s: %s %q", path, resp.Status, body)
		}
	}
	if n := up.conns.Load(); n != 3 {
		t.Errorf("the upstream accepted %d connections, want 3", n)
	}
}

// A client that leaves while the original pods are still working on its request: the agent
// closes the upstream connection, so the pods see the client leave as they would directly.
func TestUnmatchedClientLeavingCancelsUpstream(t *testing.T) {
	started, cancelled := make(chan struct{}), make(chan struct{})
	up := startCountingUpstream(t, 0, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(cancelled)
	})
	a := ruleAgentFor(t, up.addr)
	conn, _ := dialAgent(t, a)
	if _, err := io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the upstream")
	}
	_ = conn.Close()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never saw the client leave")
	}
}

// Informational answers (103 Early Hints) reach the client before the final one, as through the
// reverse proxy's transport.
func TestUnmatchedEarlyHintsPassThrough(t *testing.T) {
	up := startCountingUpstream(t, 0, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		fmt.Fprint(w, "upstream final")
	})
	a := ruleAgentFor(t, up.addr)
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, fmt.Sprintf("%d %s", code, h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequest("GET", "http://"+a.Addr("http").String()+"/", nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := newClient(t, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(b) != "upstream final" || len(hints) != 1 || hints[0] != "103 </app.css>; rel=preload" {
		t.Errorf("answer %q after hints %q", b, hints)
	}
}
