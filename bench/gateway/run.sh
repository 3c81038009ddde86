#!/usr/bin/env bash
# Benchmarks the SSH gateway side by side with its baselines, in one run on this machine.
# It measures bulk transfer through the gateway, straight to the session's sidecar and OpenSSH
# to OpenSSH (Debian's openssh-server with its own configuration on a loopback port). It also
# measures login time through the gateway and straight to the sidecar, the gateway's memory per
# idle connection with 1,000 open, and logins per second at saturation. Needs root (a network namespace for the session pod),
# the local control plane (`make cluster-up`) and openssh-server (scripts/install-deps.sh).
#
# Usage: bench/gateway/run.sh [load generator flags, see `--help`]
# Figures go to stdout and, as JSON, to .run/bench/gateway.json.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if ! scripts/cluster.sh status >/dev/null 2>&1; then
  echo "the local control plane is not running: start it with \`make cluster-up\`" >&2
  exit 1
fi
if [[ ! -x /usr/sbin/sshd ]]; then
  echo "/usr/sbin/sshd not found: install openssh-server (scripts/install-deps.sh does)" >&2
  exit 1
fi

# 1,000 idle connections hold about 3,000 descriptors in the load generator, the gateway and
# the sidecar together.
ulimit -n "$(ulimit -Hn)"

target_dir=${CARGO_TARGET_DIR:-$root/target}
echo "== building release binaries" >&2
cargo build --release --locked -p renku-ssh-gateway --bin renku-ssh-gateway --example gateway-bench >&2
cargo build --release --locked -p renku-sshd --bin renku-sshd >&2

mkdir -p .run/bench
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "== $(ssh -V 2>&1), $(/usr/sbin/sshd -V 2>&1 | head -1 || true)"
RENKU_SSHD_BIN="$target_dir/release/renku-sshd" \
  timeout 1800 "$target_dir/release/examples/gateway-bench" \
  --gateway-bin "$target_dir/release/renku-ssh-gateway" \
  --output .run/bench/gateway.json "$@"
