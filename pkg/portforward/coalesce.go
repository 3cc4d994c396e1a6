package portforward

import (
	"encoding/binary"
	"net"
	"sync"
)

// spdyHeaderLen is the size of every SPDY/3 frame header; its last three bytes hold the length of
// what follows.
const spdyHeaderLen = 8

// frameCoalescer gathers the pieces of each SPDY frame into a single Write.
//
// The SPDY framer writes a data frame as three writes (stream id, flags and length, payload) and a
// control frame as several. Over the WebSocket tunnel each Write becomes a WebSocket message, a
// TLS record and a system call of its own, so a 100-byte request costs three of each; over a
// SPDY upgrade each Write is a TLS record that the API server reads and forwards on its own. The framer
// writes whole frames under one lock, so buffering until the length in the header is reached
// and writing once never delays a frame.
type frameCoalescer struct {
	net.Conn

	mu   sync.Mutex
	buf  []byte
	held int // while positive, complete frames wait in buf for release
}

func (c *frameCoalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	if c.held > 0 {
		return len(p), nil
	}
	if err := c.writeFrames(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// hold keeps frames back until the matching release, which writes them all at once: opening a
// forwarded connection's two streams then costs one record, read and write at every hop instead
// of three.
func (c *frameCoalescer) hold() {
	c.mu.Lock()
	c.held++
	c.mu.Unlock()
}

func (c *frameCoalescer) release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held--
	if c.held > 0 {
		return nil
	}
	return c.writeFrames()
}

// writeFrames writes the complete frames at the front of buf in one Write and keeps the rest.
func (c *frameCoalescer) writeFrames() error {
	end := 0
	for len(c.buf)-end >= spdyHeaderLen {
		frameLen := spdyHeaderLen + int(binary.BigEndian.Uint32(c.buf[end+4:end+8])&0xffffff)
		if len(c.buf)-end < frameLen {
			break
		}
		end += frameLen
	}
	if end == 0 {
		return nil
	}
	if _, err := c.Conn.Write(c.buf[:end]); err != nil {
		c.buf = c.buf[:0]
		return err
	}
	n := copy(c.buf, c.buf[end:])
	c.buf = c.buf[:n]
	if n == 0 && cap(c.buf) > 1<<20 {
		c.buf = nil // do not keep a huge buffer for small frames
	}
	return nil
}
