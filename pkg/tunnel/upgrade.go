package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// The agent's control port takes a tunnel two ways. Through a port-forward the yamux session
// starts at the first byte (yamux's version byte, 0). Through the API server's pods/proxy
// subresource the CLI first sends an HTTP/1.1 Upgrade request for UpgradePath, which the API
// server relays to the pod's IP; once the agent answers 101 the API server only copies bytes, and
// the yamux session runs on the upgraded connection. The second way skips the kubelet and the
// container runtime (two hops and two parsers of every frame) on each byte.
const (
	// UpgradePath is the path the CLI asks for, after .../pods/NAME:PORT/proxy.
	UpgradePath = "/tunnel"
	// UpgradeProtocol is the HTTP Upgrade token of the tunnel.
	UpgradeProtocol = "kubectl-bridge-tunnel/1"
)

// yamuxVersion is the first byte of every yamux frame.
const yamuxVersion = 0

// maxUpgradeRequest bounds the upgrade request's size (what the API server relays is well under).
const maxUpgradeRequest = 64 << 10

// Accept reads the first bytes of a connection to the control port and returns the connection
// to run the tunnel on: the same bytes for a port-forward, or, for an HTTP Upgrade request to
// UpgradePath, the connection after the agent's 101 answer. Any other HTTP request gets an HTTP
// error answer and an error. timeout bounds the wait for those first bytes.
func Accept(conn net.Conn, timeout time.Duration) (net.Conn, error) {
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	var first [1]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		return nil, fmt.Errorf("read the first byte: %w", err)
	}
	if first[0] == yamuxVersion {
		_ = conn.SetReadDeadline(time.Time{})
		return &replayConn{Conn: conn, first: first[0]}, nil
	}
	// The request is bounded: the control port is reachable from the cluster's network, and an
	// endless header line must not grow the agent's memory until the deadline.
	br := bufio.NewReader(io.LimitReader(io.MultiReader(bytes.NewReader(first[:]), conn), maxUpgradeRequest))
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, fmt.Errorf("read the upgrade request: %w", err)
	}
	_ = req.Body.Close()
	if status, reason := checkUpgrade(req); status != 0 {
		answer(conn, status, reason)
		return nil, fmt.Errorf("refused %s %s: %s", req.Method, req.URL.Path, reason)
	}
	if br.Buffered() > 0 {
		// The client must wait for 101 before it speaks yamux; bytes read ahead into br would be
		// lost to the tunnel.
		answer(conn, http.StatusBadRequest, "data sent before the upgrade was answered")
		return nil, errors.New("refused the upgrade: data sent before the upgrade was answered")
	}
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+UpgradeProtocol+"\r\n\r\n"); err != nil {
		return nil, fmt.Errorf("answer the upgrade: %w", err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn, nil
}

// checkUpgrade returns the HTTP status to refuse req with, or 0 when it asks for the tunnel.
func checkUpgrade(req *http.Request) (int, string) {
	switch {
	case req.URL.Path != UpgradePath:
		return http.StatusNotFound, "this is kubectl-bridge's tunnel port: the only path is " + UpgradePath
	case req.Method != http.MethodGet:
		return http.StatusMethodNotAllowed, "the tunnel is opened with GET"
	case !headerHasToken(req.Header, "Connection", "upgrade") || !strings.EqualFold(req.Header.Get("Upgrade"), UpgradeProtocol):
		return http.StatusUpgradeRequired, "the tunnel needs Connection: Upgrade and Upgrade: " + UpgradeProtocol
	}
	return 0, ""
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func answer(conn net.Conn, status int, reason string) {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		status, http.StatusText(status), len(reason)+1, reason)
}

// replayConn gives back the byte Accept read before handing the connection to yamux.
type replayConn struct {
	net.Conn
	first    byte
	replayed bool
}

func (c *replayConn) Read(p []byte) (int, error) {
	if !c.replayed && len(p) > 0 {
		c.replayed = true
		p[0] = c.first
		return 1, nil
	}
	return c.Conn.Read(p)
}
