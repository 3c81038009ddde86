#!/usr/bin/env bash
# The main job: a local control plane with the project's CRDs, the operator, the gateway and a
# sample session to `ssh` into.
#
#   scripts/up.sh        start everything and print the ssh command
#   scripts/up.sh down   stop everything it started
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ ${1:-} == down ]]; then
  scripts/cluster.sh down
  exit 0
fi

scripts/cluster.sh up
kubeconfig=${RENKU_SSH_RUN_DIR:-$root/.run}/cluster/kubeconfig
"$root/scripts/kubectl.sh" --kubeconfig "$kubeconfig" apply --server-side --field-manager=renku-ssh-up -f crds/ >/dev/null
echo "CRDs installed: $(ls crds | tr '\n' ' ')"

# TODO: start the operator, the gateway and a sample session here once their binaries exist.
echo "operator: not built yet"
echo "gateway: not built yet"
echo "sample session: not built yet"
echo
echo "The control plane is running. Use it with:"
echo "  export KUBECONFIG=$kubeconfig"
echo "  kubectl get ns"
echo "Stop it with: make down"
