//! Crash test of the LSM engine (issue 4): a child process writes with `SyncPolicy::Always` and
//! is killed with SIGKILL at a random moment, many times in a row on the same directory; after
//! each kill the parent reopens the directory and checks that every acknowledged write is there
//! with its last acknowledged value and that nothing that was never written appears.
//!
//! The test re-runs its own binary as the child (as sled's `tests/test_crash_recovery.rs` does):
//! [`child_entry`] is a test that returns at once unless [`CHILD_ENV`] is set.
//!
//! # What the child does
//!
//! [`CHILD_THREADS`] threads write into one engine. Thread `t` owns the keys `k` with
//! `k % CHILD_THREADS == t`, so the writes to one key are sequential. Its `i`-th operation in
//! cycle `c` is a pure function [`op`]`(seed, c, t, i)`: which key, put or delete, and the exact
//! value bytes (which name `c`, `t` and `i`). After `put`/`delete` returns, the thread appends
//! the line `"t i\n"` to the cycle's acknowledgement file with one `write(2)` on an `O_APPEND`
//! file; a line is therefore only written for an acknowledged operation.
//!
//! # What the parent checks
//!
//! For each thread the acknowledged indexes must be `0, 1, …, n-1`; at most operation `n` was in
//! flight when the child died. For every key of the key space the reopened engine must hold
//! either the state after the last acknowledged operation on it (a put's exact value, or absent
//! for a delete), or the result of the one in-flight operation if that targets the key. A
//! stored value must decode to an operation that really put that value under that key. No key
//! outside the key space may exist. The observed state becomes the model for the next cycle.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use limedb_storage::lsm::compaction::LeveledOptions;
use limedb_storage::lsm::sstable::TableOptions;
use limedb_storage::lsm::version::NUM_LEVELS;
use limedb_storage::{Engine, LsmEngine, LsmOptions, SyncPolicy};

/// Set to the database directory in the child process.
const CHILD_ENV: &str = "LIMEDB_CRASH_CHILD";
const CYCLE_ENV: &str = "LIMEDB_CRASH_CYCLE";
const SEED_ENV: &str = "LIMEDB_CRASH_SEED";
const MODE_ENV: &str = "LIMEDB_CRASH_MODE";
const ACKS_ENV: &str = "LIMEDB_CRASH_ACKS";

const CHILD_THREADS: u64 = 4;
/// Keys `0..KEYS`, stored as `key-0000` … .
const KEYS: u64 = 256;
/// Kill/reopen cycles per variant (the issue asks for at least 20).
const CYCLES: u64 = 24;
/// The child gives up after this long if nobody kills it (it should never get there).
const CHILD_SAFETY_STOP: Duration = Duration::from_secs(30);

/// A 64 KiB memtable and small levels, so flushes and compactions run during every cycle.
fn options() -> LsmOptions {
    LsmOptions {
        sync: SyncPolicy::Always,
        memtable_bytes: 64 << 10,
        block_cache_bytes: 1 << 20,
        table: TableOptions {
            block_size_bytes: 1024,
            ..TableOptions::default()
        },
        leveled: LeveledOptions {
            l0_compaction_trigger: 2,
            base_level_bytes: 64 << 10,
            level_size_multiplier: 4,
            target_table_bytes: 32 << 10,
            ..LeveledOptions::default()
        },
        ..LsmOptions::default()
    }
}

/// splitmix64: a tiny, well-mixed PRNG step.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seeded PRNG for the parent's kill delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Puts only.
    Puts,
    /// One op in four is a delete.
    Mixed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Puts => "puts",
            Mode::Mixed => "mixed",
        }
    }

    fn parse(s: &str) -> Mode {
        match s {
            "mixed" => Mode::Mixed,
            _ => Mode::Puts,
        }
    }
}

/// One operation of a child thread, a pure function of `(seed, cycle, thread, index)`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Op {
    key: u64,
    /// `None` for a delete.
    value: Option<Vec<u8>>,
}

fn key_bytes(key: u64) -> Vec<u8> {
    format!("key-{key:04}").into_bytes()
}

fn parse_key(bytes: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let n = s.strip_prefix("key-")?;
    if n.len() != 4 {
        return None;
    }
    n.parse().ok()
}

fn op(seed: u64, mode: Mode, cycle: u64, thread: u64, index: u64) -> Op {
    let h = mix(seed ^ mix(cycle ^ mix(thread ^ mix(index))));
    let key = thread + CHILD_THREADS * (h % (KEYS / CHILD_THREADS));
    let delete = mode == Mode::Mixed && (h >> 20).is_multiple_of(4);
    if delete {
        return Op { key, value: None };
    }
    let mut value = format!("v key={key} c={cycle} t={thread} i={index} ").into_bytes();
    let pad = 20 + (h >> 32) % 300;
    let mut x = h;
    for _ in 0..pad {
        x = mix(x);
        value.push(b'a' + (x % 26) as u8);
    }
    Op {
        key,
        value: Some(value),
    }
}

/// The `(cycle, thread, index)` named in a stored value, if it has the form [`op`] writes.
fn parse_value(value: &[u8]) -> Option<(u64, u64, u64, u64)> {
    let head = value.split(|&b| b == b' ').take(5).collect::<Vec<_>>();
    let [v, key, c, t, i] = head.as_slice() else {
        return None;
    };
    if *v != b"v" {
        return None;
    }
    let field = |bytes: &[u8], name: &str| -> Option<u64> {
        std::str::from_utf8(bytes)
            .ok()?
            .strip_prefix(name)?
            .strip_prefix('=')?
            .parse()
            .ok()
    };
    Some((
        field(key, "key")?,
        field(c, "c")?,
        field(t, "t")?,
        field(i, "i")?,
    ))
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .expect("child env var set by the parent")
        .parse()
        .expect("child env var is a number")
}

/// The child: a test that does nothing unless [`CHILD_ENV`] is set, in which case it writes
/// until killed.
#[test]
fn child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cycle = env_u64(CYCLE_ENV);
    let seed = env_u64(SEED_ENV);
    let mode = Mode::parse(&std::env::var(MODE_ENV).expect("mode set by the parent"));
    let acks_path = std::env::var(ACKS_ENV).expect("ack file set by the parent");
    let engine = Arc::new(LsmEngine::open(&dir, options()).expect("child opens the engine"));
    let acks = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&acks_path)
            .expect("child opens the ack file"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let acks = Arc::clone(&acks);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < CHILD_SAFETY_STOP {
                    let o = op(seed, mode, cycle, t, i);
                    let key = key_bytes(o.key);
                    match &o.value {
                        Some(value) => engine.put(&key, value, None).expect("child put"),
                        None => {
                            engine.delete(&key).expect("child delete");
                        }
                    }
                    // One write(2) per line on an O_APPEND file: lines never interleave.
                    let line = format!("{t} {i}\n");
                    (&*acks)
                        .write_all(line.as_bytes())
                        .expect("child writes an ack");
                    (&*acks).flush().expect("child flushes an ack");
                    i += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("child writer thread");
    }
    stop.store(true, Ordering::Relaxed);
}

/// The put a key holds, as `(cycle, thread, index)` of the op that wrote it; `None` if absent.
type State = Option<(u64, u64, u64)>;

/// Per key: its [`State`].
type Model = BTreeMap<u64, State>;

/// Reads the cycle's ack file: for each thread, how many operations were acknowledged. Checks
/// that each thread's acknowledged indexes are `0..n` in order. A last line without newline
/// (the child died inside the ack write) is ignored.
fn read_acks(path: &Path) -> Vec<u64> {
    let mut counts = vec![0u64; CHILD_THREADS as usize];
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).expect("ack file is UTF-8"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("failed to read {}: {e}", path.display()),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines() {
        let (t, i) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("malformed ack line {line:?}"));
        let t: usize = t.parse().expect("ack thread");
        let i: u64 = i.parse().expect("ack index");
        let count = counts.get_mut(t).expect("ack thread in range");
        assert_eq!(i, *count, "thread {t} acknowledged op {i} out of order");
        *count += 1;
    }
    counts
}

/// What key `k` may hold after the cycle: the state after its last acknowledged op, and the
/// result of the in-flight op of its thread if that targets `k`.
fn allowed_states(
    seed: u64,
    mode: Mode,
    cycle: u64,
    acked: &[u64],
    model: &Model,
) -> BTreeMap<u64, Vec<State>> {
    let mut expected: Model = model.clone();
    let mut in_flight: Model = BTreeMap::new();
    for (t, &n) in (0u64..).zip(acked) {
        for i in 0..n {
            let o = op(seed, mode, cycle, t, i);
            expected.insert(o.key, o.value.as_ref().map(|_| (cycle, t, i)));
        }
        let o = op(seed, mode, cycle, t, n);
        in_flight.insert(o.key, o.value.as_ref().map(|_| (cycle, t, n)));
    }
    (0..KEYS)
        .map(|k| {
            let mut states = vec![expected.get(&k).copied().flatten()];
            if let Some(s) = in_flight.get(&k) {
                states.push(*s);
            }
            (k, states)
        })
        .collect()
}

/// Reopens `dir`, checks every key against the allowed states, and returns the observed model.
fn verify(dir: &Path, seed: u64, mode: Mode, cycle: u64, acked: &[u64], model: &Model) -> Model {
    let allowed = allowed_states(seed, mode, cycle, acked, model);
    let engine = LsmEngine::open(dir, options())
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen after SIGKILL failed: {e}"));
    let mut observed = Model::new();
    for (&k, states) in &allowed {
        let got = engine
            .get(&key_bytes(k))
            .unwrap_or_else(|e| panic!("cycle {cycle}: get key {k} failed: {e}"));
        let identity = got.as_ref().map(|v| {
            let (key, c, t, i) = parse_value(&v.data).unwrap_or_else(|| {
                panic!("cycle {cycle}: key {k} holds a value never written: {v:?}")
            });
            let expect = op(seed, mode, c, t, i);
            assert!(
                key == k && expect.key == k && expect.value.as_deref() == Some(&v.data[..]),
                "cycle {cycle}: key {k} holds a value never written to it: {v:?}"
            );
            assert_eq!(v.expires_at_ms, None);
            (c, t, i)
        });
        assert!(
            states.contains(&identity),
            "cycle {cycle}: key {k} holds {identity:?} (cycle, thread, op), but only {states:?} \
             are possible (last acknowledged first, then the in-flight op); acks per thread \
             {acked:?}"
        );
        observed.insert(k, identity);
    }
    // Nothing outside the key space, and the scan agrees with the gets.
    let all = engine
        .scan(None, usize::MAX)
        .unwrap_or_else(|e| panic!("cycle {cycle}: scan failed: {e}"));
    for (key, value) in &all {
        let k = parse_key(key)
            .filter(|k| *k < KEYS)
            .unwrap_or_else(|| panic!("cycle {cycle}: scan found a key never written: {key:?}"));
        let identity = parse_value(&value.data).map(|(_, c, t, i)| (c, t, i));
        assert_eq!(
            observed.get(&k).copied().flatten(),
            identity,
            "cycle {cycle}: scan and get disagree on key {k}"
        );
    }
    let live = observed.values().filter(|s| s.is_some()).count();
    assert_eq!(all.len(), live, "cycle {cycle}: scan misses live keys");
    engine
        .close()
        .unwrap_or_else(|e| panic!("cycle {cycle}: close failed: {e}"));
    observed
}

fn table_counts(dir: &Path) -> Vec<usize> {
    let engine = LsmEngine::open(dir, options()).expect("final open");
    let version = engine.version();
    let counts = (0..NUM_LEVELS).map(|l| version.table_count(l)).collect();
    engine.close().expect("final close");
    counts
}

fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn crash_cycles(mode: Mode) {
    let seed = seed();
    eprintln!(
        "lsm_crash {}: seed {seed} (rerun with {SEED_ENV}={seed})",
        mode.name()
    );
    let db = tempfile::tempdir().expect("temp dir");
    let logs = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut rng = Rng(seed);
    let mut model: Model = (0..KEYS).map(|k| (k, None)).collect();
    let mut total_acks = 0u64;
    let started = Instant::now();
    for cycle in 0..CYCLES {
        let acks_path: PathBuf = logs.path().join(format!("acks-{cycle}.log"));
        let out_path = logs.path().join(format!("child-{cycle}.out"));
        let out = std::fs::File::create(&out_path).expect("child output file");
        let err = out.try_clone().expect("child output file");
        let mut child = Command::new(&exe)
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, db.path())
            .env(CYCLE_ENV, cycle.to_string())
            .env(SEED_ENV, seed.to_string())
            .env(MODE_ENV, mode.name())
            .env(ACKS_ENV, &acks_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the child");
        std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
        // SIGKILL; fails only if the child was already reaped, which cannot be the case here.
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("wait for the child");
        if status.code().is_some() {
            let output = std::fs::read_to_string(&out_path).unwrap_or_default();
            panic!("cycle {cycle}: the child exited on its own ({status}) instead of being killed:\n{output}");
        }
        let acked = read_acks(&acks_path);
        total_acks += acked.iter().sum::<u64>();
        model = verify(db.path(), seed, mode, cycle, &acked, &model);
    }
    let tables = table_counts(db.path());
    eprintln!(
        "lsm_crash {}: {CYCLES} cycles, {total_acks} acknowledged ops, tables per level \
         {tables:?}, {:.1} s",
        mode.name(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        total_acks > 1000,
        "too few writes to mean anything: {total_acks}"
    );
    assert!(
        tables.iter().skip(1).sum::<usize>() > 0,
        "no compaction ever wrote below L0: {tables:?}"
    );
}

#[test]
fn sigkill_during_puts_loses_no_acknowledged_write() {
    crash_cycles(Mode::Puts);
}

#[test]
fn sigkill_during_puts_and_deletes_loses_no_acknowledged_write() {
    crash_cycles(Mode::Mixed);
}
