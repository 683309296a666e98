//! [`LsmEngine`]: the LSM-tree engine assembled from the building blocks of [`crate::lsm`],
//! implementing [`crate::Engine`]. Not yet wired into the server; shards still use
//! [`crate::MemoryEngine`].
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
//!   │   stall while 2 imms   │                         → TableWriter tables/<n>.sst
//!   │   freeze, wal.rotate ──┼──► imms (oldest..)     → manifest: add to L0, last seqno,
//!   │ answers: read at latest│                           log number → new SuperVersion
//!   │ wal.append (write(2)) ─┘                         → wal.delete_obsolete
//!   │ insert into active memtable                   2. else Leveled::pick(version)?
//!   └ unlock; Always: wal.sync_to (group commit)       → trivial move, or merge + cut
//!                                                        outputs → manifest → delete inputs
//!  readers: clone Arc<SuperVersion> (short lock)   3. else idle; Interval: wal.sync() each
//!   get: active → imms newest first → L0 newest       period
//!        first → L1.. (one table per level)
//!   scan/page/len: MergeIter over all of them → LiveIter (newest version per user key)
//! ```
//!
//! A `SuperVersion` is an immutable snapshot of everything a read needs: the active memtable,
//! the frozen ones, the [`Version`] and the open [`Table`]s. Freezing, flushing and compacting
//! each install a new one under a short lock; readers never wait for I/O of another thread.
//! Files of tables removed by a compaction are deleted at once; readers still holding the old
//! snapshot keep reading them through their open handle or mapping (POSIX unlink semantics).
//!
//! # Values and expiry
//!
//! A put is stored as `flags u8 | [expires_at_ms u64] | data` (see `value.rs`); a delete as a
//! tombstone. As in the memory engine a put whose expiry has already passed is written as a
//! delete, and a delete of a key that is not live writes nothing. An expired value reads as
//! absent. A merge compaction drops shadowed versions (no snapshots older than the latest exist
//! yet) and turns an expired value into a tombstone, or drops both when it writes the bottom
//! of the tree for that key range.
//!
//! # Limits
//!
//! - **Memory**: one active memtable of `memtable_bytes` (checked before each write, so it may
//!   pass the budget by one batch) plus at most `max_immutable_memtables` frozen ones waiting
//!   for the flush thread; a writer that would freeze a further one **stalls** until a flush
//!   finishes. There is no gradual slowdown before the stall yet.
//! - **Writes are serialised** by one writer lock (WAL append + memtable insert); the fsync of
//!   [`SyncPolicy::Always`] happens after the lock is released, so concurrent writers share one.
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
#[cfg(test)]
mod tests;
mod value;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::iter::{memtable_source, tables_source, LiveIter, MergeIter, Source};
use crate::engine::{Engine, EngineStats, Page, Value, WriteOp};
use crate::error::StorageError;
use crate::fsutil::fsync_dir;
use crate::lsm::cache::{BlockCache, CacheStats};
use crate::lsm::compaction::{leveled, Action, Choice, LeveledOptions};
use crate::lsm::key::{user_key, InternalKeyRef, ValueKind, MAX_SEQNO};
use crate::lsm::manifest::{Manifest, ManifestOptions, VersionEdit, CURRENT_FILE_NAME};
use crate::lsm::memtable::Memtable;
use crate::lsm::sstable::{ReadMode, Table, TableOptions, TableWriter};
use crate::lsm::version::{TableHandle, Version, NUM_LEVELS};
use crate::lsm::wal::{Wal, WalOptions, WriteBatch};
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
    /// Frozen memtables allowed to wait for the flush thread before writers stall. Default 2.
    pub max_immutable_memtables: usize,
    /// Budget of the block cache of decompressed data blocks. Default 64 MiB.
    pub block_cache_bytes: usize,
    /// Layout of the SSTables written.
    pub table: TableOptions,
    /// Leveled compaction thresholds.
    pub leveled: LeveledOptions,
    /// How tables are read: mmap (default) or pread.
    pub read_mode: ReadMode,
}

impl Default for LsmOptions {
    fn default() -> Self {
        LsmOptions {
            sync: SyncPolicy::default(),
            memtable_bytes: 64 << 20,
            max_immutable_memtables: 2,
            block_cache_bytes: 64 << 20,
            table: TableOptions::default(),
            leveled: LeveledOptions::default(),
            read_mode: ReadMode::default(),
        }
    }
}

/// Everything a read needs, as one immutable snapshot (see the [module docs](self)).
#[derive(Debug)]
struct SuperVersion {
    /// The memtable writers insert into.
    active: Arc<Memtable>,
    /// Frozen memtables waiting to be flushed, oldest first.
    imms: Vec<Arc<Memtable>>,
    version: Arc<Version>,
    /// Every table of `version`, open, by file number.
    tables: HashMap<u64, Table>,
}

impl SuperVersion {
    fn table(&self, file_number: u64) -> Result<&Table> {
        self.tables
            .get(&file_number)
            .ok_or_else(|| StorageError::InvalidInput {
                path: PathBuf::from(table_file_name(file_number)),
                reason: "table is in the version but not open (engine bug)".into(),
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

    /// The newest version of `key`: `Some((kind, value))`, or `None` if nothing holds it.
    fn get_newest(&self, key: &[u8]) -> Result<Option<(ValueKind, Bytes)>> {
        if let Some(hit) = self.active.get(key, MAX_SEQNO) {
            return Ok(Some(hit));
        }
        for m in self.imms.iter().rev() {
            if let Some(hit) = m.get(key, MAX_SEQNO) {
                return Ok(Some(hit));
            }
        }
        for level in 0..NUM_LEVELS {
            for handle in self.version.tables_for_user_key(level, key) {
                if let Some(hit) = self.table(handle.file_number)?.get(key, MAX_SEQNO)? {
                    return Ok(Some(hit));
                }
            }
        }
        Ok(None)
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
}

/// Counters for [`EngineStats`] and [`LsmEngine::counters`].
#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    compactions: AtomicU64,
    trivial_moves: AtomicU64,
    bytes_flushed: AtomicU64,
    bytes_compacted: AtomicU64,
    expired_reclaimed: AtomicU64,
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
    /// Expired values turned into tombstones or dropped by compactions.
    pub expired_reclaimed: u64,
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
    /// Wakes the background thread.
    work: Condvar,
    /// Signals progress of the background thread (stalled writers, `flush`, `wait_idle`).
    progress: Condvar,
    poisoned: AtomicBool,
    closed: AtomicBool,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
                    let value = op.value().cloned().unwrap_or_default();
                    active.insert(op.key(), seqno, op.kind(), value);
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

        let current = Arc::new(SuperVersion {
            active: Arc::new(active),
            imms: Vec::new(),
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
            state: Mutex::new(State {
                current,
                stop: false,
                busy: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
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

    /// Freezes the active memtable (if it holds anything) and waits until every frozen
    /// memtable has been flushed to an SSTable.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_writable()?;
        {
            let _writer = lock(&self.inner.writer);
            self.inner.check_writable()?;
            let mut state = lock(&self.inner.state);
            if !state.current.active.is_empty() {
                state = self.inner.wait_for_room(state)?;
                self.inner.freeze(&mut state)?;
            }
        }
        let mut state = lock(&self.inner.state);
        while !state.current.imms.is_empty() {
            self.inner.check_writable()?;
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
        Arc::clone(&lock(&self.inner.state).current.version)
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
            expired_reclaimed: c.expired_reclaimed.load(Ordering::Relaxed),
        }
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
        let sv = self.inner.snapshot();
        let merge = MergeIter::new(sv.sources(start)?)?;
        for entry in LiveIter::new(merge, now_ms(), &self.inner.dir) {
            let (k, v) = entry?;
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }
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
        if !self.inner.closed.load(Ordering::SeqCst) && !self.inner.wal.is_poisoned() {
            if let Err(error) = self.inner.wal.sync() {
                tracing::warn!(%error, "fsync on drop of LSM engine failed");
            }
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        if self.poisoned.load(Ordering::SeqCst) || self.wal.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    fn poison(&self, error: &StorageError) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            tracing::error!(%error, dir = %self.dir.display(), "LSM engine poisoned; refusing writes");
        }
        self.progress.notify_all();
    }

    fn snapshot(&self) -> Arc<SuperVersion> {
        Arc::clone(&lock(&self.state).current)
    }

    /// Waits (a write stall) while the maximum number of frozen memtables wait for a flush.
    fn wait_for_room<'a>(&self, mut state: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        let max = self.options.max_immutable_memtables.max(1);
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
        state.current = Arc::new(SuperVersion {
            active: Arc::new(Memtable::new()),
            imms,
            version: Arc::clone(&sv.version),
            tables: sv.tables.clone(),
        });
        self.work.notify_all();
        Ok(())
    }

    fn write_many(&self, ops: &[WriteOp<'_>]) -> Result<Vec<bool>> {
        check_ops(ops)?;
        self.check_writable()?;
        let now = now_ms();
        let expired = |t: Option<u64>| t.is_some_and(|t| t <= now);
        let (flags, last_seqno) = {
            let _writer = lock(&self.writer);
            self.check_writable()?;
            let sv = {
                let mut state = lock(&self.state);
                if state.current.active.approximate_bytes() >= self.options.memtable_bytes {
                    state = self.wait_for_room(state)?;
                    self.freeze(&mut state)?;
                }
                Arc::clone(&state.current)
            };
            // Decide each op's record and answer as if the ops ran one by one. Writers are
            // serialised by the writer lock, so nothing changes underneath.
            let mut flags = Vec::with_capacity(ops.len());
            let mut batch = WriteBatch::new();
            let mut touched: HashMap<&[u8], bool> = HashMap::new();
            for op in ops {
                match *op {
                    WriteOp::Put {
                        key,
                        value,
                        expires_at_ms,
                    } if !expired(expires_at_ms) => {
                        batch.put(
                            Bytes::copy_from_slice(key),
                            value::encode(value, expires_at_ms),
                        );
                        touched.insert(key, true);
                        flags.push(false);
                    }
                    // A put that has already expired is a delete; deleting a key that is not
                    // live needs no record (expiry is absolute).
                    WriteOp::Put { key, .. } | WriteOp::Delete { key } => {
                        let live = match touched.get(key) {
                            Some(&live) => live,
                            None => self.live_value(&sv, key, now)?.is_some(),
                        };
                        if live {
                            batch.delete(Bytes::copy_from_slice(key));
                        }
                        touched.insert(key, false);
                        flags.push(matches!(op, WriteOp::Delete { .. }) && live);
                    }
                }
            }
            if batch.is_empty() {
                return Ok(flags);
            }
            let last = self.wal.append(&batch)?;
            let first = last + 1 - batch.len() as u64;
            for (seqno, op) in (first..).zip(batch.ops()) {
                let value = op.value().cloned().unwrap_or_default();
                sv.active.insert(op.key(), seqno, op.kind(), value);
            }
            (flags, last)
        };
        if self.options.sync == SyncPolicy::Always {
            self.wal.sync_to(last_seqno)?;
        }
        Ok(flags)
    }

    /// The live value of `key` in `sv` at `now`.
    fn live_value(&self, sv: &SuperVersion, key: &[u8], now: u64) -> Result<Option<Value>> {
        match sv.get_newest(key)? {
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
            enum Job {
                Flush(Arc<SuperVersion>),
                Compact(Arc<SuperVersion>, Box<Choice>),
            }
            let job = {
                let mut state = lock(&self.state);
                loop {
                    if state.stop {
                        state.busy = false;
                        self.progress.notify_all();
                        return;
                    }
                    let healthy = !self.poisoned.load(Ordering::SeqCst);
                    if healthy && !state.current.imms.is_empty() {
                        state.busy = true;
                        break Job::Flush(Arc::clone(&state.current));
                    }
                    if healthy {
                        if let Some(choice) =
                            leveled::pick(&state.current.version, &self.options.leveled)
                        {
                            state.busy = true;
                            break Job::Compact(Arc::clone(&state.current), Box::new(choice));
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
                Job::Compact(sv, choice) => self.run_compaction(&sv, &choice),
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
        // No snapshot older than the latest exists: keep only the newest version of each key.
        let mut last_user_key: Option<Bytes> = None;
        for entry in memtable.iter() {
            let uk = entry.key.user_key();
            if last_user_key.as_deref() == Some(uk) {
                continue;
            }
            last_user_key = Some(Bytes::copy_from_slice(uk));
            writer.add(entry.key.encoded(), &entry.value)?;
        }
        let (handle, table) = self.finish_table(n, writer)?;
        fsync_dir(&self.tables_dir)?;
        let size = handle.file_size_bytes;
        let mut edit = VersionEdit::default();
        edit.add_table(0, handle)
            .set_last_seqno(max_seqno.max(sv.version.last_seqno()))
            .set_log_number(max_seqno + 1);
        let version = manifest.log_and_apply(edit)?;
        drop(manifest);
        {
            let mut state = lock(&self.state);
            let cur = &state.current;
            let mut imms = cur.imms.clone();
            if imms.first().is_some_and(|m| Arc::ptr_eq(m, memtable)) {
                imms.remove(0);
            }
            let mut tables = cur.tables.clone();
            tables.insert(n, table);
            state.current = Arc::new(SuperVersion {
                active: Arc::clone(&cur.active),
                imms,
                version,
                tables,
            });
        }
        self.progress.notify_all();
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_flushed
            .fetch_add(size, Ordering::Relaxed);
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
        let mut manifest = lock(&self.manifest);
        let mut outputs: Vec<(u64, TableHandle, Table)> = Vec::new();
        let mut current: Option<(u64, TableWriter)> = None;
        let mut last_user_key: Option<Bytes> = None;
        let mut expired_reclaimed = 0u64;
        let result = (|| -> Result<()> {
            for entry in MergeIter::new(sources)? {
                let (key, data) = entry?;
                let uk = user_key(&key);
                if last_user_key.as_deref() == Some(uk) {
                    continue; // shadowed by a newer version
                }
                last_user_key = Some(key.slice(..uk.len()));
                let Some(ikey) = InternalKeyRef::decode(&key) else {
                    return Err(StorageError::Corrupt {
                        path: self.tables_dir.clone(),
                        offset: 0,
                        reason: "malformed internal key during compaction".into(),
                    });
                };
                let mut kind = ikey.kind;
                if kind == ValueKind::Put && value::decode(&data, &self.dir)?.is_expired(now) {
                    expired_reclaimed += 1;
                    kind = ValueKind::Delete;
                }
                if kind == ValueKind::Delete && choice.bottommost {
                    continue;
                }
                let cut = current
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
        let inputs: Vec<u64> = choice.all_file_numbers().collect();
        self.install_version(
            version,
            &inputs,
            outputs.into_iter().map(|(n, _, t)| (n, t)).collect(),
        );
        for n in inputs {
            let path = self.tables_dir.join(table_file_name(n));
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "failed to delete compacted table");
            }
            self.cache.remove_table(n);
        }
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_compacted
            .fetch_add(written, Ordering::Relaxed);
        self.counters
            .expired_reclaimed
            .fetch_add(expired_reclaimed, Ordering::Relaxed);
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
        state.current = Arc::new(SuperVersion {
            active: Arc::clone(&cur.active),
            imms: cur.imms.clone(),
            version,
            tables,
        });
    }

    /// Total size of the WAL segments on disk.
    fn wal_bytes(&self) -> u64 {
        self.wal
            .segment_paths()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

impl Engine for LsmEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        self.inner.check_open()?;
        let sv = self.inner.snapshot();
        self.inner.live_value(&sv, key, now_ms())
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
        let sv = self.inner.snapshot();
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
        let counters = self.counters();
        EngineStats {
            backend: Self::BACKEND,
            keys,
            live_bytes,
            log_bytes: self.inner.wal_bytes(),
            log_rewrites: counters.flushes,
            expired_reclaimed: counters.expired_reclaimed,
        }
    }

    fn sync(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.wal.sync()
    }

    fn close(&self) -> Result<()> {
        {
            // Under the writer lock, so no write is half-way through when we flip the flag.
            let _writer = lock(&self.inner.writer);
            if self.inner.closed.swap(true, Ordering::SeqCst) {
                return Err(StorageError::Closed);
            }
        }
        self.stop_background();
        self.inner.wal.sync()
    }
}
