//! How a shard runs engine calls from async code without stalling the runtime.
//!
//! The engine is synchronous. Handing every call to tokio's blocking pool costs a thread wake-up
//! and two context switches per request, which on a small machine costs more than the call
//! itself, so [`Storage`] picks the cheapest safe way per call from the engine's own hints:
//!
//! | call | engine says | runs |
//! |---|---|---|
//! | `get` | [`Engine::get_is_in_memory`] | inline on the runtime worker |
//! | `get` | otherwise | blocking pool |
//! | `put`, `delete` | [`Engine::writes_skip_fsync`] | one dedicated writer thread, which drains every queued write per wake-up |
//! | `put`, `delete` | otherwise (an fsync per write) | blocking pool, so concurrent writers share an fsync |
//! | `page`, `len`, `close` | — | blocking pool |
//!
//! The writer thread keeps writes in arrival order and, since the engine serialises writes on
//! its log anyway, loses no parallelism; a slow write (such as a log rewrite) holds up only the
//! writes queued behind it, never reads or the runtime.

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use limedb_storage::{Engine, Page, StorageError, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// Writes queued for the writer thread before callers wait for room.
const WRITE_QUEUE_DEPTH: usize = 4096;

enum WriteOp {
    Put {
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Delete {
        key: Bytes,
        reply: oneshot::Sender<Result<bool, StorageError>>,
    },
    /// Sent by [`Storage::close`]: everything queued before it is applied, then the thread ends.
    Stop,
}

/// A shard's engine with the right executor for each call.
pub struct Storage {
    engine: Arc<dyn Engine>,
    get_inline: bool,
    writer: Option<Writer>,
}

struct Writer {
    queue: mpsc::Sender<WriteOp>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("get_inline", &self.get_inline)
            .field("writer_thread", &self.writer.is_some())
            .finish_non_exhaustive()
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
    /// Wraps `engine`; starts the writer thread `thread_name` when the engine's writes skip fsync.
    pub fn new(engine: Arc<dyn Engine>, thread_name: String) -> Result<Storage, std::io::Error> {
        let writer = if engine.writes_skip_fsync() {
            let (queue, ops) = mpsc::channel(WRITE_QUEUE_DEPTH);
            let thread_engine = Arc::clone(&engine);
            let thread = std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || run_writer(thread_engine.as_ref(), ops))?;
            Some(Writer {
                queue,
                thread: std::sync::Mutex::new(Some(thread)),
            })
        } else {
            None
        };
        Ok(Storage {
            get_inline: engine.get_is_in_memory(),
            engine,
            writer,
        })
    }

    /// The engine itself, for figures that need no executor (stats).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Reads a key.
    pub async fn get(&self, key: Bytes) -> Result<Option<Value>, ApiError> {
        if self.get_inline {
            self.engine.get(&key).map_err(ApiError::from)
        } else {
            blocking(&self.engine, move |e| e.get(&key)).await
        }
    }

    /// Writes a key.
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    ) -> Result<(), ApiError> {
        match &self.writer {
            Some(writer) => {
                let (reply, answer) = oneshot::channel();
                let op = WriteOp::Put {
                    key,
                    value,
                    expires_at_ms,
                    reply,
                };
                writer.queue.send(op).await.map_err(|_| writer_gone())?;
                answer
                    .await
                    .map_err(|_| writer_gone())?
                    .map_err(ApiError::from)
            }
            None => blocking(&self.engine, move |e| e.put(&key, &value, expires_at_ms)).await,
        }
    }

    /// Deletes a key; `true` when it existed.
    pub async fn delete(&self, key: Bytes) -> Result<bool, ApiError> {
        match &self.writer {
            Some(writer) => {
                let (reply, answer) = oneshot::channel();
                writer
                    .queue
                    .send(WriteOp::Delete { key, reply })
                    .await
                    .map_err(|_| writer_gone())?;
                answer
                    .await
                    .map_err(|_| writer_gone())?
                    .map_err(ApiError::from)
            }
            None => blocking(&self.engine, move |e| e.delete(&key)).await,
        }
    }

    /// A page of live keys in key order.
    pub async fn page(&self, offset: u64, limit: usize) -> Result<Page, ApiError> {
        blocking(&self.engine, move |e| e.page(offset, limit)).await
    }

    /// Stops the writer thread once every queued write is applied, then syncs and closes the
    /// engine. Later calls fail with [`ApiError::ShuttingDown`] or a closed-engine error.
    pub async fn close(&self) -> Result<(), ApiError> {
        let mut thread = None;
        if let Some(writer) = &self.writer {
            // If the thread is already gone the send fails, which is fine.
            let _ = writer.queue.send(WriteOp::Stop).await;
            thread = writer
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
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

/// The writer thread: applies queued writes in order until every sender is gone.
fn run_writer(engine: &dyn Engine, mut ops: mpsc::Receiver<WriteOp>) {
    while let Some(op) = ops.blocking_recv() {
        if !apply(engine, op) {
            return;
        }
        // Drain whatever queued up meanwhile without going back to sleep.
        while let Ok(op) = ops.try_recv() {
            if !apply(engine, op) {
                return;
            }
        }
    }
}

/// Applies one op; `false` for [`WriteOp::Stop`].
fn apply(engine: &dyn Engine, op: WriteOp) -> bool {
    // A caller that gave up (timeout, disconnect) dropped its receiver; the write still happened.
    match op {
        WriteOp::Put {
            key,
            value,
            expires_at_ms,
            reply,
        } => {
            let _ = reply.send(engine.put(&key, &value, expires_at_ms));
        }
        WriteOp::Delete { key, reply } => {
            let _ = reply.send(engine.delete(&key));
        }
        WriteOp::Stop => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use limedb_storage::{MemoryEngine, MemoryOptions, SyncPolicy};

    async fn round_trip(sync: SyncPolicy, expect_writer: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = MemoryOptions {
            sync,
            ..MemoryOptions::default()
        };
        let engine = Arc::new(MemoryEngine::open(dir.path(), options).expect("open"));
        let storage = Arc::new(Storage::new(engine, "test-writer".into()).expect("storage"));
        assert_eq!(storage.writer.is_some(), expect_writer);
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
    async fn writer_thread_applies_every_write_in_order_and_closes_cleanly() {
        round_trip(
            SyncPolicy::Interval(std::time::Duration::from_millis(50)),
            true,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fsync_per_write_engines_use_the_blocking_pool() {
        round_trip(SyncPolicy::Always, false).await;
    }
}
