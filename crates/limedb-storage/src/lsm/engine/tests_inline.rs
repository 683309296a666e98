//! Tests of the paths that let an async caller skip a thread hand-off ([`Engine::try_get_now`],
//! [`Engine::try_write_now`]) and of write back-pressure from L0 (slowdown, stall).

use std::sync::atomic::{AtomicBool, AtomicUsize};

use super::tests::{data, key, put, tiny, TestResult};
use super::*;

/// `tiny()` without background compaction pressure on the tests' expectations: a big memtable,
/// so nothing is flushed unless a test asks.
fn roomy() -> LsmOptions {
    LsmOptions {
        memtable_bytes: 1 << 20,
        ..tiny()
    }
}

fn now_data(engine: &LsmEngine, k: &[u8]) -> Option<Result<Option<Vec<u8>>>> {
    engine
        .try_get_now(k)
        .map(|r| r.map(|v| v.map(|v| v.data.to_vec())))
}

#[test]
fn try_get_now_answers_from_memory_and_gives_up_on_uncached_blocks() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = LsmEngine::open(dir.path(), roomy())?;
        engine.put(b"in-memtable", b"v1", None)?;
        assert_eq!(
            now_data(&engine, b"in-memtable").transpose()?,
            Some(Some(b"v1".to_vec()))
        );
        engine.delete(b"in-memtable")?;
        // A tombstone in the memtable answers "absent" without looking further.
        assert_eq!(now_data(&engine, b"in-memtable").transpose()?, Some(None));
        for i in 0..200 {
            engine.put(&key(i), format!("value{i}").as_bytes(), None)?;
        }
        engine.flush()?;
        engine.close()?;
    }
    // Reopened: the data is in a table and the block cache is cold.
    let engine = LsmEngine::open(dir.path(), roomy())?;
    let misses_before = engine.cache_stats().misses;
    assert!(
        engine.try_get_now(&key(7)).is_none(),
        "a key whose block is not cached must not be answered inline"
    );
    assert_eq!(
        engine.cache_stats().misses,
        misses_before,
        "a give-up is not a cache miss"
    );
    // The blocking read loads the block; then the same key, and its neighbours in the same
    // block, are answered inline, with the right values.
    assert_eq!(
        engine.get(&key(7))?.map(|v| v.data.to_vec()),
        Some(b"value7".to_vec())
    );
    assert_eq!(
        now_data(&engine, &key(7)).transpose()?,
        Some(Some(b"value7".to_vec()))
    );
    assert_eq!(
        now_data(&engine, &key(8)).transpose()?,
        Some(Some(b"value8".to_vec()))
    );
    // Whatever the filter says about an absent key, an answer is never a wrong one; and the
    // filter rules most absent keys out without I/O, so most are answered.
    let mut answered = 0;
    for i in 1000..1100 {
        if let Some(found) = now_data(&engine, &key(i)) {
            assert_eq!(found?, None);
            answered += 1;
        }
    }
    assert!(answered > 0, "no absent key was answered without I/O");
    engine.close()?;
    assert!(matches!(
        engine.try_get_now(b"x"),
        Some(Err(StorageError::Closed))
    ));
    Ok(())
}

#[test]
fn try_write_now_writes_inline_only_when_nothing_waits_for_the_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let always = LsmEngine::open(
        dir.path().join("always"),
        LsmOptions {
            sync: SyncPolicy::Always,
            ..roomy()
        },
    )?;
    assert!(
        always.try_write_now(put(b"k", b"v")).is_none(),
        "Always needs an fsync"
    );
    assert_eq!(always.get(b"k")?, None, "a give-up writes nothing");

    let path = dir.path().join("never");
    {
        let engine = LsmEngine::open(&path, roomy())?;
        assert_eq!(
            engine.try_write_now(put(b"a", b"1")).transpose()?,
            Some(false)
        );
        assert_eq!(engine.get(b"a")?.map(|v| v.data), Some(Bytes::from("1")));
        // A delete of a key in the memtable knows its answer without I/O.
        let deleted = engine.try_write_now(WriteOp::Delete { key: b"a" });
        assert_eq!(deleted.transpose()?, Some(true));
        let again = engine.try_write_now(WriteOp::Delete { key: b"a" });
        assert_eq!(again.transpose()?, Some(false));
        for i in 0..100 {
            engine.put(&key(i), b"table", None)?;
        }
        engine.flush()?;
        engine.close()?;
    }
    let engine = LsmEngine::open(&path, roomy())?;
    // Whether key 3 is live needs its (uncached) block: the delete is left to the caller.
    assert!(engine
        .try_write_now(WriteOp::Delete { key: &key(3) })
        .is_none());
    assert_eq!(
        engine.get(&key(3))?.map(|v| v.data),
        Some(Bytes::from("table"))
    );
    // Now cached, the delete goes inline and answers like `delete`.
    let deleted = engine.try_write_now(WriteOp::Delete { key: &key(3) });
    assert_eq!(deleted.transpose()?, Some(true));
    assert_eq!(engine.get(&key(3))?, None);
    // A put needs no read.
    assert_eq!(
        engine.try_write_now(put(&key(4), b"new")).transpose()?,
        Some(false)
    );
    // Bad input is an error at once, not a give-up.
    let huge_key = vec![0u8; MAX_KEY_BYTES + 1];
    assert!(matches!(
        engine.try_write_now(put(&huge_key, b"v")),
        Some(Err(StorageError::KeyTooLarge { .. }))
    ));
    engine.close()?;
    // Inline writes went through the WAL: all there after a reopen.
    let engine = LsmEngine::open(&path, roomy())?;
    assert_eq!(engine.get(&key(3))?, None);
    assert_eq!(
        engine.get(&key(4))?.map(|v| v.data),
        Some(Bytes::from("new"))
    );
    assert_eq!(engine.get(b"a")?, None);
    Ok(())
}

#[test]
fn try_write_now_leaves_a_full_memtable_to_the_blocking_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = LsmEngine::open(
        dir.path(),
        LsmOptions {
            memtable_bytes: 2 << 10,
            ..tiny()
        },
    )?;
    let value = vec![b'x'; 100];
    let mut inline = 0;
    let mut gave_up = 0;
    for i in 0..200 {
        match engine.try_write_now(put(&key(i), &value)) {
            Some(result) => {
                result?;
                inline += 1;
            }
            None => {
                gave_up += 1;
                engine.put(&key(i), &value, None)?; // freezes the memtable
            }
        }
    }
    assert!(
        inline > 0 && gave_up > 0,
        "inline {inline}, gave up {gave_up}"
    );
    for i in 0..200 {
        assert_eq!(
            engine.get(&key(i))?.map(|v| v.data.len()),
            Some(100),
            "key {i}"
        );
    }
    Ok(())
}

/// With writers far faster than compaction, L0 stays within the stop limit plus the memtables
/// already frozen when writers stopped, the slowdown is used, and no write is lost.
#[test]
fn l0_back_pressure_bounds_l0_under_a_write_flood() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = LsmOptions {
        memtable_bytes: 1 << 10,
        l0_slowdown_tables: 3,
        l0_stop_tables: 4,
        write_slowdown_delay: Duration::from_millis(2),
        ..tiny()
    };
    let max_imms = options.max_immutable_memtables;
    let engine = Arc::new(LsmEngine::open(dir.path(), options)?);
    let done = Arc::new(AtomicBool::new(false));
    let max_l0 = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (engine, done, max_l0) = (Arc::clone(&engine), Arc::clone(&done), Arc::clone(&max_l0));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                max_l0.fetch_max(engine.version().table_count(0), Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || -> Result<()> {
                for i in 0..1500 {
                    engine.put(&key(t * 10_000 + i), &[b'v'; 64], None)?;
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| "writer panicked")??;
    }
    done.store(true, Ordering::SeqCst);
    watcher.join().map_err(|_| "watcher panicked")?;
    let max_l0 = max_l0.load(Ordering::SeqCst);
    assert!(max_l0 <= 4 + max_imms, "L0 reached {max_l0} tables");
    let counters = engine.counters();
    assert!(counters.write_slowdowns > 0, "{counters:?}");
    for t in 0..4 {
        for i in 0..1500 {
            assert!(engine.get(&key(t * 10_000 + i))?.is_some(), "lost {t}/{i}");
        }
    }
    Ok(())
}

#[test]
fn l0_limits_are_kept_above_the_compaction_trigger() {
    let options = LsmOptions {
        l0_slowdown_tables: 1,
        l0_stop_tables: 0,
        ..LsmOptions::default()
    }
    .with_consistent_l0_limits();
    let trigger = options.leveled.l0_compaction_trigger;
    assert_eq!(options.l0_slowdown_tables, trigger);
    assert_eq!(options.l0_stop_tables, trigger + 1);
}

/// Concurrent writers under `SyncPolicy::Always` share fsyncs (group commit with a gathering
/// leader), and every acknowledged write is there after a reopen.
#[test]
fn synced_writers_share_fsyncs() -> TestResult {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 150;
    let dir = tempfile::tempdir()?;
    let always = || LsmOptions {
        sync: SyncPolicy::Always,
        ..roomy()
    };
    let fsyncs = {
        let engine = Arc::new(LsmEngine::open(dir.path(), always())?);
        let before = engine.stats_detailed().wal_fsyncs;
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = Arc::clone(&engine);
                std::thread::spawn(move || -> Result<()> {
                    for i in 0..PER_THREAD {
                        engine.put(&key(t * 10_000 + i), b"synced", None)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join().map_err(|_| "writer panicked")??;
        }
        engine.stats_detailed().wal_fsyncs - before
    };
    let writes = (THREADS * PER_THREAD) as u64;
    assert!(
        fsyncs * 4 <= writes * 3,
        "{fsyncs} fsyncs for {writes} synced writes from {THREADS} threads"
    );
    let engine = LsmEngine::open(dir.path(), always())?;
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            assert!(engine.get(&key(t * 10_000 + i))?.is_some(), "lost {t}/{i}");
        }
    }
    Ok(())
}

/// `flush` waits for what was written before it, not for memtables that a steady stream of
/// writes keeps freezing meanwhile.
#[test]
fn flush_returns_under_a_steady_stream_of_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(LsmEngine::open(
        dir.path(),
        LsmOptions {
            memtable_bytes: 1 << 10,
            ..tiny()
        },
    )?);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        std::thread::spawn(move || -> Result<u64> {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                engine.put(&key(i % 5000), &[b'w'; 64], None)?;
                i += 1;
            }
            Ok(i as u64)
        })
    };
    for round in 0..20 {
        engine.put(format!("flushed{round}").as_bytes(), b"v", None)?;
        engine.flush()?;
        // What was written before the flush is in a table now.
        let sv = engine.inner.current();
        assert!(
            sv.active
                .get(format!("flushed{round}").as_bytes(), MAX_SEQNO)
                .is_none()
                && sv.imms.iter().all(|m| m
                    .get(format!("flushed{round}").as_bytes(), MAX_SEQNO)
                    .is_none()),
            "round {round}: the key is still in a memtable after flush"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().map_err(|_| "writer panicked")??;
    assert!(written > 0);
    Ok(())
}

/// A batch goes inline whole (one WAL append, the answers of `write_many`) or not at all.
#[test]
fn try_write_many_now_writes_a_batch_whole_or_not_at_all() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    {
        let engine = LsmEngine::open(&path, roomy())?;
        engine.put(b"live", b"x", None)?;
        let ops = [
            put(b"a", b"1"),
            WriteOp::Delete { key: b"live" },
            put(b"b", b"2"),
            WriteOp::Delete { key: b"a" },
            WriteOp::Delete { key: b"never" },
        ];
        let answers = engine.try_write_many_now(&ops).transpose()?;
        assert_eq!(answers, Some(vec![false, true, false, true, false]));
        assert_eq!(engine.get(b"a")?, None);
        assert_eq!(engine.get(b"b")?.map(|v| v.data), Some(Bytes::from("2")));
        assert_eq!(engine.get(b"live")?, None);
        for i in 0..100 {
            engine.put(&key(i), b"table", None)?;
        }
        engine.flush()?;
        engine.close()?;
    }
    let engine = LsmEngine::open(&path, roomy())?;
    // The delete needs an uncached block: nothing of the batch is written.
    let ops = [put(b"c", b"3"), WriteOp::Delete { key: &key(5) }];
    assert!(engine.try_write_many_now(&ops).is_none());
    assert_eq!(engine.get(b"c")?, None);
    assert_eq!(
        engine.get(&key(5))?.map(|v| v.data),
        Some(Bytes::from("table"))
    );
    Ok(())
}

/// A batch of in-memory lookups (`lookup_many_in_memory`, behind `try_get_many_now`) answers
/// exactly as the same lookups one by one, wherever the keys live: the active memtable, frozen
/// memtables (the newer one first, a tombstone there hiding older versions), tables with a
/// cached block, tables whose block is not cached (no answer), nowhere; at the newest snapshot
/// and at one that sees only the oldest memtable.
#[test]
fn lookups_of_a_batch_answer_as_lookups_one_by_one() -> TestResult {
    // No compaction: it would fill the block cache in the background while the lookups run.
    let options = || LsmOptions {
        leveled: LeveledOptions {
            l0_compaction_trigger: 100,
            ..roomy().leveled
        },
        ..roomy()
    };
    let dir = tempfile::tempdir()?;
    {
        let engine = LsmEngine::open(dir.path(), options())?;
        for i in 0..400 {
            engine.put(&key(i), format!("table{i}").as_bytes(), None)?;
        }
        engine.flush()?;
        // A second table in L0, newer: new versions of every fifth key, tombstones of every
        // eleventh.
        for i in (0..400).step_by(5) {
            engine.put(&key(i), format!("second{i}").as_bytes(), None)?;
        }
        for i in (0..400).step_by(11) {
            engine.delete(&key(i))?;
        }
        engine.flush()?;
        engine.close()?;
    }
    let engine = LsmEngine::open(dir.path(), options())?;
    assert_eq!(engine.inner.current().version.level(0).len(), 2);
    // Some blocks of the tables cached, the others cold.
    assert!(engine.get(&key(3))?.is_some());
    assert!(engine.get(&key(5))?.is_some());
    assert!(engine.get(&key(11))?.is_none());
    let sv = engine.inner.current();
    let (older, newer, active) = (Memtable::new(), Memtable::new(), Memtable::new());
    for i in (0..400).step_by(2) {
        older.insert(&key(i), 1_000_000 + i as u64, ValueKind::Put, b"older");
    }
    for i in 0..400 {
        if i % 4 == 0 {
            newer.insert(&key(i), 2_000_000 + i as u64, ValueKind::Put, b"newer");
        } else if i % 8 == 1 {
            newer.insert(&key(i), 2_000_000 + i as u64, ValueKind::Delete, b"");
        }
    }
    for i in (0..400).step_by(8) {
        active.insert(&key(i), 3_000_000 + i as u64, ValueKind::Put, b"active");
    }
    // Two frozen memtables, and an oldest one as the memtable the last flush kept, asked
    // after them: its keys are every eighth from 7 up to 300, which no newer memtable holds.
    let oldest = Memtable::new();
    for i in (7..300).step_by(8) {
        oldest.insert(&key(i), 500_000 + i as u64, ValueKind::Put, b"oldest");
    }
    let sv = SuperVersion {
        active: Arc::new(active),
        imms: vec![Arc::new(older), Arc::new(newer)],
        retained: Some(Arc::new(oldest)),
        version: Arc::clone(&sv.version),
        tables: sv.tables.clone(),
    };
    let keys: Vec<Vec<u8>> = (0..420).map(key).collect();
    let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    type Answer = Option<std::result::Result<Option<(ValueKind, Bytes)>, String>>;
    let plain = |a: Option<Result<Option<(ValueKind, Bytes)>>>| -> Answer {
        a.map(|r| r.map_err(|e| e.to_string()))
    };
    for snapshot in [MAX_SEQNO, 1_500_000] {
        let batch: Vec<Answer> = sv
            .lookup_many_in_memory(&asked, snapshot)
            .into_iter()
            .map(plain)
            .collect();
        let one_by_one: Vec<Answer> = asked
            .iter()
            .map(|k| plain(sv.lookup(k, snapshot, Reach::Memory)))
            .collect();
        assert_eq!(batch, one_by_one, "snapshot {snapshot}");
    }
    // Every source answered some key, at the newest snapshot.
    let batch = sv.lookup_many_in_memory(&asked, MAX_SEQNO);
    let value = |i: usize| match &batch[i] {
        Some(Ok(Some((ValueKind::Put, v)))) => Some(String::from_utf8_lossy(v).into_owned()),
        Some(Ok(Some((ValueKind::Delete, _)))) => Some("tombstone".into()),
        Some(Ok(None)) => Some("absent".into()),
        _ => None,
    };
    assert_eq!(value(8).as_deref(), Some("active"));
    assert_eq!(value(4).as_deref(), Some("newer"));
    assert_eq!(value(9).as_deref(), Some("tombstone"));
    assert_eq!(value(2).as_deref(), Some("older"));
    assert_eq!(value(7).as_deref(), Some("oldest"));
    // (Stored values start with their flags byte.)
    assert_eq!(value(3).as_deref(), Some("\0table3"));
    assert_eq!(value(5).as_deref(), Some("\0second5"));
    assert_eq!(value(11).as_deref(), Some("tombstone"));
    assert_eq!(value(399), None, "a cold block must not be read inline");
    assert!(
        batch[410].is_some(),
        "an absent key ruled out by no filter?"
    );
    Ok(())
}

/// `try_get_many_now` through the engine: its answers are `get`'s, and a key whose table
/// block is cold is left to the caller.
#[test]
fn try_get_many_now_answers_as_get_does() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = LsmEngine::open(dir.path(), roomy())?;
        for i in 0..300 {
            engine.put(&key(i), format!("old{i}").as_bytes(), None)?;
        }
        engine.flush()?;
        engine.close()?;
    }
    let engine = LsmEngine::open(dir.path(), roomy())?;
    for i in (0..300).step_by(3) {
        engine.put(&key(i), format!("new{i}").as_bytes(), None)?;
    }
    engine.delete(&key(1))?;
    engine.put(&key(6), b"expired", Some(1))?;
    let keys: Vec<Vec<u8>> = (0..320).map(key).collect();
    let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let answers = engine.try_get_many_now(&asked);
    assert_eq!(answers.len(), keys.len());
    let mut answered = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        let want = engine.get(&keys[i])?.map(|v| v.data.to_vec());
        match answer {
            Some(got) => {
                assert_eq!(got?.map(|v| v.data.to_vec()), want, "key {i}");
                answered += 1;
            }
            None => assert!(i % 3 != 0 && i != 1, "key {i} is in the memtable"),
        }
    }
    assert!(answered >= 102, "{answered} answered");
    assert_eq!(engine.get(&key(6))?, None);
    Ok(())
}

/// A flush that follows point reads reads its table into the block cache before the table
/// serves reads: every key just flushed is answered without I/O. A flush after writes alone
/// warms nothing; with `warm_cache_on_flush` off, no key is answered (their blocks are cold);
/// with a cache too small for the table, warming stops at half the cache.
#[test]
fn a_flush_warms_the_block_cache_with_its_table() -> TestResult {
    let options = |warm: bool, block_cache_bytes: usize| LsmOptions {
        warm_cache_on_flush: warm,
        retain_flushed_memtable: false, // tested below
        block_cache_bytes,
        leveled: LeveledOptions {
            l0_compaction_trigger: 100,
            ..roomy().leveled
        },
        ..roomy()
    };
    let keys: Vec<Vec<u8>> = (0..600).map(key).collect();
    let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let fill = |engine: &LsmEngine, pad: &str| -> Result<()> {
        for (i, k) in keys.iter().enumerate() {
            let value = format!("value-{i}-{}", pad.repeat(i % 50));
            engine.put(k, value.as_bytes(), None)?;
        }
        Ok(())
    };
    for (warm, cache_bytes) in [(true, 1 << 20), (false, 1 << 20), (true, 16 << 10)] {
        let dir = tempfile::tempdir()?;
        let engine = LsmEngine::open(dir.path(), options(warm, cache_bytes))?;
        // Without a point read since the previous flush (a bulk load), a flush warms nothing.
        fill(&engine, "x")?;
        engine.flush()?;
        assert_eq!(engine.counters().blocks_warmed, 0);
        assert_eq!(engine.cache_stats().entries, 0);
        fill(&engine, "y")?;
        assert!(engine.get(&keys[0])?.is_some());
        engine.flush()?;
        let sv = engine.inner.current();
        assert!(sv.active.is_empty() && sv.imms.is_empty());
        // The second flush's table, which holds the newest version of every key.
        let newest = sv.tables.keys().max().ok_or("no table")?;
        let blocks = sv.tables[newest].meta().data_block_count;
        // Warming counts its blocks as inserts, not as misses.
        assert_eq!(engine.cache_stats().misses, 0);
        let answers = engine.try_get_many_now(&asked);
        let answered = answers.iter().filter(|a| a.is_some()).count();
        let warmed = engine.counters().blocks_warmed;
        let stats = engine.cache_stats();
        match (warm, cache_bytes) {
            (true, 1048576) => {
                assert_eq!((warmed, answered), (blocks, keys.len()));
                for (i, answer) in answers.into_iter().enumerate() {
                    let value = answer.ok_or("answered")??.ok_or("present")?;
                    assert_eq!(&value.data[..], engine.get(&keys[i])?.ok_or("get")?.data);
                    assert!(value.data.ends_with(&b"y".repeat(i % 50)));
                }
            }
            (false, _) => assert_eq!((warmed, answered, stats.entries), (0, 0, 0)),
            _ => {
                // Half of 16 KiB holds some of the table's 512-byte blocks, not all of them.
                assert!(warmed > 0 && warmed < blocks, "{warmed} of {blocks}");
                assert!(answered > 0 && answered < keys.len(), "{answered}");
                assert!(stats.used_bytes <= stats.capacity_bytes / 2, "{stats:?}");
            }
        }
    }
    Ok(())
}

/// A flush that follows point reads keeps its memtable for point reads until the next flush
/// (`retain_flushed_memtable`), lending its bytes from the block cache's budget: the keys it
/// holds are answered without I/O although no block of its table is cached, newer writes and
/// deletes shadow it, a read at an older snapshot sees the version it should, and the next
/// flush replaces it. Not kept when the option is off, when the memtable budget is more than
/// half the cache, or after writes alone.
#[test]
fn a_flushed_memtable_is_kept_for_point_reads_until_the_next_flush() -> TestResult {
    let options = |retain: bool, memtable_bytes: u64| LsmOptions {
        retain_flushed_memtable: retain,
        // Nothing warmed: only a kept memtable answers a flushed key without I/O.
        warm_cache_on_flush: false,
        memtable_bytes,
        block_cache_bytes: 1 << 20,
        leveled: LeveledOptions {
            l0_compaction_trigger: 100,
            ..roomy().leveled
        },
        ..roomy()
    };
    let keys: Vec<Vec<u8>> = (0..300).map(key).collect();
    for (retain, memtable_bytes) in [(true, 64 << 10), (false, 64 << 10), (true, 1 << 20)] {
        let dir = tempfile::tempdir()?;
        let engine = LsmEngine::open(dir.path(), options(retain, memtable_bytes))?;
        for (i, k) in keys.iter().enumerate() {
            engine.put(k, format!("old-{i}").as_bytes(), None)?;
        }
        let before = engine.snapshot();
        for (i, k) in keys.iter().enumerate().take(100) {
            engine.put(k, format!("new-{i}").as_bytes(), None)?;
        }
        assert!(
            engine.get(&keys[0])?.is_some(),
            "a point read before the flush"
        );
        engine.flush()?;
        let sv = engine.inner.current();
        assert!(sv.active.is_empty() && sv.imms.is_empty());
        if !retain || memtable_bytes > (1 << 20) / 2 {
            assert!(
                sv.retained.is_none(),
                "kept with {retain}, {memtable_bytes}"
            );
            assert_eq!(engine.cache_stats().reserved_bytes, 0);
            assert!(
                engine.try_get_now(&keys[5]).is_none(),
                "a cold block, nothing kept"
            );
            continue;
        }
        let kept = Arc::clone(sv.retained.as_ref().ok_or("no memtable kept")?);
        assert_eq!(
            engine.cache_stats().reserved_bytes,
            kept.approximate_bytes()
        );
        // Every key is answered without I/O, with its newest value, and nothing is cached.
        for (i, k) in keys.iter().enumerate() {
            let want = if i < 100 {
                format!("new-{i}")
            } else {
                format!("old-{i}")
            };
            assert_eq!(
                now_data(&engine, k).transpose()?,
                Some(Some(want.into_bytes()))
            );
        }
        let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        assert!(engine.try_get_many_now(&asked).iter().all(Option::is_some));
        assert_eq!(engine.cache_stats().entries, 0);
        // A read at the older snapshot sees the version it saw before the rewrite.
        let at_snapshot = engine.get_at(&before, &keys[3])?.map(|v| v.data.to_vec());
        assert_eq!(at_snapshot.as_deref(), Some(&b"old-3"[..]));
        // A compaction rewrites the tables under it and keeps it (and reads nothing into
        // the cache): every key is still answered without I/O.
        engine.compact_range(None, None)?;
        assert!(engine.inner.current().version.level(0).is_empty());
        let kept_now = engine.inner.current().retained.clone().ok_or("dropped")?;
        assert!(Arc::ptr_eq(&kept, &kept_now));
        assert!(engine.try_get_many_now(&asked).iter().all(Option::is_some));
        assert_eq!(
            now_data(&engine, &keys[150]).transpose()?,
            Some(Some(b"old-150".to_vec()))
        );
        // Newer writes and deletes shadow it.
        engine.put(&keys[1], b"newest", None)?;
        engine.delete(&keys[2])?;
        assert_eq!(
            now_data(&engine, &keys[1]).transpose()?,
            Some(Some(b"newest".to_vec()))
        );
        assert_eq!(now_data(&engine, &keys[2]).transpose()?, Some(None));
        // The next flush keeps its own memtable instead: a key only the first one held now
        // needs its table's block, and reads back from it.
        engine.flush()?;
        let second = Arc::clone(
            engine
                .inner
                .current()
                .retained
                .as_ref()
                .ok_or("none kept")?,
        );
        assert!(!Arc::ptr_eq(&kept, &second));
        assert_eq!(
            engine.cache_stats().reserved_bytes,
            second.approximate_bytes()
        );
        assert!(engine.try_get_now(&keys[10]).is_none(), "its block is cold");
        assert_eq!(data(&engine, &keys[10])?, Some(b"new-10".to_vec()));
        assert_eq!(
            now_data(&engine, &keys[1]).transpose()?,
            Some(Some(b"newest".to_vec()))
        );
        assert_eq!(now_data(&engine, &keys[2]).transpose()?, Some(None));
        // The reads above make the next flush keep its memtable; the flush after it, after
        // writes alone, keeps nothing and gives the cache its whole budget back.
        engine.put(&keys[51], b"after-reads", None)?;
        engine.flush()?;
        assert!(engine.inner.current().retained.is_some());
        // (A key the kept memtable holds too: were it still asked, it would answer stale.)
        engine.put(&keys[51], b"bulk", None)?;
        engine.put(&keys[50], b"bulk", None)?;
        engine.flush()?;
        assert!(engine.inner.current().retained.is_none());
        assert_eq!(engine.cache_stats().reserved_bytes, 0);
        for (i, k) in keys.iter().enumerate() {
            let want = match i {
                1 => Some(b"newest".to_vec()),
                2 => None,
                50 | 51 => Some(b"bulk".to_vec()),
                i if i < 100 => Some(format!("new-{i}").into_bytes()),
                i => Some(format!("old-{i}").into_bytes()),
            };
            assert_eq!(data(&engine, k)?, want, "key {i}");
        }
    }
    // One huge batch grew the memtable past three quarters of the cache: not kept, so that
    // the cache keeps room for blocks.
    let dir = tempfile::tempdir()?;
    let engine = LsmEngine::open(dir.path(), options(true, 64 << 10))?;
    engine.put(b"huge", &vec![7u8; 900 << 10], None)?;
    assert!(engine.get(b"huge")?.is_some());
    engine.flush()?;
    assert!(engine.inner.current().retained.is_none());
    assert_eq!(engine.cache_stats().reserved_bytes, 0);
    Ok(())
}
