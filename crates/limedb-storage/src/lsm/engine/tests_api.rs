//! Tests of the engine API of issue 4 points 6 and 9: snapshots, atomic write batches, range
//! iterators forward and backward, `compact_range`, `stats_detailed` and `checkpoint`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use super::*;

use super::tests::{key, put, tiny, TestResult};

fn collect(it: impl Iterator<Item = Result<(Bytes, Value)>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    it.map(|e| e.map(|(k, v)| (k.to_vec(), v.data.to_vec())))
        .collect()
}

fn data_at(engine: &LsmEngine, s: &Snapshot, k: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(engine.get_at(s, k)?.map(|v| v.data.to_vec()))
}

#[test]
fn snapshot_isolation_across_flush_and_compaction() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = LsmEngine::open(dir.path(), tiny())?;
    let mut model = BTreeMap::new();
    for i in 0..200 {
        let v = format!("old{i}").into_bytes();
        engine.put(&key(i), &v, None)?;
        model.insert(key(i), v);
    }
    let snapshot = engine.snapshot();
    assert_eq!(engine.stats_detailed().live_snapshots, 1);
    // Overwrite, delete and add after the snapshot, enough for many flushes and compactions.
    for round in 0..5 {
        for i in 0..200 {
            engine.put(&key(i), format!("new{round}-{i}").as_bytes(), None)?;
        }
        for i in (0..200).step_by(3) {
            engine.delete(&key(i))?;
        }
        for i in 200..260 {
            engine.put(&key(i), b"added", None)?;
        }
    }
    engine.compact()?;
    engine.compact_range(None, None)?;
    assert!(engine.counters().compactions > 0);
    for i in 0..260 {
        assert_eq!(
            data_at(&engine, &snapshot, &key(i))?,
            model.get(&key(i)).cloned(),
            "key {i}"
        );
    }
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
    let all = engine.range(Bound::Unbounded, Bound::Unbounded, Some(&snapshot))?;
    assert_eq!(collect(all)?, want);
    let back = engine.range(Bound::Unbounded, Bound::Unbounded, Some(&snapshot))?;
    let mut reversed = collect(back.rev())?;
    reversed.reverse();
    assert_eq!(reversed, want);
    // The latest state is unaffected.
    assert_eq!(engine.get(&key(0))?, None);
    assert_eq!(
        engine.get(&key(1))?.map(|v| v.data.to_vec()),
        Some(b"new4-1".to_vec())
    );
    assert_eq!(engine.len()?, 200 - 67 + 60);

    // Once released, compaction reclaims the old versions.
    drop(snapshot);
    assert_eq!(engine.stats_detailed().live_snapshots, 0);
    engine.compact_range(None, None)?;
    let stats = engine.stats_detailed();
    let entries: u64 = (0..NUM_LEVELS)
        .flat_map(|l| engine.version().level(l).to_vec())
        .map(|t| t.entry_count)
        .sum();
    assert_eq!(entries, 200 - 67 + 60, "{stats:?}");
    Ok(())
}

#[test]
fn snapshot_of_another_engine_is_rejected() -> TestResult {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let ea = LsmEngine::open(a.path(), tiny())?;
    let eb = LsmEngine::open(b.path(), tiny())?;
    let s = ea.snapshot();
    assert!(matches!(
        eb.get_at(&s, b"k"),
        Err(StorageError::InvalidInput { .. })
    ));
    Ok(())
}

#[test]
fn iterator_outlives_compaction_of_its_tables() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = LsmEngine::open(dir.path(), tiny())?;
    for i in 0..300 {
        engine.put(&key(i), b"first", None)?;
    }
    engine.flush()?;
    let mut it = engine.range(Bound::Unbounded, Bound::Unbounded, None)?;
    let first = it.next().ok_or("empty")??;
    assert_eq!(&first.0[..], key(0).as_slice());
    let before: Vec<u64> = engine.version().live_file_numbers().collect();
    for i in 0..300 {
        engine.put(&key(i), b"second", None)?;
    }
    engine.compact_range(None, None)?;
    let after: Vec<u64> = engine.version().live_file_numbers().collect();
    assert!(
        before.iter().all(|n| !after.contains(n)),
        "the old tables were compacted away: {before:?} {after:?}"
    );
    let rest = collect(it)?;
    assert_eq!(rest.len(), 299);
    assert!(rest.iter().all(|(_, v)| v == b"first"));
    Ok(())
}

#[test]
fn write_batch_is_atomic_for_concurrent_readers() -> TestResult {
    const ACCOUNTS: usize = 4;
    const TOTAL: i64 = 1000;
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(LsmEngine::open(dir.path(), tiny())?);
    let account = |i: usize| format!("account{i}").into_bytes();
    let initial: Vec<Vec<u8>> = (0..ACCOUNTS)
        .map(|i| (if i == 0 { TOTAL } else { 0 }).to_string().into_bytes())
        .collect();
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account).collect();
    let ops: Vec<WriteOp<'_>> = keys.iter().zip(&initial).map(|(k, v)| put(k, v)).collect();
    engine.write_batch(&ops)?;
    let stop = Arc::new(AtomicBool::new(false));
    let parse = |v: &[u8]| -> Result<i64> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(StorageError::Closed)
    };
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let engine = Arc::clone(&engine);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || -> std::result::Result<u64, String> {
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // A range scan reads one point in time; so do gets at a snapshot.
                    let sum = if r % 2 == 0 {
                        let it = engine
                            .range(
                                Bound::Included(b"account"),
                                Bound::Excluded(b"accountz"),
                                None,
                            )
                            .map_err(|e| e.to_string())?;
                        let mut sum = 0;
                        for e in it {
                            let (_, v) = e.map_err(|e| e.to_string())?;
                            sum += parse(&v.data).map_err(|e| e.to_string())?;
                        }
                        sum
                    } else {
                        let s = engine.snapshot();
                        let mut sum = 0;
                        for i in 0..ACCOUNTS {
                            let v = engine
                                .get_at(&s, &account(i))
                                .map_err(|e| e.to_string())?
                                .ok_or("missing account")?;
                            sum += parse(&v.data).map_err(|e| e.to_string())?;
                        }
                        sum
                    };
                    if sum != TOTAL {
                        return Err(format!("reader {r} saw a half batch: sum {sum}"));
                    }
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();
    // Move money around with padding values so that memtables fill and flush.
    let pad = vec![7u8; 200];
    let mut balances = [0i64; ACCOUNTS];
    balances[0] = TOTAL;
    for step in 0..3000usize {
        let (from, to) = (step % ACCOUNTS, (step * 7 + 1) % ACCOUNTS);
        if from == to {
            continue;
        }
        let amount = (step % 13) as i64;
        balances[from] -= amount;
        balances[to] += amount;
        let (f, t) = (
            balances[from].to_string().into_bytes(),
            balances[to].to_string().into_bytes(),
        );
        let padding = format!("pad{:03}", step % 100).into_bytes();
        engine.write_batch(&[
            put(&keys[from], &f),
            WriteOp::Delete { key: b"zzz" },
            put(&padding, &pad),
            put(&keys[to], &t),
        ])?;
        // Padding keys are not accounts: delete them from the sum's view.
        engine.delete(&padding)?;
        if step % 500 == 0 {
            engine.flush()?;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        let reads = r.join().map_err(|_| "reader panicked")??;
        assert!(reads > 0);
    }
    assert!(engine.counters().flushes > 3);
    let stats = engine.stats_detailed();
    assert!(stats.user_bytes_written > 3000 * 200);
    assert!(stats.write_amplification().is_some_and(|w| w > 0.0));
    Ok(())
}

#[test]
fn torn_batch_at_the_wal_tail_is_dropped_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
        engine.write_batch(&[put(b"a", b"1"), put(b"b", b"1")])?;
        engine.write_batch(&[put(b"a", b"2"), put(b"b", b"2"), put(b"c", b"2")])?;
        engine.close()?;
    }
    // Cut the last record short, as a crash in the middle of its write would.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.path().join("wal"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    segments.sort();
    let last = segments.last().ok_or("no WAL segment")?;
    let len = std::fs::metadata(last)?.len();
    let file = std::fs::OpenOptions::new().write(true).open(last)?;
    file.set_len(len - 5)?;
    drop(file);
    let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
    let got = collect(engine.range(Bound::Unbounded, Bound::Unbounded, None)?)?;
    assert_eq!(
        got,
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"1".to_vec())
        ],
        "none of the torn batch survives"
    );
    // The log continues after the repaired tail.
    engine.put(b"c", b"3", None)?;
    engine.close()?;
    let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
    assert_eq!(
        engine.get(b"c")?.map(|v| v.data.to_vec()),
        Some(b"3".to_vec())
    );
    Ok(())
}

#[test]
fn range_bounds_and_both_ends() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = LsmEngine::open(dir.path(), tiny())?;
    let mut model = BTreeMap::new();
    for i in 0..700 {
        let v = format!("v{i}").into_bytes();
        engine.put(&key(i), &v, None)?;
        model.insert(key(i), v);
        if i % 7 == 0 {
            engine.delete(&key(i / 2))?;
            model.remove(&key(i / 2));
        }
    }
    engine.put(&key(3), b"expired", Some(1))?;
    model.remove(&key(3));
    type Range = (Bound<Vec<u8>>, Bound<Vec<u8>>);
    let bounds: Vec<Range> = vec![
        (Bound::Unbounded, Bound::Unbounded),
        (Bound::Included(key(10)), Bound::Excluded(key(600))),
        (Bound::Excluded(key(10)), Bound::Included(key(600))),
        (Bound::Excluded(key(0)), Bound::Unbounded),
        (Bound::Unbounded, Bound::Included(key(3))),
        (Bound::Included(key(5)), Bound::Included(key(5))),
        (
            Bound::Included(b"key000100x".to_vec()),
            Bound::Excluded(key(400)),
        ),
    ];
    fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        b.as_ref().map(Vec::as_slice)
    }
    for (lo, hi) in &bounds {
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .range::<Vec<u8>, _>((lo.clone(), hi.clone()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let fwd = collect(engine.range(as_ref(lo), as_ref(hi), None)?)?;
        assert_eq!(fwd, want, "{lo:?}..{hi:?}");
        let mut back = collect(engine.range(as_ref(lo), as_ref(hi), None)?.rev())?;
        back.reverse();
        assert_eq!(back, want, "rev {lo:?}..{hi:?}");
        // Alternating ends meet without overlap or gap.
        let mut it = engine.range(as_ref(lo), as_ref(hi), None)?;
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        for step in 0.. {
            let next = if step % 3 == 0 {
                it.next_back().map(|e| e.map(|x| tail.push(x)))
            } else {
                it.next().map(|e| e.map(|x| head.push(x)))
            };
            match next {
                Some(r) => r?,
                None => break,
            }
        }
        tail.reverse();
        head.extend(tail);
        let got: Vec<(Vec<u8>, Vec<u8>)> = head
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.data.to_vec()))
            .collect();
        assert_eq!(got, want, "both ends {lo:?}..{hi:?}");
    }
    Ok(())
}

#[test]
fn compact_range_moves_the_range_to_the_bottom() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = LsmOptions {
        memtable_bytes: 1 << 20, // only explicit flushes
        leveled: LeveledOptions {
            l0_compaction_trigger: 100, // no automatic compaction
            ..tiny().leveled
        },
        ..tiny()
    };
    let engine = LsmEngine::open(dir.path(), options)?;
    for round in 0..4 {
        for i in 0..100 {
            engine.put(&key(i), format!("r{round}").as_bytes(), None)?;
        }
        engine.flush()?;
    }
    for i in 0..50 {
        engine.delete(&key(i))?;
    }
    engine.flush()?;
    let before = engine.stats_detailed();
    assert_eq!(before.levels[0].tables, 5);
    assert_eq!(before.counters.compactions, 0);
    engine.compact_range(Some(&key(10)), Some(&key(20)))?;
    let after = engine.stats_detailed();
    assert_eq!(after.levels[0].tables, 0, "all of L0 goes down: {after:?}");
    assert_eq!(after.table_count(), after.levels[1].tables, "{after:?}");
    let entries: u64 = engine
        .version()
        .level(1)
        .iter()
        .map(|t| t.entry_count)
        .sum();
    assert_eq!(
        entries, 50,
        "shadowed versions and bottom tombstones dropped"
    );
    assert!(after.counters.compactions >= 1);
    assert!(after.counters.bytes_compacted > 0);
    assert_eq!(engine.len()?, 50);
    for i in 0..100 {
        let want = (i >= 50).then(|| b"r3".to_vec());
        assert_eq!(engine.get(&key(i))?.map(|v| v.data.to_vec()), want);
    }
    // A range that overlaps nothing changes nothing.
    engine.compact_range(Some(b"zzz"), None)?;
    assert_eq!(engine.stats_detailed().levels, after.levels);
    // The whole key space goes to the bottom level.
    engine.compact_range(None, None)?;
    let full = engine.stats_detailed();
    let bottom = full.levels.last().ok_or("no levels")?;
    assert_eq!(full.table_count(), bottom.tables, "{full:?}");
    assert!(bottom.tables > 0);
    assert_eq!(engine.len()?, 50);
    Ok(())
}

#[test]
fn checkpoint_round_trip_while_writes_continue() -> TestResult {
    let dir = tempfile::tempdir()?;
    let dest = tempfile::tempdir()?;
    let dest_dir = dest.path().join("checkpoint");
    let engine = Arc::new(LsmEngine::open(dir.path(), tiny())?);
    for i in 0..500 {
        engine.put(&key(i), format!("v{i}").as_bytes(), None)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let engine = Arc::clone(&engine);
        let stop = Arc::clone(&stop);
        let written = Arc::clone(&written);
        std::thread::spawn(move || -> Result<()> {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                engine.put(&key(i % 700), format!("w{i}").as_bytes(), None)?;
                if i.is_multiple_of(5) {
                    engine.delete(&key((i * 3) % 700))?;
                }
                i += 1;
                written.store(i, Ordering::SeqCst);
            }
            Ok(())
        })
    };
    // Writes are running before the checkpoint and go on after it.
    let wait_for_writes = |at_least: usize| {
        while written.load(Ordering::SeqCst) < at_least && !writer.is_finished() {
            std::thread::yield_now();
        }
    };
    wait_for_writes(200);
    let snapshot = engine.checkpoint(&dest_dir)?;
    let after = written.load(Ordering::SeqCst);
    wait_for_writes(after + 200);
    stop.store(true, Ordering::SeqCst);
    writer.join().map_err(|_| "writer panicked")??;
    assert!(matches!(
        engine.checkpoint(&dest_dir),
        Err(StorageError::InvalidInput { .. })
    ));

    let want = collect(engine.range(Bound::Unbounded, Bound::Unbounded, Some(&snapshot))?)?;
    let now = collect(engine.range(Bound::Unbounded, Bound::Unbounded, None)?)?;
    assert_ne!(want, now, "writes went on after the checkpoint");
    let copy = LsmEngine::open(&dest_dir, tiny())?;
    assert_eq!(
        collect(copy.range(Bound::Unbounded, Bound::Unbounded, None)?)?,
        want
    );
    // The copy is independent: it takes writes and reopens.
    copy.put(b"only-in-copy", b"1", None)?;
    copy.compact_range(None, None)?;
    copy.close()?;
    drop(copy);
    let copy = LsmEngine::open(&dest_dir, tiny())?;
    assert!(copy.get(b"only-in-copy")?.is_some());
    assert!(engine.get(b"only-in-copy")?.is_none());
    assert_eq!(copy.len()?, want.len() as u64 + 1);
    Ok(())
}
