package tunnel

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// acceptOnce serves one connection of a fresh TCP listener with Accept, dials it, and returns the
// client side and Accept's result.
func acceptOnce(t *testing.T, timeout time.Duration) (net.Conn, chan net.Conn, chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	conns, errs := make(chan net.Conn, 1), make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errs <- err
			return
		}
		t.Cleanup(func() { _ = c.Close() })
		tc, err := Accept(c, timeout)
		if err != nil {
			errs <- err
			return
		}
		conns <- tc
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, conns, errs
}

// serveEcho runs a yamux server on conn that echoes its first stream.
func serveEcho(t *testing.T, conn net.Conn) {
	t.Helper()
	if cc := coalesce(conn).(*coalescedConn); cc.tcp == nil {
		t.Errorf("the agent's end lost its TCP connection (%T): frames would be copied instead of one writev", conn)
	}
	mux, err := ServerSession(conn, nil)
	if err != nil {
		t.Error(err)
		return
	}
	t.Cleanup(func() { _ = mux.Close() })
	go tunneltest.EchoFirstStream(mux)
}

func roundTrip(t *testing.T, conn net.Conn) {
	t.Helper()
	mux, err := ClientSession(conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	tunneltest.StreamRoundTrip(t, mux, 7000)
}

func TestAcceptPortForward(t *testing.T) {
	c, conns, errs := acceptOnce(t, 5*time.Second)
	go func() {
		select {
		case tc := <-conns:
			serveEcho(t, tc)
		case err := <-errs:
			t.Errorf("Accept: %v", err)
		}
	}()
	// yamux speaks first, from its first byte.
	roundTrip(t, c)
}

func TestAcceptUpgrade(t *testing.T) {
	c, conns, errs := acceptOnce(t, 5*time.Second)
	// What the API server's proxy sends on after authorizing .../pods/NAME:PORT/proxy/tunnel.
	req := "GET " + UpgradePath + " HTTP/1.1\r\nHost: 10.0.0.7:7070\r\nConnection: keep-alive, Upgrade\r\nUpgrade: " + UpgradeProtocol + "\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	select {
	case tc := <-conns:
		serveEcho(t, tc)
	case err := <-errs:
		t.Fatalf("Accept: %v", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != UpgradeProtocol {
		t.Fatalf("answer %s, Upgrade %q", resp.Status, resp.Header.Get("Upgrade"))
	}
	if br.Buffered() != 0 {
		t.Fatalf("%d bytes after the 101 answer", br.Buffered())
	}
	roundTrip(t, c)
}

func TestAcceptRefuses(t *testing.T) {
	up := "Connection: Upgrade\r\nUpgrade: " + UpgradeProtocol + "\r\n"
	for _, tc := range []struct {
		name, send string
		status     int
	}{
		{"other path", "GET /metrics HTTP/1.1\r\nHost: x\r\n" + up + "\r\n", http.StatusNotFound},
		{"not GET", "POST /tunnel HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + up + "\r\n", http.StatusMethodNotAllowed},
		{"no upgrade", "GET /tunnel HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusUpgradeRequired},
		{"another protocol", "GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", http.StatusUpgradeRequired},
		{"bytes before the answer", "GET /tunnel HTTP/1.1\r\nHost: x\r\n" + up + "\r\n\x00\x00", http.StatusBadRequest},
		{"not HTTP either", "\x16\x03\x01\x02\x00 a TLS hello\r\n\r\n", 0},
		// Refused once maxUpgradeRequest bytes came, not at the deadline (the test's timeout).
		{"endless header", "GET /tunnel HTTP/1.1\r\nX-Long: " + strings.Repeat("a", 2*maxUpgradeRequest), -1},
		{"silence", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			timeout := 300 * time.Millisecond
			if tc.status == -1 {
				timeout = 30 * time.Second
			}
			c, conns, errs := acceptOnce(t, timeout)
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			select {
			case <-conns:
				t.Fatal("accepted")
			case err := <-errs:
				t.Logf("Accept: %v", err)
				if tc.status == -1 && errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("the request was read until the deadline, not up to its bound")
				}
			}
			if tc.status <= 0 {
				return
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}
