//! The memtable: the in-memory write buffer of the LSM tree, an ordered set of internal keys
//! and their values.
//!
//! Every write goes to the write-ahead log ([`super::wal`]) and then into the *mutable*
//! memtable, one entry per version: the key is the encoded internal key (user key, sequence
//! number, kind; see [`super::key`]) and the value the user value (empty for a tombstone).
//! Entries sort by [`compare_encoded`]: user key ascending, newest version first. A read at
//! snapshot `s` finds the key's newest version through the skiplist's hash index and walks its
//! versions to the first with a sequence number `<= s` (past a few dozen, it seeks to
//! [`seek_key`]`(user_key, s)` instead).
//!
//! # Intended use: one mutable and N immutable memtables
//!
//! ```text
//!   writers ──insert──► [ mutable memtable ]          ◄── readers (get / range)
//!                              │ approximate_bytes() > budget: frozen, WAL rotated
//!                              ▼
//!                       [ immutable #N ] … [ immutable #1 ] ◄── readers
//!                              │ background flush to an SSTable, then dropped
//!                              │ (or kept for point reads until the next flush)
//!                              ▼
//!                           level 0
//! ```
//!
//! The engine holds the mutable memtable and a list of frozen ones behind `Arc`s. Freezing is
//! the engine's decision and needs no call here: it swaps in a fresh [`Memtable`] and stops
//! inserting into the old one, which readers and the flush thread keep reading. The index is
//! LimeDB's own skiplist ([`super::skiplist`]): inserts are serialised (the engine's writer
//! lock already does so; the list has its own lock besides), reads take no lock and run
//! alongside inserts; each entry becomes visible atomically, and a reader at a snapshot never
//! sees a version newer than the snapshot.
//!
//! Keys and values are copied into the skiplist's arena, so the memtable holds no allocation
//! per entry, and [`Memtable::approximate_bytes`], the byte budget counter, is the exact size
//! of the entries' nodes plus the hash index of their keys. Readers get borrowed
//! [`MemtableEntry`]s; [`Memtable::get`] copies the one value it returns.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use limedb_storage::lsm::key::ValueKind;
//! use limedb_storage::lsm::memtable::Memtable;
//!
//! let m = Memtable::new();
//! m.insert(b"lime", 1, ValueKind::Put, b"green");
//! m.insert(b"lime", 2, ValueKind::Delete, b"");
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

use super::key::{self, compare_encoded, seek_key, trailer, ValueKind, MAX_SEQNO};
use super::skiplist::{Cursor, InsertPlan, Probe, SkipList, MAX_CHAIN};

/// Versions [`Memtable::get`] walks from a key's newest before it seeks instead.
const READ_WALK: usize = 2 * MAX_CHAIN as usize;

/// An owned encoded internal key (see [`super::key`]), ordered by [`compare_encoded`]: a bound
/// for [`Memtable::range_internal`].
///
/// Built only by its constructors, so it always has a trailer with a known kind.
#[derive(Clone, PartialEq, Eq)]
pub struct InternalKey {
    encoded: Vec<u8>,
}

impl InternalKey {
    /// Encodes `(user_key, seqno, kind)`; `seqno` is masked to 56 bits ([`MAX_SEQNO`]).
    pub fn new(user_key: &[u8], seqno: u64, kind: ValueKind) -> Self {
        InternalKey {
            encoded: key::encode(user_key, seqno, kind),
        }
    }

    /// The smallest internal key of `user_key`: its newest possible version.
    pub fn first_of(user_key: &[u8]) -> Self {
        InternalKey {
            encoded: seek_key(user_key, MAX_SEQNO),
        }
    }

    /// The largest internal key of `user_key`: its oldest possible version.
    pub fn last_of(user_key: &[u8]) -> Self {
        InternalKey::new(user_key, 0, ValueKind::Delete)
    }

    /// The seek key for a read of `user_key` at snapshot `seqno` (see [`seek_key`]).
    pub fn seek(user_key: &[u8], seqno: u64) -> Self {
        InternalKey {
            encoded: seek_key(user_key, seqno),
        }
    }

    /// The encoded bytes: user key then the 8-byte trailer.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_encoded(&self.encoded, &other.encoded)
    }
}

impl fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_encoded(&self.encoded, "InternalKey", f)
    }
}

fn fmt_encoded(encoded: &[u8], name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(
        f,
        "{name}({:?}@{} {:?})",
        key::user_key(encoded).escape_ascii().to_string(),
        trailer(encoded) >> 8,
        kind_of(encoded)
    )
}

fn kind_of(encoded: &[u8]) -> ValueKind {
    // The memtable only stores keys built by `key::encode`, whose kind byte is valid.
    ValueKind::from_u8((trailer(encoded) & 0xff) as u8).unwrap_or(ValueKind::Delete)
}

/// One version read from a memtable, borrowed from it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MemtableEntry<'a> {
    encoded: &'a [u8],
    value: &'a [u8],
}

impl<'a> MemtableEntry<'a> {
    fn of(cursor: Cursor<'a>) -> Self {
        MemtableEntry {
            encoded: cursor.key(),
            value: cursor.value(),
        }
    }

    /// The encoded internal key: user key then the 8-byte trailer.
    pub fn encoded_key(&self) -> &'a [u8] {
        self.encoded
    }

    /// The user key.
    pub fn user_key(&self) -> &'a [u8] {
        key::user_key(self.encoded)
    }

    /// The sequence number of the write.
    pub fn seqno(&self) -> u64 {
        trailer(self.encoded) >> 8
    }

    /// Put or tombstone.
    pub fn kind(&self) -> ValueKind {
        kind_of(self.encoded)
    }

    /// The value; empty for a tombstone.
    pub fn value(&self) -> &'a [u8] {
        self.value
    }
}

impl fmt::Debug for MemtableEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_encoded(self.encoded, "MemtableEntry", f)
    }
}

/// A concurrent, ordered in-memory buffer of versions (see the [module docs](self)).
pub struct Memtable {
    list: SkipList,
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
        Self::with_expected_keys(0)
    }

    /// An empty memtable whose key index is sized for `keys` distinct user keys (see
    /// [`SkipList::with_expected_keys`]); the engine passes the count of the memtable it
    /// freezes.
    pub fn with_expected_keys(keys: usize) -> Self {
        Memtable {
            list: SkipList::with_expected_keys(keys),
            max_seqno: AtomicU64::new(0),
        }
    }

    /// Adds the version `(user_key, seqno, kind)` with `value` (ignored for a tombstone),
    /// copying both into the memtable's arena.
    ///
    /// Sequence numbers come from the write-ahead log and are unique, so a version is inserted
    /// once; inserting the same `(user_key, seqno, kind)` again shadows the earlier value for
    /// [`Memtable::get`] (iteration yields both, the later insert first).
    pub fn insert(&self, user_key: &[u8], seqno: u64, kind: ValueKind, value: &[u8]) {
        self.insert_with(None, user_key, seqno, kind, value);
    }

    /// Finds where [`Memtable::insert_planned`]s of `user_keys` will go, for the whole batch
    /// at once, their cache misses overlapped ([`SkipList::plan_inserts`]); changes nothing.
    pub fn plan_inserts(&self, user_keys: &[&[u8]]) -> InsertPlan<'_> {
        self.list.plan_inserts(user_keys)
    }

    /// [`Memtable::insert`] of the `i`-th key of `plan`, made by [`Memtable::plan_inserts`] on
    /// this memtable (a plan of another one is ignored).
    pub fn insert_planned(
        &self,
        plan: &InsertPlan<'_>,
        i: usize,
        user_key: &[u8],
        seqno: u64,
        kind: ValueKind,
        value: &[u8],
    ) {
        self.insert_with(Some((plan, i)), user_key, seqno, kind, value);
    }

    fn insert_with(
        &self,
        plan: Option<(&InsertPlan<'_>, usize)>,
        user_key: &[u8],
        seqno: u64,
        kind: ValueKind,
        value: &[u8],
    ) {
        let value = match kind {
            ValueKind::Put => value,
            ValueKind::Delete => &[],
        };
        let trailer = key::pack_trailer(seqno, kind).to_le_bytes();
        match plan {
            Some((plan, i)) => self.list.insert_planned(plan, i, user_key, &trailer, value),
            None => self.list.insert(user_key, &trailer, value),
        };
        self.max_seqno
            .fetch_max(seqno & MAX_SEQNO, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` with a sequence number `<= snapshot_seqno`, as its kind
    /// and value: `Some((Delete, empty))` for a tombstone (the key is deleted at that snapshot;
    /// older tables must not be consulted), `None` if this memtable has no visible version.
    ///
    /// The key's newest version is found through the skiplist's hash index, without a search;
    /// a read at an older snapshot walks the key's versions from there, and past
    /// twice [`MAX_CHAIN`] of them seeks instead.
    pub fn get(&self, user_key: &[u8], snapshot_seqno: u64) -> Option<(ValueKind, Bytes)> {
        self.visible_from(
            self.list.first_of_user_key(user_key)?,
            user_key,
            snapshot_seqno,
        )
    }

    /// [`Memtable::get`] for each of `user_keys`, in order, their lookups' cache misses
    /// overlapped ([`SkipList::first_of_user_keys`]): a pipeline of reads costs less than the
    /// same reads one by one.
    pub fn get_many(
        &self,
        user_keys: &[&[u8]],
        snapshot_seqno: u64,
    ) -> Vec<Option<(ValueKind, Bytes)>> {
        self.list
            .first_of_user_keys(user_keys)
            .into_iter()
            .zip(user_keys)
            .map(|(first, key)| self.visible_from(first?, key, snapshot_seqno))
            .collect()
    }

    /// The newest version at or below `snapshot_seqno` among `user_key`'s, which start at
    /// `first`.
    fn visible_from(
        &self,
        first: Cursor<'_>,
        user_key: &[u8],
        snapshot_seqno: u64,
    ) -> Option<(ValueKind, Bytes)> {
        let found =
            |entry: MemtableEntry<'_>| (entry.kind(), Bytes::copy_from_slice(entry.value()));
        let mut at = first;
        for _ in 0..READ_WALK {
            let entry = MemtableEntry::of(at);
            if entry.user_key() != user_key {
                return None;
            }
            if entry.seqno() <= snapshot_seqno {
                return Some(found(entry));
            }
            at = at.next()?;
        }
        let seek = seek_key(user_key, snapshot_seqno);
        let entry = MemtableEntry::of(self.list.seek_ge(&Probe::new(&seek))?);
        (entry.user_key() == user_key).then(|| found(entry))
    }

    /// Memory held, in bytes: every entry's node in the arena (header, tower of pointers,
    /// encoded key, value) and the hash index of its keys (see [`super::skiplist`]). The engine
    /// freezes the memtable when this passes its budget.
    pub fn approximate_bytes(&self) -> u64 {
        (self.list.node_bytes() + self.list.index_bytes()) as u64
    }

    /// Number of versions (entries) held.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Number of distinct user keys held.
    pub fn keys(&self) -> usize {
        self.list.keys()
    }

    /// Whether the memtable holds no entry.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The largest sequence number inserted, 0 if none (the WAL never assigns 0).
    pub fn max_seqno(&self) -> u64 {
        self.max_seqno.load(AtomicOrdering::Relaxed)
    }

    /// Every version in [`compare_encoded`] order; iterate backwards with `.rev()`.
    pub fn iter(&self) -> MemtableRange<'_> {
        MemtableRange::between(&self.list, self.list.first(), self.list.last())
    }

    /// Every version in order, as [`Memtable::iter`], but for the versions no reader can see
    /// any more: after a version with a seqno `<= smallest_snapshot` come only versions every
    /// reader sees shadowed by it (the oldest live snapshot included), and those are passed
    /// over without being read. What a flush writes, with no cache miss spent on a version it
    /// would drop.
    pub fn iter_visible(&self, smallest_snapshot: u64) -> VisibleVersions<'_> {
        VisibleVersions {
            next: self.list.first(),
            smallest_snapshot,
        }
    }

    /// Every version whose *user key* lies within `(lower, upper)`, in [`compare_encoded`]
    /// order (all versions of a user key, newest first); iterate backwards with `.rev()` or
    /// `next_back`. Visibility at a snapshot is the caller's filter (skip `seqno > snapshot`).
    ///
    /// ```
    /// use std::ops::Bound;
    /// use limedb_storage::lsm::key::ValueKind;
    /// use limedb_storage::lsm::memtable::Memtable;
    ///
    /// let m = Memtable::new();
    /// for (i, k) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
    ///     m.insert(k, i as u64 + 1, ValueKind::Put, b"v");
    /// }
    /// let keys: Vec<Vec<u8>> = m
    ///     .range(Bound::Excluded(b"a"), Bound::Included(b"c"))
    ///     .rev()
    ///     .map(|e| e.user_key().to_vec())
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
        let first = match &lower {
            Bound::Included(k) => self.list.seek_ge(&Probe::new(k.encoded())),
            Bound::Excluded(k) => self.list.seek_gt(&Probe::new(k.encoded())),
            Bound::Unbounded => self.list.first(),
        };
        let last = match &upper {
            Bound::Included(k) => self.list.seek_le(&Probe::new(k.encoded())),
            Bound::Excluded(k) => self.list.seek_lt(&Probe::new(k.encoded())),
            Bound::Unbounded => self.list.last(),
        };
        MemtableRange::between(&self.list, first, last)
    }
}

/// An iterator over memtable entries in [`compare_encoded`] order, forward and backward.
///
/// Its ends are fixed when it is created; entries inserted between them while it runs may or
/// may not be seen. A snapshot reader filters by sequence number, so entries newer than its
/// snapshot are invisible to it anyway.
pub struct MemtableRange<'a> {
    list: &'a SkipList,
    /// The next entry forward and the next backward; both `None` once they have crossed.
    front: Option<Cursor<'a>>,
    back: Option<Cursor<'a>>,
}

impl<'a> MemtableRange<'a> {
    fn between(list: &'a SkipList, first: Option<Cursor<'a>>, last: Option<Cursor<'a>>) -> Self {
        let (front, back) = match (first, last) {
            (Some(f), Some(l)) if f.cmp_entry(&l) != Ordering::Greater => (Some(f), Some(l)),
            _ => (None, None),
        };
        MemtableRange { list, front, back }
    }
}

impl fmt::Debug for MemtableRange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("MemtableRange { .. }")
    }
}

impl<'a> Iterator for MemtableRange<'a> {
    type Item = MemtableEntry<'a>;

    fn next(&mut self) -> Option<MemtableEntry<'a>> {
        let at = self.front?;
        if Some(at) == self.back {
            self.front = None;
            self.back = None;
        } else {
            // `back` lies ahead, so there is a next entry.
            self.front = at.next();
        }
        Some(MemtableEntry::of(at))
    }
}

impl<'a> DoubleEndedIterator for MemtableRange<'a> {
    fn next_back(&mut self) -> Option<MemtableEntry<'a>> {
        let at = self.back?;
        if Some(at) == self.front {
            self.front = None;
            self.back = None;
        } else {
            // `front` lies behind, so there is an entry before this one, at or after `front`.
            self.back = self.list.prev(at);
        }
        Some(MemtableEntry::of(at))
    }
}

/// The iterator of [`Memtable::iter_visible`].
pub struct VisibleVersions<'a> {
    next: Option<Cursor<'a>>,
    smallest_snapshot: u64,
}

impl fmt::Debug for VisibleVersions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("VisibleVersions { .. }")
    }
}

impl<'a> Iterator for VisibleVersions<'a> {
    type Item = MemtableEntry<'a>;

    fn next(&mut self) -> Option<MemtableEntry<'a>> {
        let at = self.next?;
        let entry = MemtableEntry::of(at);
        self.next = if entry.seqno() <= self.smallest_snapshot {
            // Every later version of this user key is older, so shadowed by this one.
            let mut next = at.next_group();
            while let Some(group) = next {
                if key::user_key(group.key()) != entry.user_key() {
                    break;
                }
                next = group.next_group();
            }
            next
        } else {
            at.next()
        };
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::lsm::key::TRAILER_LEN;

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
            m.insert(k, *seqno, kind(*put), &value);
            model.insert((k.clone(), *seqno), (kind(*put), value));
        }
        (m, model)
    }

    proptest! {
        #[test]
        fn get_matches_the_model(
            versions in versions(),
            reads in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..4), 0u64..45), 1..60),
        ) {
            let (m, model) = build(&versions);
            prop_assert_eq!(m.len(), model.len());
            for (k, snapshot) in &reads {
                prop_assert_eq!(m.get(k, *snapshot), model_get(&model, k, *snapshot));
            }
            // A batch answers as the reads one by one.
            let asked: Vec<&[u8]> = reads.iter().map(|(k, _)| k.as_slice()).collect();
            for snapshot in [0, 20, u64::MAX] {
                let want: Vec<_> = asked.iter().map(|k| model_get(&model, k, snapshot)).collect();
                prop_assert_eq!(m.get_many(&asked, snapshot), want);
            }
            for (k, seqno) in model.keys() {
                prop_assert_eq!(m.get(k, *seqno), model_get(&model, k, *seqno));
            }
            prop_assert_eq!(m.max_seqno(), model.keys().map(|(_, s)| *s).max().unwrap_or(0));
        }

        /// `iter_visible` yields exactly the versions a flush keeps: each key's versions
        /// newer than the smallest snapshot and the newest one at or below it. Keys with up to
        /// 100 versions, inserted oldest first as the engine does, fill chains past MAX_CHAIN
        /// so that one key has several groups.
        #[test]
        fn iter_visible_yields_what_retention_keeps(
            versions in versions(),
            history in proptest::collection::btree_set((0u8..3, 0u64..100), 0..200),
            smallest_snapshot in prop_oneof![Just(u64::MAX >> 8), 0u64..110],
        ) {
            let (m, _) = build(&versions);
            // Oldest first, every fifth a tombstone.
            let mut oldest_first: Vec<(Vec<u8>, u64, bool, Vec<u8>)> = history
                .iter()
                .map(|&(k, s)| (vec![k], s, s % 5 != 0, s.to_le_bytes().to_vec()))
                .collect();
            oldest_first.sort_by_key(|v| v.1);
            let (long, _) = build(&oldest_first);
            for m in [&m, &long] {
                // The rule of the engine's `Retention`: a version is dropped if the next newer
                // version of its user key has a seqno at or below the smallest snapshot.
                let mut previous: Option<(Vec<u8>, u64)> = None;
                let mut want = Vec::new();
                for e in m.iter() {
                    let shadowed = previous.as_ref().is_some_and(|(k, newer)| {
                        k.as_slice() == e.user_key() && *newer <= smallest_snapshot
                    });
                    previous = Some((e.user_key().to_vec(), e.seqno()));
                    if !shadowed {
                        want.push(e.encoded_key().to_vec());
                    }
                }
                let got: Vec<Vec<u8>> =
                    m.iter_visible(smallest_snapshot).map(|e| e.encoded_key().to_vec()).collect();
                prop_assert_eq!(got, want);
            }
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
            let forward: Vec<Vec<u8>> = m.iter().map(|e| e.encoded_key().to_vec()).collect();
            prop_assert_eq!(&forward, &expected);
            let mut backward: Vec<Vec<u8>> =
                m.iter().rev().map(|e| e.encoded_key().to_vec()).collect();
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
                    m.range(lower, upper).map(|e| e.encoded_key().to_vec()).collect();
                prop_assert_eq!(&got, &want);
                let mut got_rev: Vec<Vec<u8>> =
                    m.range(lower, upper).rev().map(|e| e.encoded_key().to_vec()).collect();
                got_rev.reverse();
                prop_assert_eq!(&got_rev, &want);
            }
        }
    }

    #[test]
    fn entries_decode_and_seek_lands_on_the_visible_version() {
        let m = Memtable::new();
        m.insert(b"k", 3, ValueKind::Put, b"three");
        m.insert(b"k", 7, ValueKind::Put, b"seven");
        m.insert(b"k", 9, ValueKind::Delete, b"ignored");
        m.insert(b"k\0", 1, ValueKind::Put, b"other");
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
            .map(|e| (e.user_key().to_vec(), e.seqno(), e.kind()))
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
    fn approximate_bytes_counts_every_node_and_the_key_index() {
        let m = Memtable::new();
        assert_eq!(m.approximate_bytes(), 0);
        assert!(m.is_empty());
        m.insert(b"abc", 1, ValueKind::Put, &[0u8; 100]);
        // The first key brings the index's first table: 1024 slots of 8 bytes.
        let one = m.approximate_bytes() - 8192;
        // Header (40) + at least one tower pointer + encoded key + value, rounded up to 8.
        let key = (3 + TRAILER_LEN) as u64;
        assert!(one >= 40 + 8 + key + 100 && one.is_multiple_of(8), "{one}");
        assert!(one <= 40 + 8 * 12 + key + 100 + 7, "{one}");
        // A newer version of the key is chained (no tower), and a tombstone stores no value,
        // whatever it is given.
        let before = m.approximate_bytes();
        m.insert(b"abc", 2, ValueKind::Delete, &[0u8; 100]);
        let two = m.approximate_bytes() - before;
        assert_eq!(two, (40 + key).next_multiple_of(8));
        assert_eq!(m.get(b"abc", 2), Some((ValueKind::Delete, Bytes::new())));
        assert_eq!((m.len(), m.keys()), (2, 1));
    }

    /// Memory per entry for the storage benchmark's shape (16-byte keys, 101-byte stored
    /// values), nodes and key index together: under 200 bytes in a memtable sized for its
    /// keys (as the engine makes every memtable after the first), under 230 in one whose index
    /// grew from the smallest table. The skiplist of separately allocated nodes, keys and
    /// values LimeDB used before its arena took 277 without any index.
    #[test]
    fn entries_of_the_benchmark_shape_cost_under_200_bytes() {
        let n = 100_000u64;
        let fill = |m: &Memtable| {
            for i in 0..n {
                let key = format!(
                    "{:016}",
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1_000_000_007
                );
                m.insert(key.as_bytes(), i + 1, ValueKind::Put, &[7u8; 101]);
            }
            m.approximate_bytes() / n
        };
        let sized = fill(&Memtable::with_expected_keys(n as usize));
        assert!((175..200).contains(&sized), "{sized} bytes per entry");
        let grown = fill(&Memtable::new());
        assert!((175..230).contains(&grown), "{grown} bytes per entry");
    }

    /// 100 versions of one key: reads at every snapshot, including those more than
    /// `READ_WALK` versions back (which seek instead of walking), find the right version.
    #[test]
    fn reads_deep_in_a_long_history_find_their_version() {
        let m = Memtable::new();
        m.insert(b"a", 1, ValueKind::Put, b"a");
        for s in 1..=100u64 {
            let kind = if s % 10 == 0 {
                ValueKind::Delete
            } else {
                ValueKind::Put
            };
            m.insert(b"k", s * 2, kind, &s.to_le_bytes());
        }
        m.insert(b"z", 1, ValueKind::Put, b"z");
        assert_eq!(m.get(b"k", 1), None);
        for snapshot in 2..=201u64 {
            let s = snapshot / 2;
            let want = if s % 10 == 0 {
                (ValueKind::Delete, Bytes::new())
            } else {
                (ValueKind::Put, Bytes::copy_from_slice(&s.to_le_bytes()))
            };
            assert_eq!(
                m.get(b"k", snapshot),
                Some(want.clone()),
                "snapshot {snapshot}"
            );
            assert_eq!(m.get_many(&[b"k", b"q"], snapshot), vec![Some(want), None]);
        }
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
                        m.insert(key.as_bytes(), seqno, ValueKind::Put, &seqno.to_le_bytes());
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
        let encoded: Vec<Vec<u8>> = m.iter().map(|e| e.encoded_key().to_vec()).collect();
        assert!(encoded
            .windows(2)
            .all(|w| compare_encoded(&w[0], &w[1]) == Ordering::Less));
    }
}
