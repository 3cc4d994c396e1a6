package framework

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Poll calls cond every 100 ms until it reports done, returns an error, or timeout passes.
// It is for waiting on the cluster to converge (a rollout, an EndpointSlice update), never for
// retrying an assertion until it happens to pass.
func Poll(ctx context.Context, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, cond)
}

// PollEvery is Poll at another interval, for measuring when a change happens.
func PollEvery(ctx context.Context, interval, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, interval, timeout, true, cond)
}
