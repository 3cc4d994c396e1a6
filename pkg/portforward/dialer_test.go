package portforward

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/httpstream"
	apispdy "k8s.io/apimachinery/pkg/util/httpstream/spdy"
)

// writeLog records the size of every Write that reaches the network.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, append([]byte(nil), p...))
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// TestSPDYUpgradeCoalescesFrames checks that the SPDY dial path, like the WebSocket one, hands the
// network whole frames: each Write is exactly one SPDY frame.
func TestSPDYUpgradeCoalescesFrames(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	got := make(chan string, 1)
	srv, err := apispdy.NewServerConnection(server, func(s httpstream.Stream, _ <-chan struct{}) error {
		go func() {
			b, _ := io.ReadAll(s)
			got <- string(b)
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	log := &writeLog{Conn: client}
	up := &coalescingUpgrader{conn: log, coalesce: true}
	resp := &http.Response{StatusCode: http.StatusSwitchingProtocols, Header: http.Header{
		"Connection": {"Upgrade"}, "Upgrade": {apispdy.HeaderSpdy31},
	}}
	conn, err := up.NewConnection(resp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := conn.CreateStream(http.Header{"Streamtype": {"data"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(s, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if body := <-got; body != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("server read %q", body)
	}

	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.writes) < 3 { // SYN_STREAM, data, FIN
		t.Fatalf("%d writes, want at least 3", len(log.writes))
	}
	for i, w := range log.writes {
		if len(w) < spdyHeaderLen || spdyHeaderLen+int(binary.BigEndian.Uint32(w[4:8])&0xffffff) != len(w) {
			t.Errorf("write %d (%d bytes) is not exactly one SPDY frame", i, len(w))
		}
	}
}

// refuseUpgrade answers a SPDY upgrade with status and a body of contentType, which arrives on
// the upgraded connection itself, as from a real server, and returns the client side of the
// connection and NewConnection's error.
func refuseUpgrade(t *testing.T, status, contentType, body string) (net.Conn, error) {
	t.Helper()
	rt, err := apispdy.NewRoundTripper(nil)
	if err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	t.Cleanup(func() { server.Close() })
	up := &coalescingUpgrader{rt: rt, conn: client}
	go func() {
		_, _ = io.WriteString(server, "HTTP/1.1 "+status+"\r\nContent-Type: "+contentType+"\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
		_, _ = io.WriteString(server, body)
	}()
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = up.NewConnection(resp)
	return client, err
}

// TestSPDYUpgradeRefused keeps apimachinery's error for a refused upgrade (what kubectl prints).
func TestSPDYUpgradeRefused(t *testing.T) {
	client, err := refuseUpgrade(t, "403 Forbidden", "application/json",
		`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" is forbidden: nope","reason":"Forbidden","code":403}`)
	if err == nil || !strings.Contains(err.Error(), "is forbidden: nope") {
		t.Fatalf("NewConnection = %v, want the Status message", err)
	}
	// The API server's own answer about the request: WebSocket would get it too.
	if !apierrors.IsForbidden(err) || spdyRefused(err) {
		t.Errorf("NewConnection = %v: IsForbidden %v, worth a WebSocket attempt %v; want true, false", err, apierrors.IsForbidden(err), spdyRefused(err))
	}
	if _, err := client.Write([]byte("x")); err == nil {
		t.Error("the refused connection was left open")
	}
}

// TestSPDYUpgradeRefusedByGateway: an answer that is not the API server's (a gateway that passes
// only WebSockets) is worth a WebSocket attempt.
func TestSPDYUpgradeRefusedByGateway(t *testing.T) {
	_, err := refuseUpgrade(t, "400 Bad Request", "text/plain", "this gateway does not pass SPDY/3.1 upgrades\n")
	if err == nil || !strings.Contains(err.Error(), "does not pass SPDY") || !spdyRefused(err) {
		t.Fatalf("NewConnection = %v, want the gateway's message and a refusal worth a WebSocket attempt", err)
	}
}

// TestRESTDialerOrder checks which protocols a dial tries, in which order, and what a fallback
// leaves remembered for the next dial.
func TestRESTDialerOrder(t *testing.T) {
	refused := &refusedUpgradeError{errors.New("unable to upgrade connection: 400 Bad Request")}
	forbidden := &refusedUpgradeError{apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "x", errors.New("nope"))}
	wsRefused := &httpstream.UpgradeFailureError{Cause: errors.New("400 Bad Request")}
	unreachable := errors.New("dial tcp 10.0.0.1:6443: connect: connection refused")
	for _, tc := range []struct {
		name      string
		transport Transport
		spdy, ws  error
		// tried lists the protocols of two dials in a row, "|" between the dials.
		tried   string
		wantErr string
	}{
		{"spdy first", SPDYFirst, nil, nil, "spdy|spdy", ""},
		{"spdy refused by a gateway, remembered", SPDYFirst, refused, nil, "spdy ws|ws", ""},
		{"spdy forbidden: no fallback", SPDYFirst, forbidden, nil, "spdy|spdy", "forbidden"},
		{"api server unreachable: no fallback", SPDYFirst, unreachable, nil, "spdy|spdy", "connection refused"},
		{"both refused: both reported, not remembered", SPDYFirst, refused, errors.New("websocket: bad handshake"), "spdy ws|spdy ws", "400 Bad Request (over WebSocket: websocket: bad handshake)"},
		{"kubectl's order", WebSocketFirst, nil, nil, "ws|ws", ""},
		{"kubectl's order, websocket refused, remembered", WebSocketFirst, nil, wsRefused, "ws spdy|spdy", ""},
		{"spdy only", SPDYOnly, refused, nil, "spdy|spdy", "400 Bad Request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewRESTDialer(nil, nil, tc.transport)
			var tried []string
			d.spdy = func(*url.URL) (httpstream.Connection, string, error) {
				tried = append(tried, "spdy")
				return nil, "", tc.spdy
			}
			d.webSocket = func(*url.URL) (httpstream.Connection, string, error) {
				tried = append(tried, "ws")
				return nil, "", tc.ws
			}
			var dials []string
			var err error
			for range 2 {
				tried = nil
				_, _, err = d.dial(&url.URL{})
				dials = append(dials, strings.Join(tried, " "))
			}
			if got := strings.Join(dials, "|"); got != tc.tried {
				t.Errorf("tried %q, want %q", got, tc.tried)
			}
			if (err == nil) != (tc.wantErr == "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestTransportFromEnv(t *testing.T) {
	for value, want := range map[string]Transport{"": SPDYFirst, "false": SPDYOnly, "FALSE": SPDYOnly, "true": WebSocketFirst, "1": SPDYFirst} {
		if got := TransportFromEnv(value, SPDYFirst); got != want {
			t.Errorf("TransportFromEnv(%q) = %v, want %v", value, got, want)
		}
	}
	if got := TransportFromEnv("", WebSocketFirst); got != WebSocketFirst {
		t.Errorf("TransportFromEnv(\"\", WebSocketFirst) = %v", got)
	}
}
