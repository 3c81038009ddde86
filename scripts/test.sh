#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests and the integration tests against the
# local control plane and Keycloak. Starts each of them when it is not running and stops what it
# started.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

started=()
stop_started() {
  local status=$?
  for service in "${started[@]}"; do
    case $service in
    cluster) "$root/scripts/cluster.sh" down || true ;;
    keycloak) "$root/scripts/keycloak.sh" stop || true ;;
    esac
  done
  exit "$status"
}
trap stop_started EXIT

if ! scripts/cluster.sh status >/dev/null 2>&1; then
  scripts/cluster.sh up
  started+=(cluster)
fi
if ! scripts/keycloak.sh status >/dev/null 2>&1; then
  scripts/keycloak.sh start
  started+=(keycloak)
fi

echo "== rustfmt" >&2
cargo fmt --all --check
echo "== clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests" >&2
cargo test --workspace --locked
