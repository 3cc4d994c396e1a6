package portforward

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/moby/spdystream/spdy"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/klog/v2"
)

// ErrNotAcknowledged reports that a stream's connection closed before the server acknowledged the
// stream. The server then never took it (its reply would have come before the close), so
// nothing sent on it reached the pod and it can be sent again on a new connection.
var ErrNotAcknowledged = errors.New("the port-forward connection closed before the kubelet took the stream")

// errClosed is the verdict on a stream left unanswered when this side closed the connection.
var errClosed = errors.New("port-forward connection closed")

// errStreamClosed is returned by writes to a stream this side has finished or reset. It wraps
// net.ErrClosed: the copy that made the write stops as on a closed socket.
var errStreamClosed = fmt.Errorf("port-forward stream: %w", net.ErrClosed)

// replyTimeout bounds how long a stream waits for the server to acknowledge it, as apimachinery's
// createStreamResponseTimeout does.
const replyTimeout = 30 * time.Second

// goAwayTimeout bounds the goodbye frame Close writes: a connection whose peer stopped reading
// must still close.
const goAwayTimeout = time.Second

// maxQueued is how many received bytes a stream holds for its reader before the connection stops
// reading (backpressure, as with spdystream, whose frame workers block on a stream's unread data).
const maxQueued = 1 << 20

// chunkSize is the size of the pooled buffers received data frames are read into: the container
// runtime sends at most 32 KiB per frame (its io.Copy buffer).
const chunkSize = 32 << 10

// clientConn is the client side of a port-forward SPDY/3.1 connection: what apimachinery's
// httpstream/spdy client connection over moby/spdystream does, with the frame codec still
// spdystream's (spdy.Framer: frame layout and header compression).
//
// Why our own connection loop (docs/benchmarks.md, sessions 8 and 9):
//   - Early data. spdystream's CreateStream waits until the SYN_REPLY has come back through the API
//     server, the kubelet and the container runtime, so every forwarded TCP connection paid a full
//     round trip before its first byte could leave. SPDY lets the initiator send DATA right after
//     SYN_STREAM; the server (spdystream, in the kubelet and the runtime) handles a stream's frames
//     in order and replies before it takes the next frame, so early data is delivered. OpenStream
//     returns at once; the server's verdict arrives on a channel.
//   - The receive path. spdystream's read loop hands every frame to a worker goroutine through a
//     priority queue, the worker hands its payload to the stream's reader through an unbuffered
//     channel, and every frame is a new allocation: garbage collection and goroutine hand-offs
//     were a quarter of forward's CPU samples in a bulk download. Here the read loop reads a data
//     frame into a pooled buffer and queues it on its stream, and the stream's reader takes every
//     queued frame that fits in one Read. Measured: a kept-alive round trip 0.02–0.04 ms shorter;
//     bulk throughput unchanged within the noise, as the time saved is spent waiting for the
//     server's next bytes (docs/benchmarks.md, session 9).
//   - Receive batching (batch.go): the read loop sees the data frames, and so knows when a bulk
//     transfer is under way and the socket's reader can be woken per batch instead of per record.
//
// A stream opened in the moment between the server closing the connection and this client
// reading that close is never acknowledged; its verdict is ErrNotAcknowledged, so that the caller
// can send it again on a new connection (as a waiting CreateStream would have failed and let the
// pool reconnect).
type clientConn struct {
	conn   net.Conn
	frames *frameCoalescer // nil when frames are not coalesced
	framer *spdy.Framer    // writes every frame; parses the control frames serve hands it
	ctrl   bytes.Reader    // the control frame being parsed, the framer's input

	wmu sync.Mutex // frames go out whole and in order; stream ids increase on the wire

	mu        sync.Mutex
	streams   map[spdy.StreamId]*clientStream
	nextID    spdy.StreamId
	pingID    uint32
	closing   bool // Close was called: an unanswered stream may have been taken
	ended     bool // serve returned: no frame will arrive any more
	idle      time.Duration
	idleTimer *time.Timer

	closeChan chan bool // closed once the connection is ending (Close, or serve returned)
	closeOnce sync.Once
	served    chan struct{} // closed when serve has handled every frame it will
	chunks    sync.Pool
	batch     *receiveBatcher // nil: receive batching off
}

var _ httpstream.Connection = (*clientConn)(nil)

// newClientConn starts a client SPDY connection over conn, pinging every pingPeriod when it is
// positive (keeps idle connections alive through load balancers, as client-go does), batching
// received data with batch (nil: not).
func newClientConn(conn net.Conn, pingPeriod time.Duration, batch *receiveBatcher) (*clientConn, error) {
	c := &clientConn{
		conn:      conn,
		batch:     batch,
		streams:   map[spdy.StreamId]*clientStream{},
		nextID:    1, // client-initiated streams and pings have odd ids
		pingID:    1,
		closeChan: make(chan bool),
		served:    make(chan struct{}),
	}
	c.chunks.New = func() any { b := make([]byte, chunkSize); return &b }
	framer, err := spdy.NewFramer(conn, &c.ctrl)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.framer = framer
	c.frames, _ = conn.(*frameCoalescer)
	go c.serve()
	if pingPeriod > 0 {
		go c.sendPings(pingPeriod)
	}
	return c, nil
}

// writeFrame sends one frame.
func (c *clientConn) writeFrame(f spdy.Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.framer.WriteFrame(f)
}

// OpenStream creates a stream and returns at once; data written to it follows the SYN_STREAM.
// The returned channel yields nil when the server accepted the stream, ErrNotAcknowledged when
// the connection ended first, or another error when the server reset the stream or did not
// answer within replyTimeout.
func (c *clientConn) OpenStream(headers http.Header) (httpstream.Stream, <-chan error, error) {
	c.wmu.Lock() // held from taking the id to writing the SYN_STREAM: ids must increase
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.ended || c.closing {
		c.mu.Unlock()
		return nil, nil, fmt.Errorf("create stream: %w", net.ErrClosed)
	}
	if c.nextID > 0x7fffffff {
		c.mu.Unlock()
		return nil, nil, errors.New("create stream: the connection has used up its stream ids")
	}
	s := &clientStream{c: c, id: c.nextID, headers: headers, verdict: make(chan error, 1)}
	s.cond.L = &s.mu
	c.nextID += 2
	c.streams[s.id] = s
	s.replyTimer = time.AfterFunc(replyTimeout, func() {
		c.decide(s, fmt.Errorf("stream %d: the server did not acknowledge it within %s", s.id, replyTimeout))
	})
	c.mu.Unlock()
	if err := c.framer.WriteFrame(&spdy.SynStreamFrame{StreamId: s.id, Headers: headers}); err != nil {
		c.forget(s)
		c.decide(s, err)
		return nil, nil, err
	}
	return s, s.verdict, nil
}

// decide delivers the server's verdict on s, once. Callers hold no lock.
func (c *clientConn) decide(s *clientStream, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.decided {
		return
	}
	s.decided = true
	s.replyTimer.Stop()
	s.verdict <- err
}

// replied records that the server answered s and tells whether s was reset before: it then
// leaves the connection, and its reset is due.
func (c *clientConn) replied(s *clientStream) (resetDue bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.replied = true
	if s.resetPending {
		delete(c.streams, s.id)
		return true
	}
	return false
}

// Batch runs fn and sends the frames it wrote in one write, when the connection coalesces frames.
// It returns fn's error, or the write's (the connection failed and the frames are lost).
func (c *clientConn) Batch(fn func() error) error {
	if c.frames == nil {
		return fn()
	}
	c.frames.hold()
	err := fn()
	if rerr := c.frames.release(); err == nil {
		err = rerr
	}
	return err
}

// CreateStream implements httpstream.Connection: it waits for the server's reply.
func (c *clientConn) CreateStream(headers http.Header) (httpstream.Stream, error) {
	s, replied, err := c.OpenStream(headers)
	if err != nil {
		return nil, err
	}
	if err := <-replied; err != nil {
		return nil, err
	}
	return s, nil
}

func (c *clientConn) stream(id spdy.StreamId) *clientStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *clientConn) forget(s *clientStream) {
	c.mu.Lock()
	delete(c.streams, s.id)
	c.mu.Unlock()
}

// RemoveStreams implements httpstream.Connection. A stream whose reset waits for the server's
// reply stays until the reply.
func (c *clientConn) RemoveStreams(streams ...httpstream.Stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range streams {
		if cs, ok := s.(*clientStream); ok && !cs.resetPending {
			delete(c.streams, cs.id)
		}
	}
}

// Close ends the connection at once: every stream ends, the server is told (GOAWAY) and the
// network connection closes.
func (c *clientConn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	c.signalClosed()
	ended := c.ended
	streams := make([]*clientStream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	c.mu.Unlock()
	for _, s := range streams {
		// Their data is not read any more, so serve must not wait for room in their queues;
		// end gives the unanswered ones their verdict.
		s.drop()
	}
	var err error
	if !ended {
		// Best effort: the peer learns why the connection goes, unless it stopped reading.
		_ = c.conn.SetWriteDeadline(time.Now().Add(goAwayTimeout))
		err = c.writeFrame(&spdy.GoAwayFrame{Status: spdy.GoAwayOK})
	}
	if cerr := c.conn.Close(); err == nil {
		err = cerr
	}
	<-c.served
	return err
}

// CloseChan implements httpstream.Connection: the channel closes when the connection ends, from
// either side; no stream can be opened on it from then on.
func (c *clientConn) CloseChan() <-chan bool { return c.closeChan }

// SetIdleTimeout implements httpstream.Connection: the connection closes after timeout without
// a frame from the server; zero turns this off.
func (c *clientConn) SetIdleTimeout(timeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idle = timeout
	if c.idleTimer != nil {
		c.idleTimer.Stop()
		c.idleTimer = nil
	}
	if timeout > 0 && !c.ended {
		c.idleTimer = time.AfterFunc(timeout, func() {
			klog.V(3).InfoS("Port-forward connection idle, closing", "timeout", timeout)
			c.Close()
		})
	}
}

// serve reads the server's frames until the connection ends. Data frames are parsed here (an
// 8-byte header) and read straight into pooled buffers; control frames go through spdystream's
// framer, which keeps the header decompression state.
func (c *clientConn) serve() {
	defer c.end()
	var hdr [8]byte
	var ctrlBuf []byte
	for {
		if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
			c.readFailed(err)
			return
		}
		length := int(binary.BigEndian.Uint32(hdr[4:8]) & 0xffffff)
		if hdr[0]&0x80 != 0 {
			c.received(0)
			if cap(ctrlBuf) < spdyHeaderLen+length {
				ctrlBuf = make([]byte, spdyHeaderLen+length)
			}
			ctrlBuf = ctrlBuf[:spdyHeaderLen+length]
			copy(ctrlBuf, hdr[:])
			if _, err := io.ReadFull(c.conn, ctrlBuf[8:]); err != nil {
				c.readFailed(err)
				return
			}
			c.ctrl.Reset(ctrlBuf)
			f, err := c.framer.ReadFrame()
			if err != nil {
				klog.V(3).InfoS("Port-forward connection: unreadable control frame, closing", "err", err)
				return
			}
			if !c.control(f) {
				return
			}
			continue
		}
		s := c.received(spdy.StreamId(binary.BigEndian.Uint32(hdr[0:4]) & 0x7fffffff))
		if length > 0 {
			chunk := c.chunk(length)
			if _, err := io.ReadFull(c.conn, chunk.b); err != nil {
				c.readFailed(err)
				return
			}
			// Before the push, which may wait for the reader: by the time the payload is read,
			// the mark for the next wait is set.
			c.batch.frame(length)
			if s == nil {
				c.putChunk(chunk) // a stream this side already ended
			} else {
				s.push(chunk)
			}
		} else {
			c.batch.frame(0)
		}
		if s != nil && spdy.DataFlags(hdr[4])&spdy.DataFlagFin != 0 {
			s.remoteFinish()
		}
	}
}

func (c *clientConn) readFailed(err error) {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if !closing && !errors.Is(err, io.EOF) {
		klog.V(3).InfoS("Port-forward connection read failed", "err", err)
	}
}

// received notes a frame from the server (restarting the idle timer, if there is one) and
// returns the stream it is for; 0, a control frame's, has none. One lock per data frame.
func (c *clientConn) received(id spdy.StreamId) *clientStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idleTimer != nil {
		c.idleTimer.Reset(c.idle)
	}
	return c.streams[id]
}

// control handles a control frame; false ends the connection.
func (c *clientConn) control(f spdy.Frame) bool {
	switch f := f.(type) {
	case *spdy.SynReplyFrame:
		if s := c.stream(f.StreamId); s != nil {
			c.decide(s, nil)
			if c.replied(s) {
				// Reset while unanswered: the reset the server may now take. Not written from
				// here: serve must keep reading whatever the write waits for.
				go func() { _ = c.writeFrame(&spdy.RstStreamFrame{StreamId: s.id, Status: spdy.Cancel}) }()
			}
			if f.CFHeader.Flags&spdy.ControlFlagFin != 0 {
				s.remoteFinish()
			}
		}
	case *spdy.RstStreamFrame:
		if s := c.stream(f.StreamId); s != nil {
			c.forget(s)
			c.decide(s, fmt.Errorf("stream %d reset by the server (status %d)", f.StreamId, f.Status))
			s.finishLocal() // nothing more is sent on a reset stream, not even our reset
			s.remoteFinish()
		}
	case *spdy.PingFrame:
		if f.Id%2 == 0 { // the server's: answer it; odd ids are answers to ours
			go func() { _ = c.writeFrame(f) }()
		}
	case *spdy.SynStreamFrame:
		// The port-forward server never opens streams.
		go func() { _ = c.writeFrame(&spdy.RstStreamFrame{StreamId: f.StreamId, Status: spdy.RefusedStream}) }()
	case *spdy.GoAwayFrame:
		return false
	}
	// Headers, settings and window updates carry nothing port-forward uses.
	return true
}

// end runs when serve returns: every stream ends, unanswered ones learn that no answer comes.
func (c *clientConn) end() {
	c.mu.Lock()
	c.ended = true
	c.signalClosed()
	closing := c.closing
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	streams := c.streams
	c.streams = map[spdy.StreamId]*clientStream{}
	c.mu.Unlock()
	c.batch.stop()
	c.conn.Close()
	verdict := ErrNotAcknowledged
	if closing {
		// This side cut the connection: the reply may have been on its way.
		verdict = errClosed
	}
	for _, s := range streams {
		c.decide(s, verdict)
		s.remoteFinish()
	}
	close(c.served)
}

// signalClosed closes CloseChan. It happens before any stream learns that the connection ended,
// so that a caller who then opens a stream finds the connection dead (the pool reconnects)
// rather than failing.
func (c *clientConn) signalClosed() {
	c.closeOnce.Do(func() { close(c.closeChan) })
}

// chunk is a received frame's payload in a buffer that goes back to the pool once read.
type chunk struct {
	buf *[]byte // nil when not pooled
	b   []byte
}

func (c *clientConn) chunk(n int) chunk {
	if n > chunkSize {
		return chunk{b: make([]byte, n)}
	}
	buf := c.chunks.Get().(*[]byte)
	return chunk{buf: buf, b: (*buf)[:n]}
}

func (c *clientConn) putChunk(ch chunk) {
	if ch.buf != nil {
		c.chunks.Put(ch.buf)
	}
}

func (c *clientConn) sendPings(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-c.closeChan:
			return
		case <-t.C:
		}
		c.mu.Lock()
		id := c.pingID
		c.pingID = (c.pingID + 2) & 0x7fffffff
		c.mu.Unlock()
		if err := c.writeFrame(&spdy.PingFrame{Id: id}); err != nil {
			// Transient, perhaps; CloseChan says when the connection is really gone.
			klog.V(3).InfoS("SPDY ping failed", "err", err)
		}
	}
}

// clientStream is one SPDY stream of a clientConn.
type clientStream struct {
	c       *clientConn
	id      spdy.StreamId
	headers http.Header

	// Guarded by c.mu.
	verdict      chan error
	decided      bool
	replyTimer   *time.Timer
	replied      bool // the server's SYN_REPLY arrived
	resetPending bool // reset by this side before the reply: the RST follows the reply

	mu           sync.Mutex
	cond         sync.Cond
	queue        []chunk // received, not yet read; queue[0].b shrinks as it is read
	queued       int
	remoteDone   bool // FIN, reset or connection end: nothing more arrives
	localDone    bool // FIN or reset sent: nothing more is written
	readerClosed bool // reset by this side: received data is dropped
}

var _ httpstream.Stream = (*clientStream)(nil)

// push queues a received payload, waiting while the reader is maxQueued bytes behind.
func (s *clientStream) push(ch chunk) {
	s.mu.Lock()
	for s.queued >= maxQueued && !s.readerClosed {
		s.cond.Wait()
	}
	if s.readerClosed {
		s.mu.Unlock()
		s.c.putChunk(ch)
		return
	}
	s.queue = append(s.queue, ch)
	s.queued += len(ch.b)
	s.mu.Unlock()
	s.cond.Broadcast()
}

func (s *clientStream) remoteFinish() {
	s.mu.Lock()
	s.remoteDone = true
	s.mu.Unlock()
	s.cond.Broadcast()
}

// Read returns received data: as many queued frames as fit in p.
func (s *clientStream) Read(p []byte) (int, error) {
	s.mu.Lock()
	for len(s.queue) == 0 && !s.remoteDone && !s.readerClosed {
		s.cond.Wait()
	}
	if len(s.queue) == 0 {
		s.mu.Unlock()
		return 0, io.EOF
	}
	n := 0
	for len(s.queue) > 0 && n < len(p) {
		ch := &s.queue[0]
		m := copy(p[n:], ch.b)
		n += m
		ch.b = ch.b[m:]
		if len(ch.b) == 0 {
			s.c.putChunk(*ch)
			s.queue[0] = chunk{}
			s.queue = s.queue[1:]
		}
	}
	wasFull := s.queued >= maxQueued
	s.queued -= n
	if len(s.queue) == 0 {
		s.queue = nil // let a burst's backing array go
	}
	s.mu.Unlock()
	if wasFull {
		s.cond.Broadcast()
	}
	return n, nil
}

// Write sends p as one data frame.
func (s *clientStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	done := s.localDone
	s.mu.Unlock()
	if done {
		return 0, errStreamClosed
	}
	if err := s.c.writeFrame(&spdy.DataFrame{StreamId: s.id, Data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close half-closes the stream: no more data is sent (an empty data frame with FIN).
func (s *clientStream) Close() error {
	if !s.finishLocal() {
		return errStreamClosed
	}
	return s.c.writeFrame(&spdy.DataFrame{StreamId: s.id, Flags: spdy.DataFlagFin})
}

// Reset ends the stream in both directions (RST_STREAM CANCEL) and drops what was not read.
//
// A stream the server has not answered yet is reset once the answer arrives. The server's
// spdystream takes a reset for a stream it has not replied to as a refusal of its own stream
// and blocks a frame worker handing that to a waiter that does not exist; it gets there when
// its reply could not be written, as when this side closes the connection right after the
// reset.
func (s *clientStream) Reset() error {
	c := s.c
	// Whoever waits for the verdict learns now instead of after replyTimeout.
	c.decide(s, errStreamClosed)
	s.drop()
	if !s.finishLocal() {
		c.forget(s)
		return nil
	}
	c.mu.Lock()
	replied := s.replied
	if replied {
		delete(c.streams, s.id)
	} else {
		s.resetPending = true // stays known until the reply, which then carries no data here
	}
	c.mu.Unlock()
	if !replied {
		return nil
	}
	return c.writeFrame(&spdy.RstStreamFrame{StreamId: s.id, Status: spdy.Cancel})
}

// drop ends the receiving side: what was not read is dropped, reads return io.EOF.
func (s *clientStream) drop() {
	s.mu.Lock()
	s.readerClosed = true
	for _, ch := range s.queue {
		s.c.putChunk(ch)
	}
	s.queue, s.queued = nil, 0
	s.mu.Unlock()
	s.cond.Broadcast()
}

// finishLocal marks the sending side done; false when it already was.
func (s *clientStream) finishLocal() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.localDone {
		return false
	}
	s.localDone = true
	return true
}

// Headers returns the headers the stream was opened with.
func (s *clientStream) Headers() http.Header { return s.headers }

// Identifier returns the stream id.
func (s *clientStream) Identifier() uint32 { return uint32(s.id) }

// waitingConn hides OpenStream, so that streams wait for the server's reply as with apimachinery's
// connection (RESTDialer.EarlyData off, for measurements).
type waitingConn struct{ httpstream.Connection }
