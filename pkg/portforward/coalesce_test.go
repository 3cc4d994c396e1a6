package portforward

import (
	"bytes"
	"net"
	"net/http"
	"testing"

	"github.com/moby/spdystream/spdy"
)

type recordingConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func TestFrameCoalescer(t *testing.T) {
	rec := &recordingConn{}
	c := &frameCoalescer{Conn: rec}
	var want bytes.Buffer
	frames := []spdy.Frame{
		// One header: the framer writes headers in map order.
		&spdy.SynStreamFrame{StreamId: 1, Headers: http.Header{"Streamtype": {"error"}}},
		&spdy.DataFrame{StreamId: 3, Data: []byte("GET / HTTP/1.1\r\n\r\n")},
		&spdy.DataFrame{StreamId: 3, Data: bytes.Repeat([]byte("x"), 200000)},
		&spdy.DataFrame{StreamId: 3, Flags: spdy.DataFlagFin},
		&spdy.PingFrame{Id: 1},
		&spdy.RstStreamFrame{StreamId: 3, Status: spdy.Cancel},
	}
	through, err := spdy.NewFramer(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	direct, err := spdy.NewFramer(&want, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if err := through.WriteFrame(f); err != nil {
			t.Fatal(err)
		}
		if err := direct.WriteFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.writes) != len(frames) {
		t.Errorf("%d writes for %d frames", len(rec.writes), len(frames))
	}
	if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, want.Bytes()) {
		i := 0
		for i < len(got) && i < want.Len() && got[i] == want.Bytes()[i] {
			i++
		}
		t.Errorf("coalesced bytes differ from the framer's output at %d (%d vs %d bytes): %q vs %q", i, len(got), want.Len(), got[max(0, i-8):min(len(got), i+8)], want.Bytes()[max(0, i-8):min(want.Len(), i+8)])
	}
	if len(c.buf) != 0 {
		t.Errorf("%d bytes left buffered", len(c.buf))
	}
}

// TestFrameCoalescerHold: frames written while held leave in one write at the last release, and
// a partial frame stays behind until it is complete.
func TestFrameCoalescerHold(t *testing.T) {
	rec := &recordingConn{}
	c := &frameCoalescer{Conn: rec}
	f, err := spdy.NewFramer(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	direct, err := spdy.NewFramer(&want, nil)
	if err != nil {
		t.Fatal(err)
	}
	frames := []spdy.Frame{
		&spdy.SynStreamFrame{StreamId: 1, Headers: http.Header{"Streamtype": {"error"}}},
		&spdy.SynStreamFrame{StreamId: 3, Headers: http.Header{"Streamtype": {"data"}}},
		&spdy.DataFrame{StreamId: 1, Flags: spdy.DataFlagFin},
	}
	c.hold()
	c.hold() // nested: a second opener at the same time
	for _, fr := range frames {
		if err := f.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
		if err := direct.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
	}
	// Half of a frame's header, as the framer's first piece of a data frame.
	if _, err := c.Write([]byte{0, 0, 0, 3}); err != nil {
		t.Fatal(err)
	}
	if err := c.release(); err != nil || len(rec.writes) != 0 {
		t.Fatalf("inner release: %v, %d writes; want none while still held", err, len(rec.writes))
	}
	if err := c.release(); err != nil {
		t.Fatal(err)
	}
	if len(rec.writes) != 1 || !bytes.Equal(rec.writes[0], want.Bytes()) {
		t.Fatalf("%d writes (%q), want the three frames in one write (%q)", len(rec.writes), rec.writes, want.Bytes())
	}
	if !bytes.Equal(c.buf, []byte{0, 0, 0, 3}) {
		t.Errorf("buffered %q, want the partial frame", c.buf)
	}
}
