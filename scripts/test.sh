#!/usr/bin/env bash
# Runs every LimeDB test: unit, property, doc and process-level tests of the whole workspace.
#
# On a fresh Debian machine (as root) it first installs whatever the tests need and is missing:
# the C compiler that ships with Rust, and redis-tools (redis-cli, for the scripted session in
# tests/redis_cli.rs). When a test needs another outside server (PostgreSQL) its
# install-and-start step goes here, so that this one command keeps working on a brand-new
# machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "error: cargo is not installed; install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi

apt_packages=()
need cc || apt_packages+=(gcc libc6-dev)
need kill || apt_packages+=(procps)
need redis-cli || apt_packages+=(redis-tools)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "installing: ${apt_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}"
  else
    echo "error: missing ${apt_packages[*]}; install them (as root: apt-get install ${apt_packages[*]})" >&2
    exit 1
  fi
fi

# Process tests start real limedb processes on 127.0.0.1 with ephemeral ports; no other setup.
cargo test --workspace --locked "$@"
