#!/usr/bin/env bash
# Every test CI runs (make test), stage by stage, each timed: unit tests, verifications, the
# local cluster's start, the end-to-end suite, the cluster's stop. A summary of the stages'
# times closes the output, so a slow or cold run shows where its time went.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=${SECONDS}
summary=()
stage() {
  local name="$1" t=${SECONDS} rc=0
  shift
  echo "===== stage ${name}: $*"
  "$@" || rc=$?
  summary+=("$(printf '%-14s %5ds  %s' "${name}" $((SECONDS - t)) "$([[ ${rc} == 0 ]] && echo ok || echo "FAILED (exit ${rc})")")")
  echo "===== stage ${name}: $([[ ${rc} == 0 ]] && echo ok || echo FAILED) in $((SECONDS - t))s"
  return "${rc}"
}
report() {
  echo "===== stages"
  printf '%s\n' "${summary[@]}"
  echo "===== total ${SECONDS}s"
}
trap report EXIT

stage unit make unit
stage verify make verify
# The cluster is started and stopped as stages of their own so their time shows; the e2e
# suite's TestMain finds it running. It is stopped even when a stage fails.
trap 'stage cluster-down hack/cluster-down.sh || true; report' EXIT
stage cluster-up bash -c 'hack/cluster-up.sh >/dev/null'
KEEP_CLUSTER=1 stage e2e make e2e
