#!/usr/bin/env bash
# Runs a real Keycloak on loopback for tests and local development.
#
#   scripts/keycloak.sh fetch    download, unpack and pre-build (augment) the distribution
#   scripts/keycloak.sh start    start it with the Renku test realm, wait until it is ready
#   scripts/keycloak.sh stop     stop it and every process it started
#   scripts/keycloak.sh status   print whether it is running and where
#
# The distribution comes from Maven Central (org.keycloak:keycloak-quarkus-dist) and is cached,
# already augmented, under ${RENKU_SSH_CACHE:-$HOME/.cache/renku-ssh}/keycloak-<version>/.
# Logs, the pid and the realm import folder live in ${RENKU_SSH_RUN_DIR:-<repo>/.run}/keycloak/.
# Once ready, `start` writes <run>/keycloak/env (shell syntax) with the URLs, client ids, client
# secret and test users that tests read.
#
# Settings (environment):
#   KEYCLOAK_ADMIN_USERNAME, KEYCLOAK_ADMIN_PASSWORD  bootstrap admin of the master realm
#                                                     (default: admin / a random password)
#   KEYCLOAK_START_TIMEOUT                            seconds to wait for readiness (default 180)
#   KEYCLOAK_HEAP                                     JVM heap flags (default -Xms64m -Xmx450m)
#   KEYCLOAK_JAVA_HOME                                JDK to run Keycloak with
#                                                     (default /usr/lib/jvm/temurin-25-jdk-amd64)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/versions.env
source "$root/scripts/versions.env"

java_home=${KEYCLOAK_JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64}
cache=${RENKU_SSH_CACHE:-$HOME/.cache/renku-ssh}/keycloak-$KEYCLOAK_VERSION
kc_home=$cache/keycloak-$KEYCLOAK_VERSION
run=${RENKU_SSH_RUN_DIR:-$root/.run}/keycloak
realm_file=$root/tests/keycloak/realm-renku.json
realm=Renku
maven_url=https://repo.maven.apache.org/maven2/org/keycloak/keycloak-quarkus-dist
zip_url=$maven_url/$KEYCLOAK_VERSION/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip

# Build-time options. `fetch` augments the distribution with exactly these, and `start` passes
# the same ones, so Keycloak finds nothing to rebuild and starts without re-augmenting.
build_options=(--db=dev-mem --cache=local --health-enabled=true)

# Test identities imported into the realm. realm-renku.json refers to them as ${...}
# placeholders, which Keycloak resolves from its environment while importing.
export RENKU_CLI_CLIENT_ID=renku-cli
export RENKU_OPERATOR_CLIENT_ID=renku-ssh-operator
export RENKU_OPERATOR_CLIENT_SECRET=${RENKU_OPERATOR_CLIENT_SECRET:-operator-test-secret}
export RENKU_ALICE_PASSWORD=${RENKU_ALICE_PASSWORD:-alice-test-password}
export RENKU_BOB_PASSWORD=${RENKU_BOB_PASSWORD:-bob-test-password}

log() { echo "keycloak: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

now_ms() { date +%s%3N; }

elapsed() { # elapsed START_MS -> seconds with one decimal
  local ms=$(($(now_ms) - $1))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

require_java() {
  [[ -x $java_home/bin/java ]] ||
    die "Java 25 not found at $java_home ($java_home/bin/java is missing); Keycloak $KEYCLOAK_VERSION needs it. Install a Temurin 25 JDK there or set KEYCLOAK_JAVA_HOME to another JDK 25."
  export JAVA_HOME=$java_home
}

augmented_marker() { echo "$cache/augmented-dev-$(echo "${build_options[*]}" | sha256sum | cut -c1-16)"; }

download() {
  local zip=$cache/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip started expected actual progress
  started=$(now_ms)
  log "downloading $zip_url"
  progress=(-sS)
  [[ -t 2 ]] && progress=(--progress-bar)
  curl -fL --retry 3 "${progress[@]}" -o "$zip.part" "$zip_url" ||
    die "download of $zip_url failed; check that Maven Central serves version $KEYCLOAK_VERSION (scripts/versions.env)"
  expected=$(curl -fsSL --retry 3 "$zip_url.sha1" | cut -c1-40)
  actual=$(sha1sum "$zip.part" | cut -d' ' -f1)
  [[ $expected == "$actual" ]] ||
    die "checksum mismatch for $zip_url: expected sha1 $expected, got $actual"
  log "downloaded $(du -m "$zip.part" | cut -f1) MB in $(elapsed "$started") s"

  started=$(now_ms)
  rm -rf "$cache/unpack"
  unzip -q "$zip.part" -d "$cache/unpack"
  rm -rf "$kc_home"
  mv "$cache/unpack/keycloak-$KEYCLOAK_VERSION" "$kc_home"
  rm -rf "$cache/unpack" "$zip.part"
  log "unpacked in $(elapsed "$started") s"
}

augment() {
  # `kc.sh build` rejects the dev profile, and `start-dev` re-augments whenever the persisted
  # build differs from its own. So a throwaway `start-dev` run does the augmentation: it persists
  # the build, relaunches the JVM and prints "Running the server in development mode", at which
  # point it is stopped again.
  local started port log=$cache/augment.log pid waited
  started=$(now_ms)
  port=$(free_port)

  log "augmenting (kc.sh start-dev ${build_options[*]}); this takes about a minute"
  rm -f "$cache"/augmented-*
  JAVA_OPTS_KC_HEAP="-Xmx450m" setsid "$kc_home/bin/kc.sh" start-dev "${build_options[@]}" \
    --http-host=127.0.0.1 --http-port="$port" --http-management-port="$(free_port)" \
    "-Dquarkus.transaction-manager.object-store.directory=$cache/augment-transaction-logs" \
    >"$log" 2>&1 </dev/null 9>&- &
  pid=$!

  waited=0
  until grep -qs 'Running the server in development mode' "$log"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2
      die "augmentation failed; see $log"
    fi
    if ((waited >= 600)); then
      stop_group "$pid"
      die "augmentation did not finish within 600 s; see $log"
    fi
    sleep 1
    waited=$((waited + 1))
  done

  stop_group "$pid"
  rm -rf "$cache/augment-transaction-logs"
  touch "$(augmented_marker)"
  log "augmented in $(elapsed "$started") s"
}

cmd_fetch() {
  require_java
  mkdir -p "$cache"
  # One fetch at a time: a second caller waits here and then finds the cache warm.
  exec 9>"$cache/.lock"
  flock 9
  if [[ ! -x $kc_home/bin/kc.sh ]]; then
    download
  fi
  if [[ ! -e $(augmented_marker) ]]; then
    augment
  fi
  exec 9>&-
  echo "$kc_home"
}

running_pid() { # prints the pid of a live Keycloak started by this script, if any
  local pid
  [[ -f $run/pid ]] || return 1
  pid=$(cat "$run/pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # The pid file may outlive the process, and the pid may since belong to another program.
  grep -qa keycloak "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

free_port() { # prints a TCP port in 20000-59999 that nothing listens on
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! ss -Htln "sport = :$port" | grep -q .; then
      echo "$port"
      return 0
    fi
  done
  die "found no free TCP port on 127.0.0.1 after 50 tries"
}

write_env() {
  local url=$1 management_url=$2
  umask 077
  cat >"$run/env.tmp" <<EOF
# Written by scripts/keycloak.sh start and removed by scripts/keycloak.sh stop.
KEYCLOAK_URL=$url
KEYCLOAK_MANAGEMENT_URL=$management_url
KEYCLOAK_REALM=$realm
KEYCLOAK_ISSUER=$url/realms/$realm
KEYCLOAK_ADMIN_USERNAME=$KC_BOOTSTRAP_ADMIN_USERNAME
KEYCLOAK_ADMIN_PASSWORD=$KC_BOOTSTRAP_ADMIN_PASSWORD
KEYCLOAK_CLI_CLIENT_ID=$RENKU_CLI_CLIENT_ID
KEYCLOAK_OPERATOR_CLIENT_ID=$RENKU_OPERATOR_CLIENT_ID
KEYCLOAK_OPERATOR_CLIENT_SECRET=$RENKU_OPERATOR_CLIENT_SECRET
KEYCLOAK_USER_ALICE=alice
KEYCLOAK_USER_ALICE_PASSWORD=$RENKU_ALICE_PASSWORD
KEYCLOAK_USER_BOB=bob
KEYCLOAK_USER_BOB_PASSWORD=$RENKU_BOB_PASSWORD
KEYCLOAK_PID=$(cat "$run/pid")
EOF
  mv "$run/env.tmp" "$run/env"
}

cmd_start() {
  local pid port management_port url started timeout waited
  if pid=$(running_pid); then
    log "already running (pid $pid); settings in $run/env"
    return 0
  fi
  [[ -f $realm_file ]] || die "realm file $realm_file is missing"
  started=$(now_ms)
  cmd_fetch >/dev/null

  mkdir -p "$run/import"
  rm -f "$run/env" "$run/pid"
  cp "$realm_file" "$run/import/"
  port=$(free_port)
  management_port=$(free_port)
  [[ $management_port != "$port" ]] || management_port=$(free_port)
  url=http://127.0.0.1:$port

  export KC_BOOTSTRAP_ADMIN_USERNAME=${KEYCLOAK_ADMIN_USERNAME:-admin}
  export KC_BOOTSTRAP_ADMIN_PASSWORD=${KEYCLOAK_ADMIN_PASSWORD:-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')}
  export JAVA_OPTS_KC_HEAP=${KEYCLOAK_HEAP:--Xms64m -Xmx450m}

  log "starting on $url (management port $management_port), log in $run/keycloak.log"
  # setsid gives Keycloak its own process group, so `stop` can end kc.sh and the JVM together.
  # --import-realm reads <kc_home>/data/import when that folder exists and otherwise the folder
  # named by the keycloak.migration.dir system property (Keycloak 26.7.3), which keeps the realm
  # file out of the shared cache. The transaction log also goes to the run directory.
  setsid "$kc_home/bin/kc.sh" start-dev "${build_options[@]}" \
    --http-host=127.0.0.1 --http-port="$port" --http-management-port="$management_port" \
    --hostname-strict=false --import-realm \
    "-Dkeycloak.migration.dir=$run/import" \
    "-Dquarkus.transaction-manager.object-store.directory=$run/transaction-logs" \
    >"$run/keycloak.log" 2>&1 </dev/null 9>&- 8>&- &
  pid=$!
  echo "$pid" >"$run/pid"

  timeout=${KEYCLOAK_START_TIMEOUT:-180}
  waited=0
  until curl -fsS -o /dev/null "$url/realms/$realm/.well-known/openid-configuration" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$run/keycloak.log" >&2
      rm -f "$run/pid"
      die "Keycloak exited during startup; see $run/keycloak.log"
    fi
    if ((waited >= timeout)); then
      tail -n 30 "$run/keycloak.log" >&2
      cmd_stop
      die "realm $realm not ready on $url after ${timeout} s; see $run/keycloak.log (raise KEYCLOAK_START_TIMEOUT on a slow machine)"
    fi
    if ((waited % 10 == 0)); then
      log "waiting for $url/realms/$realm ... ${waited} s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  write_env "$url" "http://127.0.0.1:$management_port"
  log "ready in $(elapsed "$started") s (pid $pid, RSS $(rss_mb "$pid") MB); settings in $run/env"
}

rss_mb() { # total resident memory of a process group, in MB
  ps -o rss= -g "$1" 2>/dev/null | awk '{sum += $1} END {printf "%d", sum / 1024}'
}

stop_group() { # stop_group PGID: SIGTERM the process group, SIGKILL it after 30 s
  local group=$1
  kill -TERM -- "-$group" 2>/dev/null || true
  for _ in $(seq 1 60); do
    pgrep -g "$group" >/dev/null || return 0
    sleep 0.5
  done
  log "process group $group still running after 30 s; sending SIGKILL"
  kill -KILL -- "-$group" 2>/dev/null || true
  for _ in $(seq 1 10); do
    pgrep -g "$group" >/dev/null || return 0
    sleep 0.5
  done
  die "process group $group survived SIGKILL; check it with: ps -g $group"
}

cmd_stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$run/pid" "$run/env"
    log "not running"
    return 0
  fi
  log "stopping pid $pid"
  stop_group "$pid"
  rm -f "$run/pid" "$run/env"
  log "stopped"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    # shellcheck disable=SC1091
    url=$(source "$run/env" 2>/dev/null && echo "${KEYCLOAK_URL:-}")
    echo "running: pid $pid, ${url:-not ready yet}, RSS $(rss_mb "$pid") MB, settings in $run/env"
  else
    echo "not running"
    return 3
  fi
}

lock_run_dir() { # one start or stop at a time per run directory
  mkdir -p "$run"
  exec 8>"$run/.lock"
  flock 8
}

case ${1:-} in
  fetch) cmd_fetch ;;
  start)
    lock_run_dir
    cmd_start
    ;;
  stop)
    lock_run_dir
    cmd_stop
    ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 fetch|start|stop|status" >&2
    exit 2
    ;;
esac
