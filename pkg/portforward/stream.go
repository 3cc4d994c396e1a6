package portforward

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
)

// ErrDeadlineUnsupported is returned by the deadline methods of Stream: port-forward streams
// cannot interrupt a blocked read or write.
var ErrDeadlineUnsupported = errors.New("port-forward streams do not support deadlines")

type headerPair struct{ errorStream, dataStream http.Header }

// streamHeaders returns the headers kubelet expects: same port and request id on both streams.
func streamHeaders(port int32, requestID int64) headerPair {
	errH := http.Header{}
	errH.Set(corev1.StreamType, corev1.StreamTypeError)
	errH.Set(corev1.PortHeader, strconv.Itoa(int(port)))
	errH.Set(corev1.PortForwardRequestIDHeader, strconv.FormatInt(requestID, 10))
	dataH := errH.Clone()
	dataH.Set(corev1.StreamType, corev1.StreamTypeData)
	return headerPair{errorStream: errH, dataStream: dataH}
}

// Stream is one forwarded TCP connection to a pod's port. It implements net.Conn; CloseWrite
// half-closes it. An error the kubelet reports for this connection (connection refused or reset
// in the pod) ends only this stream and is available from RemoteError.
type Stream struct {
	pc   *podConn
	port int32
	data httpstream.Stream
	errs httpstream.Stream

	errDone   chan struct{}
	remoteErr error

	closeOnce sync.Once
}

// newStream wraps a stream pair. ack, when not nil, yields the server's verdict on the data
// stream (clientConn.OpenStream), which the stream did not wait for.
func newStream(pc *podConn, port int32, data, errs httpstream.Stream, ack <-chan error) *Stream {
	s := &Stream{pc: pc, port: port, data: data, errs: errs, errDone: make(chan struct{})}
	go func() {
		defer close(s.errDone)
		msg, err := io.ReadAll(errs)
		switch {
		case len(msg) > 0:
			s.remoteErr = fmt.Errorf("pod %s port %d: %s", pc.pod, port, msg)
			pc.retire()
		case err != nil && !errors.Is(err, io.EOF):
			s.remoteErr = fmt.Errorf("read error stream of pod %s port %d: %w", pc.pod, port, err)
		case ack != nil:
			// The error stream ended without a word: normally long after the acknowledgement, or
			// because the connection closed, maybe before the kubelet took the stream.
			if err := <-ack; errors.Is(err, ErrNotAcknowledged) {
				s.remoteErr = fmt.Errorf("pod %s port %d: %w", pc.pod, port, err)
			}
		}
	}()
	return s
}

// Pod returns the pod the stream goes to.
func (s *Stream) Pod() PodRef { return s.pc.pod }

// Port returns the pod port the stream goes to.
func (s *Stream) Port() int32 { return s.port }

// Read reads from the pod.
func (s *Stream) Read(b []byte) (int, error) { return s.data.Read(b) }

// Write writes to the pod. Each call sends one frame, so larger writes carry data faster.
func (s *Stream) Write(b []byte) (int, error) { return s.data.Write(b) }

// CloseWrite tells the pod that no more data follows, keeping the read side open.
func (s *Stream) CloseWrite() error { return s.data.Close() }

// Close ends the stream in both directions, discarding unsent data. It never affects other
// streams of the pod's connection.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		// Reset, not Close: a half-closed stream whose peer is gone would otherwise linger.
		_ = s.data.Reset()
		_ = s.errs.Reset()
		s.pc.conn.RemoveStreams(s.data, s.errs)
		s.pc.release()
	})
	return nil
}

// RemoteError waits up to timeout for the kubelet's verdict on this connection and returns it:
// nil for a clean end (or no verdict yet), otherwise the error the kubelet reported, or
// ErrNotAcknowledged when the connection closed before the kubelet took the stream.
func (s *Stream) RemoteError(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.errDone:
		return s.remoteErr
	case <-t.C:
		return nil
	}
}

// Addr is the address of a pod port, as net.Addr.
type Addr struct {
	Pod  PodRef
	Port int32
}

// Network returns "portforward".
func (a Addr) Network() string { return "portforward" }

// String returns namespace/pod:port.
func (a Addr) String() string { return a.Pod.String() + ":" + strconv.Itoa(int(a.Port)) }

// LocalAddr returns the remote address too: a stream has no meaningful local address.
func (s *Stream) LocalAddr() net.Addr { return Addr{Pod: s.pc.pod, Port: s.port} }

// RemoteAddr returns the pod and port.
func (s *Stream) RemoteAddr() net.Addr { return Addr{Pod: s.pc.pod, Port: s.port} }

// SetDeadline is not supported; see ErrDeadlineUnsupported.
func (s *Stream) SetDeadline(time.Time) error { return ErrDeadlineUnsupported }

// SetReadDeadline is not supported; see ErrDeadlineUnsupported.
func (s *Stream) SetReadDeadline(time.Time) error { return ErrDeadlineUnsupported }

// SetWriteDeadline is not supported; see ErrDeadlineUnsupported.
func (s *Stream) SetWriteDeadline(time.Time) error { return ErrDeadlineUnsupported }

var _ net.Conn = (*Stream)(nil)
