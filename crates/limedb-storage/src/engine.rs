//! The backend-agnostic [`Engine`] trait that shard servers call, and its plain data types.
//!
//! Every method is synchronous and may block on disk I/O: async callers run them through
//! `tokio::task::spawn_blocking` or a dedicated thread, never on an async worker.

use bytes::Bytes;

use crate::Result;

/// A stored value with its optional absolute expiry (milliseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The value bytes.
    pub data: Bytes,
    /// When the value stops existing, in ms since the Unix epoch; `None` lives forever.
    pub expires_at_ms: Option<u64>,
}

impl Value {
    /// Whether the value has expired at `now_ms` (expiry is inclusive: `expires_at_ms <= now_ms`).
    ///
    /// ```
    /// use limedb_storage::Value;
    /// let v = Value { data: "x".into(), expires_at_ms: Some(10) };
    /// assert!(!v.is_expired(9));
    /// assert!(v.is_expired(10));
    /// ```
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }
}

/// One page of a key listing, in ascending key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The entries of this page, ascending by key.
    pub entries: Vec<(Bytes, Value)>,
    /// The number of live keys in the whole engine when the page was taken.
    pub total: u64,
}

/// Figures describing an engine, for metrics and the admin API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Name of the backend, e.g. `"memory"`.
    pub backend: &'static str,
    /// Live (unexpired) keys.
    pub keys: u64,
    /// Sum of key and value lengths of live entries, in bytes.
    pub live_bytes: u64,
    /// Size of the log on disk, in bytes.
    pub log_bytes: u64,
    /// How many times the log was rewritten to drop dead records since open.
    pub log_rewrites: u64,
    /// How many expired keys were reclaimed from memory since open.
    pub expired_reclaimed: u64,
    /// Tables and their bytes per level, L0 first (LSM engines; empty for others).
    pub levels: Vec<LevelFigures>,
    /// Block cache lookups that found the block, since open (0 without a cache).
    pub cache_hits: u64,
    /// Block cache lookups that had to read the disk, since open.
    pub cache_misses: u64,
    /// Bytes of the memtable the last flush kept for point reads, lent from the block cache's
    /// budget (LSM engines; 0 when none is kept).
    pub kept_memtable_bytes: u64,
    /// Memtables flushed to tables since open.
    pub flushes: u64,
    /// Compactions run since open.
    pub compactions: u64,
    /// Bytes written to tables by flushes and compactions since open.
    pub table_bytes_written: u64,
    /// Key and value bytes written by users since open; with `table_bytes_written`, the
    /// write amplification.
    pub user_bytes_written: u64,
    /// Write batches paused to let compaction catch up, since open (LSM engines).
    pub write_slowdowns: u64,
    /// Write batches that waited for compaction before they could proceed, since open.
    pub write_stalls: u64,
}

/// One level of an LSM tree in [`EngineStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelFigures {
    /// Tables in the level.
    pub tables: u64,
    /// Their bytes on disk.
    pub bytes: u64,
}

/// Whether an engine can serve requests right now, as [`Engine::health`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The engine serves requests.
    Healthy,
    /// The engine cannot serve requests until something outside it recovers (a database server
    /// that is down, unreachable or restarting); `reason` names the cause for operators.
    Unavailable {
        /// What is wrong, e.g. "PostgreSQL is unavailable: cannot connect to
        /// limedb@127.0.0.1:5432/limedb_shard_1: ... Connection refused".
        reason: String,
    },
}

/// One write of a batch given to [`Engine::write_many`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp<'a> {
    /// As [`Engine::put`].
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Absolute expiry in ms since the Unix epoch, if any.
        expires_at_ms: Option<u64>,
    },
    /// As [`Engine::delete`].
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

/// A key-value storage engine: an ordered map from byte keys to [`Value`]s with expiry.
///
/// Implementations are shared between threads (`&self` everywhere) and do their own locking.
/// Keys with `expires_at_ms <= now_ms()` behave as absent for every method.
pub trait Engine: Send + Sync + 'static {
    /// The live value of `key`, or `None` if absent or expired.
    fn get(&self, key: &[u8]) -> Result<Option<Value>>;

    /// Stores `value` under `key`, replacing any previous value, with an optional absolute
    /// expiry. Returns once the write is as durable as the engine's sync policy promises.
    fn put(&self, key: &[u8], value: &[u8], expires_at_ms: Option<u64>) -> Result<()>;

    /// Removes `key`; `true` if a live (unexpired) key was removed.
    fn delete(&self, key: &[u8]) -> Result<bool>;

    /// Applies `ops` in order with the same effect and answers as calling [`Engine::put`] and
    /// [`Engine::delete`] one after another, but lets the engine share one log append and one
    /// fsync among them. Returns one flag per op: for a delete, whether it removed a live key;
    /// for a put, `false`.
    ///
    /// This is group commit for independent writes, not a transaction: after a crash a prefix
    /// of the batch may survive. When it returns an error, none of the ops may be acknowledged.
    fn write_many(&self, ops: &[WriteOp<'_>]) -> Result<Vec<bool>> {
        ops.iter()
            .map(|op| match *op {
                WriteOp::Put {
                    key,
                    value,
                    expires_at_ms,
                } => self.put(key, value, expires_at_ms).map(|()| false),
                WriteOp::Delete { key } => self.delete(key),
            })
            .collect()
    }

    /// Performs `op` at once if that needs no waiting for the disk (no fsync, no log
    /// maintenance; at most a moment's wait for another writer) and returns its answer as
    /// [`Engine::write_many`] would;
    /// returns `None` without writing anything otherwise, and the caller queues `op` for
    /// [`Engine::write_many`] on a thread that may block. Lets an async caller skip a thread
    /// hand-off for most writes. The default asks [`Engine::try_write_many_now`].
    fn try_write_now(&self, op: WriteOp<'_>) -> Option<Result<bool>> {
        self.try_write_many_now(std::slice::from_ref(&op))
            .map(|answer| answer.map(|flags| flags.first().copied().unwrap_or(false)))
    }

    /// [`Engine::try_write_now`] for a batch: performs all of `ops` at once, with the answers
    /// and the sharing of one log append of [`Engine::write_many`], or none of them (`None`).
    /// The default never writes at once.
    fn try_write_many_now(&self, ops: &[WriteOp<'_>]) -> Option<Result<Vec<bool>>> {
        let _ = ops;
        None
    }

    /// Live keys in ascending order, skipping `offset` of them and returning at most `limit`;
    /// `total` is the number of live keys.
    fn page(&self, offset: u64, limit: usize) -> Result<Page>;

    /// At most `limit` live entries with keys `>= start` (from the first key if `None`),
    /// ascending.
    fn scan(&self, start: Option<&[u8]>, limit: usize) -> Result<Vec<(Bytes, Value)>>;

    /// The number of live keys.
    fn len(&self) -> Result<u64>;

    /// Whether there are no live keys.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Current figures; cheap enough to call on every metrics scrape.
    fn stats(&self) -> EngineStats;

    /// Answers [`Engine::get`] at once if that needs no I/O (the key's newest version is in
    /// memory, or filters and cached blocks rule it out or find it), and `None` otherwise; the
    /// caller then runs [`Engine::get`] where it may block. Lets an async caller skip a thread
    /// hand-off, which costs far more than an in-memory lookup. The default never answers.
    fn try_get_now(&self, key: &[u8]) -> Option<Result<Option<Value>>> {
        let _ = key;
        None
    }

    /// [`Engine::try_get_now`] for each of `keys`, in order (a pipeline of reads): the engine
    /// may share work among them, such as one read view and overlapped memory lookups. The
    /// default asks [`Engine::try_get_now`] for each.
    fn try_get_many_now(&self, keys: &[&[u8]]) -> Vec<Option<Result<Option<Value>>>> {
        keys.iter().map(|key| self.try_get_now(key)).collect()
    }

    /// Whether the engine can serve requests, as last observed; never blocks, so an async
    /// caller may call it inline (a health endpoint). Engines that keep their data in local
    /// files are always healthy (a failed write shows as [`crate::StorageError::Poisoned`]
    /// instead); an engine that depends on a server reports it unreachable here.
    fn health(&self) -> Health {
        Health::Healthy
    }

    /// Writes a consistent copy of the database into `dest` (created if absent; it must not hold
    /// a database yet) that the same backend opens on its own, holding at least every write
    /// acknowledged before the call (writes racing with it may or may not be in it). Replicated
    /// shards build their Raft snapshots this way. The default refuses with
    /// [`crate::StorageError::Unsupported`].
    fn checkpoint(&self, dest: &std::path::Path) -> Result<()> {
        let _ = dest;
        Err(crate::StorageError::Unsupported {
            backend: self.stats().backend,
            operation: "checkpoints",
        })
    }

    /// Makes every write acknowledged so far durable (fsync), whatever the sync policy.
    fn sync(&self) -> Result<()>;

    /// Syncs, stops background work and releases the engine; every later call returns
    /// [`crate::StorageError::Closed`].
    fn close(&self) -> Result<()>;
}
