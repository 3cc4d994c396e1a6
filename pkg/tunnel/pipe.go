package tunnel

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/hashicorp/yamux"
)

// CopyBufferSize is the size of the pooled buffers bytes are shovelled with. Larger than io.Copy's
// 32 KiB so a yamux stream moves more per data frame (fewer frame headers and window updates).
const CopyBufferSize = 64 << 10

var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, CopyBufferSize)
	return &b
}}

// GetBuffer returns a pooled copy buffer; give it back with PutBuffer.
func GetBuffer() *[]byte { return copyBuffers.Get().(*[]byte) }

// PutBuffer returns a buffer obtained from GetBuffer to the pool.
func PutBuffer(b *[]byte) { copyBuffers.Put(b) }

// Copy copies src to dst until EOF or error. Between two TCP sockets it lets the kernel splice;
// otherwise it uses a pooled buffer (hiding ReadFrom/WriteTo, which would allocate their own).
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	if _, ok := dst.(*net.TCPConn); ok {
		if _, ok := src.(*net.TCPConn); ok {
			return io.Copy(dst, src)
		}
	}
	buf := GetBuffer()
	defer PutBuffer(buf)
	return io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *buf)
}

type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// CloseWrite half-closes c: the peer reads EOF while c can still read. A yamux stream's Close is
// already a half-close (it sends FIN and keeps receiving), which is what is used for it.
func CloseWrite(c io.Closer) error {
	switch c := c.(type) {
	case interface{ CloseWrite() error }:
		return c.CloseWrite()
	case *yamux.Stream:
		return c.Close()
	}
	return c.Close()
}

// Pipe copies a→b and b→a until both directions end, propagating half-closes: when a side ends
// its writing, the other side's writing half is closed and the opposite direction carries on.
// An error in either direction aborts both. Both conns are closed on return.
func Pipe(a, b net.Conn) (aToB, bToA int64, err error) {
	var (
		wg         sync.WaitGroup
		errA, errB error
		abort      sync.Once
	)
	closeBoth := func() {
		abort.Do(func() {
			_ = a.Close()
			_ = b.Close()
			abortConn(a)
			abortConn(b)
		})
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		aToB, errA = Copy(b, a)
		if errA != nil {
			closeBoth()
			return
		}
		_ = CloseWrite(b)
	}()
	go func() {
		defer wg.Done()
		bToA, errB = Copy(a, b)
		if errB != nil {
			closeBoth()
			return
		}
		_ = CloseWrite(a)
	}()
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return aToB, bToA, firstReal(errA, errB)
}

// abortConn makes a yamux stream's pending reads return now: its Close only half-closes.
func abortConn(c net.Conn) {
	if s, ok := c.(*yamux.Stream); ok {
		_ = s.SetDeadline(aLongTimeAgo)
	}
}

// firstReal returns the first error that is not a consequence of our own closing.
func firstReal(errs ...error) error {
	for _, err := range errs {
		if err != nil && !IsClosedError(err) {
			return err
		}
	}
	return nil
}

// IsClosedError reports whether err only says that a connection was closed or reset, which on a
// proxied connection is the normal way for it to end.
func IsClosedError(err error) bool {
	return err == nil ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, yamux.ErrStreamClosed) ||
		errors.Is(err, yamux.ErrConnectionReset) ||
		errors.Is(err, yamux.ErrSessionShutdown) ||
		errors.Is(err, yamux.ErrTimeout)
}
