//go:build e2e

// Package e2e holds the end-to-end suites. They run against the project's own local cluster
// (hack/cluster-up.sh), which TestMain starts when it is not running.
package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// fw is shared by every test of this binary: one cluster, one build.
var fw *framework.Framework

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	var err error
	fw, err = framework.Setup(ctx)
	cancel()
	if err != nil {
		// Never skip: an e2e run that could not reach its cluster has failed.
		fmt.Fprintf(os.Stderr, "e2e setup failed: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
