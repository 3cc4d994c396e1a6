#!/usr/bin/env bash
# For the root module and every module under hack/: go.mod is exactly what `go mod tidy`
# makes, go.sum holds every checksum that building and testing the module's own packages
# (or, for tool modules, building the tools) needs, and `go vet ./...` passes (with the e2e
# build tag too for the root, so the end-to-end suites keep compiling).
#
# The verdict must not depend on what the module proxy serves on the day. go.mod does not:
# since Go 1.17 it lists the modules providing packages that our packages and tests import.
# go.sum as tidy writes it does: tidy also records checksums for the tests of our
# dependencies, whose dependencies the proxy sometimes serves and sometimes refuses (seen:
# go.digitalxero.dev/go-msix, a test-only dependency of goreleaser's). So go.sum is checked
# for what our builds need (`go list -mod=readonly`, which fails on a missing checksum), and
# tidy's go.sum-only differences are reported but do not fail.
#
# vet uses the flags the modules are built with (CGO_ENABLED=0 -trimpath, like
# hack/lib/localkube.sh, hack/lib/tools.sh, the e2e framework and .goreleaser.yaml), so it
# shares their compiled packages in the build cache instead of compiling Kubernetes again.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
export CGO_ENABLED=0

mapfile -t modules < <(git ls-files -- go.mod 'hack/**/go.mod' 'hack/*/go.mod' | xargs -n1 dirname | sort -u)
failed=0
for m in "${modules[@]}"; do
  echo ">>> module ${m}"
  cd "${root}/${m}"
  # -e: a test-only module the proxy refuses today must not stop tidy from computing go.mod.
  if ! diff="$(go mod tidy -diff -e 2>/dev/null)"; then
    [[ -n "${diff}" ]] || { echo "FAIL: go mod tidy -diff failed in ${m}" >&2; failed=1; }
  fi
  # `go mod tidy -diff` prints one unified diff per file: "diff current/go.mod tidy/go.mod", ...
  gomod_diff="$(awk '/^diff /{f=($0 ~ /go\.mod$/)} f' <<<"${diff}")"
  gosum_diff="$(awk '/^diff /{f=($0 ~ /go\.sum$/)} f' <<<"${diff}")"
  if [[ -n "${gomod_diff}" ]]; then
    echo "FAIL: go mod tidy would change ${m}/go.mod (run: cd ${m} && go mod tidy):" >&2
    echo "${gomod_diff}" >&2
    failed=1
  fi
  if [[ -n "${gosum_diff}" ]]; then
    echo "note: go mod tidy would change $(grep -c '^[-+][^-+]' <<<"${gosum_diff}") line(s) of ${m}/go.sum" \
      "(checksums for dependencies' tests, which depend on what the proxy serves today; not required)"
  fi
  # What our own builds need is in go.sum: -mod=readonly refuses to add a missing checksum.
  if [[ -n "$(go list ./... 2>/dev/null)" ]]; then
    tags=()
    [[ "${m}" == "." ]] && tags=(-tags e2e)
    if ! go list -mod=readonly -deps -test "${tags[@]}" ./... >/dev/null; then
      echo "FAIL: go.sum of ${m} lacks checksums its packages need (run: cd ${m} && go mod tidy)" >&2
      failed=1
    fi
    if ! go vet -trimpath ./...; then
      echo "FAIL: go vet in ${m}" >&2
      failed=1
    fi
    if [[ "${m}" == "." ]] && ! go vet -trimpath -tags e2e ./test/...; then
      echo "FAIL: go vet -tags e2e ./test/..." >&2
      failed=1
    fi
  else
    # Tool modules (only `tool` directives): the tools build from go.mod and go.sum as committed.
    if ! go list -mod=readonly -deps tool >/dev/null; then
      echo "FAIL: go.sum of ${m} lacks checksums its tools need (run: cd ${m} && go mod tidy)" >&2
      failed=1
    fi
  fi
done
cd "${root}"
if [[ "${failed}" != 0 ]]; then
  exit 1
fi
echo "OK: go.mod tidy, go.sum complete, go vet (${#modules[@]} modules)"
