#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the Go module proxy into a cache
# outside the clone, keyed by version, and prints the folder that holds the binaries. A warm
# cache skips the build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/versions.env
source "$root/scripts/versions.env"

cache=${RENKU_SSH_CACHE:-$HOME/.cache/renku-ssh}
bin="$cache/control-plane/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-$(go env GOOS)-$(go env GOARCH)"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

warm=1
for name in "${binaries[@]}"; do [[ -x "$bin/$name" ]] || warm=0; done
if [[ $warm == 1 ]]; then
  echo "$bin"
  exit 0
fi

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly
mkdir -p "$bin.tmp"
major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitTreeState=clean"
done

echo "building kube-apiserver, kube-controller-manager and kubectl $KUBE_VERSION into $bin" >&2
(cd "$root/tests/cluster/kube" && go build -trimpath -ldflags "-s -w $stamp" -o "$bin.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)
echo "building etcd $ETCD_VERSION into $bin" >&2
(cd "$root/tests/cluster/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" \
  go.etcd.io/etcd/server/v3)

rm -rf "$bin"
mv "$bin.tmp" "$bin"
echo "$bin"
