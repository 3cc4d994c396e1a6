package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// StreamHandler serves one stream the agent opened, after its Header has been read. It owns the
// stream and must close it.
type StreamHandler interface {
	ServeStream(ctx context.Context, h *Header, stream net.Conn)
}

// StreamHandlerFunc adapts a function to StreamHandler.
type StreamHandlerFunc func(ctx context.Context, h *Header, stream net.Conn)

// ServeStream implements StreamHandler.
func (f StreamHandlerFunc) ServeStream(ctx context.Context, h *Header, stream net.Conn) {
	f(ctx, h, stream)
}

// StreamEventKind says what happened to a forwarded stream.
type StreamEventKind int

const (
	// StreamOpened: the local target answered and bytes flow.
	StreamOpened StreamEventKind = iota
	// StreamClosed: both directions ended; the byte counts are final.
	StreamClosed
	// LocalUnavailable: the local target could not be dialed (nothing listens, typically); the
	// stream was closed, so the in-cluster client sees its connection end.
	LocalUnavailable
)

func (k StreamEventKind) String() string {
	switch k {
	case StreamOpened:
		return "opened"
	case StreamClosed:
		return "closed"
	case LocalUnavailable:
		return "local-unavailable"
	}
	return fmt.Sprintf("stream-event(%d)", int(k))
}

// StreamEvent reports on one forwarded stream, for the CLI's live output.
type StreamEvent struct {
	Kind   StreamEventKind
	Header *Header
	// Local is the local address dialed.
	Local string
	// Err is why the local target was unavailable, or what ended the stream abnormally.
	Err error
	// NothingListens is true when the local dial was refused: the user's app is not running.
	NothingListens bool
	// ToLocal and FromLocal count the bytes piped (FromLocal stays 0 for connection mirror
	// streams, whose replies are discarded here; a mirrored HTTP exchange's answer goes back to
	// the agent, which discards it).
	ToLocal, FromLocal int64
	// Duration is how long the stream was open (StreamClosed only).
	Duration time.Duration
}

// Forwarder is the CLI's StreamHandler: it dials the local target for each stream and pipes.
type Forwarder struct {
	// Target returns the local address (host:port) for a stream. Required.
	Target func(h *Header) string
	// Dial dials the local target; defaults to a net.Dialer with a 5s timeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnEvent, if set, is told about every stream. It must not block.
	OnEvent func(StreamEvent)
	// OnResponse, if set, is given the copies of upstream answers that an agent configured to
	// mirror responses sends; by default they are read and discarded.
	OnResponse func(h *Header, r io.Reader)
	// MirrorLinger is how long a mirrored local connection may stay open after the copy ended, to
	// let the local app finish handling what it received; defaults to 5s.
	MirrorLinger time.Duration
}

// StaticTarget returns a Forwarder.Target that sends everything to addr (the `--to` flag).
func StaticTarget(addr string) func(*Header) string {
	return func(*Header) string { return addr }
}

// ServeStream implements StreamHandler.
func (f *Forwarder) ServeStream(ctx context.Context, h *Header, stream net.Conn) {
	if h.Direction == DirectionResponse {
		// An answer from the original pods, for observation: the local app must not see it.
		defer func() { _ = stream.Close(); abortConn(stream) }()
		stop := context.AfterFunc(ctx, func() { abortConn(stream) })
		defer stop()
		if f.OnResponse != nil {
			f.OnResponse(h, stream)
		}
		_, _ = Copy(io.Discard, stream)
		return
	}
	addr := f.Target(h)
	dial := f.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 5 * time.Second}
		dial = d.DialContext
	}
	local, err := dial(ctx, "tcp", addr)
	if err != nil {
		_ = stream.Close()
		abortConn(stream)
		f.emit(StreamEvent{
			Kind: LocalUnavailable, Header: h, Local: addr,
			Err:            fmt.Errorf("dial local %s: %w", addr, err),
			NothingListens: errors.Is(err, syscall.ECONNREFUSED),
		})
		return
	}
	// When the tunnel session ends, end the local side too rather than leave it half-open.
	stop := context.AfterFunc(ctx, func() {
		_ = local.Close()
		_ = stream.Close()
		abortConn(stream)
	})
	defer stop()
	f.emit(StreamEvent{Kind: StreamOpened, Header: h, Local: addr})
	start := time.Now()
	ev := StreamEvent{Kind: StreamClosed, Header: h, Local: addr}
	if h.Mode == ModeMirror && !h.IsExchange() {
		ev.ToLocal, ev.Err = f.mirror(stream, local)
	} else {
		ev.ToLocal, ev.FromLocal, ev.Err = Pipe(stream, local)
	}
	ev.Duration = time.Since(start)
	f.emit(ev)
}

// mirror feeds the copy to the local app and throws its replies away: the in-cluster client is
// answered by the original pods.
func (f *Forwarder) mirror(stream, local net.Conn) (int64, error) {
	defer func() { _ = stream.Close(); abortConn(stream) }()
	defer func() { _ = local.Close() }()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = Copy(io.Discard, local)
	}()
	n, err := Copy(local, stream)
	_ = CloseWrite(local)
	linger := f.MirrorLinger
	if linger <= 0 {
		linger = 5 * time.Second
	}
	select {
	case <-drained:
	case <-time.After(linger):
	}
	return n, firstReal(err)
}

func (f *Forwarder) emit(ev StreamEvent) {
	if f.OnEvent != nil {
		f.OnEvent(ev)
	}
}
