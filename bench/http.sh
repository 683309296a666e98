#!/usr/bin/env bash
# bench/http.sh — HTTP throughput and p99 of a LimeDB shard and coordinator
# against the HTTP ceiling of this machine (a hyper server that answers every
# request with a fixed 10-byte body).
#
# Starts every server itself on 127.0.0.1 with ephemeral ports:
#   shard        one `limedb shard`, benched directly
#   coordinator  `limedb coordinator` in front of three more shards
#   ceiling      `http_ceiling` example of crates/limedb-bench
# and for each of R runs benches them in interleaved rounds (shard,
# coordinator, ceiling, shard, ...), each round a SET then a GET with
# `limedb bench`. Reports the medians, the ratios to the ceiling and, as the
# very last line of stdout, one line of JSON. Progress goes to stderr.
#
# Usage: bench/http.sh [--requests N] [--connections C] [--runs R]
#                      [--keyspace K] [--value-size B]
#                      [--targets shard,coordinator,ceiling] [--client limedb|example]
#                      [--storage lsm|memory]
# (--storage picks the shards' backend; default: the shards' default, lsm.)
# (--client example uses crates/limedb-bench/examples/bench_client.rs, which
#  takes the same flags as `limedb bench`.)
# Environment: CARGO_TARGET_DIR is honoured; LIMEDB_BIN=path uses that limedb
# binary instead of building one; READY_TIMEOUT_SECS (default 30) bounds each
# server's start-up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_SCRIPT="${BASH_SOURCE[0]}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

REQUESTS=200000
CONNECTIONS=64
RUNS=3
KEYSPACE=100000
STORAGE=lsm
VALUE_SIZE=100
TARGETS="shard,coordinator,ceiling"
CLIENT="limedb"
READY_TIMEOUT_SECS="${READY_TIMEOUT_SECS:-30}"


while [[ $# -gt 0 ]]; do
    case "$1" in
        --requests)    need_value "$@"; need_uint "$1" "$2"; REQUESTS=$2; shift 2 ;;
        --connections) need_value "$@"; need_uint "$1" "$2"; CONNECTIONS=$2; shift 2 ;;
        --runs)        need_value "$@"; need_uint "$1" "$2"; RUNS=$2; shift 2 ;;
        --keyspace)    need_value "$@"; need_uint "$1" "$2"; KEYSPACE=$2; shift 2 ;;
        --value-size)  need_value "$@"; [[ "$2" =~ ^[0-9]+$ ]] || die "--value-size must be an integer"; VALUE_SIZE=$2; shift 2 ;;
        --targets)     need_value "$@"; TARGETS=$2; shift 2 ;;
        --client)      need_value "$@"; CLIENT=$2; shift 2 ;;
        --storage)     need_value "$@"; STORAGE=$2; shift 2 ;;
        -h|--help)     usage; exit 0 ;;
        *)             die "unknown argument '$1' (see --help)" ;;
    esac
done

case "$STORAGE" in lsm|memory) ;; *) die "--storage must be lsm or memory, got '$STORAGE'" ;; esac

want() { [[ ",$TARGETS," == *",$1,"* ]]; }
for t in ${TARGETS//,/ }; do
    case "$t" in shard|coordinator|ceiling) ;; *) die "unknown target '$t' (shard, coordinator, ceiling)" ;; esac
done
case "$CLIENT" in limedb|example) ;; *) die "--client must be limedb or example" ;; esac
command -v python3 >/dev/null || die "python3 is required"
if want coordinator; then command -v curl >/dev/null || die "curl is required"; fi

# --- temp dir, child processes, cleanup --------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/limedb-http-bench.XXXXXX")"
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

# --- build --------------------------------------------------------------------
NEED_LIMEDB=0
if want shard || want coordinator || [[ "$CLIENT" == limedb ]]; then NEED_LIMEDB=1; fi
if [[ -n "${LIMEDB_BIN:-}" ]]; then
    [[ -x "$LIMEDB_BIN" ]] || die "LIMEDB_BIN=$LIMEDB_BIN is not executable"
    NEED_LIMEDB=0
fi
BUILD=(cargo build --release --manifest-path "$ROOT/Cargo.toml")
if ((NEED_LIMEDB)); then BUILD+=(-p limedb --bin limedb); fi
EXAMPLES=()
if want ceiling; then EXAMPLES+=(--example http_ceiling); fi
if [[ "$CLIENT" == example ]]; then EXAMPLES+=(--example bench_client); fi
if ((${#EXAMPLES[@]})); then BUILD+=(-p limedb-bench "${EXAMPLES[@]}"); fi
if ((NEED_LIMEDB || ${#EXAMPLES[@]})); then
    log "building: ${BUILD[*]}"
    "${BUILD[@]}" >&2 || die "build failed"
fi

BIN_DIR="$(cargo_target_dir)/release"
LIMEDB="${LIMEDB_BIN:-$BIN_DIR/limedb}"
CEILING="$BIN_DIR/examples/http_ceiling"
if [[ "$CLIENT" == limedb ]]; then
    CLIENT_CMD=("$LIMEDB" bench)
else
    CLIENT_CMD=("$BIN_DIR/examples/bench_client")
fi

# --- servers --------------------------------------------------------------------
start_shard() { # NAME ID [EXTRA ARGS...] -> SHARD_HTTP
    local name=$1 id=$2
    shift 2
    mkdir -p "$WORK/data-$name"
    start "$name" "$LIMEDB" shard --id "$id" --host 127.0.0.1 --port 0 --internal-port 0 \
        --data-dir "$WORK/data-$name" --storage "$STORAGE" "$@"
    wait_ready "$name" "$STARTED_PID"
    SHARD_HTTP="$(field "$READY_LINE" http)"
    [[ -n "$SHARD_HTTP" ]] || die "no http= in '$READY_LINE'"
    log "$name ready at $SHARD_HTTP"
}

wait_healthy() { # URL
    local url=$1 deadline=$((SECONDS + READY_TIMEOUT_SECS)) body
    while ((SECONDS < deadline)); do
        if body="$(curl -sS --max-time 2 "$url/api/v1/health" 2>/dev/null)" &&
            python3 -c '
import json, re, sys
text = sys.argv[1]
try:
    doc = json.loads(text)
except ValueError:
    doc = text
if isinstance(doc, dict):
    ok = str(doc.get("status", doc.get("state", ""))).lower() == "healthy"
else:
    ok = re.search(r"(^|[^a-z])healthy", str(doc).lower()) is not None
sys.exit(0 if ok else 1)' "$body"; then
            return 0
        fi
        sleep 0.2
    done
    die "coordinator at $url not healthy within ${READY_TIMEOUT_SECS} s (last answer: ${body:-none})"
}

declare -A URL
if want shard; then
    start_shard shard 1
    URL[shard]="http://$SHARD_HTTP"
fi
if want coordinator; then
    SHARD_URLS=()
    # Three shards, the coordinator and the client share this machine's cores: one worker
    # thread per shard wastes less time switching threads (see `limedb --help`,
    # --worker-threads). The lone shard of (a) and the coordinator keep the default.
    for id in 1 2 3; do
        start_shard "cshard$id" "$id" --worker-threads 1
        SHARD_URLS+=("http://$SHARD_HTTP")
    done
    start coordinator "$LIMEDB" coordinator --host 127.0.0.1 --port 0 \
        --shards "$(IFS=,; echo "${SHARD_URLS[*]}")"
    wait_ready coordinator "$STARTED_PID"
    COORD_HTTP="$(field "$READY_LINE" http)"
    [[ -n "$COORD_HTTP" ]] || die "no http= in '$READY_LINE'"
    URL[coordinator]="http://$COORD_HTTP"
    wait_healthy "${URL[coordinator]}"
    log "coordinator ready and healthy at $COORD_HTTP"
fi
if want ceiling; then
    start ceiling "$CEILING" --listen 127.0.0.1:0
    wait_ready ceiling "$STARTED_PID"
    URL[ceiling]="http://$(field "$READY_LINE" http)"
    log "ceiling ready at ${URL[ceiling]#http://}"
fi

# --- rounds ---------------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

bench_cell() { # TARGET WORKLOAD RUN
    local target=$1 workload=$2 run=$3
    local out="$WORK/bench-$target-$workload-$run.out"
    # In the background + wait, so an INT/TERM trap runs at once, not after the bench.
    "${CLIENT_CMD[@]}" --url "${URL[$target]}" --connections "$CONNECTIONS" \
        --requests "$REQUESTS" --workload "$workload" --keyspace "$KEYSPACE" \
        --value-size "$VALUE_SIZE" --json >"$out" 2>"$out.err" &
    BENCH_PID=$!
    local status=0
    wait "$BENCH_PID" || status=$?
    BENCH_PID=""
    if ((status != 0)); then
        log "bench of $target ($workload, run $run) failed; its stderr:"
        tail -n 20 "$out.err" >&2 || true
        die "bench failed"
    fi
    python3 - "$out" "$target" "$workload" "$run" >>"$RESULTS" <<'PY' || die "unreadable bench output for $target $workload: $(tail -c 400 "$out")"
import json, sys
path, target, workload, run = sys.argv[1:5]
lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip().startswith("{")]
report = json.loads(lines[-1])
cell = {
    "target": target, "op": workload, "run": int(run),
    "ops": report["throughput_ops"], "p99_us": report["latency_us"]["p99"],
    "errors": report["errors"], "not_found": report["not_found"],
}
print(json.dumps(cell))
msg = f"run {run} {target:<11} {workload}: {cell['ops']:>10,.0f} ops/s  p99 {cell['p99_us']:>9,.1f} us"
if cell["errors"]:
    msg += f"  ({cell['errors']} errors)"
if cell["not_found"] and target != "ceiling":
    msg += f"  ({cell['not_found']} not found)"
print("[http.sh] " + msg, file=sys.stderr)
PY
}

ORDER=()
for t in shard coordinator ceiling; do if want "$t"; then ORDER+=("$t"); fi; done
log "benchmarking ${ORDER[*]}: $RUNS runs, $REQUESTS requests, $CONNECTIONS connections, keyspace $KEYSPACE, values of $VALUE_SIZE B"
for ((run = 1; run <= RUNS; run++)); do
    for target in "${ORDER[@]}"; do
        bench_cell "$target" set "$run"
        bench_cell "$target" get "$run"
    done
done

# --- summary --------------------------------------------------------------------
python3 - "$RESULTS" "$CONNECTIONS" "$REQUESTS" "$RUNS" "$STORAGE" <<'PY'
import json, statistics, sys

path, connections, requests, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
storage = sys.argv[5]
cells = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
TARGETS = {"shard_min": 0.7, "coordinator_min": 0.45, "p99_max_ratio": 2.0}

def median(target, op, key):
    values = [c[key] for c in cells if c["target"] == target and c["op"] == op]
    return statistics.median(values) if values else None

summary = {}
for target in ("shard", "coordinator", "ceiling"):
    row = {
        "get_ops": median(target, "get", "ops"),
        "get_p99_us": median(target, "get", "p99_us"),
        "set_ops": median(target, "set", "ops"),
        "set_p99_us": median(target, "set", "p99_us"),
    }
    summary[target] = None if all(v is None for v in row.values()) else {
        k: (round(v, 1) if v is not None else None) for k, v in row.items()
    }

def div(a, b):
    return round(a / b, 3) if a is not None and b else None

def get(target, key):
    return (summary[target] or {}).get(key)

ratio = {
    "shard_get": div(get("shard", "get_ops"), get("ceiling", "get_ops")),
    "shard_set": div(get("shard", "set_ops"), get("ceiling", "set_ops")),
    "coordinator_get": div(get("coordinator", "get_ops"), get("ceiling", "get_ops")),
    "coordinator_set": div(get("coordinator", "set_ops"), get("ceiling", "set_ops")),
    "coordinator_p99_over_shard_p99_get": div(get("coordinator", "get_p99_us"), get("shard", "get_p99_us")),
    "coordinator_p99_over_shard_p99_set": div(get("coordinator", "set_p99_us"), get("shard", "set_p99_us")),
}

def at_least(value, bound):
    return None if value is None else value >= bound

def at_most(value, bound):
    return None if value is None else value <= bound

met = {
    "shard_get": at_least(ratio["shard_get"], TARGETS["shard_min"]),
    "shard_set": at_least(ratio["shard_set"], TARGETS["shard_min"]),
    "coordinator_get": at_least(ratio["coordinator_get"], TARGETS["coordinator_min"]),
    "coordinator_set": at_least(ratio["coordinator_set"], TARGETS["coordinator_min"]),
    "p99_get": at_most(ratio["coordinator_p99_over_shard_p99_get"], TARGETS["p99_max_ratio"]),
    "p99_set": at_most(ratio["coordinator_p99_over_shard_p99_set"], TARGETS["p99_max_ratio"]),
}
checked = [v for v in met.values() if v is not None]
met["all"] = bool(checked) and all(checked)

def fmt(value, width, decimals=0):
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.{decimals}f}"

print()
print(f"HTTP bench: {connections} connections, {requests} requests per cell, median of {runs} runs, {storage} shards")
print(f"{'':<12}{'GET ops/s':>12}{'GET p99 us':>12}{'SET ops/s':>12}{'SET p99 us':>12}")
for target in ("shard", "coordinator", "ceiling"):
    row = summary[target]
    if row is None:
        continue
    print(f"{target:<12}{fmt(row['get_ops'], 12)}{fmt(row['get_p99_us'], 12, 1)}"
          f"{fmt(row['set_ops'], 12)}{fmt(row['set_p99_us'], 12, 1)}")
print()
labels = [
    ("shard_get", "shard GET / ceiling", f">= {TARGETS['shard_min']}", "shard_get"),
    ("shard_set", "shard SET / ceiling", f">= {TARGETS['shard_min']}", "shard_set"),
    ("coordinator_get", "coordinator GET / ceiling", f">= {TARGETS['coordinator_min']}", "coordinator_get"),
    ("coordinator_set", "coordinator SET / ceiling", f">= {TARGETS['coordinator_min']}", "coordinator_set"),
    ("coordinator_p99_over_shard_p99_get", "coordinator p99 / shard p99 GET", f"<= {TARGETS['p99_max_ratio']}", "p99_get"),
    ("coordinator_p99_over_shard_p99_set", "coordinator p99 / shard p99 SET", f"<= {TARGETS['p99_max_ratio']}", "p99_set"),
]
for key, label, bound, met_key in labels:
    value = ratio[key]
    verdict = {True: "met", False: "MISSED", None: "n/a"}[met[met_key]]
    shown = "-" if value is None else f"{value:.3f}"
    print(f"{label:<34}{shown:>8}   target {bound:<8} {verdict}")
errors = sum(c["errors"] for c in cells)
if errors:
    print(f"warning: {errors} failed requests across all cells", file=sys.stderr)
print()
print(json.dumps({
    "bench": "http", "storage": storage, "connections": connections, "requests": requests, "runs": runs,
    "shard": summary["shard"], "coordinator": summary["coordinator"], "ceiling": summary["ceiling"],
    "ratio": ratio, "targets": TARGETS, "met": met,
}, separators=(",", ":")))
PY
