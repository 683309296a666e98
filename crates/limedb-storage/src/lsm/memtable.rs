//! The memtable: the in-memory write buffer of the LSM tree, a concurrent skiplist of
//! internal keys.
//!
//! Every write goes to the write-ahead log ([`super::wal`]) and then into the *mutable*
//! memtable, one entry per version: the key is the encoded internal key (user key, sequence
//! number, kind; see [`super::key`]) and the value the user value (empty for a tombstone).
//! Entries sort by [`compare_encoded`]: user key ascending, newest version first. A read at
//! snapshot `s` seeks to [`seek_key`]`(user_key, s)` and takes the first entry of that user key.
//!
//! # Intended use: one mutable and N immutable memtables
//!
//! ```text
//!   writers ──insert──► [ mutable memtable ]          ◄── readers (get / range)
//!                              │ approximate_bytes() > budget: frozen, WAL rotated
//!                              ▼
//!                       [ immutable #N ] … [ immutable #1 ] ◄── readers
//!                              │ background flush to an SSTable, then dropped
//!                              ▼
//!                           level 0
//! ```
//!
//! The engine holds the mutable memtable and a list of frozen ones behind `Arc`s. Freezing is
//! the engine's decision and needs no call here: it swaps in a fresh [`Memtable`] and stops
//! inserting into the old one, which readers and the flush thread keep reading. The skiplist
//! is lock-free ([`crossbeam_skiplist::SkipMap`]), so any number of threads may insert and read
//! at once; each entry becomes visible atomically, and a reader at a snapshot never sees a
//! version newer than the snapshot.
//!
//! [`Memtable::approximate_bytes`] is the byte budget counter: encoded key plus value plus
//! [`ENTRY_OVERHEAD_BYTES`] per entry, an estimate of what the skiplist really holds.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use limedb_storage::lsm::key::ValueKind;
//! use limedb_storage::lsm::memtable::Memtable;
//!
//! let m = Memtable::new();
//! m.insert(b"lime", 1, ValueKind::Put, Bytes::from_static(b"green"));
//! m.insert(b"lime", 2, ValueKind::Delete, Bytes::new());
//! assert_eq!(m.get(b"lime", 1), Some((ValueKind::Put, Bytes::from_static(b"green"))));
//! assert_eq!(m.get(b"lime", 2), Some((ValueKind::Delete, Bytes::new())));
//! assert_eq!(m.get(b"lime", 0), None);
//! assert_eq!(m.max_seqno(), 2);
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;

use super::key::{self, compare_encoded, seek_key, ValueKind, MAX_SEQNO, TRAILER_LEN};

/// Bytes [`Memtable::approximate_bytes`] charges per entry on top of its key and value: the
/// skiplist node with its tower of pointers, the key's 16-byte order prefix, two `Bytes`
/// handles, and the allocator's headers and size-class rounding of the node, the encoded key
/// and the value. Measured: 500,000 entries of 16-byte keys and 101-byte stored values grew
/// the process's anonymous memory by 277 bytes each (24 + 101 + 152).
pub const ENTRY_OVERHEAD_BYTES: u64 = 152;

/// An encoded internal key (see [`super::key`]) that orders by [`compare_encoded`], so it can key
/// a [`SkipMap`].
///
/// Built only by [`InternalKey::new`], so it always has a trailer with a known kind.
///
/// It also carries the first 16 bytes of the user key as a big-endian integer, zero-padded
/// (`prefix`): comparing two prefixes settles most comparisons of a skiplist search without
/// following the pointer to either key's bytes, which is where a search spends its time (a
/// cache miss per node). Zero-padding keeps the order: when two prefixes differ, the first
/// differing byte among the first 16 decides the byte-wise order of the user keys too (a key
/// that ends early pads with 0, which is never above the other key's byte there); when they
/// are equal, the full keys are compared.
#[derive(Clone)]
pub struct InternalKey {
    prefix: u128,
    encoded: Bytes,
}

/// The ordering prefix of a user key (see [`InternalKey`]).
fn prefix_of(user_key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = user_key.len().min(16);
    if let (Some(dst), Some(src)) = (bytes.get_mut(..n), user_key.get(..n)) {
        dst.copy_from_slice(src);
    }
    u128::from_be_bytes(bytes)
}

impl InternalKey {
    fn from_encoded(user_key: &[u8], encoded: Vec<u8>) -> Self {
        InternalKey {
            prefix: prefix_of(user_key),
            encoded: Bytes::from(encoded),
        }
    }

    /// Encodes `(user_key, seqno, kind)`; `seqno` is masked to 56 bits ([`MAX_SEQNO`]).
    pub fn new(user_key: &[u8], seqno: u64, kind: ValueKind) -> Self {
        Self::from_encoded(user_key, key::encode(user_key, seqno, kind))
    }

    /// The smallest internal key of `user_key`: its newest possible version.
    pub fn first_of(user_key: &[u8]) -> Self {
        Self::from_encoded(user_key, seek_key(user_key, MAX_SEQNO))
    }

    /// The largest internal key of `user_key`: its oldest possible version.
    pub fn last_of(user_key: &[u8]) -> Self {
        InternalKey::new(user_key, 0, ValueKind::Delete)
    }

    /// The seek key for a read of `user_key` at snapshot `seqno` (see [`seek_key`]).
    pub fn seek(user_key: &[u8], seqno: u64) -> Self {
        Self::from_encoded(user_key, seek_key(user_key, seqno))
    }

    /// The encoded bytes: user key then the 8-byte trailer.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The encoded bytes as a shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.encoded
    }

    /// The user key.
    pub fn user_key(&self) -> &[u8] {
        key::user_key(&self.encoded)
    }

    fn trailer(&self) -> u64 {
        let start = self.encoded.len().saturating_sub(TRAILER_LEN);
        self.encoded
            .get(start..)
            .and_then(|t| <[u8; TRAILER_LEN]>::try_from(t).ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// The sequence number of the write.
    pub fn seqno(&self) -> u64 {
        self.trailer() >> 8
    }

    /// Put or tombstone.
    pub fn kind(&self) -> ValueKind {
        // `new` only writes the bytes of a `ValueKind`.
        ValueKind::from_u8((self.trailer() & 0xff) as u8).unwrap_or(ValueKind::Delete)
    }
}

impl PartialEq for InternalKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for InternalKey {}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| compare_encoded(&self.encoded, &other.encoded))
    }
}

impl fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "InternalKey({:?}@{} {:?})",
            self.user_key().escape_ascii().to_string(),
            self.seqno(),
            self.kind()
        )
    }
}

/// One version read from a memtable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemtableEntry {
    /// User key, sequence number and kind.
    pub key: InternalKey,
    /// The value; empty for a tombstone.
    pub value: Bytes,
}

/// A concurrent, ordered in-memory buffer of versions (see the [module docs](self)).
pub struct Memtable {
    map: SkipMap<InternalKey, Bytes>,
    approximate_bytes: AtomicU64,
    max_seqno: AtomicU64,
}

impl Default for Memtable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Memtable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memtable")
            .field("len", &self.len())
            .field("approximate_bytes", &self.approximate_bytes())
            .field("max_seqno", &self.max_seqno())
            .finish()
    }
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Memtable {
            map: SkipMap::new(),
            approximate_bytes: AtomicU64::new(0),
            max_seqno: AtomicU64::new(0),
        }
    }

    /// Adds the version `(user_key, seqno, kind)` with `value` (ignored for a tombstone).
    ///
    /// Sequence numbers come from the write-ahead log and are unique, so a version is inserted
    /// once; inserting the same `(user_key, seqno, kind)` again replaces its value (and counts
    /// its bytes twice in [`Memtable::approximate_bytes`]).
    pub fn insert(&self, user_key: &[u8], seqno: u64, kind: ValueKind, value: Bytes) {
        let value = match kind {
            ValueKind::Put => value,
            ValueKind::Delete => Bytes::new(),
        };
        let key = InternalKey::new(user_key, seqno, kind);
        let charge = key.encoded().len() as u64 + value.len() as u64 + ENTRY_OVERHEAD_BYTES;
        self.map.insert(key, value);
        self.approximate_bytes
            .fetch_add(charge, AtomicOrdering::Relaxed);
        self.max_seqno
            .fetch_max(seqno & MAX_SEQNO, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` with a sequence number `<= snapshot_seqno`, as its kind
    /// and value: `Some((Delete, empty))` for a tombstone (the key is deleted at that snapshot;
    /// older tables must not be consulted), `None` if this memtable has no visible version.
    pub fn get(&self, user_key: &[u8], snapshot_seqno: u64) -> Option<(ValueKind, Bytes)> {
        let seek = InternalKey::seek(user_key, snapshot_seqno);
        let entry = self.map.lower_bound(Bound::Included(&seek))?;
        let key = entry.key();
        (key.user_key() == user_key).then(|| (key.kind(), entry.value().clone()))
    }

    /// Estimated memory held, in bytes: encoded keys plus values plus [`ENTRY_OVERHEAD_BYTES`]
    /// per entry. The engine freezes the memtable when this passes its budget.
    pub fn approximate_bytes(&self) -> u64 {
        self.approximate_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Number of versions (entries) held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the memtable holds no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The largest sequence number inserted, 0 if none (the WAL never assigns 0).
    pub fn max_seqno(&self) -> u64 {
        self.max_seqno.load(AtomicOrdering::Relaxed)
    }

    /// Every version in [`compare_encoded`] order; iterate backwards with `.rev()`.
    pub fn iter(&self) -> MemtableRange<'_> {
        self.range_internal(Bound::Unbounded, Bound::Unbounded)
    }

    /// Every version whose *user key* lies within `(lower, upper)`, in [`compare_encoded`]
    /// order (all versions of a user key, newest first); iterate backwards with `.rev()` or
    /// `next_back`. Visibility at a snapshot is the caller's filter (skip `seqno > snapshot`).
    ///
    /// ```
    /// use std::ops::Bound;
    /// use bytes::Bytes;
    /// use limedb_storage::lsm::key::ValueKind;
    /// use limedb_storage::lsm::memtable::Memtable;
    ///
    /// let m = Memtable::new();
    /// for (i, k) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
    ///     m.insert(k, i as u64 + 1, ValueKind::Put, Bytes::from_static(b"v"));
    /// }
    /// let keys: Vec<Vec<u8>> = m
    ///     .range(Bound::Excluded(b"a"), Bound::Included(b"c"))
    ///     .rev()
    ///     .map(|e| e.key.user_key().to_vec())
    ///     .collect();
    /// assert_eq!(keys, vec![b"c".to_vec(), b"b".to_vec()]);
    /// ```
    pub fn range(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> MemtableRange<'_> {
        let lower = match lower {
            Bound::Included(k) => Bound::Included(InternalKey::first_of(k)),
            Bound::Excluded(k) => Bound::Excluded(InternalKey::last_of(k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let upper = match upper {
            Bound::Included(k) => Bound::Included(InternalKey::last_of(k)),
            Bound::Excluded(k) => Bound::Excluded(InternalKey::first_of(k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.range_internal(lower, upper)
    }

    /// Every entry between two internal keys, in [`compare_encoded`] order; for example
    /// `range_internal(Included(InternalKey::seek(k, s)), Unbounded)` starts at the newest
    /// version of `k` visible at snapshot `s`. An empty range if `lower > upper`.
    pub fn range_internal(
        &self,
        lower: Bound<InternalKey>,
        upper: Bound<InternalKey>,
    ) -> MemtableRange<'_> {
        MemtableRange {
            inner: self.map.range((lower, upper)),
        }
    }
}

/// The type of the underlying skiplist range.
type SkipRange<'a> = crossbeam_skiplist::map::Range<
    'a,
    InternalKey,
    (Bound<InternalKey>, Bound<InternalKey>),
    InternalKey,
    Bytes,
>;

/// An iterator over memtable entries in [`compare_encoded`] order, forward and backward.
///
/// It sees entries inserted while it runs if they lie ahead of it; a snapshot reader filters
/// by sequence number, so such entries are invisible to it anyway.
pub struct MemtableRange<'a> {
    inner: SkipRange<'a>,
}

impl fmt::Debug for MemtableRange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("MemtableRange { .. }")
    }
}

impl Iterator for MemtableRange<'_> {
    type Item = MemtableEntry;

    fn next(&mut self) -> Option<MemtableEntry> {
        self.inner.next().map(|e| MemtableEntry {
            key: e.key().clone(),
            value: e.value().clone(),
        })
    }
}

impl DoubleEndedIterator for MemtableRange<'_> {
    fn next_back(&mut self) -> Option<MemtableEntry> {
        self.inner.next_back().map(|e| MemtableEntry {
            key: e.key().clone(),
            value: e.value().clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn kind(put: bool) -> ValueKind {
        if put {
            ValueKind::Put
        } else {
            ValueKind::Delete
        }
    }

    /// The model: (user key, seqno) → (kind, value), with unique seqnos per key.
    type Model = BTreeMap<(Vec<u8>, u64), (ValueKind, Bytes)>;

    fn model_get(model: &Model, user_key: &[u8], snapshot: u64) -> Option<(ValueKind, Bytes)> {
        model
            .range((user_key.to_vec(), 0)..=(user_key.to_vec(), snapshot))
            .next_back()
            .map(|(_, v)| v.clone())
    }

    /// Versions as (user key, seqno, kind, value), deduplicated on (user key, seqno).
    fn versions() -> impl Strategy<Value = Vec<(Vec<u8>, u64, bool, Vec<u8>)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(0u8..4, 0..4),
                0u64..40,
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..8),
            ),
            0..120,
        )
    }

    fn build(versions: &[(Vec<u8>, u64, bool, Vec<u8>)]) -> (Memtable, Model) {
        let m = Memtable::new();
        let mut model = Model::new();
        for (k, seqno, put, v) in versions {
            if model.contains_key(&(k.clone(), *seqno)) {
                continue;
            }
            let value = if *put {
                Bytes::from(v.clone())
            } else {
                Bytes::new()
            };
            m.insert(k, *seqno, kind(*put), value.clone());
            model.insert((k.clone(), *seqno), (kind(*put), value));
        }
        (m, model)
    }

    proptest! {
        /// The prefix shortcut never changes the order: short keys, zero bytes and keys that
        /// share their first 16 bytes included.
        #[test]
        fn prefix_order_is_the_encoded_order(
            a in proptest::collection::vec(0u8..3, 0..20),
            b in proptest::collection::vec(0u8..3, 0..20),
            seq_a in 0u64..4,
            seq_b in 0u64..4,
        ) {
            let ka = InternalKey::new(&a, seq_a, ValueKind::Put);
            let kb = InternalKey::new(&b, seq_b, ValueKind::Delete);
            prop_assert_eq!(ka.cmp(&kb), compare_encoded(ka.encoded(), kb.encoded()));
            prop_assert_eq!(kb.cmp(&ka), compare_encoded(kb.encoded(), ka.encoded()));
        }

        #[test]
        fn get_matches_the_model(
            versions in versions(),
            reads in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..4), 0u64..45), 1..60),
        ) {
            let (m, model) = build(&versions);
            prop_assert_eq!(m.len(), model.len());
            for (k, snapshot) in reads {
                prop_assert_eq!(m.get(&k, snapshot), model_get(&model, &k, snapshot));
            }
            for (k, seqno) in model.keys() {
                prop_assert_eq!(m.get(k, *seqno), model_get(&model, k, *seqno));
            }
            prop_assert_eq!(m.max_seqno(), model.keys().map(|(_, s)| *s).max().unwrap_or(0));
        }

        #[test]
        fn iteration_follows_compare_encoded(
            versions in versions(),
            lo in proptest::collection::vec(0u8..4, 0..3),
            hi in proptest::collection::vec(0u8..4, 0..3),
        ) {
            let (m, model) = build(&versions);
            let mut expected: Vec<Vec<u8>> = model
                .iter()
                .map(|((k, s), (kind, _))| key::encode(k, *s, *kind))
                .collect();
            expected.sort_by(|a, b| compare_encoded(a, b));
            let forward: Vec<Vec<u8>> = m.iter().map(|e| e.key.encoded().to_vec()).collect();
            prop_assert_eq!(&forward, &expected);
            let mut backward: Vec<Vec<u8>> =
                m.iter().rev().map(|e| e.key.encoded().to_vec()).collect();
            backward.reverse();
            prop_assert_eq!(&backward, &expected);

            // User-key ranges, all four bound shapes, both directions.
            let shapes = [
                (Bound::Included(&lo[..]), Bound::Included(&hi[..])),
                (Bound::Excluded(&lo[..]), Bound::Excluded(&hi[..])),
                (Bound::Included(&lo[..]), Bound::Unbounded),
                (Bound::Unbounded, Bound::Excluded(&hi[..])),
            ];
            for (lower, upper) in shapes {
                let want: Vec<Vec<u8>> = expected
                    .iter()
                    .filter(|e| {
                        let uk = key::user_key(e);
                        <(Bound<&[u8]>, Bound<&[u8]>) as std::ops::RangeBounds<[u8]>>::contains::<[u8]>(
                            &(lower, upper),
                            uk,
                        )
                    })
                    .cloned()
                    .collect();
                let got: Vec<Vec<u8>> =
                    m.range(lower, upper).map(|e| e.key.encoded().to_vec()).collect();
                prop_assert_eq!(&got, &want);
                let mut got_rev: Vec<Vec<u8>> =
                    m.range(lower, upper).rev().map(|e| e.key.encoded().to_vec()).collect();
                got_rev.reverse();
                prop_assert_eq!(&got_rev, &want);
            }
        }
    }

    #[test]
    fn entries_decode_and_seek_lands_on_the_visible_version() {
        let m = Memtable::new();
        m.insert(b"k", 3, ValueKind::Put, Bytes::from_static(b"three"));
        m.insert(b"k", 7, ValueKind::Put, Bytes::from_static(b"seven"));
        m.insert(b"k", 9, ValueKind::Delete, Bytes::from_static(b"ignored"));
        m.insert(b"k\0", 1, ValueKind::Put, Bytes::from_static(b"other"));
        assert_eq!(m.get(b"k", 2), None);
        assert_eq!(
            m.get(b"k", 6).map(|(_, v)| v),
            Some(Bytes::from_static(b"three"))
        );
        assert_eq!(
            m.get(b"k", 8).map(|(_, v)| v),
            Some(Bytes::from_static(b"seven"))
        );
        assert_eq!(
            m.get(b"k", u64::MAX),
            Some((ValueKind::Delete, Bytes::new()))
        );
        assert_eq!(m.get(b"", u64::MAX), None);
        assert_eq!(m.get(b"k\0\0", u64::MAX), None);

        let from: Vec<(Vec<u8>, u64, ValueKind)> = m
            .range_internal(
                Bound::Included(InternalKey::seek(b"k", 8)),
                Bound::Unbounded,
            )
            .map(|e| (e.key.user_key().to_vec(), e.key.seqno(), e.key.kind()))
            .collect();
        assert_eq!(
            from,
            vec![
                (b"k".to_vec(), 7, ValueKind::Put),
                (b"k".to_vec(), 3, ValueKind::Put),
                (b"k\0".to_vec(), 1, ValueKind::Put),
            ]
        );
        // Inverted bounds give an empty range rather than a panic.
        assert_eq!(
            m.range(Bound::Included(b"z"), Bound::Included(b"a"))
                .count(),
            0
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m.max_seqno(), 9);
    }

    #[test]
    fn approximate_bytes_counts_keys_values_and_overhead() {
        let m = Memtable::new();
        assert_eq!(m.approximate_bytes(), 0);
        assert!(m.is_empty());
        m.insert(b"abc", 1, ValueKind::Put, Bytes::from(vec![0u8; 100]));
        m.insert(b"abc", 2, ValueKind::Delete, Bytes::from(vec![0u8; 100]));
        let key = (3 + TRAILER_LEN) as u64;
        assert_eq!(
            m.approximate_bytes(),
            (key + 100 + ENTRY_OVERHEAD_BYTES) + (key + ENTRY_OVERHEAD_BYTES)
        );
    }

    #[test]
    fn concurrent_inserts_then_reads() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 2_000;
        let m = Arc::new(Memtable::new());
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        // Interleaved seqnos: thread t writes t+1, t+1+THREADS, …
                        let seqno = i * THREADS + t + 1;
                        let key = format!("key-{:04}", i % 500);
                        m.insert(
                            key.as_bytes(),
                            seqno,
                            ValueKind::Put,
                            Bytes::from(seqno.to_le_bytes().to_vec()),
                        );
                        // Reads while others write: a version we just wrote is visible.
                        let got = m.get(key.as_bytes(), seqno);
                        assert!(matches!(got, Some((ValueKind::Put, _))));
                    }
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().is_ok(), "writer thread panicked");
        }
        let total = THREADS * PER_THREAD;
        assert_eq!(m.len() as u64, total);
        assert_eq!(m.max_seqno(), total);
        // The newest version of each key is the largest seqno written to it.
        for k in 0..500u64 {
            let key = format!("key-{k:04}");
            let newest = (0..total)
                .map(|s| s + 1)
                .filter(|s| ((s - 1) / THREADS) % 500 == k)
                .max();
            let got = m
                .get(key.as_bytes(), u64::MAX)
                .map(|(_, v)| u64::from_le_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
            assert_eq!(got, newest, "{key}");
        }
        let encoded: Vec<Vec<u8>> = m.iter().map(|e| e.key.encoded().to_vec()).collect();
        assert!(encoded
            .windows(2)
            .all(|w| compare_encoded(&w[0], &w[1]) == Ordering::Less));
    }
}
