# kubectl-bridge — developer entry points. `make test` is the one command that runs every test.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -o errexit -o nounset -o pipefail -c

.PHONY: build test unit verify e2e bench cluster-up cluster-down demo release-check

build:
	go build -o _output/bin/ ./cmd/...

# The cluster's own module is tested with the flags its binary is built with, so both share
# one build cache.
unit:
	go test -race ./...
	cd hack/localkube && CGO_ENABLED=0 go test -trimpath ./internal/...

verify:
	hack/verify-all.sh

e2e:
	hack/e2e.sh

# test runs everything CI runs: unit tests, verifications, then the end-to-end suite on the local
# cluster, each stage timed (hack/test.sh).
test:
	hack/test.sh

cluster-up:
	hack/cluster-up.sh

cluster-down:
	hack/cluster-down.sh

demo:
	hack/demo.sh

# release-check builds the snapshot release for every platform (make test builds amd64 only).
release-check:
	ALL_PLATFORMS=1 hack/verify-goreleaser.sh

# bench measures (docs/benchmarks.md); it is not part of test.
bench:
	hack/bench.sh
