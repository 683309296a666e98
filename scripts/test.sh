#!/usr/bin/env bash
# Runs every LimeDB test: unit, property, doc and process-level tests of the whole workspace.
#
# On a fresh Debian machine (as root) it first installs whatever the tests need and is missing:
# the C compiler that ships with Rust, redis-tools (redis-cli, for the scripted session in
# tests/redis_cli.rs), iproute2 (`ip`, `bridge`: tests/partitions.rs makes network namespaces,
# which needs root; elsewhere those tests say so and skip), etcd-server (`limedb bench --target
# etcd` is tested against a real etcd), and PostgreSQL (Debian's `postgresql` package), which it
# starts and in which it creates a role for the tests. The postgres tests also start private
# PostgreSQL servers of their own (initdb + pg_ctl from the same package) to stop and restart.
# Packages are installed without starting their services (PostgreSQL is started below, etcd by
# the tests themselves).
#
# To use an existing PostgreSQL server instead, export LIMEDB_TEST_PG_URL first, e.g.
#   LIMEDB_TEST_PG_URL=postgres://me:secret@127.0.0.1:5432/ scripts/test.sh
# (the role must be allowed to create databases; each test creates its own and drops it). The
# PostgreSQL binaries must still be installed for the private servers (LIMEDB_PG_BINDIR names
# their directory if they are not in /usr/lib/postgresql/*/bin).
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
need runuser || apt_packages+=(util-linux)
pg_installed() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "${LIMEDB_PG_BINDIR:-}" ]; }
pg_installed || apt_packages+=(postgresql)
need redis-cli || apt_packages+=(redis-tools)
need ip || apt_packages+=(iproute2)
need bridge || apt_packages+=(iproute2)
need etcd || apt_packages+=(etcd-server)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "installing: ${apt_packages[*]}"
    apt-get update -qq
    # No service starts during the install (a container often has no init to ask anyway).
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}"
    if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
  else
    echo "error: missing ${apt_packages[*]}; install them (as root: apt-get install ${apt_packages[*]})" >&2
    exit 1
  fi
fi

# PostgreSQL for the postgres backend's tests: Debian's cluster, started if it is not running,
# with a role that may create databases.
if [ -z "${LIMEDB_TEST_PG_URL:-}" ]; then
  if [ "$(id -u)" != 0 ] || ! need pg_lsclusters; then
    echo "error: the postgres tests need a PostgreSQL server: run this as root on Debian (it installs and starts one) or export LIMEDB_TEST_PG_URL=postgres://USER:PASSWORD@HOST:PORT/ (see README)" >&2
    exit 1
  fi
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$version main"; then
    pg_createcluster "$version" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    echo "starting PostgreSQL $version (cluster main)"
    pg_ctlcluster "$version" main start
  fi
  port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
  runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'limedb_test') THEN
    CREATE ROLE limedb_test LOGIN CREATEDB PASSWORD 'limedb_test';
  END IF;
END $$;
SQL
  export LIMEDB_TEST_PG_URL="postgres://limedb_test:limedb_test@127.0.0.1:${port}/"
fi

# Process tests start real limedb processes on 127.0.0.1 with ephemeral ports.
cargo test --workspace --locked "$@"
