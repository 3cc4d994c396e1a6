// Package tunneltest holds the loopback TCP servers that tests use to stand for the original
// pods, the developer's app, or a server that never answers.
package tunneltest

import (
	"io"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/yamux"
)

// Serve listens on a loopback port and runs handle on every accepted connection (closing it
// afterwards) until the test ends.
func Serve(t testing.TB, handle func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln
}

// Silent accepts connections and never answers nor closes them until the test ends: the server
// that hangs naive clients.
func Silent(t testing.TB) net.Listener {
	t.Helper()
	return Serve(t, func(net.Conn) { <-t.Context().Done() })
}

// Echo copies back whatever it reads.
func Echo(t testing.TB) net.Listener {
	t.Helper()
	return Serve(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// EchoFirstStream copies back what the first stream the other end of mux opens carries, then
// closes that stream.
func EchoFirstStream(mux *yamux.Session) {
	s, err := mux.Accept()
	if err != nil {
		return
	}
	_, _ = io.Copy(s, s)
	_ = s.Close()
}

// StreamRoundTrip opens a stream on mux, sends n bytes, half-closes it (a yamux stream's Close)
// and fails the test unless exactly those bytes come back: a check that bytes cross a tunnel to
// an EchoFirstStream intact.
func StreamRoundTrip(t testing.TB, mux *yamux.Session, n int) {
	t.Helper()
	s, err := mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("0123456789", n/10+1)[:n]
	go func() { _, _ = io.WriteString(s, msg); _ = s.Close() }()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != msg {
		t.Fatalf("echo: %d of %d bytes back, %v", len(got), n, err)
	}
}
