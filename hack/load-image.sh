#!/usr/bin/env bash
# Usage: hack/load-image.sh [--push] IMAGE_REF BINARY_PATH
# Packs a static binary into an image FROM scratch (binary at /<basename>, entrypoint it, user
# 65532:65532) and imports it into the running local cluster's containerd as IMAGE_REF.
# With --push it also pushes it into the loopback registry (127.0.0.1:5001) that containerd uses
# for ghcr.io (and every other registry host), so ghcr.io/<path>:<tag> pulls from it as users'
# clusters pull it.
set -o errexit -o nounset -o pipefail
# shellcheck source=hack/lib/localkube.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/localkube.sh"

usage() { echo "usage: $0 [--push] IMAGE_REF BINARY_PATH" >&2; exit 2; }
push=0
if [[ "${1:-}" == --push ]]; then push=1; shift; fi
[[ $# -eq 2 ]] || usage
ref="$1" binary="$2"
[[ -f "${binary}" ]] || localkube::die "binary ${binary} does not exist"
[[ "${ref}" == *:* && "${ref##*/}" == *:* ]] || localkube::die "image reference ${ref} needs a tag (not latest-by-default)"
command -v ctr >/dev/null || localkube::die "ctr not found: start the cluster with hack/cluster-up.sh"
# (ctr waits forever for a socket that is not there: check it exists, and bound the wait.)
if [[ ! -S "${LOCALKUBE_CONTAINERD_SOCKET}" ]] \
  || ! ctr --address "${LOCALKUBE_CONTAINERD_SOCKET}" --connect-timeout 5s --timeout 10s version >/dev/null 2>&1; then
  localkube::die "the local cluster is not running (no containerd on ${LOCALKUBE_CONTAINERD_SOCKET}): run hack/cluster-up.sh"
fi

imgtool="$(localkube::build imgtool)"
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
"${imgtool}" build --binary "${binary}" --ref "${ref}" --out "${tmp}/image.tar"
ctr -n k8s.io --address "${LOCALKUBE_CONTAINERD_SOCKET}" --connect-timeout 5s images import "${tmp}/image.tar" >/dev/null
localkube::log "imported ${ref}"

if [[ ${push} == 1 ]]; then
  # The repository path without its registry host: ghcr.io/org/img:tag -> 127.0.0.1:5001/org/img:tag.
  path="${ref}"
  first="${ref%%/*}"
  if [[ "${ref}" == */* && ( "${first}" == *.* || "${first}" == *:* || "${first}" == localhost ) ]]; then
    path="${ref#*/}"
  fi
  "${imgtool}" push --tar "${tmp}/image.tar" --ref "${LOCALKUBE_REGISTRY}/${path}" >/dev/null \
    || localkube::die "push to the loopback registry ${LOCALKUBE_REGISTRY} failed: is the cluster up (hack/cluster-up.sh)?"
  localkube::log "pushed ${ref} to ${LOCALKUBE_REGISTRY}/${path}"
fi
