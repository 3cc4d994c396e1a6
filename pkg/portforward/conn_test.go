package portforward_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// TestDialSendsEarlyData: a forwarded connection's first bytes leave with its streams, before the
// kubelet has acknowledged them, and arrive once it does.
func TestDialSendsEarlyData(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	if err := c.pool.Warm(ctx, podA); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	c.kubelet.AcceptStream = func(http.Header) error {
		<-gate
		return nil
	}
	dialed := make(chan error, 1)
	var s interface {
		io.ReadWriter
		Close() error
	}
	go func() {
		st, err := c.pool.Dial(ctx, podA, 80)
		if err == nil {
			s = st
			_, err = io.WriteString(st, "early\n")
		}
		dialed <- err
	}()
	select {
	case err := <-dialed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(gate)
		t.Fatal("Dial and the first write waited for the kubelet to acknowledge the streams")
	}
	close(gate)
	defer s.Close()
	line, err := bufio.NewReader(s).ReadString('\n')
	if err != nil || line != "a:early\n" {
		t.Fatalf("read %q, %v; want the echo of the early data", line, err)
	}
}

// TestRefusedStreamKeepsConnection: a stream the kubelet resets before acknowledging it (it
// does so for headers it rejects) ends on its own, and neither wedges the connection's other
// streams nor costs the connection.
func TestRefusedStreamKeepsConnection(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	var refused atomic.Bool
	c.kubelet.AcceptStream = func(h http.Header) error {
		// The first connection's data stream (request 0) only.
		if h.Get(corev1.StreamType) == corev1.StreamTypeData && h.Get(corev1.PortForwardRequestIDHeader) == "0" {
			refused.Store(true)
			return errors.New("refused by the test")
		}
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		bad, err := c.pool.Dial(ctx, podA, 80)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := io.ReadAll(bad); err != nil {
			t.Errorf("refused stream ended with %v, want EOF", err)
		}
		bad.Close()
		// Ten more connections on the same SPDY connection: a reset of an unanswered stream must
		// not wedge its read loop (spdystream's frame workers did, until someone took the reset).
		for i := 0; i < 10; i++ {
			if got := c.ask(t, podA, "after"); got != "a:after" {
				t.Errorf("stream %d got %q", i, got)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("streams after the refused one never completed")
	}
	if !refused.Load() {
		t.Fatal("the kubelet never saw the stream to refuse")
	}
	c.wantConnections(t, 1)
}

// TestStreamNotAcknowledged: when the connection drops after a stream's SYN left but before the
// kubelet took it, the stream says so (nothing reached the pod), and the next Dial reconnects.
func TestStreamNotAcknowledged(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	var severed atomic.Bool
	c.kubelet.AcceptStream = func(h http.Header) error {
		// The data stream's: the error stream, taken by another server worker, may have been
		// answered already, but the data stream never is.
		if h.Get(corev1.StreamType) == corev1.StreamTypeData && !severed.Swap(true) {
			c.kubelet.Sever(podA)
		}
		return nil
	}
	s, err := c.pool.Dial(ctx, podA, 80)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(s, "lost\n")
	if b, err := io.ReadAll(s); len(b) > 0 {
		t.Fatalf("read %q, %v from a stream the kubelet never took", b, err)
	}
	if err := s.RemoteError(5 * time.Second); !errors.Is(err, portforward.ErrNotAcknowledged) {
		t.Fatalf("RemoteError = %v, want ErrNotAcknowledged", err)
	}
	s.Close()
	if got := c.ask(t, podA, "again"); got != "a:again" {
		t.Errorf("got %q", got)
	}
	c.wantConnections(t, 2)
}

// TestStreamCutByEvict: a stream left unanswered because this side closed the connection (the
// pod went away) is not reported as untaken: its reply may have been on the way.
func TestStreamCutByEvict(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	gate := make(chan struct{})
	defer close(gate)
	c.kubelet.AcceptStream = func(http.Header) error {
		<-gate
		return nil
	}
	s, err := c.pool.Dial(ctx, podA, 80)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(s, "maybe\n")
	c.pool.Evict(podA)
	io.ReadAll(s)
	if err := s.RemoteError(5 * time.Second); errors.Is(err, portforward.ErrNotAcknowledged) {
		t.Fatalf("RemoteError = %v after this side closed the connection", err)
	}
	s.Close()
}

// blobServer serves size bytes of a fixed pattern to every connection, then closes it.
func blobServer(t testing.TB, size int) string {
	t.Helper()
	return tunneltest.Serve(t, func(c net.Conn) {
		_, _ = io.Copy(c, io.LimitReader(&pattern{}, int64(size)))
	}).Addr().String()
}

// pattern is an endless reader of bytes that differ from their neighbours, so that a lost,
// doubled or reordered piece changes the digest.
type pattern struct{ off int }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		x := p.off + i
		b[i] = byte(x*7 + x/251)
	}
	p.off += len(b)
	return len(b), nil
}

// TestDownloadArrivesWhole: a download much larger than a stream's receive queue, read in pieces
// smaller than a frame, arrives complete and in order.
func TestDownloadArrivesWhole(t *testing.T) {
	const size = 8 << 20
	blob := blobServer(t, size)
	c := newClusterWith(t, func(portforward.PodRef, int32) (string, error) { return blob, nil })
	s, err := c.pool.Dial(context.Background(), podA, 80)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := sha256.New()
	_, _ = io.Copy(want, io.LimitReader(&pattern{}, size))
	got := sha256.New()
	n, err := io.CopyBuffer(got, struct{ io.Reader }{s}, make([]byte, 1000))
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v; want %d", n, err, size)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("the download arrived with different bytes")
	}
}
