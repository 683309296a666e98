#!/usr/bin/env bash
# bench/replication.sh — replicated shards: write and linearizable read throughput and p99 of
# a 3-shard cluster whose shards are Raft groups of 3 replicas, against the same cluster with
# single-copy shards at the same durability on one machine (--wal-sync always) and against
# etcd 3.4 (3 members, fsync on), all driven by `limedb bench` (etcd through its HTTP/JSON
# gateway: --target etcd); then failover and catch-up of the replicated cluster.
#
# Starts everything itself on 127.0.0.1 with ephemeral ports:
#   replicated  3 shards x 3 replicas (`limedb shard --replica R --peers ...`, each process
#               --worker-threads 1) + a coordinator
#   single      3 shards `--wal-sync always` (--worker-threads 1) + a coordinator
#   etcd        3 etcd members (Debian's etcd-server; installed with apt when missing and root)
# For each of R runs it benches replicated, single, etcd in turn, a SET round then a GET round
# (GETs after a prefill, so they hit; LimeDB's and etcd's reads are both linearizable), and
# reports medians. Then:
#   failover    K times: SIGKILL of shard 1's leader while `limedb bench` runs 50/50 GET/SET
#               through the coordinator; the time until a write to shard 1 through the
#               coordinator succeeds again; the killed replica is restarted and caught up before
#               the next kill
#   catch-up    a fresh group loaded with M MiB (1000-byte values); a follower is killed, its
#               data directory wiped, and it is restarted: the leader's snapshot size over the
#               time until it has caught up, in MiB/s
# Prints a table and, as the very last line of stdout, one line of JSON with every figure,
# ratio and whether each target was met. Progress goes to stderr.
#
# Usage: bench/replication.sh [--requests N] [--connections C] [--runs R] [--keyspace K]
#                             [--value-size B] [--kills K] [--catchup-mib M]
#                             [--skip etcd,failover,catchup]
# Defaults: 30000 requests per cell, 64 connections, 3 runs, keyspace 20000, 100-byte values,
# 20 kills, 1024 MiB.
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
if [[ " $* " != *"etcd"* ]] && ! command -v etcd >/dev/null; then
    if [[ "$(id -u)" = 0 ]] && command -v apt-get >/dev/null; then
        log "installing etcd-server (Debian's etcd 3.4)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
    else
        die "etcd is not installed: apt-get install etcd-server (or pass --skip etcd)"
    fi
fi

limedb_binary
LIMEDB="$LIMEDB" exec python3 "$ROOT/bench/replication.py" "$@"
