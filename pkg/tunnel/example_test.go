package tunnel_test

import (
	"context"
	"fmt"
	"net"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// The CLI side of an intercept: keep a session attached to the agent through a port-forward and
// deliver every intercepted connection to the local app.
func ExampleClient() {
	token, _ := tunnel.NewToken()
	// tunnel.HashToken(token) goes into the session's Lease; the token never leaves the laptop.

	client, err := tunnel.NewClient(tunnel.ClientConfig{
		SessionID: "k7m2x9qa",
		Token:     token,
		Dial: func(ctx context.Context) (net.Conn, error) {
			// In production: a client-go port-forward to the agent pod's control port.
			var d net.Dialer
			return d.DialContext(ctx, "tcp", "127.0.0.1:7070")
		},
		Handler: &tunnel.Forwarder{
			Target: tunnel.StaticTarget("127.0.0.1:3000"), // --to
			OnEvent: func(e tunnel.StreamEvent) {
				if e.Kind == tunnel.LocalUnavailable && e.NothingListens {
					fmt.Println("nothing listens on", e.Local, "- start your app")
				}
			},
		},
		OnState: func(sc tunnel.StateChange) { fmt.Println("tunnel", sc.State, sc.Err) },
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()            // the example does not actually connect
	_ = client.Run(ctx) // returns nil when ctx ends, a *RefusedError if the agent refuses for good
}
