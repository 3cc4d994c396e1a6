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

	mu  sync.Mutex
	buf []byte
}

func (c *frameCoalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	off := 0
	for len(c.buf)-off >= spdyHeaderLen {
		frameLen := spdyHeaderLen + int(binary.BigEndian.Uint32(c.buf[off+4:off+8])&0xffffff)
		if len(c.buf)-off < frameLen {
			break
		}
		if _, err := c.Conn.Write(c.buf[off : off+frameLen]); err != nil {
			c.buf = c.buf[:0]
			return 0, err
		}
		off += frameLen
	}
	n := copy(c.buf, c.buf[off:])
	c.buf = c.buf[:n]
	if n == 0 && cap(c.buf) > 1<<20 {
		c.buf = nil // do not keep a huge buffer for small frames
	}
	return len(p), nil
}
