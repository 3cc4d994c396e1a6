package forward

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// maxReplay bounds what a connection remembers of what its client sent, so that it can be sent
// again to another pod when the first one turns out to refuse connections.
const maxReplay = 64 << 10

// replayConn wraps an accepted connection so that one Pipe can be abandoned and retried on another
// pod: it records what the client sends until the pod answers (or maxReplay is exceeded), and its
// Close only interrupts a blocked Read instead of closing the connection.
type replayConn struct {
	net.Conn

	mu        sync.Mutex
	recording bool
	buf       []byte
	pending   []byte // replayed before reading the connection again
	eof       bool   // the client half-closed: replay ends with EOF
	answered  bool
}

func newReplayConn(c net.Conn) *replayConn { return &replayConn{Conn: c, recording: true} }

func (c *replayConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		c.mu.Unlock()
		return n, nil
	}
	if c.eof {
		c.mu.Unlock()
		return 0, io.EOF
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recording && n > 0 {
		if len(c.buf)+n > maxReplay {
			c.recording, c.buf = false, nil
		} else {
			c.buf = append(c.buf, p[:n]...)
		}
	}
	if errors.Is(err, io.EOF) {
		c.eof = true
	}
	return n, err
}

// Write marks the connection answered: from then on it can no longer move to another pod.
func (c *replayConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if len(p) > 0 && !c.answered {
		c.answered, c.recording, c.buf = true, false, nil
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// Close interrupts a blocked Read; handle closes the real connection.
func (c *replayConn) Close() error { return c.Conn.SetReadDeadline(time.Now()) }

// CloseWrite is not passed on: a retried connection still needs its write side.
func (c *replayConn) CloseWrite() error { return nil }

// rewind prepares a retry: what was recorded is read again. It reports false when the connection
// cannot be retried (the pod answered, or too much was sent to remember).
func (c *replayConn) rewind() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answered || !c.recording {
		return false
	}
	c.pending = append([]byte(nil), c.buf...)
	_ = c.Conn.SetReadDeadline(time.Time{})
	return true
}

// stop ends recording once the connection is committed to a pod for good.
func (c *replayConn) stop() {
	c.mu.Lock()
	c.recording, c.buf = false, nil
	c.mu.Unlock()
}

// neverConnected reports whether the kubelet's error means the pod never accepted the connection
// (nothing listening any more, container or sandbox gone): only then is a retry on another pod
// invisible to the application.
func neverConnected(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	for _, s := range []string{"connection refused", "failed to connect", "sandbox", "not running"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
