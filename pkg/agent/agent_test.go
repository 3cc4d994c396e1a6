package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// lineServer answers every line it reads with "<name>:<line>"; it stands for the original pods
// (upstream) or the developer's app (laptop), so a test can tell who served a connection.
func lineServer(t testing.TB, name string) net.Listener {
	t.Helper()
	return tunneltest.Serve(t, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if _, err := fmt.Fprintf(c, "%s:%s\n", name, sc.Text()); err != nil {
				return
			}
		}
	})
}

// echoServer copies back whatever it reads.
func echoServer(t testing.TB) net.Listener { return tunneltest.Echo(t) }

func loopbackListen(network, _ string) (net.Listener, error) {
	return net.Listen(network, "127.0.0.1:0")
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("AGENT_TEST_LOGS") != "" {
		return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

type testAgent struct {
	*agent.Server
	events chan agent.SessionEvent
}

// startAgent runs an agent with ports "http" and "admin" whose upstreams are the given servers.
func startAgent(t testing.TB, sessions agent.StaticSessions, httpUp, adminUp string, tweak func(*agent.Config)) *testAgent {
	t.Helper()
	events := make(chan agent.SessionEvent, 64)
	cfg := agent.Config{
		Ports: []agent.DataPort{
			{Name: "http", Port: 80, ListenPort: 8080, Upstream: httpUp},
			{Name: "admin", Port: 9090, Upstream: adminUp},
		},
		Sessions:       sessions,
		Listen:         loopbackListen,
		Logger:         testLogger(t),
		Version:        "test",
		OnSessionEvent: func(ev agent.SessionEvent) { events <- ev },
		ShutdownGrace:  2 * time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &testAgent{Server: srv, events: events}
}

func spec(id, token string, mode tunnel.Mode, user string) agent.SessionSpec {
	return agent.SessionSpec{ID: id, User: user, Port: 80, PortName: "http", Mode: mode, TokenHash: tunnel.HashToken(token), StartTime: time.Now()}
}

// cli is an in-process kubectl-bridge intercept: a tunnel.Client whose Dial goes to the agent's
// control port (a port-forward in production) and can be cut or blocked by the test.
type cli struct {
	states  chan tunnel.StateChange
	events  chan tunnel.StreamEvent
	errc    chan error
	cancel  context.CancelFunc
	blocked atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
}

func startCLI(t testing.TB, a *testAgent, id, token, localAddr string) *cli {
	t.Helper()
	c := &cli{states: make(chan tunnel.StateChange, 256), events: make(chan tunnel.StreamEvent, 1024), errc: make(chan error, 1)}
	client, err := tunnel.NewClient(tunnel.ClientConfig{
		SessionID: id, Token: token, Version: "test",
		Dial: func(ctx context.Context) (net.Conn, error) {
			if c.blocked.Load() {
				return nil, errors.New("port-forward refused (test)")
			}
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", a.ControlAddr().String())
			if err == nil {
				c.mu.Lock()
				c.conns = append(c.conns, conn)
				c.mu.Unlock()
			}
			return conn, err
		},
		Handler: &tunnel.Forwarder{Target: tunnel.StaticTarget(localAddr), OnEvent: func(e tunnel.StreamEvent) {
			select {
			case c.events <- e:
			default:
			}
		}},
		OnState: func(sc tunnel.StateChange) {
			select {
			case c.states <- sc:
			default:
			}
		},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() { c.errc <- client.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.errc:
		case <-time.After(5 * time.Second):
			t.Error("CLI did not stop")
		}
	})
	return c
}

// cut kills the current tunnel connection, like a dying port-forward.
func (c *cli) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		_ = conn.Close()
	}
	c.conns = nil
}

func (c *cli) waitState(t testing.TB, want tunnel.State) tunnel.StateChange {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case sc := <-c.states:
			if sc.State == want {
				return sc
			}
		case <-timeout:
			t.Fatalf("CLI never reached state %v", want)
		}
	}
}

// stealAttached starts an agent with one steal session, s1, on the "http" port (upstreams
// answering as "upstream" and "admin") and attaches a CLI to it delivering to localAddr.
func stealAttached(t testing.TB, localAddr string) (*testAgent, *cli) {
	t.Helper()
	a := startAgent(t, agent.StaticSessions{"s1": spec("s1", "tok", tunnel.ModeSteal, "alice")},
		lineServer(t, "upstream").Addr().String(), lineServer(t, "admin").Addr().String(), nil)
	c := startCLI(t, a, "s1", "tok", localAddr)
	c.waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	return a, c
}

func waitSessions(t testing.TB, a *testAgent, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Sessions()) != n {
		if time.Now().After(deadline) {
			t.Fatalf("agent has %d sessions, want %d", len(a.Sessions()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ask opens a connection to the agent's data port key, sends line and returns the answer.
func ask(t testing.TB, a *testAgent, key, line string) string {
	t.Helper()
	c, err := net.Dial("tcp", a.Addr(key).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return roundTrip(t, c, line)
}

func roundTrip(t testing.TB, c net.Conn, line string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, line); err != nil {
		t.Fatalf("write: %v", err)
	}
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read answer to %q: %v", line, err)
	}
	return strings.TrimSpace(answer)
}

func metricsText(t testing.TB, a *testAgent) string {
	t.Helper()
	resp, err := http.Get("http://" + a.HealthAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestPassThroughWithoutSessions(t *testing.T) {
	a := startAgent(t, agent.StaticSessions{}, lineServer(t, "upstream").Addr().String(), lineServer(t, "admin").Addr().String(), nil)
	if got := ask(t, a, "http", "hello"); got != "upstream:hello" {
		t.Fatalf("http answered %q", got)
	}
	if got := ask(t, a, "admin", "hi"); got != "admin:hi" {
		t.Fatalf("admin answered %q", got)
	}
}

func TestSteal(t *testing.T) {
	laptop := lineServer(t, "laptop")
	a, c := stealAttached(t, laptop.Addr().String())
	if got := ask(t, a, "http", "hello"); got != "laptop:hello" {
		t.Fatalf("stolen port answered %q", got)
	}
	// Another port of the Service is not intercepted.
	if got := ask(t, a, "admin", "hi"); got != "admin:hi" {
		t.Fatalf("admin answered %q", got)
	}
	ev := <-c.events
	if ev.Kind != tunnel.StreamOpened || ev.Header.Port != 80 || ev.Header.PortName != "http" || ev.Header.Mode != tunnel.ModeSteal {
		t.Fatalf("CLI event %+v", ev)
	}
	waitMetrics(t, a,
		"bridge_agent_sessions 1",
		`bridge_agent_connections_total{outcome="steal",port="http"} 1`,
		`bridge_agent_connections_total{outcome="pass_through",port="admin"} 1`,
		`bridge_agent_handshakes_total{result="accepted"} 1`,
	)
}

func TestStealLocalAppNotRunning(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	_ = ln.Close()
	a, c := stealAttached(t, dead)
	conn, err := net.Dial("tcp", a.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = fmt.Fprintln(conn, "hello")
	if b, err := io.ReadAll(conn); len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client got %q, %v; want the connection closed", b, err)
	}
	ev := <-c.events
	if ev.Kind != tunnel.LocalUnavailable || !ev.NothingListens {
		t.Fatalf("CLI event %+v, want LocalUnavailable", ev)
	}
}

func TestMirror(t *testing.T) {
	got := make(chan string, 1)
	laptop, _ := net.Listen("tcp", "127.0.0.1:0")
	defer laptop.Close()
	go func() {
		c, err := laptop.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// The laptop app answers, but nobody must see it.
		go func() { _, _ = io.Copy(c, strings.NewReader("laptop reply that must be dropped\n")) }()
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	a := startAgent(t, agent.StaticSessions{"m1": spec("m1", "tok", tunnel.ModeMirror, "bob")},
		lineServer(t, "upstream").Addr().String(), lineServer(t, "admin").Addr().String(), nil)
	c := startCLI(t, a, "m1", "tok", laptop.Addr().String())
	c.waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)

	conn, err := net.Dial("tcp", a.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for _, line := range []string{"one", "two", "three"} {
		_, _ = fmt.Fprintln(conn, line)
		answer, err := r.ReadString('\n')
		if err != nil || answer != "upstream:"+line+"\n" {
			t.Fatalf("client got %q, %v", answer, err)
		}
	}
	_ = conn.Close()
	select {
	case b := <-got:
		if b != "one\ntwo\nthree\n" {
			t.Fatalf("laptop received %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("laptop never received the copy")
	}
	waitMetrics(t, a, `bridge_agent_connections_total{outcome="mirror",port="http"} 1`)
}

// TestMirrorStalledLaptop: the laptop app accepts the copy but never reads it. The client's
// exchange with the original pods must go on at full speed, and the copy be dropped and counted.
func TestMirrorStalledLaptop(t *testing.T) {
	laptop, _ := net.Listen("tcp", "127.0.0.1:0")
	defer laptop.Close()
	var stalled []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := laptop.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			stalled = append(stalled, c) // never read
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range stalled {
			_ = c.Close()
		}
		mu.Unlock()
	}()
	a := startAgent(t, agent.StaticSessions{"m1": spec("m1", "tok", tunnel.ModeMirror, "bob")},
		echoServer(t).Addr().String(), lineServer(t, "admin").Addr().String(), func(c *agent.Config) {
			// Longer than the test: only the bounded buffer may save the original path.
			c.MirrorStall = time.Minute
			c.MirrorBuffer = 256 << 10
		})
	c := startCLI(t, a, "m1", "tok", laptop.Addr().String())
	c.waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)

	conn, err := net.Dial("tcp", a.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := bytes.Repeat([]byte("x"), 64<<10)
	resp := make([]byte, len(req))
	var worst time.Duration
	const rounds = 400 // 25 MiB: far more than every buffer between agent and laptop app
	for i := 0; i < rounds; i++ {
		start := time.Now()
		_ = conn.SetDeadline(start.Add(5 * time.Second))
		if _, err := conn.Write(req); err != nil {
			t.Fatalf("round %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(conn, resp); err != nil {
			t.Fatalf("round %d: read: %v", i, err)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("worst round trip of %d with a stalled mirror: %v", rounds, worst)
	if worst > time.Second {
		t.Errorf("a stalled laptop slowed the client: worst round trip %v", worst)
	}
	waitMetrics(t, a, `bridge_agent_mirror_dropped_total{port="http",reason="buffer_full"} 1`)
}

// waitMetrics waits for /metrics to show every line of want: connections are counted when they
// end, a moment after the client has its answer.
func waitMetrics(t testing.TB, a *testAgent, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := metricsText(t, a)
		missing := ""
		for _, w := range want {
			if !strings.Contains(m, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q:\n%s", missing, grep(m, "bridge_agent"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestRefusals(t *testing.T) {
	sessions := agent.StaticSessions{
		"s1": spec("s1", "tok", tunnel.ModeSteal, "alice"),
		"s2": spec("s2", "tok2", tunnel.ModeSteal, "bob"),
	}
	a := startAgent(t, sessions, lineServer(t, "upstream").Addr().String(), lineServer(t, "admin").Addr().String(), nil)
	laptop := lineServer(t, "laptop").Addr().String()

	t.Run("wrong token", func(t *testing.T) {
		c := startCLI(t, a, "s1", "not-the-token", laptop)
		sc := c.waitState(t, tunnel.StateRefused)
		if !strings.Contains(sc.Err.Error(), "invalid token") {
			t.Fatalf("refusal: %v", sc.Err)
		}
		if got := ask(t, a, "http", "hello"); got != "upstream:hello" {
			t.Fatalf("refused session got traffic: %q", got)
		}
	})
	t.Run("unknown session is retried", func(t *testing.T) {
		c := startCLI(t, a, "nope", "tok", laptop)
		sc := c.waitState(t, tunnel.StateDisconnected)
		var refused *tunnel.RefusedError
		if !errors.As(sc.Err, &refused) || !refused.Retryable {
			t.Fatalf("want a retryable refusal, got %v", sc.Err)
		}
		c.waitState(t, tunnel.StateDisconnected) // and again: it keeps trying
	})
	t.Run("second steal of a port", func(t *testing.T) {
		first := startCLI(t, a, "s1", "tok", laptop)
		first.waitState(t, tunnel.StateConnected)
		second := startCLI(t, a, "s2", "tok2", laptop)
		sc := second.waitState(t, tunnel.StateRefused)
		if !strings.Contains(sc.Err.Error(), "alice") {
			t.Fatalf("refusal does not name the other user: %v", sc.Err)
		}
	})
	refused := 0
	for len(a.events) > 0 {
		if ev := <-a.events; ev.Kind == agent.SessionRefused {
			refused++
		}
	}
	if refused < 3 {
		t.Errorf("%d refusal events, want at least 3", refused)
	}
}

// TestTunnelDrop: a dying tunnel ends the connections it carried, later connections fall back to
// the original pods, and once the CLI redials they are stolen again.
func TestTunnelDrop(t *testing.T) {
	laptop := lineServer(t, "laptop")
	a, c := stealAttached(t, laptop.Addr().String())

	inflight, err := net.Dial("tcp", a.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	defer inflight.Close()
	if got := roundTrip(t, inflight, "before"); got != "laptop:before" {
		t.Fatalf("got %q", got)
	}

	c.blocked.Store(true) // the port-forward cannot be re-established for now
	c.cut()
	c.waitState(t, tunnel.StateDisconnected)
	waitSessions(t, a, 0)

	_ = inflight.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(inflight); len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stolen connection still open after the tunnel dropped: %q, %v", b, err)
	}
	if got := ask(t, a, "http", "during"); got != "upstream:during" {
		t.Fatalf("without a tunnel got %q", got)
	}

	c.blocked.Store(false)
	c.waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)
	if got := ask(t, a, "http", "after"); got != "laptop:after" {
		t.Fatalf("after reconnect got %q", got)
	}
}

// TestCLIExitDetaches: a CLI that stops closes its control stream and the agent detaches at once.
func TestCLIExitDetaches(t *testing.T) {
	a, c := stealAttached(t, lineServer(t, "laptop").Addr().String())
	c.cancel()
	waitSessions(t, a, 0)
	for ev := range a.events {
		if ev.Kind == agent.SessionDetached {
			if ev.SessionID != "s1" || ev.Reason == "" {
				t.Fatalf("detach event %+v", ev)
			}
			break
		}
	}
}

func TestEvict(t *testing.T) {
	a, c := stealAttached(t, lineServer(t, "laptop").Addr().String())
	if !a.Evict("s1", "lease expired") {
		t.Fatal("Evict found no session")
	}
	c.waitState(t, tunnel.StateDisconnected)
}

func TestHealth(t *testing.T) {
	a := startAgent(t, agent.StaticSessions{}, lineServer(t, "upstream").Addr().String(), lineServer(t, "admin").Addr().String(), nil)
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + a.HealthAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", path, resp.Status)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestUpstreamDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	_ = ln.Close()
	a := startAgent(t, agent.StaticSessions{}, dead, dead, nil)
	conn, err := net.Dial("tcp", a.Addr("http").String())
	if err == nil { // on loopback the reset can even beat connect's return
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("err = %v, want the connection reset", err)
	}
	waitMetrics(t, a, `bridge_agent_connections_total{outcome="upstream_error",port="http"} 1`)
}

// TestShutdownDrains: on SIGTERM the agent stops accepting, detaches sessions, and lets in-flight
// connections finish within the grace.
func TestShutdownDrains(t *testing.T) {
	a, c := stealAttached(t, lineServer(t, "laptop").Addr().String())
	inflight, err := net.Dial("tcp", a.Addr("admin").String())
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, inflight, "before"); got != "admin:before" {
		t.Fatalf("got %q", got)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- a.Shutdown(ctx)
	}()
	c.waitState(t, tunnel.StateDisconnected)
	if got := roundTrip(t, inflight, "during"); got != "admin:during" {
		t.Fatalf("in-flight connection broken by shutdown: %q", got)
	}
	if _, err := net.Dial("tcp", a.Addr("admin").String()); err == nil {
		t.Error("agent still accepts during shutdown")
	}
	_ = inflight.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish after the last connection closed")
	}
}

// TestDrainKeepsServing: a stopping agent first says it is not ready and keeps serving new
// connections (stolen ones to the laptop, the rest to the original pods) while kube-proxy catches
// up, and only then closes its listeners.
func TestDrainKeepsServing(t *testing.T) {
	a, _ := stealAttached(t, lineServer(t, "laptop").Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	drained := make(chan struct{})
	go func() { a.Drain(ctx, time.Hour); close(drained) }()
	// Readiness flips at once; the listeners stay.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get("http://" + a.HealthAddr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz still %s during the drain", resp.Status)
		}
	}
	if got := ask(t, a, "http", "during"); got != "laptop:during" {
		t.Fatalf("stolen port during the drain answered %q", got)
	}
	if got := ask(t, a, "admin", "during"); got != "admin:during" {
		t.Fatalf("other port during the drain answered %q", got)
	}
	select {
	case <-drained:
		t.Fatal("the drain ended early")
	default:
	}
}
