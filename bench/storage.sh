#!/usr/bin/env bash
# bench/storage.sh — LimeDB's LSM engine against RocksDB and fjall, same workloads, one run.
#
# Builds bench/storage (its own Cargo workspace and target folder, bench/storage/target) and
# runs, R times, every workload on every engine, interleaved engine by engine (limedb,
# rocksdb, fjall, limedb, ...), one process per workload and engine, dropping the page cache
# before each. Workloads, in order:
#   fillseq      N puts, ascending keys, fresh database
#   fillrandom   N puts, each key once in random (hashed) order, fresh database
#   overwrite    N puts of random existing keys (on the fillrandom database)
#   readrandom   N gets of random existing keys (all must hit)
#   readmissing  N gets of absent keys (bloom filters)
#   readseq      one full scan (must see N keys)
#   compact      one full compaction of the overwritten database; reports space amplification
#                (bytes of the whole database directory / bytes of live keys and values)
#   syncwrite    T threads (4) write S keys in all, every write fsynced, fresh database
# Every engine: 16-byte keys, 100-byte incompressible values (same seed for all), 64 MiB
# memtable, 64 MiB block cache, WAL on, bloom filters at 10 bits per key, LZ4.
# Prints the medians as a table, the ratios ours/RocksDB and ours/fjall, LimeDB's write
# amplification and each engine's peak resident memory and, as the very last line of
# stdout, one line of JSON. Progress goes to stderr.
#
# Usage: bench/storage.sh [--keys N] [--runs R] [--quick] [--sync-ops S] [--threads T]
#                         [--engines limedb,rocksdb,fjall] [--workloads W1,W2,...]
#   --keys N      keys per database (1000000)
#   --runs R      rounds; medians are reported (3)
#   --quick       RocksDB 7.8 from Debian's librocksdb-dev (rocksdb crate 0.20.1): builds in
#                 seconds, for smoke runs only. Default: RocksDB 11.8 built from source by the
#                 rocksdb crate 0.25 -- about 14 minutes on 2 cores the FIRST time, then cached
#                 in bench/storage/target.
#   --sync-ops S  writes in all for syncwrite (default N/20, at least 4000)
#   --threads T   writer threads for syncwrite (4)
#   --engines, --workloads  subsets (the workloads that read need fillrandom before them)
# Installs libclang-dev (and librocksdb-dev for --quick) with apt-get when missing (as root).
# Environment: STORAGE_BENCH_DATA_DIR (where databases are created; default
# bench/storage/target/data -- keep it on a real disk, not tmpfs), STORAGE_BENCH_TARGET_DIR
# (default bench/storage/target).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_SCRIPT="${BASH_SOURCE[0]}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
BENCH_DIR="$ROOT/bench/storage"

KEYS=1000000
RUNS=3
QUICK=0
SYNC_OPS=""
THREADS=4
ENGINES="limedb,rocksdb,fjall"
ALL_WORKLOADS="fillseq,fillrandom,overwrite,readrandom,readmissing,readseq,compact,syncwrite"
WORKLOADS="$ALL_WORKLOADS"
TARGET_DIR="${STORAGE_BENCH_TARGET_DIR:-$BENCH_DIR/target}"
DATA_PARENT="${STORAGE_BENCH_DATA_DIR:-$TARGET_DIR/data}"


while [[ $# -gt 0 ]]; do
    case "$1" in
        --keys)      need_value "$@"; need_uint "$1" "$2"; KEYS=$2; shift 2 ;;
        --runs)      need_value "$@"; need_uint "$1" "$2"; RUNS=$2; shift 2 ;;
        --quick)     QUICK=1; shift ;;
        --sync-ops)  need_value "$@"; need_uint "$1" "$2"; SYNC_OPS=$2; shift 2 ;;
        --threads)   need_value "$@"; need_uint "$1" "$2"; THREADS=$2; shift 2 ;;
        --engines)   need_value "$@"; ENGINES=$2; shift 2 ;;
        --workloads) need_value "$@"; WORKLOADS=$2; shift 2 ;;
        -h|--help)   usage; exit 0 ;;
        *)           die "unknown argument '$1' (see --help)" ;;
    esac
done
if [[ -z "$SYNC_OPS" ]]; then
    SYNC_OPS=$((KEYS / 20))
    ((SYNC_OPS >= 4000)) || SYNC_OPS=4000
fi

for e in ${ENGINES//,/ }; do
    case "$e" in limedb|rocksdb|fjall) ;; *) die "unknown engine '$e' (limedb, rocksdb, fjall)" ;; esac
done
for w in ${WORKLOADS//,/ }; do
    [[ ",$ALL_WORKLOADS," == *",$w,"* ]] || die "unknown workload '$w' ($ALL_WORKLOADS)"
done
want_engine() { [[ ",$ENGINES," == *",$1,"* ]]; }
want_workload() { [[ ",$WORKLOADS," == *",$1,"* ]]; }
# Keep the canonical order whatever order the lists were given in.
ORDER_ENGINES=()
for e in limedb rocksdb fjall; do if want_engine "$e"; then ORDER_ENGINES+=("$e"); fi; done
ORDER_WORKLOADS=()
for w in ${ALL_WORKLOADS//,/ }; do if want_workload "$w"; then ORDER_WORKLOADS+=("$w"); fi; done
for w in overwrite readrandom readmissing readseq compact; do
    if want_workload "$w" && ! want_workload fillrandom; then
        die "$w reads the fillrandom database: add fillrandom to --workloads"
    fi
done

command -v python3 >/dev/null || die "python3 is required"
command -v cargo >/dev/null || die "cargo is required"

# --- system packages ------------------------------------------------------------------
APT_UPDATED=0
apt_install() { # PACKAGE...
    if [[ $EUID -ne 0 ]]; then
        die "missing $*: run 'sudo apt-get install -y $*' (or run this script as root)"
    fi
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install them"
    if ((!APT_UPDATED)); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
}
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if want_engine rocksdb || ((QUICK)); then
    MISSING=()
    # bindgen (librocksdb-sys) needs libclang in both variants; --quick always links
    # librocksdb, whatever --engines says.
    have_pkg libclang-dev || MISSING+=(libclang-dev)
    if ((QUICK)); then have_pkg librocksdb-dev || MISSING+=(librocksdb-dev); fi
    if ((${#MISSING[@]})); then apt_install "${MISSING[@]}"; fi
fi

# --- build ------------------------------------------------------------------------------
export CARGO_TARGET_DIR="$TARGET_DIR"
if ((QUICK)); then
    # bench/storage/quick: the same program, rocksdb 0.20.1 on Debian's RocksDB 7.8.
    # (A second manifest: Cargo allows one `links = "rocksdb"` package per graph.)
    log "building bench/storage/quick (RocksDB 7.8 from librocksdb-dev: smoke runs only)"
    (cd "$BENCH_DIR/quick" &&
        ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu ROCKSDB_INCLUDE_DIR=/usr/include \
            cargo build --release --bin storage-bench-quick >&2) || die "build failed"
    BIN="$TARGET_DIR/release/storage-bench-quick"
else
    FEATURES=()
    if want_engine rocksdb; then
        FEATURES=(--features rocksdb-current)
        if ! compgen -G "$TARGET_DIR/release/build/librocksdb-sys-*/out/librocksdb.a" >/dev/null; then
            log "RocksDB 11.8 is compiled from source now: about 14 minutes on 2 cores, once"
            log "(cached in $TARGET_DIR; use --quick for a smoke run against Debian's RocksDB 7.8)"
        fi
    fi
    log "building bench/storage ${FEATURES[*]}"
    # Never link the system library here: unset what --quick or the caller may have set.
    (cd "$BENCH_DIR" &&
        env -u ROCKSDB_LIB_DIR -u ROCKSDB_INCLUDE_DIR -u ROCKSDB_STATIC \
            cargo build --release --bin storage-bench "${FEATURES[@]}" >&2) || die "build failed"
    BIN="$TARGET_DIR/release/storage-bench"
fi
[[ -x "$BIN" ]] || die "no binary at $BIN"

# --- data directory, cleanup ------------------------------------------------------------
mkdir -p "$DATA_PARENT"
WORK="$(mktemp -d "$DATA_PARENT/storage-bench.XXXXXX")"
BENCH_PID=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$BENCH_PID" ]]; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
FSTYPE="$(df -PT "$WORK" 2>/dev/null | awk 'NR==2 {print $2}')"
if [[ "$FSTYPE" == tmpfs ]]; then
    log "warning: $WORK is on tmpfs: fsync and the page cache mean nothing there (set STORAGE_BENCH_DATA_DIR)"
fi

# --- page cache -------------------------------------------------------------------------
CACHE_DROPPED=1
drop_caches() {
    sync
    if ((CACHE_DROPPED)); then
        if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
            CACHE_DROPPED=0
            log "warning: cannot drop the page cache (needs root and a writable /proc/sys):"
            log "warning: runs start with a warm page cache"
        fi
    fi
}

# --- rounds -----------------------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

cell() { # RUN WORKLOAD ENGINE
    local run=$1 workload=$2 engine=$3 dir
    case "$workload" in
        fillseq)   dir="$WORK/run$run/$engine-seq" ;;
        syncwrite) dir="$WORK/run$run/$engine-sync" ;;
        *)         dir="$WORK/run$run/$engine-random" ;;
    esac
    drop_caches
    local out="$WORK/cell.out" status=0
    "$BIN" --engine "$engine" --workload "$workload" --dir "$dir" --keys "$KEYS" \
        --sync-ops "$SYNC_OPS" --threads "$THREADS" >"$out" 2>"$out.err" &
    BENCH_PID=$!
    wait "$BENCH_PID" || status=$?
    BENCH_PID=""
    if ((status != 0)); then
        log "$engine $workload (run $run) failed; its stderr:"
        tail -n 20 "$out.err" >&2 || true
        die "benchmark failed"
    fi
    python3 - "$out" "$run" >>"$RESULTS" <<'PY' || die "unreadable output of $engine $workload: $(tail -c 400 "$out")"
import json, sys
path, run = sys.argv[1], int(sys.argv[2])
lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip().startswith("{")]
cell = json.loads(lines[-1])
cell["run"] = run
print(json.dumps(cell))
msg = (f"run {run} {cell['engine']:<7} {cell['workload']:<12}{cell['ops_per_sec']:>12,.0f} ops/s"
       f"  max RSS {cell['max_rss_kb'] / 1024:>6.1f} MiB")
if cell.get("write_amp") is not None:
    msg += f"  write amp {cell['write_amp']:.2f}"
if cell.get("space_amp") is not None:
    msg += f"  space amp {cell['space_amp']:.3f}"
print("[storage.sh] " + msg, file=sys.stderr)
PY
}

log "$RUNS run(s): ${ORDER_WORKLOADS[*]} on ${ORDER_ENGINES[*]}; $KEYS keys," \
    "syncwrite $SYNC_OPS writes on $THREADS threads; data in $WORK ($FSTYPE)"
for ((run = 1; run <= RUNS; run++)); do
    mkdir -p "$WORK/run$run"
    for workload in "${ORDER_WORKLOADS[@]}"; do
        for engine in "${ORDER_ENGINES[@]}"; do
            cell "$run" "$workload" "$engine"
        done
    done
    rm -rf "$WORK/run$run"
done

# --- summary ----------------------------------------------------------------------------
python3 - "$RESULTS" "$KEYS" "$RUNS" "$QUICK" "$SYNC_OPS" "$THREADS" "$CACHE_DROPPED" <<'PY'
import json, statistics, sys

path = sys.argv[1]
keys, runs, quick, sync_ops, threads, dropped = (int(a) for a in sys.argv[2:8])
cells = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
ENGINES = [e for e in ("limedb", "rocksdb", "fjall") if any(c["engine"] == e for c in cells)]
WORKLOADS = [w for w in ("fillseq", "fillrandom", "overwrite", "readrandom", "readmissing",
                         "readseq", "compact", "syncwrite")
             if any(c["workload"] == w for c in cells)]
LABEL = {"syncwrite": f"syncwrite ({threads} thr, fsync)", "compact": "compact (keys/s)"}
# Targets without a throughput ratio: space amplification and resident memory.
SPACE_AMP_MAX = 1.2
RSS_BUDGET_MIB = (64 + 64) * 1.2
# Targets of issue 4: ours/RocksDB >= 1.0 everywhere, ours/fjall >= 1.0 on these.
FJALL_TARGETS = ("fillrandom", "readrandom")

def median(engine, workload, key):
    values = [c[key] for c in cells
              if c["engine"] == engine and c["workload"] == workload and c.get(key) is not None]
    return statistics.median(values) if values else None

def div(a, b):
    return round(a / b, 3) if a is not None and b else None

rocksdb_version = next((c["rocksdb_version"] for c in cells if c.get("rocksdb_version")), None)
workloads, rss, write_amp, met = {}, {}, {}, {}
for w in WORKLOADS:
    row = {e: (round(v, 1) if (v := median(e, w, "ops_per_sec")) is not None else None)
           for e in ENGINES}
    row["ours_over_rocksdb"] = div(row.get("limedb"), row.get("rocksdb"))
    row["ours_over_fjall"] = div(row.get("limedb"), row.get("fjall"))
    workloads[w] = row
    rss[w] = {e: (round(v / 1024, 1) if (v := median(e, w, "max_rss_kb")) is not None else None)
              for e in ENGINES}
    wa = median("limedb", w, "write_amp")
    if wa is not None and w != "syncwrite":
        write_amp[w] = round(wa, 3)
    checks = []
    if w == "compact":
        pass  # a full compaction's speed has no target; its space amplification does
    elif row["ours_over_rocksdb"] is not None:
        checks.append(row["ours_over_rocksdb"] >= 1.0)
    if w in FJALL_TARGETS and row["ours_over_fjall"] is not None:
        checks.append(row["ours_over_fjall"] >= 1.0)
    met[w] = all(checks) if checks else None
space_amp = {e: (round(v, 3) if (v := median(e, "compact", "space_amp")) is not None else None)
             for e in ENGINES} if "compact" in WORKLOADS else {}
if space_amp.get("limedb") is not None:
    met["space_amp"] = space_amp["limedb"] <= SPACE_AMP_MAX
lime_rss = [v["limedb"] for v in rss.values() if v.get("limedb") is not None]
if lime_rss:
    met["rss"] = max(lime_rss) <= RSS_BUDGET_MIB
for w in WORKLOADS:
    if w == "compact":
        met[w] = None
checked = [v for v in met.values() if v is not None]
met["all"] = bool(checked) and all(checked)

def fmt(value, width, decimals=0):
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.{decimals}f}"

def ratio(value, width):
    return f"{'-':>{width}}" if value is None else f"{value:>{width - 1}.2f}x"

print()
print(f"Storage bench: {keys:,} keys (16 B) x 100 B values, median of {runs} run(s); "
      f"syncwrite: {sync_ops:,} writes on {threads} threads")
print(f"RocksDB: {rocksdb_version or 'not run'}" + ("  [--quick: smoke run only]" if quick else ""))
if not dropped:
    print("warning: the page cache could not be dropped between runs")
head = f"{'ops/s':<26}" + "".join(f"{e:>12}" for e in ENGINES)
head += f"{'ours/rocks':>12}{'ours/fjall':>12}  target"
print(head)
for w in WORKLOADS:
    row = workloads[w]
    line = f"{LABEL.get(w, w):<26}" + "".join(fmt(row[e], 12) for e in ENGINES)
    line += ratio(row["ours_over_rocksdb"], 12) + ratio(row["ours_over_fjall"], 12)
    line += "  " + {True: "met", False: "MISSED", None: "n/a"}[met[w]]
    print(line)
print()
print(f"{'peak RSS (MiB)':<26}" + "".join(f"{e:>12}" for e in ENGINES))
for w in WORKLOADS:
    print(f"{LABEL.get(w, w):<26}" + "".join(fmt(rss[w][e], 12, 1) for e in ENGINES))
print(f"(budgets: 64 MiB memtable + 64 MiB block cache, + 20% = {RSS_BUDGET_MIB:.1f} MiB; RSS"
      " includes mapped table pages)  LimeDB target "
      + {True: "met", False: "MISSED", None: "n/a"}[met.get("rss")])
if space_amp:
    print()
    print("space amplification after a full compaction (directory bytes / live bytes): "
          + ", ".join(f"{e} {fmt(v, 0, 3).strip()}" for e, v in space_amp.items())
          + f"  LimeDB target <= {SPACE_AMP_MAX}: "
          + {True: "met", False: "MISSED", None: "n/a"}[met.get("space_amp")])
if write_amp:
    print()
    print("LimeDB write amplification (SSTable bytes written by flushes + compactions / user"
          " bytes; the WAL adds ~1): "
          + ", ".join(f"{w} {v:.2f}" for w, v in write_amp.items()))
elif "limedb" in ENGINES:
    print("LimeDB write amplification: not available from its counters")
print()
print(json.dumps({
    "bench": "storage", "keys": keys, "value_bytes": 100, "runs": runs,
    "rocksdb": rocksdb_version, "quick": bool(quick),
    "syncwrite": {"ops": sync_ops, "threads": threads},
    "page_cache_dropped": bool(dropped),
    "workloads": workloads,
    "max_rss_mib": rss,
    "limedb_write_amp": write_amp or None,
    "space_amp": space_amp or None,
    "targets": {"ours_over_rocksdb_min": 1.0, "ours_over_fjall_min": 1.0,
                "ours_over_fjall_on": list(FJALL_TARGETS), "space_amp_max": SPACE_AMP_MAX,
                "max_rss_mib": RSS_BUDGET_MIB},
    "met": met,
}, separators=(",", ":")))
PY
