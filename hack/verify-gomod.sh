#!/usr/bin/env bash
# For the root module and every module under hack/: `go mod tidy` would change
# nothing and `go vet ./...` passes (with the e2e build tag too for the root,
# so the end-to-end suites keep compiling).
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"

mapfile -t modules < <(git ls-files -- go.mod 'hack/**/go.mod' 'hack/*/go.mod' | xargs -n1 dirname | sort -u)
failed=0
for m in "${modules[@]}"; do
  echo ">>> module ${m}"
  cd "${root}/${m}"
  tidy=(go mod tidy -diff)
  # Tool modules: tidy also resolves the tests of the tools' dependencies, and
  # the module proxy refuses one of goreleaser's (go.digitalxero.dev/go-msix,
  # test-only, never built); -e completes tidy past it.
  [[ "${m}" == hack/tools/* ]] && tidy+=(-e)
  if ! diff="$("${tidy[@]}" 2>/dev/null)" || [[ -n "${diff}" ]]; then
    echo "FAIL: go mod tidy would change ${m}/go.mod or go.sum (run: cd ${m} && go mod tidy):" >&2
    echo "${diff}" >&2
    failed=1
  fi
  # Modules that only pin tools (no packages of their own) have nothing to vet.
  if [[ -n "$(go list ./... 2>/dev/null)" ]]; then
    if ! go vet ./...; then
      echo "FAIL: go vet in ${m}" >&2
      failed=1
    fi
    if [[ "${m}" == "." ]] && ! go vet -tags e2e ./test/...; then
      echo "FAIL: go vet -tags e2e ./test/..." >&2
      failed=1
    fi
  fi
done
cd "${root}"
if [[ "${failed}" != 0 ]]; then
  exit 1
fi
echo "OK: go mod tidy and go vet (${#modules[@]} modules)"
