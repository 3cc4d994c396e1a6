package tunnel

import (
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/hashicorp/yamux"
)

// BenchmarkStreamThroughput measures one yamux stream over TCP loopback (the shape of a tunnel,
// minus the port-forward) for several receive windows, to back the choice of StreamWindow.
func BenchmarkStreamThroughput(b *testing.B) {
	for _, window := range []uint32{256 << 10, 1 << 20, StreamWindow, 16 << 20} {
		b.Run(fmt.Sprintf("window=%dKiB", window>>10), func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			cfg := YamuxConfig(nil)
			cfg.MaxStreamWindowSize = window
			done := make(chan int64, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				srv, _ := yamux.Server(c, cfg)
				defer srv.Close()
				st, err := srv.AcceptStream()
				if err != nil {
					return
				}
				n, _ := Copy(io.Discard, st)
				done <- n
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			cli, _ := yamux.Client(c, cfg)
			defer cli.Close()
			st, err := cli.OpenStream()
			if err != nil {
				b.Fatal(err)
			}
			chunk := make([]byte, 1<<20)
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := st.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			_ = st.Close()
			if n := <-done; n != int64(b.N)*int64(len(chunk)) {
				b.Fatalf("received %d bytes", n)
			}
		})
	}
}
