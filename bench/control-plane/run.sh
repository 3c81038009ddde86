#!/usr/bin/env bash
# Measures the control-plane build and start-up, and prints one row per figure.
#
#   bench/control-plane/run.sh          cache hit, rebuild with a warm Go build cache, start-up
#   bench/control-plane/run.sh --cold   also a build with empty Go build and binary caches
#                                       (about 6 minutes on 2 cores; modules stay downloaded)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cold=0
[[ ${1:-} == --cold ]] && cold=1
scratch=$(mktemp -d)
trap 'RENKU_SSH_RUN_DIR=$scratch/run "$root/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT

row() { printf '%-44s %s\n' "$1" "$2"; }

# Runs a command and prints "<seconds> <peak KiB>" of it and its children.
measure() {
  /usr/bin/time -f '%e %M' -o "$scratch/time" "$@" >/dev/null 2>"$scratch/stderr" ||
    { cat "$scratch/stderr" >&2; return 1; }
  cat "$scratch/time"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
read -r seconds _ < <(measure "$root/scripts/build-control-plane.sh")
row "build, binary cache hit" "${seconds} s"

read -r seconds peak < <(RENKU_SSH_CACHE=$scratch/cache measure "$root/scripts/build-control-plane.sh")
row "build, warm Go build cache, no binaries" "${seconds} s, peak $((peak / 1024)) MiB"

if ((cold)); then
  read -r seconds peak < <(GOCACHE=$scratch/gocache RENKU_SSH_CACHE=$scratch/cache-cold \
    measure "$root/scripts/build-control-plane.sh")
  row "build, cold (empty Go build cache)" "${seconds} s, peak $((peak / 1024)) MiB"
fi

for attempt in 1 2 3; do
  read -r seconds _ < <(RENKU_SSH_RUN_DIR=$scratch/run measure "$root/scripts/cluster.sh" up)
  rss=0
  for name in etcd kube-apiserver kube-controller-manager; do
    kib=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$scratch/run/cluster/$name.pid")/status")
    rss=$((rss + kib))
  done
  row "start-up to ready, run $attempt" "${seconds} s, resident after start $((rss / 1024)) MiB"
  RENKU_SSH_RUN_DIR=$scratch/run "$root/scripts/cluster.sh" down >/dev/null 2>&1
done
