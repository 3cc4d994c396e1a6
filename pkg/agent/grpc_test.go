package agent_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// grpcHealth runs a gRPC health service that knows only the service called name, so a Check
// tells which server answered.
func grpcHealth(t testing.TB, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, h)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// TestGRPCRoutedByMetadata: real gRPC calls (h2c, trailers carry the status) on one client
// connection are routed per call by their metadata: unary and server-streaming.
func TestGRPCRoutedByMetadata(t *testing.T) {
	upstream, laptop := grpcHealth(t, "upstream"), grpcHealth(t, "laptop")
	s := ruleSpec(t, "s1", tunnel.ModeSteal, "alice", match.Flags{Header: []string{"x-owner=alice"}})
	a := startAgent(t, agent.StaticSessions{"s1": s}, upstream, upstream, nil)
	startCLI(t, a, "s1", "tok-s1", laptop).waitState(t, tunnel.StateConnected)
	waitSessions(t, a, 1)

	conn, err := grpc.NewClient(a.Addr("http").String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 6 {
		owner, service, other := "bob", "upstream", "laptop"
		if i%2 == 0 {
			owner, service, other = "alice", "laptop", "upstream"
		}
		cctx := metadata.AppendToOutgoingContext(ctx, "x-owner", owner)
		resp, err := client.Check(cctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("call %d (owner %s): %v %v", i, owner, resp, err)
		}
		// The other side does not know the service: the error status travels in trailers.
		_, err = client.Check(cctx, &healthpb.HealthCheckRequest{Service: other})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("call %d (owner %s) for %s: %v, want NotFound", i, owner, other, err)
		}
	}
	// A server stream to the laptop.
	wctx, wcancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "x-owner", "alice"))
	defer wcancel()
	stream, err := client.Watch(wctx, &healthpb.HealthCheckRequest{Service: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil || msg.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", msg, err)
	}
	wcancel()
	waitMetrics(t, a, `bridge_agent_http_requests_total{outcome="local",port="http",session="s1"} 6`,
		`bridge_agent_sniffed_connections_total{port="http",protocol="h2c"} 1`)
}
