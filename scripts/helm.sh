#!/usr/bin/env bash
# Builds helm from the Go module proxy into a cache outside the clone, keyed by version, and runs
# it. The version is the one tests/helm/go.mod pins (with its go.sum); a warm cache skips the
# build.
#
#   scripts/helm.sh path        build if needed and print the path of the helm binary
#   scripts/helm.sh ARGS...     run helm with ARGS, pointed at the local control plane's
#                               kubeconfig unless KUBECONFIG is set
#
# Helm's own cache, config and data folders default to folders beside the binary, so runs do
# not read or write the user's ~/.config/helm.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
module_dir="$root/tests/helm"
module=helm.sh/helm/v4

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly

version=$(awk -v module="$module" '$1 == module { print $2; exit }' "$module_dir/go.mod")
if [[ -z $version ]]; then
  echo "helm.sh: $module is not required in $module_dir/go.mod" >&2
  exit 1
fi

cache=${RENKU_SSH_CACHE:-$HOME/.cache/renku-ssh}
dir="$cache/helm-$version-$(go env GOOS)-$(go env GOARCH)"
bin="$dir/helm"

if [[ ! -x $bin ]]; then
  # Parallel test processes may all find the cache cold: one builds, the others wait.
  mkdir -p "$cache"
  exec 9>"$dir.lock"
  flock 9
fi
if [[ ! -x $bin ]]; then
  echo "building helm $version into $dir" >&2
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  # Stamps the version that `helm version` prints; the module's own default is only v4.<minor>.
  (cd "$module_dir" && go build -trimpath \
    -ldflags "-s -w -X $module/internal/version.version=$version \
      -X $module/internal/version.gitTreeState=clean" \
    -o "$dir.tmp/helm" "$module/cmd/helm")
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
fi
exec 9>&-

if [[ ${1:-} == path ]]; then
  echo "$bin"
  exit 0
fi

export HELM_CACHE_HOME=${HELM_CACHE_HOME:-$dir/home/cache}
export HELM_CONFIG_HOME=${HELM_CONFIG_HOME:-$dir/home/config}
export HELM_DATA_HOME=${HELM_DATA_HOME:-$dir/home/data}
export KUBECONFIG=${KUBECONFIG:-${RENKU_SSH_RUN_DIR:-$root/.run}/cluster/kubeconfig}
exec "$bin" "$@"
