#!/usr/bin/env bash
# Checks that nothing of the local cluster remains on the machine (after hack/cluster-down.sh):
# processes, network namespaces, links, iptables chains, mounts, cgroups, files outside the
# state dir. Prints what it finds and exits non-zero when anything remains.
set -o errexit -o nounset -o pipefail

found=0
check() {
  local what="$1" out="$2"
  if [[ -n "${out}" ]]; then
    echo "LEFTOVER ${what}:"; printf '  %s\n' "${out//$'\n'/$'\n'  }"; found=1
  else
    echo "ok: no ${what}"
  fi
}
# Zombies are gone already: PID 1 reaps orphans lazily (~2 s) on these machines.
check "processes" "$(ps -eo pid,stat,args | awk '$2 !~ /^Z/' | grep -E 'localkube|containerd|imgtool registry|/coredns|/pause' | grep -vE 'grep|check-clean' || true)"
check "network namespaces" "$(ip netns list 2>/dev/null || true)"
check "cni0/veth links" "$(ip -o link show | grep -E 'cni0|veth' || true)"
check "iptables KUBE-/CNI- chains" "$( { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -E 'KUBE-|CNI-' || true)"
check "mounts" "$(grep -E 'localkube|/run/netns|kubelet|containerd' /proc/self/mountinfo || true)"
check "kubepods cgroups" "$(ls -d /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods 2>/dev/null || true)"
check "files outside the state dir" "$(ls -d /run/kubectl-bridge-localkube /run/containerd /var/lib/kubelet /var/log/containers /var/lib/cni /run/netns /var/lib/kubectl-bridge-localkube/cluster.json 2>/dev/null || true)"
exit "${found}"
