package portforward

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

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
	up := &coalescingUpgrader{conn: log}
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

// TestSPDYUpgradeRefused keeps apimachinery's error for a refused upgrade (what kubectl prints).
func TestSPDYUpgradeRefused(t *testing.T) {
	rt, err := apispdy.NewRoundTripper(nil)
	if err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	defer server.Close()
	up := &coalescingUpgrader{rt: rt, conn: client}
	// The refusal's body arrives on the connection itself, as from a real server.
	body := `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" is forbidden: nope","reason":"Forbidden","code":403}`
	go func() {
		_, _ = io.WriteString(server, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
		_, _ = io.WriteString(server, body)
	}()
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.NewConnection(resp); err == nil || !strings.Contains(err.Error(), "is forbidden: nope") {
		t.Fatalf("NewConnection = %v, want the Status message", err)
	}
	if _, err := client.Write([]byte("x")); err == nil {
		t.Error("the refused connection was left open")
	}
}
