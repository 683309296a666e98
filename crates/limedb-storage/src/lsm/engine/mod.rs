//! [`LsmEngine`]: the LSM-tree engine assembled from the building blocks of [`crate::lsm`],
//! implementing [`crate::Engine`]. Shards use it with `limedb shard --storage lsm`.
//!
//! # Directory layout
//!
//! ```text
//!   <dir>/CURRENT, <dir>/MANIFEST-<n>    the manifest (crate::lsm::manifest)
//!   <dir>/wal/wal-<first seqno>.log      WAL segments (crate::lsm::wal)
//!   <dir>/tables/<file number>.sst       SSTables (crate::lsm::sstable)
//! ```
//!
//! # What runs where
//!
//! ```text
//!  writer threads                                  background thread "limedb-lsm-bg"
//!  ──────────────                                  ─────────────────────────────────
//!  write_many ─ lock writer ─┐                     loop, woken by a Condvar:
//!   │ active over budget?    │                      1. oldest immutable memtable?
//!   │   stall while 1 imm    │                         → TableWriter tables/<n>.sst
//!   │   freeze, wal.rotate ──┼──► imms (oldest..)     → manifest: add to L0, last seqno,
//!   │ answers: read at latest│                           log number → new SuperVersion
//!   │ wal.append (mmap copy) ┘                        → wal.delete_obsolete
//!   │ insert into active memtable                   2. else Leveled::pick(version)?
//!   └ unlock; Always: wal.sync_to (group commit)       → trivial move, or merge + cut
//!                                                        outputs → manifest → delete inputs
//!  readers: clone Arc<SuperVersion> (short lock)   3. else idle; Interval: wal.sync() each
//!   get: active → imms newest first → the memtable    period
//!        the last flush kept, if any → L0 newest first
//!        → L1.. (one table per level)
//!   scan/page/len: MergeIter over all of them → LiveIter (newest version per user key)
//! ```
//!
//! A `SuperVersion` is an immutable snapshot of everything a read needs: the active memtable,
//! the frozen ones, the memtable the last flush kept for point reads (if any), the
//! [`Version`] and the open [`Table`]s. Freezing, flushing and compacting
//! each install a new one under a short lock; readers never wait for I/O of another thread.
//! Files of tables removed by a compaction are deleted at once (by the holder of the
//! compaction lock, which a checkpoint also takes while it links files); readers still holding
//! the old super version keep reading them through their open handle or mapping (POSIX unlink
//! semantics; tested by `iterator_outlives_compaction_of_its_tables`).
//!
//! # Values and expiry
//!
//! A put is stored as `flags u8 | [expires_at_ms u64] | data` (see `value.rs`); a delete as a
//! tombstone. As in the memory engine a put whose expiry has already passed is written as a
//! delete, and a delete of a key that is not live writes nothing. An expired value reads as
//! absent. Flushes and merge compactions drop the versions no live snapshot can see (see
//! [`LsmEngine#snapshots`]); a compaction turns an expired value into a tombstone, and drops a
//! tombstone every snapshot sees when it writes the bottom of the tree for that key range.
//!
//! # Reads, snapshots and batches
//!
//! Readers read at a published *visible seqno*, so a [`LsmEngine::write_batch`] is seen whole
//! or not at all; [`LsmEngine::snapshot`] pins a seqno for [`LsmEngine::get_at`] and
//! [`LsmEngine::range`]; [`RangeIter`] runs forward and backward over one point in time. See
//! [`LsmEngine#consistency`] and [`LsmEngine#snapshots`]. [`LsmEngine::compact_range`],
//! [`LsmEngine::stats_detailed`] and [`LsmEngine::checkpoint`] complete the API.
//!
//! # Limits
//!
//! - **Memory**: one active memtable of `memtable_bytes` (checked before each write, so it may
//!   pass the budget by one batch) plus at most `max_immutable_memtables` frozen ones waiting
//!   for the flush thread; a writer that would freeze a further one **stalls** until a flush
//!   finishes. A flushed memtable kept for point reads
//!   ([`LsmOptions::retain_flushed_memtable`]) borrows its bytes from the block cache's
//!   budget.
//! - **L0 back-pressure**: flushes add tables to L0 faster than compaction may drain it. From
//!   `l0_slowdown_tables` (default 8) L0 tables, every write batch first pauses
//!   `write_slowdown_delay` (1 ms) under the writer lock, which caps the batch rate while
//!   group commit keeps batches large; from `l0_stop_tables` (12) writers **stall** until
//!   compaction brings L0 below it. L0 therefore stays within `l0_stop_tables` plus the frozen
//!   memtables already queued. Both are counted (`write_slowdowns`, `write_stalls` in
//!   [`LsmCounters`] and the shard's /metrics). `try_write_now` never writes inline while
//!   either applies.
//! - **Writes are serialised** by one writer lock (WAL append + memtable insert); the fsync of
//!   [`SyncPolicy::Always`] happens after the lock is released, so concurrent writers share one.
//!   Before it takes the lock, a writer of several ops plans their memtable searches
//!   ([`Memtable::plan_inserts`], a reader: the cache misses of all its keys overlap, beside
//!   other writers), so the insert under the lock starts from where each search ended.
//! - **`len`, `page` and `stats`**: `len` and `page` merge the whole tree (O(n)); `stats().keys`
//!   and `live_bytes` are cheap estimates from table and memtable counters (they count every
//!   stored version and tombstone, so they overestimate).
//! - A compaction or flush failure poisons the engine (writes fail with
//!   [`StorageError::Poisoned`]; reads go on); reopening retries it. Half-written table files
//!   are removed on the next open.
//! - One process per directory: nothing locks the directory yet.
//! - Compaction runs on the same single background thread as flushes, so a long compaction
//!   delays flushes (and may stall writers).

mod iter;
mod range;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_api;
#[cfg(test)]
mod tests_inline;
mod value;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::iter::{
    memtable_range_source, memtable_source, tables_source, tables_source_rev, LiveIter, MergeIter,
    Source,
};
pub use self::range::RangeIter;
use crate::engine::{Engine, EngineStats, LevelFigures, Page, Value, WriteOp};
use crate::error::StorageError;
use crate::fsutil::fsync_dir;
use crate::lifecycle::Lifecycle;
use crate::lsm::cache::{BlockCache, CacheStats};
use crate::lsm::compaction::{leveled, Action, Choice, LeveledOptions};
use crate::lsm::key::{user_key, InternalKeyRef, ValueKind, MAX_SEQNO};
use crate::lsm::manifest::{Manifest, ManifestOptions, VersionEdit, CURRENT_FILE_NAME};
use crate::lsm::memtable::Memtable;
use crate::lsm::skiplist::InsertPlan;
use crate::lsm::sstable::{ReadMode, Table, TableOptions, TableWriter};
use crate::lsm::version::{TableHandle, Version, NUM_LEVELS};
use crate::lsm::wal::{segment_file_name, Wal, WalOptions, WriteBatch};
use crate::sync::SyncPolicy;
use crate::{now_ms, Result, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Tuning for [`LsmEngine`].
#[derive(Clone, Debug, PartialEq)]
pub struct LsmOptions {
    /// When the WAL is fsynced.
    pub sync: SyncPolicy,
    /// The active memtable is frozen and flushed once it holds this many bytes (estimated by
    /// [`Memtable::approximate_bytes`]). Default 64 MiB.
    pub memtable_bytes: u64,
    /// Frozen memtables allowed to wait for the flush thread before writers stall. Default 1.
    pub max_immutable_memtables: usize,
    /// Budget of the block cache of decompressed data blocks (and of a memtable kept after its
    /// flush, see `retain_flushed_memtable`). Default 128 MiB.
    pub block_cache_bytes: usize,
    /// Whether a table written by a flush is read into the block cache before it serves
    /// reads, up to half of what a kept memtable leaves of the cache, if point reads were
    /// served since the previous flush: the
    /// keys just flushed are the ones most recently written, the likeliest to be read next,
    /// and an uncached block makes a point read leave the async path for the blocking pool
    /// (see `Engine::try_get_many_now`). A write-only load (a bulk load) warms nothing, so its
    /// memory stays that of its memtables. A block that fails to read back fails the flush,
    /// which keeps the WAL segments the table was written from. Default true.
    pub warm_cache_on_flush: bool,
    /// Whether the memtable a flush has just written is kept, after the flush, for point reads
    /// until the next flush replaces it: its hash index answers a read of a recently written
    /// key in about a quarter of the time of a cached table block (`examples/point_reads.rs`:
    /// 184–207 against 769–1023 ns). Only when point reads were served since the previous
    /// flush, and only if `memtable_bytes` is at most half of `block_cache_bytes` and the
    /// memtable (which may pass `memtable_bytes` by one write batch) at most three quarters
    /// of it: while it is kept its bytes are lent from the block cache's budget
    /// (`CacheStats::reserved_bytes`), so memory stays within the memtable and cache budgets.
    /// Scans read the tables, not it. Default true.
    pub retain_flushed_memtable: bool,
    /// Layout of the SSTables written.
    pub table: TableOptions,
    /// Leveled compaction thresholds.
    pub leveled: LeveledOptions,
    /// How tables are read: mmap (default) or pread.
    pub read_mode: ReadMode,
    /// With this many tables in L0, each write batch first pauses for
    /// `write_slowdown_delay`, so that compaction catches up. Default 8.
    pub l0_slowdown_tables: usize,
    /// With this many tables in L0, writes wait until compaction brings L0 below it. Default
    /// 12. Both L0 limits are raised, if needed, above `leveled.l0_compaction_trigger`, so that
    /// a stalled writer always waits for a compaction that will run.
    pub l0_stop_tables: usize,
    /// The pause of a slowed-down write batch. Default 1 ms.
    pub write_slowdown_delay: Duration,
}

impl Default for LsmOptions {
    fn default() -> Self {
        LsmOptions {
            sync: SyncPolicy::default(),
            memtable_bytes: 64 << 20,
            max_immutable_memtables: 1,
            block_cache_bytes: 128 << 20,
            warm_cache_on_flush: true,
            retain_flushed_memtable: true,
            table: TableOptions::default(),
            leveled: LeveledOptions::default(),
            read_mode: ReadMode::default(),
            l0_slowdown_tables: 8,
            l0_stop_tables: 12,
            write_slowdown_delay: Duration::from_millis(1),
        }
    }
}

impl LsmOptions {
    /// The options with the L0 limits raised where needed so that
    /// `l0_compaction_trigger <= l0_slowdown_tables < l0_stop_tables`.
    fn with_consistent_l0_limits(mut self) -> Self {
        let trigger = self.leveled.l0_compaction_trigger.max(1);
        self.l0_slowdown_tables = self.l0_slowdown_tables.max(trigger);
        self.l0_stop_tables = self.l0_stop_tables.max(self.l0_slowdown_tables + 1);
        self
    }
}

/// Everything a read needs, as one immutable snapshot (see the [module docs](self)).
#[derive(Debug)]
struct SuperVersion {
    /// The memtable writers insert into.
    active: Arc<Memtable>,
    /// Frozen memtables waiting to be flushed, oldest first.
    imms: Vec<Arc<Memtable>>,
    /// The memtable the newest flush wrote, kept for point reads (see
    /// [`LsmOptions::retain_flushed_memtable`]). It is newer than every table (each flush
    /// replaces or drops it) and older than `active` and `imms`, and it holds every version
    /// it was flushed with, so a point read may ask it after them and before the tables.
    retained: Option<Arc<Memtable>>,
    version: Arc<Version>,
    /// Every table of `version`, open, by file number.
    tables: HashMap<u64, Table>,
}

/// What a point lookup found: the newest visible version's kind and stored bytes.
type Found = (ValueKind, Bytes);

impl SuperVersion {
    fn table(&self, file_number: u64) -> Result<&Table> {
        self.tables.get(&file_number).ok_or_else(|| {
            engine_bug(&format!(
                "table {} is in the version but not open",
                table_file_name(file_number)
            ))
        })
    }

    /// Sources over every memtable and table, newest first, from user key `start`.
    fn sources(&self, start: Option<&[u8]>) -> Result<Vec<Source<'_>>> {
        let mut sources = vec![memtable_source(&self.active, start)];
        for m in self.imms.iter().rev() {
            sources.push(memtable_source(m, start));
        }
        for t in self.version.level(0) {
            sources.push(tables_source(
                vec![self.table(t.file_number)?.clone()],
                start,
            ));
        }
        for level in 1..NUM_LEVELS {
            let handles = self.version.level(level);
            let from = start.map_or(0, |s| handles.partition_point(|t| t.largest_user_key() < s));
            let tables = handles
                .get(from..)
                .unwrap_or_default()
                .iter()
                .map(|t| self.table(t.file_number).cloned())
                .collect::<Result<Vec<_>>>()?;
            if !tables.is_empty() {
                sources.push(tables_source(tables, start));
            }
        }
        Ok(sources)
    }

    /// Sources over every memtable and table, newest first, limited to user keys within
    /// `(lower, upper)` (tables only by the bound in the direction of travel: the caller
    /// filters the other), running backward if `reverse`.
    fn range_sources(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        reverse: bool,
    ) -> Result<Vec<Source<'_>>> {
        let lo = match lower {
            Bound::Included(k) | Bound::Excluded(k) => Some(k),
            Bound::Unbounded => None,
        };
        let hi = match upper {
            Bound::Included(k) | Bound::Excluded(k) => Some(k),
            Bound::Unbounded => None,
        };
        let wanted = |t: &TableHandle| {
            lo.is_none_or(|lo| t.largest_user_key() >= lo)
                && hi.is_none_or(|hi| t.smallest_user_key() <= hi)
        };
        let tables = |tables: Vec<Table>| {
            if reverse {
                tables_source_rev(tables, upper)
            } else {
                tables_source(tables, lo)
            }
        };
        let mut sources = vec![memtable_range_source(&self.active, lower, upper, reverse)];
        for m in self.imms.iter().rev() {
            sources.push(memtable_range_source(m, lower, upper, reverse));
        }
        for t in self.version.level(0) {
            if wanted(t) {
                sources.push(tables(vec![self.table(t.file_number)?.clone()]));
            }
        }
        for level in 1..NUM_LEVELS {
            let in_range = self
                .version
                .level(level)
                .iter()
                .filter(|t| wanted(t))
                .map(|t| self.table(t.file_number).cloned())
                .collect::<Result<Vec<_>>>()?;
            if !in_range.is_empty() {
                sources.push(tables(in_range));
            }
        }
        Ok(sources)
    }

    /// The newest version of `key` with a sequence number `<= seqno`: `Some((kind, value))`,
    /// or `None` if nothing holds one.
    fn get_at(&self, key: &[u8], seqno: u64) -> Result<Option<Found>> {
        self.lookup(key, seqno, Reach::Disk)
            .unwrap_or_else(|| Err(engine_bug("a read allowed to use the disk gave up")))
    }

    /// As [`SuperVersion::get_at`]; with [`Reach::Memory`], `None` when the answer needs a
    /// block that is not in the block cache.
    fn lookup(&self, key: &[u8], seqno: u64, reach: Reach) -> Option<Result<Option<Found>>> {
        if let Some(hit) = self.active.get(key, seqno) {
            return Some(Ok(Some(hit)));
        }
        for m in self.imms.iter().rev().chain(&self.retained) {
            if let Some(hit) = m.get(key, seqno) {
                return Some(Ok(Some(hit)));
            }
        }
        self.lookup_tables(key, seqno, reach)
    }

    /// [`SuperVersion::lookup`] with [`Reach::Memory`] for each of `keys`, in order: each
    /// memtable is asked for all the keys still unanswered at once
    /// ([`Memtable::get_many`], whose lookups overlap their cache misses).
    fn lookup_many_in_memory(
        &self,
        keys: &[&[u8]],
        seqno: u64,
    ) -> Vec<Option<Result<Option<Found>>>> {
        let mut found = self.active.get_many(keys, seqno);
        for m in self.imms.iter().rev().chain(&self.retained) {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            let asked: Vec<&[u8]> = missing.iter().map(|&i| keys[i]).collect();
            for (i, hit) in missing.into_iter().zip(m.get_many(&asked, seqno)) {
                found[i] = hit;
            }
        }
        found
            .into_iter()
            .zip(keys)
            .map(|(hit, key)| match hit {
                Some(hit) => Some(Ok(Some(hit))),
                None => self.lookup_tables(key, seqno, Reach::Memory),
            })
            .collect()
    }

    /// The tables' part of [`SuperVersion::lookup`], for a key no memtable holds.
    fn lookup_tables(&self, key: &[u8], seqno: u64, reach: Reach) -> Option<Result<Option<Found>>> {
        for level in 0..NUM_LEVELS {
            for handle in self.version.tables_for_user_key(level, key) {
                if handle.min_seqno > seqno {
                    continue; // every version in it is newer than the read
                }
                let table = match self.table(handle.file_number) {
                    Ok(table) => table,
                    Err(e) => return Some(Err(e)),
                };
                let found = match reach {
                    Reach::Disk => table.get(key, seqno),
                    Reach::Memory => table.get_if_cached(key, seqno)?,
                };
                match found {
                    Ok(None) => {}
                    Ok(Some(hit)) => return Some(Ok(Some(hit))),
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        Some(Ok(None))
    }
}

/// How far a point read may go for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Anywhere, reading table blocks from disk as needed.
    Disk,
    /// Memtables, filters, indexes and the block cache only: a read that would touch a table
    /// file (or a mapping whose pages may not be resident) gives up instead.
    Memory,
}

/// The error for a broken internal invariant: reported, never a panic.
fn engine_bug(what: &str) -> StorageError {
    StorageError::InvalidInput {
        path: PathBuf::new(),
        reason: format!("{what} (engine bug)"),
    }
}

/// Background control, under [`Inner::state`] with the current [`SuperVersion`].
#[derive(Debug)]
struct State {
    current: Arc<SuperVersion>,
    /// Set by close/drop: the background thread exits after its current job.
    stop: bool,
    /// The background thread is running a flush or compaction.
    busy: bool,
    /// Live [`Snapshot`]s: seqno → how many. Flushes and compactions keep, for each of them,
    /// the newest version it can see.
    snapshots: BTreeMap<u64, usize>,
}

/// Counters for [`EngineStats`] and [`LsmEngine::counters`].
#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    compactions: AtomicU64,
    trivial_moves: AtomicU64,
    bytes_flushed: AtomicU64,
    bytes_compacted: AtomicU64,
    blocks_warmed: AtomicU64,
    expired_reclaimed: AtomicU64,
    /// Key and value bytes of the records written by users (see [`LsmStats`]).
    user_bytes_written: AtomicU64,
    write_slowdowns: AtomicU64,
    write_stalls: AtomicU64,
}

/// A point in time of an [`LsmEngine`], from [`LsmEngine::snapshot`] (or
/// [`LsmEngine::checkpoint`]): read it with [`LsmEngine::get_at`] and [`LsmEngine::range`].
/// Released when dropped; while it lives, flushes and compactions keep the versions it sees.
pub struct Snapshot {
    seqno: u64,
    inner: Arc<Inner>,
}

impl Snapshot {
    /// The sequence number it reads at: it sees every write with a seqno at or below it.
    pub fn seqno(&self) -> u64 {
        self.seqno
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("seqno", &self.seqno)
            .finish_non_exhaustive()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        if let Some(count) = state.snapshots.get_mut(&self.seqno) {
            *count -= 1;
            if *count == 0 {
                state.snapshots.remove(&self.seqno);
            }
        }
    }
}

/// Tables and bytes of one level, in [`LsmStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// The level, 0 to 6.
    pub level: usize,
    /// Tables in the level.
    pub tables: usize,
    /// Total file size of its tables.
    pub size_bytes: u64,
}

/// Detailed statistics of an [`LsmEngine`] (see [`LsmEngine::stats_detailed`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LsmStats {
    /// Every level, L0 first.
    pub levels: Vec<LevelStats>,
    /// Estimated bytes of the active and frozen memtables.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting for a flush.
    pub immutable_memtables: usize,
    /// Bytes of the WAL segments' headers and records (see [`Wal::size_bytes`]).
    pub wal_bytes: u64,
    /// fsyncs of the WAL since open (group commit shares one among concurrent writers).
    pub wal_fsyncs: u64,
    /// Block cache hits, misses and usage.
    pub cache: CacheStats,
    /// Flushes, compactions and the table bytes they wrote.
    pub counters: LsmCounters,
    /// Key and value bytes of the records users wrote since open (puts and the deletes that
    /// logged a tombstone), the denominator of [`LsmStats::write_amplification`].
    pub user_bytes_written: u64,
    /// The latest sequence number visible to readers.
    pub visible_seqno: u64,
    /// Live [`Snapshot`]s.
    pub live_snapshots: usize,
}

impl LsmStats {
    /// Bytes written to tables (flushes and compactions) per byte written by users since open;
    /// `None` before any user write. WAL bytes are not counted.
    pub fn write_amplification(&self) -> Option<f64> {
        let tables = self.counters.bytes_flushed + self.counters.bytes_compacted;
        (self.user_bytes_written > 0).then(|| tables as f64 / self.user_bytes_written as f64)
    }

    /// Tables in all levels.
    pub fn table_count(&self) -> usize {
        self.levels.iter().map(|l| l.tables).sum()
    }
}

/// Counters of the background work since open (see [`LsmEngine::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmCounters {
    /// Memtables flushed to L0.
    pub flushes: u64,
    /// Merge compactions run.
    pub compactions: u64,
    /// Tables moved down a level without rewriting.
    pub trivial_moves: u64,
    /// Bytes of SSTables written by flushes.
    pub bytes_flushed: u64,
    /// Bytes of SSTables written by compactions.
    pub bytes_compacted: u64,
    /// Data blocks read into the block cache after flushes
    /// ([`LsmOptions::warm_cache_on_flush`]).
    pub blocks_warmed: u64,
    /// Expired values turned into tombstones or dropped by compactions.
    pub expired_reclaimed: u64,
    /// Write batches paused because L0 reached [`LsmOptions::l0_slowdown_tables`].
    pub write_slowdowns: u64,
    /// Write batches that waited: L0 had reached [`LsmOptions::l0_stop_tables`], or
    /// [`LsmOptions::max_immutable_memtables`] frozen memtables waited for the flush thread.
    pub write_stalls: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    tables_dir: PathBuf,
    options: LsmOptions,
    wal: Wal,
    /// Used by the background thread (and open) only.
    manifest: Mutex<Manifest>,
    cache: Arc<BlockCache>,
    /// Serialises writers: decide answers, WAL append, memtable insert, freeze.
    /// Lock order: `writer` before `state`.
    writer: Mutex<()>,
    state: Mutex<State>,
    /// A copy of `state.current`, replaced under the `state` lock each time that is: readers
    /// load it without contending for `state` with writers and the background thread.
    published: RwLock<Arc<SuperVersion>>,
    /// The largest sequence number readers may see: published by a writer only after its
    /// whole batch is in the memtable. Readers load it before `published` (see
    /// [`LsmEngine#consistency`]).
    visible_seqno: AtomicU64,
    /// Who writes with [`SyncPolicy::Always`], for the group commit's gathering step.
    sync_group: SyncGroup,
    /// Held while a compaction runs (background or [`LsmEngine::compact_range`]) and while
    /// [`LsmEngine::checkpoint`] links table files: only its holder deletes table files.
    compaction_lock: Mutex<()>,
    /// Wakes the background thread.
    work: Condvar,
    /// Signals progress of the background thread (stalled writers, `flush`, `wait_idle`).
    progress: Condvar,
    /// Closed and poisoned flags.
    lifecycle: Lifecycle,
    counters: Counters,
    /// Whether a point read was served since the last flush: only then does a flush warm
    /// the block cache with its table ([`LsmOptions::warm_cache_on_flush`]) and keep its
    /// memtable ([`LsmOptions::retain_flushed_memtable`]).
    read_since_flush: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The longest a group-commit leader waits for other writers to append (see
/// [`SyncGroup::gather`]).
const MAX_GATHER_WAIT: Duration = Duration::from_micros(100);

/// The synced writers of an engine, for group commit's gathering step.
#[derive(Debug, Default)]
struct SyncGroup {
    /// Synced writers inside `write_many` now.
    inside: AtomicUsize,
    /// The most that were inside at once since the last fsync began.
    peak: AtomicUsize,
    /// Write batches appended by synced writers since open.
    appended: AtomicU64,
    /// `appended` when the last fsync began.
    appended_at_last_sync: AtomicU64,
}

/// A synced writer's membership in its [`SyncGroup`], until dropped.
struct SyncMember<'a>(&'a SyncGroup);

impl SyncGroup {
    fn enter(&self) -> SyncMember<'_> {
        let inside = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(inside, Ordering::SeqCst);
        SyncMember(self)
    }

    /// Run by the group-commit leader just before its fsync. Writers that each wait for their
    /// own fsync otherwise fall into a rhythm where every other fsync carries one writer: the
    /// one that appended while the previous fsync ran, alone, because the writers that fsync
    /// released have not yet appended their next record. So the leader waits, at most
    /// [`MAX_GATHER_WAIT`] (a few writers' appends; an fsync takes milliseconds), until as
    /// many batches wait for this fsync as writers were recently seen at once. A lone writer
    /// (a shard's writer thread) never waits.
    fn gather(&self) {
        let want = self
            .peak
            .swap(self.inside.load(Ordering::SeqCst), Ordering::SeqCst) as u64;
        let since = self.appended_at_last_sync.load(Ordering::SeqCst);
        let pending = || self.appended.load(Ordering::SeqCst).saturating_sub(since);
        if want > 1 && pending() < want {
            let start = Instant::now();
            while pending() < want && start.elapsed() < MAX_GATHER_WAIT {
                std::thread::yield_now();
            }
        }
        self.appended_at_last_sync
            .store(self.appended.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for SyncMember<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where the records of `ops` go in `sv`'s active memtable ([`Memtable::plan_inserts`]),
/// found before the writer lock is taken, so that the searches' cache misses neither come one
/// after another nor hold up other writers. The writers plan only batches of several ops: a
/// single op's search gains nothing from it (measured: HTTP SETs, within the noise).
fn plan_inserts<'a>(sv: &'a SuperVersion, ops: &[WriteOp<'_>]) -> InsertPlan<'a> {
    let keys: Vec<&[u8]> = ops
        .iter()
        .map(|op| match *op {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        })
        .collect();
    sv.active.plan_inserts(&keys)
}

/// `m`'s guard if it is free now or within a few retries (a holder that only appends to the
/// WAL and inserts into a memtable lets go within microseconds); `None` if it stays taken.
/// It first spins for about as long as such a holder takes (the holder usually runs on
/// another core, and a `sched_yield` costs more than the wait), then yields a few times.
fn try_lock_briefly<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    for _ in 0..BRIEF_SPINS {
        if let Some(guard) = try_lock(m) {
            return Some(guard);
        }
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    }
    for _ in 0..8 {
        if let Some(guard) = try_lock(m) {
            return Some(guard);
        }
        std::thread::yield_now();
    }
    None
}

/// Rounds of [`try_lock_briefly`]'s spinning, each 32 spin-loop hints (some 100 ns to 1 µs
/// depending on the CPU).
const BRIEF_SPINS: usize = 16;

/// `m`'s guard if it is free.
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Which versions a flush or merge compaction may drop, given the oldest live snapshot (the
/// LevelDB rule). Versions arrive in [`crate::lsm::key::compare_encoded`] order (newest first
/// within a user key). A version is *shadowed*, and dropped, if the next newer version of its
/// user key has a seqno `<= smallest_snapshot`: then every snapshot (and every later reader)
/// that could see this version sees that newer one instead. So each snapshot stripe keeps its
/// newest version, and with no snapshot (`smallest_snapshot == MAX_SEQNO`) only the newest
/// version of each key survives.
struct Retention {
    smallest_snapshot: u64,
    /// The previous version's user key and seqno.
    previous: Option<(Vec<u8>, u64)>,
}

impl Retention {
    fn new(smallest_snapshot: u64) -> Self {
        Retention {
            smallest_snapshot,
            previous: None,
        }
    }

    /// Whether the version (`user_key`, `seqno`), the next in order, is shadowed.
    fn shadowed(&mut self, user_key: &[u8], seqno: u64) -> bool {
        match &mut self.previous {
            Some((key, newer)) if key.as_slice() == user_key => {
                let shadowed = *newer <= self.smallest_snapshot;
                *newer = seqno;
                shadowed
            }
            Some((key, newer)) => {
                key.clear();
                key.extend_from_slice(user_key);
                *newer = seqno;
                false
            }
            None => {
                self.previous = Some((user_key.to_vec(), seqno));
                false
            }
        }
    }
}

/// `tables/<n>.sst`'s file name.
fn table_file_name(file_number: u64) -> String {
    format!("{file_number:06}.sst")
}

/// Rejects a key or value over the format's limits.
fn check_ops(ops: &[WriteOp<'_>]) -> Result<()> {
    for op in ops {
        let (key, value): (&[u8], &[u8]) = match op {
            WriteOp::Put { key, value, .. } => (key, value),
            WriteOp::Delete { key } => (key, &[]),
        };
        if key.len() > MAX_KEY_BYTES {
            return Err(StorageError::KeyTooLarge {
                len: key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        if value.len() > MAX_VALUE_BYTES - value::MAX_OVERHEAD_BYTES {
            return Err(StorageError::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_BYTES - value::MAX_OVERHEAD_BYTES,
            });
        }
    }
    Ok(())
}

/// An LSM-tree storage engine in one directory (see the [module docs](self)).
///
/// Dropping the engine stops its background thread and fsyncs the WAL (best effort); call
/// [`Engine::close`] to see errors.
///
/// # Consistency
///
/// Readers read at the *visible seqno*, not at whatever the memtable holds: a writer inserts
/// its whole batch into the memtable (under the writer lock) and only then publishes the
/// batch's last seqno. A reader loads the visible seqno *first* and the current
/// `SuperVersion` after it (no lock: see `Inner::published`), so the super version holds every
/// version up to that seqno (a memtable written before the publish was the active one then,
/// and every later super version holds it as the active one, a frozen one or the flushed
/// table), and ignores anything newer: [`LsmEngine::write_batch`] is seen whole or not at
/// all.
///
/// # Snapshots
///
/// [`LsmEngine::snapshot`] registers the visible seqno in a list of live snapshots (under the
/// state lock) and reads at it with the *current* super version, so a snapshot does not pin
/// memtables or files. Flushes and compactions read the oldest live snapshot when they start
/// and keep, for each snapshot stripe, the newest version (a version is dropped only if the
/// next newer version of its key is at or below the oldest snapshot; a bottom-level tombstone
/// only if it is at or below it too). A snapshot registered after a job started is newer than
/// every version the job reads, and sees its result correctly. Iterators ([`RangeIter`])
/// instead pin the super version of their creation: the tables in it stay readable after a
/// compaction deletes their files, through their open mmap or file descriptor.
///
/// ```
/// use limedb_storage::{Engine, LsmEngine, LsmOptions};
///
/// let dir = tempfile::tempdir()?;
/// let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
/// engine.put(b"lime", b"green", None)?;
/// assert!(engine.delete(b"lime")?);
/// engine.put(b"kiwi", b"brown", None)?;
/// engine.close()?;
///
/// let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
/// assert_eq!(engine.get(b"kiwi")?.map(|v| v.data), Some("brown".into()));
/// assert_eq!(engine.len()?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LsmEngine {
    inner: Arc<Inner>,
    background: Mutex<Option<JoinHandle<()>>>,
}

impl LsmEngine {
    /// The value of [`EngineStats::backend`] for this engine.
    pub const BACKEND: &'static str = "lsm";

    /// Opens the engine in `dir`, creating an empty database if `dir` has no `CURRENT` file:
    /// replays the manifest, opens every live table, deletes table files no version names
    /// (left over by an interrupted flush or compaction), and replays the WAL records newer
    /// than the last flush into a memtable.
    ///
    /// Damage in the manifest, a table or the WAL (other than a torn tail) fails with
    /// [`StorageError::Corrupt`] naming the file.
    pub fn open(dir: impl AsRef<Path>, options: LsmOptions) -> Result<Self> {
        let options = options.with_consistent_l0_limits();
        let dir = dir.as_ref().to_path_buf();
        let tables_dir = dir.join("tables");
        std::fs::create_dir_all(&tables_dir).map_err(StorageError::io(
            "failed to create LSM directory",
            &tables_dir,
        ))?;
        let manifest_options = ManifestOptions::default();
        let (manifest, version) = if dir.join(CURRENT_FILE_NAME).exists() {
            Manifest::open(&dir, manifest_options)?
        } else {
            fsync_dir(&dir)?;
            let manifest = Manifest::create(&dir, manifest_options)?;
            let version = manifest.current();
            (manifest, version)
        };

        let cache = Arc::new(BlockCache::new(options.block_cache_bytes));
        let mut tables = HashMap::new();
        let live: HashSet<u64> = version.live_file_numbers().collect();
        for &n in &live {
            let path = tables_dir.join(table_file_name(n));
            let table = Table::open_with(&path, options.read_mode, Some(Arc::clone(&cache)), n)?;
            tables.insert(n, table);
        }
        remove_orphan_tables(&tables_dir, &live)?;

        let wal_dir = dir.join("wal");
        let wal_options = WalOptions {
            // The engine fsyncs itself, after releasing its writer lock (group commit).
            sync: SyncPolicy::Never,
            ..WalOptions::default()
        };
        let (wal, recovered) = Wal::open(&wal_dir, wal_options)?;
        if wal.last_seqno() < version.last_seqno() {
            return Err(StorageError::Corrupt {
                path: wal_dir,
                offset: 0,
                reason: format!(
                    "the WAL ends at seqno {} but the tables reach seqno {}: WAL segments are \
                     missing",
                    wal.last_seqno(),
                    version.last_seqno()
                ),
            });
        }
        let active = Memtable::new();
        let flushed = version.last_seqno();
        for batch in &recovered {
            for (seqno, op) in batch.iter() {
                if seqno > flushed {
                    active.insert(op.key(), seqno, op.kind(), op.stored_value());
                }
            }
        }
        tracing::info!(
            dir = %dir.display(),
            tables = tables.len(),
            replayed_entries = active.len(),
            last_seqno = wal.last_seqno(),
            "opened LSM engine"
        );

        let visible_seqno = wal.last_seqno().max(version.last_seqno());
        let current = Arc::new(SuperVersion {
            active: Arc::new(active),
            imms: Vec::new(),
            retained: None,
            version,
            tables,
        });
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            tables_dir,
            options,
            wal,
            manifest: Mutex::new(manifest),
            cache,
            writer: Mutex::new(()),
            published: RwLock::new(Arc::clone(&current)),
            state: Mutex::new(State {
                current,
                stop: false,
                busy: false,
                snapshots: BTreeMap::new(),
            }),
            visible_seqno: AtomicU64::new(visible_seqno),
            sync_group: SyncGroup::default(),
            compaction_lock: Mutex::new(()),
            work: Condvar::new(),
            progress: Condvar::new(),
            lifecycle: Lifecycle::default(),
            counters: Counters::default(),
            read_since_flush: AtomicBool::new(false),
        });
        let worker = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("limedb-lsm-bg".into())
            .spawn(move || worker.run_background())
            .map_err(StorageError::io(
                "failed to start background thread for",
                &dir,
            ))?;
        Ok(LsmEngine {
            inner,
            background: Mutex::new(Some(handle)),
        })
    }

    /// Freezes the active memtable (if it holds anything) and waits until it and every
    /// memtable frozen before it have been flushed to SSTables: everything written before the
    /// call is then in tables. Memtables frozen by writes during the call are not waited for.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_writable()?;
        // The newest memtable frozen by (or before) this call: flushes go oldest first, so
        // once it is gone, everything written before the call is in tables. Memtables that
        // writers freeze later are not waited for, so a steady stream of writes cannot keep
        // this call waiting forever.
        let newest = {
            let _writer = lock(&self.inner.writer);
            self.inner.check_writable()?;
            let mut state = lock(&self.inner.state);
            if !state.current.active.is_empty() {
                state = self.inner.wait_for_room(state)?;
                self.inner.freeze(&mut state)?;
            }
            state.current.imms.last().cloned()
        };
        let Some(newest) = newest else {
            return Ok(());
        };
        let mut state = lock(&self.inner.state);
        while state.current.imms.iter().any(|m| Arc::ptr_eq(m, &newest)) {
            self.inner.check_writable()?;
            if state.stop {
                return Err(StorageError::Closed);
            }
            state = wait(&self.inner.progress, state);
        }
        Ok(())
    }

    /// [`LsmEngine::flush`], then waits until the background thread has run every compaction
    /// the tree needs (every level within its target).
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        let mut state = lock(&self.inner.state);
        loop {
            self.inner.check_writable()?;
            let pending = !state.current.imms.is_empty()
                || leveled::pick(&state.current.version, &self.inner.options.leveled).is_some();
            if !state.busy && !pending {
                return Ok(());
            }
            if !state.busy {
                self.inner.work.notify_all();
            }
            state = wait(&self.inner.progress, state);
        }
    }

    /// The current version: the tables of each level.
    pub fn version(&self) -> Arc<Version> {
        Arc::clone(&self.inner.current().version)
    }

    /// Hit and miss counters of the block cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// Counters of flushes and compactions since open.
    pub fn counters(&self) -> LsmCounters {
        let c = &self.inner.counters;
        LsmCounters {
            flushes: c.flushes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            trivial_moves: c.trivial_moves.load(Ordering::Relaxed),
            bytes_flushed: c.bytes_flushed.load(Ordering::Relaxed),
            bytes_compacted: c.bytes_compacted.load(Ordering::Relaxed),
            blocks_warmed: c.blocks_warmed.load(Ordering::Relaxed),
            expired_reclaimed: c.expired_reclaimed.load(Ordering::Relaxed),
            write_slowdowns: c.write_slowdowns.load(Ordering::Relaxed),
            write_stalls: c.write_stalls.load(Ordering::Relaxed),
        }
    }

    /// Pins the current point in time: [`LsmEngine::get_at`] and [`LsmEngine::range`] with
    /// this snapshot see every write acknowledged before it and nothing written after it, until
    /// the snapshot is dropped. Flushes and compactions keep the versions it needs (see
    /// [`LsmEngine#snapshots`]), so a long-lived snapshot holds on to overwritten data.
    ///
    /// ```
    /// use limedb_storage::{Engine, LsmEngine, LsmOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
    /// engine.put(b"lime", b"green", None)?;
    /// let snapshot = engine.snapshot();
    /// engine.put(b"lime", b"yellow", None)?;
    /// engine.flush()?;
    /// assert_eq!(engine.get_at(&snapshot, b"lime")?.map(|v| v.data), Some("green".into()));
    /// assert_eq!(engine.get(b"lime")?.map(|v| v.data), Some("yellow".into()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        let mut state = lock(&self.inner.state);
        let seqno = self.inner.visible_seqno.load(Ordering::SeqCst);
        self.inner.register_snapshot(&mut state, seqno)
    }

    /// The live value of `key` as of `snapshot`. Fails with [`StorageError::InvalidInput`]
    /// if the snapshot was taken from another engine.
    pub fn get_at(&self, snapshot: &Snapshot, key: &[u8]) -> Result<Option<Value>> {
        self.inner.check_open()?;
        self.check_snapshot(snapshot)?;
        let sv = self.inner.current();
        self.inner.live_value(&sv, key, snapshot.seqno, now_ms())
    }

    /// Writes `ops` atomically: they take consecutive sequence numbers, are logged as one WAL
    /// record (recovery replays all of them or, for a torn final record, none) and become
    /// visible to readers together. The same as [`Engine::write_many`] without the answers.
    pub fn write_batch(&self, ops: &[WriteOp<'_>]) -> Result<()> {
        self.inner.write_many(ops).map(|_| ())
    }

    /// The live entries with keys within `(start, end)`, in key order (`.rev()` for descending
    /// order), as of `snapshot`, or of now if `None`. The iterator reads one point in time
    /// however long it lives (see [`RangeIter`]); it pins the memtables and tables of that
    /// moment, so drop it when done.
    ///
    /// ```
    /// use std::ops::Bound;
    /// use limedb_storage::{Engine, LsmEngine, LsmOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let engine = LsmEngine::open(dir.path(), LsmOptions::default())?;
    /// for k in ["a", "b", "c", "d"] {
    ///     engine.put(k.as_bytes(), b"v", None)?;
    /// }
    /// let keys = |it: limedb_storage::lsm::engine::RangeIter| -> Result<Vec<_>, _> {
    ///     it.map(|e| e.map(|(k, _)| k)).collect::<Result<Vec<_>, _>>()
    /// };
    /// let range = || engine.range(Bound::Excluded(b"a"), Bound::Included(b"c"), None);
    /// assert_eq!(keys(range()?)?, ["b", "c"]);
    /// assert_eq!(range()?.rev().map(|e| e.map(|(k, _)| k)).collect::<Result<Vec<_>, _>>()?, ["c", "b"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        snapshot: Option<&Snapshot>,
    ) -> Result<RangeIter> {
        self.inner.check_open()?;
        let (sv, visible) = self.inner.read_view();
        let seqno = match snapshot {
            Some(s) => {
                self.check_snapshot(s)?;
                s.seqno
            }
            None => visible,
        };
        Ok(RangeIter::new(
            Arc::clone(&self.inner),
            sv,
            seqno,
            now_ms(),
            start,
            end,
        ))
    }

    fn check_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        if Arc::ptr_eq(&snapshot.inner, &self.inner) {
            Ok(())
        } else {
            Err(StorageError::InvalidInput {
                path: self.inner.dir.clone(),
                reason: "the snapshot belongs to another engine".into(),
            })
        }
    }

    /// Compacts the tables holding user keys in `[start, end]` (`None`: unbounded) down the
    /// levels: flushes the memtables, then for each level from L0 to the last but one merges
    /// the tables overlapping the range (all of L0, if any L0 table overlaps) with the tables
    /// of the next level they overlap, and finally rewrites the bottom level's tables in the
    /// range in place. Afterwards the range's data sits in the bottom level,
    /// with shadowed versions, tombstones and expired values reclaimed (except what live
    /// snapshots still see). Runs on the calling thread; background compactions wait, flushes
    /// go on.
    pub fn compact_range(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> Result<()> {
        self.flush()?;
        let result = {
            let _compacting = lock(&self.inner.compaction_lock);
            self.compact_range_locked(start, end)
        };
        if let Err(error) = &result {
            if !matches!(error, StorageError::Poisoned | StorageError::Closed) {
                self.inner.poison(error);
            }
        }
        // The background thread skipped compactions while we held the lock.
        self.inner.work.notify_all();
        self.inner.progress.notify_all();
        result
    }

    fn compact_range_locked(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> Result<()> {
        let options = &self.inner.options.leveled;
        let levels = options.max_levels.clamp(2, NUM_LEVELS);
        let overlaps = |t: &TableHandle| {
            start.is_none_or(|s| t.largest_user_key() >= s)
                && end.is_none_or(|e| t.smallest_user_key() <= e)
        };
        for level in 0..levels - 1 {
            self.inner.check_writable()?;
            let sv = self.inner.current();
            let tables = sv.version.level(level);
            let inputs: Vec<Arc<TableHandle>> = if level == 0 {
                // L0 tables overlap each other: moving some of them below older ones would
                // let older versions shadow newer ones. Take them all.
                if tables.iter().any(|t| overlaps(t)) {
                    tables.to_vec()
                } else {
                    Vec::new()
                }
            } else {
                tables.iter().filter(|t| overlaps(t)).cloned().collect()
            };
            if inputs.is_empty() {
                continue;
            }
            let choice = leveled::manual(&sv.version, options, level, &inputs);
            self.inner.run_compaction(&sv, &choice)?;
        }
        // The bottom level into itself, to reclaim what its own tables shadow or delete.
        let bottom = levels - 1;
        let sv = self.inner.current();
        let inputs: Vec<Arc<TableHandle>> = sv
            .version
            .level(bottom)
            .iter()
            .filter(|t| overlaps(t))
            .cloned()
            .collect();
        if let (Some(first), Some(last)) = (inputs.first(), inputs.last()) {
            let key_range = (
                Bytes::copy_from_slice(first.smallest_user_key()),
                Bytes::copy_from_slice(last.largest_user_key()),
            );
            let choice = Choice {
                action: Action::Merge,
                reason: crate::lsm::compaction::Reason::Manual,
                input_level: bottom,
                inputs: inputs.iter().map(|t| t.file_number).collect(),
                output_level: bottom,
                overlapping: Vec::new(),
                cursor: key_range.1.clone(),
                key_range,
                bottommost: true,
                target_table_bytes: options.target_table_bytes,
            };
            self.inner.run_compaction(&sv, &choice)?;
        }
        Ok(())
    }

    /// Detailed statistics: tables and bytes per level, memtables, block cache, background
    /// work and write amplification.
    pub fn stats_detailed(&self) -> LsmStats {
        let (sv, visible_seqno) = self.inner.read_view();
        let levels = (0..NUM_LEVELS)
            .map(|level| LevelStats {
                level,
                tables: sv.version.table_count(level),
                size_bytes: sv.version.level_size_bytes(level),
            })
            .collect();
        let live_snapshots = lock(&self.inner.state).snapshots.values().sum();
        LsmStats {
            levels,
            memtable_bytes: std::iter::once(&sv.active)
                .chain(&sv.imms)
                .map(|m| m.approximate_bytes())
                .sum(),
            immutable_memtables: sv.imms.len(),
            wal_bytes: self.inner.wal.size_bytes(),
            wal_fsyncs: self.inner.wal.fsync_count(),
            cache: self.inner.cache.stats(),
            counters: self.counters(),
            user_bytes_written: self
                .inner
                .counters
                .user_bytes_written
                .load(Ordering::Relaxed),
            visible_seqno,
            live_snapshots,
        }
    }

    /// Writes a consistent copy of the database into `dest` (created if absent; it must not
    /// hold a database yet) that [`LsmEngine::open`] opens independently, and returns a
    /// [`Snapshot`] of this engine at exactly the copied point in time.
    ///
    /// Flushes the memtables first, then, holding off compactions (so no table file is
    /// deleted meanwhile): hard-links every table of the current version into `dest/tables`
    /// (copying when linking fails, e.g. across filesystems), writes an empty WAL segment that
    /// continues the sequence numbers, and last a fresh manifest and `CURRENT` describing
    /// exactly that version. Writes go on during the checkpoint; those not yet flushed when the
    /// version is taken are not in the copy. `dest` is complete only once this returns.
    pub fn checkpoint(&self, dest: impl AsRef<Path>) -> Result<Snapshot> {
        let dest = dest.as_ref();
        if dest.join(CURRENT_FILE_NAME).exists() {
            return Err(StorageError::InvalidInput {
                path: dest.to_path_buf(),
                reason: "checkpoint destination already holds a database".into(),
            });
        }
        self.flush()?;
        let _compacting = lock(&self.inner.compaction_lock);
        let (version, snapshot) = {
            let mut state = lock(&self.inner.state);
            let version = Arc::clone(&state.current.version);
            // Every table holds versions up to `last_seqno` and none above (memtables are
            // flushed whole and in order): the copy is the database at that seqno.
            let snapshot = self
                .inner
                .register_snapshot(&mut state, version.last_seqno());
            (version, snapshot)
        };
        let tables_dir = dest.join("tables");
        std::fs::create_dir_all(&tables_dir).map_err(StorageError::io(
            "failed to create checkpoint directory",
            &tables_dir,
        ))?;
        for n in version.live_file_numbers() {
            let from = self.inner.tables_dir.join(table_file_name(n));
            let to = tables_dir.join(table_file_name(n));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .map_err(StorageError::io("failed to copy table for checkpoint", &to))?;
                std::fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(StorageError::io("failed to fsync checkpoint table", &to))?;
            }
        }
        fsync_dir(&tables_dir)?;
        let wal_dir = dest.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(StorageError::io(
            "failed to create checkpoint WAL directory",
            &wal_dir,
        ))?;
        write_empty_wal_segment(&wal_dir, version.last_seqno() + 1)?;
        fsync_dir(dest)?;
        let mut manifest = Manifest::create(dest, ManifestOptions::default())?;
        manifest.log_and_apply(version.snapshot_edit())?;
        Ok(snapshot)
    }

    fn stop_background(&self) {
        lock(&self.inner.state).stop = true;
        self.inner.work.notify_all();
        self.inner.progress.notify_all();
        if let Some(handle) = lock(&self.background).take() {
            if handle.join().is_err() {
                tracing::error!("LSM engine background thread panicked");
            }
        }
    }

    /// Live entries from `start`, through `f` until it returns `false`.
    fn for_each_live(
        &self,
        start: Option<&[u8]>,
        mut f: impl FnMut(Bytes, Value) -> bool,
    ) -> Result<()> {
        self.inner.check_open()?;
        let (sv, seqno) = self.inner.read_view();
        let merge = MergeIter::new(sv.sources(start)?)?;
        for entry in LiveIter::new(merge, now_ms(), seqno, &self.inner.dir) {
            let (k, v) = entry?;
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }
}

/// Writes `wal_dir/wal-<first_seqno>.log` holding only a segment header (the WAL's format),
/// so that a checkpoint's WAL continues after its tables' last seqno.
fn write_empty_wal_segment(wal_dir: &Path, first_seqno: u64) -> Result<()> {
    use std::io::Write;

    use crate::lsm::wal::{FORMAT_VERSION, MAGIC, SEGMENT_HEADER_LEN};

    let path = wal_dir.join(segment_file_name(first_seqno));
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.push(FORMAT_VERSION);
    header.extend_from_slice(&first_seqno.to_le_bytes());
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(&header)?;
            f.sync_all()
        })
        .map_err(StorageError::io(
            "failed to write checkpoint WAL segment",
            &path,
        ))?;
    fsync_dir(wal_dir)
}

fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Deletes table files in `tables_dir` that are not in `live`.
fn remove_orphan_tables(tables_dir: &Path, live: &HashSet<u64>) -> Result<()> {
    let entries = std::fs::read_dir(tables_dir).map_err(StorageError::io(
        "failed to list tables directory",
        tables_dir,
    ))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(StorageError::io(
            "failed to list tables directory",
            tables_dir,
        ))?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_suffix(".sst"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            if !live.contains(&n) {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing table file no version names");
                std::fs::remove_file(&path)
                    .map_err(StorageError::io("failed to remove orphan table", &path))?;
                removed = true;
            }
        }
    }
    if removed {
        fsync_dir(tables_dir)?;
    }
    Ok(())
}

impl Drop for LsmEngine {
    fn drop(&mut self) {
        self.stop_background();
        if !self.inner.lifecycle.is_closed() && !self.inner.wal.is_poisoned() {
            if let Err(error) = self.inner.wal.sync() {
                tracing::warn!(%error, "fsync on drop of LSM engine failed");
            }
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        self.lifecycle.check_open()
    }

    fn check_writable(&self) -> Result<()> {
        self.lifecycle.check_writable()?;
        if self.wal.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    fn poison(&self, error: &StorageError) {
        if self.lifecycle.poison() {
            tracing::error!(%error, dir = %self.dir.display(), "LSM engine poisoned; refusing writes");
        }
        self.progress.notify_all();
    }

    fn current(&self) -> Arc<SuperVersion> {
        Arc::clone(
            &self
                .published
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Makes `sv` the current super version (the caller holds `state`).
    fn install(&self, state: &mut State, sv: SuperVersion) {
        let sv = Arc::new(sv);
        *self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::clone(&sv);
        state.current = sv;
    }

    /// The visible seqno and then the current [`SuperVersion`]: the super version holds every
    /// version up to that seqno (see [`LsmEngine#consistency`]). Takes no lock but the
    /// read side of `published`.
    fn read_view(&self) -> (Arc<SuperVersion>, u64) {
        let seqno = self.visible_seqno.load(Ordering::SeqCst);
        (self.current(), seqno)
    }

    /// [`Inner::read_view`] for a point read, noted for the next flush (see
    /// [`Inner::read_since_flush`]): a load of a flag and, once between flushes, a store.
    fn point_read_view(&self) -> (Arc<SuperVersion>, u64) {
        if !self.read_since_flush.load(Ordering::Relaxed) {
            self.read_since_flush.store(true, Ordering::Relaxed);
        }
        self.read_view()
    }

    /// Registers a snapshot at `seqno` (the caller holds `state`, so no flush or compaction
    /// starts in between without seeing it).
    fn register_snapshot(self: &Arc<Self>, state: &mut State, seqno: u64) -> Snapshot {
        *state.snapshots.entry(seqno).or_insert(0) += 1;
        Snapshot {
            seqno,
            inner: Arc::clone(self),
        }
    }

    /// The oldest live snapshot's seqno, or [`MAX_SEQNO`] if none: a version shadowed by a
    /// newer one at or below it is invisible to every reader.
    fn smallest_snapshot(&self) -> u64 {
        lock(&self.state)
            .snapshots
            .keys()
            .next()
            .copied()
            .unwrap_or(MAX_SEQNO)
    }

    /// Waits (a write stall) while the maximum number of frozen memtables wait for a flush.
    fn wait_for_room<'a>(&self, mut state: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        let max = self.options.max_immutable_memtables.max(1);
        if state.current.imms.len() >= max {
            self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
        }
        while state.current.imms.len() >= max {
            self.check_writable()?;
            if state.stop {
                return Err(StorageError::Closed);
            }
            state = wait(&self.progress, state);
        }
        Ok(state)
    }

    /// Freezes the active memtable: rotates the WAL (so the frozen memtable's records can be
    /// deleted alone once flushed), moves the memtable to the frozen list and wakes the flush
    /// thread. The caller holds the writer lock and `state`.
    fn freeze(&self, state: &mut MutexGuard<'_, State>) -> Result<()> {
        self.wal.rotate()?;
        let sv = &state.current;
        let mut imms = sv.imms.clone();
        imms.push(Arc::clone(&sv.active));
        let sv = SuperVersion {
            active: Arc::new(Memtable::with_expected_keys(sv.active.keys())),
            imms,
            retained: sv.retained.clone(),
            version: Arc::clone(&sv.version),
            tables: sv.tables.clone(),
        };
        self.install(state, sv);
        self.work.notify_all();
        Ok(())
    }

    fn write_many(&self, ops: &[WriteOp<'_>]) -> Result<Vec<bool>> {
        check_ops(ops)?;
        self.check_writable()?;
        let synced = self.options.sync == SyncPolicy::Always;
        let _member = synced.then(|| self.sync_group.enter());
        let planned = (ops.len() > 1).then(|| self.current());
        let plan = planned.as_deref().map(|sv| plan_inserts(sv, ops));
        let (flags, last_seqno) = {
            let _writer = lock(&self.writer);
            self.check_writable()?;
            let (sv, slow) = {
                let state = lock(&self.state);
                let (mut state, slow) = self.throttle(state)?;
                if state.current.active.approximate_bytes() >= self.options.memtable_bytes {
                    state = self.wait_for_room(state)?;
                    self.freeze(&mut state)?;
                }
                (Arc::clone(&state.current), slow)
            };
            if slow {
                // Every writer queues behind this one on the writer lock, so the pause slows
                // the whole write stream and lets compaction catch up.
                self.counters
                    .write_slowdowns
                    .fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(self.options.write_slowdown_delay);
            }
            let applied = self
                .apply(&sv, ops, plan.as_ref(), now_ms(), Reach::Disk)?
                .ok_or_else(|| engine_bug("a write allowed to use the disk gave up"))?;
            if synced && applied.1.is_some() {
                self.sync_group.appended.fetch_add(1, Ordering::SeqCst);
            }
            applied
        };
        if let (true, Some(last)) = (synced, last_seqno) {
            self.wal
                .sync_to_gathering(last, || self.sync_group.gather())?;
        }
        Ok(flags)
    }

    /// [`Engine::try_write_many_now`]: `ops` written at once when that needs neither an fsync
    /// (`SyncPolicy::Always`), a memtable freeze, a WAL segment switch, a write slowdown, more
    /// than a moment's wait for the writer lock, nor a table read (a delete must know whether
    /// the key is live).
    fn try_write_many_now(&self, ops: &[WriteOp<'_>]) -> Option<Result<Vec<bool>>> {
        if self.options.sync == SyncPolicy::Always {
            return None;
        }
        if let Err(e) = check_ops(ops).and_then(|()| self.check_writable()) {
            return Some(Err(e));
        }
        let planned = (ops.len() > 1).then(|| self.current());
        let plan = planned.as_deref().map(|sv| plan_inserts(sv, ops));
        let _writer = try_lock_briefly(&self.writer)?;
        if let Err(e) = self.check_writable() {
            return Some(Err(e));
        }
        // The writer lock keeps the active memtable from being frozen under us.
        let sv = self.current();
        let full = sv.active.approximate_bytes() >= self.options.memtable_bytes;
        if full || sv.version.level(0).len() >= self.options.l0_slowdown_tables {
            return None;
        }
        if self.wal.append_would_rotate() {
            return None;
        }
        match self.apply(&sv, ops, plan.as_ref(), now_ms(), Reach::Memory) {
            Ok(Some((flags, _))) => Some(Ok(flags)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// [`Engine::try_get_now`].
    fn try_get_now(&self, key: &[u8]) -> Option<Result<Option<Value>>> {
        if let Err(e) = self.check_open() {
            return Some(Err(e));
        }
        let (sv, seqno) = self.point_read_view();
        let found = sv.lookup(key, seqno, Reach::Memory)?;
        Some(found.and_then(|found| self.decode_live(found, now_ms())))
    }

    /// [`Engine::try_get_many_now`]: one read view for the whole batch.
    fn try_get_many_now(&self, keys: &[&[u8]]) -> Vec<Option<Result<Option<Value>>>> {
        if self.check_open().is_err() {
            // The blocking reads the caller falls back to report the error.
            return keys.iter().map(|_| None).collect();
        }
        let (sv, seqno) = self.point_read_view();
        let now = now_ms();
        sv.lookup_many_in_memory(keys, seqno)
            .into_iter()
            .map(|answer| answer.map(|found| found.and_then(|f| self.decode_live(f, now))))
            .collect()
    }

    /// Tables in L0 of the current version.
    fn l0_tables(&self, state: &State) -> usize {
        state.current.version.level(0).len()
    }

    /// Write back-pressure from L0, checked by each writer under the writer lock: at
    /// [`LsmOptions::l0_stop_tables`] tables it waits until compaction brings L0 below that
    /// (a *stall*); at [`LsmOptions::l0_slowdown_tables`] it returns `true` and the writer
    /// pauses for [`LsmOptions::write_slowdown_delay`] (a *slowdown*).
    fn throttle<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
    ) -> Result<(MutexGuard<'a, State>, bool)> {
        if self.l0_tables(&state) >= self.options.l0_stop_tables {
            self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(l0_tables = self.l0_tables(&state), "writes stalled on L0");
            self.work.notify_all();
            while self.l0_tables(&state) >= self.options.l0_stop_tables {
                self.check_writable()?;
                if state.stop {
                    return Err(StorageError::Closed);
                }
                state = wait(&self.progress, state);
            }
        }
        let slow = self.l0_tables(&state) >= self.options.l0_slowdown_tables;
        Ok((state, slow))
    }

    /// Decides each op's record and answer as if the ops ran one by one, appends the records
    /// to the WAL as one batch, inserts them into `sv`'s active memtable and publishes them.
    /// The caller holds the writer lock, so nothing changes underneath. Returns the answers
    /// and the batch's last seqno (`None` if nothing needed writing), or `Ok(None)` before
    /// writing anything when `reach` is [`Reach::Memory`] and a delete's liveness check would
    /// read a table.
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        sv: &SuperVersion,
        ops: &[WriteOp<'_>],
        plan: Option<&InsertPlan<'_>>,
        now: u64,
        reach: Reach,
    ) -> Result<Option<(Vec<bool>, Option<u64>)>> {
        let expired = |t: Option<u64>| t.is_some_and(|t| t <= now);
        let mut flags = Vec::with_capacity(ops.len());
        let mut batch = WriteBatch::new();
        // For each record of the batch, the op it comes from (the index `plan` knows it by).
        let mut op_of = Vec::with_capacity(ops.len());
        // Whether an earlier op of this batch made a key live: only an op that asks (a delete,
        // or a put that has already expired) after another op needs it, so a batch of plain
        // puts saves the map's allocation and hashing.
        let mut touched: HashMap<&[u8], bool> = HashMap::new();
        let track = ops.len() > 1
            && ops.iter().skip(1).any(|op| match *op {
                WriteOp::Put { expires_at_ms, .. } => expired(expires_at_ms),
                WriteOp::Delete { .. } => true,
            });
        for (i, op) in ops.iter().enumerate() {
            match *op {
                WriteOp::Put {
                    key,
                    value,
                    expires_at_ms,
                } if !expired(expires_at_ms) => {
                    op_of.push(i);
                    batch.put(
                        Bytes::copy_from_slice(key),
                        value::encode(value, expires_at_ms),
                    );
                    if track {
                        touched.insert(key, true);
                    }
                    flags.push(false);
                }
                // A put that has already expired is a delete; deleting a key that is not
                // live needs no record (expiry is absolute).
                WriteOp::Put { key, .. } | WriteOp::Delete { key } => {
                    let live = match touched.get(key) {
                        Some(&live) => live,
                        None => match sv.lookup(key, MAX_SEQNO, reach) {
                            Some(found) => self.decode_live(found?, now)?.is_some(),
                            None => return Ok(None),
                        },
                    };
                    if live {
                        op_of.push(i);
                        batch.delete(Bytes::copy_from_slice(key));
                    }
                    if track {
                        touched.insert(key, false);
                    }
                    flags.push(matches!(op, WriteOp::Delete { .. }) && live);
                }
            }
        }
        if batch.is_empty() {
            return Ok(Some((flags, None)));
        }
        debug_assert_eq!(op_of.len(), batch.len(), "a record without its op");
        let last = self.wal.append(&batch)?;
        let first = last + 1 - batch.len() as u64;
        let mut user_bytes = 0u64;
        for ((seqno, op), &i) in (first..).zip(batch.ops()).zip(&op_of) {
            let value = op.stored_value();
            user_bytes += (op.key().len() + value.len()) as u64;
            match plan {
                // A plan made on a memtable frozen since is ignored.
                Some(plan) => sv
                    .active
                    .insert_planned(plan, i, op.key(), seqno, op.kind(), value),
                None => sv.active.insert(op.key(), seqno, op.kind(), value),
            }
        }
        // Publish the batch: readers see all of it from now on, none of it before.
        self.visible_seqno.store(last, Ordering::SeqCst);
        self.counters
            .user_bytes_written
            .fetch_add(user_bytes, Ordering::Relaxed);
        Ok(Some((flags, Some(last))))
    }

    /// The live value of `key` in `sv` as of `seqno`, at `now`.
    fn live_value(
        &self,
        sv: &SuperVersion,
        key: &[u8],
        seqno: u64,
        now: u64,
    ) -> Result<Option<Value>> {
        self.decode_live(sv.get_at(key, seqno)?, now)
    }

    /// The live value a point lookup found, if it is a put that has not expired at `now`.
    fn decode_live(&self, found: Option<(ValueKind, Bytes)>, now: u64) -> Result<Option<Value>> {
        match found {
            Some((ValueKind::Put, data)) => {
                let v = value::decode(&data, &self.dir)?;
                Ok((!v.is_expired(now)).then_some(v))
            }
            Some((ValueKind::Delete, _)) | None => Ok(None),
        }
    }

    /// The background thread: flushes, compactions and interval fsyncs until stopped.
    fn run_background(&self) {
        let tick = match self.options.sync {
            SyncPolicy::Interval(period) => period.max(Duration::from_millis(1)),
            SyncPolicy::Always | SyncPolicy::Never => Duration::from_secs(1),
        };
        let mut last_sync = Instant::now();
        loop {
            enum Job<'a> {
                Flush(Arc<SuperVersion>),
                Compact(Arc<SuperVersion>, Box<Choice>, MutexGuard<'a, ()>),
            }
            let job = {
                let mut state = lock(&self.state);
                loop {
                    if state.stop {
                        state.busy = false;
                        self.progress.notify_all();
                        return;
                    }
                    let healthy = !self.lifecycle.is_poisoned();
                    if healthy && !state.current.imms.is_empty() {
                        state.busy = true;
                        break Job::Flush(Arc::clone(&state.current));
                    }
                    if healthy {
                        // Busy: a manual compaction or a checkpoint runs; it wakes us after.
                        if let Some(guard) = try_lock(&self.compaction_lock) {
                            if let Some(choice) =
                                leveled::pick(&state.current.version, &self.options.leveled)
                            {
                                state.busy = true;
                                break Job::Compact(
                                    Arc::clone(&state.current),
                                    Box::new(choice),
                                    guard,
                                );
                            }
                        }
                    }
                    if state.busy {
                        state.busy = false;
                        self.progress.notify_all();
                    }
                    let (guard, _) = self
                        .work
                        .wait_timeout(state, tick)
                        .unwrap_or_else(PoisonError::into_inner);
                    state = guard;
                    if let SyncPolicy::Interval(period) = self.options.sync {
                        if last_sync.elapsed() >= period && !self.wal.is_poisoned() {
                            last_sync = Instant::now();
                            drop(state);
                            if let Err(error) = self.wal.sync() {
                                tracing::warn!(%error, "interval fsync of WAL failed");
                            }
                            state = lock(&self.state);
                        }
                    }
                }
            };
            let result = match job {
                Job::Flush(sv) => self.flush_oldest(&sv),
                Job::Compact(sv, choice, _guard) => self.run_compaction(&sv, &choice),
            };
            if let Err(error) = result {
                self.poison(&error);
            }
            self.progress.notify_all();
        }
    }

    /// Creates `tables/<n>.sst` with a fresh file number.
    fn new_table(&self, manifest: &mut Manifest) -> Result<(u64, TableWriter)> {
        let n = manifest.allocate_file_number();
        let writer =
            TableWriter::create(self.tables_dir.join(table_file_name(n)), self.options.table)?;
        Ok((n, writer))
    }

    /// Finishes `writer` and opens the table it wrote.
    fn finish_table(&self, n: u64, writer: TableWriter) -> Result<(TableHandle, Table)> {
        let meta = writer.finish()?;
        let table = Table::open_with(
            &meta.path,
            self.options.read_mode,
            Some(Arc::clone(&self.cache)),
            n,
        )?;
        Ok((TableHandle::from_meta(n, &meta), table))
    }

    /// Flushes the oldest frozen memtable of `sv` to an L0 table and installs it.
    fn flush_oldest(&self, sv: &SuperVersion) -> Result<()> {
        let Some(memtable) = sv.imms.first() else {
            return Ok(());
        };
        let max_seqno = memtable.max_seqno();
        let mut manifest = lock(&self.manifest);
        let (n, mut writer) = self.new_table(&mut manifest)?;
        // Keep, for every live snapshot, the newest version it can see (the rule of
        // `Retention`): the memtable yields just those, without reading the versions dropped.
        for entry in memtable.iter_visible(self.smallest_snapshot()) {
            writer.add(entry.encoded_key(), entry.value())?;
        }
        let (handle, table) = self.finish_table(n, writer)?;
        fsync_dir(&self.tables_dir)?;
        let read_since_flush = self.read_since_flush.swap(false, Ordering::Relaxed);
        // Kept only if point reads want it, and then lent its bytes from the cache's budget,
        // so that blocks and memtable together stay within it.
        let budget = self.options.block_cache_bytes;
        let memtable_bytes = usize::try_from(memtable.approximate_bytes()).unwrap_or(usize::MAX);
        // The budget is checked before each write, so a memtable passes it by one batch; a
        // batch of huge values must not make the kept memtable take (nearly) the whole cache.
        let retained = (self.options.retain_flushed_memtable
            && read_since_flush
            && self.options.memtable_bytes <= budget as u64 / 2
            && memtable_bytes <= budget / 4 * 3)
            .then(|| Arc::clone(memtable));
        let reserved = retained.as_ref().map_or(0, |_| memtable_bytes);
        if self.options.warm_cache_on_flush && read_since_flush {
            let blocks = table.warm_cache(budget.saturating_sub(reserved) / 2)?;
            self.counters
                .blocks_warmed
                .fetch_add(blocks as u64, Ordering::Relaxed);
        }
        let size = handle.file_size_bytes;
        let mut edit = VersionEdit::default();
        edit.add_table(0, handle)
            .set_last_seqno(max_seqno.max(sv.version.last_seqno()))
            .set_log_number(max_seqno + 1);
        let version = manifest.log_and_apply(edit)?;
        drop(manifest);
        self.cache.set_reserved(reserved);
        // Counted before the new state is published, so a caller woken by `flush()` sees them.
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_flushed
            .fetch_add(size, Ordering::Relaxed);
        {
            let mut state = lock(&self.state);
            let cur = &state.current;
            let mut imms = cur.imms.clone();
            if imms.first().is_some_and(|m| Arc::ptr_eq(m, memtable)) {
                imms.remove(0);
            }
            let mut tables = cur.tables.clone();
            tables.insert(n, table);
            let sv = SuperVersion {
                active: Arc::clone(&cur.active),
                imms,
                retained,
                version,
                tables,
            };
            self.install(&mut state, sv);
        }
        self.progress.notify_all();
        self.wal.delete_obsolete(max_seqno)?;
        Ok(())
    }

    /// Runs `choice` (picked from `sv.version`) and installs the result.
    fn run_compaction(&self, sv: &SuperVersion, choice: &Choice) -> Result<()> {
        if choice.action == Action::TrivialMove {
            if let Some(edit) = choice.trivial_move_edit(&sv.version) {
                let version = lock(&self.manifest).log_and_apply(edit)?;
                self.install_version(version, &[], Vec::new());
                self.counters.trivial_moves.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let sources = choice
            .all_file_numbers()
            .map(|n| Ok(tables_source(vec![sv.table(n)?.clone()], None)))
            .collect::<Result<Vec<_>>>()?;
        let now = now_ms();
        let smallest_snapshot = self.smallest_snapshot();
        let mut manifest = lock(&self.manifest);
        let mut outputs: Vec<(u64, TableHandle, Table)> = Vec::new();
        let mut current: Option<(u64, TableWriter)> = None;
        let mut retention = Retention::new(smallest_snapshot);
        // The user key last written: an output table is only cut between user keys.
        let mut last_written: Option<Bytes> = None;
        let mut expired_reclaimed = 0u64;
        let result = (|| -> Result<()> {
            for entry in MergeIter::new(sources)? {
                let (key, data) = entry?;
                let uk = user_key(&key);
                let Some(ikey) = InternalKeyRef::decode(&key) else {
                    return Err(StorageError::Corrupt {
                        path: self.tables_dir.clone(),
                        offset: 0,
                        reason: "malformed internal key during compaction".into(),
                    });
                };
                if retention.shadowed(uk, ikey.seqno) {
                    continue;
                }
                let mut kind = ikey.kind;
                if kind == ValueKind::Put && value::decode(&data, &self.dir)?.is_expired(now) {
                    expired_reclaimed += 1;
                    kind = ValueKind::Delete;
                }
                // A tombstone every snapshot sees, with nothing below it: older versions here
                // are shadowed by it (dropped above) and no deeper level holds the key.
                if kind == ValueKind::Delete && choice.bottommost && ikey.seqno <= smallest_snapshot
                {
                    continue;
                }
                let new_user_key = last_written.as_deref() != Some(uk);
                let cut = new_user_key
                    && current
                        .as_ref()
                        .is_some_and(|(_, w)| w.written_bytes() >= choice.target_table_bytes);
                if cut {
                    if let Some((n, w)) = current.take() {
                        let (handle, table) = self.finish_table(n, w)?;
                        outputs.push((n, handle, table));
                    }
                }
                if current.is_none() {
                    current = Some(self.new_table(&mut manifest)?);
                }
                let Some((_, writer)) = current.as_mut() else {
                    continue;
                };
                if new_user_key {
                    last_written = Some(key.slice(..uk.len()));
                }
                if kind == ikey.kind {
                    writer.add(&key, &data)?;
                } else {
                    let mut tombstone = Vec::with_capacity(key.len());
                    crate::lsm::key::encode_into(&mut tombstone, uk, ikey.seqno, kind);
                    writer.add(&tombstone, &[])?;
                }
            }
            if let Some((n, w)) = current.take() {
                let (handle, table) = self.finish_table(n, w)?;
                outputs.push((n, handle, table));
            }
            fsync_dir(&self.tables_dir)
        })();
        // On error, outputs written so far are in no version; the next open removes them.
        result?;
        let written: u64 = outputs.iter().map(|(_, h, _)| h.file_size_bytes).sum();
        let edit = choice.merge_edit(outputs.iter().map(|(_, h, _)| h.clone()));
        let version = manifest.log_and_apply(edit)?;
        drop(manifest);
        // Counted before the new version is published, so a caller woken by `compact()` sees
        // them.
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_compacted
            .fetch_add(written, Ordering::Relaxed);
        self.counters
            .expired_reclaimed
            .fetch_add(expired_reclaimed, Ordering::Relaxed);
        let inputs: Vec<u64> = choice.all_file_numbers().collect();
        self.install_version(
            version,
            &inputs,
            outputs.into_iter().map(|(n, _, t)| (n, t)).collect(),
        );
        // Readers still holding an older SuperVersion keep their open `Table`s (an mmap or an
        // open file descriptor): unlinking the file does not disturb them (POSIX), and the
        // blocks they read after `remove_table` are simply cached again until evicted.
        for n in inputs {
            let path = self.tables_dir.join(table_file_name(n));
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "failed to delete compacted table");
            }
            self.cache.remove_table(n);
        }
        Ok(())
    }

    /// Installs `version`, closing tables `removed` and adding `added`.
    fn install_version(&self, version: Arc<Version>, removed: &[u64], added: Vec<(u64, Table)>) {
        let mut state = lock(&self.state);
        let cur = &state.current;
        let mut tables = cur.tables.clone();
        for n in removed {
            tables.remove(n);
        }
        tables.extend(added);
        let sv = SuperVersion {
            active: Arc::clone(&cur.active),
            imms: cur.imms.clone(),
            retained: cur.retained.clone(),
            version,
            tables,
        };
        self.install(&mut state, sv);
    }
}

impl Engine for LsmEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        self.inner.check_open()?;
        let (sv, seqno) = self.inner.point_read_view();
        self.inner.live_value(&sv, key, seqno, now_ms())
    }

    fn put(&self, key: &[u8], value: &[u8], expires_at_ms: Option<u64>) -> Result<()> {
        self.write_many(&[WriteOp::Put {
            key,
            value,
            expires_at_ms,
        }])
        .map(|_| ())
    }

    fn delete(&self, key: &[u8]) -> Result<bool> {
        let flags = self.write_many(&[WriteOp::Delete { key }])?;
        Ok(flags.first().copied().unwrap_or(false))
    }

    fn write_many(&self, ops: &[WriteOp<'_>]) -> Result<Vec<bool>> {
        self.inner.write_many(ops)
    }

    fn try_write_many_now(&self, ops: &[WriteOp<'_>]) -> Option<Result<Vec<bool>>> {
        self.inner.try_write_many_now(ops)
    }

    fn try_get_now(&self, key: &[u8]) -> Option<Result<Option<Value>>> {
        self.inner.try_get_now(key)
    }

    fn try_get_many_now(&self, keys: &[&[u8]]) -> Vec<Option<Result<Option<Value>>>> {
        self.inner.try_get_many_now(keys)
    }

    /// Merges the whole tree once: O(number of stored versions).
    fn page(&self, offset: u64, limit: usize) -> Result<Page> {
        let mut entries = Vec::new();
        let mut total = 0u64;
        self.for_each_live(None, |k, v| {
            if total >= offset && entries.len() < limit {
                entries.push((k, v));
            }
            total += 1;
            true
        })?;
        Ok(Page { entries, total })
    }

    fn scan(&self, start: Option<&[u8]>, limit: usize) -> Result<Vec<(Bytes, Value)>> {
        let mut entries = Vec::new();
        if limit == 0 {
            self.inner.check_open()?;
            return Ok(entries);
        }
        self.for_each_live(start, |k, v| {
            entries.push((k, v));
            entries.len() < limit
        })?;
        Ok(entries)
    }

    /// Merges the whole tree: O(number of stored versions).
    fn len(&self) -> Result<u64> {
        let mut n = 0u64;
        self.for_each_live(None, |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }

    /// `keys` and `live_bytes` are estimates: every stored version and tombstone in memtables
    /// and tables counts (see the [module docs](self#limits)). `log_rewrites` counts memtable
    /// flushes (each lets the WAL drop segments); `expired_reclaimed` counts expired values
    /// dropped by compactions.
    fn stats(&self) -> EngineStats {
        let sv = self.inner.current();
        let memtables = std::iter::once(&sv.active).chain(&sv.imms);
        let (mut keys, mut live_bytes) = (0u64, 0u64);
        for m in memtables {
            keys += m.len() as u64;
            live_bytes += m.approximate_bytes();
        }
        for level in 0..NUM_LEVELS {
            for t in sv.version.level(level) {
                keys += t.entry_count;
                live_bytes += t.file_size_bytes;
            }
        }
        let detailed = self.stats_detailed();
        let counters = detailed.counters;
        EngineStats {
            backend: Self::BACKEND,
            keys,
            live_bytes,
            log_bytes: detailed.wal_bytes,
            log_rewrites: counters.flushes,
            expired_reclaimed: counters.expired_reclaimed,
            levels: detailed
                .levels
                .iter()
                .map(|l| LevelFigures {
                    tables: l.tables as u64,
                    bytes: l.size_bytes,
                })
                .collect(),
            cache_hits: detailed.cache.hits,
            cache_misses: detailed.cache.misses,
            kept_memtable_bytes: detailed.cache.reserved_bytes,
            flushes: counters.flushes,
            compactions: counters.compactions,
            table_bytes_written: counters.bytes_flushed + counters.bytes_compacted,
            user_bytes_written: detailed.user_bytes_written,
            write_slowdowns: counters.write_slowdowns,
            write_stalls: counters.write_stalls,
        }
    }

    fn sync(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.wal.sync()
    }

    fn checkpoint(&self, dest: &Path) -> Result<()> {
        LsmEngine::checkpoint(self, dest).map(drop)
    }

    fn close(&self) -> Result<()> {
        {
            // Under the writer lock, so no write is half-way through when we flip the flag.
            let _writer = lock(&self.inner.writer);
            if !self.inner.lifecycle.close() {
                return Err(StorageError::Closed);
            }
        }
        self.stop_background();
        self.inner.wal.sync()
    }
}
