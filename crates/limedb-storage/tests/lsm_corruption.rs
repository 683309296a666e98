//! Corruption tests of the LSM engine (issue 4): one database is built with data in SSTables
//! (L0 and deeper), in the WAL (unflushed writes) and in a manifest of many edits, then closed;
//! each test damages one file in its own copy of the directory and checks that the damage is
//! reported as an error naming the file (and, for the logs, the byte offset of the record),
//! never as a panic and never as wrong data. A torn WAL tail is the one damage recovery
//! accepts: it loses at most the last write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use limedb_storage::lsm::compaction::LeveledOptions;
use limedb_storage::lsm::sstable::{ReadMode, TableOptions};
use limedb_storage::lsm::version::NUM_LEVELS;
use limedb_storage::{Engine, LsmEngine, LsmOptions, StorageError, SyncPolicy};

/// Length of a WAL segment header and of a manifest header.
const FILE_HEADER_LEN: usize = 16;
/// `payload_len u32 | crc32c u32` before each WAL and manifest record.
const RECORD_HEADER_LEN: usize = 8;
/// Length of an SSTable footer; the filter block's offset (= end of the data blocks) is the
/// `u64` at footer byte 12.
const FOOTER_LEN: usize = 68;

/// The model: every key written, with `None` for a deleted one.
type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

fn options(read_mode: ReadMode) -> LsmOptions {
    LsmOptions {
        sync: SyncPolicy::Never,
        memtable_bytes: 48 << 10,
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
        read_mode,
        ..LsmOptions::default()
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

/// A value naming its key and generation, padded with pseudo-random letters (so LZ4 has
/// something to do but cannot squeeze it away).
fn value(i: u64, generation: u64) -> Vec<u8> {
    let mut v = format!("value key={i} gen={generation} ").into_bytes();
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation;
    for _ in 0..80 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 16) as u8);
    }
    v
}

/// The pristine database, built once per test binary.
struct Fixture {
    dir: tempfile::TempDir,
    model: Model,
    /// The key and previous state of the very last write (it is in the WAL's last record).
    last_write: (Vec<u8>, Option<Vec<u8>>),
    /// File names of the live tables, largest first.
    tables_by_size: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn put(engine: &LsmEngine, model: &mut Model, i: u64, generation: u64) {
    let v = value(i, generation);
    engine.put(&key(i), &v, None).expect("put");
    model.insert(key(i), Some(v));
}

fn build_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    // No background compaction while the fixture is built: the table list taken at the end
    // must name the files on disk (a compaction racing with it would delete some).
    let quiet = LsmOptions {
        leveled: LeveledOptions {
            l0_compaction_trigger: 1000,
            ..options(ReadMode::default()).leveled
        },
        ..options(ReadMode::default())
    };
    let engine = LsmEngine::open(dir.path(), quiet).expect("open");
    let mut model = Model::new();
    // Phase 1: 600 keys, compacted into L1 and below.
    for i in 0..600 {
        put(&engine, &mut model, i, 1);
    }
    engine.compact_range(None, None).expect("compact");
    // Phase 2: overwrite every 7th key, add 100 more, flush into L0.
    for i in (0..600).step_by(7).chain(600..700) {
        put(&engine, &mut model, i, 2);
    }
    engine.flush().expect("flush");
    // Phase 3, left in the WAL: one record per write.
    for i in (0..700).step_by(13).chain(700..720) {
        put(&engine, &mut model, i, 3);
    }
    for i in (5..700).step_by(101) {
        assert!(engine.delete(&key(i)).expect("delete"));
        model.insert(key(i), None);
    }
    let last = 3;
    let previous = model.get(&key(last)).cloned().flatten();
    put(&engine, &mut model, last, 4);

    let version = engine.version();
    assert!(version.table_count(0) >= 1, "phase 2 left no L0 table");
    assert!(
        (1..NUM_LEVELS).any(|l| version.table_count(l) > 0),
        "phase 1 left no table below L0"
    );
    let mut tables: Vec<(u64, String)> = (0..NUM_LEVELS)
        .flat_map(|l| version.level(l).to_vec())
        .map(|t| (t.file_size_bytes, format!("{:06}.sst", t.file_number)))
        .collect();
    tables.sort_by(|a, b| b.cmp(a));
    engine.close().expect("close");
    Fixture {
        dir,
        model,
        last_write: (key(last), previous),
        tables_by_size: tables.into_iter().map(|(_, name)| name).collect(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("list dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A fresh copy of the pristine database.
fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(fixture().dir.path(), dir.path());
    dir
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).expect("read file to damage");
    let byte = bytes.get_mut(offset).expect("offset inside the file");
    *byte ^= 0x5A;
    std::fs::write(path, bytes).expect("write damaged file");
}

/// `(start offset, payload length)` of each record of a WAL segment or manifest (same framing).
fn records(path: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(path).expect("read log");
    let mut offsets = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        offsets.push((at, len));
        at += RECORD_HEADER_LEN + len;
    }
    assert_eq!(at, bytes.len(), "records of {} run to EOF", path.display());
    offsets
}

/// `(record offset, offset of its payload byte `at`)`, clamped to the payload.
fn in_payload((record, payload_len): (usize, usize), at: usize) -> (usize, usize) {
    (record, record + RECORD_HEADER_LEN + at.min(payload_len - 1))
}

/// The newest (last) WAL segment of `dir`.
fn last_wal_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .expect("list wal dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments.pop().expect("a WAL segment")
}

fn manifest_path(dir: &Path) -> PathBuf {
    let current = std::fs::read_to_string(dir.join("CURRENT")).expect("read CURRENT");
    dir.join(current.trim())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// Asserts that opening `dir` fails with [`StorageError::Corrupt`] naming `file` at byte offset
/// `offset`, and that the message says so too.
fn assert_open_fails_at(dir: &Path, file: &Path, offset: usize) {
    let error = match LsmEngine::open(dir, options(ReadMode::default())) {
        Ok(_) => panic!(
            "opening with damage in {} at record offset {offset} succeeded",
            file.display()
        ),
        Err(e) => e,
    };
    let message = error.to_string();
    let name = file_name(file);
    assert!(
        message.contains(&name),
        "error does not name {name}: {message}"
    );
    match &error {
        StorageError::Corrupt {
            path, offset: at, ..
        } => {
            assert_eq!(path, file, "{message}");
            assert_eq!(*at, offset as u64, "wrong offset in {message}");
            assert!(message.contains(&format!("offset {offset}")), "{message}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

/// Reads every key of the model: a value read must equal the model; an error must name
/// `damaged` (a table file name). Returns how many reads failed.
fn read_all_keys(engine: &LsmEngine, model: &Model, damaged: &str) -> usize {
    let mut errors = 0;
    for (k, expected) in model {
        match engine.get(k) {
            Ok(got) => assert_eq!(
                got.map(|v| v.data.to_vec()),
                *expected,
                "wrong data for {:?} with {damaged} damaged",
                String::from_utf8_lossy(k)
            ),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(damaged),
                    "read error does not name {damaged}: {message}"
                );
                errors += 1;
            }
        }
    }
    errors
}

/// Key-value pairs, ascending by key.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Live entries of the model, ascending.
fn live(model: &Model) -> Entries {
    model
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect()
}

fn scan_all(engine: &LsmEngine) -> Result<Entries, StorageError> {
    Ok(engine
        .scan(None, usize::MAX)?
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.data.to_vec()))
        .collect())
}

#[test]
fn pristine_copy_reads_back_the_model() {
    let f = fixture();
    let dir = copy();
    for mode in [ReadMode::Mmap, ReadMode::Pread] {
        let engine = LsmEngine::open(dir.path(), options(mode)).expect("open");
        assert_eq!(read_all_keys(&engine, &f.model, "-"), 0);
        assert_eq!(scan_all(&engine).expect("scan"), live(&f.model));
        engine.close().expect("close");
    }
}

#[test]
fn flipped_byte_in_sstable_data_block_is_an_error_naming_the_table() {
    let f = fixture();
    // The largest table (phase 1's keys, compacted) and the L0 table of phase 2.
    for table in f.tables_by_size.iter().take(2) {
        let pristine = fixture().dir.path().join("tables").join(table);
        let bytes = std::fs::read(&pristine).expect("read table");
        let footer = bytes
            .get(bytes.len() - FOOTER_LEN..)
            .expect("table has a footer");
        let data_end = footer
            .get(12..20)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .expect("filter handle") as usize;
        assert!(data_end > 0 && data_end < bytes.len());
        for eighth in [1, 3, 4, 5, 7] {
            let at = data_end * eighth / 8;
            for mode in [ReadMode::Mmap, ReadMode::Pread] {
                let dir = copy();
                flip_byte(&dir.path().join("tables").join(table), at);
                let engine = match LsmEngine::open(dir.path(), options(mode)) {
                    Ok(engine) => engine,
                    Err(e) => {
                        // Allowed, as long as the error names the table.
                        assert!(e.to_string().contains(table.as_str()), "{e}");
                        continue;
                    }
                };
                let errors = read_all_keys(&engine, &f.model, table);
                assert!(
                    errors > 0,
                    "no read noticed the flipped byte at {at} of {table} ({mode:?})"
                );
                // A full scan must run into the damaged block.
                match scan_all(&engine) {
                    Ok(entries) => panic!(
                        "scan over damaged {table} at {at} succeeded with {} entries",
                        entries.len()
                    ),
                    Err(e) => assert!(e.to_string().contains(table.as_str()), "{e}"),
                }
                // The damaged block is never cached as good: reading again still fails.
                assert_eq!(read_all_keys(&engine, &f.model, table), errors);
                drop(engine);
            }
        }
    }
}

#[test]
fn flipped_byte_in_sstable_footer_fails_open_naming_the_table() {
    let f = fixture();
    let table = f.tables_by_size.first().expect("a table");
    let dir = copy();
    let path = dir.path().join("tables").join(table);
    let len = std::fs::metadata(&path).expect("table metadata").len() as usize;
    // entry_count, inside the footer's checksummed bytes.
    flip_byte(&path, len - FOOTER_LEN + 40);
    match LsmEngine::open(dir.path(), options(ReadMode::default())) {
        Ok(_) => panic!("opening with a damaged footer in {table} succeeded"),
        Err(e) => {
            assert!(matches!(e, StorageError::Corrupt { .. }), "{e:?}");
            assert!(e.to_string().contains(table.as_str()), "{e}");
        }
    }
}

#[test]
fn flipped_byte_in_wal_before_its_tail_fails_open_naming_segment_and_offset() {
    let pristine = last_wal_segment(fixture().dir.path());
    let records = records(&pristine);
    assert!(
        records.len() >= 40,
        "the WAL should hold phase 3's writes, one record each: {} records",
        records.len()
    );
    let first = *records.first().expect("a record");
    let middle = *records.get(records.len() / 2).expect("a record");
    let second_last = *records.get(records.len() - 2).expect("a record");
    // (record offset, byte to flip)
    let cases = [
        in_payload(first, 20),    // first record, key bytes
        in_payload(middle, 2),    // first_seqno
        in_payload(middle, 40),   // value bytes
        (middle.0, middle.0 + 5), // stored checksum
        (middle.0, middle.0 + 3), // length: runs past end of file
        (middle.0, middle.0),     // length: shorter
        in_payload(second_last, 30),
    ];
    for (record, at) in cases {
        let dir = copy();
        let segment = dir.path().join("wal").join(file_name(&pristine));
        flip_byte(&segment, at);
        assert_open_fails_at(dir.path(), &segment, record);
    }
}

#[test]
fn flipped_byte_in_manifest_before_its_tail_fails_open_naming_the_manifest() {
    let pristine = manifest_path(fixture().dir.path());
    let records = records(&pristine);
    assert!(
        records.len() >= 4,
        "flushes and compactions should have logged several edits: {}",
        records.len()
    );
    let first = *records.first().expect("a record");
    let middle = *records.get(records.len() / 2).expect("a record");
    let second_last = *records.get(records.len() - 2).expect("a record");
    let cases = [
        in_payload(first, 1), // the snapshot record
        in_payload(middle, 4),
        (middle.0, middle.0 + 6), // stored checksum
        in_payload(second_last, 10),
    ];
    for (record, at) in cases {
        let dir = copy();
        let manifest = dir.path().join(file_name(&pristine));
        flip_byte(&manifest, at);
        assert_open_fails_at(dir.path(), &manifest, record);
    }
}

#[test]
fn torn_wal_tail_opens_and_loses_at_most_the_last_write() {
    let f = fixture();
    let pristine = last_wal_segment(f.dir.path());
    let (last, _) = *records(&pristine).last().expect("a record");
    let len = std::fs::metadata(&pristine).expect("wal metadata").len() as usize;
    // Cut inside the last record's header, inside its payload, and one byte short.
    for cut in [last + 3, last + RECORD_HEADER_LEN + 10, len - 1] {
        let dir = copy();
        let segment = dir.path().join("wal").join(file_name(&pristine));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open segment");
        file.set_len(cut as u64).expect("truncate segment");
        drop(file);

        let mut model = f.model.clone();
        let engine = LsmEngine::open(dir.path(), options(ReadMode::default()))
            .unwrap_or_else(|e| panic!("torn tail at {cut} refused: {e}"));
        // The last write is lost; everything else is there.
        let (k, previous) = &f.last_write;
        model.insert(k.clone(), previous.clone());
        assert_eq!(read_all_keys(&engine, &model, "-"), 0);
        assert_eq!(scan_all(&engine).expect("scan"), live(&model));
        // The log was repaired: new writes append after the last good record and survive.
        engine
            .put(k, b"after repair", None)
            .expect("put after repair");
        engine.close().expect("close");
        let engine =
            LsmEngine::open(dir.path(), options(ReadMode::default())).expect("reopen after repair");
        model.insert(k.clone(), Some(b"after repair".to_vec()));
        assert_eq!(read_all_keys(&engine, &model, "-"), 0);
        engine.close().expect("close");
    }
}
