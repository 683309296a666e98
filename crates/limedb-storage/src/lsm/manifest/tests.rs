//! Tests of the manifest: round trips across reopens, torn tails, corruption, rewrites,
//! `CURRENT` handling and poisoning.

use std::io::Write;

use super::*;
use crate::lsm::compaction::leveled::pick;
use crate::lsm::compaction::{Action, LeveledOptions};
use crate::lsm::key::{encode, ValueKind};
use crate::lsm::version::TableHandle;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn table(n: u64, lo: &str, hi: &str, size: u64, seqnos: (u64, u64)) -> TableHandle {
    TableHandle {
        file_number: n,
        file_size_bytes: size,
        smallest_key: encode(lo.as_bytes(), seqnos.1, ValueKind::Put).into(),
        largest_key: encode(hi.as_bytes(), seqnos.0, ValueKind::Put).into(),
        min_seqno: seqnos.0,
        max_seqno: seqnos.1,
        entry_count: 10,
    }
}

fn small_levels() -> LeveledOptions {
    LeveledOptions {
        base_level_bytes: 4000,
        level_size_multiplier: 4,
        ..LeveledOptions::default()
    }
}

/// The next change of a simulated engine: a compaction if the picker wants one, else a flush
/// of ten writes to a new L0 table.
fn next_edit(m: &mut Manifest, i: u64) -> VersionEdit {
    let v = m.current();
    if let Some(choice) = pick(&v, &small_levels()) {
        if choice.action == Action::TrivialMove {
            return choice.trivial_move_edit(&v).unwrap_or_default();
        }
        let tables = choice.all_file_numbers().filter_map(|n| v.find_table(n));
        let (size, min, max) = tables.fold((0, u64::MAX, 0), |(s, lo, hi), (_, t)| {
            (
                s + t.file_size_bytes,
                lo.min(t.min_seqno),
                hi.max(t.max_seqno),
            )
        });
        let (lo, hi) = choice.key_range.clone();
        let out = table(
            m.allocate_file_number(),
            std::str::from_utf8(&lo).unwrap_or_default(),
            std::str::from_utf8(&hi).unwrap_or_default(),
            size,
            (min, max),
        );
        return choice.merge_edit([out]);
    }
    let first = v.last_seqno() + 1;
    let last = first + 9;
    let lo = (i * 37) % 1000;
    let n = m.allocate_file_number();
    let mut edit = VersionEdit::default();
    edit.set_last_seqno(last)
        .set_log_number(last + 1)
        .add_table(
            0,
            table(
                n,
                &format!("k{lo:04}"),
                &format!("k{:04}", lo + 50),
                1000,
                (first, last),
            ),
        );
    edit
}

fn read_current(dir: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(dir.join(CURRENT_FILE_NAME))
}

fn expect_corrupt<T: std::fmt::Debug>(result: Result<T>) -> (PathBuf, u64, String) {
    match result {
        Err(StorageError::Corrupt {
            path,
            offset,
            reason,
        }) => (path, offset, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn round_trip_across_many_edits_and_reopens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut m = Manifest::create(dir.path(), ManifestOptions::default())?;
    assert_eq!(*m.current(), Version::new());
    assert_eq!(read_current(dir.path())?, "MANIFEST-000001\n");
    let mut saw_levels = [false; 4];
    for i in 0..300 {
        let edit = next_edit(&mut m, i);
        let v = m.log_and_apply(edit.clone())?;
        for added in &edit.new_tables {
            let found = v.find_table(added.table.file_number);
            assert_eq!(
                found.map(|(l, t)| (l, &**t)),
                Some((added.level, &added.table))
            );
        }
        assert!(edit.deleted_tables.iter().all(|d| v
            .find_table(d.file_number)
            .is_none_or(|(l, _)| l != d.level)));
        for (level, seen) in saw_levels.iter_mut().enumerate() {
            *seen |= v.table_count(level) > 0;
        }
        if i % 97 == 0 {
            // Reopen in the middle and carry on.
            let before = m.current();
            drop(m);
            let (reopened, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
            assert_eq!(v, before);
            m = reopened;
        }
    }
    assert_eq!(saw_levels, [true; 4], "flushes and compactions down to L3");
    let last = m.current();
    let size = m.size_bytes();
    assert_eq!(std::fs::metadata(m.path())?.len(), size);
    drop(m);
    let (m, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
    assert_eq!(v, last);
    assert_eq!(
        (m.number(), m.size_bytes()),
        (1, size),
        "no rewrite under 16 MiB"
    );
    assert!(v.next_file_number() > v.live_file_numbers().max().unwrap_or(0));
    Ok(())
}

#[test]
fn allocated_file_numbers_are_never_reused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut m = Manifest::create(dir.path(), ManifestOptions::default())?;
    assert_eq!((m.allocate_file_number(), m.allocate_file_number()), (1, 2));
    // An edit that mentions no file still records that 1 and 2 are taken.
    let mut edit = VersionEdit::default();
    edit.set_last_seqno(5);
    assert_eq!(m.log_and_apply(edit)?.next_file_number(), 3);
    drop(m);
    let (mut m, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
    assert_eq!(v.next_file_number(), 3);
    // An empty edit logs nothing...
    let size = m.size_bytes();
    assert_eq!(m.log_and_apply(VersionEdit::default())?, v);
    assert_eq!(m.size_bytes(), size);
    // ...unless file numbers were handed out since the last one.
    assert_eq!(m.allocate_file_number(), 3);
    assert_eq!(
        m.log_and_apply(VersionEdit::default())?.next_file_number(),
        4
    );
    assert!(m.size_bytes() > size);
    Ok(())
}

#[test]
fn an_invalid_edit_changes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut m = Manifest::create(dir.path(), ManifestOptions::default())?;
    let size = m.size_bytes();
    let mut edit = VersionEdit::default();
    edit.delete_table(1, 42);
    match m.log_and_apply(edit) {
        Err(StorageError::InvalidInput { path, reason }) => {
            assert_eq!(path, m.path());
            assert!(reason.contains("not there"), "{reason}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(m.size_bytes(), size);
    assert_eq!(std::fs::metadata(m.path())?.len(), size);
    assert!(!m.is_poisoned());
    let mut edit = VersionEdit::default();
    edit.set_last_seqno(1);
    m.log_and_apply(edit)?;
    Ok(())
}

/// Builds a manifest with a few edits; returns the version and file length before the last
/// edit, and after it.
fn with_last_edit(dir: &Path) -> Result<(Arc<Version>, u64, Arc<Version>, u64)> {
    let mut m = Manifest::create(dir, ManifestOptions::default())?;
    for i in 0..6 {
        let edit = next_edit(&mut m, i);
        m.log_and_apply(edit)?;
    }
    let (before, before_len) = (m.current(), m.size_bytes());
    let edit = next_edit(&mut m, 6);
    let after = m.log_and_apply(edit)?;
    Ok((before, before_len, after, m.size_bytes()))
}

#[test]
fn a_torn_last_record_at_every_cut_reopens_to_the_previous_version() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (before, before_len, after, full_len) = with_last_edit(dir.path())?;
    let path = dir.path().join(manifest_file_name(1));
    let full = std::fs::read(&path)?;
    assert_eq!(full.len() as u64, full_len);
    for cut in before_len..full_len {
        std::fs::write(&path, &full[..cut as usize])?;
        let (m, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
        assert_eq!(v, before, "cut at {cut}");
        assert_eq!(m.size_bytes(), before_len);
        assert_eq!(std::fs::metadata(&path)?.len(), before_len, "truncated");
    }
    // The whole file gives the new version; a zero-filled tail and a last record failing its
    // checksum are torn too.
    std::fs::write(&path, &full)?;
    assert_eq!(
        Manifest::open(dir.path(), ManifestOptions::default())?.1,
        after
    );
    let mut zeros = full[..before_len as usize].to_vec();
    zeros.resize(full.len() + 100, 0);
    std::fs::write(&path, &zeros)?;
    assert_eq!(
        Manifest::open(dir.path(), ManifestOptions::default())?.1,
        before
    );
    let mut flipped = full.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 0x40;
    }
    std::fs::write(&path, &flipped)?;
    let (mut m, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
    assert_eq!(v, before);
    // Appending after a repair works and survives a reopen.
    let mut edit = VersionEdit::default();
    edit.set_last_seqno(v.last_seqno() + 100);
    let next = m.log_and_apply(edit)?;
    drop(m);
    assert_eq!(
        Manifest::open(dir.path(), ManifestOptions::default())?.1,
        next
    );
    Ok(())
}

#[test]
fn a_flipped_byte_before_the_last_record_is_corruption_naming_file_and_offset() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_, before_len, _, _) = with_last_edit(dir.path())?;
    let path = dir.path().join(manifest_file_name(1));
    let full = std::fs::read(&path)?;
    // Record boundaries, from the length fields.
    let mut starts = Vec::new();
    let mut at = HEADER_LEN;
    while at < before_len as usize {
        starts.push(at);
        let len = u32::from_le_bytes(full[at..at + 4].try_into()?) as usize;
        at += RECORD_HEADER_LEN + len;
    }
    for byte in HEADER_LEN..before_len as usize {
        let mut bad = full.clone();
        bad[byte] ^= 0x01;
        std::fs::write(&path, &bad)?;
        let (p, offset, reason) =
            expect_corrupt(Manifest::open(dir.path(), ManifestOptions::default()));
        let record = starts
            .iter()
            .rev()
            .find(|&&s| s <= byte)
            .copied()
            .unwrap_or(0);
        assert_eq!(p, path, "flip at {byte}");
        assert_eq!(offset, record as u64, "flip at {byte}: {reason}");
        let message = StorageError::Corrupt {
            path: p,
            offset,
            reason,
        }
        .to_string();
        assert!(message.contains("MANIFEST-000001"), "{message}");
    }
    // Header damage.
    let mut bad = full.clone();
    bad[0] = b'X';
    std::fs::write(&path, &bad)?;
    assert_eq!(
        expect_corrupt(Manifest::open(dir.path(), ManifestOptions::default())).1,
        0
    );
    let mut bad = full.clone();
    bad[7] = 9;
    std::fs::write(&path, &bad)?;
    assert!(matches!(
        Manifest::open(dir.path(), ManifestOptions::default()),
        Err(StorageError::UnsupportedVersion { found: 9, .. })
    ));
    std::fs::write(&path, &full[..HEADER_LEN + 3])?;
    let (_, offset, reason) =
        expect_corrupt(Manifest::open(dir.path(), ManifestOptions::default()));
    assert_eq!(offset, HEADER_LEN as u64);
    assert!(reason.contains("no complete snapshot"), "{reason}");
    Ok(())
}

#[test]
fn an_edit_that_does_not_apply_is_corruption() -> TestResult {
    let dir = tempfile::tempdir()?;
    let m = Manifest::create(dir.path(), ManifestOptions::default())?;
    let at = m.size_bytes();
    let path = m.path().to_path_buf();
    drop(m);
    let mut edit = VersionEdit::default();
    edit.delete_table(2, 7);
    let record = encode_record(&edit).ok_or("encodes")?;
    OpenOptions::new()
        .append(true)
        .open(&path)?
        .write_all(&record)?;
    let (p, offset, reason) =
        expect_corrupt(Manifest::open(dir.path(), ManifestOptions::default()));
    assert_eq!((p, offset), (path, at));
    assert!(reason.contains("does not apply"), "{reason}");
    Ok(())
}

#[test]
fn rewrite_switches_current_and_reopens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = ManifestOptions {
        max_manifest_bytes: 2048,
    };
    let mut m = Manifest::create(dir.path(), options)?;
    m.rewrite()?;
    assert_eq!(m.number(), 2);
    assert_eq!(read_current(dir.path())?, "MANIFEST-000002\n");
    assert!(!dir.path().join(manifest_file_name(1)).exists());
    for i in 0..200 {
        let edit = next_edit(&mut m, i);
        m.log_and_apply(edit)?;
        assert!(m.size_bytes() <= 2048 + 2 * 4096, "size {}", m.size_bytes());
    }
    assert!(m.number() > 3, "rewritten automatically: {}", m.number());
    let manifests: Vec<String> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("MANIFEST-"))
        .collect();
    assert_eq!(manifests, [manifest_file_name(m.number())]);
    assert_eq!(
        read_current(dir.path())?,
        format!("{}\n", manifest_file_name(m.number()))
    );
    let last = m.current();
    let number = m.number();
    drop(m);
    let (m, v) = Manifest::open(dir.path(), options)?;
    assert_eq!((v, m.number()), (last, number));
    Ok(())
}

#[test]
fn leftovers_of_an_interrupted_rewrite_are_ignored_and_removed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_, _, after, _) = with_last_edit(dir.path())?;
    // A crash mid-rewrite: a partial next manifest and a CURRENT.tmp naming it.
    std::fs::write(
        dir.path().join(manifest_file_name(2)),
        b"LIMEMAN\x01garbage",
    )?;
    std::fs::write(dir.path().join("CURRENT.tmp"), "MANIFEST-000002\n")?;
    let (mut m, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
    assert_eq!(v, after);
    assert_eq!(m.number(), 1);
    assert!(!dir.path().join(manifest_file_name(2)).exists());
    assert!(!dir.path().join("CURRENT.tmp").exists());
    // A crash after the rename, before the old manifest was deleted.
    m.rewrite()?;
    let mut edit = VersionEdit::default();
    edit.set_last_seqno(after.last_seqno() + 1);
    let newest = m.log_and_apply(edit)?;
    drop(m);
    std::fs::write(dir.path().join(manifest_file_name(1)), b"stale")?;
    let (m, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
    assert_eq!((v, m.number()), (newest, 2));
    assert!(!dir.path().join(manifest_file_name(1)).exists());
    Ok(())
}

#[test]
fn missing_or_bad_current_is_a_clear_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    match Manifest::open(dir.path(), ManifestOptions::default()) {
        Err(StorageError::Io { path, source, .. }) => {
            assert_eq!(path, dir.path().join("CURRENT"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let err = Manifest::open(dir.path(), ManifestOptions::default()).expect_err("missing");
    assert!(err.to_string().contains("missing CURRENT file"), "{err}");

    drop(Manifest::create(dir.path(), ManifestOptions::default())?);
    assert!(matches!(
        Manifest::create(dir.path(), ManifestOptions::default()),
        Err(StorageError::InvalidInput { .. })
    ));
    std::fs::write(dir.path().join("CURRENT"), "MANIFEST-000009\n")?;
    let (path, _, reason) = expect_corrupt(Manifest::open(dir.path(), ManifestOptions::default()));
    assert_eq!(path, dir.path().join("CURRENT"));
    assert!(
        reason.contains("MANIFEST-000009, which does not exist"),
        "{reason}"
    );
    for garbage in [
        "",
        "MANIFEST-000001",
        "MANIFEST-\n",
        "manifest-1\n",
        "MANIFEST-1x\n",
    ] {
        std::fs::write(dir.path().join("CURRENT"), garbage)?;
        let (path, offset, _) =
            expect_corrupt(Manifest::open(dir.path(), ManifestOptions::default()));
        assert_eq!(
            (path, offset),
            (dir.path().join("CURRENT"), 0),
            "{garbage:?}"
        );
    }
    std::fs::write(dir.path().join("CURRENT"), "MANIFEST-1\n")?;
    Manifest::open(dir.path(), ManifestOptions::default())?;
    Ok(())
}

#[test]
fn a_failed_fsync_poisons_the_manifest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut m = Manifest::create(dir.path(), ManifestOptions::default())?;
    let old = m.current();
    m.fail_next_sync();
    let mut edit = VersionEdit::default();
    edit.set_last_seqno(9);
    assert!(matches!(
        m.log_and_apply(edit.clone()),
        Err(StorageError::Io { .. })
    ));
    assert!(m.is_poisoned());
    assert_eq!(m.current(), old);
    assert!(matches!(m.log_and_apply(edit), Err(StorageError::Poisoned)));
    assert!(matches!(m.rewrite(), Err(StorageError::Poisoned)));
    drop(m);
    // The record may or may not have reached the disk: either version is consistent.
    let (_, v) = Manifest::open(dir.path(), ManifestOptions::default())?;
    assert!(v.last_seqno() == 0 || v.last_seqno() == 9);
    Ok(())
}

#[test]
fn file_names() {
    assert_eq!(manifest_file_name(7), "MANIFEST-000007");
    assert_eq!(manifest_file_name(12_345_678), "MANIFEST-12345678");
    assert_eq!(parse_manifest_file_name("MANIFEST-000007"), Some(7));
    assert_eq!(parse_manifest_file_name("MANIFEST-"), None);
    assert_eq!(parse_manifest_file_name("MANIFEST-7.tmp"), None);
    assert_eq!(parse_manifest_file_name("CURRENT"), None);
}
