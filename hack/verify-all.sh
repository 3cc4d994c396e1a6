#!/usr/bin/env bash
# Every verification CI runs (make verify). Each hack/verify-*.sh installs or
# builds what it needs; tools are cached outside the repository (see
# hack/lib/tools.sh), so reruns and other clones are fast.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=${SECONDS}
failed=()
run() {
  local script="$1" t=${SECONDS}
  echo "=== ${script}"
  if "$@"; then
    echo "=== ${script}: ok ($((SECONDS - t))s)"
  else
    echo "=== ${script}: FAILED ($((SECONDS - t))s)" >&2
    failed+=("${script}")
  fi
}

run hack/verify-gofmt.sh
run hack/verify-gomod.sh
run hack/verify-goreleaser.sh
# Any other verify script added later runs too.
for script in hack/verify-*.sh; do
  case "${script}" in
    hack/verify-all.sh | hack/verify-gofmt.sh | hack/verify-gomod.sh | hack/verify-goreleaser.sh | hack/verify-krew.sh) ;;
    *) run "${script}" ;;
  esac
done
# Reuses the snapshot verify-goreleaser.sh just made.
SKIP_GORELEASER=1 run hack/verify-krew.sh

echo "verify-all: $((SECONDS - start))s"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all verifications passed"
