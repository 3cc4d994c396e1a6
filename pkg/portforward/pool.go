package portforward

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/klog/v2"
)

// ErrPoolClosed is returned by Dial after Close.
var ErrPoolClosed = errors.New("port-forward pool closed")

// DefaultDialTimeout bounds establishing a pod's port-forward connection.
const DefaultDialTimeout = 30 * time.Second

// Options tune a Pool.
type Options struct {
	// DialTimeout bounds opening a pod's connection; DefaultDialTimeout when zero.
	DialTimeout time.Duration
}

// Pool holds one port-forward connection per pod and opens streams on it. It is safe for
// concurrent use.
type Pool struct {
	dialer      ConnectionDialer
	dialTimeout time.Duration

	ctx    context.Context // ends at Close; bounds shared dials, which outlive any one caller
	cancel context.CancelFunc

	mu     sync.Mutex
	conns  map[PodRef]*podConn
	closed bool
}

// NewPool returns a pool that opens connections with dialer.
func NewPool(dialer ConnectionDialer, opts Options) *Pool {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{
		dialer:      dialer,
		dialTimeout: opts.DialTimeout,
		ctx:         ctx,
		cancel:      cancel,
		conns:       map[PodRef]*podConn{},
	}
}

// podConn is the shared connection to one pod, or the dial that will produce it.
type podConn struct {
	pool  *Pool
	pod   PodRef
	ready chan struct{} // closed when the dial finished; conn/err are set before
	conn  httpstream.Connection
	err   error

	nextRequestID atomic.Int64
	active        atomic.Int32
	// retired connections take no new streams and close when their last stream ends.
	retired   atomic.Bool
	closeOnce sync.Once
}

func (c *podConn) dead() bool {
	select {
	case <-c.conn.CloseChan():
		return true
	default:
		return false
	}
}

// Dial opens a stream to port of pod, connecting to the pod first when needed. When the pod's
// connection turns out to be closed (the kubelet or API server ended it), Dial reconnects once,
// so callers never see the shared connection come and go.
func (p *Pool) Dial(ctx context.Context, pod PodRef, port int32) (*Stream, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		pc, err := p.get(ctx, pod)
		if err != nil {
			return nil, err
		}
		s, err := pc.openStream(ctx, port)
		if err == nil {
			return s, nil
		}
		if !pc.dead() {
			return nil, err
		}
		klog.V(2).InfoS("Port-forward connection closed under a new stream; reconnecting", "pod", pod, "err", err)
		p.forget(pc)
		lastErr = err
	}
	return nil, lastErr
}

// Warm opens pod's connection ahead of the first Dial, so that the first forwarded connection
// does not pay for the upgrade round trips.
func (p *Pool) Warm(ctx context.Context, pod PodRef) error {
	_, err := p.get(ctx, pod)
	return err
}

// Active returns the number of open streams per pod.
func (p *Pool) Active() map[PodRef]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[PodRef]int, len(p.conns))
	for pod, c := range p.conns {
		out[pod] = int(c.active.Load())
	}
	return out
}

// Connected reports whether the pool holds a live connection to pod.
func (p *Pool) Connected(pod PodRef) bool {
	p.mu.Lock()
	c := p.conns[pod]
	p.mu.Unlock()
	if c == nil {
		return false
	}
	select {
	case <-c.ready:
		return c.err == nil && !c.dead()
	default:
		return false
	}
}

// Evict closes pod's connection, ending every stream on it; call it when the pod goes away.
// The next Dial to the pod opens a new connection.
func (p *Pool) Evict(pod PodRef) {
	p.mu.Lock()
	c := p.conns[pod]
	delete(p.conns, pod)
	p.mu.Unlock()
	if c != nil {
		go c.close()
	}
}

// Close closes every connection and makes later Dials fail with ErrPoolClosed.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = map[PodRef]*podConn{}
	p.mu.Unlock()
	p.cancel()
	for _, c := range conns {
		c.close()
	}
}

// close waits for a pending dial, then closes its connection.
func (c *podConn) close() {
	<-c.ready
	if c.conn != nil {
		c.closeOnce.Do(func() { c.conn.Close() })
	}
}

// retire stops giving c new streams and closes it once its streams have ended.
//
// Called when the kubelet reports an error on one stream. The streams that remain keep running
// (one connection reset by the application must not end the others, unlike client-go's
// PortForwarder, kubernetes#111825), but the connection is not used for new streams: the server's
// SPDY implementation (moby/spdystream) hands incoming frames to five workers by stream id and a
// worker blocks until the stream's reader takes the data. When the kubelet gave up on a stream
// (connection refused or reset in the pod) nobody reads the data the client had already sent,
// and that worker, with every later stream hashed to it, is stuck for the connection's life.
func (c *podConn) retire() {
	if c.retired.Swap(true) {
		return
	}
	c.pool.mu.Lock()
	if c.pool.conns[c.pod] == c {
		delete(c.pool.conns, c.pod)
	}
	c.pool.mu.Unlock()
	klog.V(3).InfoS("Port-forward connection retired after a stream error; new streams use a new connection", "pod", c.pod)
	if c.active.Load() == 0 {
		c.close()
	}
}

// release accounts for a stream that ended.
func (c *podConn) release() {
	if c.active.Add(-1) == 0 && c.retired.Load() {
		c.close()
	}
}

// forget drops c from the pool if it is still the pod's current connection.
func (p *Pool) forget(c *podConn) {
	p.mu.Lock()
	if p.conns[c.pod] == c {
		delete(p.conns, c.pod)
	}
	p.mu.Unlock()
	go c.close()
}

// get returns pod's connection, dialing it once for all concurrent callers.
func (p *Pool) get(ctx context.Context, pod PodRef) (*podConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		c, ok := p.conns[pod]
		if !ok {
			c = &podConn{pool: p, pod: pod, ready: make(chan struct{})}
			p.conns[pod] = c
			go p.dial(c)
		}
		p.mu.Unlock()

		select {
		case <-c.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if c.err != nil {
			return nil, c.err
		}
		if c.dead() {
			p.forget(c)
			continue
		}
		return c, nil
	}
}

func (p *Pool) dial(c *podConn) {
	ctx, cancel := context.WithTimeout(p.ctx, p.dialTimeout)
	defer cancel()
	start := time.Now()
	c.conn, c.err = p.dialer.DialPod(ctx, c.pod)
	if c.err != nil {
		// A failed dial is not cached: the next caller tries again.
		p.mu.Lock()
		if p.conns[c.pod] == c {
			delete(p.conns, c.pod)
		}
		p.mu.Unlock()
		close(c.ready)
		return
	}
	klog.V(3).InfoS("Port-forward connection open", "pod", c.pod, "took", time.Since(start))
	close(c.ready)
	go func() {
		<-c.conn.CloseChan()
		klog.V(3).InfoS("Port-forward connection closed", "pod", c.pod)
		p.mu.Lock()
		if p.conns[c.pod] == c {
			delete(p.conns, c.pod)
		}
		p.mu.Unlock()
	}()
}

// streamResult carries one CreateStream outcome.
type streamResult struct {
	s   httpstream.Stream
	err error
}

// streamOpener is a connection that opens streams without waiting for the server's reply and
// can send several frames in one write (clientConn).
type streamOpener interface {
	OpenStream(headers http.Header) (httpstream.Stream, <-chan error, error)
	Batch(fn func() error) error
}

// openStream creates the error and data streams of one forwarded connection. When the
// connection allows it, neither waits for the server's reply, and both SYN frames and the error
// stream's end leave in one write, so the first bytes follow at once; otherwise both are created
// concurrently: the kubelet pairs them by request id in any order. Either way a round trip
// through the API server is saved on every connection.
func (c *podConn) openStream(ctx context.Context, port int32) (*Stream, error) {
	headers := streamHeaders(port, c.nextRequestID.Add(1)-1)
	if o, ok := c.conn.(streamOpener); ok {
		var errs, data httpstream.Stream
		var ack <-chan error
		err := o.Batch(func() (err error) {
			if errs, _, err = o.OpenStream(headers.errorStream); err != nil {
				return err
			}
			if data, ack, err = o.OpenStream(headers.dataStream); err != nil {
				return err
			}
			// We never write to the error stream; the kubelet writes at most one message.
			return errs.Close()
		})
		if err != nil {
			c.discard(data, errs)
			return nil, fmt.Errorf("open port-forward stream to pod %s port %d: %w", c.pod, port, err)
		}
		c.active.Add(1)
		return newStream(c, port, data, errs, ack), nil
	}
	errCh := make(chan streamResult, 1)
	go func() {
		s, err := c.conn.CreateStream(headers.errorStream)
		errCh <- streamResult{s, err}
	}()
	data, dataErr := c.conn.CreateStream(headers.dataStream)
	var er streamResult
	select {
	case er = <-errCh:
	case <-ctx.Done():
		// Let the pending creation finish in the background and clean up after it.
		go func() { c.discard((<-errCh).s) }()
		er.err = ctx.Err()
	}
	if dataErr != nil || er.err != nil {
		c.discard(data, er.s)
		return nil, fmt.Errorf("open port-forward stream to pod %s port %d: %w", c.pod, port, errors.Join(dataErr, er.err))
	}
	// We never write to the error stream; the kubelet writes at most one message, then closes it.
	er.s.Close()
	c.active.Add(1)
	return newStream(c, port, data, er.s, nil), nil
}

// discard resets the streams of a forwarded connection that could not be opened whole; nil ones
// were never created.
func (c *podConn) discard(streams ...httpstream.Stream) {
	for _, s := range streams {
		if s != nil {
			s.Reset()
			c.conn.RemoveStreams(s)
		}
	}
}
