#!/usr/bin/env bash
# bench/rebalance.sh — adding a shard online: 3 → 4 shards holding K keys (100-byte values)
# while `limedb bench` runs 50/50 GET/SET at C connections through a coordinator, against
# Redis 7.0 Cluster (Debian's redis-server) growing from 3 masters to 4 with
# `redis-cli --cluster rebalance --cluster-use-empty-masters`, in the same run.
#
# Starts everything itself on 127.0.0.1 with ephemeral ports:
#   limedb  a map group of 3 (`limedb meta`), 4 shard groups of R replicas each
#           (`limedb shard --peers ...`, --worker-threads 1) and a coordinator with --meta;
#           shards 1-3 form the cluster, shard 4 is added with POST /api/v1/admin/shards
#   redis   4 `redis-server --cluster-enabled yes` (appendonly everysec, no replicas); 3 form
#           the cluster (`redis-cli --cluster create`), the 4th joins (`--cluster add-node`)
#           and gets its share (`--cluster rebalance --cluster-use-empty-masters`)
# Both are loaded with the same K keys `key:000000000000`... over `redis-cli --pipe` (Redis:
# each key sent to the master of its slot, so keys spread over all 16384 slots).
# LimeDB, per run: `limedb bench` 50/50 for N requests before the move (throughput, p99); then
# the same load runs through the whole move (started before it, stopped by SIGTERM when the
# move is done) and reports throughput, p99 and errors during it. Figures: keys moved (held by
# the new shard afterwards), seconds from the request to the end of the move, keys/s, MiB/s
# (keys and values), the longest cut-over (a transfer's fence to the map recording the
# hand-over, from the move driver). Redis, per run: keys the new master holds and the
# rebalance's wall time, with no client load.
# Medians over R runs. Prints a table and, as the very last line of stdout, one line of JSON
# with every figure, ratio and whether each target was met. Progress goes to stderr.
#
# Usage: bench/rebalance.sh [--keys K] [--connections C] [--runs R] [--replicas N]
#                           [--before-requests N] [--value-size B] [--skip redis] [--no-load]
# Defaults: 2000000 keys, 64 connections, 1 run, 1 replica per shard group, 200000 requests
# before the move, 100-byte values.
# Environment: CARGO_TARGET_DIR is honoured; LIMEDB_BIN=path uses that limedb binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_SCRIPT="${BASH_SOURCE[0]}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
    esac
done
command -v python3 >/dev/null || die "python3 is required"
command -v redis-cli >/dev/null || die "redis-cli is required (apt-get install redis-tools)"
if [[ " $* " != *"redis"* ]] && ! command -v redis-server >/dev/null; then
    if [[ "$(id -u)" = 0 ]] && command -v apt-get >/dev/null; then
        log "installing redis-server (Debian's Redis 7.0)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
    else
        die "redis-server is not installed: apt-get install redis-server (or pass --skip redis)"
    fi
fi

limedb_binary
LIMEDB="$LIMEDB" exec python3 "$ROOT/bench/rebalance.py" "$@"
