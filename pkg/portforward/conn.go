package portforward

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/spdystream"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/klog/v2"
)

// ErrNotAcknowledged reports that a stream's connection closed before the server acknowledged the
// stream. The server then never took it (its reply would have come before the close), so
// nothing sent on it reached the pod and it can be sent again on a new connection.
var ErrNotAcknowledged = errors.New("the port-forward connection closed before the kubelet took the stream")

// errClosed is the verdict on a stream left unanswered when this side closed the connection.
var errClosed = errors.New("port-forward connection closed")

// ackPoll is how often a stream waiting for its reply looks whether the connection has ended.
const ackPoll = 50 * time.Millisecond

// replyTimeout bounds how long a stream waits for the server to acknowledge it, as apimachinery's
// createStreamResponseTimeout does.
const replyTimeout = 30 * time.Second

// clientConn is apimachinery's client-side SPDY connection (httpstream/spdy's
// NewClientConnectionWithPings) plus OpenStream, which returns a stream without waiting for the
// server's SYN_REPLY.
//
// Why our own: apimachinery's CreateStream blocks until the reply has come back through the API
// server, the kubelet and the container runtime, so every forwarded TCP connection paid a full
// round trip through that chain before its first byte could leave (0.4–0.6 ms of a 3–4 ms new
// connection on the development machine, docs/benchmarks.md). SPDY lets the initiator send DATA
// right after SYN_STREAM; the server (spdystream, in the kubelet and the runtime) handles a
// stream's frames in order on one worker and replies before it takes the next frame, so early
// data is delivered, not dropped. The rest mirrors apimachinery so the connection behaves the
// same everywhere else.
//
// A stream opened in the moment between the server closing the connection and this client
// reading that close is never acknowledged; its Stream reports ErrNotAcknowledged, so that the
// caller can send it again on a new connection (as a waiting CreateStream would have failed and
// let the pool reconnect).
type clientConn struct {
	conn   *spdystream.Connection
	frames *frameCoalescer // nil when frames are not coalesced
	served chan struct{}   // closed when Serve has handled every frame it will
	closed atomic.Bool     // Close was called: an unanswered stream may have been taken

	mu      sync.Mutex
	streams map[uint32]httpstream.Stream
}

var _ httpstream.Connection = (*clientConn)(nil)

// newClientConn starts a client SPDY connection over conn, pinging every pingPeriod when it is
// positive (keeps idle connections alive through load balancers, as client-go does).
func newClientConn(conn net.Conn, pingPeriod time.Duration) (*clientConn, error) {
	sc, err := spdystream.NewConnection(conn, false)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &clientConn{conn: sc, streams: map[uint32]httpstream.Stream{}, served: make(chan struct{})}
	c.frames, _ = conn.(*frameCoalescer)
	go func() {
		// The port-forward server never opens streams; accept any as apimachinery's client does.
		sc.Serve(spdystream.NoOpStreamHandler)
		close(c.served)
	}()
	if pingPeriod > 0 {
		go c.sendPings(pingPeriod)
	}
	return c, nil
}

// OpenStream creates a stream and returns at once; data written to it follows the SYN_STREAM.
// The returned channel yields nil when the server accepted the stream, ErrNotAcknowledged when
// the connection ended first, or another error when the server reset the stream or did not
// answer within replyTimeout.
func (c *clientConn) OpenStream(headers http.Header) (httpstream.Stream, <-chan error, error) {
	s, err := c.conn.CreateStream(headers, nil, false)
	if err != nil {
		return nil, nil, err
	}
	c.register(s)
	// Someone must wait: spdystream hands a reset of an unanswered stream to its waiter, and its
	// frame worker (shared with other streams) blocks until one takes it.
	replied := make(chan error, 1)
	go func() { replied <- c.waitReply(s) }()
	return s, replied, nil
}

// waitReply waits for the server's verdict on s. spdystream offers only a blocking wait, so it
// waits in steps of ackPoll and, once Serve has handled the last frame, takes one more look: the
// verdict is final then, as no reply can arrive any more.
func (c *clientConn) waitReply(s *spdystream.Stream) error {
	deadline := time.Now().Add(replyTimeout)
	for {
		err := s.WaitTimeout(ackPoll)
		if !errors.Is(err, spdystream.ErrTimeout) {
			return err
		}
		select {
		case <-c.served:
			if err := s.WaitTimeout(ackPoll); !errors.Is(err, spdystream.ErrTimeout) {
				return err
			}
			if c.closed.Load() {
				// This side cut the connection: the reply may have been on its way.
				return errClosed
			}
			return ErrNotAcknowledged
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
	}
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

func (c *clientConn) register(s *spdystream.Stream) {
	c.mu.Lock()
	c.streams[s.Identifier()] = s
	c.mu.Unlock()
}

// RemoveStreams implements httpstream.Connection.
func (c *clientConn) RemoveStreams(streams ...httpstream.Stream) {
	c.mu.Lock()
	for _, s := range streams {
		if s != nil {
			delete(c.streams, s.Identifier())
		}
	}
	c.mu.Unlock()
}

// Close resets every stream, then closes the connection, which then ends at once instead of
// waiting for streams to finish gracefully.
func (c *clientConn) Close() error {
	c.closed.Store(true)
	c.mu.Lock()
	for _, s := range c.streams {
		s.Reset()
	}
	c.streams = map[uint32]httpstream.Stream{}
	c.mu.Unlock()
	return c.conn.Close()
}

// CloseChan implements httpstream.Connection.
func (c *clientConn) CloseChan() <-chan bool { return c.conn.CloseChan() }

// SetIdleTimeout implements httpstream.Connection.
func (c *clientConn) SetIdleTimeout(timeout time.Duration) { c.conn.SetIdleTimeout(timeout) }

func (c *clientConn) sendPings(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-c.conn.CloseChan():
			return
		case <-t.C:
		}
		if _, err := c.conn.Ping(); err != nil {
			// Transient, perhaps; CloseChan says when the connection is really gone.
			klog.V(3).InfoS("SPDY ping failed", "err", err)
		}
	}
}

// waitingConn hides OpenStream, so that streams wait for the server's reply as with apimachinery's
// connection (RESTDialer.EarlyData off, for measurements).
type waitingConn struct{ httpstream.Connection }
