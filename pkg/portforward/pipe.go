package portforward

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// DefaultBufferSize is the copy buffer per direction. Every Stream.Write becomes one SPDY data
// frame, written as three writes (id, length, payload) to the TLS or WebSocket connection, each
// its own TLS record or WebSocket message; bigger buffers mean bigger frames and far fewer of
// them. 128 KiB measured best on loopback (see pipe_test.go's benchmark) without wasting memory
// on idle connections, since buffers come from a pool only while a copy runs.
const DefaultBufferSize = 128 << 10

// remoteVerdictWait bounds how long Pipe waits, after the pod side ended, for the kubelet's error
// message on that connection: it arrives on another stream right after the data stream ends.
const remoteVerdictWait = 200 * time.Millisecond

// Buffers hands out copy buffers of one size.
type Buffers struct {
	size int
	pool sync.Pool
}

// NewBuffers returns a buffer pool of size bytes (DefaultBufferSize when size <= 0).
func NewBuffers(size int) *Buffers {
	if size <= 0 {
		size = DefaultBufferSize
	}
	b := &Buffers{size: size}
	b.pool.New = func() any { buf := make([]byte, size); return &buf }
	return b
}

// readerOnly and writerOnly hide ReadFrom/WriteTo: *net.TCPConn implements both and would make
// io.CopyBuffer ignore our buffer and copy through its own 32 KiB one.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

func (b *Buffers) copy(dst io.Writer, src io.Reader) (int64, error) {
	buf := b.pool.Get().(*[]byte)
	defer b.pool.Put(buf)
	return io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *buf)
}

// PipeResult tells how a piped connection ended.
type PipeResult struct {
	// Sent and Received count bytes from the local side to the pod and back.
	Sent, Received int64
	// RemoteErr is the kubelet's error for this connection (e.g. connection refused in the pod).
	RemoteErr error
	// LocalErr is an error reading from or writing to the local connection, if any.
	LocalErr error
}

type closeWriter interface{ CloseWrite() error }

// Pipe copies between a local connection and a stream until the pod side ends, then closes both.
// A local half-close is passed on to the pod. When the kubelet reports an error for the
// connection (the application reset or refused it) the local connection is reset too, so the
// local client sees what an in-cluster client would.
func (b *Buffers) Pipe(local net.Conn, remote *Stream) PipeResult {
	var res PipeResult
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		n, err := b.copy(remote, local)
		res.Sent = n
		if err != nil && !errors.Is(err, net.ErrClosed) {
			res.LocalErr = err
			// The local client is gone: stop the download too.
			remote.Close()
			return
		}
		_ = remote.CloseWrite()
	}()
	n, err := b.copy(local, remote)
	res.Received = n
	if err != nil && !errors.Is(err, net.ErrClosed) && res.LocalErr == nil {
		// Reading the stream does not fail (it ends with EOF), so this is a local write error.
		res.LocalErr = err
	}
	res.RemoteErr = remote.RemoteError(remoteVerdictWait)
	if res.RemoteErr != nil {
		if tcp, ok := local.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0) // close with RST
		}
	}
	local.Close()
	remote.Close()
	<-upDone
	return res
}
