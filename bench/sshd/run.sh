#!/usr/bin/env bash
# Benchmarks renku-sshd against Debian's OpenSSH sshd on loopback:
#   - resident memory (VmRSS) of renku-sshd idle, and with one idle authenticated connection;
#   - size of the static release binary;
#   - scp upload and download throughput of a 1 GiB file, same cipher for both servers.
# Both servers run in the foreground on 127.0.0.1 with their own keys and config under a
# temporary directory; nothing is installed as a service. Every step has a time limit.
#
# Usage: bench/sshd/run.sh            (from the repository root)
# Environment: BENCH_SIZE_MIB (default 1024), BENCH_CIPHER (default aes128-gcm@openssh.com),
#              CARGO_TARGET_DIR (default target).
set -euo pipefail

size_mib=${BENCH_SIZE_MIB:-1024}
cipher=${BENCH_CIPHER:-aes128-gcm@openssh.com}
target_dir=${CARGO_TARGET_DIR:-target}
triple=x86_64-unknown-linux-gnu
binary="$target_dir/$triple/release/renku-sshd"

for tool in ssh scp ssh-keygen /usr/sbin/sshd; do
  command -v "$tool" >/dev/null || {
    echo "missing $tool: run scripts/install-deps.sh (openssh-client, openssh-server)" >&2
    exit 1
  }
done

echo "building the static release binary" >&2
RUSTFLAGS="-C target-feature=+crt-static" timeout 1200 \
  cargo build --quiet --release --target "$triple" -p renku-sshd

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for a listener on port $1" >&2
  return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
cp "$work/user_key.pub" "$work/authorized_keys"

renku_port=$(free_port)
"$binary" --listen "127.0.0.1:$renku_port" --host-key "$work/host_key" \
  --authorized-keys "$work/authorized_keys" --log-level warn 2>"$work/renku.log" &
renku_pid=$!
pids+=("$renku_pid")
wait_port "$renku_port"

mkdir -p /run/sshd
openssh_port=$(free_port)
cat >"$work/sshd_config" <<EOF
Port $openssh_port
ListenAddress 127.0.0.1
HostKey $work/host_key
PidFile $work/sshd.pid
AuthorizedKeysFile $work/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/openssh.log" &
pids+=("$!")
wait_port "$openssh_port"

echo "[127.0.0.1]:$renku_port $(cut -d' ' -f1,2 "$work/host_key.pub")" >"$work/known_hosts"
echo "[127.0.0.1]:$openssh_port $(cut -d' ' -f1,2 "$work/host_key.pub")" >>"$work/known_hosts"
client_options=(-F /dev/null -o "UserKnownHostsFile=$work/known_hosts" -o StrictHostKeyChecking=yes
  -o IdentitiesOnly=yes -o "IdentityFile=$work/user_key" -o BatchMode=yes -o Compression=no
  -c "$cipher")

sleep 1
idle_rss=$(rss_kib "$renku_pid")
timeout 60 ssh "${client_options[@]}" -p "$renku_port" -N 127.0.0.1 &
idle_client=$!
pids+=("$idle_client")
sleep 3
connected_rss=$(rss_kib "$renku_pid")
kill "$idle_client"

echo "creating a ${size_mib} MiB test file" >&2
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/data.bin"
mkdir -p "$work/received"

# Prints the seconds one scp transfer takes.
time_scp() {
  local start end
  start=$(date +%s.%N)
  timeout 600 scp -q "${client_options[@]}" "$@"
  end=$(date +%s.%N)
  awk -v start="$start" -v end="$end" 'BEGIN { printf "%.2f", end - start }'
}
throughput() { awk -v size="$size_mib" -v seconds="$1" 'BEGIN { printf "%.0f", size / seconds }'; }

declare -A seconds
for server in renku openssh; do
  port_var="${server}_port"
  port=${!port_var}
  seconds[$server-upload]=$(time_scp -P "$port" "$work/data.bin" "127.0.0.1:$work/received/$server.bin")
  seconds[$server-download]=$(time_scp -P "$port" "127.0.0.1:$work/received/$server.bin" "$work/received/$server.back")
  cmp -s "$work/data.bin" "$work/received/$server.back" || {
    echo "$server: downloaded file differs" >&2
    exit 1
  }
  rm -f "$work/received/$server.bin" "$work/received/$server.back"
done

cat <<EOF
machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)
binary size (static release): $(stat -c %s "$binary") bytes
renku-sshd RSS idle, no connection: ${idle_rss} KiB
renku-sshd RSS with one idle connection: ${connected_rss} KiB
scp ${size_mib} MiB, cipher $cipher, loopback:
EOF
for direction in upload download; do
  renku=${seconds[renku-$direction]}
  openssh=${seconds[openssh-$direction]}
  printf '  %-8s renku-sshd %6.2f s (%s MiB/s)  OpenSSH sshd %6.2f s (%s MiB/s)  ratio renku/openssh %s\n' \
    "$direction" "$renku" "$(throughput "$renku")" "$openssh" "$(throughput "$openssh")" \
    "$(awk -v a="$openssh" -v b="$renku" 'BEGIN { printf "%.2f", a / b }')"
done
