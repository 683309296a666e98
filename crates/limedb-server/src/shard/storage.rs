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

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use limedb_storage::{Engine, Page, StorageError, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// Writes larger than this (key plus value) always go to the writer thread: copying and
/// logging them takes long enough to hold up a runtime worker.
pub const INLINE_WRITE_MAX_BYTES: usize = 64 * 1024;

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
    engine: Arc<dyn Engine>,
    writer: Writer,
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

impl Storage {
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
        Ok(Storage { engine, writer })
    }

    /// The engine itself, for figures that need no executor (stats).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Reads a key.
    pub async fn get(&self, key: Bytes) -> Result<Option<Value>, ApiError> {
        match self.engine.try_get_now(&key) {
            Some(found) => found.map_err(ApiError::from),
            None => blocking(&self.engine, move |e| e.get(&key)).await,
        }
    }

    /// Writes a key.
    pub async fn put(
        &self,
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
            if let Some(done) = self.engine.try_write_now(op) {
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

    /// Deletes a key; `true` when it existed.
    pub async fn delete(&self, key: Bytes) -> Result<bool, ApiError> {
        if let Some(done) = self
            .engine
            .try_write_now(limedb_storage::WriteOp::Delete { key: &key })
        {
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
        self.writer
            .queue
            .send(op(reply))
            .await
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// A page of live keys in key order.
    pub async fn page(&self, offset: u64, limit: usize) -> Result<Page, ApiError> {
        blocking(&self.engine, move |e| e.page(offset, limit)).await
    }

    /// Stops the writer thread once every queued write is applied, then syncs and closes the
    /// engine. Later calls fail with [`ApiError::ShuttingDown`] or a closed-engine error.
    pub async fn close(&self) -> Result<(), ApiError> {
        // If the thread is already gone the send fails, which is fine.
        let _ = self.writer.queue.send(WriteOp::Stop).await;
        let thread = self
            .writer
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let engine = Arc::clone(&self.engine);
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
