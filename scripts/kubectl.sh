#!/usr/bin/env bash
# Runs the kubectl built with the local control plane, pointed at its kubeconfig unless
# KUBECONFIG is set.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$("$root/scripts/build-control-plane.sh")
export KUBECONFIG=${KUBECONFIG:-${RENKU_SSH_RUN_DIR:-$root/.run}/cluster/kubeconfig}
exec "$bin/kubectl" "$@"
