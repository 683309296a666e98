#!/usr/bin/env bash
# bench/postgres.sh — SET and GET throughput and p99 of a 3-shard LimeDB cluster
# whose shards keep their data in PostgreSQL, against the same cluster on LSM
# shards, at the same durability: every acknowledged write is on disk
# (PostgreSQL synchronous_commit = on, LSM --wal-sync always).
#
# Starts everything itself on 127.0.0.1 with ephemeral ports:
#   postgres   a private PostgreSQL server (initdb + pg_ctl in a temp dir, as
#              the postgres OS user when run as root), stock settings apart from
#              the port; or the server in LIMEDB_BENCH_PG_URL if set
#   pg         3 shards `--storage postgres` + a coordinator
#   lsm        3 shards `--storage lsm --wal-sync always` + a coordinator
# Each shard runs with --worker-threads 1 (eight processes and the server share
# the machine). For each of R runs it benches lsm then pg with `limedb bench`
# through the coordinator, a SET round then a GET round (GETs after a prefill,
# so they hit). Reports medians, the pg/lsm ratios and, as the very last line of
# stdout, one line of JSON. Progress goes to stderr.
#
# Usage: bench/postgres.sh [--requests N] [--connections C] [--runs R]
#                          [--keyspace K] [--value-size B] [--pg-pool-size P]
# (--pg-pool-size is passed to each postgres shard; default: the shard's own.)
# Environment: CARGO_TARGET_DIR is honoured; LIMEDB_BIN=path uses that limedb
# binary instead of building one; LIMEDB_BENCH_PG_URL=postgres://... uses an
# existing server (its role must create databases; databases
# limedb_bench_shard_{1,2,3} are dropped and recreated); LIMEDB_PG_BINDIR names
# the PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_SCRIPT="${BASH_SOURCE[0]}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

REQUESTS=50000
CONNECTIONS=64
RUNS=3
KEYSPACE=20000
VALUE_SIZE=100
PG_POOL_ARGS=()
READY_TIMEOUT_SECS="${READY_TIMEOUT_SECS:-60}"


while [[ $# -gt 0 ]]; do
    case "$1" in
        --requests)    need_value "$@"; need_uint "$1" "$2"; REQUESTS=$2; shift 2 ;;
        --connections) need_value "$@"; need_uint "$1" "$2"; CONNECTIONS=$2; shift 2 ;;
        --runs)        need_value "$@"; need_uint "$1" "$2"; RUNS=$2; shift 2 ;;
        --keyspace)    need_value "$@"; need_uint "$1" "$2"; KEYSPACE=$2; shift 2 ;;
        --value-size)  need_value "$@"; [[ "$2" =~ ^[0-9]+$ ]] || die "--value-size must be an integer"; VALUE_SIZE=$2; shift 2 ;;
        --pg-pool-size) need_value "$@"; need_uint "$1" "$2"; PG_POOL_ARGS=(--pg-pool-size "$2"); shift 2 ;;
        -h|--help)     usage; exit 0 ;;
        *)             die "unknown argument '$1' (see --help)" ;;
    esac
done
command -v python3 >/dev/null || die "python3 is required"
command -v curl >/dev/null || die "curl is required"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/limedb-pg-bench.XXXXXX")"
chmod 755 "$WORK"
PIDS=()
PG_DATA=""
AS_PG=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_children 10
    if [[ -n "$PG_DATA" ]]; then
        "${AS_PG[@]+"${AS_PG[@]}"}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ------------------------------------------------------------------------
limedb_binary

# --- PostgreSQL -------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -n "${LIMEDB_BENCH_PG_URL:-}" ]]; then
    PG_URL="$LIMEDB_BENCH_PG_URL"
    PG_WHERE="the server in LIMEDB_BENCH_PG_URL"
else
    PG_BIN="${LIMEDB_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
    [[ -x "$PG_BIN/initdb" ]] || die "no PostgreSQL binaries (install Debian's postgresql package, or set LIMEDB_PG_BINDIR or LIMEDB_BENCH_PG_URL)"
    if [[ "$(id -u)" == 0 ]]; then
        AS_PG=(runuser -u postgres --)
        mkdir -p "$WORK/pg"
        chown postgres:postgres "$WORK/pg"
    else
        mkdir -p "$WORK/pg"
    fi
    PG_DATA="$WORK/pg/data"
    PG_PORT="$(free_port)"
    log "initdb of a private PostgreSQL ($PG_BIN) on port $PG_PORT"
    "${AS_PG[@]+"${AS_PG[@]}"}" "$PG_BIN/initdb" -D "$PG_DATA" -U limedb --auth=trust -E UTF8 >"$WORK/initdb.log" 2>&1 ||
        { tail -20 "$WORK/initdb.log" >&2; die "initdb failed"; }
    "${AS_PG[@]+"${AS_PG[@]}"}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/server.log" -w -t 60 \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK/pg -c max_connections=200" start >&2 ||
        die "PostgreSQL did not start"
    PG_URL="postgres://limedb@127.0.0.1:$PG_PORT/"
    PG_WHERE="a private PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
fi

# The settings that decide durability and speed, as the server reports them.
PG_SETTINGS=""
PSQL="$(command -v psql || echo "${PG_BIN:-/nonexistent}/psql")"
ADMIN_URL="$PG_URL"
if [[ "$ADMIN_URL" == */ ]]; then ADMIN_URL="${ADMIN_URL}postgres"; fi
if [[ -x "$PSQL" ]]; then
    PG_SETTINGS="$("$PSQL" "$ADMIN_URL" -Atc "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'shared_buffers', 'wal_sync_method', 'server_version')" 2>/dev/null || true)"
    for id in 1 2 3; do
        "$PSQL" "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS limedb_bench_shard_$id" >/dev/null 2>&1 || true
    done
    [[ "$PG_SETTINGS" == *"synchronous_commit=on"* ]] || die "PostgreSQL reports '$PG_SETTINGS': the comparison needs synchronous_commit=on"
fi
log "PostgreSQL: $PG_WHERE ($PG_SETTINGS)"

# --- LimeDB clusters ----------------------------------------------------------------
wait_healthy() { # URL
    local url=$1 deadline=$((SECONDS + READY_TIMEOUT_SECS))
    while ((SECONDS < deadline)); do
        if curl -sS --max-time 2 "$url/api/v1/health" 2>/dev/null |
            python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin).get("status") == "healthy" else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    die "coordinator at $url not healthy within ${READY_TIMEOUT_SECS} s"
}

declare -A URL
start_cluster() { # NAME SHARD-ARGS...
    local name=$1
    shift
    local urls=() id
    for id in 1 2 3; do
        mkdir -p "$WORK/data-$name-$id"
        start "$name-shard$id" "$LIMEDB" --worker-threads 1 shard --id "$id" --host 127.0.0.1 \
            --port 0 --internal-port 0 --data-dir "$WORK/data-$name-$id" "$@"
        wait_ready "$name-shard$id" "$STARTED_PID"
        urls+=("http://$(field "$READY_LINE" http)")
    done
    start "$name-coordinator" "$LIMEDB" coordinator --host 127.0.0.1 --port 0 \
        --shards "$(IFS=,; echo "${urls[*]}")"
    wait_ready "$name-coordinator" "$STARTED_PID"
    URL[$name]="http://$(field "$READY_LINE" http)"
    wait_healthy "${URL[$name]}"
    log "$name cluster ready at ${URL[$name]#http://}"
}

start_cluster lsm --storage lsm --wal-sync always
start_cluster pg --storage postgres --pg-url "$PG_URL" --pg-database 'limedb_bench_shard_{id}' \
    "${PG_POOL_ARGS[@]+"${PG_POOL_ARGS[@]}"}"

# --- rounds ---------------------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

bench_cell() { # TARGET WORKLOAD RUN
    local target=$1 workload=$2 run=$3
    local out="$WORK/bench-$target-$workload-$run.out"
    "$LIMEDB" bench --url "${URL[$target]}" --connections "$CONNECTIONS" --requests "$REQUESTS" \
        --workload "$workload" --keyspace "$KEYSPACE" --value-size "$VALUE_SIZE" --json \
        >"$out" 2>"$out.err" &
    BENCH_PID=$!
    local status=0
    wait "$BENCH_PID" || status=$?
    BENCH_PID=""
    if ((status != 0)); then
        tail -n 20 "$out.err" >&2 || true
        die "bench of $target ($workload, run $run) failed"
    fi
    python3 - "$out" "$target" "$workload" "$run" >>"$RESULTS" <<'PY' || die "unreadable bench output for $target $workload"
import json, sys
path, target, workload, run = sys.argv[1:5]
lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip().startswith("{")]
report = json.loads(lines[-1])
cell = {"target": target, "op": workload, "run": int(run), "ops": report["throughput_ops"],
        "p99_us": report["latency_us"]["p99"], "errors": report["errors"],
        "not_found": report["not_found"]}
print(json.dumps(cell))
msg = f"run {run} {target:<4} {workload}: {cell['ops']:>10,.0f} ops/s  p99 {cell['p99_us']:>9,.1f} us"
if cell["errors"]:
    msg += f"  ({cell['errors']} errors)"
if cell["not_found"]:
    msg += f"  ({cell['not_found']} not found)"
print("[postgres.sh] " + msg, file=sys.stderr)
PY
}

log "benchmarking lsm and pg: $RUNS runs, $REQUESTS requests, $CONNECTIONS connections, keyspace $KEYSPACE, values of $VALUE_SIZE B"
for ((run = 1; run <= RUNS; run++)); do
    for target in lsm pg; do
        bench_cell "$target" set "$run"
        bench_cell "$target" get "$run"
    done
done

# --- summary ----------------------------------------------------------------------------
python3 - "$RESULTS" "$CONNECTIONS" "$REQUESTS" "$RUNS" "$KEYSPACE" "$VALUE_SIZE" "$PG_SETTINGS" <<'PY'
import json, statistics, sys

path = sys.argv[1]
connections, requests, runs, keyspace, value_size = map(int, sys.argv[2:7])
pg_settings = sys.argv[7]
cells = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]

def median(target, op, key):
    values = [c[key] for c in cells if c["target"] == target and c["op"] == op]
    return round(statistics.median(values), 1) if values else None

summary = {t: {f"{op}_{k}": median(t, op, key) for op in ("set", "get")
               for k, key in (("ops", "ops"), ("p99_us", "p99_us"))} for t in ("lsm", "pg")}

def div(a, b):
    return round(a / b, 3) if a is not None and b else None

ratio = {
    "set_ops": div(summary["pg"]["set_ops"], summary["lsm"]["set_ops"]),
    "get_ops": div(summary["pg"]["get_ops"], summary["lsm"]["get_ops"]),
    "set_p99": div(summary["pg"]["set_p99_us"], summary["lsm"]["set_p99_us"]),
    "get_p99": div(summary["pg"]["get_p99_us"], summary["lsm"]["get_p99_us"]),
}
errors = sum(c["errors"] for c in cells)

print()
print(f"3-shard cluster through the coordinator: {connections} connections, {requests} requests per cell, "
      f"keyspace {keyspace}, {value_size}-byte values, median of {runs} runs")
print(f"PostgreSQL: {pg_settings}")
print(f"{'':<26}{'SET ops/s':>12}{'SET p99 us':>12}{'GET ops/s':>12}{'GET p99 us':>12}")
labels = {"lsm": "lsm (--wal-sync always)", "pg": "postgres (sync commit)"}
for t in ("lsm", "pg"):
    s = summary[t]
    print(f"{labels[t]:<26}{s['set_ops']:>12,.0f}{s['set_p99_us']:>12,.1f}{s['get_ops']:>12,.0f}{s['get_p99_us']:>12,.1f}")
print(f"{'postgres / lsm':<26}{ratio['set_ops']:>12.3f}{ratio['set_p99']:>12.3f}{ratio['get_ops']:>12.3f}{ratio['get_p99']:>12.3f}")
if errors:
    print(f"warning: {errors} failed requests across all cells", file=sys.stderr)
print()
print(json.dumps({"bench": "postgres", "connections": connections, "requests": requests, "runs": runs,
                  "keyspace": keyspace, "value_size": value_size, "postgres_settings": pg_settings,
                  "lsm": summary["lsm"], "postgres": summary["pg"], "ratio_pg_over_lsm": ratio,
                  "errors": errors}, separators=(",", ":")))
PY
