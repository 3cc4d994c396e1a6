package tunnel

import (
	"encoding/binary"
	"log/slog"
	"net"
	"sync"

	"github.com/hashicorp/yamux"
)

// yamux frame header layout (github.com/hashicorp/yamux const.go): version, type, flags, stream
// ID, length.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// ServerSession starts the agent's end of a tunnel on conn.
func ServerSession(conn net.Conn, logger *slog.Logger) (*yamux.Session, error) {
	return yamux.Server(coalesce(conn), YamuxConfig(logger))
}

// ClientSession starts the CLI's end of a tunnel on conn.
func ClientSession(conn net.Conn, logger *slog.Logger) (*yamux.Session, error) {
	return yamux.Client(coalesce(conn), YamuxConfig(logger))
}

// coalescedConn sends a yamux data frame's header and body in one Write.
//
// yamux's send loop writes a data frame as two Writes, the 12-byte header and then the body. Over
// TCP with Nagle off that is two segments; over a port-forward it is two SPDY frames, two
// WebSocket messages and two hops through the API server and the kubelet each way, which
// measurably costs latency and throughput. A data header announcing a non-empty body is always
// followed by that body (yamux copies the body before giving up on a send), so it is held and
// written together with the next Write. Every other frame goes out as it comes.
type coalescedConn struct {
	net.Conn
	tcp     *net.TCPConn // the TCP connection under Conn (the agent's end), for writev; or nil
	mu      sync.Mutex
	pending []byte // a held data header, or nil
	buf     []byte // reused for the held header and for joining it with its body
}

func coalesce(conn net.Conn) net.Conn {
	c := &coalescedConn{Conn: conn}
	switch tc := conn.(type) {
	case *net.TCPConn:
		c.tcp = tc
	case *replayConn:
		// Only reads go through replayConn.
		c.tcp, _ = tc.Conn.(*net.TCPConn)
	}
	return c
}

func (c *coalescedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
			c.pending = append(c.buf[:0], p...)
			return len(p), nil
		}
		return c.Conn.Write(p)
	}
	header := c.pending
	c.pending = nil
	if c.tcp != nil {
		// One writev, no copy (the agent's end: the runtime's or the API server's connection
		// into the pod).
		bufs := net.Buffers{header, p}
		n, err := bufs.WriteTo(c.tcp)
		return max(int(n)-yamuxHeaderSize, 0), err
	}
	// The CLI's end is a port-forward stream, where one Write is one SPDY frame, or a TLS
	// connection to the API server, where it is one record instead of two. The joined buffer is
	// kept for the next frame; it is at most a stream window (StreamWindow) plus a header.
	c.buf = append(header, p...)
	n, err := c.Conn.Write(c.buf)
	return max(n-yamuxHeaderSize, 0), err
}
