//! Tests of the SSTable writer and reader: round trips against a model, snapshots, seeks,
//! the bloom filter, corruption and misuse.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::lsm::cache::{BlockCache, ENTRY_OVERHEAD_BYTES};
use crate::lsm::key::{compare_encoded, encode, seek_key, InternalKeyRef, ValueKind};
use crate::StorageError;

const MODES: [ReadMode; 2] = [ReadMode::Mmap, ReadMode::Pread];
const COMPRESSIONS: [Compression; 3] = [
    Compression::None,
    Compression::Lz4,
    Compression::Zstd { level: 1 },
];

/// An encoded internal key ordered by [`compare_encoded`], for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IKey(Vec<u8>);

impl Ord for IKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_encoded(&self.0, &other.0)
    }
}

impl PartialOrd for IKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

type Model = BTreeMap<IKey, Vec<u8>>;

fn ik(user_key: &[u8], seqno: u64, kind: ValueKind) -> Vec<u8> {
    encode(user_key, seqno, kind)
}

fn write(path: &Path, model: &Model, options: TableOptions) -> TableMeta {
    let mut writer = TableWriter::create(path, options).expect("create");
    for (key, value) in model {
        writer.add(&key.0, value).expect("add");
    }
    writer.finish().expect("finish")
}

/// What `Table::get` should answer, computed from the model.
fn model_get(model: &Model, user_key: &[u8], snapshot: u64) -> Option<(ValueKind, Bytes)> {
    let (key, value) = model.range(IKey(seek_key(user_key, snapshot))..).next()?;
    let decoded = InternalKeyRef::decode(&key.0).expect("model keys are valid");
    if decoded.user_key != user_key {
        return None;
    }
    Some(match decoded.kind {
        ValueKind::Put => (ValueKind::Put, Bytes::copy_from_slice(value)),
        ValueKind::Delete => (ValueKind::Delete, Bytes::new()),
    })
}

fn scan(table: &Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    table
        .entries()
        .map(|entry| {
            let (k, v) = entry.expect("entry reads");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn scan_backward(table: &Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut iter = table.iter();
    iter.seek_to_last().expect("seek_to_last");
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        out.push((k.to_vec(), v.to_vec()));
        iter.prev().expect("prev");
    }
    out
}

fn model_entries(model: &Model) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .iter()
        .map(|(k, v)| (k.0.clone(), v.clone()))
        .collect()
}

fn kind(put: bool) -> ValueKind {
    if put {
        ValueKind::Put
    } else {
        ValueKind::Delete
    }
}

fn entries_strategy() -> impl Strategy<Value = Model> {
    let user_key =
        proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..6);
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        (any::<u8>(), 0..300usize).prop_map(|(byte, len)| vec![byte; len]),
    ];
    proptest::collection::vec((user_key, 0..20u64, any::<bool>(), value), 1..300).prop_map(
        |items| {
            items
                .into_iter()
                .map(|(user_key, seqno, put, value)| {
                    let value = if put { value } else { Vec::new() };
                    (IKey(ik(&user_key, seqno, kind(put))), value)
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Every compression and read mode answers scans, seeks and gets like a sorted map.
    #[test]
    fn round_trip_matches_a_sorted_map(
        model in entries_strategy(),
        block_size_bytes in prop_oneof![Just(64usize), Just(300), Just(4096)],
        restart_interval in prop_oneof![Just(1usize), Just(3), Just(16)],
        probes in proptest::collection::vec(
            (proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..6),
             0..22u64),
            1..40),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let expected = model_entries(&model);
        let mut reversed = expected.clone();
        reversed.reverse();
        let mut probes = probes;
        // Also probe every user key in the table.
        for key in model.keys().take(30) {
            let decoded = InternalKeyRef::decode(&key.0).expect("valid");
            probes.push((decoded.user_key.to_vec(), decoded.seqno));
        }
        for (n, compression) in COMPRESSIONS.into_iter().enumerate() {
            let path = dir.path().join(format!("{n}.sst"));
            let options = TableOptions {
                block_size_bytes,
                restart_interval,
                compression,
                ..TableOptions::default()
            };
            let meta = write(&path, &model, options);
            prop_assert_eq!(meta.entry_count, model.len() as u64);
            prop_assert_eq!(&meta.smallest_key[..], &expected[0].0[..]);
            prop_assert_eq!(&meta.largest_key[..], &expected[expected.len() - 1].0[..]);
            let seqnos = model.keys().map(|k| InternalKeyRef::decode(&k.0).expect("valid").seqno);
            prop_assert_eq!(meta.max_seqno, seqnos.clone().max().unwrap_or_default());
            prop_assert_eq!(meta.min_seqno, seqnos.min().unwrap_or_default());
            let tombstones = model.values().zip(model.keys())
                .filter(|(_, k)| InternalKeyRef::decode(&k.0).map(|d| d.kind) == Some(ValueKind::Delete))
                .count();
            prop_assert_eq!(meta.tombstone_count, tombstones as u64);

            for mode in MODES {
                let table = Table::open(&path, mode).expect("open");
                prop_assert_eq!(table.meta(), &meta);
                prop_assert_eq!(scan(&table), expected.clone());
                prop_assert_eq!(scan_backward(&table), reversed.clone());

                let mut iter = table.iter();
                for (user_key, snapshot) in &probes {
                    prop_assert_eq!(
                        table.get(user_key, *snapshot).expect("get"),
                        model_get(&model, user_key, *snapshot),
                        "get {:?} at {}", user_key, snapshot
                    );
                    let target = seek_key(user_key, *snapshot);
                    iter.seek(&target).expect("seek");
                    let want = model.range(IKey(target.clone())..).next();
                    prop_assert_eq!(iter.key(), want.map(|(k, _)| &k.0[..]));
                    let value = iter.value();
                    prop_assert_eq!(value.as_deref(), want.map(|(_, v)| &v[..]));
                    if iter.valid() {
                        // One step back lands on the model's predecessor.
                        iter.prev().expect("prev");
                        let before = model.range(..IKey(target.clone())).next_back();
                        prop_assert_eq!(iter.key(), before.map(|(k, _)| &k.0[..]));
                        // And forward again past it.
                        iter.seek(&target).expect("seek");
                        iter.next().expect("next");
                        let after = model.range(IKey(target)..).nth(1);
                        prop_assert_eq!(iter.key(), after.map(|(k, _)| &k.0[..]));
                    }
                }
            }
        }
    }
}

fn versions_model() -> Model {
    let mut model = Model::new();
    let mut put = |user_key: &[u8], seqno, value: &[u8]| {
        model.insert(IKey(ik(user_key, seqno, ValueKind::Put)), value.to_vec());
    };
    put(b"apple", 3, b"apple@3");
    put(b"lime", 10, b"lime@10");
    put(b"lime", 5, b"lime@5");
    put(b"lime", 1, b"lime@1");
    put(b"lime2", 4, b"lime2@4");
    model.insert(IKey(ik(b"lime", 7, ValueKind::Delete)), Vec::new());
    model.insert(IKey(ik(b"pear", 6, ValueKind::Delete)), Vec::new());
    model
}

#[test]
fn get_returns_the_newest_version_at_each_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = versions_model();
    for compression in COMPRESSIONS {
        for block_size_bytes in [64, 4096] {
            let path = dir
                .path()
                .join(format!("{compression:?}-{block_size_bytes}.sst"));
            let options = TableOptions {
                block_size_bytes,
                compression,
                restart_interval: 2,
                ..TableOptions::default()
            };
            write(&path, &model, options);
            for mode in MODES {
                let table = Table::open(&path, mode).expect("open");
                let get = |user_key: &[u8], snapshot| table.get(user_key, snapshot).expect("get");
                let put =
                    |value: &str| Some((ValueKind::Put, Bytes::copy_from_slice(value.as_bytes())));
                let deleted = Some((ValueKind::Delete, Bytes::new()));
                assert_eq!(get(b"lime", 0), None);
                assert_eq!(get(b"lime", 1), put("lime@1"));
                assert_eq!(get(b"lime", 4), put("lime@1"));
                assert_eq!(get(b"lime", 5), put("lime@5"));
                assert_eq!(get(b"lime", 6), put("lime@5"));
                assert_eq!(get(b"lime", 7), deleted);
                assert_eq!(get(b"lime", 9), deleted);
                assert_eq!(get(b"lime", 10), put("lime@10"));
                assert_eq!(get(b"lime", u64::MAX), put("lime@10"));
                assert_eq!(get(b"pear", 5), None);
                assert_eq!(get(b"pear", 6), deleted);
                assert_eq!(get(b"apple", 100), put("apple@3"));
                assert_eq!(get(b"apple", 2), None);
                // Prefixes and extensions of stored keys are different keys.
                assert_eq!(get(b"lim", 100), None);
                assert_eq!(get(b"lime2", 3), None);
                assert_eq!(get(b"lime2", 4), put("lime2@4"));
                assert_eq!(get(b"", 100), None);
                assert_eq!(get(b"zebra", 100), None);
            }
        }
    }
}

#[test]
fn seek_positions_on_the_first_key_at_or_after_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = versions_model();
    let path = dir.path().join("seek.sst");
    write(
        &path,
        &model,
        TableOptions {
            block_size_bytes: 64,
            restart_interval: 2,
            ..TableOptions::default()
        },
    );
    let table = Table::open(&path, ReadMode::Mmap).expect("open");
    assert!(
        table.meta().data_block_count > 2,
        "the test wants several blocks"
    );
    let mut iter = table.iter();
    assert!(!iter.valid(), "a new cursor is not positioned");
    assert_eq!(iter.key(), None);

    let mut at = |target: Vec<u8>| {
        iter.seek(&target).expect("seek");
        iter.key().map(|k| {
            let d = InternalKeyRef::decode(k).expect("valid");
            (
                String::from_utf8_lossy(d.user_key).into_owned(),
                d.seqno,
                d.kind,
            )
        })
    };
    let hit = |user_key: &str, seqno, kind| Some((user_key.to_string(), seqno, kind));
    // Before everything.
    assert_eq!(at(Vec::new()), hit("apple", 3, ValueKind::Put));
    assert_eq!(at(seek_key(b"a", 0)), hit("apple", 3, ValueKind::Put));
    // Exactly on a key.
    assert_eq!(
        at(ik(b"lime", 5, ValueKind::Put)),
        hit("lime", 5, ValueKind::Put)
    );
    // At a snapshot between versions: the newest version at or below it.
    assert_eq!(at(seek_key(b"lime", 8)), hit("lime", 7, ValueKind::Delete));
    assert_eq!(at(seek_key(b"lime", 6)), hit("lime", 5, ValueKind::Put));
    // Below the oldest version: the next user key.
    assert_eq!(at(seek_key(b"lime", 0)), hit("lime2", 4, ValueKind::Put));
    // Between user keys.
    assert_eq!(
        at(seek_key(b"b", u64::MAX)),
        hit("lime", 10, ValueKind::Put)
    );
    // Past the last key.
    assert_eq!(at(seek_key(b"pear", 5)), None);
    assert_eq!(at(seek_key(b"zzz", u64::MAX)), None);

    // Iteration crosses block boundaries both ways, and stops cleanly at the ends.
    let mut iter = table.iter();
    iter.seek(&seek_key(b"lime", u64::MAX)).expect("seek");
    let mut forward = Vec::new();
    while let Some(k) = iter.key() {
        forward.push(k.to_vec());
        iter.next().expect("next");
    }
    iter.next().expect("next past the end is a no-op");
    assert!(!iter.valid());
    let want: Vec<Vec<u8>> = model
        .range(IKey(seek_key(b"lime", u64::MAX))..)
        .map(|(k, _)| k.0.clone())
        .collect();
    assert_eq!(forward, want);
    iter.seek_to_first().expect("seek_to_first");
    iter.prev().expect("prev");
    assert!(!iter.valid(), "nothing before the first entry");
}

#[test]
fn bloom_filter_has_few_false_positives_and_no_false_negatives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bloom.sst");
    let mut writer = TableWriter::create(&path, TableOptions::default()).expect("create");
    for i in 0..100_000u32 {
        let user_key = format!("key{i:08}");
        // Two versions of some keys: the filter counts user keys once.
        if i % 10 == 0 {
            writer
                .add(&ik(user_key.as_bytes(), 2, ValueKind::Put), b"v2")
                .expect("add");
        }
        writer
            .add(&ik(user_key.as_bytes(), 1, ValueKind::Put), b"v1")
            .expect("add");
    }
    writer.finish().expect("finish");
    let table = Table::open(&path, ReadMode::Mmap).expect("open");
    for i in (0..100_000u32).step_by(97) {
        let user_key = format!("key{i:08}");
        assert!(table.may_contain(user_key.as_bytes()));
        assert!(table.get(user_key.as_bytes(), 1).expect("get").is_some());
    }
    let false_positives = (0..100_000u32)
        .filter(|i| table.may_contain(format!("absent{i:08}").as_bytes()))
        .count();
    let rate = false_positives as f64 / 100_000.0;
    assert!(rate < 0.02, "false positive rate {rate}");
    assert_eq!(table.get(b"absent", u64::MAX).expect("get"), None);
}

/// A table over several blocks, and the offsets of its parts.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    model: Model,
    bytes: Vec<u8>,
}

impl Fixture {
    fn new(compression: Compression, entries: u32) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fixture.sst");
        let model: Model = (0..entries)
            .map(|i| {
                (
                    IKey(ik(
                        format!("key{i:04}").as_bytes(),
                        u64::from(i),
                        kind(i % 7 != 3),
                    )),
                    if i % 7 == 3 {
                        Vec::new()
                    } else {
                        format!("value{i}").repeat(3).into_bytes()
                    },
                )
            })
            .collect();
        write(
            &path,
            &model,
            TableOptions {
                block_size_bytes: 128,
                restart_interval: 4,
                compression,
                ..TableOptions::default()
            },
        );
        let bytes = std::fs::read(&path).expect("read");
        Fixture {
            _dir: dir,
            path,
            model,
            bytes,
        }
    }

    /// The handle at footer offset `at` (0 index, 12 filter, 24 properties).
    fn footer_handle(&self, at: usize) -> BlockHandle {
        let footer = &self.bytes[self.bytes.len() - footer::FOOTER_LEN..];
        BlockHandle::decode(&footer[at..at + 12]).expect("handle")
    }

    fn rewrite(&self, bytes: &[u8]) {
        std::fs::write(&self.path, bytes).expect("write");
    }

    fn with_flipped(&self, at: usize, mask: u8) {
        let mut bad = self.bytes.clone();
        bad[at] ^= mask;
        self.rewrite(&bad);
    }
}

/// Reads everything in `table` and returns the first error; panics on wrong data.
fn read_everything(table: &Table, model: &Model) -> Result<(), StorageError> {
    let mut scanned = Vec::new();
    for entry in table.entries() {
        let (k, v) = entry?;
        scanned.push((k.to_vec(), v.to_vec()));
    }
    assert_eq!(scanned, model_entries(model), "a scan returned wrong data");
    let mut iter = table.iter();
    iter.seek_to_last()?;
    while iter.valid() {
        iter.prev()?;
    }
    for key in model.keys() {
        let user_key = InternalKeyRef::decode(&key.0)
            .expect("valid")
            .user_key
            .to_vec();
        let got = table.get(&user_key, u64::MAX)?;
        assert_eq!(
            got,
            model_get(model, &user_key, u64::MAX),
            "a get returned wrong data"
        );
    }
    Ok(())
}

fn assert_corrupt_names_file(err: &StorageError, path: &Path) {
    assert!(
        matches!(
            err,
            StorageError::Corrupt { .. } | StorageError::UnsupportedVersion { .. }
        ),
        "unexpected error {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn flipped_byte_in_a_data_block_is_an_error_naming_the_file_and_block() {
    for compression in COMPRESSIONS {
        let fixture = Fixture::new(compression, 60);
        // Find the second data block through the index.
        let index = fixture.footer_handle(0);
        let table = Table::open(&fixture.path, ReadMode::Pread).expect("open");
        let index_bytes = table.read_block(index).expect("index");
        let mut index_iter = block::Block::new(index_bytes).expect("block").iter();
        index_iter.seek_to_first().expect("first");
        index_iter.next().expect("second");
        let second = BlockHandle::decode(&index_iter.value()).expect("handle");
        let second_last_key = index_iter.key().to_vec();
        drop(table);

        fixture.with_flipped(second.offset as usize + 1, 0x04);
        for mode in MODES {
            let table = Table::open(&fixture.path, mode).expect("data blocks are read lazily");
            let user_key = InternalKeyRef::decode(&second_last_key)
                .expect("valid")
                .user_key;
            let err = table.get(user_key, u64::MAX).expect_err("damaged block");
            assert_corrupt_names_file(&err, &fixture.path);
            assert!(
                matches!(err, StorageError::Corrupt { offset, .. } if offset == second.offset),
                "{err:?}"
            );
            assert!(err.to_string().contains("checksum"), "{err}");
            let scan_err = table
                .entries()
                .find_map(Result::err)
                .expect("the scan reaches the damaged block");
            assert_corrupt_names_file(&scan_err, &fixture.path);
            // Blocks before the damage still read.
            let first_key = fixture.model.keys().next().expect("entry");
            let first_user_key = InternalKeyRef::decode(&first_key.0)
                .expect("valid")
                .user_key;
            assert!(table
                .get(first_user_key, u64::MAX)
                .expect("intact block")
                .is_some());
            // Warming the cache reads every block: it fails on the damaged one, having cached
            // the blocks before it.
            let cache = Arc::new(BlockCache::new(1 << 20));
            let cached =
                Table::open_with(&fixture.path, mode, Some(Arc::clone(&cache)), 1).expect("open");
            let err = cached.warm_cache(usize::MAX).expect_err("damaged block");
            assert_corrupt_names_file(&err, &fixture.path);
            assert_eq!(cache.stats().entries, 1);
            assert_eq!(table.warm_cache(usize::MAX).expect("no cache"), 0);
        }
    }
}

#[test]
fn flipped_byte_in_the_index_block_fails_open() {
    for compression in COMPRESSIONS {
        let fixture = Fixture::new(compression, 60);
        let index = fixture.footer_handle(0);
        for at in [index.offset, index.offset + u64::from(index.size) / 2] {
            fixture.with_flipped(at as usize, 0x20);
            for mode in MODES {
                let err = Table::open(&fixture.path, mode).expect_err("damaged index");
                assert_corrupt_names_file(&err, &fixture.path);
                assert!(
                    matches!(err, StorageError::Corrupt { offset, .. } if offset == index.offset),
                    "{err:?}"
                );
            }
        }
    }
}

#[test]
fn flipped_byte_in_the_footer_fails_open() {
    let fixture = Fixture::new(Compression::Lz4, 60);
    let footer_start = fixture.bytes.len() - footer::FOOTER_LEN;
    for at in footer_start..fixture.bytes.len() {
        fixture.with_flipped(at, 0x01);
        for mode in MODES {
            let err = Table::open(&fixture.path, mode).expect_err("damaged footer");
            assert_corrupt_names_file(&err, &fixture.path);
        }
    }
}

#[test]
fn wrong_magic_and_version_are_clear_errors() {
    let fixture = Fixture::new(Compression::Lz4, 10);
    let len = fixture.bytes.len();
    let mut bad = fixture.bytes.clone();
    bad[len - 8..].copy_from_slice(b"NOTATABL");
    fixture.rewrite(&bad);
    let err = Table::open(&fixture.path, ReadMode::Mmap).expect_err("bad magic");
    assert!(err.to_string().contains("bad magic"), "{err}");

    let mut bad = fixture.bytes.clone();
    bad[len - 16..len - 12].copy_from_slice(&2u32.to_le_bytes());
    fixture.rewrite(&bad);
    let err = Table::open(&fixture.path, ReadMode::Mmap).expect_err("bad version");
    assert!(
        matches!(
            err,
            StorageError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn every_flipped_byte_is_detected() {
    // Each byte of the file is covered by a block checksum, the footer checksum, or the magic
    // and version checks; so any single flipped byte must surface as an error, on open or on
    // the first read of its block, and no read may return wrong data.
    for compression in [Compression::None, Compression::Lz4] {
        let fixture = Fixture::new(compression, 24);
        for at in 0..fixture.bytes.len() {
            for mask in [0x01, 0x80] {
                fixture.with_flipped(at, mask);
                for mode in MODES {
                    let result = Table::open(&fixture.path, mode)
                        .and_then(|table| read_everything(&table, &fixture.model));
                    let err = result.expect_err("a flipped byte must be detected");
                    assert_corrupt_names_file(&err, &fixture.path);
                }
            }
        }
    }
}

#[test]
fn truncated_file_is_an_error() {
    let fixture = Fixture::new(Compression::Lz4, 60);
    let len = fixture.bytes.len();
    for cut in [
        0,
        1,
        footer::FOOTER_LEN - 1,
        footer::FOOTER_LEN,
        len / 2,
        len - footer::FOOTER_LEN,
        len - 1,
    ] {
        fixture.rewrite(&fixture.bytes[..cut]);
        for mode in MODES {
            let err = Table::open(&fixture.path, mode).expect_err("truncated");
            assert_corrupt_names_file(&err, &fixture.path);
        }
    }
    fixture.rewrite(&fixture.bytes);
    let table = Table::open(&fixture.path, ReadMode::Mmap).expect("intact again");
    read_everything(&table, &fixture.model).expect("reads");
}

#[test]
fn out_of_order_and_malformed_adds_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("order.sst");
    let mut writer = TableWriter::create(&path, TableOptions::default()).expect("create");
    writer
        .add(&ik(b"b", 5, ValueKind::Put), b"b5")
        .expect("first add");
    let rejected = [
        ik(b"b", 5, ValueKind::Put), // the same key again
        ik(b"b", 6, ValueKind::Put), // a newer version after an older one
        ik(b"a", 9, ValueKind::Put), // a smaller user key
        ik(b"", 5, ValueKind::Put),  // the empty user key sorts first
    ];
    for key in &rejected {
        let err = writer.add(key, b"x").expect_err("out of order");
        assert!(matches!(err, StorageError::InvalidInput { .. }), "{err:?}");
        assert!(err.to_string().contains("out of order"), "{err}");
        assert!(err.to_string().contains("order.sst"), "{err}");
    }
    // Not an internal key: too short, or an unknown kind byte.
    let err = writer.add(b"short", b"x").expect_err("too short");
    assert!(matches!(err, StorageError::InvalidInput { .. }), "{err:?}");
    let mut unknown_kind = ik(b"c", 1, ValueKind::Put);
    let trailer_at = unknown_kind.len() - 8;
    unknown_kind[trailer_at] = 9;
    assert!(writer.add(&unknown_kind, b"x").is_err());
    // Rejected adds leave the writer usable.
    writer
        .add(&ik(b"b", 4, ValueKind::Delete), b"")
        .expect("older version");
    writer
        .add(&ik(b"c", 1, ValueKind::Put), b"c1")
        .expect("next key");
    let meta = writer.finish().expect("finish");
    assert_eq!(meta.entry_count, 3);
    assert_eq!(meta.tombstone_count, 1);
    let table = Table::open(&path, ReadMode::Mmap).expect("open");
    assert_eq!(scan(&table).len(), 3);
}

#[test]
fn empty_table_is_refused_and_its_file_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.sst");
    let writer = TableWriter::create(&path, TableOptions::default()).expect("create");
    let err = writer.finish().expect_err("empty");
    assert!(matches!(err, StorageError::InvalidInput { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn create_refuses_an_existing_file_and_bad_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("exists.sst");
    std::fs::write(&path, b"x").expect("write");
    assert!(matches!(
        TableWriter::create(&path, TableOptions::default()),
        Err(StorageError::Io { .. })
    ));
    let fresh = dir.path().join("fresh.sst");
    for options in [
        TableOptions {
            block_size_bytes: 0,
            ..TableOptions::default()
        },
        TableOptions {
            block_size_bytes: MAX_BLOCK_SIZE_BYTES + 1,
            ..TableOptions::default()
        },
        TableOptions {
            restart_interval: 0,
            ..TableOptions::default()
        },
        TableOptions {
            bloom_bits_per_key: 0,
            ..TableOptions::default()
        },
        TableOptions {
            compression: Compression::Zstd { level: 0 },
            ..TableOptions::default()
        },
    ] {
        let err = TableWriter::create(&fresh, options).expect_err("bad options");
        assert!(matches!(err, StorageError::InvalidInput { .. }), "{err:?}");
        assert!(!fresh.exists());
    }
    // A missing file is an I/O error naming it.
    let err = Table::open(dir.path().join("missing.sst"), ReadMode::Mmap).expect_err("missing");
    assert!(err.to_string().contains("missing.sst"), "{err}");
}

#[test]
fn large_entries_get_their_own_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::new();
    model.insert(IKey(ik(b"a", 1, ValueKind::Put)), b"small".to_vec());
    model.insert(
        IKey(ik(&vec![b'k'; 70_000], 1, ValueKind::Put)),
        vec![7u8; 3 << 20],
    );
    model.insert(IKey(ik(b"m", 1, ValueKind::Put)), {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..1_000_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    });
    model.insert(IKey(ik(b"z", 1, ValueKind::Put)), b"small".to_vec());
    for compression in COMPRESSIONS {
        let path = dir.path().join(format!("{compression:?}.sst"));
        let meta = write(
            &path,
            &model,
            TableOptions {
                compression,
                ..TableOptions::default()
            },
        );
        assert_eq!(meta.data_block_count, 3);
        for mode in MODES {
            let table = Table::open(&path, mode).expect("open");
            read_everything(&table, &model).expect("reads");
        }
    }
}

#[test]
fn compression_shrinks_compressible_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model: Model = (0..2000u32)
        .map(|i| {
            (
                IKey(ik(format!("user:{i:06}").as_bytes(), 1, ValueKind::Put)),
                b"lime green ".repeat(8),
            )
        })
        .collect();
    let sizes: Vec<u64> = COMPRESSIONS
        .into_iter()
        .map(|compression| {
            let path = dir.path().join(format!("{compression:?}.sst"));
            write(
                &path,
                &model,
                TableOptions {
                    compression,
                    ..TableOptions::default()
                },
            )
            .file_size_bytes
        })
        .collect();
    assert!(
        sizes[1] * 2 < sizes[0],
        "lz4 {} vs none {}",
        sizes[1],
        sizes[0]
    );
    assert!(
        sizes[2] * 2 < sizes[0],
        "zstd {} vs none {}",
        sizes[2],
        sizes[0]
    );
}

#[test]
fn cursors_and_values_outlive_the_table_handle() {
    let fixture = Fixture::new(Compression::None, 40);
    let table = Table::open(&fixture.path, ReadMode::Mmap).expect("open");
    let mut iter = table.iter();
    let (_, value) = table
        .get(b"key0001", u64::MAX)
        .expect("get")
        .expect("present");
    drop(table);
    iter.seek_to_first().expect("seek");
    assert_eq!(iter.key(), fixture.model.keys().next().map(|k| &k.0[..]));
    assert_eq!(&value[..], b"value1value1value1");
}

/// Writes a table of `entries` keys `key0000`.. with compressible values that start with
/// `fill` (so two tables written with different fills have the same layout but different
/// bytes), in 1 KiB blocks.
fn cache_fixture(dir: &Path, name: &str, compression: Compression, fill: &str) -> (PathBuf, Model) {
    let path = dir.join(name);
    let model: Model = (0..200u32)
        .map(|i| {
            (
                IKey(ik(format!("key{i:04}").as_bytes(), 1, ValueKind::Put)),
                format!("{fill}{i:04}").repeat(8).into_bytes(),
            )
        })
        .collect();
    let meta = write(
        &path,
        &model,
        TableOptions {
            block_size_bytes: 1024,
            compression,
            ..TableOptions::default()
        },
    );
    assert!(meta.data_block_count > 4, "{meta:?}");
    (path, model)
}

fn get_value(table: &Table, user_key: &[u8]) -> Bytes {
    match table.get(user_key, u64::MAX).expect("get") {
        Some((ValueKind::Put, value)) => value,
        other => panic!("{user_key:?}: {other:?}"),
    }
}

#[test]
fn second_read_of_a_key_hits_the_block_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    for mode in MODES {
        for compression in COMPRESSIONS {
            let (path, model) = cache_fixture(dir.path(), "t.sst", compression, "lime");
            let cache = Arc::new(BlockCache::new(1 << 20));
            let table = Table::open_with(&path, mode, Some(Arc::clone(&cache)), 42).expect("open");
            assert_eq!(table.table_id(), 42);
            let first = get_value(&table, b"key0100");
            let second = get_value(&table, b"key0100");
            assert_eq!(first, second);
            assert_eq!(
                first,
                model_get(&model, b"key0100", u64::MAX).expect("in model").1
            );
            let stats = cache.stats();
            let case = format!("{mode:?} {compression:?}: {stats:?}");
            // Point reads copy their block into the cache in every mode, stored compressed or
            // not.
            assert_eq!(
                (stats.misses, stats.hits, stats.inserts, stats.entries),
                (1, 1, 1, 1),
                "{case}"
            );
            // The cached block is the decompressed one.
            assert!(stats.used_bytes > 1024, "{case}");
            // A scan of a mapped table reads its uncompressed blocks straight from the map
            // (zero copy) and leaves the cache alone; other blocks go through it.
            let entries = table.entries().count();
            assert_eq!(entries, model.len(), "{case}");
            let inserted = cache.stats().inserts - stats.inserts;
            if mode == ReadMode::Mmap && compression == Compression::None {
                assert_eq!(inserted, 0, "{case}");
            } else {
                assert!(inserted > 0, "{case}");
            }
            // Whole scans and gets through the cache (twice: cold, then warm) match the model.
            read_everything(&table, &model).expect("cold");
            read_everything(&table, &model).expect("warm");
            cache.remove_table(42);
            assert_eq!(cache.stats().entries, 0, "{case}");
            std::fs::remove_file(&path).expect("remove");
        }
    }
}

#[test]
fn a_shared_cache_keeps_tables_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (mode, compression) in [
        (ReadMode::Pread, Compression::None),
        (ReadMode::Mmap, Compression::Lz4),
        (ReadMode::Pread, Compression::Zstd { level: 1 }),
    ] {
        let cache = Arc::new(BlockCache::new(1 << 20));
        let (path_a, model_a) = cache_fixture(dir.path(), "a.sst", compression, "apple");
        let (path_b, model_b) = cache_fixture(dir.path(), "b.sst", compression, "berry");
        let a = Table::open_with(&path_a, mode, Some(Arc::clone(&cache)), 1).expect("open a");
        let b = Table::open_with(&path_b, mode, Some(Arc::clone(&cache)), 2).expect("open b");
        // key0000 is in the first data block of both tables: offset 0 in each file.
        for round in 0..3 {
            assert!(
                get_value(&a, b"key0000").starts_with(b"apple0000"),
                "round {round}"
            );
            assert!(
                get_value(&b, b"key0000").starts_with(b"berry0000"),
                "round {round}"
            );
        }
        let stats = cache.stats();
        assert_eq!(
            (stats.misses, stats.hits, stats.entries),
            (2, 4, 2),
            "{mode:?} {compression:?}"
        );
        read_everything(&a, &model_a).expect("a");
        read_everything(&b, &model_b).expect("b");
        // Dropping one table's blocks leaves the other's.
        cache.remove_table(1);
        let before = cache.stats();
        assert!(get_value(&b, b"key0000").starts_with(b"berry0000"));
        assert_eq!(cache.stats().hits, before.hits + 1);
        assert!(get_value(&a, b"key0000").starts_with(b"apple0000"));
        assert_eq!(cache.stats().misses, before.misses + 1);
        for path in [path_a, path_b] {
            std::fs::remove_file(path).expect("remove");
        }
    }
}

#[test]
fn a_tiny_cache_evicts_and_reads_stay_correct() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, model) = cache_fixture(dir.path(), "t.sst", Compression::Lz4, "lime");
    // Room for about two decompressed blocks.
    let cache = Arc::new(BlockCache::with_shards(
        2 * (1100 + ENTRY_OVERHEAD_BYTES),
        1,
    ));
    let table =
        Table::open_with(&path, ReadMode::Pread, Some(Arc::clone(&cache)), 3).expect("open");
    read_everything(&table, &model).expect("read");
    let stats = cache.stats();
    assert!(stats.evictions > 0, "{stats:?}");
    assert!(stats.used_bytes <= stats.capacity_bytes, "{stats:?}");
}

#[test]
fn a_corrupt_block_is_not_cached() {
    let fixture = Fixture::new(Compression::None, 200);
    // Flip a byte in the first data block.
    fixture.with_flipped(3, 0x01);
    let cache = Arc::new(BlockCache::new(1 << 20));
    let table = Table::open_with(&fixture.path, ReadMode::Pread, Some(Arc::clone(&cache)), 9)
        .expect("open: data blocks are read lazily");
    for _ in 0..2 {
        let err = table.get(b"key0000", u64::MAX).expect_err("corrupt");
        assert_corrupt_names_file(&err, &fixture.path);
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.hits, stats.inserts),
        (2, 0, 0),
        "{stats:?}"
    );
}

/// Reading more through memory maps than the cache budget leaves releases the maps' pages
/// (`MADV_DONTNEED`); values read before the release, still held, and every read after it
/// return the same bytes.
#[test]
fn released_map_pages_read_back_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mapped.sst");
    let mut model = Model::new();
    for i in 0..3000u32 {
        let value: Vec<u8> = (0..200u32)
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        model.insert(
            IKey(ik(format!("key{i:06}").as_bytes(), 1, ValueKind::Put)),
            value,
        );
    }
    write(
        &path,
        &model,
        TableOptions {
            compression: Compression::None,
            ..TableOptions::default()
        },
    );
    // No room for blocks: the maps get the minimum budget.
    let cache = Arc::new(BlockCache::new(0));
    let table = Table::open_with(&path, ReadMode::Mmap, Some(Arc::clone(&cache)), 1).expect("open");
    let held: Vec<Bytes> = table.entries().map(|e| e.expect("entry").1).collect();
    let mut scans = 0;
    while cache.mapped_releases() == 0 {
        assert_eq!(scan(&table).len(), model.len());
        scans += 1;
        assert!(scans < 100, "no release after {scans} full scans");
    }
    for (value, expected) in held.iter().zip(model.values()) {
        assert_eq!(
            value.as_ref(),
            expected.as_slice(),
            "a value held across the release"
        );
    }
    read_everything(&table, &model).expect("reads after the release");
}
