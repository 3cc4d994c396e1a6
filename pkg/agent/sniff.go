package agent

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// Protocol is what a connection's first bytes say it speaks.
type Protocol int

const (
	// ProtocolUnknown: not HTTP as far as the agent can tell; routed per connection.
	ProtocolUnknown Protocol = iota
	// ProtocolHTTP1: an HTTP/1.x request line.
	ProtocolHTTP1
	// ProtocolHTTP2: the HTTP/2 connection preface (h2c with prior knowledge, e.g. gRPC).
	ProtocolHTTP2
	// ProtocolTLS: a TLS record (ClientHello); the agent cannot see inside, routed per connection.
	ProtocolTLS
)

// String names p in logs and metrics.
func (p Protocol) String() string {
	switch p {
	case ProtocolHTTP1:
		return "http/1"
	case ProtocolHTTP2:
		return "h2c"
	case ProtocolTLS:
		return "tls"
	}
	return "unknown"
}

const (
	http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	// maxRequestLine is how much of a request line is read to recognize HTTP/1.x. A longer line
	// is decided on its method alone.
	maxRequestLine = 8 << 10
	// maxMethod bounds a method token.
	maxMethod = 24
)

// SniffProtocol classifies a connection from its first bytes. done is false while b is too short
// to tell (more bytes are needed); once done, appending bytes to b never changes the answer, and
// no more than maxRequestLine bytes are ever needed.
func SniffProtocol(b []byte) (p Protocol, done bool) {
	if len(b) == 0 {
		return ProtocolUnknown, false
	}
	if b[0] == 0x16 {
		return ProtocolTLS, true
	}
	if len(b) < len(http2Preface) && http2Preface[:len(b)] == string(b) {
		return ProtocolUnknown, false
	}
	if bytes.HasPrefix(b, []byte(http2Preface)) {
		return ProtocolHTTP2, true
	}
	// HTTP/1.x: METHOD SP TARGET SP HTTP/1.x CRLF.
	i := 0
	for i < len(b) && i <= maxMethod && isTChar(b[i]) {
		i++
	}
	switch {
	case i > maxMethod:
		return ProtocolUnknown, true
	case i == len(b):
		return ProtocolUnknown, false
	case i == 0 || b[i] != ' ':
		return ProtocolUnknown, true
	}
	method := b[:i]
	line := b[:min(len(b), maxRequestLine)]
	end := bytes.IndexByte(line, '\n')
	if end < 0 {
		if len(line) < maxRequestLine {
			rest := line[i+1:]
			if cr := bytes.IndexByte(rest, '\r'); (cr >= 0 && cr < len(rest)-1) || bytes.IndexByte(rest, 0) >= 0 {
				return ProtocolUnknown, true // a CR not followed by LF, or a NUL: not a request line
			}
			return ProtocolUnknown, false
		}
		// A very long URL: trust a conventional upper-case method.
		if isUpperMethod(method) {
			return ProtocolHTTP1, true
		}
		return ProtocolUnknown, true
	}
	l := bytes.TrimSuffix(line[:end], []byte{'\r'})
	if bytes.IndexByte(l, '\r') >= 0 || bytes.IndexByte(l, 0) >= 0 {
		return ProtocolUnknown, true // as decided above on a shorter prefix
	}
	if bytes.HasSuffix(l, []byte(" HTTP/1.1")) || bytes.HasSuffix(l, []byte(" HTTP/1.0")) {
		if len(l) > i+1+len(" HTTP/1.1") {
			return ProtocolHTTP1, true
		}
	}
	return ProtocolUnknown, true
}

func isUpperMethod(m []byte) bool {
	for _, c := range m {
		if (c < 'A' || c > 'Z') && c != '-' && c != '_' {
			return false
		}
	}
	return len(m) > 0
}

func isTChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// sniff reads c's first bytes until SniffProtocol decides, the client goes quiet for timeout (0:
// wait as long as it takes) or the connection ends. It returns what it read, to be replayed;
// silent is set when nothing at all arrived in time (a server-speaks-first protocol).
func sniff(c net.Conn, timeout time.Duration) (p Protocol, buf []byte, silent bool, err error) {
	if timeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	}
	buf = make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if p, done := SniffProtocol(buf); done {
			return p, buf, false, nil
		}
		if rerr != nil {
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				return ProtocolUnknown, buf, len(buf) == 0, nil
			}
			if errors.Is(rerr, io.EOF) {
				rerr = nil
			}
			return ProtocolUnknown, buf, false, rerr
		}
	}
}

// replayConn replays the sniffed bytes before reading on from the connection.
type replayConn struct {
	net.Conn
	buf []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the underlying connection, so relays still propagate half-closes.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
