package portforward_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

// forwardListener accepts local connections and pipes each to pod:port through the pool.
func forwardListener(t testing.TB, pool *portforward.Pool, bufs *portforward.Buffers, pod portforward.PodRef, port int32) (string, chan portforward.PipeResult) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	results := make(chan portforward.PipeResult, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				s, err := pool.Dial(context.Background(), pod, port)
				if err != nil {
					c.Close()
					return
				}
				results <- bufs.Pipe(c, s)
			}()
		}
	}()
	return l.Addr().String(), results
}

func TestPipe(t *testing.T) {
	c := newCluster(t)
	addr, results := forwardListener(t, c.pool, portforward.NewBuffers(0), podA, 80)

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if got := roundTrip(t, conn, r, "hi"); got != "a:hi" {
		t.Errorf("got %q", got)
	}
	// Half-close: the reply to data sent before the close still arrives.
	io.WriteString(conn, "last\n")
	conn.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "a:last\n" {
		t.Errorf("after half-close got %q, %v", rest, err)
	}
	conn.Close()
	res := <-results
	if res.RemoteErr != nil || res.LocalErr != nil || res.Sent != 8 || res.Received != 12 {
		t.Errorf("result %+v", res)
	}
}

func TestPipeResetByApp(t *testing.T) {
	c := newCluster(t)
	addr, results := forwardListener(t, c.pool, portforward.NewBuffers(0), podA, 80)
	other, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	or := bufio.NewReader(other)
	roundTrip(t, other, or, "1")

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "RESET\n")
	_, err = io.ReadAll(conn)
	res := <-results
	t.Logf("reset connection: read error %v, result %+v", err, res)
	if res.RemoteErr != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the kubelet reported %v but the local client read %v, want a reset", res.RemoteErr, err)
	}
	if got := roundTrip(t, other, or, "2"); got != "a:2" {
		t.Errorf("the other connection got %q", got)
	}
}

// BenchmarkPipe measures throughput through Pipe → SPDY → fake kubelet → sink/source, per buffer
// size. The fake kubelet speaks plain SPDY over loopback TCP, so it shows the per-frame cost of
// small writes; through TLS and the API server each frame costs more.
func BenchmarkPipe(b *testing.B) {
	for _, dir := range []string{"upload", "download"} {
		for _, size := range []int{32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/buf=%dKiB", dir, size>>10), func(b *testing.B) {
				benchPipe(b, dir, size)
			})
		}
	}
}

func benchPipe(b *testing.B, dir string, size int) {
	const chunk = 64 << 20
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if dir == "upload" {
					io.Copy(io.Discard, c)
				} else {
					buf := make([]byte, 256<<10)
					for sent := 0; sent < chunk; sent += len(buf) {
						if _, err := c.Write(buf); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	k := newClusterWith(b, func(portforward.PodRef, int32) (string, error) { return sink.Addr().String(), nil })
	addr, _ := forwardListener(b, k.pool, portforward.NewBuffers(size), podA, 80)
	b.SetBytes(chunk)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if dir == "upload" {
			buf := make([]byte, 1<<20)
			for sent := 0; sent < chunk; sent += len(buf) {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			conn.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, conn)
		} else {
			// Stop at the last byte rather than at EOF: like containerd, the fake kubelet ends a
			// stream up to a second after the pod closed its side, which is not throughput.
			n, _ := io.CopyN(io.Discard, conn, chunk)
			if n != chunk {
				b.Fatalf("received %d bytes", n)
			}
		}
		conn.Close()
	}
}
