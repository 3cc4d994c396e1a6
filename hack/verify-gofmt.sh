#!/usr/bin/env bash
# Fails when any tracked Go file is not gofmt-formatted.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mapfile -t files < <(git ls-files -- '*.go')
bad="$(gofmt -l "${files[@]}")"
if [[ -n "${bad}" ]]; then
  echo "FAIL: these files are not gofmt-formatted (run: gofmt -w <file>):" >&2
  echo "${bad}" >&2
  exit 1
fi
echo "OK: gofmt (${#files[@]} files)"
