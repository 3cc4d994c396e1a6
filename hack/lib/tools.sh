# shellcheck shell=bash
# Helpers shared by hack/verify-*.sh: build pinned tools from the modules under
# hack/tools/ into a cache directory outside the repository. The cache key is a
# hash of the tool module's go.mod and go.sum, so every clone on the same
# machine reuses the same binaries and a version bump rebuilds them.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_CACHE="${KUBECTL_BRIDGE_TOOLS_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kubectl-bridge/tools}"

# tools::bin MODULE_DIR PACKAGE NAME — prints the path of a cached binary of
# PACKAGE built in the module at hack/tools/MODULE_DIR, building it if needed.
tools::bin() {
  local moddir="${REPO_ROOT}/hack/tools/$1" pkg="$2" name="$3"
  local key
  # go.mod, go.sum and any main package of our own in the module.
  key="$(find "${moddir}" -maxdepth 1 -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print0 |
    sort -z | xargs -0 cat | sha256sum | cut -c1-16)"
  local dir="${TOOLS_CACHE}/$1-${key}"
  if [[ ! -x "${dir}/${name}" ]]; then
    echo ">>> building ${name} (${pkg}) into ${dir}" >&2
    mkdir -p "${dir}"
    # Build into a temporary name first so an interrupted build never leaves a
    # half-written binary behind that later runs would trust.
    (cd "${moddir}" && CGO_ENABLED=0 go build -trimpath -o "${dir}/.${name}.tmp.$$" "${pkg}")
    mv "${dir}/.${name}.tmp.$$" "${dir}/${name}"
  fi
  echo "${dir}/${name}"
}
