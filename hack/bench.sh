#!/usr/bin/env bash
# Runs the measurements written down in docs/benchmarks.md against the local cluster, with the
# real kubectl (the machine's, or one built from hack/tools/kubectl) for the port-forward baseline.
# Not part of `make test`: benchmarks measure, they do not pass or fail on numbers.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source hack/lib/tools.sh
if ! command -v kubectl >/dev/null; then
  PATH="$(dirname "$(tools::bin kubectl . kubectl)"):$PATH"
fi
KEEP_CLUSTER=1 go test -tags e2e -count=1 -timeout 60m -run '^$' -bench "${1:-.}" -benchtime "${BENCHTIME:-1000x}" -v ./test/e2e/
