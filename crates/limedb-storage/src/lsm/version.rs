//! [`Version`]: an immutable snapshot of which SSTables make up the tree, level by level, and
//! the counters that go with it (last sequence number, next file number, WAL log number).
//!
//! A version never changes. A flush or a compaction describes its result as a
//! [`VersionEdit`] (tables added and deleted, counters moved), and [`Version::apply`] checks the
//! edit against the invariants below and returns a *new* version; the
//! [`manifest`](crate::lsm::manifest) logs the edit durably before anyone sees that version.
//! Readers keep the version they started with (behind an `Arc`) for as long as they need its
//! tables.
//!
//! # Invariants
//!
//! ```text
//!   L0   [a ........ m] [c ... f] [b ........... z]     may overlap; newest first
//!   L1   [a .. c] [d ..... h] [k .. p] [q ... z]         sorted, disjoint user-key ranges
//!   L2   [a . b] [c .. e] [f . g] ... [x .. z]           ~10x the bytes of L1
//!   ...
//!   L6                                                   the bottom level
//! ```
//!
//! - There are [`NUM_LEVELS`] levels. **L0** holds flushed memtables: its tables may overlap
//!   and are kept newest first (by largest sequence number, then by file number), so a point
//!   read takes the first hit.
//! - In **L1 and deeper** tables are sorted by smallest key and their *user-key* ranges are
//!   disjoint: a table's largest user key is strictly below the next table's smallest user key.
//!   All versions of one user key therefore sit in one table per level, so a compaction that
//!   writes a level must not split a user key across two output tables.
//! - A file number appears at most once in the whole version, and is below
//!   [`Version::next_file_number`]. Every table's sequence numbers are at most
//!   [`Version::last_seqno`]. The counters never go backwards.
//!
//! An edit that would break one of these is refused with [`InvalidEdit`] and changes nothing.
//!
//! # Example
//!
//! ```
//! use limedb_storage::lsm::key::{encode, ValueKind};
//! use limedb_storage::lsm::manifest::VersionEdit;
//! use limedb_storage::lsm::version::{TableHandle, Version};
//!
//! let table = |number: u64, lo: &[u8], hi: &[u8]| TableHandle {
//!     file_number: number,
//!     file_size_bytes: 4096,
//!     smallest_key: encode(lo, 7, ValueKind::Put).into(),
//!     largest_key: encode(hi, 3, ValueKind::Put).into(),
//!     min_seqno: 3,
//!     max_seqno: 7,
//!     entry_count: 10,
//! };
//! let mut edit = VersionEdit::default();
//! edit.set_last_seqno(7).set_next_file_number(3);
//! edit.add_table(1, table(1, b"a", b"f")).add_table(1, table(2, b"g", b"m"));
//! let version = Version::new().apply(&edit)?;
//! assert_eq!(version.level_size_bytes(1), 8192);
//! let hits: Vec<u64> = version.tables_for_user_key(1, b"h").map(|t| t.file_number).collect();
//! assert_eq!(hits, [2]);
//!
//! // [e, h] overlaps both tables of L1: refused.
//! let mut bad = VersionEdit::default();
//! bad.set_next_file_number(4).add_table(1, table(3, b"e", b"h"));
//! assert!(version.apply(&bad).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::lsm::key::{compare_encoded, user_key, InternalKeyRef};
use crate::lsm::manifest::VersionEdit;
use crate::lsm::sstable::TableMeta;

/// Number of levels, L0 ..= L6.
pub const NUM_LEVELS: usize = 7;

/// What a version knows about one SSTable: enough to route reads and pick compactions without
/// opening the file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableHandle {
    /// The table's file number (the engine names the file after it).
    pub file_number: u64,
    /// Size of the file in bytes.
    pub file_size_bytes: u64,
    /// The smallest internal key in the table.
    pub smallest_key: Bytes,
    /// The largest internal key in the table.
    pub largest_key: Bytes,
    /// Smallest sequence number of any entry.
    pub min_seqno: u64,
    /// Largest sequence number of any entry.
    pub max_seqno: u64,
    /// Number of entries (puts and tombstones).
    pub entry_count: u64,
}

impl TableHandle {
    /// The handle of a finished table (from [`crate::lsm::sstable::TableWriter::finish`] or
    /// [`crate::lsm::sstable::Table::meta`]) numbered `file_number`.
    pub fn from_meta(file_number: u64, meta: &TableMeta) -> TableHandle {
        TableHandle {
            file_number,
            file_size_bytes: meta.file_size_bytes,
            smallest_key: meta.smallest_key.clone(),
            largest_key: meta.largest_key.clone(),
            min_seqno: meta.min_seqno,
            max_seqno: meta.max_seqno,
            entry_count: meta.entry_count,
        }
    }

    /// The user key of [`TableHandle::smallest_key`].
    pub fn smallest_user_key(&self) -> &[u8] {
        user_key(&self.smallest_key)
    }

    /// The user key of [`TableHandle::largest_key`].
    pub fn largest_user_key(&self) -> &[u8] {
        user_key(&self.largest_key)
    }

    /// Whether the table may hold `key`: its user-key range contains it.
    pub fn contains_user_key(&self, key: &[u8]) -> bool {
        self.smallest_user_key() <= key && key <= self.largest_user_key()
    }

    /// Whether the table's user-key range intersects `[smallest, largest]` (inclusive).
    pub fn overlaps(&self, smallest: &[u8], largest: &[u8]) -> bool {
        self.smallest_user_key() <= largest && smallest <= self.largest_user_key()
    }

    /// Why the handle cannot describe a real table, if it cannot.
    fn check(&self) -> Result<(), String> {
        let n = self.file_number;
        if InternalKeyRef::decode(&self.smallest_key).is_none()
            || InternalKeyRef::decode(&self.largest_key).is_none()
        {
            return Err(format!("table {n} has a malformed boundary key"));
        }
        if compare_encoded(&self.smallest_key, &self.largest_key) == Ordering::Greater {
            return Err(format!("table {n} has its smallest key above its largest"));
        }
        if self.min_seqno > self.max_seqno {
            return Err(format!(
                "table {n} has min seqno {} above max seqno {}",
                self.min_seqno, self.max_seqno
            ));
        }
        Ok(())
    }
}

/// An edit that [`Version::apply`] refused, and why. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid version edit: {reason}")]
pub struct InvalidEdit {
    /// What is wrong with the edit.
    pub reason: String,
}

/// An immutable snapshot of the tree (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    levels: [Vec<Arc<TableHandle>>; NUM_LEVELS],
    last_seqno: u64,
    next_file_number: u64,
    log_number: u64,
    compact_cursors: [Option<Bytes>; NUM_LEVELS],
}

impl Default for Version {
    fn default() -> Self {
        Version::new()
    }
}

impl Version {
    /// The version of an empty tree: no tables, last seqno 0, next file number 1, log number 0.
    pub fn new() -> Version {
        Version {
            levels: Default::default(),
            last_seqno: 0,
            next_file_number: 1,
            log_number: 0,
            compact_cursors: Default::default(),
        }
    }

    /// Applies `edit` and returns the resulting version; `self` is unchanged.
    ///
    /// Deletions are applied before additions, so deleting a table from one level and adding
    /// it to another moves it. Fails, changing nothing, if the edit names a level
    /// `>= NUM_LEVELS`, deletes a table that is not in the level it names, adds a file number
    /// already present, adds a table whose user-key range overlaps another in L1+, adds a
    /// malformed table, a file number `>=` the resulting next file number or a table with a
    /// seqno above the resulting last seqno, or moves a counter backwards.
    pub fn apply(&self, edit: &VersionEdit) -> Result<Version, InvalidEdit> {
        let invalid = |reason: String| InvalidEdit { reason };
        let mut next = self.clone();
        if let Some(seqno) = edit.last_seqno {
            if seqno < self.last_seqno {
                return Err(invalid(format!(
                    "last seqno would go back from {} to {seqno}",
                    self.last_seqno
                )));
            }
            next.last_seqno = seqno;
        }
        if let Some(number) = edit.next_file_number {
            if number < self.next_file_number {
                return Err(invalid(format!(
                    "next file number would go back from {} to {number}",
                    self.next_file_number
                )));
            }
            next.next_file_number = number;
        }
        if let Some(number) = edit.log_number {
            if number < self.log_number {
                return Err(invalid(format!(
                    "log number would go back from {} to {number}",
                    self.log_number
                )));
            }
            next.log_number = number;
        }

        let mut touched = [false; NUM_LEVELS];
        for deleted in &edit.deleted_tables {
            let level = next
                .levels
                .get_mut(deleted.level)
                .ok_or_else(|| invalid(format!("level {} does not exist", deleted.level)))?;
            let at = level
                .iter()
                .position(|t| t.file_number == deleted.file_number)
                .ok_or_else(|| {
                    invalid(format!(
                        "cannot delete table {} from L{}: it is not there",
                        deleted.file_number, deleted.level
                    ))
                })?;
            level.remove(at);
        }

        let mut numbers: HashSet<u64> = next.live_file_numbers().collect();
        for added in &edit.new_tables {
            let table = &added.table;
            table.check().map_err(invalid)?;
            if !numbers.insert(table.file_number) {
                return Err(invalid(format!(
                    "table {} is added but its file number is already in use",
                    table.file_number
                )));
            }
            if table.file_number >= next.next_file_number {
                return Err(invalid(format!(
                    "table {} is added but the next file number is {}",
                    table.file_number, next.next_file_number
                )));
            }
            if table.max_seqno > next.last_seqno {
                return Err(invalid(format!(
                    "table {} holds seqno {} but the last seqno is {}",
                    table.file_number, table.max_seqno, next.last_seqno
                )));
            }
            let level = next
                .levels
                .get_mut(added.level)
                .ok_or_else(|| invalid(format!("level {} does not exist", added.level)))?;
            level.push(Arc::new(table.clone()));
            if let Some(t) = touched.get_mut(added.level) {
                *t = true;
            }
        }

        for (level, tables) in next.levels.iter_mut().enumerate() {
            if !touched.get(level).copied().unwrap_or(false) {
                continue;
            }
            if level == 0 {
                tables.sort_by(|a, b| {
                    b.max_seqno
                        .cmp(&a.max_seqno)
                        .then(b.file_number.cmp(&a.file_number))
                });
                continue;
            }
            tables.sort_by(|a, b| compare_encoded(&a.smallest_key, &b.smallest_key));
            for pair in tables.windows(2) {
                if let [a, b] = pair {
                    if a.largest_user_key() >= b.smallest_user_key() {
                        return Err(invalid(format!(
                            "tables {} and {} overlap in L{level}",
                            a.file_number, b.file_number
                        )));
                    }
                }
            }
        }

        for (level, key) in &edit.compact_cursors {
            let cursor = next
                .compact_cursors
                .get_mut(*level)
                .ok_or_else(|| invalid(format!("level {level} does not exist")))?;
            *cursor = Some(key.clone());
        }
        Ok(next)
    }

    /// The edit that rebuilds this version from [`Version::new`]: every table, counter and
    /// compaction cursor. The manifest writes it as the first record of a new manifest file.
    pub fn snapshot_edit(&self) -> VersionEdit {
        let mut edit = VersionEdit::default();
        edit.set_last_seqno(self.last_seqno)
            .set_next_file_number(self.next_file_number)
            .set_log_number(self.log_number);
        for (level, tables) in self.levels.iter().enumerate() {
            for table in tables {
                edit.add_table(level, TableHandle::clone(table));
            }
        }
        for (level, cursor) in self.compact_cursors.iter().enumerate() {
            if let Some(key) = cursor {
                edit.set_compact_cursor(level, key.clone());
            }
        }
        edit
    }

    /// The tables of `level` (empty for a level `>= NUM_LEVELS`): L0 newest first, deeper
    /// levels by key.
    pub fn level(&self, level: usize) -> &[Arc<TableHandle>] {
        self.levels.get(level).map_or(&[], Vec::as_slice)
    }

    /// Number of tables in `level`.
    pub fn table_count(&self, level: usize) -> usize {
        self.level(level).len()
    }

    /// Total file size of the tables in `level`, in bytes.
    pub fn level_size_bytes(&self, level: usize) -> u64 {
        self.level(level).iter().map(|t| t.file_size_bytes).sum()
    }

    /// [`Version::level_size_bytes`] of every level.
    pub fn level_sizes_bytes(&self) -> [u64; NUM_LEVELS] {
        std::array::from_fn(|level| self.level_size_bytes(level))
    }

    /// The tables of `level` that may hold `user_key`, in the order a read must consult them:
    /// for L0 every table whose range contains the key, newest first; for deeper levels at
    /// most one (found by binary search).
    pub fn tables_for_user_key<'a>(&'a self, level: usize, key: &'a [u8]) -> TablesForKey<'a> {
        let tables = self.level(level);
        let candidates = if level == 0 {
            tables
        } else {
            let at = tables.partition_point(|t| t.largest_user_key() < key);
            tables.get(at..=at).unwrap_or_default()
        };
        TablesForKey {
            tables: candidates.iter(),
            key,
        }
    }

    /// The tables of `level` whose user-key range intersects `[smallest, largest]`
    /// (inclusive), in level order.
    pub fn overlapping(
        &self,
        level: usize,
        smallest: &[u8],
        largest: &[u8],
    ) -> Vec<Arc<TableHandle>> {
        let tables = self.level(level);
        if level == 0 {
            return tables
                .iter()
                .filter(|t| t.overlaps(smallest, largest))
                .cloned()
                .collect();
        }
        let start = tables.partition_point(|t| t.largest_user_key() < smallest);
        tables
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|t| t.smallest_user_key() <= largest)
            .cloned()
            .collect()
    }

    /// The level and handle of table `file_number`, if it is in this version.
    pub fn find_table(&self, file_number: u64) -> Option<(usize, &Arc<TableHandle>)> {
        self.levels.iter().enumerate().find_map(|(level, tables)| {
            tables
                .iter()
                .find(|t| t.file_number == file_number)
                .map(|t| (level, t))
        })
    }

    /// The file numbers of every table in this version (a table file not among them, and not
    /// being written, is garbage).
    pub fn live_file_numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.levels.iter().flatten().map(|t| t.file_number)
    }

    /// Largest sequence number known to be in the tree or the logged WAL.
    pub fn last_seqno(&self) -> u64 {
        self.last_seqno
    }

    /// The smallest file number not yet handed out.
    pub fn next_file_number(&self) -> u64 {
        self.next_file_number
    }

    /// WAL segments whose records all lie below this number are covered by tables and
    /// obsolete (the engine decides what the number counts; with segments named after their
    /// first seqno it is the first seqno not yet in a table).
    pub fn log_number(&self) -> u64 {
        self.log_number
    }

    /// The user key where the last compaction out of `level` ended: the next one starts after
    /// it (see [`crate::lsm::compaction`]).
    pub fn compact_cursor(&self, level: usize) -> Option<&[u8]> {
        self.compact_cursors.get(level)?.as_deref()
    }
}

/// Iterator returned by [`Version::tables_for_user_key`].
#[derive(Clone, Debug)]
pub struct TablesForKey<'a> {
    tables: std::slice::Iter<'a, Arc<TableHandle>>,
    key: &'a [u8],
}

impl<'a> Iterator for TablesForKey<'a> {
    type Item = &'a Arc<TableHandle>;

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.key;
        self.tables.by_ref().find(|t| t.contains_user_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::key::{encode, ValueKind};

    /// A table numbered `n` over user keys `[lo, hi]` with seqnos `seqnos`.
    pub(crate) fn table(n: u64, lo: &str, hi: &str, size: u64, seqnos: (u64, u64)) -> TableHandle {
        TableHandle {
            file_number: n,
            file_size_bytes: size,
            smallest_key: encode(lo.as_bytes(), seqnos.1, ValueKind::Put).into(),
            largest_key: encode(hi.as_bytes(), seqnos.0, ValueKind::Delete).into(),
            min_seqno: seqnos.0,
            max_seqno: seqnos.1,
            entry_count: 1,
        }
    }

    fn base() -> Version {
        let mut edit = VersionEdit::default();
        edit.set_last_seqno(100).set_next_file_number(10);
        edit.add_table(0, table(1, "a", "m", 10, (1, 10)))
            .add_table(0, table(2, "c", "z", 20, (11, 20)))
            .add_table(1, table(3, "k", "p", 30, (1, 5)))
            .add_table(1, table(4, "a", "f", 40, (1, 5)))
            .add_table(2, table(5, "a", "z", 50, (1, 1)));
        Version::new().apply(&edit).expect("valid")
    }

    fn numbers(tables: &[Arc<TableHandle>]) -> Vec<u64> {
        tables.iter().map(|t| t.file_number).collect()
    }

    #[test]
    fn apply_orders_levels_and_keeps_the_old_version() {
        let v = base();
        assert_eq!(numbers(v.level(0)), [2, 1], "L0 newest first");
        assert_eq!(numbers(v.level(1)), [4, 3], "L1 by key");
        assert_eq!(v.level_sizes_bytes(), [30, 70, 50, 0, 0, 0, 0]);
        assert_eq!((v.last_seqno(), v.next_file_number()), (100, 10));
        assert_eq!(v.level(NUM_LEVELS), &[] as &[Arc<TableHandle>]);

        let mut edit = VersionEdit::default();
        edit.delete_table(0, 1).set_log_number(7);
        let w = v.apply(&edit).expect("valid");
        assert_eq!(numbers(w.level(0)), [2]);
        assert_eq!(w.log_number(), 7);
        assert_eq!(numbers(v.level(0)), [2, 1], "old version unchanged");
        assert_eq!(w.find_table(3).map(|(l, _)| l), Some(1));
        assert_eq!(w.find_table(1), None);
        let mut live: Vec<u64> = w.live_file_numbers().collect();
        live.sort_unstable();
        assert_eq!(live, [2, 3, 4, 5]);
    }

    #[test]
    fn overlapping_tables_in_deeper_levels_are_rejected() {
        let v = base();
        for (lo, hi) in [("f", "g"), ("e", "l"), ("p", "q"), ("a", "z"), ("k", "k")] {
            let mut edit = VersionEdit::default();
            edit.add_table(1, table(6, lo, hi, 1, (1, 1)));
            let err = v.apply(&edit).expect_err("overlap");
            assert!(err.reason.contains("overlap in L1"), "{lo}-{hi}: {err}");
        }
        // Adjacent but disjoint is fine; so is any overlap in L0.
        let mut edit = VersionEdit::default();
        edit.add_table(1, table(6, "g", "j", 1, (1, 1)))
            .add_table(1, table(7, "q", "q", 1, (1, 1)))
            .add_table(0, table(8, "a", "z", 1, (50, 60)));
        let w = v.apply(&edit).expect("valid");
        assert_eq!(numbers(w.level(1)), [4, 6, 3, 7]);
        assert_eq!(numbers(w.level(0)), [8, 2, 1]);
        // Two added tables overlapping each other.
        let mut edit = VersionEdit::default();
        edit.add_table(3, table(6, "a", "c", 1, (1, 1)))
            .add_table(3, table(7, "c", "d", 1, (1, 1)));
        assert!(v.apply(&edit).is_err());
    }

    #[test]
    fn invalid_deletes_numbers_and_counters_are_rejected() {
        let v = base();
        let check = |edit: &VersionEdit, needle: &str| {
            let err = v.apply(edit).expect_err(needle);
            assert!(err.reason.contains(needle), "{err}");
        };
        let mut e = VersionEdit::default();
        e.delete_table(1, 1);
        check(&e, "not there"); // table 1 is in L0, not L1
        let mut e = VersionEdit::default();
        e.delete_table(0, 99);
        check(&e, "not there");
        let mut e = VersionEdit::default();
        e.delete_table(NUM_LEVELS, 1);
        check(&e, "does not exist");
        let mut e = VersionEdit::default();
        e.add_table(4, table(5, "a", "b", 1, (1, 1)));
        check(&e, "already in use");
        let mut e = VersionEdit::default();
        e.add_table(4, table(10, "a", "b", 1, (1, 1)));
        check(&e, "next file number is 10");
        let mut e = VersionEdit::default();
        e.add_table(4, table(9, "a", "b", 1, (1, 101)));
        check(&e, "last seqno is 100");
        let mut e = VersionEdit::default();
        e.add_table(4, table(9, "b", "a", 1, (1, 1)));
        check(&e, "smallest key above its largest");
        let mut e = VersionEdit::default();
        e.set_last_seqno(99);
        check(&e, "last seqno would go back");
        let mut e = VersionEdit::default();
        e.set_next_file_number(9);
        check(&e, "next file number would go back");
        // A failed edit changes nothing, even when part of it was fine.
        let mut e = VersionEdit::default();
        e.delete_table(0, 1).delete_table(0, 1);
        check(&e, "not there");
        assert_eq!(numbers(v.level(0)), [2, 1]);
    }

    #[test]
    fn moving_a_table_between_levels_in_one_edit() {
        let v = base();
        let moved = TableHandle::clone(&v.level(1)[1]);
        let mut e = VersionEdit::default();
        e.delete_table(1, 3).add_table(2, moved);
        // Table 5 covers a..z in L2: the move overlaps it.
        assert!(v.apply(&e).is_err());
        e.delete_table(2, 5);
        let w = v.apply(&e).expect("valid");
        assert_eq!(numbers(w.level(2)), [3]);
        assert_eq!(numbers(w.level(1)), [4]);
    }

    #[test]
    fn lookups() {
        let v = base();
        let hits = |level, key: &str| -> Vec<u64> {
            v.tables_for_user_key(level, key.as_bytes())
                .map(|t| t.file_number)
                .collect()
        };
        assert_eq!(hits(0, "d"), [2, 1]);
        assert_eq!(hits(0, "b"), [1]);
        assert_eq!(hits(0, "zz"), Vec::<u64>::new());
        assert_eq!(hits(1, "a"), [4]);
        assert_eq!(hits(1, "f"), [4]);
        assert_eq!(hits(1, "g"), Vec::<u64>::new());
        assert_eq!(hits(1, "p"), [3]);
        assert_eq!(hits(1, "q"), Vec::<u64>::new());
        assert_eq!(hits(5, "a"), Vec::<u64>::new());

        let over = |level, lo: &str, hi: &str| {
            numbers(&v.overlapping(level, lo.as_bytes(), hi.as_bytes()))
        };
        assert_eq!(over(1, "f", "k"), [4, 3]);
        assert_eq!(over(1, "g", "j"), Vec::<u64>::new());
        assert_eq!(over(1, "p", "z"), [3]);
        assert_eq!(over(1, "", "a"), [4]);
        assert_eq!(over(0, "n", "n"), [2]);
        assert_eq!(over(0, "0", "b"), [1]);
    }

    #[test]
    fn snapshot_edit_rebuilds_the_version() {
        let mut e = VersionEdit::default();
        e.set_compact_cursor(1, Bytes::from_static(b"f"))
            .set_log_number(3);
        let v = base().apply(&e).expect("valid");
        let rebuilt = Version::new().apply(&v.snapshot_edit()).expect("valid");
        assert_eq!(rebuilt, v);
        assert_eq!(rebuilt.compact_cursor(1), Some(&b"f"[..]));
        assert_eq!(rebuilt.compact_cursor(2), None);
    }
}
