package portforward

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/moby/spdystream/spdy"
	"k8s.io/apimachinery/pkg/util/httpstream"
)

// fakeServer is the server end of a clientConn, driven frame by frame; over net.Pipe (which
// has no buffer: a frame write returns once the client has read it) unless said otherwise.
type fakeServer struct {
	t      *testing.T
	conn   net.Conn
	framer *spdy.Framer
	frames chan spdy.Frame // what the client sent
}

func newFakeServer(t *testing.T) (*clientConn, *fakeServer) {
	t.Helper()
	cside, sside := net.Pipe()
	return newFakeServerOver(t, cside, sside, nil)
}

// newFakeServerOver is newFakeServer over a given connection pair, with receive batching.
func newFakeServerOver(t *testing.T, cside, sside net.Conn, batch *receiveBatcher) (*clientConn, *fakeServer) {
	t.Helper()
	framer, err := spdy.NewFramer(sside, sside)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, conn: sside, framer: framer, frames: make(chan spdy.Frame, 100)}
	go func() {
		defer close(s.frames)
		for {
			f, err := framer.ReadFrame()
			if err != nil {
				return
			}
			s.frames <- f
		}
	}()
	c, err := newClientConn(cside, 0, batch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sside.Close()
		c.Close()
	})
	return c, s
}

func (s *fakeServer) write(f spdy.Frame) {
	s.t.Helper()
	if err := s.framer.WriteFrame(f); err != nil {
		s.t.Fatalf("server write %T: %v", f, err)
	}
}

// next returns the next frame the client sent.
func (s *fakeServer) next() spdy.Frame {
	s.t.Helper()
	select {
	case f := <-s.frames:
		return f
	case <-time.After(10 * time.Second):
		s.t.Fatal("the client sent nothing")
		return nil
	}
}

// accepted opens a stream on c that the server acknowledges.
func (s *fakeServer) accepted(c *clientConn) (httpstream.Stream, *spdy.SynStreamFrame) {
	s.t.Helper()
	st, _, err := c.OpenStream(http.Header{})
	if err != nil {
		s.t.Fatal(err)
	}
	syn := s.next().(*spdy.SynStreamFrame)
	s.write(&spdy.SynReplyFrame{StreamId: syn.StreamId})
	return st, syn
}

// TestCloseWhileStreamBacklogged: Close returns while the connection has stopped reading because
// a stream's reader is maxQueued bytes behind.
func TestCloseWhileStreamBacklogged(t *testing.T) {
	c, srv := newFakeServer(t)
	st, syn := srv.accepted(c)
	// The queue fills up with maxQueued bytes; the frame after those is read (net.Pipe: its
	// write returns) and then waits for room.
	full := make(chan struct{})
	go func() {
		for n := 0; ; n += chunkSize {
			if n == maxQueued+chunkSize {
				close(full)
			}
			if err := srv.framer.WriteFrame(&spdy.DataFrame{StreamId: syn.StreamId, Data: make([]byte, chunkSize)}); err != nil {
				return
			}
		}
	}()
	select {
	case <-full:
	case <-time.After(10 * time.Second):
		t.Fatal("the client stopped reading before its stream's queue was full")
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return: it waits for the stream's reader")
	}
	if _, err := io.Copy(io.Discard, st); err != nil {
		t.Fatalf("reading the closed connection's stream: %v", err)
	}
}

// TestReadTakesQueuedFrames: one Read returns every queued frame that fits, so the local side
// gets one write for a burst of frames.
func TestReadTakesQueuedFrames(t *testing.T) {
	c, srv := newFakeServer(t)
	st, syn := srv.accepted(c)
	for _, s := range []string{"one,", "two,", "three"} {
		srv.write(&spdy.DataFrame{StreamId: syn.StreamId, Data: []byte(s)})
	}
	srv.write(&spdy.DataFrame{StreamId: syn.StreamId, Flags: spdy.DataFlagFin})
	// net.Pipe: the FIN was read, so all three frames are queued.
	buf := make([]byte, 100)
	n, err := st.Read(buf)
	if err != nil || string(buf[:n]) != "one,two,three" {
		t.Fatalf("Read = %q, %v; want all three frames at once", buf[:n], err)
	}
	if n, err := st.Read(buf); err != io.EOF {
		t.Fatalf("Read after FIN = %d, %v; want EOF", n, err)
	}
}

// TestServerPingAnswered: the server's pings are answered (a server may close a connection whose
// pings go unanswered), and a stream the server opens is refused: port-forward has none.
func TestServerPingAnswered(t *testing.T) {
	_, srv := newFakeServer(t)
	srv.write(&spdy.PingFrame{Id: 2})
	if f, ok := srv.next().(*spdy.PingFrame); !ok || f.Id != 2 {
		t.Fatalf("client answered %#v, want ping 2", f)
	}
	srv.write(&spdy.SynStreamFrame{StreamId: 2, Headers: http.Header{}})
	if f, ok := srv.next().(*spdy.RstStreamFrame); !ok || f.StreamId != 2 || f.Status != spdy.RefusedStream {
		t.Fatalf("client answered %#v, want stream 2 refused", f)
	}
}

// TestResetBeforeReply: a stream reset before the server answered it is reset only once the
// answer arrives (spdystream, in the kubelet, takes an unanswered stream's reset as a refusal
// with a waiter, and blocks a frame worker on it), and its verdict comes at once.
func TestResetBeforeReply(t *testing.T) {
	c, srv := newFakeServer(t)
	st, verdict, err := c.OpenStream(http.Header{})
	if err != nil {
		t.Fatal(err)
	}
	syn := srv.next().(*spdy.SynStreamFrame)
	if err := st.Reset(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-verdict:
		if err == nil {
			t.Fatal("verdict nil for a stream reset before any reply")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no verdict for the reset stream")
	}
	// A later frame shows what was written before it: no reset yet.
	if _, _, err := c.OpenStream(http.Header{}); err != nil {
		t.Fatal(err)
	}
	if f := srv.next(); !isSynStream(f) {
		t.Fatalf("client sent %#v before the reply, want only the next stream", f)
	}
	srv.write(&spdy.SynReplyFrame{StreamId: syn.StreamId})
	if f, ok := srv.next().(*spdy.RstStreamFrame); !ok || f.StreamId != syn.StreamId || f.Status != spdy.Cancel {
		t.Fatalf("client answered the reply with %#v, want the reset of stream %d", f, syn.StreamId)
	}
}

func isSynStream(f spdy.Frame) bool {
	_, ok := f.(*spdy.SynStreamFrame)
	return ok
}
