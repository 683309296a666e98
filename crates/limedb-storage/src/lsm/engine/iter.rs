//! Iterators of the engine: sources over memtables and SSTables, the k-way [`MergeIter`] that
//! merges them in internal-key order, and [`LiveIter`], which collapses the versions of each
//! user key to the newest and hides tombstones and expired values.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound;

use bytes::Bytes;

use super::value;
use crate::engine::Value;
use crate::lsm::key::{compare_encoded, seek_key, user_key, InternalKeyRef, ValueKind, MAX_SEQNO};
use crate::lsm::memtable::{Memtable, MemtableEntry};
use crate::lsm::sstable::{Table, TableIter};
use crate::{Result, StorageError};

/// One `(encoded internal key, value)` entry.
pub(crate) type Entry = (Bytes, Bytes);

/// A sorted stream of entries (in [`compare_encoded`] order).
pub(crate) type Source<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// The entries of `memtable` whose user key is `>= start` (all if `None`).
pub(crate) fn memtable_source<'a>(memtable: &'a Memtable, start: Option<&[u8]>) -> Source<'a> {
    let lower = start.map_or(Bound::Unbounded, Bound::Included);
    memtable_range_source(memtable, lower, Bound::Unbounded, false)
}

/// The entries of `memtable` whose user key lies within `(lower, upper)`, forward or (if
/// `reverse`) backward.
pub(crate) fn memtable_range_source<'a>(
    memtable: &'a Memtable,
    lower: Bound<&[u8]>,
    upper: Bound<&[u8]>,
    reverse: bool,
) -> Source<'a> {
    let range = memtable.range(lower, upper);
    let owned = |e: MemtableEntry<'_>| {
        Ok((
            Bytes::copy_from_slice(e.encoded_key()),
            Bytes::copy_from_slice(e.value()),
        ))
    };
    if reverse {
        Box::new(range.rev().map(owned))
    } else {
        Box::new(range.map(owned))
    }
}

/// The entries of `tables` read backward, the last table first: the tables must be in key
/// order with disjoint ranges, or a single table. Only entries whose user key is within
/// `upper`.
pub(crate) fn tables_source_rev<'a>(tables: Vec<Table>, upper: Bound<&[u8]>) -> Source<'a> {
    let remaining = tables.len();
    Box::new(TablesSource {
        tables,
        remaining,
        iter: None,
        advance: false,
        from: match upper {
            Bound::Included(k) => Start::Upper(Bound::Included(k.to_vec())),
            Bound::Excluded(k) => Start::Upper(Bound::Excluded(k.to_vec())),
            Bound::Unbounded => Start::Upper(Bound::Unbounded),
        },
        done: false,
    })
}

/// The entries of `tables`, read one table after another: the tables must be in key order
/// with disjoint ranges (a level L1+), or a single table. Only entries with user key `>= start`.
pub(crate) fn tables_source<'a>(tables: Vec<Table>, start: Option<&[u8]>) -> Source<'a> {
    let remaining = tables.len();
    Box::new(TablesSource {
        tables,
        remaining,
        iter: None,
        advance: false,
        from: Start::Lower(start.map(|k| seek_key(k, MAX_SEQNO))),
        done: false,
    })
}

/// Where a [`TablesSource`] starts, and so which way it reads.
enum Start {
    /// Forward, from this encoded seek key (or the first entry).
    Lower(Option<Vec<u8>>),
    /// Backward, from the last entry within this user-key bound.
    Upper(Bound<Vec<u8>>),
}

/// See [`tables_source`] and [`tables_source_rev`]. Opens each table's cursor only when the
/// previous one (in reading order) is exhausted.
struct TablesSource {
    tables: Vec<Table>,
    /// Tables not yet opened.
    remaining: usize,
    iter: Option<TableIter>,
    /// The cursor's current entry was handed out: step before reading again.
    advance: bool,
    from: Start,
    done: bool,
}

impl TablesSource {
    fn forward(&self) -> bool {
        matches!(self.from, Start::Lower(_))
    }

    /// Positions a fresh cursor on the first entry to read.
    fn position_cursor(&self, it: &mut TableIter) -> Result<()> {
        let (hi, included) = match &self.from {
            Start::Lower(Some(k)) => return it.seek(k),
            Start::Lower(None) => return it.seek_to_first(),
            Start::Upper(Bound::Unbounded) => return it.seek_to_last(),
            Start::Upper(Bound::Included(k)) => (k, true),
            Start::Upper(Bound::Excluded(k)) => (k, false),
        };
        it.seek(&seek_key(hi, MAX_SEQNO))?;
        if included {
            // Step over the versions of `hi` itself.
            while it.key().is_some_and(|k| user_key(k) == hi.as_slice()) {
                it.next()?;
            }
        }
        if it.valid() {
            it.prev()
        } else {
            it.seek_to_last()
        }
    }
}

impl Iterator for TablesSource {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        loop {
            let forward = self.forward();
            if let Some(it) = self.iter.as_mut() {
                if std::mem::take(&mut self.advance) {
                    let stepped = if forward { it.next() } else { it.prev() };
                    if let Err(e) = stepped {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                if let (Some(k), Some(v)) = (it.key(), it.value()) {
                    self.advance = true;
                    return Some(Ok((Bytes::copy_from_slice(k), v)));
                }
                self.iter = None;
            }
            let Some(remaining) = self.remaining.checked_sub(1) else {
                self.done = true;
                return None;
            };
            self.remaining = remaining;
            let index = if forward {
                self.tables.len() - 1 - remaining
            } else {
                remaining
            };
            let Some(table) = self.tables.get(index) else {
                self.done = true;
                return None;
            };
            let mut it = table.iter();
            if let Err(e) = self.position_cursor(&mut it) {
                self.done = true;
                return Some(Err(e));
            }
            self.iter = Some(it);
        }
    }
}

/// A head entry of one source in the merge heap.
struct Head {
    key: Bytes,
    value: Bytes,
    source: usize,
    /// The merge runs backward: pop the largest key first.
    reverse: bool,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the smallest key first; between equal
    /// keys the lower source index (the newer source) first.
    fn cmp(&self, other: &Self) -> Ordering {
        let by_key = if self.reverse {
            compare_encoded(&self.key, &other.key)
        } else {
            compare_encoded(&other.key, &self.key)
        };
        by_key.then_with(|| other.source.cmp(&self.source))
    }
}

/// Merges sorted sources into one stream in [`compare_encoded`] order (every version of every
/// user key, newest first). Stops after the first error.
pub(crate) struct MergeIter<'a> {
    sources: Vec<Source<'a>>,
    heap: BinaryHeap<Head>,
    reverse: bool,
    done: bool,
}

impl<'a> MergeIter<'a> {
    /// Merges `sources`; pass newer sources first (only used to break ties, which cannot
    /// happen between unique sequence numbers).
    pub(crate) fn new(sources: Vec<Source<'a>>) -> Result<MergeIter<'a>> {
        Self::with_direction(sources, false)
    }

    /// Merges `sources`, which all run backward if `reverse` (then the stream is in reverse
    /// [`compare_encoded`] order: every version of a user key oldest first, largest key first).
    pub(crate) fn with_direction(
        mut sources: Vec<Source<'a>>,
        reverse: bool,
    ) -> Result<MergeIter<'a>> {
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (source, iter) in sources.iter_mut().enumerate() {
            if let Some(entry) = iter.next() {
                let (key, value) = entry?;
                heap.push(Head {
                    key,
                    value,
                    source,
                    reverse,
                });
            }
        }
        Ok(MergeIter {
            sources,
            heap,
            reverse,
            done: false,
        })
    }
}

impl Iterator for MergeIter<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        let head = self.heap.pop()?;
        if let Some(next) = self.sources.get_mut(head.source).and_then(Iterator::next) {
            match next {
                Ok((key, value)) => self.heap.push(Head {
                    key,
                    value,
                    source: head.source,
                    reverse: self.reverse,
                }),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        Some(Ok((head.key, head.value)))
    }
}

/// The live entries of a merged stream: for each user key only its newest version visible at
/// `snapshot_seqno`, and only if that is a put that has not expired at `now_ms`.
pub(crate) struct LiveIter<'a> {
    merge: MergeIter<'a>,
    last_user_key: Option<Bytes>,
    now_ms: u64,
    snapshot_seqno: u64,
    /// Names the engine's directory in corruption errors.
    dir: &'a std::path::Path,
}

impl<'a> LiveIter<'a> {
    /// Live entries of `merge` (a forward merge) at `now_ms`, as of `snapshot_seqno`.
    pub(crate) fn new(
        merge: MergeIter<'a>,
        now_ms: u64,
        snapshot_seqno: u64,
        dir: &'a std::path::Path,
    ) -> Self {
        LiveIter {
            merge,
            last_user_key: None,
            now_ms,
            snapshot_seqno,
            dir,
        }
    }
}

impl Iterator for LiveIter<'_> {
    type Item = Result<(Bytes, Value)>;

    fn next(&mut self) -> Option<Result<(Bytes, Value)>> {
        loop {
            let (key, data) = match self.merge.next()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            let uk = user_key(&key);
            if self.last_user_key.as_deref() == Some(uk) {
                continue; // an older version of a key already decided
            }
            let Some(decoded) = InternalKeyRef::decode(&key) else {
                return Some(Err(StorageError::Corrupt {
                    path: self.dir.to_path_buf(),
                    offset: 0,
                    reason: "malformed internal key".into(),
                }));
            };
            if decoded.seqno > self.snapshot_seqno {
                continue; // written after the snapshot
            }
            let kind = decoded.kind;
            let uk = key.slice(..uk.len());
            self.last_user_key = Some(uk.clone());
            if kind == ValueKind::Delete {
                continue;
            }
            match value::decode(&data, self.dir) {
                Ok(v) if v.is_expired(self.now_ms) => continue,
                Ok(v) => return Some(Ok((uk, v))),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// [`LiveIter`] for a backward merge: the live entries, largest user key first. The versions
/// of a user key arrive oldest first, so the newest visible one is known only when the user key
/// changes.
pub(crate) struct LiveRevIter<'a> {
    merge: MergeIter<'a>,
    /// The user key being collected and its newest visible version so far.
    pending: Option<(Bytes, ValueKind, Bytes)>,
    now_ms: u64,
    snapshot_seqno: u64,
    dir: &'a std::path::Path,
    done: bool,
}

impl<'a> LiveRevIter<'a> {
    /// Live entries of `merge` (a backward merge) at `now_ms`, as of `snapshot_seqno`.
    pub(crate) fn new(
        merge: MergeIter<'a>,
        now_ms: u64,
        snapshot_seqno: u64,
        dir: &'a std::path::Path,
    ) -> Self {
        LiveRevIter {
            merge,
            pending: None,
            now_ms,
            snapshot_seqno,
            dir,
            done: false,
        }
    }

    /// The entry for a finished user key, if live.
    fn emit(&self, (uk, kind, data): (Bytes, ValueKind, Bytes)) -> Option<Result<(Bytes, Value)>> {
        if kind == ValueKind::Delete {
            return None;
        }
        match value::decode(&data, self.dir) {
            Ok(v) if v.is_expired(self.now_ms) => None,
            Ok(v) => Some(Ok((uk, v))),
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for LiveRevIter<'_> {
    type Item = Result<(Bytes, Value)>;

    fn next(&mut self) -> Option<Result<(Bytes, Value)>> {
        loop {
            if self.done {
                let finished = self.pending.take()?;
                match self.emit(finished) {
                    Some(item) => return Some(item),
                    None => continue,
                }
            }
            let (key, data) = match self.merge.next() {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    self.done = true;
                    self.pending = None;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    continue;
                }
            };
            let Some(decoded) = InternalKeyRef::decode(&key) else {
                self.done = true;
                self.pending = None;
                return Some(Err(StorageError::Corrupt {
                    path: self.dir.to_path_buf(),
                    offset: 0,
                    reason: "malformed internal key".into(),
                }));
            };
            let same = self
                .pending
                .as_ref()
                .is_some_and(|(uk, _, _)| uk.as_ref() == decoded.user_key);
            let visible = decoded.seqno <= self.snapshot_seqno;
            if same {
                if visible {
                    if let Some(p) = self.pending.as_mut() {
                        p.1 = decoded.kind;
                        p.2 = data;
                    }
                }
                continue;
            }
            if !visible {
                // The oldest version of a new user key is not visible: neither are newer ones.
                // Finish the previous key first.
                if let Some(finished) = self.pending.take() {
                    if let Some(item) = self.emit(finished) {
                        return Some(item);
                    }
                }
                continue;
            }
            let uk = key.slice(..decoded.user_key.len());
            let kind = decoded.kind;
            let finished = self.pending.replace((uk, kind, data));
            if let Some(item) = finished.and_then(|f| self.emit(f)) {
                return Some(item);
            }
        }
    }
}
