# bench/lib.sh — helpers shared by the bench scripts; sourced, never run.
#
# The sourcing script sets BENCH_SCRIPT="${BASH_SOURCE[0]}" first (its --help is its header
# comment, its log lines are prefixed with its name), and, for the process helpers, WORK (a
# temp dir), PIDS=() and READY_TIMEOUT_SECS.

BENCH_NAME="$(basename "$BENCH_SCRIPT")"

# The script's header comment, up to `set -euo`, as its --help.
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$BENCH_SCRIPT"; }
log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
need_uint() { [[ "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || die "$1 must be a positive integer, got '$2'"; }

SETSID=""
if command -v setsid >/dev/null; then SETSID="setsid"; fi

# start NAME CMD... : runs CMD in the background, stdout/stderr to $WORK/NAME.{out,err}, in a
# session of its own (when setsid exists) so that stop_children also reaches anything a
# wrapper spawned. Sets STARTED_PID.
start() {
    local name=$1
    shift
    $SETSID "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=("$!")
    STARTED_PID=$!
}

# wait_ready NAME PID : waits for the LIMEDB_READY line of NAME, sets READY_LINE.
wait_ready() {
    local name=$1 pid=$2 deadline=$((SECONDS + READY_TIMEOUT_SECS))
    until READY_LINE="$(grep -m1 '^LIMEDB_READY' "$WORK/$name.out" 2>/dev/null)"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before it was ready; its stderr:"
            tail -n 40 "$WORK/$name.err" >&2 || true
            die "$name failed to start"
        fi
        if ((SECONDS >= deadline)); then
            log "$name printed no LIMEDB_READY line within ${READY_TIMEOUT_SECS} s; its stderr:"
            tail -n 40 "$WORK/$name.err" >&2 || true
            die "$name did not become ready"
        fi
        sleep 0.1
    done
}

# field LINE KEY : the value of KEY=VALUE in a READY line.
field() { sed -n "s/.*[[:space:]]$2=\([^[:space:]]*\).*/\1/p" <<<"$1"; }

# stop_children GRACE_SECS : SIGTERM to the running bench client and every started process
# (its process group first), then SIGKILL to whatever is still there after GRACE_SECS.
stop_children() {
    local grace=$1 pid
    if [[ -n "${BENCH_PID:-}" ]]; then kill -TERM "$BENCH_PID" 2>/dev/null || true; fi
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + grace))
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# cargo_target_dir : where `cargo build` of the workspace at $ROOT puts its output.
cargo_target_dir() {
    if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
        printf '%s\n' "$CARGO_TARGET_DIR"
    else
        cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
    fi
}

# Sets LIMEDB: $LIMEDB_BIN if set (it must be executable), else the release binary, built now.
limedb_binary() {
    if [[ -n "${LIMEDB_BIN:-}" ]]; then
        [[ -x "$LIMEDB_BIN" ]] || die "LIMEDB_BIN=$LIMEDB_BIN is not executable"
        LIMEDB="$LIMEDB_BIN"
        return
    fi
    log "building: cargo build --release -p limedb --bin limedb"
    cargo build --release --manifest-path "$ROOT/Cargo.toml" -p limedb --bin limedb >&2 || die "build failed"
    LIMEDB="$(cargo_target_dir)/release/limedb"
}
