#!/usr/bin/env bash
# Runs a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on
# loopback, built from the Go module proxy by build-control-plane.sh.
#
#   scripts/cluster.sh up       start it, wait until ready, write the kubeconfig
#   scripts/cluster.sh down     stop every process it started and remove its state
#   scripts/cluster.sh status   exit 0 when it is running and ready
#
# State lives in $RENKU_SSH_RUN_DIR/cluster (default <repo>/.run/cluster); the kubeconfig is
# written to <state>/kubeconfig. Ports are chosen free at start-up.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${RENKU_SSH_RUN_DIR:-$root/.run}
state="$run_dir/cluster"
kubeconfig="$state/kubeconfig"
ready_timeout=${RENKU_SSH_CLUSTER_TIMEOUT:-180}

log() { echo "cluster: $*" >&2; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

api_get() {
  curl -sf --max-time 5 --cacert "$state/pki/ca.crt" -H "Authorization: Bearer $(cat "$state/admin-token")" \
    "$(cat "$state/server")$1"
}

is_ready() {
  pid_alive "$state/etcd.pid" && pid_alive "$state/kube-apiserver.pid" &&
    pid_alive "$state/kube-controller-manager.pid" && api_get /readyz >/dev/null 2>&1
}

make_pki() {
  local pki="$state/pki"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=renku-ssh-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,IP:10.0.0.1\n' \
    >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 3650 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  # One key signs and verifies service-account tokens.
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  local server=$1 token=$2
  cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$state/pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
EOF
  chmod 600 "$kubeconfig"
}

start_process() {
  local name=$1
  shift
  "$@" >"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}

wait_until() {
  local what=$1 check=$2 started=$SECONDS
  until $check; do
    if ((SECONDS - started > ready_timeout)); then
      log "timed out after ${ready_timeout}s waiting for $what; logs are in $state/*.log"
      tail -n 20 "$state"/*.log >&2 || true
      return 1
    fi
    for name in etcd kube-apiserver kube-controller-manager; do
      if [[ -f "$state/$name.pid" ]] && ! pid_alive "$state/$name.pid"; then
        log "$name exited during start-up; last lines of $state/$name.log:"
        tail -n 30 "$state/$name.log" >&2
        return 1
      fi
    done
    sleep 0.5
  done
}

default_service_account_exists() { api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1; }
apiserver_ready() { api_get /readyz >/dev/null 2>&1; }

up() {
  if is_ready; then
    log "already running: $kubeconfig"
    return 0
  fi
  down quiet
  local bin
  bin=$("$root/scripts/build-control-plane.sh")
  local started=$SECONDS
  mkdir -p "$state/etcd-data"
  make_pki
  local token
  token=$(openssl rand -hex 24)
  echo "$token" >"$state/admin-token"
  chmod 600 "$state/admin-token"
  echo "$token,admin,admin,system:masters" >"$state/tokens.csv"

  local etcd_port etcd_peer api_port kcm_port
  etcd_port=$(free_port)
  etcd_peer=$(free_port)
  api_port=$(free_port)
  kcm_port=$(free_port)
  echo "https://127.0.0.1:$api_port" >"$state/server"

  start_process etcd "$bin/etcd" --name=local --data-dir="$state/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="local=http://127.0.0.1:$etcd_peer" \
    --unsafe-no-fsync --log-level=warn

  start_process kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
    --tls-cert-file="$state/pki/apiserver.crt" --tls-private-key-file="$state/pki/apiserver.key" \
    --client-ca-file="$state/pki/ca.crt" --token-auth-file="$state/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$state/pki/sa.pub" \
    --service-account-signing-key-file="$state/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/16 --allow-privileged=true \
    --authorization-mode=RBAC --profiling=false --v=1

  write_kubeconfig "https://127.0.0.1:$api_port" "$token"
  wait_until "kube-apiserver /readyz" apiserver_ready

  start_process kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$kubeconfig" --authentication-kubeconfig="$kubeconfig" \
    --authorization-kubeconfig="$kubeconfig" --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" --leader-elect=false --use-service-account-credentials=false \
    --service-account-private-key-file="$state/pki/sa.key" \
    --root-ca-file="$state/pki/ca.crt" --cluster-name=renku-ssh-local \
    --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller' \
    --profiling=false --v=1
  wait_until "the default ServiceAccount (kube-controller-manager)" default_service_account_exists

  log "ready in $((SECONDS - started))s: export KUBECONFIG=$kubeconfig"
}

down() {
  local quiet=${1:-}
  local stopped=0
  for name in kube-controller-manager kube-apiserver etcd; do
    local pid_file="$state/$name.pid"
    if pid_alive "$pid_file"; then
      local pid
      pid=$(cat "$pid_file")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      stopped=1
    fi
  done
  rm -rf "$state"
  [[ -n $quiet ]] || { ((stopped)) && log "stopped" || log "not running"; }
}

case "${1:-}" in
up) up ;;
down) down ;;
status)
  if is_ready; then
    echo "running: KUBECONFIG=$kubeconfig"
  else
    echo "not running (start it with: make cluster-up)"
    exit 1
  fi
  ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
