//! Tests of the LSM engine: behaviour, recovery (WAL replay, tables and manifest), compaction,
//! concurrency, and a model test against a `BTreeMap`.

use std::collections::BTreeMap;
use std::error::Error;
use std::ops::Bound;
use std::path::Path;

use proptest::prelude::*;

use super::*;

pub(super) type TestResult = std::result::Result<(), Box<dyn Error>>;

/// An expiry far in the future (year 2096).
const FAR_FUTURE_MS: u64 = 4_000_000_000_000;

/// Waits until the wall clock has passed `t_ms` (an expiry time).
fn wait_past(t_ms: u64) {
    while now_ms() <= t_ms {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Options that make flushes and compactions happen after a few KiB of writes.
pub(super) fn tiny() -> LsmOptions {
    LsmOptions {
        sync: SyncPolicy::Never,
        memtable_bytes: 4 << 10,
        block_cache_bytes: 1 << 20,
        table: TableOptions {
            block_size_bytes: 512,
            ..TableOptions::default()
        },
        leveled: LeveledOptions {
            l0_compaction_trigger: 2,
            base_level_bytes: 8 << 10,
            level_size_multiplier: 4,
            target_table_bytes: 4 << 10,
            ..LeveledOptions::default()
        },
        ..LsmOptions::default()
    }
}

fn open(dir: &Path) -> Result<LsmEngine> {
    LsmEngine::open(dir, tiny())
}

pub(super) fn data(engine: &LsmEngine, key: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(engine.get(key)?.map(|v| v.data.to_vec()))
}

/// Runs `work(t)` for `t` in `0..threads`, each on a thread of its own, all at once, and
/// returns once every one has; the first error, or a panic, fails the caller.
fn on_threads(threads: usize, work: impl Fn(usize) -> Result<()> + Sync) -> TestResult {
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                scope.spawn(move || work(t))
            })
            .collect();
        for thread in running {
            thread.join().map_err(|_| "writer panicked")??;
        }
        Ok(())
    })
}

/// The `i`-th test key, `key000123`: keys sort in the order of `i`.
pub(super) fn key(i: usize) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

/// A put without expiry, for `write_many`, `write_batch` and `try_write_*`.
pub(super) fn put<'a>(key: &'a [u8], value: &'a [u8]) -> WriteOp<'a> {
    WriteOp::Put {
        key,
        value,
        expires_at_ms: None,
    }
}

fn table_count(engine: &LsmEngine) -> usize {
    let v = engine.version();
    (0..NUM_LEVELS).map(|l| v.table_count(l)).sum()
}

#[test]
fn put_get_delete_overwrite_ttl() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
    assert_eq!(engine.get(b"a")?, None);
    assert!(engine.is_empty()?);
    engine.put(b"a", b"1", None)?;
    engine.put(b"b", b"2", Some(FAR_FUTURE_MS))?;
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    assert_eq!(
        engine.get(b"b")?,
        Some(Value {
            data: "2".into(),
            expires_at_ms: Some(FAR_FUTURE_MS)
        })
    );
    engine.put(b"a", b"one", None)?;
    assert_eq!(data(&engine, b"a")?, Some(b"one".to_vec()));
    assert!(engine.delete(b"a")?);
    assert!(!engine.delete(b"a")?);
    assert!(!engine.delete(b"never")?);
    assert_eq!(engine.get(b"a")?, None);

    // An expiry in the past deletes; an expiring value disappears once its time comes.
    engine.put(b"b", b"gone", Some(1))?;
    assert_eq!(engine.get(b"b")?, None);
    assert!(!engine.delete(b"b")?);
    let soon = now_ms() + 50;
    engine.put(b"c", b"soon", Some(soon))?;
    assert!(engine.get(b"c")?.is_some());
    wait_past(soon);
    assert_eq!(engine.get(b"c")?, None);
    assert!(!engine.delete(b"c")?, "an expired key is not live");
    assert_eq!(engine.len()?, 0);

    // Batches answer as one op after another.
    let flags = engine.write_many(&[
        WriteOp::Put {
            key: b"x",
            value: b"1",
            expires_at_ms: None,
        },
        WriteOp::Delete { key: b"x" },
        WriteOp::Delete { key: b"x" },
        WriteOp::Put {
            key: b"y",
            value: b"2",
            expires_at_ms: None,
        },
    ])?;
    assert_eq!(flags, [false, true, false, false]);
    // A put that has already expired deletes what an earlier op of its batch wrote.
    let flags = engine.write_many(&[
        put(b"z", b"1"),
        WriteOp::Put {
            key: b"z",
            value: b"2",
            expires_at_ms: Some(1),
        },
    ])?;
    assert_eq!(flags, [false, false]);
    assert_eq!(engine.get(b"z")?, None);
    assert_eq!(engine.len()?, 1);
    let stats = engine.stats();
    assert_eq!(stats.backend, "lsm");
    assert!(stats.log_bytes > 0);
    engine.close()?;
    assert!(matches!(engine.get(b"y"), Err(StorageError::Closed)));
    assert!(matches!(
        engine.put(b"y", b"", None),
        Err(StorageError::Closed)
    ));
    assert!(matches!(engine.close(), Err(StorageError::Closed)));
    Ok(())
}

#[test]
fn scan_and_page_in_key_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    for i in (0..300).rev() {
        engine.put(&key(i), format!("v{i}").as_bytes(), None)?;
    }
    for i in (0..300).step_by(3) {
        engine.delete(&key(i))?;
    }
    engine.put(&key(1), b"expired", Some(1))?;
    let live: Vec<Vec<u8>> = (0..300)
        .filter(|i| i % 3 != 0 && *i != 1)
        .map(key)
        .collect();
    let page = engine.page(10, 5)?;
    assert_eq!(page.total, live.len() as u64);
    let got: Vec<Vec<u8>> = page.entries.iter().map(|(k, _)| k.to_vec()).collect();
    assert_eq!(got, live[10..15]);
    let scan = engine.scan(Some(&key(150)), 4)?;
    let got: Vec<Vec<u8>> = scan.iter().map(|(k, _)| k.to_vec()).collect();
    let want: Vec<Vec<u8>> = live
        .iter()
        .filter(|k| **k >= key(150))
        .take(4)
        .cloned()
        .collect();
    assert_eq!(got, want);
    assert_eq!(engine.scan(None, 0)?, vec![]);
    assert_eq!(engine.len()?, live.len() as u64);
    Ok(())
}

#[test]
fn reopen_replays_the_wal() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
        engine.put(b"a", b"1", None)?;
        engine.put(b"b", b"2", Some(FAR_FUTURE_MS))?;
        engine.put(b"c", b"3", None)?;
        engine.delete(b"c")?;
        engine.close()?;
    }
    let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    assert_eq!(
        engine.get(b"b")?.and_then(|v| v.expires_at_ms),
        Some(FAR_FUTURE_MS)
    );
    assert_eq!(engine.get(b"c")?, None);
    assert_eq!(table_count(&engine), 0, "nothing was flushed");
    // Sequence numbers continue: a new write shadows the replayed one.
    engine.put(b"a", b"2", None)?;
    drop(engine); // no close: drop fsyncs best effort, the WAL has everything
    let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
    assert_eq!(data(&engine, b"a")?, Some(b"2".to_vec()));
    Ok(())
}

#[test]
fn reopen_after_many_flushes_and_compactions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut model = BTreeMap::new();
    {
        let engine = open(dir.path())?;
        for round in 0..4 {
            for i in 0..600 {
                let k = key((i * 7 + round * 13) % 900);
                let v = format!("round{round}-{i}").into_bytes();
                engine.put(&k, &v, None)?;
                model.insert(k, v);
            }
            for i in (round..900).step_by(11) {
                let k = key(i);
                assert_eq!(engine.delete(&k)?, model.remove(&k).is_some());
            }
        }
        engine.compact()?;
        let counters = engine.counters();
        assert!(counters.flushes > 10, "{counters:?}");
        assert!(counters.compactions > 0, "{counters:?}");
        let version = engine.version();
        assert!(
            version.table_count(1) > 0 && version.table_count(2) > 0,
            "{version:?}"
        );
        engine.close()?;
    }
    let engine = open(dir.path())?;
    for i in 0..900 {
        let k = key(i);
        assert_eq!(data(&engine, &k)?, model.get(&k).cloned(), "key {i}");
    }
    let all = engine.scan(None, usize::MAX)?;
    let got: Vec<(Vec<u8>, Vec<u8>)> = all
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.data.to_vec()))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
    assert_eq!(got, want);
    // Only live table files and the active WAL segments remain.
    let files = std::fs::read_dir(dir.path().join("tables"))?.count();
    assert_eq!(files, table_count(&engine));
    Ok(())
}

#[test]
fn deletes_shadow_older_values_across_levels() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = LsmOptions {
        leveled: LeveledOptions {
            l0_compaction_trigger: 100, // keep flushed tables in L0 until asked
            ..tiny().leveled
        },
        memtable_bytes: 1 << 20, // only explicit flushes
        ..tiny()
    };
    let engine = LsmEngine::open(dir.path(), options)?;
    for i in 0..50 {
        engine.put(&key(i), b"old", None)?;
    }
    engine.flush()?;
    for i in (0..50).step_by(2) {
        assert!(engine.delete(&key(i))?);
    }
    engine.flush()?;
    engine.put(&key(4), b"new", None)?;
    engine.flush()?;
    assert_eq!(engine.version().table_count(0), 3);
    for i in 0..50 {
        let want = match i {
            4 => Some(b"new".to_vec()),
            i if i % 2 == 0 => None,
            _ => Some(b"old".to_vec()),
        };
        assert_eq!(data(&engine, &key(i))?, want, "key {i}");
    }
    assert_eq!(engine.len()?, 26);
    engine.close()?;

    // Compacted into one level, and then with the newest values in L0 above older ones in L1.
    let engine = open(dir.path())?;
    engine.compact()?;
    assert_eq!(engine.version().table_count(0), 0);
    engine.put(&key(5), b"newer", None)?;
    engine.delete(&key(7))?;
    engine.flush()?;
    assert_eq!(data(&engine, &key(5))?, Some(b"newer".to_vec()));
    assert_eq!(data(&engine, &key(7))?, None);
    assert_eq!(data(&engine, &key(2))?, None);
    assert_eq!(data(&engine, &key(4))?, Some(b"new".to_vec()));
    assert_eq!(engine.len()?, 25);
    Ok(())
}

#[test]
fn compaction_reduces_tables_and_drops_tombstones_at_the_bottom() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = LsmOptions {
        leveled: LeveledOptions {
            l0_compaction_trigger: 8,
            target_table_bytes: 1 << 20,
            base_level_bytes: 1 << 20,
            ..tiny().leveled
        },
        memtable_bytes: 1 << 20, // only explicit flushes
        ..tiny()
    };
    let engine = LsmEngine::open(dir.path(), options)?;
    for round in 0..7 {
        for i in 0..40 {
            engine.put(&key(i), format!("r{round}").as_bytes(), None)?;
        }
        engine.flush()?;
    }
    for i in 0..40 {
        engine.delete(&key(i))?;
    }
    engine.put(&key(0), b"survivor", None)?;
    let expiry = now_ms() + 20;
    engine.put(&key(1), b"expiring", Some(expiry))?;
    wait_past(expiry);
    engine.flush()?; // the eighth L0 table triggers a merge into L1, the bottom here
    engine.compact()?;
    let version = engine.version();
    assert_eq!(version.table_count(0), 0);
    assert_eq!(table_count(&engine), 1, "8 tables merged into 1");
    let entries: u64 = version.level(1).iter().map(|t| t.entry_count).sum();
    assert_eq!(
        entries, 1,
        "tombstones, shadowed and expired versions are gone"
    );
    assert_eq!(engine.counters().expired_reclaimed, 1);
    assert_eq!(data(&engine, &key(0))?, Some(b"survivor".to_vec()));
    assert_eq!(engine.len()?, 1);
    Ok(())
}

#[test]
fn concurrent_writers_then_verify() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = LsmOptions {
        sync: SyncPolicy::Always,
        ..tiny()
    };
    let engine = Arc::new(LsmEngine::open(dir.path(), options.clone())?);
    on_threads(4, |t| {
        for i in 0..400 {
            let k = key(t * 1000 + i);
            engine.put(&k, format!("t{t}-{i}").as_bytes(), None)?;
            if i % 5 == 0 {
                engine.delete(&k)?;
            }
            // Readers run alongside writers, flushes and compactions.
            if i % 50 == 0 {
                engine.scan(None, 10)?;
            }
        }
        Ok(())
    })?;
    let verify = |engine: &LsmEngine| -> TestResult {
        for t in 0..4 {
            for i in 0..400 {
                let want = (i % 5 != 0).then(|| format!("t{t}-{i}").into_bytes());
                assert_eq!(data(engine, &key(t * 1000 + i))?, want);
            }
        }
        assert_eq!(engine.len()?, 4 * 320);
        Ok(())
    };
    verify(&engine)?;
    assert!(engine.counters().flushes > 0);
    engine.close()?;
    let engine = LsmEngine::open(dir.path(), options)?;
    verify(&engine)
}

/// Batches from four threads whose keys interleave (thread `t` writes every fourth key), so
/// that each batch's inserts, planned before the writer lock, land between other threads'
/// inserts made since, and plans made on a memtable that is frozen before the batch is written
/// go unused. Every key ends with its thread's last value, in order, before and after reopening;
/// with memtables of 4 KiB (a freeze every few batches) and of 1 MiB (none).
#[test]
fn concurrent_batches_land_in_order() -> TestResult {
    for memtable_bytes in [4 << 10, 1 << 20] {
        let dir = tempfile::tempdir()?;
        let options = LsmOptions {
            memtable_bytes,
            ..tiny()
        };
        let engine = Arc::new(LsmEngine::open(dir.path(), options.clone())?);
        on_threads(4, |t| {
            for round in 0..3 {
                let value = format!("t{t}-r{round}");
                let keys: Vec<Vec<u8>> = (0..400).map(|i| key(i * 4 + t)).collect();
                // Each batch in a scattered order, as a pipeline's keys come.
                for (b, batch) in keys.chunks(8).enumerate() {
                    let mut ops: Vec<WriteOp<'_>> =
                        batch.iter().map(|k| put(k, value.as_bytes())).collect();
                    ops.rotate_left(b % 8);
                    if b % 2 == 0 {
                        if let Some(done) = engine.try_write_many_now(&ops) {
                            done?;
                            continue;
                        }
                    }
                    engine.write_many(&ops)?;
                }
            }
            Ok(())
        })?;
        let verify = |engine: &LsmEngine| -> TestResult {
            let all = engine.scan(None, 10_000)?;
            let keys: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.to_vec()).collect();
            assert_eq!(keys, (0..1600).map(key).collect::<Vec<_>>());
            for (i, (_, value)) in all.iter().enumerate() {
                assert_eq!(&value.data[..], format!("t{}-r2", i % 4).as_bytes());
            }
            for i in (0..1600).step_by(7) {
                assert_eq!(
                    data(engine, &key(i))?,
                    Some(format!("t{}-r2", i % 4).into_bytes())
                );
            }
            Ok(())
        };
        verify(&engine)?;
        engine.close()?;
        let engine = LsmEngine::open(dir.path(), options)?;
        verify(&engine)?;
    }
    Ok(())
}

#[test]
fn orphan_tables_are_removed_on_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = open(dir.path())?;
        engine.put(b"a", b"1", None)?;
        engine.flush()?;
        engine.close()?;
    }
    let orphan = dir.path().join("tables").join(table_file_name(999));
    std::fs::write(&orphan, b"half-written")?;
    let engine = open(dir.path())?;
    assert!(!orphan.exists());
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    Ok(())
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    PutExpired(u8),
    Delete(u8),
    Get(u8),
    Page(u8, u8),
    Scan(u8, u8),
    /// Many puts of big values, enough for flushes and compactions.
    Volume(u8),
    Flush,
    Reopen,
    /// Range `[lo, hi)` forward, or backward if the flag is set, at now.
    Range(u8, u8, bool),
    /// Take a snapshot (the model's state is remembered with it).
    Snapshot,
    /// Check snapshot `i % count`: a get and a range (forward or backward) at it.
    AtSnapshot(u8, u8, u8, bool),
    /// Release the oldest snapshot.
    DropSnapshot,
    /// An atomic batch: a put of the first key and a delete of the second.
    Batch(u8, u8, u8),
    CompactRange(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..40u8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0..40u8).prop_map(Op::PutExpired),
        3 => (0..40u8).prop_map(Op::Delete),
        3 => (0..40u8).prop_map(Op::Get),
        1 => (0..40u8, 0..12u8).prop_map(|(o, l)| Op::Page(o, l)),
        1 => (0..40u8, 0..12u8).prop_map(|(s, l)| Op::Scan(s, l)),
        1 => any::<u8>().prop_map(Op::Volume),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        2 => (0..42u8, 0..42u8, any::<bool>()).prop_map(|(l, h, r)| Op::Range(l, h, r)),
        1 => Just(Op::Snapshot),
        2 => (any::<u8>(), 0..42u8, 0..42u8, any::<bool>())
            .prop_map(|(i, l, h, r)| Op::AtSnapshot(i, l, h, r)),
        1 => Just(Op::DropSnapshot),
        2 => (0..40u8, 0..40u8, any::<u8>()).prop_map(|(a, b, v)| Op::Batch(a, b, v)),
        1 => (0..42u8, 0..42u8).prop_map(|(l, h)| Op::CompactRange(l, h)),
    ]
}

fn model_key(k: u8) -> Vec<u8> {
    format!("k{k:03}").into_bytes()
}

fn run_model(ops: &[Op]) -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut engine = open(dir.path())?;
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    type Model = BTreeMap<Vec<u8>, Vec<u8>>;
    let mut snapshots: Vec<(Snapshot, Model)> = Vec::new();
    let check_range = |engine: &LsmEngine,
                       model: &BTreeMap<Vec<u8>, Vec<u8>>,
                       snapshot: Option<&Snapshot>,
                       (lo, hi, rev): (u8, u8, bool)|
     -> TestResult {
        let (lo, hi) = (model_key(lo), model_key(hi));
        let it = engine.range(Bound::Included(&lo), Bound::Excluded(&hi), snapshot)?;
        let mut want: Vec<(Vec<u8>, Vec<u8>)> = if lo <= hi {
            model
                .range(lo.clone()..hi.clone())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let got = if rev {
            want.reverse();
            it.rev()
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.data.to_vec())))
                .collect::<Result<Vec<_>>>()?
        } else {
            it.map(|e| e.map(|(k, v)| (k.to_vec(), v.data.to_vec())))
                .collect::<Result<Vec<_>>>()?
        };
        assert_eq!(got, want);
        Ok(())
    };
    for op in ops {
        match *op {
            Op::Range(lo, hi, rev) => check_range(&engine, &model, None, (lo, hi, rev))?,
            Op::Snapshot => snapshots.push((engine.snapshot(), model.clone())),
            Op::AtSnapshot(i, lo, hi, rev) => {
                if !snapshots.is_empty() {
                    let (snapshot, at) = &snapshots[usize::from(i) % snapshots.len()];
                    let got = engine.get_at(snapshot, &model_key(lo))?;
                    assert_eq!(
                        got.map(|v| v.data.to_vec()),
                        at.get(&model_key(lo)).cloned()
                    );
                    check_range(&engine, at, Some(snapshot), (lo, hi, rev))?;
                }
            }
            Op::DropSnapshot => {
                if !snapshots.is_empty() {
                    snapshots.remove(0);
                }
            }
            Op::Batch(a, b, v) => {
                let value = vec![v; usize::from(v % 32)];
                let (ka, kb) = (model_key(a), model_key(b));
                engine.write_batch(&[
                    WriteOp::Put {
                        key: &ka,
                        value: &value,
                        expires_at_ms: None,
                    },
                    WriteOp::Delete { key: &kb },
                ])?;
                model.insert(ka, value);
                model.remove(&kb);
            }
            Op::CompactRange(lo, hi) => {
                engine.compact_range(Some(&model_key(lo)), Some(&model_key(hi)))?;
            }
            Op::Put(k, v) => {
                let value = vec![v; usize::from(v % 64)];
                engine.put(&model_key(k), &value, None)?;
                model.insert(model_key(k), value);
            }
            Op::PutExpired(k) => {
                engine.put(&model_key(k), b"x", Some(1))?;
                model.remove(&model_key(k));
            }
            Op::Delete(k) => {
                let removed = engine.delete(&model_key(k))?;
                assert_eq!(removed, model.remove(&model_key(k)).is_some());
            }
            Op::Get(k) => {
                assert_eq!(
                    data(&engine, &model_key(k))?,
                    model.get(&model_key(k)).cloned()
                );
            }
            Op::Page(offset, limit) => {
                let page = engine.page(u64::from(offset), usize::from(limit))?;
                assert_eq!(page.total, model.len() as u64);
                let got: Vec<(Vec<u8>, Vec<u8>)> = page
                    .entries
                    .into_iter()
                    .map(|(k, v)| (k.to_vec(), v.data.to_vec()))
                    .collect();
                let want: Vec<(Vec<u8>, Vec<u8>)> = model
                    .iter()
                    .skip(usize::from(offset))
                    .take(usize::from(limit))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want);
            }
            Op::Scan(start, limit) => {
                let start = model_key(start);
                let got: Vec<Vec<u8>> = engine
                    .scan(Some(&start), usize::from(limit))?
                    .into_iter()
                    .map(|(k, _)| k.to_vec())
                    .collect();
                let want: Vec<Vec<u8>> = model
                    .range(start..)
                    .take(usize::from(limit))
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(got, want);
            }
            Op::Volume(seed) => {
                for i in 0..60u8 {
                    let k = model_key(seed.wrapping_add(i.wrapping_mul(7)) % 40);
                    let value = vec![seed ^ i; 100];
                    engine.put(&k, &value, None)?;
                    model.insert(k, value);
                }
            }
            Op::Flush => engine.flush()?,
            Op::Reopen => {
                snapshots.clear();
                engine.close()?;
                drop(engine);
                engine = open(dir.path())?;
            }
        }
    }
    let got: Vec<Vec<u8>> = engine
        .scan(None, usize::MAX)?
        .into_iter()
        .map(|(k, _)| k.to_vec())
        .collect();
    assert_eq!(got, model.keys().cloned().collect::<Vec<_>>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn model_matches_btreemap(ops in proptest::collection::vec(op(), 1..120)) {
        if let Err(e) = run_model(&ops) {
            return Err(TestCaseError::fail(e.to_string()));
        }
    }
}
