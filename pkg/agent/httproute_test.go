package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// seenRequest is what a test HTTP app records of each request it serves.
type seenRequest struct {
	Method, URI, Host, Body string
	Header                  http.Header
}

// httpApp is an HTTP/1.1 + h2c server standing for the original pods or a laptop app: it answers
// "NAME METHOD URI host=HOST xff=XFF body=BODY", sets X-Served-By and an X-Served-By trailer,
// echoes WebSocket messages prefixed with its name, and records every request.
type httpApp struct {
	name string
	addr string
	seen chan seenRequest
}

func startHTTPApp(t testing.TB, name string) *httpApp {
	t.Helper()
	app := &httpApp{name: name, seen: make(chan seenRequest, 1024)}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			c, err := up.Upgrade(w, r, http.Header{"X-Served-By": {name}})
			if err != nil {
				return
			}
			defer c.Close()
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				if err := c.WriteMessage(mt, append([]byte(name+":"), msg...)); err != nil {
					return
				}
			}
		}
		body, _ := io.ReadAll(r.Body)
		select {
		case app.seen <- seenRequest{Method: r.Method, URI: r.RequestURI, Host: r.Host, Body: string(body), Header: r.Header.Clone()}:
		default:
		}
		w.Header().Set("X-Served-By", name)
		w.Header().Set("Trailer", "X-Trailer")
		fmt.Fprintf(w, "%s %s %s host=%s xff=%q body=%s", name, r.Method, r.RequestURI, r.Host, r.Header.Get("X-Forwarded-For"), body)
		w.Header().Set("X-Trailer", name)
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: handler, Protocols: &protos}
	app.addr = serveHTTP(t, srv)
	return app
}

// serveHTTP serves srv on a loopback port until the test ends and returns its address.
func serveHTTP(t testing.TB, srv *http.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func ruleSpec(t testing.TB, id string, mode tunnel.Mode, user string, f match.Flags) agent.SessionSpec {
	t.Helper()
	rules, err := match.ParseFlags(f)
	if err != nil {
		t.Fatal(err)
	}
	s := spec(id, "tok-"+id, mode, user)
	s.Match = rules
	return s
}

// httpSetup is an agent whose "http" port is served by upstream, with CLIs attached for sessions,
// each delivering to its own laptop app.
type httpSetup struct {
	a        *testAgent
	upstream *httpApp
	laptops  map[string]*httpApp
	clis     map[string]*cli
}

func startHTTPSetup(t testing.TB, sessions []agent.SessionSpec, tweak func(*agent.Config)) *httpSetup {
	t.Helper()
	hs := &httpSetup{upstream: startHTTPApp(t, "upstream"), laptops: map[string]*httpApp{}, clis: map[string]*cli{}}
	static := agent.StaticSessions{}
	for _, s := range sessions {
		static[s.ID] = s
	}
	hs.a = startAgent(t, static, hs.upstream.addr, hs.upstream.addr, tweak)
	for _, s := range sessions {
		laptop := startHTTPApp(t, "laptop-"+s.ID)
		hs.laptops[s.ID] = laptop
		c := startCLI(t, hs.a, s.ID, "tok-"+s.ID, laptop.addr)
		c.waitState(t, tunnel.StateConnected)
		hs.clis[s.ID] = c
	}
	waitSessions(t, hs.a, len(sessions))
	return hs
}

func (hs *httpSetup) url(path string) string { return "http://" + hs.a.Addr("http").String() + path }

func newClient(t testing.TB, h2c bool) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// do sends one request and returns who served it and the body.
func do(t testing.TB, c *http.Client, method, url, body string, header ...string) (servedBy, respBody string, resp *http.Response) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(header); i += 2 {
		if strings.EqualFold(header[i], "Host") {
			req.Host = header[i+1]
			continue
		}
		req.Header.Add(header[i], header[i+1])
	}
	resp, err = c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.Header.Get("X-Served-By"), string(b), resp
}

func TestHTTPRouteRules(t *testing.T) {
	type req struct {
		method, path string
		header       []string
		want         string // "local" or "upstream"
	}
	for _, tc := range []struct {
		name  string
		flags match.Flags
		reqs  []req
	}{
		{"header exact", match.Flags{Header: []string{"x-owner=alice"}}, []req{
			{"GET", "/", []string{"X-Owner", "alice"}, "local"},
			{"GET", "/", []string{"x-owner", "alice"}, "local"},
			{"GET", "/", []string{"X-Owner", "bob"}, "upstream"},
			{"GET", "/", nil, "upstream"},
		}},
		{"header regex", match.Flags{Header: []string{"x-owner=~al(ice|ex)"}}, []req{
			{"GET", "/", []string{"X-Owner", "alex"}, "local"},
			{"GET", "/", []string{"X-Owner", "alexa"}, "upstream"},
		}},
		{"path prefix", match.Flags{PathPrefix: []string{"/v2"}}, []req{
			{"GET", "/v2/users?x=1", nil, "local"},
			{"POST", "/v2", nil, "local"},
			{"GET", "/v1/users", nil, "upstream"},
		}},
		{"path exact", match.Flags{Path: []string{"/health"}}, []req{
			{"GET", "/health", nil, "local"},
			{"GET", "/health/x", nil, "upstream"},
		}},
		{"path regex", match.Flags{PathRegex: []string{"/users/[0-9]+"}}, []req{
			{"GET", "/users/12", nil, "local"},
			{"GET", "/users/ab", nil, "upstream"},
		}},
		{"method", match.Flags{Method: []string{"post"}}, []req{
			{"POST", "/x", nil, "local"},
			{"GET", "/x", nil, "upstream"},
		}},
		{"combination", match.Flags{Header: []string{"x-owner=alice"}, PathPrefix: []string{"/api"}, Method: []string{"PUT"}}, []req{
			{"PUT", "/api/a", []string{"X-Owner", "alice"}, "local"},
			{"GET", "/api/a", []string{"X-Owner", "alice"}, "upstream"},
			{"PUT", "/web", []string{"X-Owner", "alice"}, "upstream"},
			{"PUT", "/api/a", []string{"X-Owner", "bob"}, "upstream"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "s1", tunnel.ModeSteal, "alice", tc.flags)}, nil)
			client := newClient(t, false)
			for _, r := range tc.reqs {
				want := hs.upstream.name
				if r.want == "local" {
					want = hs.laptops["s1"].name
				}
				body := "payload-" + r.method
				servedBy, got, resp := do(t, client, r.method, hs.url(r.path), body, r.header...)
				if servedBy != want {
					t.Errorf("%s %s %v served by %q, want %q", r.method, r.path, r.header, servedBy, want)
				}
				// The request reaches the app untouched: method, target, Host, body; no forwarding
				// headers invented. The trailer comes back.
				wantBody := fmt.Sprintf("%s %s %s host=%s xff=\"\" body=%s", want, r.method, r.path, hs.a.Addr("http"), body)
				if got != wantBody {
					t.Errorf("body %q\nwant %q", got, wantBody)
				}
				if tr := resp.Trailer.Get("X-Trailer"); tr != want {
					t.Errorf("trailer %q, want %q", tr, want)
				}
			}
		})
	}
}

func TestHTTPHostAndForwardedHeadersUntouched(t *testing.T) {
	hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})}, nil)
	client := newClient(t, false)
	for _, owner := range []string{"alice", "bob"} {
		do(t, client, "GET", hs.url("/x"), "", "X-Owner", owner, "Host", "api.team.svc", "X-Forwarded-For", "10.0.0.1", "Connection", "X-Hop", "X-Hop", "dropped")
		app := hs.upstream
		if owner == "alice" {
			app = hs.laptops["s1"]
		}
		got := <-app.seen
		if got.Host != "api.team.svc" {
			t.Errorf("%s: Host %q", owner, got.Host)
		}
		if xff := got.Header.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "10.0.0.1" {
			t.Errorf("%s: X-Forwarded-For %q", owner, xff)
		}
		if got.Header.Get("X-Hop") != "" || got.Header.Get("X-Forwarded-Host") != "" || got.Header.Get("Forwarded") != "" {
			t.Errorf("%s: headers %v", owner, got.Header)
		}
	}
}

// TestHTTPKeepAliveAlternating: one client connection carries matching and non-matching requests,
// each answered by the right side, in order.
func TestHTTPKeepAliveAlternating(t *testing.T) {
	hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})}, nil)
	conn, err := net.Dial("tcp", hs.a.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	// Pipelined: all requests are written before any answer is read.
	var want []string
	for i := range 10 {
		owner := "bob"
		want = append(want, hs.upstream.name)
		if i%2 == 0 {
			owner = "alice"
			want[i] = hs.laptops["s1"].name
		}
		fmt.Fprintf(conn, "POST /r%d HTTP/1.1\r\nHost: api\r\nX-Owner: %s\r\nContent-Length: 2\r\n\r\n%02d", i, owner, i)
	}
	for i := range 10 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if got := resp.Header.Get("X-Served-By"); got != want[i] {
			t.Errorf("request %d served by %q, want %q", i, got, want[i])
		}
		if wantPrefix := fmt.Sprintf("%s POST /r%d ", want[i], i); !strings.HasPrefix(string(b), wantPrefix) || !strings.HasSuffix(string(b), fmt.Sprintf("body=%02d", i)) {
			t.Errorf("response %d: %q", i, b)
		}
	}
	_ = conn.Close()
	waitMetrics(t, hs.a,
		`bridge_agent_http_requests_total{outcome="local",port="http",session="s1"} 5`,
		`bridge_agent_http_requests_total{outcome="original",port="http",session=""} 5`,
		`bridge_agent_connections_total{outcome="routed",port="http"} 1`,
		`bridge_agent_sniffed_connections_total{port="http",protocol="http/1"} 1`,
	)
	ev := <-hs.clis["s1"].events
	if m, _ := ev.Header.Get(tunnel.MetaMethod); m != "POST" || ev.Header.RouteID != "--header X-Owner=alice" || !ev.Header.IsExchange() {
		t.Errorf("CLI stream header %+v", ev.Header)
	}
}

func TestHTTPMirrorWithRule(t *testing.T) {
	t.Run("http1", func(t *testing.T) { testHTTPMirrorWithRule(t, false) })
	t.Run("h2c", func(t *testing.T) { testHTTPMirrorWithRule(t, true) })
}

func testHTTPMirrorWithRule(t *testing.T, h2c bool) {
	hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "m1", tunnel.ModeMirror, "bob", match.Flags{PathPrefix: []string{"/v2"}})}, nil)
	client := newClient(t, h2c)
	laptop := hs.laptops["m1"]
	servedBy, _, _ := do(t, client, "POST", hs.url("/v2/orders?id=7"), "order-7", "X-Trace", "t1", "Host", "api")
	if servedBy != hs.upstream.name {
		t.Fatalf("mirrored request served by %q", servedBy)
	}
	<-hs.upstream.seen
	select {
	case got := <-laptop.seen:
		if got.Method != "POST" || got.URI != "/v2/orders?id=7" || got.Body != "order-7" || got.Host != "api" || got.Header.Get("X-Trace") != "t1" {
			t.Fatalf("laptop got copy %+v", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("laptop got no copy")
	}
	servedBy, _, _ = do(t, client, "GET", hs.url("/v1/orders"), "")
	if servedBy != hs.upstream.name {
		t.Fatalf("unmatched request served by %q", servedBy)
	}
	waitMetrics(t, hs.a, `bridge_agent_http_mirrors_total{port="http",result="sent",session="m1"} 1`)
	select {
	case got := <-laptop.seen:
		t.Fatalf("laptop got a copy of an unmatched request: %+v", got)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestHTTPMirrorNeverSlowsOriginal: a laptop that never answers does not delay the original path,
// and copies beyond the concurrency bound are dropped and counted.
func TestHTTPMirrorNeverSlowsOriginal(t *testing.T) {
	stuck, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	go func() {
		for {
			c, err := stuck.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing
		}
	}()
	upstream := startHTTPApp(t, "upstream")
	m := ruleSpec(t, "m1", tunnel.ModeMirror, "bob", match.Flags{Method: []string{"GET"}})
	a := startAgent(t, agent.StaticSessions{"m1": m}, upstream.addr, upstream.addr, func(c *agent.Config) {
		c.MirrorConcurrency = 2
		c.MirrorStall = 30 * time.Second
	})
	startCLI(t, a, "m1", "tok-m1", stuck.Addr().String()).waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	client := newClient(t, false)
	start := time.Now()
	for range 10 {
		if servedBy, _, _ := do(t, client, "GET", "http://"+a.Addr("http").String()+"/", ""); servedBy != "upstream" {
			t.Fatalf("served by %q", servedBy)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("10 requests took %v with a stuck mirror", d)
	}
	waitMetrics(t, a, `bridge_agent_http_mirrors_total{port="http",result="dropped_busy",session="m1"} 8`)
}

func TestH2CRoutedPerStream(t *testing.T) {
	hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})}, nil)
	client := newClient(t, true)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner, want := "bob", hs.upstream.name
			if i%2 == 0 {
				owner, want = "alice", hs.laptops["s1"].name
			}
			servedBy, body, resp := do(t, client, "POST", hs.url(fmt.Sprintf("/s%d", i)), "grpc-ish", "X-Owner", owner)
			if resp.ProtoMajor != 2 {
				t.Errorf("response over %s", resp.Proto)
			}
			if servedBy != want || !strings.HasSuffix(body, "body=grpc-ish") {
				t.Errorf("stream %d (owner %s) served by %q: %q", i, owner, servedBy, body)
			}
			if tr := resp.Trailer.Get("X-Trailer"); tr != want {
				t.Errorf("stream %d trailer %q, want %q", i, tr, want)
			}
		}()
	}
	wg.Wait()
	// All streams shared one client connection.
	waitMetrics(t, hs.a, `bridge_agent_sniffed_connections_total{port="http",protocol="h2c"} 1`)
}

func TestWebSocketRouted(t *testing.T) {
	hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})}, nil)
	for _, tc := range []struct{ owner, want string }{{"alice", hs.laptops["s1"].name}, {"bob", hs.upstream.name}} {
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		c, resp, err := d.Dial("ws://"+hs.a.Addr("http").String()+"/ws", http.Header{"X-Owner": {tc.owner}})
		if err != nil {
			t.Fatalf("%s: dial: %v", tc.owner, err)
		}
		if got := resp.Header.Get("X-Served-By"); got != tc.want {
			t.Errorf("%s: upgrade answered by %q", tc.owner, got)
		}
		for i := range 3 {
			msg := fmt.Sprintf("m%d", i)
			if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, got, err := c.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want+":"+msg {
				t.Errorf("%s: message %q", tc.owner, got)
			}
		}
		_ = c.Close()
	}
}

// TestTLSPassesThrough: the agent cannot read TLS, so a TLS connection on a port with rules goes to
// the original pods untouched, whatever its headers.
func TestTLSPassesThrough(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls-upstream %s", r.Header.Get("X-Owner"))
	}))
	up.StartTLS()
	defer up.Close()
	laptop := startHTTPApp(t, "laptop")
	s := ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})
	a := startAgent(t, agent.StaticSessions{"s1": s}, up.Listener.Addr().String(), up.Listener.Addr().String(), nil)
	startCLI(t, a, "s1", "tok-s1", laptop.addr).waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequest("GET", "https://"+a.Addr("http").String()+"/", nil)
	req.Header.Set("X-Owner", "alice")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(b) != "tls-upstream alice" {
		t.Fatalf("got %q", b)
	}
	client.CloseIdleConnections()
	waitMetrics(t, a, `bridge_agent_sniffed_connections_total{port="http",protocol="tls"} 1`,
		`bridge_agent_connections_total{outcome="pass_through",port="http"} 1`)
}

// TestServerFirstProtocolFallsThrough: on a port of unknown protocol with rules, a client that
// waits for the server's greeting is passed through after the sniff timeout.
func TestServerFirstProtocolFallsThrough(t *testing.T) {
	greeter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer greeter.Close()
	go func() {
		for {
			c, err := greeter.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "220 greeter ready")
			_ = c.Close()
		}
	}()
	s := ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})
	s.Port, s.PortName = 9090, "admin"
	a := startAgent(t, agent.StaticSessions{"s1": s}, greeter.Addr().String(), greeter.Addr().String(), func(c *agent.Config) {
		c.SniffTimeout = 100 * time.Millisecond
	})
	startCLI(t, a, "s1", "tok-s1", startHTTPApp(t, "laptop").addr).waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	conn, err := net.Dial("tcp", a.Addr("admin").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "220 greeter ready\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	waitMetrics(t, a, `bridge_agent_sniffed_connections_total{port="admin",protocol="silent"} 1`)
}

// TestFiveDevelopers: five sessions on one Service, each with its own header value, get all and
// only their requests, while unmatched requests go to the original pods.
func TestFiveDevelopers(t *testing.T) {
	var sessions []agent.SessionSpec
	for i := range 5 {
		id := fmt.Sprintf("dev%d", i)
		sessions = append(sessions, ruleSpec(t, id, tunnel.ModeSteal, id, match.Flags{Header: []string{"x-dev=" + id}}))
	}
	hs := startHTTPSetup(t, sessions, nil)
	client := newClient(t, false)
	h2 := newClient(t, true)
	counts := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client
			if w%2 == 1 {
				c = h2
			}
			for range 30 {
				n := rand.IntN(6)
				var hdr []string
				want := hs.upstream.name
				if n < 5 {
					id := fmt.Sprintf("dev%d", n)
					hdr = []string{"X-Dev", id}
					want = hs.laptops[id].name
				}
				servedBy, body, resp := do(t, c, "GET", hs.url("/"), "", hdr...)
				if servedBy != want {
					t.Errorf("request for %v served by %q, want %q: %s %s %q", hdr, servedBy, want, resp.Proto, resp.Status, body)
				}
				mu.Lock()
				counts[want]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, app := range append([]*httpApp{hs.upstream}, hs.laptops["dev0"], hs.laptops["dev1"], hs.laptops["dev2"], hs.laptops["dev3"], hs.laptops["dev4"]) {
		if got := len(app.seen); got != counts[app.name] {
			t.Errorf("%s served %d requests, want %d", app.name, got, counts[app.name])
		}
	}
}

// TestPrecedence: the more specific rule set wins; on equal specificity the older session.
func TestPrecedence(t *testing.T) {
	now := time.Now()
	broad := ruleSpec(t, "broad", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-team=a"}})
	narrow := ruleSpec(t, "narrow", tunnel.ModeSteal, "bob", match.Flags{Header: []string{"x-team=a"}, PathPrefix: []string{"/v2"}})
	older := ruleSpec(t, "older", tunnel.ModeSteal, "carol", match.Flags{Header: []string{"x-x=~.+"}})
	younger := ruleSpec(t, "younger", tunnel.ModeSteal, "dave", match.Flags{Header: []string{"x-y=~.+"}})
	broad.StartTime, narrow.StartTime = now.Add(-time.Hour), now // narrow is younger but more specific
	older.StartTime, younger.StartTime = now.Add(-time.Minute), now
	hs := startHTTPSetup(t, []agent.SessionSpec{broad, narrow, older, younger}, nil)
	client := newClient(t, false)
	for _, tc := range []struct {
		path   string
		header []string
		want   string
	}{
		{"/v2/x", []string{"X-Team", "a"}, "narrow"},
		{"/v1/x", []string{"X-Team", "a"}, "broad"},
		{"/", []string{"X-X", "1", "X-Y", "1"}, "older"},
		{"/", []string{"X-Y", "1"}, "younger"},
	} {
		if servedBy, _, _ := do(t, client, "GET", hs.url(tc.path), "", tc.header...); servedBy != hs.laptops[tc.want].name {
			t.Errorf("%s %v served by %q, want laptop-%s", tc.path, tc.header, servedBy, tc.want)
		}
	}
}

func TestHTTPLaptopAppDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	_ = ln.Close()
	upstream := startHTTPApp(t, "upstream")
	s := ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})
	a := startAgent(t, agent.StaticSessions{"s1": s}, upstream.addr, upstream.addr, nil)
	startCLI(t, a, "s1", "tok-s1", dead).waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	client := newClient(t, false)
	_, body, resp := do(t, client, "GET", "http://"+a.Addr("http").String()+"/", "", "X-Owner", "alice")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "is the local app running?") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	// Other requests are unaffected, on the same connection.
	if servedBy, _, _ := do(t, client, "GET", "http://"+a.Addr("http").String()+"/", ""); servedBy != "upstream" {
		t.Fatalf("unmatched request served by %q", servedBy)
	}
	waitMetrics(t, a, `bridge_agent_http_requests_total{outcome="error",port="http",session="s1"} 1`)
}

// TestRulesOnlyWhenNeeded: without rule-holding sessions nothing is sniffed; whole-port
// intercepts keep their per-connection behaviour.
func TestRulesOnlyWhenNeeded(t *testing.T) {
	hs := startHTTPSetup(t, []agent.SessionSpec{spec("s1", "tok-s1", tunnel.ModeSteal, "alice")}, nil)
	client := newClient(t, false)
	if servedBy, _, _ := do(t, client, "GET", hs.url("/"), ""); servedBy != hs.laptops["s1"].name {
		t.Fatalf("served by %q", servedBy)
	}
	if strings.Contains(metricsText(t, hs.a), "bridge_agent_sniffed_connections_total{") {
		t.Fatal("connections were sniffed without rules")
	}
}

func TestAdmitRules(t *testing.T) {
	ports := []agent.DataPort{
		{Name: "http", Port: 80},
		{Name: "db", Port: 5432, AppProtocol: "postgresql"},
		{Name: "web", Port: 8080},
	}
	admit := agent.AdmitFor(ports)
	mk := func(id, user string, port int32, name string, mode tunnel.Mode, f match.Flags) agent.SessionSpec {
		rules, err := match.ParseFlags(f)
		if err != nil {
			t.Fatal(err)
		}
		return agent.SessionSpec{ID: id, User: user, Port: port, PortName: name, Mode: mode, Match: rules}
	}
	alice := match.Flags{Header: []string{"x-owner=alice"}}
	bob := match.Flags{Header: []string{"x-owner=bob"}}
	for _, tc := range []struct {
		name      string
		candidate agent.SessionSpec
		live      []agent.SessionSpec
		wantErr   []string
	}{
		{"rules beside rules", mk("b", "bob", 80, "http", tunnel.ModeSteal, bob),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, alice)}, nil},
		{"identical rules", mk("b", "bob", 80, "http", tunnel.ModeSteal, match.Flags{Header: []string{"X-OWNER=alice"}}),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, alice)},
			[]string{"rule --header X-Owner=alice", "already held by alice in session a"}},
		{"identical rules on another port", mk("b", "bob", 8080, "web", tunnel.ModeSteal, alice),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, alice)}, nil},
		{"identical rules, mirror", mk("b", "bob", 80, "http", tunnel.ModeMirror, alice),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, alice)}, nil},
		{"whole-port steal over rules", mk("b", "bob", 80, "http", tunnel.ModeSteal, match.Flags{}),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, alice)},
			[]string{"carries request rules (--header X-Owner=alice, held by alice in session a)", "stealing the whole port"}},
		{"whole-port mirror beside rules", mk("b", "bob", 80, "http", tunnel.ModeMirror, match.Flags{}),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, alice)}, nil},
		{"rules on a wholly stolen port", mk("b", "bob", 80, "http", tunnel.ModeSteal, bob),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, match.Flags{})},
			[]string{"wholly stolen by alice in session a", "--header X-Owner=bob"}},
		{"two whole-port steals", mk("b", "bob", 80, "http", tunnel.ModeSteal, match.Flags{}),
			[]agent.SessionSpec{mk("a", "alice", 80, "http", tunnel.ModeSteal, match.Flags{})},
			[]string{"already intercepted (steal) by alice"}},
		{"header rule on a non-HTTP port", mk("b", "bob", 5432, "db", tunnel.ModeSteal, bob), nil,
			[]string{"port 5432 (db) does not carry HTTP", `appProtocol "postgresql"`, "--header X-Owner=bob"}},
		{"mirror rule on a non-HTTP port", mk("b", "bob", 5432, "db", tunnel.ModeMirror, bob), nil,
			[]string{"does not carry HTTP"}},
		{"whole-port on a non-HTTP port", mk("b", "bob", 5432, "db", tunnel.ModeSteal, match.Flags{}), nil, nil},
		{"rules on a port of unknown protocol", mk("b", "bob", 8080, "web", tunnel.ModeSteal, bob), nil, nil},
		{"invalid rule from a Lease", agent.SessionSpec{ID: "b", Port: 80, Mode: tunnel.ModeSteal, Match: []agent.MatchRule{{Type: "header-regex", Name: "X", Value: "("}}}, nil,
			[]string{"invalid match rules", "invalid regular expression"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := admit(tc.candidate, tc.live)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("admitted")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestRuleRefusalOverTunnel: a conflicting session is refused at the handshake with the reason.
func TestRuleRefusalOverTunnel(t *testing.T) {
	first := ruleSpec(t, "a", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})
	second := ruleSpec(t, "b", tunnel.ModeSteal, "bob", match.Flags{Header: []string{"x-owner=alice"}})
	upstream := startHTTPApp(t, "upstream")
	a := startAgent(t, agent.StaticSessions{"a": first, "b": second}, upstream.addr, upstream.addr, nil)
	startCLI(t, a, "a", "tok-a", upstream.addr).waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	sc := startCLI(t, a, "b", "tok-b", upstream.addr).waitState(t, tunnel.StateRefused)
	if !strings.Contains(sc.Err.Error(), "already held by alice") {
		t.Fatalf("refusal %v", sc.Err)
	}
}

func TestDataPortAppProtocol(t *testing.T) {
	p, err := agent.ParseDataPort("web=80:8080/TCP=api-shadow:80=kubernetes.io/h2c")
	if err != nil {
		t.Fatal(err)
	}
	if p.AppProtocol != "kubernetes.io/h2c" || p.Upstream != "api-shadow:80" {
		t.Fatalf("parsed %+v", p)
	}
	if isHTTP, known := p.SpeaksHTTP(); !isHTTP || !known {
		t.Fatal("h2c port not HTTP")
	}
	if got := p.String(); got != "web=80:8080/TCP=api-shadow:80=kubernetes.io/h2c" {
		t.Fatalf("String() = %q", got)
	}
	if _, err := agent.ParseDataPort("web=80=api-shadow:80="); err == nil {
		t.Fatal("empty appProtocol accepted")
	}
	old, err := agent.ParseDataPort("http=80:8080/TCP=api-shadow:80")
	if err != nil || old.AppProtocol != "" {
		t.Fatalf("old syntax: %+v, %v", old, err)
	}
}

// TestHTTPShutdownClosesIdleKeepAlive: an idle keep-alive connection does not hold up shutdown.
func TestHTTPShutdownClosesIdleKeepAlive(t *testing.T) {
	hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})}, nil)
	client := newClient(t, false)
	do(t, client, "GET", hs.url("/"), "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := hs.a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v", d)
	}
}

func FuzzSniffProtocol(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "POST /a?b=c HTTP/1.0\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01", "SSH-2.0-OpenSSH\r\n", "*1\r\n$4\r\nPING\r\n", "get key\r\n", "GET", "",
		"PRI * HTTP/2.0\r\n\r\nXX", "M-SEARCH * HTTP/1.1\r\n", "\x00\x00\x00\x08\x04\xd2\x16\x2f",
	} {
		f.Add([]byte(seed), uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, cut uint8) {
		p, done := agent.SniffProtocol(b)
		if !done {
			if p != agent.ProtocolUnknown {
				t.Fatalf("undecided with protocol %v", p)
			}
			if len(b) >= 8<<10 {
				t.Fatalf("undecided after %d bytes", len(b))
			}
			return
		}
		// Once decided, more bytes never change the answer, and the decision was reachable from
		// a prefix the way the agent reads (it may decide early).
		more := append(append([]byte{}, b...), "extra\r\n"...)
		if p2, done2 := agent.SniffProtocol(more); !done2 || p2 != p {
			t.Fatalf("%q: %v, but with more bytes %v (done %v)", b, p, p2, done2)
		}
		n := int(cut) % (len(b) + 1)
		if pp, done := agent.SniffProtocol(b[:n]); done && pp != p {
			t.Fatalf("prefix %q decided %v, whole %q decided %v", b[:n], pp, b, p)
		}
		switch p {
		case agent.ProtocolTLS:
			if b[0] != 0x16 {
				t.Fatalf("TLS without a handshake record: %q", b)
			}
		case agent.ProtocolHTTP2:
			if !strings.HasPrefix(string(b), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
				t.Fatalf("h2 without preface: %q", b)
			}
		}
	})
}

// TestHTTPSessionLeavesMidConnection: once the stealing session is gone, the next requests of the
// same keep-alive connection are served by the original pods.
func TestHTTPSessionLeavesMidConnection(t *testing.T) {
	hs := startHTTPSetup(t, []agent.SessionSpec{ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})}, nil)
	client := newClient(t, false)
	if servedBy, _, _ := do(t, client, "GET", hs.url("/"), "", "X-Owner", "alice"); servedBy != hs.laptops["s1"].name {
		t.Fatalf("served by %q", servedBy)
	}
	hs.clis["s1"].cancel() // the developer stops intercepting
	waitSessions(t, hs.a, 0)
	if servedBy, _, _ := do(t, client, "GET", hs.url("/"), "", "X-Owner", "alice"); servedBy != hs.upstream.name {
		t.Fatalf("after eviction served by %q", servedBy)
	}
	waitMetrics(t, hs.a, `bridge_agent_sniffed_connections_total{port="http",protocol="http/1"} 1`)
}
