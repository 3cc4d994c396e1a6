package agent_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// sinkServer reads until EOF and then answers with the byte count: a throughput target.
func sinkServer(b testing.TB) net.Listener {
	return tunneltest.Serve(b, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		_, _ = fmt.Fprintf(c, "%d\n", n)
	})
}

// benchPaths returns, per path name, the address a client dials to reach target:
// directly, through the agent to the shadow upstream, or through the agent and the tunnel to the
// laptop (steal).
func benchPaths(b *testing.B, target net.Listener) map[string]string {
	b.Helper()
	direct := target.Addr().String()
	a := startAgent(b, agent.StaticSessions{"s1": spec("s1", "tok", tunnel.ModeSteal, "alice")}, direct, direct, nil)
	c := startCLI(b, a, "s1", "tok", direct)
	c.waitState(b, tunnel.StateConnected)
	waitSessions(b, a, 1)
	return map[string]string{
		"direct":       direct,
		"pass-through": a.Addr("admin").String(), // not intercepted
		"steal-tunnel": a.Addr("http").String(),
	}
}

var benchOrder = []string{"direct", "pass-through", "steal-tunnel"}

// BenchmarkThroughput streams bytes one way over one connection.
func BenchmarkThroughput(b *testing.B) {
	paths := benchPaths(b, sinkServer(b))
	chunk := make([]byte, 1<<20)
	for _, name := range benchOrder {
		b.Run(name, func(b *testing.B) {
			c, err := net.Dial("tcp", paths[name])
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			_ = c.(*net.TCPConn).CloseWrite()
			var n int64
			if _, err := fmt.Fscan(bufio.NewReader(c), &n); err != nil || n != int64(b.N)*int64(len(chunk)) {
				b.Fatalf("sink got %d bytes (%v), want %d", n, err, int64(b.N)*int64(len(chunk)))
			}
		})
	}
}

// BenchmarkConnectionLatency measures a new connection plus one small request/response.
func BenchmarkConnectionLatency(b *testing.B) {
	paths := benchPaths(b, lineServer(b, "srv"))
	for _, name := range benchOrder {
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", paths[name])
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.WriteString(c, "ping\n"); err != nil {
					b.Fatal(err)
				}
				if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
					b.Fatal(err)
				}
				_ = c.Close()
			}
		})
	}
}

// BenchmarkRequestLatency measures one small request/response on an open connection.
func BenchmarkRequestLatency(b *testing.B) {
	paths := benchPaths(b, lineServer(b, "srv"))
	for _, name := range benchOrder {
		b.Run(name, func(b *testing.B) {
			c, err := net.Dial("tcp", paths[name])
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := io.WriteString(c, "ping\n"); err != nil {
					b.Fatal(err)
				}
				if _, err := r.ReadString('\n'); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
