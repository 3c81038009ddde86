#!/usr/bin/env bash
# The main job: a local control plane with the project's CRDs, the operator (with its admission
# webhook), the gateway and a sample session whose pod runs the injected renku-sshd in a network
# namespace. Prints an ssh command that opens a shell in the session.
#
#   scripts/up.sh                start everything and print the ssh command
#   scripts/up.sh --device-flow  also start Keycloak, so that login without a key works
#   scripts/up.sh down           stop everything it started
#
# Needs root (the session pod's network namespace). State and logs live in .run/demo/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_dir=${RENKU_SSH_RUN_DIR:-$root/.run}
demo="$run_dir/demo"
kubeconfig="$run_dir/cluster/kubeconfig"
system_namespace=renku-ssh
session_namespace=renku
session=demo-0123456789ab
owner=demo-user-0001

log() { echo "up: $*" >&2; }
kubectl() { "$root/scripts/kubectl.sh" --kubeconfig "$kubeconfig" "$@"; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_processes() {
  for name in pod-runner gateway operator; do
    local pid_file="$demo/$name.pid"
    [[ -f $pid_file ]] || continue
    local pid
    pid=$(cat "$pid_file")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
  done
}

device_flow=false
case ${1:-} in
  down)
    stop_processes
    if [[ -f $demo/keycloak-started ]]; then scripts/keycloak.sh stop; fi
    scripts/cluster.sh down
    rm -rf "$demo"
    exit 0
    ;;
  --device-flow) device_flow=true ;;
  "") ;;
  *)
    log "unknown argument ${1}: use --device-flow, down, or nothing"
    exit 2
    ;;
esac
if [[ $(id -u) != 0 ]]; then
  log "the sample session's pod runs in a network namespace, which needs root; run as root"
  exit 1
fi

stop_processes
mkdir -p "$demo"
scripts/cluster.sh up

gateway_device_flags=()
if $device_flow; then
  # The test realm of scripts/keycloak.sh: public client renku-cli with the device grant, and
  # users alice and bob. The session's owner becomes alice's Keycloak user id.
  if ! scripts/keycloak.sh status >/dev/null 2>&1; then
    scripts/keycloak.sh start
    touch "$demo/keycloak-started"
  fi
  set -a
  # shellcheck disable=SC1091
  . "$run_dir/keycloak/env"
  set +a
  owner=$(python3 "$root/scripts/keycloak-user-id.py" "$KEYCLOAK_USER_ALICE")
  gateway_device_flags=(--oidc-issuer "$KEYCLOAK_ISSUER" --device-client-id "$KEYCLOAK_CLI_CLIENT_ID")
fi

log "building renku-ssh-operator, renku-ssh-gateway, renku-sshd and pod-runner"
cargo build --locked -q -p renku-ssh-operator -p renku-ssh-gateway -p renku-sshd \
  -p renku-ssh-testkit --bin renku-ssh-operator --bin renku-ssh-gateway --bin renku-sshd \
  --bin pod-runner
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/debug"

kubectl apply --server-side --field-manager=renku-ssh-up -f crds/ >/dev/null
kubectl create namespace "$system_namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create namespace "$session_namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# The user's key pair and the gateway's host key, made once and kept.
[[ -f $demo/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C demo-laptop -f "$demo/id_ed25519"
[[ -f $demo/gateway_host_key ]] || ssh-keygen -q -t ed25519 -N '' -C gateway -f "$demo/gateway_host_key"
# A second key that no Secret lists, for trying login without a registered key.
[[ -f $demo/id_unregistered ]] || ssh-keygen -q -t ed25519 -N '' -C borrowed-laptop -f "$demo/id_unregistered"

webhook_port=$(free_port)
operator_admin=$(free_port)
gateway_port=$(free_port)
gateway_admin=$(free_port)

log "starting the operator (admission webhook on 127.0.0.1:$webhook_port)"
KUBECONFIG=$kubeconfig POD_NAMESPACE=$system_namespace "$bin/renku-ssh-operator" \
  --ssh-policy annotated --gateway-host 127.0.0.1 --gateway-port "$gateway_port" \
  --ca-secret "$system_namespace/renku-ssh-gateway-ca" \
  --admin-address "127.0.0.1:$operator_admin" --lease-namespace "$system_namespace" \
  --webhook --webhook-address "127.0.0.1:$webhook_port" \
  --webhook-register-url "https://127.0.0.1:$webhook_port/mutate" \
  --webhook-extra-san 127.0.0.1 --webhook-install-image renku-ssh-sshd:local \
  >"$demo/operator.log" 2>&1 &
echo $! >"$demo/operator.pid"

log "starting the gateway on 127.0.0.1:$gateway_port"
KUBECONFIG=$kubeconfig POD_NAMESPACE=$system_namespace "$bin/renku-ssh-gateway" \
  --listen "127.0.0.1:$gateway_port" --host-key "$demo/gateway_host_key" \
  --admin-address "127.0.0.1:$gateway_admin" "${gateway_device_flags[@]}" \
  >"$demo/gateway.log" 2>&1 &
echo $! >"$demo/gateway.pid"

wait_http() {
  local url=$1 what=$2
  for _ in $(seq 1 300); do
    curl -sf --max-time 1 "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log "$what did not become ready; its log:"
  tail -n 30 "$demo/$what.log" >&2
  return 1
}
wait_http "http://127.0.0.1:$operator_admin/readyz" operator
wait_http "http://127.0.0.1:$gateway_admin/readyz" gateway

log "creating session $session_namespace/$session, its keys Secret and the pod amalthea would make"
kubectl -n "$session_namespace" create secret generic "$owner-keys" \
  --from-file=authorized_keys="$demo/id_ed25519.pub" --dry-run=client -o yaml |
  kubectl apply --server-side --field-manager=renku-ssh-up -f - >/dev/null
# The operator may create the session's SSHAccess first (the session is annotated) with the
# same spec.user. Forcing takes shared ownership of that field instead of failing on it.
sed -e "s/@SESSION@/$session/g" -e "s/@OWNER@/$owner/g" manifests/samples/session.yaml |
  kubectl -n "$session_namespace" apply --server-side --force-conflicts \
    --field-manager=renku-ssh-up -f - >/dev/null

# No kubelet runs here: pod-runner gives the session pod a network namespace, lays out its
# Secret volumes as kubelet does and runs the injected renku-sshd with the sidecar's arguments.
KUBECONFIG=$kubeconfig RENKU_SSH_KUBECONFIG=$kubeconfig RENKU_SSHD_BIN="$bin/renku-sshd" \
  "$bin/pod-runner" "$session_namespace" "$session-0" >"$demo/pod-runner.log" 2>&1 &
pod_runner_pid=$!
echo "$pod_runner_pid" >"$demo/pod-runner.pid"

# Print the error of a pod-runner that exited: from its first `Error` line up to the next blank
# line (at most 10 lines), or the log's tail when it has no such line.
pod_runner_failed() {
  log "pod-runner exited early; its error ($demo/pod-runner.log):"
  if grep -q 'Error' "$demo/pod-runner.log"; then
    awk '/Error/ && !found { found = 1 } found { if ($0 == "" || ++lines > 10) exit; print }' \
      "$demo/pod-runner.log" >&2
  else
    tail -n 20 "$demo/pod-runner.log" >&2
  fi
  log "if it says 'File exists', a network namespace or veth pair from an earlier run is left:"
  log "list them with 'ip netns list' and 'ip link show', then delete the leftover rssh-* namespace"
  log "('ip netns delete NAME') or rssh* link ('ip link delete NAME') and run this script again"
}

log "waiting until SSHAccess $session_namespace/$session is Ready"
ready=false
deadline=$((SECONDS + 120))
while ((SECONDS < deadline)); do
  if ! kill -0 "$pod_runner_pid" 2>/dev/null; then
    pod_runner_failed
    rm -f "$demo/pod-runner.pid"
    exit 1
  fi
  status=$(kubectl -n "$session_namespace" get "sshaccess/$session" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  if [[ $status == True ]]; then
    ready=true
    break
  fi
  sleep 1
done
if ! $ready; then
  log "SSHAccess $session_namespace/$session is not Ready after 120 s"
  kubectl -n "$session_namespace" get sshaccess "$session" -o yaml >&2 || true
  tail -n 20 "$demo/pod-runner.log" >&2
  exit 1
fi

# The gateway's host key goes into known_hosts: host-key checking stays on.
echo "[127.0.0.1]:$gateway_port $(cut -d' ' -f1,2 "$demo/gateway_host_key.pub")" >"$demo/known_hosts"
cat >"$demo/ssh_config" <<EOF
Host $session
  HostName 127.0.0.1
  Port $gateway_port
  User $session
  IdentityFile $demo/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $demo/known_hosts

Host $session-nokey
  HostName 127.0.0.1
  Port $gateway_port
  User $session
  IdentityFile $demo/id_unregistered
  IdentitiesOnly yes
  UserKnownHostsFile $demo/known_hosts
  PreferredAuthentications publickey,keyboard-interactive
EOF

cat <<EOF

The session is ready. Open a shell in it with:

  ssh -F $demo/ssh_config $session

or, without the config file:

  ssh -i $demo/id_ed25519 -o UserKnownHostsFile=$demo/known_hosts -p $gateway_port $session@127.0.0.1

See what the operator keeps for it:

  scripts/kubectl.sh -n $session_namespace get sshaccess

Logs are in $demo/. Stop everything with: make down
EOF
if $device_flow; then
  cat <<EOF

Log in with a key that no Secret lists (the device flow):

  ssh -F $demo/ssh_config $session-nokey

Open the URL it shows, sign in as $KEYCLOAK_USER_ALICE (password $KEYCLOAK_USER_ALICE_PASSWORD,
a local test account), approve, and press Enter. For the next 5 minutes (the lifetime of the
local Keycloak's access tokens) ssh with that key asks nothing.
EOF
fi
