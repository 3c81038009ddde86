#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests and the integration tests against the
# local control plane. Starts the control plane when it is not running and stops what it started.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

started=()
stop_started() {
  local status=$?
  for service in "${started[@]}"; do
    "$root/scripts/$service.sh" down || true
  done
  exit "$status"
}
trap stop_started EXIT

if ! scripts/cluster.sh status >/dev/null 2>&1; then
  scripts/cluster.sh up
  started+=(cluster)
fi

echo "== rustfmt" >&2
cargo fmt --all --check
echo "== clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests" >&2
cargo test --workspace --locked
