#!/usr/bin/env bash
# Runs the benchmarks under bench/ and prints their figures. With names, runs only those:
#   scripts/bench.sh                  every benchmark
#   scripts/bench.sh sshd gateway     bench/sshd/run.sh, then bench/gateway/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  for script in "$root"/bench/*/run.sh; do names+=("$(basename "$(dirname "$script")")"); done
fi
for name in "${names[@]}"; do
  script="$root/bench/$name/run.sh"
  if [[ ! -x $script ]]; then
    echo "no benchmark named $name: expected an executable $script" >&2
    exit 2
  fi
  echo "== $name"
  "$script"
done
