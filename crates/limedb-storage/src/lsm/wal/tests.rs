//! Tests of the WAL: round trips, recovery rules, group commit, poisoning, segment deletion.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use batch::RECORD_HEADER_LEN;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn opts(sync: SyncPolicy) -> WalOptions {
    WalOptions {
        sync,
        max_segment_bytes: 64 << 20,
    }
}

/// A batch of `n` ops derived from `i`: puts with values of varying length and some deletes.
fn batch(i: u64, n: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    for j in 0..n {
        let key = format!("key-{i}-{j}");
        if (i + j) % 5 == 4 {
            b.delete(key);
        } else {
            b.put(key, vec![(i % 251) as u8; ((i * 7 + j) % 40) as usize]);
        }
    }
    b
}

/// The recovered batches as (first seqno, batch).
fn flat(recovered: &[RecoveredBatch]) -> Vec<(u64, WriteBatch)> {
    recovered
        .iter()
        .map(|r| (r.first_seqno, r.batch.clone()))
        .collect()
}

fn file_len(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

fn flip_byte(path: &Path, offset: u64) -> std::io::Result<()> {
    let mut data = std::fs::read(path)?;
    if let Some(b) = data.get_mut(offset as usize) {
        *b ^= 0x5a;
    }
    std::fs::write(path, data)
}

/// Overwrites `range` of the file at `path` with zero bytes, as a lost page write leaves it.
fn zero_range(path: &Path, range: std::ops::Range<u64>) -> std::io::Result<()> {
    let mut data = std::fs::read(path)?;
    if let Some(bytes) = data.get_mut(range.start as usize..range.end as usize) {
        bytes.fill(0);
    }
    std::fs::write(path, data)
}

/// The batches of `recovered`, in order.
fn recovered_batches(recovered: Vec<RecoveredBatch>) -> Vec<WriteBatch> {
    recovered.into_iter().map(|r| r.batch).collect()
}

fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    OpenOptions::new().write(true).open(path)?.set_len(len)
}

fn expect_corrupt<T>(result: Result<T>) -> (PathBuf, u64, String) {
    match result {
        Err(StorageError::Corrupt {
            path,
            offset,
            reason,
        }) => (path, offset, reason),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, got Ok"),
    }
}

/// Writes `batches` to a fresh WAL in `dir` and returns, per batch, the byte range of its
/// record in the (single) segment.
fn write_batches(dir: &Path, batches: &[WriteBatch]) -> Result<(PathBuf, Vec<(u64, u64)>)> {
    let (wal, _) = Wal::open(dir, opts(SyncPolicy::Never))?;
    let path = wal.segment_paths().pop().unwrap_or_default();
    let mut ranges = Vec::new();
    let mut start = SEGMENT_HEADER_LEN as u64;
    for b in batches {
        wal.append(b)?;
        let end = start + record_len(b);
        ranges.push((start, end));
        start = end;
    }
    wal.close()?;
    Ok((path, ranges))
}

#[test]
fn round_trip_across_rotation_and_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = WalOptions {
        sync: SyncPolicy::Never,
        max_segment_bytes: 2048,
    };
    let mut expected = Vec::new();
    {
        let (wal, recovered) = Wal::open(dir.path(), options)?;
        assert!(recovered.is_empty());
        let mut next = 1;
        for i in 0..300 {
            let b = batch(i, 1 + i % 4);
            let last = wal.append(&b)?;
            assert_eq!(last, next + b.len() as u64 - 1);
            expected.push((next, b));
            next = last + 1;
            if i % 97 == 0 {
                wal.rotate()?;
            }
        }
        assert!(wal.segment_paths().len() > 5, "{:?}", wal.segment_paths());
        wal.close()?;
    }
    let (wal, recovered) = Wal::open(dir.path(), options)?;
    assert_eq!(flat(&recovered), expected);
    // Sequence numbers inside a batch follow its order.
    let first = recovered.first().ok_or("no batches")?;
    let seqnos: Vec<u64> = first.iter().map(|(s, _)| s).collect();
    assert_eq!(seqnos, (1..=first.batch.len() as u64).collect::<Vec<_>>());
    // Every segment is named after its first seqno and starts at a batch boundary.
    let names: Vec<u64> = wal
        .segment_paths()
        .iter()
        .filter_map(|p| p.file_name()?.to_str().and_then(parse_segment_file_name))
        .collect();
    assert_eq!(names.len(), wal.segment_paths().len());
    for n in &names {
        assert!(
            *n == wal.last_seqno() + 1 || expected.iter().any(|(s, _)| s == n),
            "segment {n} does not start a batch"
        );
    }
    // Appends continue in the reopened active segment; a rotate starts a new one, and a
    // rotate of an empty active segment does nothing.
    let before = wal.segment_paths().len();
    wal.rotate()?;
    assert_eq!(wal.segment_paths().len(), before + 1);
    wal.rotate()?;
    assert_eq!(wal.segment_paths().len(), before + 1);
    assert_eq!(
        wal.segment_paths().pop(),
        Some(dir.path().join(segment_file_name(wal.last_seqno() + 1)))
    );
    Ok(())
}

#[test]
fn seqnos_continue_after_reopen_even_when_every_segment_was_flushed() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let (wal, _) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
        assert_eq!(wal.append(&batch(0, 3))?, 3);
        assert_eq!(
            wal.append(&WriteBatch::new())?,
            3,
            "empty batch logs nothing"
        );
    }
    {
        let (wal, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
        assert_eq!(recovered.len(), 1);
        assert_eq!(wal.last_seqno(), 3);
        assert_eq!(wal.append(&batch(1, 2))?, 5);
        // Flush everything: rotate, then delete all closed segments.
        wal.rotate()?;
        assert_eq!(wal.delete_obsolete(5)?, 1);
        assert_eq!(wal.segment_paths().len(), 1);
    }
    let (wal, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
    assert!(recovered.is_empty());
    assert_eq!(
        wal.last_seqno(),
        5,
        "the empty active segment remembers the seqno"
    );
    assert_eq!(wal.append(&batch(2, 1))?, 6);
    Ok(())
}

#[test]
fn torn_tail_at_every_cut_position_is_truncated() -> TestResult {
    let batches = [batch(1, 2), batch(2, 3), batch(3, 2)];
    let probe = tempfile::tempdir()?;
    let (_, ranges) = write_batches(probe.path(), &batches)?;
    let (last_start, last_end) = *ranges.last().ok_or("no ranges")?;
    for cut in last_start..last_end {
        let dir = tempfile::tempdir()?;
        let (path, _) = write_batches(dir.path(), &batches)?;
        truncate(&path, cut)?;
        let (wal, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
        assert_eq!(recovered.len(), 2, "cut at {cut}");
        assert_eq!(file_len(&path)?, last_start, "cut at {cut}: truncated");
        // The lost batch had seqnos 6..=7: appends reuse them.
        assert_eq!(wal.append(&batch(9, 1))?, 6, "cut at {cut}");
        drop(wal);
        let (_, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
        let firsts: Vec<u64> = recovered.iter().map(|r| r.first_seqno).collect();
        assert_eq!(firsts, vec![1, 3, 6], "cut at {cut}");
    }
    Ok(())
}

#[test]
fn torn_final_checksum_zero_tail_and_torn_header_are_truncated() -> TestResult {
    let batches = [batch(1, 2), batch(2, 3)];
    // The final record fails its checksum and ends exactly at end of file.
    let dir = tempfile::tempdir()?;
    let (path, ranges) = write_batches(dir.path(), &batches)?;
    let (start, end) = ranges.get(1).copied().ok_or("ranges")?;
    flip_byte(&path, end - 1)?;
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default())?;
    assert_eq!(recovered.len(), 1);
    assert_eq!(file_len(&path)?, start);

    // A tail of zero bytes (a file extended before its data reached disk).
    let dir = tempfile::tempdir()?;
    let (path, ranges) = write_batches(dir.path(), &batches)?;
    let mut data = std::fs::read(&path)?;
    data.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&path, &data)?;
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default())?;
    assert_eq!(recovered.len(), 2);
    assert_eq!(file_len(&path)?, ranges.get(1).ok_or("ranges")?.1);
    assert_eq!(wal.append(&batch(3, 1))?, 6);

    // A segment whose header was cut short by a crash during rotation.
    let dir = tempfile::tempdir()?;
    write_batches(dir.path(), &batches)?;
    let next = dir.path().join(segment_file_name(6));
    std::fs::write(&next, &segment_header(6)[..5])?;
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default())?;
    assert_eq!(recovered.len(), 2);
    assert_eq!(file_len(&next)?, SEGMENT_HEADER_LEN as u64);
    assert_eq!(wal.append(&batch(4, 1))?, 6);
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default())?;
    assert_eq!(recovered.len(), 3);
    Ok(())
}

#[test]
fn flipped_byte_in_an_early_record_is_corruption_with_path_and_offset() -> TestResult {
    let batches = [batch(1, 2), batch(2, 3), batch(3, 1)];
    let probe = tempfile::tempdir()?;
    let (_, ranges) = write_batches(probe.path(), &batches)?;
    for (index, &(start, end)) in ranges.iter().take(2).enumerate() {
        for offset in start..end {
            let dir = tempfile::tempdir()?;
            let (path, _) = write_batches(dir.path(), &batches)?;
            flip_byte(&path, offset)?;
            let (bad_path, bad_offset, reason) =
                expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
            assert_eq!(bad_path, path, "record {index}, byte {offset}: {reason}");
            assert_eq!(bad_offset, start, "record {index}, byte {offset}: {reason}");
            let message = StorageError::Corrupt {
                path: bad_path,
                offset: bad_offset,
                reason,
            }
            .to_string();
            assert!(
                message.contains("wal-00000000000000000001.log"),
                "{message}"
            );
            // Nothing was truncated away.
            assert_eq!(file_len(&path)?, ranges.last().ok_or("ranges")?.1);
        }
    }
    Ok(())
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() -> TestResult {
    for damage in ["flip", "cut", "zero tail"] {
        let dir = tempfile::tempdir()?;
        let first = {
            let (wal, _) = Wal::open(dir.path(), WalOptions::default())?;
            wal.append(&batch(1, 2))?;
            wal.append(&batch(2, 2))?;
            wal.rotate()?;
            wal.append(&batch(3, 2))?;
            wal.segment_paths().first().cloned().ok_or("no segment")?
        };
        let len = file_len(&first)?;
        match damage {
            "flip" => flip_byte(&first, len - 1)?,
            "cut" => truncate(&first, len - 3)?,
            _ => {
                let mut data = std::fs::read(&first)?;
                data.extend_from_slice(&[0u8; 64]);
                std::fs::write(&first, data)?;
            }
        }
        let (path, _, reason) = expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
        assert_eq!(path, first, "{damage}");
        assert!(
            reason.contains("only the last segment"),
            "{damage}: {reason}"
        );
    }
    Ok(())
}

#[test]
fn bad_magic_and_unknown_version_are_clear_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(segment_file_name(1));
    std::fs::write(&path, b"PK\x03\x04 this is a zip file, not a log")?;
    let (bad, offset, reason) = expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
    assert_eq!((bad, offset), (path.clone(), 0));
    assert!(reason.contains("LIMEWAL"), "{reason}");
    assert!(reason.contains("not a LimeDB write-ahead log"), "{reason}");
    // Short garbage is not mistaken for a torn header either.
    std::fs::write(&path, b"nope")?;
    expect_corrupt(Wal::open(dir.path(), WalOptions::default()));

    let mut header = segment_header(1);
    header[7] = 9;
    std::fs::write(&path, header)?;
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(StorageError::UnsupportedVersion {
            found: 9,
            supported: FORMAT_VERSION,
            ..
        }) => {}
        other => panic!("expected UnsupportedVersion, got {:?}", other.map(|_| ())),
    }

    // The header's seqno must match the file name.
    std::fs::write(&path, segment_header(7))?;
    let (_, offset, reason) = expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
    assert_eq!(offset, 8);
    assert!(reason.contains("first seqno 7"), "{reason}");
    // Files that are not segments are left alone.
    std::fs::write(&path, segment_header(1))?;
    std::fs::write(dir.path().join("wal-1.log"), b"junk")?;
    std::fs::write(dir.path().join("notes.txt"), b"junk")?;
    Wal::open(dir.path(), WalOptions::default())?;
    Ok(())
}

#[test]
fn group_commit_many_threads_all_present_after_reopen() -> TestResult {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 200;
    let dir = tempfile::tempdir()?;
    let fsyncs = {
        let (wal, _) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
        let wal = Arc::new(wal);
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || -> Result<Vec<u64>> {
                    let mut seqnos = Vec::new();
                    for i in 0..PER_THREAD {
                        let mut b = WriteBatch::new();
                        b.put(format!("t{t}-{i}"), format!("v{t}-{i}"));
                        seqnos.push(wal.append(&b)?);
                    }
                    Ok(seqnos)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| "appender panicked")??);
        }
        all.sort_unstable();
        assert_eq!(all, (1..=THREADS * PER_THREAD).collect::<Vec<_>>());
        wal.fsync_count()
    };
    assert!(fsyncs <= THREADS * PER_THREAD, "{fsyncs} fsyncs");
    let (_, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
    assert_eq!(recovered.len() as u64, THREADS * PER_THREAD);
    let mut keys: Vec<Vec<u8>> = recovered
        .iter()
        .flat_map(|r| r.batch.ops().iter().map(|op| op.key().to_vec()))
        .collect();
    keys.sort();
    let mut want: Vec<Vec<u8>> = (0..THREADS)
        .flat_map(|t| (0..PER_THREAD).map(move |i| format!("t{t}-{i}").into_bytes()))
        .collect();
    want.sort();
    assert_eq!(keys, want);
    Ok(())
}

#[test]
fn writers_waiting_for_an_fsync_share_one() -> TestResult {
    const WRITERS: u64 = 4;
    let dir = tempfile::tempdir()?;
    let (wal, _) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
    let wal = Arc::new(wal);
    // Hold the fsync side so that every writer writes its record and then queues for it.
    let guard = lock(&wal.syncer);
    let before = wal.fsync_count();
    let handles: Vec<_> = (0..WRITERS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || wal.append(&batch(t, 1)))
        })
        .collect();
    while wal.last_seqno() < WRITERS {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(guard);
    for h in handles {
        h.join().map_err(|_| "appender panicked")??;
    }
    assert_eq!(
        wal.fsync_count() - before,
        1,
        "one fsync covered all writers"
    );
    Ok(())
}

#[test]
fn interval_and_never_fsync_only_on_sync() -> TestResult {
    for policy in [
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_secs(60)),
    ] {
        let dir = tempfile::tempdir()?;
        let (wal, _) = Wal::open(dir.path(), opts(policy))?;
        wal.append(&batch(1, 2))?;
        wal.append(&batch(2, 2))?;
        assert_eq!(wal.fsync_count(), 0, "{policy}");
        wal.sync()?;
        assert_eq!(wal.fsync_count(), 1, "{policy}");
        wal.sync()?;
        assert_eq!(wal.fsync_count(), 1, "{policy}: nothing new to sync");
    }
    Ok(())
}

#[test]
fn failed_write_poisons_and_reopen_drops_the_half_record() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let (wal, _) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
        assert_eq!(wal.append(&batch(1, 2))?, 2);
        wal.fail_next_write();
        match wal.append(&batch(2, 3)) {
            Err(StorageError::Io { path, .. }) => {
                assert_eq!(Some(path), wal.segment_paths().pop());
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(wal.is_poisoned());
        assert!(matches!(
            wal.append(&batch(3, 1)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(wal.rotate(), Err(StorageError::Poisoned)));
        assert!(matches!(
            wal.append(&WriteBatch::new()),
            Err(StorageError::Poisoned)
        ));
    }
    // The half-written record is a torn tail.
    let (wal, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
    assert_eq!(flat(&recovered), vec![(1, batch(1, 2))]);
    assert_eq!(wal.append(&batch(4, 1))?, 3);
    Ok(())
}

#[test]
fn failed_fsync_poisons() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (wal, _) = Wal::open(dir.path(), opts(SyncPolicy::Always))?;
    wal.append(&batch(1, 1))?;
    wal.fail_next_sync();
    assert!(matches!(
        wal.append(&batch(2, 1)),
        Err(StorageError::Io { .. })
    ));
    assert!(matches!(
        wal.append(&batch(3, 1)),
        Err(StorageError::Poisoned)
    ));
    assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));

    // Under `Never` the failure surfaces at `sync` (or at rotation) and poisons too.
    let dir = tempfile::tempdir()?;
    let (wal, _) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
    wal.append(&batch(1, 1))?;
    wal.fail_next_sync();
    assert!(matches!(wal.rotate(), Err(StorageError::Io { .. })));
    assert_eq!(
        wal.segment_paths().len(),
        1,
        "no new segment after a failed fsync"
    );
    assert!(matches!(
        wal.append(&batch(2, 1)),
        Err(StorageError::Poisoned)
    ));
    Ok(())
}

#[test]
fn delete_obsolete_removes_only_fully_flushed_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (wal, _) = Wal::open(dir.path(), WalOptions::default())?;
    // Segment 1: seqnos 1..=10; segment 11: 11..=20; segment 21 (active): 21..=25.
    for _ in 0..5 {
        wal.append(&batch(1, 2))?;
    }
    wal.rotate()?;
    for _ in 0..5 {
        wal.append(&batch(2, 2))?;
    }
    wal.rotate()?;
    wal.append(&batch(3, 5))?;
    let names = |wal: &Wal| -> Vec<u64> {
        wal.segment_paths()
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(parse_segment_file_name))
            .collect()
    };
    assert_eq!(names(&wal), vec![1, 11, 21]);
    assert_eq!(wal.delete_obsolete(0)?, 0);
    assert_eq!(wal.delete_obsolete(9)?, 0, "seqno 10 is not flushed yet");
    assert_eq!(
        wal.delete_obsolete(15)?,
        1,
        "segment 11 still holds 16..=20"
    );
    assert_eq!(names(&wal), vec![11, 21]);
    assert!(!dir.path().join(segment_file_name(1)).exists());
    assert_eq!(wal.delete_obsolete(1_000)?, 1, "the active segment stays");
    assert_eq!(names(&wal), vec![21]);
    assert_eq!(wal.delete_obsolete(u64::MAX)?, 0);
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default())?;
    assert_eq!(flat(&recovered), vec![(21, batch(3, 5))]);
    assert_eq!(wal.append(&batch(4, 1))?, 26);
    Ok(())
}

#[test]
fn rejects_oversized_keys_without_poisoning() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (wal, _) = Wal::open(dir.path(), WalOptions::default())?;
    let mut b = WriteBatch::new();
    b.put(vec![0u8; crate::MAX_KEY_BYTES + 1], "v");
    assert!(matches!(
        wal.append(&b),
        Err(StorageError::KeyTooLarge { .. })
    ));
    assert!(!wal.is_poisoned());
    assert_eq!(wal.append(&batch(1, 1))?, 1);
    Ok(())
}

/// A valid last segment holding three batches, and the batches.
fn valid_segment() -> (Vec<u8>, Vec<RecoveredBatch>) {
    let mut data = segment_header(1).to_vec();
    let mut batches = Vec::new();
    let mut first = 1;
    for i in 0..3 {
        let b = batch(i, 2);
        b.encode_record(first, &mut data);
        batches.push(RecoveredBatch {
            first_seqno: first,
            batch: b,
        });
        first += 2;
    }
    (data, batches)
}

proptest! {
    #[test]
    fn replay_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        is_last in any::<bool>(),
    ) {
        let _ = replay_segment(&Bytes::from(bytes), Path::new("x"), 1, is_last);
    }

    /// Any damage to a segment gives an error or a prefix of what was written: never a batch
    /// that was not written.
    #[test]
    fn damaged_segments_replay_a_prefix_or_fail(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (mut data, batches) = valid_segment();
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        if let Some(cut) = cut {
            data.truncate(cut.index(data.len() + 1));
        }
        if let Ok(replay) = replay_segment(&Bytes::from(data), Path::new("x"), 1, true) {
            prop_assert!(replay.batches.len() <= batches.len());
            prop_assert_eq!(&replay.batches[..], &batches[..replay.batches.len()]);
        }
    }
}

/// Bytes of the record of `b` (headers included), as a segment holds it.
fn record_len(b: &WriteBatch) -> u64 {
    (RECORD_HEADER_LEN + batch::BATCH_HEADER_LEN) as u64 + b.size_bytes()
}

/// Bytes of the records of `batches`.
fn records_len(batches: &[WriteBatch]) -> u64 {
    batches.iter().map(record_len).sum()
}

/// Whether the log maps its appends in `dir`: its file system overwrites in place.
fn maps_appends_in(dir: &Path) -> std::io::Result<bool> {
    let probe = tempfile::tempfile_in(dir)?;
    Ok(window::file_system_allows(&probe))
}

/// Opens the log in `dir`; with `windows` off, appends `pwrite` their records (as on a file
/// system that copies on write) instead of copying them into a mapped window.
fn open_with(dir: &Path, windows: bool) -> Result<(Wal, Vec<RecoveredBatch>)> {
    let (wal, recovered) = Wal::open(dir, opts(SyncPolicy::Never))?;
    let wal = if windows {
        wal
    } else {
        wal.without_append_windows()
    };
    Ok((wal, recovered))
}

/// Appends `batches` to a fresh log in `dir` and abandons it without closing or dropping it,
/// as `kill -9` would; returns the path of its segment.
fn append_then_kill(
    dir: &Path,
    batches: &[WriteBatch],
) -> std::result::Result<PathBuf, Box<dyn std::error::Error>> {
    append_then_kill_with(dir, batches, true)
}

/// [`append_then_kill`], with or without append windows.
fn append_then_kill_with(
    dir: &Path,
    batches: &[WriteBatch],
    windows: bool,
) -> std::result::Result<PathBuf, Box<dyn std::error::Error>> {
    let (wal, _) = open_with(dir, windows)?;
    for b in batches {
        wal.append(b)?;
    }
    let path = wal.segment_paths().pop().ok_or("no segment")?;
    std::mem::forget(wal);
    Ok(path)
}

#[test]
fn segments_grow_ahead_of_their_records_and_are_trimmed_when_closed() -> TestResult {
    for windows in [true, false] {
        segments_grow_and_are_trimmed(windows)?;
    }
    Ok(())
}

fn segments_grow_and_are_trimmed(windows: bool) -> TestResult {
    let dir = tempfile::tempdir()?;
    let (wal, _) = open_with(dir.path(), windows)?;
    let first: Vec<WriteBatch> = (0..50).map(|i| batch(i, 3)).collect();
    for b in &first {
        wal.append(b)?;
    }
    let records = SEGMENT_HEADER_LEN as u64 + records_len(&first);
    let active = wal.segment_paths().pop().ok_or("no segment")?;
    // Appends wrote into zeros the file already had: written (so allocated) for a window,
    // where the file system overwrites in place; a hole otherwise.
    assert_eq!(file_len(&active)?, SEGMENT_HEADER_LEN as u64 + EXTEND_BYTES);
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&active)?) * 512;
    if !windows {
        assert!(allocated < EXTEND_BYTES, "{allocated} bytes allocated");
        assert!(!wal.has_append_window());
    } else if maps_appends_in(dir.path())? {
        assert!(allocated >= EXTEND_BYTES, "{allocated} bytes allocated");
        assert!(wal.has_append_window(), "appends were not mapped");
    }
    assert!(file_len(&active)? > records);
    assert_eq!(wal.size_bytes(), records, "the zeros are not log bytes");
    // A closed segment ends at its last record; so does the active one once the log closes.
    wal.rotate()?;
    assert_eq!(file_len(&active)?, records);
    assert_eq!(wal.size_bytes(), records + SEGMENT_HEADER_LEN as u64);
    let second: Vec<WriteBatch> = (50..60).map(|i| batch(i, 2)).collect();
    for b in &second {
        wal.append(b)?;
    }
    let active = wal.segment_paths().pop().ok_or("no segment")?;
    assert!(file_len(&active)? > SEGMENT_HEADER_LEN as u64 + records_len(&second));
    wal.close()?;
    assert_eq!(
        file_len(&active)?,
        SEGMENT_HEADER_LEN as u64 + records_len(&second)
    );
    let (_, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
    let all: Vec<WriteBatch> = first.into_iter().chain(second).collect();
    let got = recovered_batches(recovered);
    assert_eq!(got, all);
    Ok(())
}

/// A process killed after its appends leaves the zeros ahead of the last record; every
/// appended batch is recovered and the zeros are cut off, also when a record larger than the
/// extension step made the file grow by more than it.
#[test]
fn a_crash_leaves_zeros_after_the_last_record_and_reopen_recovers_every_batch() -> TestResult {
    for windows in [true, false] {
        a_crash_leaves_zeros(windows)?;
    }
    Ok(())
}

fn a_crash_leaves_zeros(windows: bool) -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut big = WriteBatch::new();
    big.put("big", vec![7u8; EXTEND_BYTES as usize + 1000]);
    let written = vec![batch(1, 4), big, batch(2, 3)];
    let active = append_then_kill_with(dir.path(), &written, windows)?;
    assert!(file_len(&active)? > SEGMENT_HEADER_LEN as u64 + records_len(&written));
    let (wal, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
    let got = recovered_batches(recovered);
    assert_eq!(got, written);
    let active = wal.segment_paths().pop().ok_or("no segment")?;
    assert_eq!(
        file_len(&active)?,
        SEGMENT_HEADER_LEN as u64 + records_len(&written)
    );
    let next = wal.append(&batch(3, 1))?;
    assert_eq!(
        next,
        written.iter().map(|b| b.len() as u64).sum::<u64>() + 1
    );
    Ok(())
}

/// A record larger than an extension is written with `pwrite` into a sparse extension, not
/// over zeros written first; the small record after it gets a window again (where the file
/// system allows), and a kill loses neither.
#[test]
fn a_record_larger_than_an_extension_is_written_without_a_window() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (wal, _) = open_with(dir.path(), true)?;
    let mut large = WriteBatch::new();
    large.put("large", vec![7u8; 3 * EXTEND_BYTES as usize]);
    wal.append(&large)?;
    assert!(!wal.has_append_window());
    let active = wal.segment_paths().pop().ok_or("no segment")?;
    let records = SEGMENT_HEADER_LEN as u64 + record_len(&large);
    // The file ends at the record: no extension beyond it, and no zeros written under it.
    assert_eq!(file_len(&active)?, records);
    let small = batch(1, 2);
    wal.append(&small)?;
    assert_eq!(wal.has_append_window(), maps_appends_in(dir.path())?);
    std::mem::forget(wal);
    let (_, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
    assert_eq!(recovered_batches(recovered), vec![large, small]);
    Ok(())
}

/// Appends spanning several extensions of the file (each a new append window), the process
/// then killed: every batch is recovered, in order, with or without windows; and a log
/// reopened after the kill goes on appending where the last record ended.
#[test]
fn appends_across_many_extensions_survive_a_kill() -> TestResult {
    for windows in [true, false] {
        let dir = tempfile::tempdir()?;
        // 3,000 records of about 1 KiB: three extensions, records straddling their ends.
        let written: Vec<WriteBatch> = (0..3000)
            .map(|i| {
                let mut b = WriteBatch::new();
                b.put(
                    format!("key-{i}"),
                    vec![(i % 251) as u8; 1000 + (i as usize % 97)],
                );
                b
            })
            .collect();
        let active = append_then_kill_with(dir.path(), &written, windows)?;
        assert!(file_len(&active)? >= 3 * EXTEND_BYTES);
        let (wal, recovered) = open_with(dir.path(), windows)?;
        assert_eq!(recovered_batches(recovered), written);
        let more = batch(7, 2);
        wal.append(&more)?;
        wal.close()?;
        let (_, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
        let got = recovered_batches(recovered);
        assert_eq!(got.len(), written.len() + 1);
        assert_eq!(got.last(), Some(&more));
    }
    Ok(())
}

/// A power failure may lose a page of the unsynced tail while later pages reach the disk: a
/// record that overlaps a page of zeros is torn, and the records after it are dropped with it.
/// A record damaged otherwise, with data after it, is still corruption; and so is a lost page
/// in a segment that is not the last.
#[test]
fn a_page_of_zeros_in_the_last_segment_is_a_torn_tail() -> TestResult {
    let batches: Vec<WriteBatch> = (0..400).map(|i| batch(i, 4)).collect();
    let dir = tempfile::tempdir()?;
    let (path, ranges) = write_batches(dir.path(), &batches)?;
    let page = records::PAGE_BYTES as u64;
    assert!(
        file_len(&path)? > 4 * page,
        "the segment spans several pages"
    );
    zero_range(&path, page..2 * page)?;
    // The batches whose records end before the lost page survive.
    let kept = ranges.iter().take_while(|(_, end)| *end <= page).count();
    let (wal, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
    assert_eq!(recovered.len(), kept);
    let got = recovered_batches(recovered);
    assert_eq!(got, batches[..kept]);
    assert_eq!(file_len(&path)?, ranges[kept - 1].1);
    drop(wal);

    // The same page lost in a segment that a newer one follows is corruption.
    let dir = tempfile::tempdir()?;
    let (path, _) = write_batches(dir.path(), &batches)?;
    zero_range(&path, page..2 * page)?;
    let next_seqno = batches.iter().map(|b| b.len() as u64).sum::<u64>() + 1;
    std::fs::write(
        dir.path().join(segment_file_name(next_seqno)),
        segment_header(next_seqno),
    )?;
    let (corrupt_path, offset, _) = expect_corrupt(Wal::open(dir.path(), opts(SyncPolicy::Never)));
    assert_eq!(corrupt_path, path);
    assert!(offset <= page);

    // A flipped byte in a record in the middle of the last segment is corruption.
    let dir = tempfile::tempdir()?;
    let (path, ranges) = write_batches(dir.path(), &batches)?;
    let (start, end) = ranges[kept + 3];
    flip_byte(&path, (start + end) / 2)?;
    let (_, offset, reason) = expect_corrupt(Wal::open(dir.path(), opts(SyncPolicy::Never)));
    assert_eq!(offset, start, "{reason}");
    Ok(())
}

/// A record cut short with zeros after it (an append that a crash interrupted, in a file
/// extended ahead of it) is torn; the records before it are kept.
#[test]
fn a_record_cut_short_before_zeros_is_torn() -> TestResult {
    let batches: Vec<WriteBatch> = (0..20).map(|i| batch(i, 3)).collect();
    let dir = tempfile::tempdir()?;
    let (path, ranges) = write_batches(dir.path(), &batches)?;
    let (start, end) = ranges[19];
    let mut data = std::fs::read(&path)?;
    let cut = (start + (end - start) / 2) as usize;
    data.truncate(cut);
    data.resize(cut + 3000, 0);
    std::fs::write(&path, &data)?;
    let (_, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
    let got = recovered_batches(recovered);
    assert_eq!(got, batches[..19]);
    assert_eq!(file_len(&path)?, start);
    Ok(())
}

/// A page whose last write was lost holds only what an earlier write put there: the records
/// up to some point and zeros after them. A record header of zeros with only zeros to the end
/// of its page is that trace, even with later pages of data after it; the records before it
/// are kept.
#[test]
fn zeros_to_the_end_of_a_page_where_a_record_should_start_are_a_torn_tail() -> TestResult {
    let batches: Vec<WriteBatch> = (0..400).map(|i| batch(i, 4)).collect();
    let dir = tempfile::tempdir()?;
    let (path, ranges) = write_batches(dir.path(), &batches)?;
    let page = records::PAGE_BYTES as u64;
    // The first record that starts inside the second page, and everything from it to the end
    // of that page, lost.
    let lost = ranges
        .iter()
        .position(|(start, _)| *start > page)
        .ok_or("a record in the second page")?;
    zero_range(&path, ranges[lost].0..2 * page)?;
    let (_, recovered) = Wal::open(dir.path(), opts(SyncPolicy::Never))?;
    let got = recovered_batches(recovered);
    assert_eq!(got, batches[..lost]);
    assert_eq!(file_len(&path)?, ranges[lost].0);
    Ok(())
}

/// A length field damaged so that the record seems to end in the zeros a crash left after the
/// last record is corruption, not a torn tail: a prefix of the payload still matches its
/// checksum. So is a damaged record elsewhere that overlaps those zeros.
#[test]
fn a_damaged_length_reaching_into_the_zero_tail_is_corruption() -> TestResult {
    let dir = tempfile::tempdir()?;
    let written: Vec<WriteBatch> = (0..30).map(|i| batch(i, 3)).collect();
    let path = append_then_kill(dir.path(), &written)?;
    let mut data = std::fs::read(&path)?;
    assert!(
        data.len() as u64 > EXTEND_BYTES,
        "the zeros written ahead are there"
    );
    // The length of the third record, raised so that it ends inside the zeros.
    let third = SEGMENT_HEADER_LEN as u64 + records_len(&written[..2]);
    let at = third as usize;
    let claimed = u32::try_from(EXTEND_BYTES / 2)?;
    data[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
    std::fs::write(&path, &data)?;
    let (_, offset, reason) = expect_corrupt(Wal::open(dir.path(), opts(SyncPolicy::Never)));
    assert_eq!(offset, third, "{reason}");
    assert!(
        reason.contains("damaged length") || reason.contains("checksum"),
        "{reason}"
    );
    Ok(())
}
