package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// staticAuth knows one session.
func staticAuth(id, token string) Authenticator {
	hash := HashToken(token)
	return TokenHashFunc(func(_ context.Context, sessionID string) (string, error) {
		if sessionID != id {
			return "", RefuseRetryable("unknown session " + sessionID)
		}
		return hash, nil
	})
}

// pipeAgent is the agent's end of a net.Pipe tunnel: it runs the server handshake and hands the
// attached session to the test.
type pipeAgent struct {
	auth     Authenticator
	sessions chan *yamux.Session
	refusals chan error
}

func newPipeAgent(auth Authenticator) *pipeAgent {
	return &pipeAgent{auth: auth, sessions: make(chan *yamux.Session, 8), refusals: make(chan error, 8)}
}

// dial is a ClientConfig.Dial: every call makes a new pipe and serves its agent end.
func (a *pipeAgent) dial(ctx context.Context) (net.Conn, error) {
	cli, srv := net.Pipe()
	go func() {
		mux, err := yamux.Server(srv, YamuxConfig(nil))
		if err != nil {
			panic(err)
		}
		ctrl, _, err := ServerHandshake(context.Background(), mux, a.auth, "test", 5*time.Second)
		if err != nil {
			a.refusals <- err
			_ = mux.Close()
			return
		}
		go func() { drainControl(ctrl); _ = mux.Close() }()
		a.sessions <- mux
	}()
	return cli, nil
}

func echoServer(t *testing.T) net.Listener { return tunneltest.Echo(t) }

func startClient(t *testing.T, cfg ClientConfig) (errc chan error, states chan StateChange, cancel context.CancelFunc) {
	t.Helper()
	states = make(chan StateChange, 64)
	cfg.OnState = func(sc StateChange) { states <- sc }
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 10 * time.Millisecond
		cfg.MaxBackoff = 50 * time.Millisecond
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc = make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(5 * time.Second):
			t.Error("client did not stop")
		}
	})
	return errc, states, cancel
}

func waitState(t *testing.T, states chan StateChange, want State) StateChange {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case sc := <-states:
			if sc.State == want {
				return sc
			}
		case <-timeout:
			t.Fatalf("no %v state", want)
		}
	}
}

func recv[T any](t *testing.T, c chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out")
	}
	panic("unreachable")
}

func openWithHeader(t *testing.T, mux *yamux.Session, h *Header) *yamux.Stream {
	t.Helper()
	s, err := mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteHeader(s, h); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStealStreamHalfClose(t *testing.T) {
	local := echoServer(t)
	agent := newPipeAgent(staticAuth("s1", "tok"))
	events := make(chan StreamEvent, 8)
	startClient(t, ClientConfig{
		SessionID: "s1", Token: "tok", Dial: agent.dial,
		Handler: &Forwarder{Target: StaticTarget(local.Addr().String()), OnEvent: func(e StreamEvent) { events <- e }},
	})
	mux := recv(t, agent.sessions)
	s := openWithHeader(t, mux, &Header{Mode: ModeSteal, Port: 80, Peer: "10.1.2.3:4"})
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB, more than a window
	go func() {
		_, _ = s.Write(payload)
		_ = s.Close() // half-close: the echo must still come back in full
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo: got %d bytes, want %d", len(got), len(payload))
	}
	if e := recv(t, events); e.Kind != StreamOpened || e.Header.Peer != "10.1.2.3:4" {
		t.Fatalf("event %+v", e)
	}
	if e := recv(t, events); e.Kind != StreamClosed || e.ToLocal != int64(len(payload)) || e.FromLocal != int64(len(payload)) {
		t.Fatalf("event %+v", e)
	}
}

func TestLocalUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // now nothing listens there
	agent := newPipeAgent(staticAuth("s1", "tok"))
	events := make(chan StreamEvent, 8)
	startClient(t, ClientConfig{
		SessionID: "s1", Token: "tok", Dial: agent.dial,
		Handler: &Forwarder{Target: StaticTarget(addr), OnEvent: func(e StreamEvent) { events <- e }},
	})
	mux := recv(t, agent.sessions)
	s := openWithHeader(t, mux, &Header{Mode: ModeSteal})
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := s.Read(make([]byte, 1)); n != 0 || !IsClosedError(err) || errors.Is(err, yamux.ErrTimeout) {
		t.Fatalf("read = %d, %v; want the stream closed", n, err)
	}
	e := recv(t, events)
	if e.Kind != LocalUnavailable || !e.NothingListens || e.Local != addr {
		t.Fatalf("event %+v", e)
	}
}

func TestMirrorStreamDiscardsReplies(t *testing.T) {
	received := make(chan []byte, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("a reply nobody must see"))
		b, _ := io.ReadAll(c)
		received <- b
	}()
	agent := newPipeAgent(staticAuth("s1", "tok"))
	startClient(t, ClientConfig{SessionID: "s1", Token: "tok", Dial: agent.dial, Handler: &Forwarder{Target: StaticTarget(ln.Addr().String())}})
	mux := recv(t, agent.sessions)
	s := openWithHeader(t, mux, &Header{Mode: ModeMirror})
	_, _ = s.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	_ = s.Close()
	if got := string(recv(t, received)); got != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("local got %q", got)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(s); len(b) != 0 {
		t.Fatalf("mirror reply leaked back: %q", b)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	tests := []struct {
		name, id, token string
		retryable       bool
	}{
		{"wrong token", "s1", "guess", false},
		{"unknown session", "s2", "tok", true},
		{"empty token", "s1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cli, srv := net.Pipe()
			smux, _ := yamux.Server(srv, YamuxConfig(nil))
			cmux, _ := yamux.Client(cli, YamuxConfig(nil))
			defer smux.Close()
			defer cmux.Close()
			srvErr := make(chan error, 1)
			go func() {
				_, _, err := ServerHandshake(context.Background(), smux, staticAuth("s1", "tok"), "test", 5*time.Second)
				srvErr <- err
			}()
			_, w, err := ClientHandshake(context.Background(), cmux, &Hello{SessionID: tt.id, Token: tt.token}, 5*time.Second)
			var refused *RefusedError
			if !errors.As(err, &refused) || refused.Retryable != tt.retryable || refused.Reason == "" {
				t.Fatalf("client err = %v (welcome %+v)", err, w)
			}
			if err := recv(t, srvErr); !errors.As(err, &refused) {
				t.Fatalf("server err = %v", err)
			}
		})
	}
}

func TestClientStopsOnPermanentRefusal(t *testing.T) {
	agent := newPipeAgent(staticAuth("s1", "tok"))
	errc, states, _ := startClient(t, ClientConfig{SessionID: "s1", Token: "wrong", Dial: agent.dial, Handler: &Forwarder{Target: StaticTarget("127.0.0.1:1")}})
	err := recv(t, errc)
	var refused *RefusedError
	if !errors.As(err, &refused) || refused.Retryable {
		t.Fatalf("Run = %v, want permanent refusal", err)
	}
	waitState(t, states, StateRefused)
	errc <- nil // let the cleanup's wait return
}

func TestClientReconnects(t *testing.T) {
	local := echoServer(t)
	agent := newPipeAgent(staticAuth("s1", "tok"))
	var mu sync.Mutex
	dials := 0
	dial := func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		dials++
		n := dials
		mu.Unlock()
		if n == 2 {
			return nil, errors.New("port-forward failed") // a failed redial is retried too
		}
		return agent.dial(ctx)
	}
	_, states, _ := startClient(t, ClientConfig{SessionID: "s1", Token: "tok", Dial: dial, Handler: &Forwarder{Target: StaticTarget(local.Addr().String())}})
	mux := recv(t, agent.sessions)
	waitState(t, states, StateConnected)
	_ = mux.Close() // the port-forward dies
	sc := waitState(t, states, StateDisconnected)
	if sc.Err == nil {
		t.Fatal("disconnect without a reason")
	}
	mux = recv(t, agent.sessions)
	waitState(t, states, StateConnected)
	s := openWithHeader(t, mux, &Header{Mode: ModeSteal})
	_, _ = s.Write([]byte("ping"))
	_ = s.Close()
	if b, _ := io.ReadAll(s); string(b) != "ping" {
		t.Fatalf("after reconnect got %q", b)
	}
}

func TestPipeHalfCloseTCP(t *testing.T) {
	// client ⇄ Pipe ⇄ server where the client half-closes and then reads the server's late answer.
	srvLn, _ := net.Listen("tcp", "127.0.0.1:0")
	defer srvLn.Close()
	go func() {
		c, err := srvLn.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c) // until the client's FIN arrives through Pipe
		_, _ = c.Write(append([]byte("got:"), b...))
		_ = c.Close()
	}()
	proxyLn, _ := net.Listen("tcp", "127.0.0.1:0")
	defer proxyLn.Close()
	go func() {
		c, err := proxyLn.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", srvLn.Addr().String())
		if err != nil {
			return
		}
		_, _, _ = Pipe(c, up)
	}()
	c, err := net.Dial("tcp", proxyLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("hello"))
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "got:hello" {
		t.Fatalf("got %q, %v", b, err)
	}
}
