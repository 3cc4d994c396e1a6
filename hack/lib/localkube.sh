# shellcheck shell=bash
# Helpers shared by hack/cluster-up.sh, hack/cluster-down.sh and hack/load-image.sh: the
# machine's packages, the cached builds of localkube, coredns, pause and imgtool, and the
# cluster's fixed locations.

LOCALKUBE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCALKUBE_STATE_DIR="${LOCALKUBE_STATE_DIR:-${LOCALKUBE_REPO_ROOT}/_output/localkube}"
# Built binaries and images live outside the repository, keyed on their sources, so every
# clone on this machine (CI runs in a fresh one) reuses them.
LOCALKUBE_CACHE="${LOCALKUBE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kubectl-bridge/localkube}"
# Fixed by localkube (one cluster per machine); used by the scripts that source this file.
# shellcheck disable=SC2034
LOCALKUBE_CONTAINERD_SOCKET=/run/kubectl-bridge-localkube/containerd.sock
# shellcheck disable=SC2034
LOCALKUBE_REGISTRY=127.0.0.1:5001
LOCALKUBE_K8S_VERSION=v1.33.13

# iptables, ip, conntrack and modprobe live in sbin, which a CI shell may not have on PATH.
case ":${PATH}:" in *:/usr/sbin:*) ;; *) PATH="${PATH}:/usr/sbin:/sbin" ;; esac
export PATH

localkube::log() { echo ">>> $*" >&2; }
localkube::die() { echo "ERROR: $*" >&2; exit 1; }

# localkube::ensure_packages installs the Debian packages the cluster needs when missing.
localkube::ensure_packages() {
  local -A need=(
    [containerd]=containerd [ctr]=containerd [runc]=runc [iptables]=iptables
    [conntrack]=conntrack [ip]=iproute2 [/usr/lib/cni/bridge]=containernetworking-plugins
  )
  local missing=() cmd
  for cmd in "${!need[@]}"; do
    if ! command -v "${cmd}" >/dev/null 2>&1; then
      missing+=("${need[${cmd}]}")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [[ "$(id -u)" == 0 ]] || localkube::die "missing packages ${missing[*]}: run as root or install them"
  localkube::log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
}

# localkube::hash DIR PATHS... — a key over the Go toolchain and the module's sources.
localkube::hash() {
  local dir="$1"; shift
  {
    go version
    echo "${LOCALKUBE_K8S_VERSION}"
    (cd "${dir}" && find "$@" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}

# localkube::build NAME — prints the path of the cached binary NAME, building it when its
# sources changed. Builds are static (CGO off) and -trimpath, so they are reproducible and the
# Go build cache is shared across checkouts.
localkube::build() {
  local name="$1" moddir pkg paths ldflags="-s -w"
  case "${name}" in
    localkube)
      moddir="${LOCALKUBE_REPO_ROOT}/hack/localkube"; pkg=./cmd/localkube; paths=(go.mod go.sum cmd internal)
      local p major minor
      major="$(cut -d. -f1 <<<"${LOCALKUBE_K8S_VERSION#v}")"; minor="$(cut -d. -f2 <<<"${LOCALKUBE_K8S_VERSION}")"
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X ${p}.gitVersion=${LOCALKUBE_K8S_VERSION} -X ${p}.gitMajor=${major} -X ${p}.gitMinor=${minor} -X ${p}.gitTreeState=clean"
      done
      ;;
    coredns) moddir="${LOCALKUBE_REPO_ROOT}/hack/localkube/coredns"; pkg=.; paths=(.) ;;
    pause)   moddir="${LOCALKUBE_REPO_ROOT}/hack/localkube/pause"; pkg=.; paths=(.) ;;
    imgtool) moddir="${LOCALKUBE_REPO_ROOT}/hack/imgtool"; pkg=.; paths=(.) ;;
    *) localkube::die "unknown binary ${name}" ;;
  esac
  command -v go >/dev/null || localkube::die "go is required to build ${name}"
  local key out
  key="$(localkube::hash "${moddir}" "${paths[@]}")"
  out="${LOCALKUBE_CACHE}/bin/${name}-${key}"
  if [[ ! -x "${out}" ]]; then
    localkube::log "building ${name} (cache miss ${key}; localkube takes ~4-5 min cold)"
    mkdir -p "${LOCALKUBE_CACHE}/bin"
    local start=${SECONDS}
    # A temporary name first: an interrupted build never leaves a binary later runs would trust.
    (cd "${moddir}" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "${ldflags}" -o "${out}.tmp.$$" "${pkg}") >&2
    mv -f "${out}.tmp.$$" "${out}"
    localkube::log "built ${name} in $((SECONDS - start))s"
    localkube::prune "${name}" "${out}"
  fi
  echo "${out}"
}

# localkube::prune NAME KEEP — keeps the three newest cached builds of NAME (and KEEP, and the
# binary the running cluster was started with), deleting older ones.
localkube::prune() {
  local name="$1" keep="$2" running f
  running="$(sed -n 's/^ *"binary": "\(.*\)",\{0,1\}$/\1/p' /var/lib/kubectl-bridge-localkube/cluster.json 2>/dev/null || true)"
  local n=0
  # shellcheck disable=SC2012 # newest first; the names are ours (name-hexkey)
  while IFS= read -r f; do
    [[ "${f}" == *.tmp.* ]] && continue
    n=$((n + 1))
    [[ ${n} -le 3 || "${f}" == "${keep}" || "${f}" == "${running}" ]] && continue
    rm -f "${f}"
  done < <(ls -1t "${LOCALKUBE_CACHE}/bin/${name}"-* 2>/dev/null)
}

# localkube::image IMGTOOL REF BINARY NAME — prints the path of a cached docker-archive of
# BINARY, stored in the image as /NAME.
localkube::image() {
  local imgtool="$1" ref="$2" binary="$3" name="$4" key out
  key="$( { echo "${ref} ${name}"; sha256sum <"${binary}"; sha256sum <"${imgtool}"; } | sha256sum | cut -c1-16)"
  out="${LOCALKUBE_CACHE}/images/${name}-${key}.tar"
  if [[ ! -s "${out}" ]]; then
    mkdir -p "${LOCALKUBE_CACHE}/images"
    "${imgtool}" build --binary "${binary}" --name "${name}" --ref "${ref}" --out "${out}.tmp.$$" >&2
    mv -f "${out}.tmp.$$" "${out}"
  fi
  echo "${out}"
}
