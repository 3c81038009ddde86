#!/usr/bin/env bash
# Benchmarks renku-ssh-operator (release build) and prints one row per run: time until every
# SSHAccess is Ready, the operator's peak memory, and its memory and CPU at rest afterwards.
#
#   bench/operator/run.sh                 1,000 sessions, then 10,000 sessions
#   bench/operator/run.sh 500 2000        the given session counts
#
# Each run starts a private local control plane (scripts/cluster.sh with a run directory of its
# own), so other tests on the shared control plane neither disturb the figures nor see the load.
# Every session gets a ClusterIP Service, which the /16 Service range of cluster.sh has room for.
# Then it starts one operator process, creates the sessions with bench/operator/load.rs,
# measures, and stops it all.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
idle_wait=${BENCH_IDLE_WAIT:-30}
idle_window=${BENCH_IDLE_WINDOW:-60}
counts=("$@")
[[ ${#counts[@]} -gt 0 ]] || counts=(1000 10000)

echo "building release binaries" >&2
(cd "$root" && cargo build --release --locked -q -p renku-ssh-operator \
  --bin renku-ssh-operator --example operator-bench)
operator=$target/release/renku-ssh-operator
load=$target/release/examples/operator-bench
scratch=$(mktemp -d)
# Operator logs stay after the run, for a look at what it did.
log_dir=${BENCH_LOG_DIR:-$target/bench-operator}
mkdir -p "$log_dir"
pid=""

grep -q 'service-cluster-ip-range=10.0.0.0/16' "$root/scripts/cluster.sh" ||
  { echo "scripts/cluster.sh no longer gives Services a /16 range; 1,000 sessions need it" >&2; exit 1; }
"$root/scripts/build-control-plane.sh" >/dev/null
cluster() { RENKU_SSH_RUN_DIR=$scratch/run "$root/scripts/cluster.sh" "$@"; }
export RENKU_SSH_KUBECONFIG=$scratch/run/cluster/kubeconfig KUBECONFIG=$scratch/run/cluster/kubeconfig

stop_operator() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  pid=""
}
finish() {
  stop_operator
  cluster down >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap finish EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
status_kib() { awk -v key="$1:" '$1 == key {print $2}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
reconciles() {
  curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^renku_ssh_operator_reconciles_total/ {sum += $2} END {print sum + 0}'
}
row() { printf '%-10s %-10s %-10s %-14s %-14s %-12s %s\n' "$@"; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
row sessions create_s ready_s peak_rss_MiB rest_rss_MiB idle_cpu_% idle_reconciles
for count in "${counts[@]}"; do
  cluster up >&2
  namespace=bench-operator
  "$load" prepare --namespace "$namespace"
  port=$(free_port)
  "$operator" --namespace "$namespace" --ssh-policy annotated --gateway-host ssh.bench.test \
    --ca-secret "$namespace/renku-ssh-ca" --admin-address "127.0.0.1:$port" \
    --lease-namespace "$namespace" --lease-identity bench --log-format json \
    >"$log_dir/operator-$count.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$load" load --namespace "$namespace" --sessions "$count" | tee "$scratch/load-$count.txt" >&2
  create_s=$(awk '$1 == "sessions_created" {print $3}' "$scratch/load-$count.txt")
  ready_s=$(awk '$1 == "all_ready" {print $3}' "$scratch/load-$count.txt")
  peak=$(status_kib VmHWM)
  sleep "$idle_wait"
  rest=$(status_kib VmRSS)
  before_ticks=$(cpu_ticks)
  before_reconciles=$(reconciles)
  sleep "$idle_window"
  after_ticks=$(cpu_ticks)
  after_reconciles=$(reconciles)
  cpu=$(awk -v t="$((after_ticks - before_ticks))" -v hz="$(getconf CLK_TCK)" -v s="$idle_window" \
    'BEGIN {printf "%.2f", 100 * t / hz / s}')
  row "$count" "$create_s" "$ready_s" "$((peak / 1024))" "$((rest / 1024))" "$cpu" \
    "$((after_reconciles - before_reconciles))"
  stop_operator
  cluster down >&2
done
