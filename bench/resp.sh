#!/usr/bin/env bash
# bench/resp.sh — redis-benchmark against LimeDB's RESP listener and against Redis itself.
#
# Starts every server itself on 127.0.0.1 with ephemeral ports:
#   shard        one `limedb shard --storage lsm --wal-sync interval`, benched directly
#   coordinator  `limedb coordinator` in front of three such shards
#   redis        `redis-server` 7 with appendonly yes and appendfsync everysec (the comparable
#                sync policy: LimeDB's interval policy fsyncs its WAL every second too)
# and for each of R runs benches them in interleaved rounds (shard, coordinator, redis, shard,
# ...), each round one
#   redis-benchmark -t set,get -n N -c C -r K -d B -P P
# per pipeline depth P (1 and 16). Reports the medians, the ratios to Redis and, as the very
# last line of stdout, one line of JSON. Progress goes to stderr.
#
# Usage: bench/resp.sh [--requests N] [--connections C] [--runs R] [--keyspace K]
#                      [--value-size B] [--pipelines 1,16] [--targets shard,coordinator,redis]
# Defaults: 200000 requests, 50 connections, 3 runs, keyspace 100000, 100-byte values.
# Environment: CARGO_TARGET_DIR is honoured; LIMEDB_BIN=path uses that limedb binary instead of
# building one; READY_TIMEOUT_SECS (default 30) bounds each server's start-up.
# Needs redis-server and redis-benchmark (Debian: apt-get install redis-server redis-tools).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_SCRIPT="${BASH_SOURCE[0]}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

REQUESTS=200000
CONNECTIONS=50
RUNS=3
KEYSPACE=100000
VALUE_SIZE=100
PIPELINES="1,16"
TARGETS="shard,coordinator,redis"
READY_TIMEOUT_SECS="${READY_TIMEOUT_SECS:-30}"


while [[ $# -gt 0 ]]; do
    case "$1" in
        --requests)    need_value "$@"; need_uint "$1" "$2"; REQUESTS=$2; shift 2 ;;
        --connections) need_value "$@"; need_uint "$1" "$2"; CONNECTIONS=$2; shift 2 ;;
        --runs)        need_value "$@"; need_uint "$1" "$2"; RUNS=$2; shift 2 ;;
        --keyspace)    need_value "$@"; need_uint "$1" "$2"; KEYSPACE=$2; shift 2 ;;
        --value-size)  need_value "$@"; need_uint "$1" "$2"; VALUE_SIZE=$2; shift 2 ;;
        --pipelines)   need_value "$@"; PIPELINES=$2; shift 2 ;;
        --targets)     need_value "$@"; TARGETS=$2; shift 2 ;;
        -h|--help)     usage; exit 0 ;;
        *)             die "unknown argument '$1' (see --help)" ;;
    esac
done

want() { [[ ",$TARGETS," == *",$1,"* ]]; }
for t in ${TARGETS//,/ }; do
    case "$t" in shard|coordinator|redis) ;; *) die "unknown target '$t' (shard, coordinator, redis)" ;; esac
done
for p in ${PIPELINES//,/ }; do need_uint --pipelines "$p"; done
command -v python3 >/dev/null || die "python3 is required"
command -v redis-benchmark >/dev/null || die "redis-benchmark is required (apt-get install redis-tools)"
command -v redis-cli >/dev/null || die "redis-cli is required (apt-get install redis-tools)"
if want redis; then command -v redis-server >/dev/null || die "redis-server is required (apt-get install redis-server)"; fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/limedb-resp-bench.XXXXXX")"
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_children 5
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ------------------------------------------------------------------------
if [[ -n "${LIMEDB_BIN:-}" ]] || want shard || want coordinator; then
    limedb_binary
fi

# --- servers ----------------------------------------------------------------------
wait_pong() { # NAME HOST:PORT : until the server answers DBSIZE without an error
    local name=$1 addr=$2 deadline=$((SECONDS + READY_TIMEOUT_SECS))
    until [[ "$(redis-cli -h "${addr%:*}" -p "${addr##*:}" DBSIZE 2>/dev/null)" =~ ^[0-9]+$ ]]; do
        ((SECONDS < deadline)) || die "$name at $addr does not answer DBSIZE"
        sleep 0.1
    done
}
LSM=(--storage lsm --wal-sync interval)
start_shard() { # NAME ID [EXTRA...] -> SHARD_HTTP
    local name=$1 id=$2
    shift 2
    mkdir -p "$WORK/data-$name"
    start "$name" "$LIMEDB" shard --id "$id" --host 127.0.0.1 --port 0 --internal-port 0 \
        --data-dir "$WORK/data-$name" "${LSM[@]}" "$@"
    wait_ready "$name" "$STARTED_PID"
    SHARD_HTTP="$(field "$READY_LINE" http)"
    SHARD_RESP="$(field "$READY_LINE" resp)"
}

declare -A ADDR
if want shard; then
    start_shard shard 1 --resp-port 0
    ADDR[shard]=$SHARD_RESP
    wait_pong shard "${ADDR[shard]}"
    log "shard ready, RESP at ${ADDR[shard]}"
fi
if want coordinator; then
    SHARD_URLS=()
    # Three shards, the coordinator, redis-benchmark and the other targets share this machine's
    # cores: one worker thread per shard wastes less time switching threads.
    for id in 1 2 3; do
        start_shard "cshard$id" "$id" --worker-threads 1
        SHARD_URLS+=("http://$SHARD_HTTP")
    done
    start coordinator "$LIMEDB" coordinator --host 127.0.0.1 --port 0 --resp-port 0 \
        --shards "$(IFS=,; echo "${SHARD_URLS[*]}")"
    wait_ready coordinator "$STARTED_PID"
    ADDR[coordinator]="$(field "$READY_LINE" resp)"
    wait_pong coordinator "${ADDR[coordinator]}"
    log "coordinator ready, RESP at ${ADDR[coordinator]}"
fi
if want redis; then
    REDIS_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    mkdir -p "$WORK/redis"
    start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$WORK/redis" \
        --appendonly yes --appendfsync everysec --save ""
    ADDR[redis]="127.0.0.1:$REDIS_PORT"
    wait_pong redis "${ADDR[redis]}"
    log "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') ready at ${ADDR[redis]}"
fi

# --- rounds -----------------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
bench_cell() { # TARGET PIPELINE RUN
    local target=$1 pipeline=$2 run=$3 addr=${ADDR[$1]}
    local out="$WORK/bench-$target-$pipeline-$run.csv"
    redis-benchmark -h "${addr%:*}" -p "${addr##*:}" -t set,get -n "$REQUESTS" -c "$CONNECTIONS" \
        -r "$KEYSPACE" -d "$VALUE_SIZE" -P "$pipeline" --csv >"$out" 2>"$out.err" &
    BENCH_PID=$!
    local status=0
    wait "$BENCH_PID" || status=$?
    BENCH_PID=""
    ((status == 0)) || { tail -n 20 "$out.err" >&2; die "redis-benchmark against $target failed"; }
    python3 - "$out" "$target" "$pipeline" "$run" >>"$RESULTS" <<'PY' || die "unreadable redis-benchmark output: $(head -c 400 "$out")"
import csv, json, sys
path, target, pipeline, run = sys.argv[1:5]
rows = list(csv.reader(open(path, encoding="utf-8")))
header = rows[0]
for row in rows[1:]:
    rec = dict(zip(header, row))
    op = rec["test"].lower()
    cell = {"target": target, "pipeline": int(pipeline), "run": int(run), "op": op,
            "ops": float(rec["rps"]), "p99_ms": float(rec.get("p99_latency_ms", "nan"))}
    print(json.dumps(cell))
    print(f"[resp.sh] run {run} {target:<11} -P {pipeline:<3} {op}: {cell['ops']:>10,.0f} ops/s  p99 {cell['p99_ms']:.3f} ms", file=sys.stderr)
PY
}

ORDER=()
for t in shard coordinator redis; do if want "$t"; then ORDER+=("$t"); fi; done
log "benchmarking ${ORDER[*]}: $RUNS runs, -n $REQUESTS -c $CONNECTIONS -r $KEYSPACE -d $VALUE_SIZE, -P ${PIPELINES}"
for ((run = 1; run <= RUNS; run++)); do
    for pipeline in ${PIPELINES//,/ }; do
        for target in "${ORDER[@]}"; do
            bench_cell "$target" "$pipeline" "$run"
        done
    done
done

# --- summary ----------------------------------------------------------------------
python3 - "$RESULTS" "$REQUESTS" "$CONNECTIONS" "$RUNS" "$KEYSPACE" "$VALUE_SIZE" <<'PY'
import json, statistics, sys
path = sys.argv[1]
requests, connections, runs, keyspace, value_size = map(int, sys.argv[2:7])
cells = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
pipelines = sorted({c["pipeline"] for c in cells})
targets = [t for t in ("shard", "coordinator", "redis") if any(c["target"] == t for c in cells)]
def median(target, pipeline, op, key="ops"):
    v = [c[key] for c in cells if c["target"] == target and c["pipeline"] == pipeline and c["op"] == op]
    return statistics.median(v) if v else None
figures = {t: {f"P{p}": {op: median(t, p, op) for op in ("set", "get")} for p in pipelines} for t in targets}
p99 = {t: {f"P{p}": {op: median(t, p, op, "p99_ms") for op in ("set", "get")} for p in pipelines} for t in targets}
GOALS = {("shard", 16): 1.0, ("shard", 1): 0.8, ("coordinator", 16): 0.5, ("coordinator", 1): 0.5}
ratio, met = {}, {}
for t in ("shard", "coordinator"):
    for p in pipelines:
        for op in ("set", "get"):
            a, r = median(t, p, op), median("redis", p, op)
            key = f"{t}_P{p}_{op}"
            ratio[key] = round(a / r, 3) if a and r else None
            goal = GOALS.get((t, p))
            met[key] = None if goal is None or ratio[key] is None else ratio[key] >= goal
print()
print(f"redis-benchmark -t set,get -n {requests} -c {connections} -r {keyspace} -d {value_size}; median of {runs} runs; ops/s (p99 ms)")
def cell(t, p, op):
    ops, lat = figures[t]["P%d" % p][op], p99[t]["P%d" % p][op]
    return "-" if ops is None else "%s (%.2f)" % (format(round(ops), ","), lat)
head = "".join(("-P %d %s" % (p, op.upper())).rjust(22) for p in pipelines for op in ("set", "get"))
print(" " * 13 + head)
for t in targets:
    print(t.ljust(13) + "".join(cell(t, p, op).rjust(22) for p in pipelines for op in ("set", "get")))
print()
for key, value in ratio.items():
    t, p, op = key.split("_")
    goal = GOALS.get((t, int(p[1:])))
    verdict = {True: "met", False: "MISSED", None: "n/a"}[met[key]]
    shown = "-" if value is None else "%.3f" % value
    print("%s / redis %s %-4s%8s   target >= %s  %s" % (t, p, op.upper(), shown, goal, verdict))
checked = [v for v in met.values() if v is not None]
print()
print(json.dumps({"bench": "resp", "requests": requests, "connections": connections, "runs": runs,
                  "keyspace": keyspace, "value_size": value_size, "ops": figures, "p99_ms": p99,
                  "ratio": ratio, "met": met, "all_met": bool(checked) and all(checked)},
                 separators=(",", ":")))
PY
