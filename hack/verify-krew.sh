#!/usr/bin/env bash
# The krew path users take, offline:
#  1. validate-krew-manifest accepts plugins/bridge.yaml (this repo as a custom
#     index) and goreleaser's generated dist/krew/bridge.yaml;
#  2. real krew, built from hack/tools/krew, installs the snapshot archive of
#     this machine's platform into a throw-away KREW_ROOT;
#  3. real kubectl finds the plugin through its plugin discovery and runs
#     `kubectl bridge version`, and completes `kubectl bridge ver<TAB>` through
#     the kubectl_complete-bridge link documented in docs/install.md;
#  4. krew lists and uninstalls it;
#  5. with the archives served on 127.0.0.1 (URLs rewritten in a copy of the
#     manifest): validate-krew-manifest's full check (it installs every
#     platform with kubectl krew), and this repository used as a custom krew
#     index (`krew index add` of a git clone, `krew install bridge/bridge`).
# Runs hack/verify-goreleaser.sh first unless SKIP_GORELEASER=1 (verify-all
# has just run it).
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source hack/lib/tools.sh

if [[ "${SKIP_GORELEASER:-0}" != 1 || ! -f dist/krew/bridge.yaml ]]; then
  hack/verify-goreleaser.sh
fi

krew="$(tools::bin krew sigs.k8s.io/krew/cmd/krew krew)"
validate="$(tools::bin krew sigs.k8s.io/krew/cmd/validate-krew-manifest validate-krew-manifest)"

# A stock kubectl: the machine's, or one built from k8s.io/kubectl.
kubectl="$(command -v kubectl || true)"
if [[ -z "${kubectl}" ]]; then
  kubectl="$(tools::bin kubectl . kubectl)"
fi
echo ">>> kubectl: ${kubectl}"

for m in plugins/bridge.yaml dist/krew/bridge.yaml; do
  "${validate}" -manifest "${m}" -skip-install
  echo "OK: ${m} is a valid krew manifest"
done

version="v$(sed -n 's/.*"version":"\([^"]*\)".*/\1/p' dist/metadata.json)"
archive="dist/kubectl-bridge_${version}_$(go env GOOS)_$(go env GOARCH).tar.gz"
[[ -f "${archive}" ]] || { echo "FAIL: ${archive} missing" >&2; exit 1; }

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "${server_pid}" ]]; then kill "${server_pid}" 2>/dev/null || true; fi
  rm -rf "${tmp}"
}
trap cleanup EXIT
export KREW_ROOT="${tmp}/krew" KREW_NO_UPGRADE_CHECK=1
# No cluster needed, and never the developer's: plugin discovery and
# `version` must work without one.
export KUBECONFIG="${tmp}/no-kubeconfig"
"${krew}" install --manifest=dist/krew/bridge.yaml --archive="${archive}" </dev/null
[[ -x "${KREW_ROOT}/bin/kubectl-bridge" ]] || { echo "FAIL: krew did not link kubectl-bridge into ${KREW_ROOT}/bin" >&2; exit 1; }
ls "${KREW_ROOT}"/store/bridge/*/LICENSE >/dev/null || { echo "FAIL: krew did not install the LICENSE" >&2; exit 1; }

export PATH="${KREW_ROOT}/bin:${PATH}"
"${kubectl}" plugin list 2>/dev/null | grep -q "${KREW_ROOT}/bin/kubectl-bridge" ||
  { echo "FAIL: kubectl plugin list does not show ${KREW_ROOT}/bin/kubectl-bridge" >&2; exit 1; }
out="$("${kubectl}" bridge version)"
echo "${out}"
grep -q "^Version: *${version}\$" <<<"${out}" || { echo "FAIL: kubectl bridge version did not print ${version}" >&2; exit 1; }
grep -q "^Agent image: ghcr.io/kubectl-bridge/bridge-agent:${version}\$" <<<"${out}" ||
  { echo "FAIL: agent image does not carry the plugin version ${version}" >&2; exit 1; }
echo "OK: kubectl bridge version through krew and kubectl plugin discovery"

# docs/install.md's one line, then kubectl's plugin completion.
ln -s "${KREW_ROOT}/bin/kubectl-bridge" "${KREW_ROOT}/bin/kubectl_complete-bridge"
comp="$("${kubectl}" __complete bridge ver 2>/dev/null)"
grep -q "^version" <<<"${comp}" || { echo "FAIL: kubectl __complete bridge ver gave: ${comp}" >&2; exit 1; }
echo "OK: kubectl __complete bridge ver → version"

# krew list/uninstall read the index: an empty git repository is enough.
git init -q "${KREW_ROOT}/index/default"
# Installed from a manifest, the plugin is listed as detached/bridge.
"${krew}" list | grep -q '\(^\|/\)bridge$' || { echo "FAIL: krew list does not show bridge" >&2; exit 1; }
"${krew}" uninstall bridge </dev/null
[[ ! -e "${KREW_ROOT}/bin/kubectl-bridge" ]] || { echo "FAIL: krew uninstall left the link" >&2; exit 1; }
echo "OK: krew install, kubectl discovery, completion and uninstall"

# 5. Downloads, offline: serve dist/ on loopback.
go build -o "${tmp}/fileserver" ./hack/fileserver
"${tmp}/fileserver" -dir dist -url-file "${tmp}/url" &
server_pid=$!
for _ in $(seq 50); do [[ -s "${tmp}/url" ]] && break; sleep 0.1; done
base="$(cat "${tmp}/url")"
# Same file name (krew requires <plugin>.yaml), release URL prefix → loopback.
mkdir -p "${tmp}/served"
sed "s#https://github.com/kubectl-bridge/kubectl-bridge/releases/download/[^/]*/#${base}/#" dist/krew/bridge.yaml >"${tmp}/served/bridge.yaml"
grep -q "uri: ${base}/" "${tmp}/served/bridge.yaml" || { echo "FAIL: could not rewrite the manifest URLs" >&2; exit 1; }

mkdir -p "${tmp}/path"
ln -s "${krew}" "${tmp}/path/kubectl-krew"
ln -s "${kubectl}" "${tmp}/path/kubectl" 2>/dev/null || true
export KREW_ROOT="${tmp}/krew-validate"
PATH="${tmp}/path:${PATH}" "${validate}" -manifest "${tmp}/served/bridge.yaml" </dev/null
echo "OK: validate-krew-manifest installed every platform's archive"

# The repository as a custom index: a git repo with plugins/bridge.yaml.
index="${tmp}/index"
mkdir -p "${index}/plugins"
cp "${tmp}/served/bridge.yaml" "${index}/plugins/bridge.yaml"
git -C "${index}" init -q
git -C "${index}" add plugins
git -C "${index}" -c user.name=verify -c user.email=verify@localhost commit -q -m index
export KREW_ROOT="${tmp}/krew-index"
# krew updates every index before installing: the default one must be a
# clone it can pull (the real one is on GitHub).
git clone -q "${index}" "${KREW_ROOT}/index/default"
"${krew}" index add bridge "${index}" </dev/null
"${krew}" install bridge/bridge </dev/null
out="$(PATH="${KREW_ROOT}/bin:${PATH}" "${kubectl}" bridge version)"
grep -q "^Version: *${version}\$" <<<"${out}" || { echo "FAIL: after installing from the custom index: ${out}" >&2; exit 1; }
echo "OK: krew install bridge/bridge from this repository as a custom index"
