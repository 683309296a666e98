//! Unit and model tests for the memory engine: behaviour, recovery from torn and corrupt logs,
//! rewrite, group commit and poisoning.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

type TestResult = std::result::Result<(), Box<dyn Error>>;

/// An expiry far in the future (year 2096).
const FAR_FUTURE_MS: u64 = 4_000_000_000_000;

fn options(sync: SyncPolicy) -> MemoryOptions {
    MemoryOptions {
        sync,
        reap_interval: Duration::from_millis(5),
        ..MemoryOptions::default()
    }
}

fn open(dir: &Path) -> Result<MemoryEngine> {
    MemoryEngine::open(dir, options(SyncPolicy::Never))
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(log::LOG_FILE_NAME)
}

fn data(engine: &MemoryEngine, key: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(engine.get(key)?.map(|v| v.data.to_vec()))
}

fn keys(entries: &[(Bytes, Value)]) -> Vec<&[u8]> {
    entries.iter().map(|(k, _)| k.as_ref()).collect()
}

/// Polls `cond` every few ms for up to five seconds.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

#[test]
fn put_get_delete_overwrite() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    assert_eq!(engine.get(b"a")?, None);
    engine.put(b"a", b"1", None)?;
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    engine.put(b"a", b"22", None)?;
    assert_eq!(data(&engine, b"a")?, Some(b"22".to_vec()));
    engine.put(b"", b"empty key", None)?;
    assert_eq!(data(&engine, b"")?, Some(b"empty key".to_vec()));
    assert_eq!(engine.len()?, 2);
    assert!(engine.delete(b"a")?);
    assert!(!engine.delete(b"a")?);
    assert!(!engine.delete(b"never")?);
    assert_eq!(engine.get(b"a")?, None);
    assert_eq!(engine.len()?, 1);
    let stats = engine.stats();
    assert_eq!(stats.backend, "memory");
    assert_eq!(stats.keys, 1);
    assert_eq!(stats.live_bytes, 9);
    Ok(())
}

#[test]
fn page_orders_offsets_and_totals() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    for k in ["d", "b", "a", "e", "c"] {
        engine.put(k.as_bytes(), b"v", None)?;
    }
    engine.put(b"bb", b"v", Some(1))?; // already expired: not listed
    let page = engine.page(0, 10)?;
    assert_eq!(keys(&page.entries), [b"a", b"b", b"c", b"d", b"e"]);
    assert_eq!(page.total, 5);
    let page = engine.page(1, 2)?;
    assert_eq!(keys(&page.entries), [b"b", b"c"]);
    assert_eq!(page.total, 5);
    let page = engine.page(5, 2)?;
    assert!(page.entries.is_empty());
    assert_eq!(page.total, 5);
    assert!(engine.page(u64::MAX, 1)?.entries.is_empty());
    assert!(engine.page(0, 0)?.entries.is_empty());
    Ok(())
}

#[test]
fn scan_from_start_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    for k in ["apple", "banana", "cherry", "date"] {
        engine.put(k.as_bytes(), k.as_bytes(), None)?;
    }
    assert_eq!(
        keys(&engine.scan(Some(b"b"), 2)?),
        [b"banana".as_slice(), b"cherry"]
    );
    assert_eq!(
        keys(&engine.scan(Some(b"cherry"), 10)?),
        [b"cherry".as_slice(), b"date"]
    );
    assert_eq!(keys(&engine.scan(None, 1)?), [b"apple"]);
    assert!(engine.scan(Some(b"zzz"), 10)?.is_empty());
    assert!(engine.scan(None, 0)?.is_empty());
    Ok(())
}

#[test]
fn expired_keys_read_absent_and_are_not_counted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    engine.put(b"live", b"1", Some(FAR_FUTURE_MS))?;
    engine.put(b"past", b"1", Some(now_ms() - 1000))?;
    engine.put(b"zero", b"1", Some(0))?;
    assert_eq!(engine.get(b"past")?, None);
    assert_eq!(engine.get(b"zero")?, None);
    assert_eq!(
        engine.get(b"live")?.and_then(|v| v.expires_at_ms),
        Some(FAR_FUTURE_MS)
    );
    assert_eq!(engine.len()?, 1);
    // A put with a past expiry over a live key removes it.
    engine.put(b"live", b"2", Some(1))?;
    assert_eq!(engine.get(b"live")?, None);
    assert_eq!(engine.len()?, 0);
    drop(engine);
    let engine = open(dir.path())?;
    assert_eq!(engine.len()?, 0);
    Ok(())
}

#[test]
fn key_expiring_soon_disappears_and_is_reclaimed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    engine.put(b"soon", b"x", Some(now_ms() + 50))?;
    engine.put(b"stays", b"y", None)?;
    assert!(engine.get(b"soon")?.is_some());
    assert!(wait_for(|| matches!(engine.get(b"soon"), Ok(None))));
    assert_eq!(engine.len()?, 1);
    assert!(wait_for(|| engine.stats().expired_reclaimed == 1));
    assert!(!read(&engine.inner.state)
        .map
        .contains_key(b"soon".as_slice()));
    assert!(read(&engine.inner.state).ttl.is_empty());
    assert!(!engine.delete(b"soon")?);
    Ok(())
}

#[test]
fn reopen_keeps_data_ttls_and_deletes() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = open(dir.path())?;
        engine.put(b"a", b"1", None)?;
        engine.put(b"b", b"2", Some(FAR_FUTURE_MS))?;
        engine.put(b"c", b"3", None)?;
        engine.put(b"c", b"33", None)?;
        assert!(engine.delete(b"a")?);
        engine.close()?;
    }
    let engine = open(dir.path())?;
    assert_eq!(engine.get(b"a")?, None);
    assert_eq!(
        engine.get(b"b")?,
        Some(Value {
            data: Bytes::from_static(b"2"),
            expires_at_ms: Some(FAR_FUTURE_MS)
        })
    );
    assert_eq!(data(&engine, b"c")?, Some(b"33".to_vec()));
    assert_eq!(engine.len()?, 2);
    Ok(())
}

#[test]
fn dropped_without_close_keeps_acknowledged_writes() -> TestResult {
    // Writes reach the OS before put returns, so a process that never closes keeps them.
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    engine.put(b"k", b"v", None)?;
    std::mem::forget(engine); // no Drop, no fsync: like a killed process
    let engine = open(dir.path())?;
    assert_eq!(data(&engine, b"k")?, Some(b"v".to_vec()));
    Ok(())
}

#[test]
fn torn_tail_at_every_cut_is_truncated() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = log_path(dir.path());
    let good_len = {
        let engine = open(dir.path())?;
        engine.put(b"a", b"1", None)?;
        engine.put(b"b", b"2", Some(FAR_FUTURE_MS))?;
        let good_len = engine.stats().log_bytes;
        engine.put(b"c", b"a longer value to cut", Some(FAR_FUTURE_MS))?;
        engine.close()?;
        good_len
    };
    let full = std::fs::read(&path)?;
    assert!(full.len() as u64 > good_len + 1);
    for cut in good_len + 1..full.len() as u64 {
        std::fs::write(&path, full.get(..cut as usize).ok_or("cut")?)?;
        {
            let engine = open(dir.path())?;
            assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()), "cut {cut}");
            assert_eq!(data(&engine, b"b")?, Some(b"2".to_vec()), "cut {cut}");
            assert_eq!(engine.get(b"c")?, None, "cut {cut}");
            assert_eq!(std::fs::metadata(&path)?.len(), good_len, "cut {cut}");
            engine.put(b"d", b"after", None)?;
            engine.close()?;
        }
        let engine = open(dir.path())?;
        assert_eq!(data(&engine, b"d")?, Some(b"after".to_vec()), "cut {cut}");
        assert_eq!(engine.len()?, 3, "cut {cut}");
    }
    Ok(())
}

#[test]
fn final_record_with_bad_checksum_is_torn() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = log_path(dir.path());
    let good_len = {
        let engine = open(dir.path())?;
        engine.put(b"a", b"1", None)?;
        let good_len = engine.stats().log_bytes;
        engine.put(b"b", b"2", None)?;
        engine.close()?;
        good_len
    };
    let mut bytes = std::fs::read(&path)?;
    if let Some(last) = bytes.last_mut() {
        *last ^= 0xff;
    }
    std::fs::write(&path, &bytes)?;
    let engine = open(dir.path())?;
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    assert_eq!(engine.get(b"b")?, None);
    assert_eq!(std::fs::metadata(&path)?.len(), good_len);
    Ok(())
}

#[test]
fn zero_filled_tail_is_torn() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = log_path(dir.path());
    let good_len = {
        let engine = open(dir.path())?;
        engine.put(b"a", b"1", None)?;
        engine.close()?;
        std::fs::metadata(&path)?.len()
    };
    let mut bytes = std::fs::read(&path)?;
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&path, &bytes)?;
    let engine = open(dir.path())?;
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    assert_eq!(std::fs::metadata(&path)?.len(), good_len);
    Ok(())
}

#[test]
fn corruption_before_the_tail_names_path_and_offset() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = log_path(dir.path());
    let mut offsets = Vec::new();
    {
        let engine = open(dir.path())?;
        for (k, v) in [("first", "1"), ("second", "2"), ("third", "3")] {
            offsets.push(engine.stats().log_bytes);
            engine.put(k.as_bytes(), v.as_bytes(), None)?;
        }
        engine.close()?;
    }
    assert_eq!(offsets.first(), Some(&log::FILE_HEADER_LEN));
    let original = std::fs::read(&path)?;
    for &record in offsets.iter().take(2) {
        // Flip a bit in the payload (the key), in the checksum, and in the length field
        // (both to a length still inside the file and to one running far past its end).
        for (flip_at, mask) in [
            (record + log::RECORD_HEADER_LEN + 6, 0x40),
            (record + 5, 0x40),
            (record, 0x02),
            (record + 2, 0x01),
        ] {
            let mut bytes = original.clone();
            let byte = bytes.get_mut(flip_at as usize).ok_or("offset")?;
            *byte ^= mask;
            std::fs::write(&path, &bytes)?;
            match MemoryEngine::open(dir.path(), options(SyncPolicy::Never)) {
                Err(StorageError::Corrupt {
                    path: p, offset, ..
                }) => {
                    assert_eq!(p, path);
                    assert_eq!(offset, record, "flip at {flip_at}");
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
            // The file is left untouched for inspection.
            assert_eq!(std::fs::read(&path)?, bytes);
        }
    }
    Ok(())
}

#[test]
fn corrupt_error_message_names_the_file() -> TestResult {
    let error = StorageError::Corrupt {
        path: PathBuf::from("/data/memory.log"),
        offset: 35,
        reason: "checksum mismatch".into(),
    };
    let text = error.to_string();
    assert!(
        text.contains("/data/memory.log") && text.contains("35"),
        "{text}"
    );
    Ok(())
}

#[test]
fn bad_magic_and_version_are_clear_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = log_path(dir.path());
    std::fs::write(&path, b"NOTALOG!and more")?;
    match open(dir.path()) {
        Err(e @ StorageError::Corrupt { offset: 0, .. }) => {
            assert!(e.to_string().contains("LIMELOG"), "{e}");
        }
        other => panic!("expected bad magic, got {other:?}"),
    }
    std::fs::write(&path, b"LIMELOG\x07")?;
    match open(dir.path()) {
        Err(StorageError::UnsupportedVersion {
            found: 7,
            supported: 1,
            ..
        }) => {}
        other => panic!("expected unsupported version, got {other:?}"),
    }
    std::fs::write(&path, b"xy")?;
    assert!(matches!(
        open(dir.path()),
        Err(StorageError::Corrupt { offset: 0, .. })
    ));
    Ok(())
}

#[test]
fn torn_file_header_is_repaired() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = log_path(dir.path());
    std::fs::write(&path, b"LIME")?;
    {
        let engine = open(dir.path())?;
        engine.put(b"k", b"v", None)?;
        engine.close()?;
    }
    let engine = open(dir.path())?;
    assert_eq!(data(&engine, b"k")?, Some(b"v".to_vec()));
    assert_eq!(
        std::fs::read(&path)?.get(..8),
        Some(b"LIMELOG\x01".as_slice())
    );
    Ok(())
}

#[test]
fn rewrite_shrinks_log_and_keeps_data() -> TestResult {
    let dir = tempfile::tempdir()?;
    let opts = MemoryOptions {
        rewrite_min_bytes: 16 << 10,
        ..options(SyncPolicy::Never)
    };
    let value = vec![7u8; 100];
    {
        let engine = MemoryEngine::open(dir.path(), opts.clone())?;
        engine.put(b"keep", b"forever", Some(FAR_FUTURE_MS))?;
        for i in 0..2000u32 {
            engine.put(b"hot", &value, None)?;
            engine.put(format!("k{}", i % 10).as_bytes(), &i.to_le_bytes(), None)?;
        }
        engine.delete(b"k0")?;
        let stats = engine.stats();
        assert!(stats.log_rewrites >= 5, "{stats:?}");
        assert!(stats.log_bytes <= 16 << 10, "{stats:?}");
        assert_eq!(
            stats.log_bytes,
            std::fs::metadata(log_path(dir.path()))?.len()
        );
        engine.close()?;
    }
    let engine = MemoryEngine::open(dir.path(), opts)?;
    assert_eq!(data(&engine, b"hot")?, Some(value));
    assert_eq!(
        engine.get(b"keep")?.and_then(|v| v.expires_at_ms),
        Some(FAR_FUTURE_MS)
    );
    assert_eq!(engine.get(b"k0")?, None);
    assert_eq!(data(&engine, b"k9")?, Some(1999u32.to_le_bytes().to_vec()));
    assert_eq!(engine.len()?, 11);
    assert!(!log::tmp_path(&log_path(dir.path())).exists());
    Ok(())
}

#[test]
fn rewrite_runs_at_open_when_over_threshold() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = open(dir.path())?; // default threshold: 64 MiB, never reached here
        for i in 0..1000u32 {
            engine.put(b"k", &i.to_le_bytes(), None)?;
        }
        assert_eq!(engine.stats().log_rewrites, 0);
        engine.close()?;
    }
    let before = std::fs::metadata(log_path(dir.path()))?.len();
    let opts = MemoryOptions {
        rewrite_min_bytes: 1024,
        ..options(SyncPolicy::Never)
    };
    let engine = MemoryEngine::open(dir.path(), opts)?;
    let stats = engine.stats();
    assert_eq!(stats.log_rewrites, 1);
    assert!(stats.log_bytes < before / 10, "{stats:?} vs {before}");
    assert_eq!(data(&engine, b"k")?, Some(999u32.to_le_bytes().to_vec()));
    Ok(())
}

#[test]
fn leftover_tmp_is_removed_on_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = open(dir.path())?;
        engine.put(b"k", b"v", None)?;
        engine.close()?;
    }
    let tmp = log::tmp_path(&log_path(dir.path()));
    std::fs::write(&tmp, b"half a rewrite")?;
    let engine = open(dir.path())?;
    assert!(!tmp.exists());
    assert_eq!(data(&engine, b"k")?, Some(b"v".to_vec()));
    Ok(())
}

#[test]
fn open_creates_missing_directories() -> TestResult {
    let dir = tempfile::tempdir()?;
    let nested = dir.path().join("a/b/c");
    let engine = open(&nested)?;
    engine.put(b"k", b"v", None)?;
    assert!(log_path(&nested).exists());
    Ok(())
}

#[test]
fn concurrent_always_writers_all_survive() -> TestResult {
    const THREADS: usize = 8;
    const PUTS: usize = 500;
    let dir = tempfile::tempdir()?;
    {
        let engine = Arc::new(MemoryEngine::open(dir.path(), options(SyncPolicy::Always))?);
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = Arc::clone(&engine);
                std::thread::spawn(move || -> Result<()> {
                    for i in 0..PUTS {
                        engine.put(format!("t{t}-{i:04}").as_bytes(), &[t as u8; 16], None)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "writer panicked")??;
        }
        // Every acknowledged write is fsynced: nothing is left for sync() to do.
        let syncer_seq = lock(&engine.inner.syncer).synced_seq;
        assert_eq!(syncer_seq, (THREADS * PUTS) as u64);
        std::mem::forget(Arc::clone(&engine)); // no close, no drop-sync
    }
    let engine = open(dir.path())?;
    assert_eq!(engine.len()?, (THREADS * PUTS) as u64);
    for t in 0..THREADS {
        for i in (0..PUTS).step_by(37) {
            assert_eq!(
                data(&engine, format!("t{t}-{i:04}").as_bytes())?,
                Some(vec![t as u8; 16])
            );
        }
    }
    Ok(())
}

#[test]
fn interval_policy_fsyncs_in_the_background() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = MemoryEngine::open(
        dir.path(),
        options(SyncPolicy::Interval(Duration::from_millis(20))),
    )?;
    engine.put(b"k", b"v", None)?;
    assert!(wait_for(|| lock(&engine.inner.syncer).synced_seq == 1));
    Ok(())
}

#[test]
fn failed_write_poisons_but_reads_still_work() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    engine.put(b"a", b"1", None)?;
    engine.fail_next_write();
    assert!(matches!(
        engine.put(b"b", b"2", None),
        Err(StorageError::Io { .. })
    ));
    assert!(matches!(
        engine.put(b"c", b"3", None),
        Err(StorageError::Poisoned)
    ));
    assert!(matches!(engine.delete(b"a"), Err(StorageError::Poisoned)));
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    assert_eq!(engine.get(b"b")?, None, "a failed write is not applied");
    assert_eq!(engine.len()?, 1);
    Ok(())
}

#[test]
fn failed_fsync_poisons_and_is_never_retried() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = MemoryEngine::open(dir.path(), options(SyncPolicy::Always))?;
    engine.put(b"a", b"1", None)?;
    engine.fail_next_sync();
    assert!(matches!(
        engine.put(b"b", b"2", None),
        Err(StorageError::Io { .. })
    ));
    assert!(matches!(
        engine.put(b"c", b"3", None),
        Err(StorageError::Poisoned)
    ));
    assert!(matches!(engine.sync(), Err(StorageError::Poisoned)));
    assert_eq!(data(&engine, b"a")?, Some(b"1".to_vec()));
    assert!(matches!(engine.close(), Err(StorageError::Poisoned)));
    Ok(())
}

#[test]
fn closed_engine_refuses_calls() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    engine.put(b"a", b"1", None)?;
    engine.close()?;
    assert!(matches!(engine.get(b"a"), Err(StorageError::Closed)));
    assert!(matches!(
        engine.put(b"a", b"1", None),
        Err(StorageError::Closed)
    ));
    assert!(matches!(engine.delete(b"a"), Err(StorageError::Closed)));
    assert!(matches!(engine.page(0, 1), Err(StorageError::Closed)));
    assert!(matches!(engine.scan(None, 1), Err(StorageError::Closed)));
    assert!(matches!(engine.len(), Err(StorageError::Closed)));
    assert!(matches!(engine.sync(), Err(StorageError::Closed)));
    assert!(matches!(engine.close(), Err(StorageError::Closed)));
    assert!(
        lock(&engine.background).is_none(),
        "background thread joined"
    );
    Ok(())
}

#[test]
fn oversized_keys_are_rejected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    let key = vec![0u8; MAX_KEY_BYTES + 1];
    assert!(matches!(
        engine.put(&key, b"v", None),
        Err(StorageError::KeyTooLarge { .. })
    ));
    assert!(!engine.inner.lifecycle.is_poisoned());
    Ok(())
}

// ---- model test -------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>, Option<u64>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Page(u64, usize),
    Scan(Option<Vec<u8>>, usize),
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 0..3)
}

fn op() -> impl Strategy<Value = Op> {
    let expiry = prop_oneof![Just(None), Just(Some(FAR_FUTURE_MS)), Just(Some(1))];
    prop_oneof![
        4 => (key(), proptest::collection::vec(any::<u8>(), 0..40), expiry)
            .prop_map(|(k, v, e)| Op::Put(k, v, e)),
        2 => key().prop_map(Op::Delete),
        2 => key().prop_map(Op::Get),
        1 => (0u64..15, 0usize..15).prop_map(|(o, l)| Op::Page(o, l)),
        1 => (proptest::option::of(key()), 0usize..15).prop_map(|(s, l)| Op::Scan(s, l)),
        1 => Just(Op::Reopen),
    ]
}

type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

fn as_value((data, expires_at_ms): &(Vec<u8>, Option<u64>)) -> Value {
    Value {
        data: Bytes::from(data.clone()),
        expires_at_ms: *expires_at_ms,
    }
}

fn run_model(ops: &[Op]) -> std::result::Result<(), TestCaseError> {
    let fail = |e: StorageError| TestCaseError::fail(e.to_string());
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    // A tiny rewrite threshold so rewrites interleave with everything else.
    let opts = MemoryOptions {
        rewrite_min_bytes: 300,
        rewrite_ratio: 1.5,
        ..options(SyncPolicy::Never)
    };
    let mut engine = MemoryEngine::open(dir.path(), opts.clone()).map_err(fail)?;
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Put(k, v, e) => {
                engine.put(k, v, *e).map_err(fail)?;
                if e.is_some_and(|t| t <= now_ms()) {
                    model.remove(k);
                } else {
                    model.insert(k.clone(), (v.clone(), *e));
                }
            }
            Op::Delete(k) => {
                let removed = engine.delete(k).map_err(fail)?;
                prop_assert_eq!(removed, model.remove(k).is_some());
            }
            Op::Get(k) => {
                prop_assert_eq!(engine.get(k).map_err(fail)?, model.get(k).map(as_value));
            }
            Op::Page(offset, limit) => {
                let page = engine.page(*offset, *limit).map_err(fail)?;
                let expected: Vec<_> = model
                    .iter()
                    .skip(*offset as usize)
                    .take(*limit)
                    .map(|(k, v)| (Bytes::from(k.clone()), as_value(v)))
                    .collect();
                prop_assert_eq!(page.entries, expected);
                prop_assert_eq!(page.total, model.len() as u64);
            }
            Op::Scan(start, limit) => {
                let got = engine.scan(start.as_deref(), *limit).map_err(fail)?;
                let lower = start.clone().unwrap_or_default();
                let expected: Vec<_> = model
                    .range(lower..)
                    .take(*limit)
                    .map(|(k, v)| (Bytes::from(k.clone()), as_value(v)))
                    .collect();
                prop_assert_eq!(got, expected);
            }
            Op::Reopen => {
                engine.close().map_err(fail)?;
                drop(engine);
                engine = MemoryEngine::open(dir.path(), opts.clone()).map_err(fail)?;
            }
        }
        prop_assert_eq!(engine.len().map_err(fail)?, model.len() as u64);
    }
    let stats = engine.stats();
    let live: u64 = model
        .iter()
        .map(|(k, (v, _))| (k.len() + v.len()) as u64)
        .sum();
    prop_assert_eq!(stats.live_bytes, live);
    prop_assert_eq!(stats.keys, model.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn engine_matches_btreemap_model(ops in proptest::collection::vec(op(), 1..120)) {
        run_model(&ops)?;
    }
}

/// A write for the batch model test: (key index, Some(value) = put / None = delete, expired).
type ModelWrite = (u8, Option<u8>, bool);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `write_many` answers and stores exactly what one-by-one puts and deletes would, and the
    /// result survives a reopen.
    #[test]
    fn write_many_matches_one_by_one_writes(
        batches in proptest::collection::vec(
            proptest::collection::vec((0u8..6, proptest::option::of(any::<u8>()), any::<bool>()), 0..12),
            1..8,
        )
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = MemoryEngine::open(dir.path(), MemoryOptions::default()).expect("open");
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for batch in &batches {
            let keys: Vec<Vec<u8>> = batch.iter().map(|(k, _, _)| vec![b'k', *k]).collect();
            let values: Vec<Vec<u8>> = batch.iter().map(|(_, v, _)| vec![v.unwrap_or(0); 3]).collect();
            let ops: Vec<WriteOp<'_>> = batch
                .iter()
                .enumerate()
                .map(|(i, (_, v, expired)): (usize, &ModelWrite)| match v {
                    Some(_) => WriteOp::Put {
                        key: &keys[i],
                        value: &values[i],
                        // An expiry in the past makes the put a delete.
                        expires_at_ms: expired.then_some(1),
                    },
                    None => WriteOp::Delete { key: &keys[i] },
                })
                .collect();
            let mut expected = Vec::with_capacity(ops.len());
            for (i, (_, v, expired)) in batch.iter().enumerate() {
                match (v, expired) {
                    (Some(_), false) => {
                        model.insert(keys[i].clone(), values[i].clone());
                        expected.push(false);
                    }
                    (Some(_), true) => {
                        model.remove(&keys[i]);
                        expected.push(false);
                    }
                    (None, _) => expected.push(model.remove(&keys[i]).is_some()),
                }
            }
            prop_assert_eq!(engine.write_many(&ops).expect("write_many"), expected);
        }
        let check = |engine: &MemoryEngine| -> Vec<(Vec<u8>, Vec<u8>)> {
            engine
                .scan(None, 100)
                .expect("scan")
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.data.to_vec()))
                .collect()
        };
        let want: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
        prop_assert_eq!(check(&engine), want.clone());
        drop(engine);
        let reopened = MemoryEngine::open(dir.path(), MemoryOptions::default()).expect("reopen");
        prop_assert_eq!(check(&reopened), want);
    }
}

#[test]
fn try_write_now_writes_at_once_only_when_nothing_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = MemoryOptions {
        sync: SyncPolicy::Never,
        rewrite_min_bytes: 4096,
        ..MemoryOptions::default()
    };
    let engine = MemoryEngine::open(dir.path(), options).expect("open");
    let put = |key: &'static [u8], value: &'static [u8]| WriteOp::Put {
        key,
        value,
        expires_at_ms: None,
    };
    assert_eq!(
        engine.try_write_now(put(b"a", b"1")).map(|r| r.ok()),
        Some(Some(false))
    );
    assert_eq!(
        engine.get(b"a").expect("get").map(|v| v.data),
        Some(Bytes::from("1"))
    );
    let delete = WriteOp::Delete { key: b"a" };
    assert_eq!(
        engine.try_write_now(delete).map(|r| r.ok()),
        Some(Some(true))
    );
    assert_eq!(
        engine.try_write_now(delete).map(|r| r.ok()),
        Some(Some(false))
    );

    // A rewrite is running: nothing is written, the caller must queue.
    engine.inner.rewriting.store(true, Ordering::SeqCst);
    assert!(engine.try_write_now(put(b"b", b"2")).is_none());
    engine.inner.rewriting.store(false, Ordering::SeqCst);
    assert_eq!(engine.get(b"b").expect("get"), None);

    // Overwrites grow the log until a rewrite is due; then the write is refused at once and
    // `write_many` (on a thread that may block) writes and rewrites.
    let mut refused = false;
    for _ in 0..1_000 {
        if engine.try_write_now(put(b"c", &[7; 64])).is_none() {
            refused = true;
            break;
        }
    }
    assert!(refused, "a due rewrite is never done inline");
    let rewrites = engine.stats().log_rewrites;
    engine
        .write_many(&[put(b"c", b"last")])
        .expect("write_many");
    assert_eq!(engine.stats().log_rewrites, rewrites + 1);
    drop(engine);
    let reopened = MemoryEngine::open(dir.path(), MemoryOptions::default()).expect("reopen");
    assert_eq!(
        reopened.get(b"c").expect("get").map(|v| v.data),
        Some(Bytes::from("last"))
    );
    assert_eq!(reopened.get(b"a").expect("get"), None);
}

#[test]
fn try_write_now_defers_to_group_commit_when_every_write_is_fsynced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = MemoryOptions {
        sync: SyncPolicy::Always,
        ..MemoryOptions::default()
    };
    let engine = MemoryEngine::open(dir.path(), options).expect("open");
    let op = WriteOp::Put {
        key: b"k",
        value: b"v",
        expires_at_ms: None,
    };
    assert!(engine.try_write_now(op).is_none());
    assert_eq!(engine.get(b"k").expect("get"), None);
}
