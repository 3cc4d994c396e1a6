#!/usr/bin/env bash
# `goreleaser check`, then a snapshot release into dist/ (git-ignored): every
# archive of .goreleaser.yaml, checksums.txt and the generated krew manifest
# dist/krew/bridge.yaml must come out. goreleaser is built from
# hack/tools/goreleaser into a cache shared by every clone on this machine.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source hack/lib/tools.sh

goreleaser="$(tools::bin goreleaser github.com/goreleaser/goreleaser/v2 goreleaser)"

# make test builds one architecture per OS (amd64): the code has no
# architecture-specific files, and each arm64 cross-build costs a cold machine
# minutes of compiling every dependency again. ALL_PLATFORMS=1 (make
# release-check, and the release itself) builds the whole matrix.
config=.goreleaser.yaml
platforms=(linux_amd64 linux_arm64 darwin_amd64 darwin_arm64 windows_amd64 windows_arm64)
agent_platforms=(linux_amd64 linux_arm64)
"${goreleaser}" check --config "${config}"
if [[ "${ALL_PLATFORMS:-0}" != 1 ]]; then
  config="$(mktemp --suffix=.yaml)"
  trap 'rm -f "${config}"' EXIT
  sed 's/^\(    goarch: \)\[amd64, arm64\]$/\1[amd64]/' .goreleaser.yaml >"${config}"
  [[ "$(grep -c '^    goarch: \[amd64\]$' "${config}")" == 2 ]] || { echo "FAIL: could not narrow .goreleaser.yaml's goarch lists to amd64" >&2; exit 1; }
  platforms=(linux_amd64 darwin_amd64 windows_amd64)
  agent_platforms=(linux_amd64)
  echo ">>> snapshot of amd64 only (ALL_PLATFORMS=1 builds every platform)"
fi
start=${SECONDS}
# --skip=validate: CI checkouts and developer trees may be dirty or untagged;
# a snapshot is never published anyway.
"${goreleaser}" release --config "${config}" --snapshot --clean --skip=validate
echo ">>> snapshot release in $((SECONDS - start))s"

version="$(sed -n 's/.*"version":"\([^"]*\)".*/\1/p' dist/metadata.json)"
[[ -n "${version}" ]] || { echo "FAIL: no version in dist/metadata.json" >&2; exit 1; }
missing=0
for platform in "${platforms[@]}"; do
  ext=tar.gz
  [[ "${platform}" == windows_* ]] && ext=zip
  archive="dist/kubectl-bridge_v${version}_${platform}.${ext}"
  if [[ ! -f "${archive}" ]]; then
    echo "FAIL: ${archive} was not produced" >&2
    missing=1
    continue
  fi
  # Every archive carries the license (krew checks it) and the binary.
  bin=kubectl-bridge
  [[ "${platform}" == windows_* ]] && bin=kubectl-bridge.exe
  if [[ "${ext}" == zip ]]; then
    listing="$(unzip -Z1 "${archive}" 2>/dev/null || python3 -c 'import sys,zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "${archive}")"
  else
    listing="$(tar -tzf "${archive}")"
  fi
  for f in LICENSE "${bin}"; do
    grep -qx "${f}" <<<"${listing}" || { echo "FAIL: ${archive} lacks ${f}" >&2; missing=1; }
  done
  grep -q "  $(basename "${archive}")\$" dist/checksums.txt || { echo "FAIL: ${archive} not in checksums.txt" >&2; missing=1; }
done
for platform in "${agent_platforms[@]}"; do
  [[ -f "dist/bridge-agent_v${version}_${platform}.tar.gz" ]] || { echo "FAIL: bridge-agent archive for ${platform} missing" >&2; missing=1; }
done
[[ -f dist/krew/bridge.yaml ]] || { echo "FAIL: dist/krew/bridge.yaml was not generated" >&2; missing=1; }
[[ "${missing}" == 0 ]] || exit 1
echo "OK: goreleaser check and snapshot release v${version}"
