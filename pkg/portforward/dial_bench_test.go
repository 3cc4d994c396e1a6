package portforward_test

import (
	"context"
	"testing"
)

// BenchmarkDial measures what opening and closing a forwarded connection's streams costs the
// client, against the in-process kubelet (no network hops worth the name).
func BenchmarkDial(b *testing.B) {
	c := newCluster(b)
	ctx := context.Background()
	if err := c.pool.Warm(ctx, podA); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s, err := c.pool.Dial(ctx, podA, 80)
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
