#!/usr/bin/env bash
# Runs the end-to-end suites against the project's local cluster. TestMain starts the cluster when it
# is not running; this script stops it afterwards unless KEEP_CLUSTER=1 (handy while developing).
# Extra arguments go to `go test` (e.g. -run TestForward).
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
  trap 'hack/cluster-down.sh' EXIT
fi
# One package, so that -v output streams as the tests run instead of arriving at the end.
# CGO off and -trimpath, as the binaries the suite builds and hack/verify-gomod.sh's vet: one
# compile of the dependencies serves all three.
# -parallel: the tests that call t.Parallel (long, mostly waiting on the cluster) run side by side
# once the others are done.
CGO_ENABLED=0 go test -trimpath -tags e2e -count=1 -timeout 50m -parallel 6 -v ./test/e2e/ "$@"
