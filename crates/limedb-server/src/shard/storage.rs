//! How a shard runs engine calls from async code without stalling the runtime.
//!
//! The engine is synchronous. Handing every call to tokio's blocking pool costs a thread wake-up
//! and two context switches per request, which on a small machine costs more than the call
//! itself, so [`Storage`] picks the cheapest safe way per call from the engine's own hints:
//!
//! | call | engine says | runs |
//! |---|---|---|
//! | `get` | [`Engine::try_get_now`] answers (no I/O needed) | inline on the runtime worker |
//! | `get` | otherwise (a table block must be read) | blocking pool |
//! | `get_many` (a pipeline) | [`Engine::try_get_many_now`] answers, up to the first key it cannot | inline, those keys together; that key and the rest in one blocking-pool call, in order |
//! | `put` of at most [`INLINE_WRITE_MAX_BYTES`], `delete` | [`Engine::try_write_now`] writes without waiting | inline on the runtime worker |
//! | `put`, `delete` | otherwise (it would wait for an fsync or log maintenance) | the shard's writer thread |
//! | `page`, `close` | — | blocking pool |
//!
//! The writer thread takes every write that is queued when it wakes (up to [`MAX_BATCH_OPS`])
//! and applies them with one [`Engine::write_many`]: one log append and, under
//! `--wal-sync always`, one fsync for the whole batch. That is group commit: the more writers
//! wait, the more each fsync carries. Queued writes keep their arrival order, and a request is
//! answered only after its write, so one client's writes apply in the order it sent them
//! whichever path they take. A slow write (a log rewrite, an fsync) holds up only the writes
//! queued behind it, never reads or the runtime.
//!
//! ## Key locks: what makes read-modify-write atomic
//!
//! Writes take two paths (inline on whichever runtime worker the request runs on, or the writer
//! thread), so neither path alone can serialize a read-modify-write such as `INCR` against other
//! writes. Instead every write to a key, from every API (HTTP, internal protocol, RESP), holds
//! the key's *stripe lock* from [`Storage::lock`]: one of [`LOCK_STRIPES`] async mutexes chosen
//! by the key's hash. [`Storage::put`] and [`Storage::delete`] take it for their one write; a
//! read-modify-write (RESP's `INCR`, `APPEND`, `SET NX`, `RENAME`, a `MULTI`/`EXEC` block, ...)
//! takes the stripes of all its keys at once (in stripe order, so two multi-key callers cannot
//! deadlock), reads, decides and writes with [`Storage::put_locked`] / [`Storage::delete_locked`]
//! before it lets go. Reads take no lock: they see either the old or the new value.
//!
//! Each stripe also counts the writes made under it ([`Storage::stripe_version`]); `WATCH`
//! remembers the count and `EXEC` aborts if it moved. Two keys may share a stripe, so an
//! unrelated write can abort a transaction (it retries), but a write to a watched key never goes
//! unnoticed.
//!
//! ## Two writers: local and replicated
//!
//! Everything above is the **local** writer, a shard started without `--peers`. A **replicated**
//! shard ([`Storage::replicated`]) keeps the same key locks and the same read-modify-write code,
//! but its writes go through its Raft group ([`limedb_raft::Replica::write`]: batched into log
//! entries, acknowledged once committed by a majority and applied here) and every read first
//! passes the group's read barrier ([`limedb_raft::Replica::read_barrier`]), so only a leader
//! that a quorum still follows answers. A key lock is held until the write is applied, so a
//! read-modify-write computes from the state at its own log position (see ARCHITECTURE.md).
//! `WATCH` versions carry the leader's term in their high bits: a transaction watched under one
//! leader aborts under the next.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use limedb_raft::ReplicatedWrite;
use limedb_storage::{Engine, Page, StorageError, Value};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// Writes larger than this (key plus value) always go to the writer thread: copying and
/// logging them takes long enough to hold up a runtime worker.
pub const INLINE_WRITE_MAX_BYTES: usize = 64 * 1024;

/// How many key locks a shard has (see the module docs).
pub const LOCK_STRIPES: usize = 1024;

/// Writes queued for the writer thread before callers wait for room.
const WRITE_QUEUE_DEPTH: usize = 4096;

enum WriteOp {
    Put {
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Delete {
        key: Bytes,
        reply: oneshot::Sender<Result<bool, ApiError>>,
    },
    /// Sent by [`Storage::close`]: everything queued before it is applied, then the thread ends.
    Stop,
}

/// A shard's engine with the right executor for each call.
pub struct Storage {
    backend: Backend,
    stripes: Box<[Stripe]>,
}

/// Where writes go and whether reads need a barrier.
enum Backend {
    /// A shard on its own: inline writes and the writer thread.
    Local {
        engine: Arc<dyn Engine>,
        writer: Writer,
    },
    /// A replica of a shard's Raft group; writes' commit latency goes to the histogram.
    Replicated(limedb_raft::Replica, Histogram),
}

/// Bits of a `WATCH` version that count writes; the bits above hold the leader's term.
const VERSION_COUNTER_BITS: u32 = 40;

/// One key lock and the number of writes made under it.
struct Stripe {
    lock: tokio::sync::Mutex<()>,
    version: AtomicU64,
}

/// The stripe locks of a set of keys, held until dropped; proof for [`Storage::put_locked`].
pub struct KeyLocks<'a> {
    stripes: Vec<usize>,
    _guards: Vec<tokio::sync::MutexGuard<'a, ()>>,
}

impl KeyLocks<'_> {
    /// Whether `key` is covered by these locks.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.stripes.binary_search(&stripe_of(key)).is_ok()
    }
}

/// The stripe of `key`.
fn stripe_of(key: &[u8]) -> usize {
    (limedb_cluster::key_hash(key) % LOCK_STRIPES as u64) as usize
}

struct Writer {
    queue: mpsc::Sender<WriteOp>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T, F>(engine: &Arc<dyn Engine>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Engine) -> Result<T, StorageError> + Send + 'static,
{
    let engine = Arc::clone(engine);
    match tokio::task::spawn_blocking(move || f(engine.as_ref())).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::Internal(format!("storage task failed: {e}"))),
    }
}

fn writer_gone() -> ApiError {
    ApiError::ShuttingDown
}

fn new_stripes() -> Box<[Stripe]> {
    (0..LOCK_STRIPES)
        .map(|_| Stripe {
            lock: tokio::sync::Mutex::new(()),
            version: AtomicU64::new(0),
        })
        .collect()
}

impl Storage {
    /// A replica of a shard's group: writes go through Raft, reads through its read barrier.
    pub fn replicated(replica: limedb_raft::Replica, commit_latency: Histogram) -> Storage {
        Storage {
            backend: Backend::Replicated(replica, commit_latency),
            stripes: new_stripes(),
        }
    }

    /// The replica, when this shard is replicated.
    pub fn replica(&self) -> Option<&limedb_raft::Replica> {
        match &self.backend {
            Backend::Replicated(r, _) => Some(r),
            Backend::Local { .. } => None,
        }
    }

    /// Waits until reads are linearizable on a replicated shard (the read barrier); at once on
    /// a local one.
    async fn read_fence(&self) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local { .. } => Ok(()),
            Backend::Replicated(r, _) => Ok(r.read_barrier().await?),
        }
    }

    /// Wraps `engine` and starts its writer thread, named `thread_name`.
    pub fn new(engine: Arc<dyn Engine>, thread_name: String) -> Result<Storage, std::io::Error> {
        let (queue, ops) = mpsc::channel(WRITE_QUEUE_DEPTH);
        let thread_engine = Arc::clone(&engine);
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || run_writer(thread_engine.as_ref(), ops))?;
        let writer = Writer {
            queue,
            thread: std::sync::Mutex::new(Some(thread)),
        };
        Ok(Storage {
            backend: Backend::Local { engine, writer },
            stripes: new_stripes(),
        })
    }

    /// Takes the stripe locks of `keys` (in stripe order; duplicates are fine) and holds them
    /// until the returned value is dropped.
    pub async fn lock<K: AsRef<[u8]>>(&self, keys: &[K]) -> KeyLocks<'_> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| stripe_of(k.as_ref())).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for &i in &stripes {
            if let Some(stripe) = self.stripes.get(i) {
                guards.push(stripe.lock.lock().await);
            }
        }
        KeyLocks {
            stripes,
            _guards: guards,
        }
    }

    /// How many writes were made so far under `key`'s stripe (for `WATCH`); on a replicated
    /// shard the leader's term is in the high bits, so versions of two leaderships never match.
    pub fn stripe_version(&self, key: &[u8]) -> u64 {
        let count = self
            .stripes
            .get(stripe_of(key))
            .map_or(0, |s| s.version.load(Ordering::Acquire));
        match &self.backend {
            Backend::Local { .. } => count,
            Backend::Replicated(r, _) => {
                (r.term() << VERSION_COUNTER_BITS) | (count & ((1 << VERSION_COUNTER_BITS) - 1))
            }
        }
    }

    fn bump(&self, key: &[u8]) {
        if let Some(s) = self.stripes.get(stripe_of(key)) {
            s.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The engine itself, for figures that need no executor (stats). A replicated shard's
    /// engine changes when a snapshot is installed.
    pub fn engine(&self) -> Arc<dyn Engine> {
        match &self.backend {
            Backend::Local { engine, .. } => Arc::clone(engine),
            Backend::Replicated(r, _) => r.engine(),
        }
    }

    /// Reads a key.
    pub async fn get(&self, key: Bytes) -> Result<Option<Value>, ApiError> {
        self.read_fence().await?;
        let engine = self.engine();
        match engine.try_get_now(&key) {
            Some(found) => found.map_err(ApiError::from),
            None => blocking(&engine, move |e| e.get(&key)).await,
        }
    }

    /// Reads several keys with at most one executor hand-off (a pipeline of GETs), in order:
    /// the keys the engine answers without I/O are read inline, together
    /// ([`Engine::try_get_many_now`], one read view), up to the first that needs I/O; that one
    /// and every later key are read in one hand-off to the blocking pool. So no key is read at
    /// an older view than a key before it, as if the reads ran one by one in pipeline order.
    pub async fn get_many(&self, mut keys: Vec<Bytes>) -> Result<Vec<Option<Value>>, ApiError> {
        self.read_fence().await?;
        let engine = self.engine();
        let asked: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let mut found = Vec::with_capacity(keys.len());
        for answer in engine.try_get_many_now(&asked) {
            match answer {
                Some(value) => found.push(value.map_err(ApiError::from)?),
                None => break,
            }
        }
        if found.len() < keys.len() {
            let rest = keys.split_off(found.len());
            let more = blocking(&engine, move |e| {
                rest.iter().map(|k| e.get(k)).collect::<Result<Vec<_>, _>>()
            })
            .await?;
            found.extend(more);
        }
        Ok(found)
    }

    /// Writes several keys whose locks the caller holds, in order. Locally, writes that can run
    /// inline do, and once one has to go to the writer thread all later ones are queued behind
    /// it without waiting in between (so they share its batch and fsync, and keep their order);
    /// on a replicated shard they are one proposal.
    pub async fn put_many_locked(
        &self,
        locks: &KeyLocks<'_>,
        items: Vec<(Bytes, Bytes, Option<u64>)>,
    ) -> Result<(), ApiError> {
        if items.iter().any(|(k, _, _)| !locks.covers(k)) {
            return Err(ApiError::Internal("write without the key's lock".into()));
        }
        for (key, _, _) in &items {
            self.bump(key);
        }
        match &self.backend {
            Backend::Local { engine, writer } => writer.put_many(engine.as_ref(), items).await,
            Backend::Replicated(..) => {
                let writes = items
                    .into_iter()
                    .map(|(key, value, expires_at_ms)| ReplicatedWrite::Put {
                        key,
                        value,
                        expires_at_ms,
                    })
                    .collect();
                self.replicate(writes).await.map(drop)
            }
        }
    }

    /// Writes a key (taking its lock for the write).
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    ) -> Result<(), ApiError> {
        let locks = self.lock(&[&key]).await;
        self.put_locked(&locks, key, value, expires_at_ms).await
    }

    /// Deletes a key (taking its lock for the write); `true` when it existed.
    pub async fn delete(&self, key: Bytes) -> Result<bool, ApiError> {
        let locks = self.lock(&[&key]).await;
        self.delete_locked(&locks, key).await
    }

    /// Writes a key whose lock the caller holds in `locks`.
    pub async fn put_locked(
        &self,
        locks: &KeyLocks<'_>,
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    ) -> Result<(), ApiError> {
        if !locks.covers(&key) {
            return Err(ApiError::Internal("write without the key's lock".into()));
        }
        self.bump(&key);
        match &self.backend {
            Backend::Local { engine, writer } => {
                writer.put(engine.as_ref(), key, value, expires_at_ms).await
            }
            Backend::Replicated(..) => {
                let put = ReplicatedWrite::Put {
                    key,
                    value,
                    expires_at_ms,
                };
                self.replicate(vec![put]).await.map(drop)
            }
        }
    }

    /// Deletes a key whose lock the caller holds in `locks`; `true` when it existed.
    pub async fn delete_locked(&self, locks: &KeyLocks<'_>, key: Bytes) -> Result<bool, ApiError> {
        if !locks.covers(&key) {
            return Err(ApiError::Internal("write without the key's lock".into()));
        }
        self.bump(&key);
        match &self.backend {
            Backend::Local { engine, writer } => writer.delete(engine.as_ref(), key).await,
            Backend::Replicated(..) => {
                let removed = self
                    .replicate(vec![ReplicatedWrite::Delete { key }])
                    .await?;
                Ok(removed.first().copied().unwrap_or(false))
            }
        }
    }

    /// Hands `writes` to the group and waits for their commit (replicated shards only).
    async fn replicate(&self, writes: Vec<ReplicatedWrite>) -> Result<Vec<bool>, ApiError> {
        let Backend::Replicated(replica, commit_latency) = &self.backend else {
            return Err(ApiError::Internal(
                "a replicated write on a local shard".into(),
            ));
        };
        let started = std::time::Instant::now();
        let removed = replica.write(writes).await?;
        commit_latency.observe(started.elapsed().as_secs_f64());
        Ok(removed)
    }

    /// Applies replicated effects (puts with their absolute expiry, deletes) as one proposal,
    /// to keys that no client request reaches on this shard: the ranges of a transfer it is
    /// receiving or has handed over (a move's import, clear and clean-up; the caller checked
    /// its ownership record). So it takes no key locks: a batch of thousands of keys covers
    /// most stripes, and holding them while it commits would stall every client write.
    /// Replicated shards only.
    pub async fn write_unserved(&self, writes: Vec<ReplicatedWrite>) -> Result<(), ApiError> {
        for w in &writes {
            self.bump(w.key());
        }
        self.replicate(writes).await.map(drop)
    }

    /// At most `limit` live entries with keys `>= start`, ascending.
    pub async fn scan(
        &self,
        start: Option<Bytes>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Value)>, ApiError> {
        self.read_fence().await?;
        blocking(&self.engine(), move |e| e.scan(start.as_deref(), limit)).await
    }

    /// Like [`Storage::scan`], of this replica's own engine without a read barrier (a move's
    /// copy reads the replica that follows the changes, leader or not).
    pub async fn scan_local(
        &self,
        start: Option<Bytes>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Value)>, ApiError> {
        blocking(&self.engine(), move |e| e.scan(start.as_deref(), limit)).await
    }

    /// `keys` as this replica's own engine holds them, without a read barrier.
    pub async fn get_local_many(&self, keys: Vec<Bytes>) -> Result<Vec<Option<Value>>, ApiError> {
        blocking(&self.engine(), move |e| {
            keys.iter().map(|k| e.get(k)).collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    /// The number of live keys.
    pub async fn key_count(&self) -> Result<u64, ApiError> {
        self.read_fence().await?;
        blocking(&self.engine(), |e| e.len()).await
    }

    /// A page of live keys in key order.
    pub async fn page(&self, offset: u64, limit: usize) -> Result<Page, ApiError> {
        self.read_fence().await?;
        blocking(&self.engine(), move |e| e.page(offset, limit)).await
    }

    /// Locally: stops the writer thread once every queued write is applied, then syncs and
    /// closes the engine. Replicated: stops the replica (which records how far it applied and
    /// closes the engine). Later calls fail with [`ApiError::ShuttingDown`] or a closed-engine
    /// error.
    pub async fn close(&self) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local { engine, writer } => writer.close(Arc::clone(engine)).await,
            Backend::Replicated(replica, _) => Ok(replica.shutdown().await?),
        }
    }
}

impl Writer {
    /// [`Storage::put_many_locked`] on a local shard.
    async fn put_many(
        &self,
        engine: &dyn Engine,
        items: Vec<(Bytes, Bytes, Option<u64>)>,
    ) -> Result<(), ApiError> {
        // The whole batch at once (one log append) if the engine can write it without waiting.
        let bytes: usize = items.iter().map(|(k, v, _)| k.len() + v.len()).sum();
        if bytes <= INLINE_WRITE_MAX_BYTES {
            let ops: Vec<limedb_storage::WriteOp<'_>> = items
                .iter()
                .map(|(key, value, expires_at_ms)| limedb_storage::WriteOp::Put {
                    key,
                    value,
                    expires_at_ms: *expires_at_ms,
                })
                .collect();
            if let Some(done) = engine.try_write_many_now(&ops) {
                return done.map(drop).map_err(ApiError::from);
            }
        }
        let mut pending = Vec::new();
        for (key, value, expires_at_ms) in items {
            if pending.is_empty() && key.len() + value.len() <= INLINE_WRITE_MAX_BYTES {
                let op = limedb_storage::WriteOp::Put {
                    key: &key,
                    value: &value,
                    expires_at_ms,
                };
                if let Some(done) = engine.try_write_now(op) {
                    done.map_err(ApiError::from)?;
                    continue;
                }
            }
            let (reply, answer) = oneshot::channel();
            self.queue
                .send(WriteOp::Put {
                    key,
                    value,
                    expires_at_ms,
                    reply,
                })
                .await
                .map_err(|_| writer_gone())?;
            pending.push(answer);
        }
        for answer in pending {
            answer.await.map_err(|_| writer_gone())??;
        }
        Ok(())
    }

    /// One put on a local shard: inline if the engine can, else through the writer thread.
    async fn put(
        &self,
        engine: &dyn Engine,
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    ) -> Result<(), ApiError> {
        if key.len() + value.len() <= INLINE_WRITE_MAX_BYTES {
            let op = limedb_storage::WriteOp::Put {
                key: &key,
                value: &value,
                expires_at_ms,
            };
            if let Some(done) = engine.try_write_now(op) {
                return done.map(|_| ()).map_err(ApiError::from);
            }
        }
        self.submit(|reply| WriteOp::Put {
            key,
            value,
            expires_at_ms,
            reply,
        })
        .await
    }

    /// One delete on a local shard: inline if the engine can, else through the writer thread.
    async fn delete(&self, engine: &dyn Engine, key: Bytes) -> Result<bool, ApiError> {
        if let Some(done) = engine.try_write_now(limedb_storage::WriteOp::Delete { key: &key }) {
            return done.map_err(ApiError::from);
        }
        self.submit(|reply| WriteOp::Delete { key, reply }).await
    }

    /// Queues a write for the writer thread and waits for its answer.
    async fn submit<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> WriteOp,
    ) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(op(reply))
            .await
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    async fn close(&self, engine: Arc<dyn Engine>) -> Result<(), ApiError> {
        // If the thread is already gone the send fails, which is fine.
        let _ = self.queue.send(WriteOp::Stop).await;
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let closer = move || {
            if let Some(thread) = thread {
                if thread.join().is_err() {
                    tracing::error!("the storage writer thread panicked");
                }
            }
            engine.close()
        };
        match tokio::task::spawn_blocking(closer).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(e) => Err(ApiError::Internal(format!(
                "storage close task failed: {e}"
            ))),
        }
    }
}

/// Most writes applied as one batch (one log append).
pub const MAX_BATCH_OPS: usize = 256;
/// A batch stops growing once its keys and values reach this many bytes.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The writer thread: applies queued writes in order, every write that is ready as one
/// [`Engine::write_many`] batch, until every sender is gone or [`WriteOp::Stop`] arrives.
fn run_writer(engine: &dyn Engine, mut ops: mpsc::Receiver<WriteOp>) {
    let mut batch = Vec::with_capacity(MAX_BATCH_OPS);
    while let Some(first) = ops.blocking_recv() {
        let mut stop = false;
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                WriteOp::Stop => {
                    stop = true;
                    break;
                }
                op => {
                    bytes += op.size_bytes();
                    batch.push(op);
                }
            }
            if batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                next = ops.try_recv().ok();
            }
        }
        apply(engine, &mut batch);
        if stop {
            return;
        }
    }
}

/// Applies `batch` with one engine call and answers every op; leaves `batch` empty.
fn apply(engine: &dyn Engine, batch: &mut Vec<WriteOp>) {
    if batch.is_empty() {
        return;
    }
    let ops: Vec<limedb_storage::WriteOp<'_>> = batch
        .iter()
        .filter_map(|op| match op {
            WriteOp::Put {
                key,
                value,
                expires_at_ms,
                ..
            } => Some(limedb_storage::WriteOp::Put {
                key,
                value,
                expires_at_ms: *expires_at_ms,
            }),
            WriteOp::Delete { key, .. } => Some(limedb_storage::WriteOp::Delete { key }),
            WriteOp::Stop => None,
        })
        .collect();
    let result = engine.write_many(&ops).map_err(ApiError::from);
    drop(ops);
    // A caller that gave up (timeout, disconnect) dropped its receiver; the write still happened.
    for (i, op) in batch.drain(..).enumerate() {
        let answer = match &result {
            Ok(flags) => Ok(flags.get(i).copied().unwrap_or(false)),
            Err(e) => Err(e.clone()),
        };
        match op {
            WriteOp::Put { reply, .. } => {
                let _ = reply.send(answer.map(|_| ()));
            }
            WriteOp::Delete { reply, .. } => {
                let _ = reply.send(answer);
            }
            WriteOp::Stop => {}
        }
    }
}

impl WriteOp {
    fn size_bytes(&self) -> usize {
        match self {
            WriteOp::Put { key, value, .. } => key.len() + value.len(),
            WriteOp::Delete { key, .. } => key.len(),
            WriteOp::Stop => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limedb_storage::{MemoryEngine, MemoryOptions, SyncPolicy};

    async fn round_trip(sync: SyncPolicy) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = MemoryOptions {
            sync,
            ..MemoryOptions::default()
        };
        let engine = Arc::new(MemoryEngine::open(dir.path(), options).expect("open"));
        let storage = Arc::new(Storage::new(engine, "test-writer".into()).expect("storage"));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..8 {
            let storage = Arc::clone(&storage);
            tasks.spawn(async move {
                for i in 0..100 {
                    let key = Bytes::from(format!("k{t}-{i}"));
                    storage
                        .put(key.clone(), Bytes::from(format!("v{i}")), None)
                        .await
                        .expect("put");
                    let got = storage.get(key).await.expect("get").expect("present");
                    assert_eq!(got.data, Bytes::from(format!("v{i}")));
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.expect("task");
        }
        assert!(storage.delete(Bytes::from("k0-0")).await.expect("delete"));
        assert!(!storage.delete(Bytes::from("k0-0")).await.expect("delete"));
        assert_eq!(storage.page(0, 10).await.expect("page").total, 799);
        storage.close().await.expect("close");
        assert!(storage
            .put(Bytes::from("late"), Bytes::new(), None)
            .await
            .is_err());
        let reopened = MemoryEngine::open(dir.path(), MemoryOptions::default()).expect("reopen");
        assert_eq!(reopened.len().expect("len"), 799);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_clients_read_their_writes_and_close_flushes_everything() {
        round_trip(SyncPolicy::Interval(std::time::Duration::from_millis(50))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_with_an_fsync_per_batch() {
        round_trip(SyncPolicy::Always).await;
    }
}
