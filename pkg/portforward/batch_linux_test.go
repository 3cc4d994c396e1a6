package portforward

import (
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/moby/spdystream/spdy"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	return client, server
}

// TestBatchedTransferEnds: over a real socket, a bulk transfer raises the low-water mark, and the
// few bytes that end it — fewer than the mark, with nothing after them — still reach the reader:
// the kernel is asked to wake it once the batch has waited batchWait.
func TestBatchedTransferEnds(t *testing.T) {
	cside, sside := tcpPair(t)
	setLowWater := lowWaterSetter(cside)
	if setLowWater == nil {
		t.Fatal("no receive batching on this machine: forward's bulk figures depend on it (Linux 5.4 or later)")
	}
	log := newLowWaterLog()
	c, srv := newFakeServerOver(t, cside, sside, newReceiveBatcher(func(bytes int) error {
		if err := log.setLowWater(bytes); err != nil {
			return err
		}
		return setLowWater(bytes)
	}))
	st, syn := srv.accepted(c)

	const bulk = batchAfter + 40*chunkSize
	const tail = 100
	go func() {
		for n := 0; n < bulk; n += chunkSize {
			srv.write(&spdy.DataFrame{StreamId: syn.StreamId, Data: make([]byte, chunkSize)})
		}
	}()
	if _, err := io.ReadFull(st, make([]byte, bulk)); err != nil {
		t.Fatal(err)
	}
	if got := log.got(); !slices.Contains(got, batchBytes) {
		t.Fatalf("marks %v: a bulk transfer did not raise the low-water mark", got)
	}
	// The client has read every full frame and waits for more with the mark raised (give its
	// read loop a moment to get there); the transfer's last bytes come now.
	time.Sleep(50 * time.Millisecond)
	srv.write(&spdy.DataFrame{StreamId: syn.StreamId, Data: make([]byte, tail)})
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(st, make([]byte, tail))
		read <- err
	}()
	select {
	case err := <-read:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the transfer's last %d bytes were held (marks set: %v)", tail, log.got())
	}
}

func TestKernelAtLeast(t *testing.T) {
	for release, want := range map[string]bool{
		"6.18.44-fc-v445":   true,
		"5.4.0-150-generic": true,
		"5.10-rc1":          true,
		"5.3.18":            false,
		"4.19.0":            false,
		"3":                 false,
		"":                  false,
	} {
		if got := kernelAtLeast(release, 5, 4); got != want {
			t.Errorf("kernelAtLeast(%q, 5, 4) = %v, want %v", release, got, want)
		}
	}
}
