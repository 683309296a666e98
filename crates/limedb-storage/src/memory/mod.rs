//! The memory backend: [`MemoryEngine`], an ordered in-memory map made durable by an
//! append-only log.
//!
//! This module owns the in-memory state (a `BTreeMap` plus a TTL index), the write path (log
//! first, then map), group commit, the background thread that reaps expired keys and runs
//! interval fsyncs, and the decision to rewrite the log. The byte format, replay and the
//! rewrite mechanics live in `memory/log.rs`.
//!
//! # Write path
//!
//! ```text
//!  put/delete ── lock log ──► write(2) record ──► apply to map ──► unlock log ──► fsync?
//!                  │                                  (write lock, brief)       (Always:
//!                  └ serialises writers, so map order == log order              group commit)
//! ```
//!
//! Readers take only the map's read lock and never wait for disk I/O. A value is visible to
//! readers once it is in the map, which under [`SyncPolicy::Always`] may be just before its
//! fsync completes.
//!
//! # Log rewrite
//!
//! When the log exceeds `max(rewrite_min_bytes, rewrite_ratio × compact size)`, where the
//! compact size is what a log holding only the current entries would take, the next write
//! through [`Engine::write_many`] (or `put`/`delete`) rewrites it in place (see
//! `memory/log.rs`); [`Engine::try_write_now`] never does, it declines instead. The rewrite
//! holds the log lock, so **writers wait while it runs**; readers do not.
//!
//! # Expiry
//!
//! Expiry is absolute, so it needs no log records: expired keys read as absent immediately,
//! the background thread removes them from memory every `reap_interval`, and replay and
//! rewrite drop them.

pub(crate) mod log;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::log::{LogWriter, Record};
use crate::engine::{Engine, EngineStats, Page, Value, WriteOp};
use crate::error::StorageError;
use crate::lifecycle::Lifecycle;
use crate::sync::SyncPolicy;
use crate::{now_ms, Result, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Tuning for [`MemoryEngine`].
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryOptions {
    /// When the log is fsynced.
    pub sync: SyncPolicy,
    /// The log is never rewritten while smaller than this many bytes (default 64 MiB).
    pub rewrite_min_bytes: u64,
    /// Rewrite once the log is this many times larger than a log holding only the current
    /// entries would be (default 2.0; values below 1.0 count as 1.0).
    pub rewrite_ratio: f64,
    /// How often the background thread reclaims expired keys (default 100 ms).
    pub reap_interval: Duration,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            sync: SyncPolicy::default(),
            rewrite_min_bytes: 64 << 20,
            rewrite_ratio: 2.0,
            reap_interval: Duration::from_millis(100),
        }
    }
}

/// An ordered in-memory map made durable by the append-only log `<dir>/memory.log`.
///
/// Every entry lives in memory; the log is replayed on [`MemoryEngine::open`]. Dropping the
/// engine stops its background thread and makes a best-effort fsync; call [`Engine::close`] to
/// see errors.
///
/// ```
/// use limedb_storage::{Engine, MemoryEngine, MemoryOptions, SyncPolicy};
///
/// let dir = tempfile::tempdir()?;
/// let options = MemoryOptions { sync: SyncPolicy::Always, ..MemoryOptions::default() };
/// let engine = MemoryEngine::open(dir.path(), options.clone())?;
/// engine.put(b"a", b"1", None)?;
/// engine.close()?;
///
/// let engine = MemoryEngine::open(dir.path(), options)?;
/// assert_eq!(engine.len()?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
    background: Mutex<Option<JoinHandle<()>>>,
}

/// State shared between the engine handle and its background thread.
#[derive(Debug)]
struct Inner {
    path: PathBuf,
    options: MemoryOptions,
    /// The map; writers take the write lock only to apply, after the log write.
    state: RwLock<State>,
    /// The append side of the log. Held across write + apply so map order matches log order.
    log: Mutex<LogSlot>,
    /// The fsync side of the log (a second handle), for group commit without the log lock.
    /// Lock order: `log` before `syncer`.
    syncer: Mutex<Syncer>,
    /// Sequence number of the last record written to the log (1-based; 0 = none since open).
    written_seq: AtomicU64,
    /// Closed and poisoned flags.
    lifecycle: Lifecycle,
    /// Set while a log rewrite holds the log lock, so quick writers do not queue behind it.
    rewriting: AtomicBool,
    log_bytes: AtomicU64,
    log_rewrites: AtomicU64,
    expired_reclaimed: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
    /// Test hooks that make the next append or fsync fail.
    #[cfg(test)]
    fail_next_write: AtomicBool,
    #[cfg(test)]
    fail_next_sync: AtomicBool,
}

#[derive(Debug)]
struct LogSlot {
    writer: LogWriter,
    /// After a failed rewrite, do not retry until the log is larger than this.
    retry_rewrite_above_bytes: u64,
}

#[derive(Debug)]
struct Syncer {
    file: File,
    /// Every record with a sequence number up to this one is on stable storage.
    synced_seq: u64,
}

/// The in-memory map and its TTL index, kept consistent with each other.
#[derive(Debug, Default)]
struct State {
    map: BTreeMap<Bytes, Value>,
    /// `(expires_at_ms, key)` for every entry in `map` that has an expiry.
    ttl: BTreeSet<(u64, Bytes)>,
    /// Sum of key and value lengths of every entry in `map` (expired or not).
    map_bytes: u64,
}

fn entry_bytes(key: &[u8], value: &Value) -> u64 {
    (key.len() + value.data.len()) as u64
}

impl State {
    fn insert(&mut self, key: Bytes, value: Value) {
        self.remove(&key);
        if let Some(t) = value.expires_at_ms {
            self.ttl.insert((t, key.clone()));
        }
        self.map_bytes += entry_bytes(&key, &value);
        self.map.insert(key, value);
    }

    fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let (key, value) = self.map.remove_entry(key)?;
        self.map_bytes = self.map_bytes.saturating_sub(entry_bytes(&key, &value));
        if let Some(t) = value.expires_at_ms {
            self.ttl.remove(&(t, key));
        }
        Some(value)
    }

    /// The TTL entries that have expired at `now`, oldest first.
    fn expired(&self, now: u64) -> impl Iterator<Item = &(u64, Bytes)> {
        self.ttl
            .range(..(now.saturating_add(1), Bytes::new()))
            .filter(move |(t, _)| *t <= now)
    }

    /// Removes the entry whose expiry is earliest if it has expired at `now`.
    fn pop_expired(&mut self, now: u64) -> bool {
        match self.ttl.first() {
            Some((t, _)) if *t <= now => {}
            _ => return false,
        }
        if let Some((_, key)) = self.ttl.pop_first() {
            if let Some(value) = self.map.remove(&key) {
                self.map_bytes = self.map_bytes.saturating_sub(entry_bytes(&key, &value));
            }
        }
        true
    }

    fn live_keys(&self, now: u64) -> u64 {
        (self.map.len() - self.expired(now).count()) as u64
    }

    fn live_bytes(&self, now: u64) -> u64 {
        let dead: u64 = self
            .expired(now)
            .filter_map(|(_, k)| self.map.get(k).map(|v| entry_bytes(k, v)))
            .sum();
        self.map_bytes.saturating_sub(dead)
    }

    /// Size of a log holding exactly the entries in the map.
    fn compact_log_bytes(&self) -> u64 {
        log::FILE_HEADER_LEN + self.map.len() as u64 * log::PUT_OVERHEAD_BYTES + self.map_bytes
    }
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
        if value.len() > MAX_VALUE_BYTES {
            return Err(StorageError::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_BYTES,
            });
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Expired keys removed per write-lock acquisition, so readers are not starved.
const REAP_BATCH: usize = 1024;

impl MemoryEngine {
    /// The value of [`EngineStats::backend`] for this engine.
    pub const BACKEND: &'static str = "memory";

    /// Opens the engine in `dir` (created if absent), replaying `dir/memory.log`.
    ///
    /// A torn final record is truncated with a warning; any other damage fails with
    /// [`StorageError::Corrupt`]. A leftover `memory.log.tmp` from an interrupted rewrite is
    /// deleted. If the replayed log is over the rewrite threshold it is rewritten before
    /// returning.
    pub fn open(dir: impl AsRef<Path>, options: MemoryOptions) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(StorageError::io("failed to create storage directory", dir))?;
        let path = dir.join(log::LOG_FILE_NAME);
        let tmp = log::tmp_path(&path);
        match std::fs::remove_file(&tmp) {
            Ok(()) => tracing::warn!(
                path = %tmp.display(),
                "removed a leftover log from an interrupted rewrite"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::io("failed to remove leftover log", &tmp)(e));
            }
        }

        let now = now_ms();
        let mut state = State::default();
        let writer = log::open_log(&path, |record, payload| match record {
            Record::Put {
                key,
                value,
                expires_at_ms,
            } => {
                let value = Value {
                    data: payload.slice_ref(value),
                    expires_at_ms,
                };
                if value.is_expired(now) {
                    state.remove(key);
                } else {
                    state.insert(Bytes::copy_from_slice(key), value);
                }
            }
            Record::Delete { key } => {
                state.remove(key);
            }
        })?;
        let syncer = Syncer {
            file: writer.sync_handle()?,
            synced_seq: 0,
        };
        tracing::info!(
            path = %path.display(),
            keys = state.map.len(),
            log_bytes = writer.len_bytes(),
            "opened memory engine"
        );

        let inner = Arc::new(Inner {
            path,
            log_bytes: AtomicU64::new(writer.len_bytes()),
            options,
            state: RwLock::new(state),
            log: Mutex::new(LogSlot {
                writer,
                retry_rewrite_above_bytes: 0,
            }),
            syncer: Mutex::new(syncer),
            written_seq: AtomicU64::new(0),
            lifecycle: Lifecycle::default(),
            rewriting: AtomicBool::new(false),
            log_rewrites: AtomicU64::new(0),
            expired_reclaimed: AtomicU64::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
        });

        {
            let mut slot = lock(&inner.log);
            if inner.should_rewrite(&read(&inner.state), &slot) {
                inner.rewrite_locked(&mut slot)?;
            }
        }

        let worker = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("limedb-memory-bg".into())
            .spawn(move || worker.run_background())
            .map_err(StorageError::io(
                "failed to start background thread for",
                dir,
            ))?;
        Ok(MemoryEngine {
            inner,
            background: Mutex::new(Some(handle)),
        })
    }

    /// Signals the background thread to stop and joins it.
    fn stop_background(&self) {
        *lock(&self.inner.stop) = true;
        self.inner.wake.notify_all();
        if let Some(handle) = lock(&self.background).take() {
            if handle.join().is_err() {
                tracing::error!("memory engine background thread panicked");
            }
        }
    }

    /// Test hook: the next log append fails as if `write(2)` had.
    #[cfg(test)]
    fn fail_next_write(&self) {
        self.inner.fail_next_write.store(true, Ordering::SeqCst);
    }

    /// Test hook: the next fsync fails.
    #[cfg(test)]
    fn fail_next_sync(&self) {
        self.inner.fail_next_sync.store(true, Ordering::SeqCst);
    }
}

impl Drop for MemoryEngine {
    fn drop(&mut self) {
        self.stop_background();
        let inner = &self.inner;
        if !inner.lifecycle.is_closed() && !inner.lifecycle.is_poisoned() {
            if let Err(error) = inner.sync_written() {
                tracing::warn!(%error, "fsync on drop of memory engine failed");
            }
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        self.lifecycle.check_open()
    }

    fn check_writable(&self) -> Result<()> {
        self.lifecycle.check_writable()
    }

    fn poison(&self, error: &StorageError) {
        if self.lifecycle.poison() {
            tracing::error!(%error, path = %self.path.display(), "memory engine poisoned; refusing writes");
        }
    }

    /// Logs and applies `ops` in order, with the log lock held by the caller, answering each
    /// as a lone `put`/`delete` would. Returns the answers and, if anything was logged, the
    /// sequence number to pass to [`Inner::sync_after_write`]. `may_rewrite` allows a log
    /// rewrite afterwards when one is due.
    fn write_locked(
        &self,
        slot: &mut LogSlot,
        ops: &[WriteOp<'_>],
        may_rewrite: bool,
    ) -> Result<(Vec<bool>, Option<u64>)> {
        self.check_writable()?;
        let now = now_ms();
        let expired = |t: Option<u64>| t.is_some_and(|t| t <= now);
        // Decide each op's record and answer as if the ops ran one by one: keys touched
        // earlier in the batch are looked up in `touched`, others in the map. Writers are
        // serialised by the log lock, so the map cannot change underneath.
        let mut flags = Vec::with_capacity(ops.len());
        let mut records = Vec::with_capacity(ops.len());
        {
            // Only deletes (and puts that have already expired) need the map, and only batches
            // need `touched`: a lone put, the common case, takes neither.
            let mut state = None;
            let track = ops.len() > 1;
            let mut touched: HashMap<&[u8], bool> = HashMap::new();
            for op in ops {
                match *op {
                    WriteOp::Put {
                        key,
                        value,
                        expires_at_ms,
                    } if !expired(expires_at_ms) => {
                        records.push(Record::Put {
                            key,
                            value,
                            expires_at_ms,
                        });
                        if track {
                            touched.insert(key, true);
                        }
                        flags.push(false);
                    }
                    // A put that has already expired is a delete (and `Some(0)` is not
                    // encodable). Deleting an absent or expired key needs no record: replay
                    // re-derives expiry.
                    WriteOp::Put { key, .. } | WriteOp::Delete { key } => {
                        let live = touched.get(key).copied().unwrap_or_else(|| {
                            let state = state.get_or_insert_with(|| read(&self.state));
                            state.map.get(key).is_some_and(|v| !v.is_expired(now))
                        });
                        if live {
                            records.push(Record::Delete { key });
                        }
                        if track {
                            touched.insert(key, false);
                        }
                        flags.push(matches!(op, WriteOp::Delete { .. }) && live);
                    }
                }
            }
        }
        let apply = |state: &mut State| {
            for op in ops {
                match *op {
                    WriteOp::Put {
                        key,
                        value,
                        expires_at_ms,
                    } if !expired(expires_at_ms) => state.insert(
                        Bytes::copy_from_slice(key),
                        Value {
                            data: Bytes::copy_from_slice(value),
                            expires_at_ms,
                        },
                    ),
                    WriteOp::Put { key, .. } | WriteOp::Delete { key } => {
                        if state.remove(key).is_some_and(|v| v.is_expired(now)) {
                            self.expired_reclaimed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        };
        if records.is_empty() {
            apply(&mut write(&self.state));
            return Ok((flags, None));
        }
        let seq = self.append_locked(slot, &records, apply, may_rewrite)?;
        Ok((flags, Some(seq)))
    }

    /// Writes `records` to the log with one append, then applies them with `apply`, with the
    /// log lock held by the caller. Returns the append's sequence number for
    /// [`Inner::sync_after_write`].
    fn append_locked(
        &self,
        slot: &mut LogSlot,
        records: &[Record<'_>],
        apply: impl FnOnce(&mut State),
        may_rewrite: bool,
    ) -> Result<u64> {
        self.check_writable()?;
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::SeqCst) {
            let error = StorageError::io("failed to append to log", &self.path)(
                std::io::Error::other("injected write failure"),
            );
            self.poison(&error);
            return Err(error);
        }
        if let Err(error) = slot.writer.append(records) {
            self.poison(&error);
            return Err(error);
        }
        self.log_bytes
            .store(slot.writer.len_bytes(), Ordering::Relaxed);
        let seq = self.written_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let rewrite = {
            let mut state = write(&self.state);
            apply(&mut state);
            may_rewrite && self.should_rewrite(&state, slot)
        };
        if rewrite {
            self.rewrite_locked(slot)?;
        }
        Ok(seq)
    }

    /// Called after the log lock is released: fsyncs up to `seq` under [`SyncPolicy::Always`].
    fn sync_after_write(&self, seq: u64) -> Result<()> {
        match self.options.sync {
            SyncPolicy::Always => self.sync_to(seq),
            SyncPolicy::Interval(_) | SyncPolicy::Never => Ok(()),
        }
    }

    /// fsyncs every record written so far.
    fn sync_written(&self) -> Result<()> {
        self.sync_to(self.written_seq.load(Ordering::SeqCst))
    }

    /// Group commit: returns once record `seq` is on stable storage. A caller that finds it
    /// already synced by another returns without an fsync; otherwise it fsyncs everything
    /// written so far, covering every writer queued behind it.
    fn sync_to(&self, seq: u64) -> Result<()> {
        let mut syncer = lock(&self.syncer);
        if syncer.synced_seq >= seq {
            return Ok(());
        }
        // After a failed fsync the kernel may have dropped dirty pages; never retry.
        if self.lifecycle.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        let target = self.written_seq.load(Ordering::SeqCst);
        let result = syncer.file.sync_data();
        #[cfg(test)]
        let result = if self.fail_next_sync.swap(false, Ordering::SeqCst) {
            Err(std::io::Error::other("injected fsync failure"))
        } else {
            result
        };
        if let Err(e) = result {
            let error = StorageError::io("failed to fsync log", &self.path)(e);
            self.poison(&error);
            return Err(error);
        }
        syncer.synced_seq = target;
        Ok(())
    }

    fn should_rewrite(&self, state: &State, slot: &LogSlot) -> bool {
        let log_bytes = slot.writer.len_bytes();
        if log_bytes <= slot.retry_rewrite_above_bytes {
            return false;
        }
        let ratio = self.options.rewrite_ratio.max(1.0);
        let scaled = ratio * state.compact_log_bytes() as f64;
        let threshold = self.options.rewrite_min_bytes.max(scaled as u64);
        log_bytes > threshold
    }

    /// Rewrites the log with only live entries. The caller holds the log lock, so writers
    /// wait; readers continue.
    fn rewrite_locked(&self, slot: &mut LogSlot) -> Result<()> {
        self.rewriting.store(true, Ordering::Release);
        let result = self.rewrite_flagged(slot);
        self.rewriting.store(false, Ordering::Release);
        result
    }

    fn rewrite_flagged(&self, slot: &mut LogSlot) -> Result<()> {
        let started = Instant::now();
        let old_bytes = slot.writer.len_bytes();
        let now = now_ms();
        let result = {
            let state = read(&self.state);
            log::rewrite(
                &self.path,
                state.map.iter().filter(|(_, v)| !v.is_expired(now)),
            )
        };
        let writer = match result {
            Ok(writer) => writer,
            Err(failure) if !failure.after_rename => {
                // The old log is untouched and still authoritative; keep appending to it.
                tracing::warn!(error = %failure.error, "log rewrite failed; will retry later");
                slot.retry_rewrite_above_bytes =
                    old_bytes.saturating_add(self.options.rewrite_min_bytes.max(1 << 20));
                return Ok(());
            }
            Err(failure) => {
                self.poison(&failure.error);
                return Err(failure.error);
            }
        };
        let handle = match writer.sync_handle() {
            Ok(handle) => handle,
            Err(error) => {
                self.poison(&error);
                return Err(error);
            }
        };
        {
            // The new file is fsynced and holds every record written so far.
            let mut syncer = lock(&self.syncer);
            syncer.file = handle;
            syncer.synced_seq = self.written_seq.load(Ordering::SeqCst);
        }
        slot.writer = writer;
        slot.retry_rewrite_above_bytes = 0;
        self.log_bytes
            .store(slot.writer.len_bytes(), Ordering::Relaxed);
        self.log_rewrites.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            path = %self.path.display(),
            old_bytes,
            new_bytes = slot.writer.len_bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rewrote log"
        );
        Ok(())
    }

    /// Removes every entry expired at `now` from memory.
    fn reap_expired(&self, now: u64) {
        loop {
            if read(&self.state).expired(now).next().is_none() {
                return;
            }
            let mut state = write(&self.state);
            let mut reaped = 0u64;
            while (reaped as usize) < REAP_BATCH && state.pop_expired(now) {
                reaped += 1;
            }
            drop(state);
            self.expired_reclaimed.fetch_add(reaped, Ordering::Relaxed);
        }
    }

    /// The background thread: reaps expired keys and runs interval fsyncs until stopped.
    fn run_background(&self) {
        let reap = self.options.reap_interval.max(Duration::from_millis(1));
        let tick = match self.options.sync {
            SyncPolicy::Interval(period) => reap.min(period.max(Duration::from_millis(1))),
            SyncPolicy::Always | SyncPolicy::Never => reap,
        };
        let mut last_sync = Instant::now();
        let mut last_reap = Instant::now();
        loop {
            {
                let stop = lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wake
                    .wait_timeout(stop, tick)
                    .unwrap_or_else(PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            if last_reap.elapsed() >= reap {
                last_reap = Instant::now();
                self.reap_expired(now_ms());
            }
            if let SyncPolicy::Interval(period) = self.options.sync {
                if last_sync.elapsed() >= period && !self.lifecycle.is_poisoned() {
                    last_sync = Instant::now();
                    if let Err(error) = self.sync_written() {
                        tracing::warn!(%error, "interval fsync failed");
                    }
                }
            }
        }
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        self.inner.check_open()?;
        let now = now_ms();
        let state = read(&self.inner.state);
        Ok(state.map.get(key).filter(|v| !v.is_expired(now)).cloned())
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

    fn page(&self, offset: u64, limit: usize) -> Result<Page> {
        self.inner.check_open()?;
        let now = now_ms();
        let state = read(&self.inner.state);
        let entries = state
            .map
            .iter()
            .filter(|(_, v)| !v.is_expired(now))
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Page {
            entries,
            total: state.live_keys(now),
        })
    }

    fn scan(&self, start: Option<&[u8]>, limit: usize) -> Result<Vec<(Bytes, Value)>> {
        self.inner.check_open()?;
        let now = now_ms();
        let state = read(&self.inner.state);
        let lower = start.map_or(Bound::Unbounded, Bound::Included);
        Ok(state
            .map
            .range::<[u8], _>((lower, Bound::Unbounded))
            .filter(|(_, v)| !v.is_expired(now))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write_many(&self, ops: &[WriteOp<'_>]) -> Result<Vec<bool>> {
        check_ops(ops)?;
        self.inner.check_writable()?;
        let (flags, seq) = {
            let mut slot = lock(&self.inner.log);
            self.inner.write_locked(&mut slot, ops, true)?
        };
        if let Some(seq) = seq {
            self.inner.sync_after_write(seq)?;
        }
        Ok(flags)
    }

    /// Writes at once unless that would wait for the disk: under [`SyncPolicy::Always`] (an
    /// fsync), while a log rewrite runs, or when one is due. It may wait a moment for another
    /// writer's append.
    fn try_write_many_now(&self, ops: &[WriteOp<'_>]) -> Option<Result<Vec<bool>>> {
        if matches!(self.inner.options.sync, SyncPolicy::Always) {
            return None;
        }
        if let Err(e) = check_ops(ops).and_then(|()| self.inner.check_writable()) {
            return Some(Err(e));
        }
        // Another writer holds the log for one append (microseconds): wait for it. A rewrite
        // holds it far longer: never wait for one. (A writer that checks just before a rewrite
        // starts may still wait for it; rewrites are rare, so this is rare.)
        if self.inner.rewriting.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = lock(&self.inner.log);
        if self.inner.should_rewrite(&read(&self.inner.state), &slot) {
            return None;
        }
        Some(
            self.inner
                .write_locked(&mut slot, ops, false)
                .map(|(flags, _)| flags),
        )
    }

    /// Every read is answered from memory.
    fn try_get_now(&self, key: &[u8]) -> Option<Result<Option<Value>>> {
        Some(self.get(key))
    }

    fn len(&self) -> Result<u64> {
        self.inner.check_open()?;
        Ok(read(&self.inner.state).live_keys(now_ms()))
    }

    fn stats(&self) -> EngineStats {
        let now = now_ms();
        let (keys, live_bytes) = {
            let state = read(&self.inner.state);
            (state.live_keys(now), state.live_bytes(now))
        };
        EngineStats {
            backend: Self::BACKEND,
            keys,
            live_bytes,
            log_bytes: self.inner.log_bytes.load(Ordering::Relaxed),
            log_rewrites: self.inner.log_rewrites.load(Ordering::Relaxed),
            expired_reclaimed: self.inner.expired_reclaimed.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }

    fn sync(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.sync_written()
    }

    fn close(&self) -> Result<()> {
        {
            // Under the log lock, so no write is half-way through when we flip the flag.
            let _slot = lock(&self.inner.log);
            if !self.inner.lifecycle.close() {
                return Err(StorageError::Closed);
            }
        }
        self.stop_background();
        self.inner.sync_written()
    }
}
