//! Concurrency test of the LSM engine (issue 4): writer threads and reader threads work on one
//! engine at once while a tiny memtable keeps the background thread flushing and compacting,
//! and a maintenance thread calls `flush` and `compact` on top.
//!
//! Writers own disjoint key ranges. Each key has its own version counter `v = 1, 2, …`; the
//! `v`-th write of a key is a put or a delete as decided by the pure function [`is_delete`], and
//! a put stores [`value`]`(key, v)`. Around each write the writer publishes, per key, `started`
//! (before the call) and `completed` (after it returns). A reader loads `completed` before a
//! read and `started` after it, so the answer must be the result of some write `v` with
//! `completed <= v <= started`: never a value that was not written, never an older value than
//! one completed before the read began. Readers also check that the versions they see of a key
//! never go backwards. At the end every key equals its writer's model, after a full compaction
//! and after reopening.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use limedb_storage::lsm::compaction::LeveledOptions;
use limedb_storage::lsm::sstable::TableOptions;
use limedb_storage::{Engine, LsmEngine, LsmOptions, SyncPolicy, WriteOp};

const WRITERS: u64 = 4;
const READERS: u64 = 4;
const KEYS_PER_WRITER: u64 = 64;
const KEYS: u64 = WRITERS * KEYS_PER_WRITER;
/// Write operations per writer (a batch of three counts as one).
const WRITES_PER_WRITER: u64 = 5_000;
/// Read operations per reader at least (readers go on while writers run, up to
/// [`MAX_READS_PER_READER`]); every [`SCAN_EVERY`]-th is a full scan.
const READS_PER_READER: u64 = 3_000;
const MAX_READS_PER_READER: u64 = 200_000;
const SCAN_EVERY: u64 = 100;

fn options() -> LsmOptions {
    LsmOptions {
        sync: SyncPolicy::Never,
        memtable_bytes: 32 << 10,
        block_cache_bytes: 256 << 10,
        table: TableOptions {
            block_size_bytes: 512,
            ..TableOptions::default()
        },
        leveled: LeveledOptions {
            l0_compaction_trigger: 2,
            base_level_bytes: 16 << 10,
            level_size_multiplier: 4,
            target_table_bytes: 8 << 10,
            ..LeveledOptions::default()
        },
        ..LsmOptions::default()
    }
}

/// splitmix64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:04}").into_bytes()
}

fn parse_key(bytes: &[u8]) -> Option<u64> {
    let n = std::str::from_utf8(bytes).ok()?.strip_prefix("key-")?;
    let k: u64 = n.parse().ok()?;
    (n.len() == 4 && k < KEYS).then_some(k)
}

/// Whether the `v`-th write of key `k` is a delete (about one in five; never the first).
fn is_delete(k: u64, v: u64) -> bool {
    v > 1 && mix(k << 32 ^ v).is_multiple_of(5)
}

/// The value the `v`-th write of key `k` puts.
fn value(k: u64, v: u64) -> Vec<u8> {
    let mut out = format!("k={k} v={v} ").into_bytes();
    let mut x = mix(k ^ v << 20);
    for _ in 0..(40 + x % 80) {
        x = mix(x);
        out.push(b'a' + (x % 26) as u8);
    }
    out
}

/// The version named in a stored value of key `k`, if the value is exactly what [`value`]
/// writes for it.
fn version_of(k: u64, data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    let mut fields = text.split(' ');
    let named_k: u64 = fields.next()?.strip_prefix("k=")?.parse().ok()?;
    let v: u64 = fields.next()?.strip_prefix("v=")?.parse().ok()?;
    (named_k == k && value(k, v) == data).then_some(v)
}

/// Per key: the version of the last write started and of the last write completed.
struct Published {
    started: Vec<AtomicU64>,
    completed: Vec<AtomicU64>,
    /// The most L0 tables a reader saw (reported, not asserted).
    max_l0_tables: AtomicUsize,
}

impl Published {
    fn new() -> Self {
        Published {
            started: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            completed: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            max_l0_tables: AtomicUsize::new(0),
        }
    }

    fn completed(&self, k: u64) -> u64 {
        self.completed
            .get(k as usize)
            .map_or(0, |a| a.load(Ordering::SeqCst))
    }

    fn started(&self, k: u64) -> u64 {
        self.started
            .get(k as usize)
            .map_or(0, |a| a.load(Ordering::SeqCst))
    }
}

/// Checks one observation of key `k`: `seen` is the version read (`None` for absent), `low` the
/// completed version loaded before the read, `high` the started version loaded after it.
fn check_observation(k: u64, seen: Option<u64>, low: u64, high: u64, what: &str) {
    match seen {
        Some(v) => assert!(
            low <= v && v <= high && !is_delete(k, v),
            "{what}: key {k} read version {v}, but only writes {low}..={high} could be seen"
        ),
        None => assert!(
            low == 0 || (low..=high).any(|d| is_delete(k, d)),
            "{what}: key {k} read as absent, but write {low} (a put) had completed and no \
             delete in {low}..={high} had started"
        ),
    }
}

fn writer(engine: &LsmEngine, published: &Published, w: u64) -> BTreeMap<u64, Option<u64>> {
    let mut rng = Rng(mix(0xA11CE ^ w));
    let mut versions = vec![0u64; KEYS_PER_WRITER as usize];
    let mut model = BTreeMap::new();
    let next = |j: u64, versions: &mut Vec<u64>| -> (u64, u64) {
        let slot = versions.get_mut(j as usize).expect("key slot");
        *slot += 1;
        (w * KEYS_PER_WRITER + j, *slot)
    };
    for n in 0..WRITES_PER_WRITER {
        // Every 10th operation is a batch of three distinct keys, the others single writes.
        let width = if n % 10 == 9 { 3 } else { 1 };
        let first = rng.below(KEYS_PER_WRITER - width + 1);
        let writes: Vec<(u64, u64)> = (first..first + width)
            .map(|j| next(j, &mut versions))
            .collect();
        for &(k, v) in &writes {
            published
                .started
                .get(k as usize)
                .expect("key")
                .store(v, Ordering::SeqCst);
        }
        let keys: Vec<Vec<u8>> = writes.iter().map(|&(k, _)| key(k)).collect();
        let values: Vec<Vec<u8>> = writes.iter().map(|&(k, v)| value(k, v)).collect();
        let ops: Vec<WriteOp<'_>> = writes
            .iter()
            .zip(keys.iter().zip(&values))
            .map(|(&(k, v), (key, value))| {
                if is_delete(k, v) {
                    WriteOp::Delete { key }
                } else {
                    WriteOp::Put {
                        key,
                        value,
                        expires_at_ms: None,
                    }
                }
            })
            .collect();
        // Single writes take the inline path when it allows, as a shard does.
        let inline = match ops.as_slice() {
            [op] => engine.try_write_now(*op).map(|r| r.expect("try_write_now")),
            _ => None,
        };
        match ops.as_slice() {
            [WriteOp::Put { .. }] if inline.is_some() => {}
            [WriteOp::Put { key, value, .. }] => engine.put(key, value, None).expect("put"),
            [WriteOp::Delete { key }] => {
                let removed = match inline {
                    Some(removed) => removed,
                    None => engine.delete(key).expect("delete"),
                };
                let (k, _) = *writes.first().expect("one write");
                let was_live = model.get(&k).copied().flatten().is_some();
                assert_eq!(removed, was_live, "delete of key {k} answered wrongly");
            }
            _ => {
                engine.write_many(&ops).expect("write_many");
            }
        }
        for &(k, v) in &writes {
            published
                .completed
                .get(k as usize)
                .expect("key")
                .store(v, Ordering::SeqCst);
            model.insert(k, (!is_delete(k, v)).then_some(v));
        }
    }
    model
}

fn reader(engine: &LsmEngine, published: &Published, writers_done: &AtomicBool, r: u64) -> u64 {
    let mut rng = Rng(mix(0xBEEF ^ r));
    let mut last_seen = vec![0u64; KEYS as usize];
    let mut n = 0;
    while n < MAX_READS_PER_READER && (n < READS_PER_READER || !writers_done.load(Ordering::SeqCst))
    {
        n += 1;
        if n % SCAN_EVERY == SCAN_EVERY - 1 {
            published
                .max_l0_tables
                .fetch_max(engine.version().table_count(0), Ordering::Relaxed);
            let low: Vec<u64> = (0..KEYS).map(|k| published.completed(k)).collect();
            let entries = engine.scan(None, usize::MAX).expect("scan");
            let high: Vec<u64> = (0..KEYS).map(|k| published.started(k)).collect();
            let mut seen: Vec<Option<u64>> = vec![None; KEYS as usize];
            let mut previous: Option<u64> = None;
            for (key, v) in &entries {
                let k = parse_key(key)
                    .unwrap_or_else(|| panic!("scan returned a key never written: {key:?}"));
                assert!(previous < Some(k), "scan out of order at key {k}");
                previous = Some(k);
                let version = version_of(k, &v.data)
                    .unwrap_or_else(|| panic!("scan: key {k} holds a value never written: {v:?}"));
                *seen.get_mut(k as usize).expect("key") = Some(version);
            }
            for k in 0..KEYS {
                let i = k as usize;
                let (s, lo, hi) = (
                    *seen.get(i).expect("key"),
                    *low.get(i).expect("key"),
                    *high.get(i).expect("key"),
                );
                check_observation(k, s, lo, hi, "scan");
            }
            continue;
        }
        let k = rng.below(KEYS);
        let low = published.completed(k);
        // Half the reads take the no-I/O path when it answers, as a shard does.
        let got = match (n % 2 == 0).then(|| engine.try_get_now(&key(k))).flatten() {
            Some(found) => found.expect("try_get_now"),
            None => engine.get(&key(k)).expect("get"),
        };
        let high = published.started(k);
        let seen = got.map(|v| {
            version_of(k, &v.data)
                .unwrap_or_else(|| panic!("get: key {k} holds a value never written: {v:?}"))
        });
        check_observation(k, seen, low, high, "get");
        if let Some(v) = seen {
            let last = last_seen.get_mut(k as usize).expect("key");
            assert!(
                v >= *last,
                "reader {r}: key {k} went back from version {last} to {v}"
            );
            *last = v;
        }
    }
    n
}

fn assert_matches_model(engine: &LsmEngine, model: &BTreeMap<u64, Option<u64>>, when: &str) {
    for k in 0..KEYS {
        let expected = model.get(&k).copied().flatten();
        let got = engine
            .get(&key(k))
            .unwrap_or_else(|e| panic!("{when}: get key {k}: {e}"))
            .map(|v| version_of(k, &v.data).unwrap_or_else(|| panic!("{when}: bad value {v:?}")));
        assert_eq!(got, expected, "{when}: key {k}");
    }
    let live = model.values().filter(|v| v.is_some()).count() as u64;
    assert_eq!(engine.len().expect("len"), live, "{when}: len");
    let scanned: Vec<(u64, u64)> = engine
        .scan(None, usize::MAX)
        .expect("scan")
        .iter()
        .map(|(k, v)| {
            let k = parse_key(k).expect("known key");
            (k, version_of(k, &v.data).expect("known value"))
        })
        .collect();
    let expected: Vec<(u64, u64)> = model
        .iter()
        .filter_map(|(&k, v)| v.map(|v| (k, v)))
        .collect();
    assert_eq!(scanned, expected, "{when}: scan");
}

#[test]
fn readers_and_writers_with_background_flushes_and_compactions_agree_with_the_model() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Arc::new(LsmEngine::open(dir.path(), options()).expect("open"));
    let published = Arc::new(Published::new());
    let writers_done = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new((WRITERS + READERS + 1) as usize));

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (engine, published, barrier) = (
                Arc::clone(&engine),
                Arc::clone(&published),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                writer(&engine, &published, w)
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (engine, published, done, barrier) = (
                Arc::clone(&engine),
                Arc::clone(&published),
                Arc::clone(&writers_done),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                reader(&engine, &published, &done, r)
            })
        })
        .collect();
    // Explicit flushes and compactions on top of the background ones, until the writers end.
    let maintenance = {
        let (engine, done, barrier) = (
            Arc::clone(&engine),
            Arc::clone(&writers_done),
            Arc::clone(&barrier),
        );
        std::thread::spawn(move || {
            barrier.wait();
            let mut rounds = 0u64;
            while !done.load(Ordering::SeqCst) {
                // `compact` waits until the tree is at rest, so it returns only once the
                // writers pause; mostly flush.
                if rounds % 8 == 7 {
                    engine.compact().expect("compact");
                } else {
                    engine.flush().expect("flush");
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            rounds
        })
    };

    let mut model = BTreeMap::new();
    for w in writers {
        model.extend(w.join().expect("writer thread"));
    }
    writers_done.store(true, Ordering::SeqCst);
    let reads: u64 = readers
        .into_iter()
        .map(|r| r.join().expect("reader thread"))
        .sum();
    let rounds = maintenance.join().expect("maintenance thread");
    for k in 0..KEYS {
        model.entry(k).or_insert(None);
    }

    assert_matches_model(&engine, &model, "after the run");
    let counters = engine.counters();
    let l0_tables = engine.version().table_count(0);
    engine.compact().expect("final compact");
    assert_matches_model(&engine, &model, "after a full compaction");
    engine.close().expect("close");
    let engine = LsmEngine::open(dir.path(), options()).expect("reopen");
    assert_matches_model(&engine, &model, "after reopen");
    engine.close().expect("close");

    eprintln!(
        "lsm_concurrency: {counters:?}, {l0_tables} L0 tables after the run (at most {} seen), \
         {rounds} maintenance rounds, {reads} reads, {:.1} s",
        published.max_l0_tables.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    assert!(counters.flushes > 10, "too few flushes: {counters:?}");
    assert!(counters.compactions > 0, "no compactions: {counters:?}");
}
