#!/usr/bin/env bash
# Starts the project's single-node Kubernetes cluster on this machine (see docs/cluster.md).
# Idempotent: a quick no-op when it already runs healthy from this checkout; it first cleans up
# a stale cluster or one started from another checkout. The LAST line printed is exactly
#   export KUBECONFIG=<absolute path>
# Environment: LOCALKUBE_STATE_DIR (default <repo>/_output/localkube), LOCALKUBE_CACHE.
set -o errexit -o nounset -o pipefail
# shellcheck source=hack/lib/localkube.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/localkube.sh"

[[ "$(id -u)" == 0 ]] || localkube::die "the local cluster needs root (containerd, iptables, mounts)"
localkube::ensure_packages

localkube="$(localkube::build localkube)"
coredns="$(localkube::build coredns)"
pause="$(localkube::build pause)"
imgtool="$(localkube::build imgtool)"
pause_tar="$(localkube::image "${imgtool}" localkube.local/pause:3.10 "${pause}" pause)"
coredns_tar="$(localkube::image "${imgtool}" localkube.local/coredns:v1.12.1 "${coredns}" coredns)"

mkdir -p "${LOCALKUBE_STATE_DIR}"
state_dir="$(cd "${LOCALKUBE_STATE_DIR}" && pwd)"
if ! "${localkube}" up --state-dir "${state_dir}" --image "${pause_tar}" --image "${coredns_tar}" --imgtool "${imgtool}"; then
  localkube::die "cluster did not come up; logs in ${state_dir}/logs (hack/cluster-down.sh cleans up)"
fi
echo "export KUBECONFIG=${state_dir}/admin.kubeconfig"
