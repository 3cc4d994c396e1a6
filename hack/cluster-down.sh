#!/usr/bin/env bash
# Stops the local cluster (whichever checkout started it) and removes everything it created on
# the machine: processes, pod sandboxes, mounts, network namespaces, the CNI bridge, iptables
# chains, cgroups. Logs stay in the state dir. Safe to run when nothing runs.
set -o errexit -o nounset -o pipefail
# shellcheck source=hack/lib/localkube.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/localkube.sh"

[[ "$(id -u)" == 0 ]] || localkube::die "the local cluster needs root (containerd, iptables, mounts)"
if [[ ! -e /var/lib/kubectl-bridge-localkube/cluster.json && ! -e /run/kubectl-bridge-localkube ]] \
  && ! ip link show cni0 >/dev/null 2>&1; then
  localkube::log "no local cluster on this machine"
  exit 0
fi
# The binary that started the cluster can stop it: no rebuild when this checkout's sources differ.
localkube="$(sed -n 's/^ *"binary": "\(.*\)",\{0,1\}$/\1/p' /var/lib/kubectl-bridge-localkube/cluster.json 2>/dev/null || true)"
if [[ -z "${localkube}" || ! -x "${localkube}" ]]; then
  localkube="$(localkube::build localkube)"
fi
"${localkube}" down --state-dir "${LOCALKUBE_STATE_DIR}"
