#!/usr/bin/env bash
# Installs the system packages that builds and tests need on a fresh Debian machine. Safe to run
# again: packages already present are skipped.
set -euo pipefail

packages=(
  curl
  iproute2
  openssh-client
  openssh-server
  openssl
  procps
  python3
  unzip
  util-linux
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
