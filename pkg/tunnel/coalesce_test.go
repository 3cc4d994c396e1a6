package tunnel

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/hashicorp/yamux"
)

// writeRecorder records each Write as one message, like a port-forward stream records SPDY frames.
type writeRecorder struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, bytes.Clone(p))
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// TestCoalescedFrames: every yamux data frame crosses the connection as one Write, header and body
// together, and the bytes arrive intact.
func TestCoalescedFrames(t *testing.T) {
	a, b := net.Pipe()
	rec := &writeRecorder{Conn: a}
	client, err := ClientSession(rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := yamux.Server(b, YamuxConfig(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	payloads := [][]byte{[]byte("hello"), bytes.Repeat([]byte("x"), 100_000), []byte("!")}
	done := make(chan []byte)
	go func() {
		st, err := server.AcceptStream()
		if err != nil {
			done <- nil
			return
		}
		got, _ := io.ReadAll(st)
		done <- got
	}()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payloads {
		if _, err := st.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	_ = st.Close()
	if got := <-done; !bytes.Equal(got, bytes.Join(payloads, nil)) {
		t.Fatalf("received %d bytes, want %d", len(got), len(bytes.Join(payloads, nil)))
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	var data int
	for _, w := range rec.writes {
		if len(w) < yamuxHeaderSize {
			t.Fatalf("a write of %d bytes: not a whole frame", len(w))
		}
		if w[1] == yamuxTypeData {
			if len(w) == yamuxHeaderSize && w[8]|w[9]|w[10]|w[11] != 0 {
				t.Errorf("data header written without its body")
			}
			if len(w) > yamuxHeaderSize {
				data++
			}
		}
	}
	if data != len(payloads) {
		t.Errorf("%d data writes with a body, want %d (one per frame)", data, len(payloads))
	}
}
