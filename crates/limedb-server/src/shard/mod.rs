//! A shard: one storage engine served over HTTP (direct access) and over the internal binary
//! protocol (traffic from the coordinator).
//!
//! [`ShardNode`] owns the engine and answers requests; [`storage::Storage`] runs each engine
//! call where it cannot stall the runtime (inline for in-memory reads, a writer thread, or the
//! blocking pool). [`ShardServer`] binds the two
//! listeners, runs them until shutdown, drains in-flight requests and then syncs and closes the
//! engine, so a clean stop never loses an acknowledged write.

pub mod internal;
mod resp_backend;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use limedb_cluster::{Ring, ShardId};
use limedb_proto::{ErrorCode, Request, Response, PROTOCOL_VERSION};
use limedb_storage::{now_ms, Engine, Health, LsmEngine, MemoryEngine, MemoryOptions};
use tokio::net::TcpListener;

use crate::config::{Limits, ShardConfig, StorageKind};
use crate::error::{ApiError, ServerError};
use crate::metrics::{Api, Metrics, Op};
use crate::node::{HealthReport, KeyEntry, KeysPage, KvNode};
use crate::resp::RespConfig;
use crate::shutdown::Shutdown;
use crate::{ring_json, SERVER_NAME};
use storage::Storage;

/// Largest page a shard returns to one `KeysPage` request.
pub const MAX_KEYS_PER_PAGE: u32 = 1000;
/// A page stops growing once its keys and value previews reach this many bytes (it always
/// holds at least one entry), so a page of huge keys cannot make an oversized answer; the
/// coordinator asks again for the rest.
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// A shard's request handling, shared by its HTTP and internal listeners. Cheap to clone.
#[derive(Clone)]
pub struct ShardNode {
    inner: Arc<ShardInner>,
}

struct ShardInner {
    id: ShardId,
    storage: Storage,
    storage_kind: StorageKind,
    limits: Limits,
    metrics: Metrics,
    http_addr: SocketAddr,
    internal_addr: SocketAddr,
    started: Instant,
    cursors: crate::resp::cursor::Cursors,
}

impl std::fmt::Debug for ShardNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardNode")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl ShardNode {
    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.inner.id
    }

    /// Answers one internal-protocol request.
    pub async fn handle(&self, request: Request) -> Response {
        let started = Instant::now();
        let limits = self.inner.limits;
        let (op, result) = match request {
            Request::Hello => {
                return Response::HelloOk {
                    shard_id: self.inner.id.0,
                    protocol_version: PROTOCOL_VERSION,
                    server: SERVER_NAME.to_string(),
                }
            }
            Request::Ping => return Response::Pong,
            Request::Raft { .. } => {
                return Response::Error {
                    code: ErrorCode::Unsupported,
                    message: "this shard is not replicated (started without --peers)".into(),
                }
            }
            Request::Get { key } => (
                Op::Get,
                async {
                    limits.check_key(&key)?;
                    self.get(key).await.map(Response::Value)
                }
                .await,
            ),
            Request::Set { key, value, ttl_ms } => (
                Op::Set,
                async {
                    limits.check_key(&key)?;
                    limits.check_value(value.len())?;
                    limits.check_ttl(ttl_ms)?;
                    self.set(key, value, ttl_ms).await.map(|()| Response::Done)
                }
                .await,
            ),
            Request::Delete { key } => (
                Op::Delete,
                async {
                    limits.check_key(&key)?;
                    self.delete(key).await.map(Response::Deleted)
                }
                .await,
            ),
            Request::Command { args } => (Op::Command, Ok(reply(self.execute_command(args).await))),
            Request::Transaction { commands, watched } => (
                Op::Command,
                Ok(reply(self.execute_transaction(commands, watched).await)),
            ),
            Request::Pipeline { commands } => (
                Op::Command,
                Ok(reply(self.execute_pipeline(commands).await)),
            ),
            Request::KeysPage {
                offset,
                limit,
                value_prefix_bytes,
            } => (
                Op::Keys,
                self.keys_page(offset, limit.min(MAX_KEYS_PER_PAGE), value_prefix_bytes)
                    .await
                    .map(|page| Response::KeysPage {
                        total: page.total,
                        entries: page.entries,
                    }),
            ),
        };
        self.inner
            .metrics
            .record(Api::Internal, op, started, result.is_ok());
        result.unwrap_or_else(|e| error_response(&e))
    }

    fn storage_json(&self, health: &Health) -> serde_json::Value {
        let stats = self.inner.storage.engine().stats();
        let (status, error) = match health {
            Health::Healthy => ("healthy", None),
            Health::Unavailable { reason } => ("unavailable", Some(reason.as_str())),
        };
        serde_json::json!({
            "status": status,
            "error": error,
            "backend": stats.backend,
            "keys": stats.keys,
            "liveBytes": stats.live_bytes,
            "logBytes": stats.log_bytes,
            "logRewrites": stats.log_rewrites,
            "expiredReclaimed": stats.expired_reclaimed,
        })
    }
}

/// The internal-protocol form of an error.
pub fn error_response(e: &ApiError) -> Response {
    let code = match e {
        ApiError::BadRequest(_) | ApiError::NotFound | ApiError::RequestTimeout(_) => {
            ErrorCode::BadRequest
        }
        ApiError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
        ApiError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
        ApiError::ShardUnavailable { .. } | ApiError::StorageUnavailable(_) => {
            ErrorCode::Unavailable
        }
        ApiError::ShuttingDown => ErrorCode::ShuttingDown,
        ApiError::Storage(_) => ErrorCode::Storage,
        ApiError::Internal(_) => ErrorCode::Internal,
        ApiError::ShardRejected { code, .. } => *code,
    };
    Response::Error {
        code,
        message: e.to_string(),
    }
}

impl KvNode for ShardNode {
    async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ApiError> {
        Ok(self.inner.storage.get(key).await?.map(|v| v.data))
    }

    async fn set(&self, key: Bytes, value: Bytes, ttl_ms: Option<u64>) -> Result<(), ApiError> {
        let expires_at_ms = ttl_ms.map(|ttl| now_ms().saturating_add(ttl));
        self.inner.storage.put(key, value, expires_at_ms).await
    }

    async fn delete(&self, key: Bytes) -> Result<bool, ApiError> {
        self.inner.storage.delete(key).await
    }

    async fn keys_page(
        &self,
        offset: u64,
        limit: u32,
        value_prefix_bytes: u32,
    ) -> Result<KeysPage, ApiError> {
        let page = self.inner.storage.page(offset, limit as usize).await?;
        let prefix = value_prefix_bytes as usize;
        let mut bytes = 0;
        let entries = page
            .entries
            .into_iter()
            .map(|(key, value)| KeyEntry {
                key,
                value_len: value.data.len() as u64,
                value: value.data.slice(..value.data.len().min(prefix)),
            })
            .take_while(|entry| {
                let first = bytes == 0;
                bytes += entry.key.len() + entry.value.len() + 16;
                first || bytes <= MAX_PAGE_BYTES
            })
            .collect();
        Ok(KeysPage {
            total: page.total,
            entries,
        })
    }

    async fn health(&self) -> HealthReport {
        let health = self.inner.storage.engine().health();
        let (serving, status, reason) = match &health {
            Health::Healthy => (true, "healthy", None),
            Health::Unavailable { reason } => (false, "unhealthy", Some(reason.clone())),
        };
        HealthReport {
            serving,
            body: serde_json::json!({
                "status": status,
                "reason": reason,
                "type": "shard",
                "shardId": self.inner.id.0,
                "httpAddr": self.inner.http_addr.to_string(),
                "internalAddr": self.inner.internal_addr.to_string(),
                "internalPort": self.inner.internal_addr.port(),
                "protocolVersion": PROTOCOL_VERSION,
                "storage": self.storage_json(&health),
                "uptimeSecs": self.inner.started.elapsed().as_secs(),
                "version": SERVER_NAME,
            }),
        }
    }

    async fn cluster_state(&self) -> serde_json::Value {
        let me = serde_json::json!({
            "shardId": self.inner.id.0,
            "url": format!("http://{}", self.inner.http_addr),
            "status": "up",
        });
        serde_json::json!({
            "nodeId": format!("shard-{}", self.inner.id),
            "type": "shard",
            "peers": [],
            "totalNodes": 1,
            "status": "healthy",
            "members": [me],
        })
    }

    async fn ring(&self) -> serde_json::Value {
        // A shard does not route; it shows the trivial ring of itself, in the coordinator's format.
        match Ring::new(&[self.inner.id], 1) {
            Ok(ring) => {
                let label = format!("shard-{}", self.inner.id);
                ring_json::ring_json(&ring, &|_| label.clone())
            }
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        }
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn refresh_metrics(&self) {
        let stats = self.inner.storage.engine().stats();
        self.inner.metrics.set_storage(&stats);
    }
}

/// A shard whose listeners are bound and whose storage is open, ready to [`run`](Self::run).
pub struct ShardServer {
    node: ShardNode,
    http: TcpListener,
    internal: TcpListener,
    resp: Option<TcpListener>,
    resp_config: RespConfig,
    max_connections: usize,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// A file only the given backend creates in its data directory (`None`: it keeps no files).
fn marker_file(kind: StorageKind) -> Option<&'static str> {
    match kind {
        StorageKind::Memory => Some("memory.log"),
        StorageKind::Lsm => Some("CURRENT"),
        _ => None,
    }
}

fn open_engine(config: &ShardConfig) -> Result<Arc<dyn Engine>, ServerError> {
    // A data directory belongs to the backend that created it: opening it with the other one
    // would start empty and hide the data, so refuse. (PostgreSQL keeps no files here.)
    let file_backends = [StorageKind::Memory, StorageKind::Lsm];
    for other in file_backends {
        let Some(marker) = marker_file(other) else {
            continue;
        };
        if file_backends.contains(&config.storage)
            && other != config.storage
            && config.data_dir.join(marker).exists()
        {
            return Err(ServerError::Config(format!(
                "{} holds data of the {other} storage backend; start the shard with --storage {other} (or use another --data-dir)",
                config.data_dir.display()
            )));
        }
    }
    match config.storage {
        StorageKind::Memory => {
            let options = MemoryOptions {
                sync: config.wal_sync,
                ..MemoryOptions::default()
            };
            Ok(Arc::new(MemoryEngine::open(&config.data_dir, options)?))
        }
        StorageKind::Lsm => {
            let options = config.lsm.options(config.wal_sync);
            Ok(Arc::new(LsmEngine::open(&config.data_dir, options)?))
        }
        StorageKind::Postgres => {
            let settings = config.postgres.as_ref().ok_or_else(|| {
                ServerError::Config(
                    "--storage postgres needs --pg-url (or pg_url in the file, or LIMEDB_PG_URL)"
                        .into(),
                )
            })?;
            let options = settings.options(config.id)?;
            Ok(Arc::new(limedb_postgres::PgEngine::open(options)?))
        }
    }
}

impl ShardServer {
    /// Opens storage and binds both listeners.
    pub async fn bind(config: ShardConfig) -> Result<Self, ServerError> {
        let http = bind(config.http_addr).await?;
        let internal = bind(config.internal_addr).await?;
        let resp = match config.resp_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let http_addr = local_addr(&http)?;
        let internal_addr = local_addr(&internal)?;
        let cfg = config.clone();
        let engine = tokio::task::spawn_blocking(move || open_engine(&cfg))
            .await
            .map_err(|e| ServerError::Task(format!("storage open task failed: {e}")))??;
        tracing::info!(
            shard = %config.id,
            storage = %config.storage,
            data_dir = %config.data_dir.display(),
            keys = engine.stats().keys,
            "storage open"
        );
        let storage =
            Storage::new(engine, format!("shard-{}-writer", config.id)).map_err(|source| {
                ServerError::Io {
                    context: "cannot start the storage writer thread".into(),
                    source,
                }
            })?;
        let node = ShardNode {
            inner: Arc::new(ShardInner {
                id: config.id,
                storage,
                storage_kind: config.storage,
                limits: config.limits,
                metrics: Metrics::new(),
                http_addr,
                internal_addr,
                started: Instant::now(),
                cursors: crate::resp::cursor::Cursors::default(),
            }),
        };
        let resp_config = RespConfig::for_limits(&config.limits, config.resp_idle_timeout);
        Ok(ShardServer {
            node,
            http,
            internal,
            resp,
            resp_config,
            max_connections: config.max_connections,
        })
    }

    /// Address of the HTTP API.
    pub fn http_addr(&self) -> SocketAddr {
        self.node.inner.http_addr
    }

    /// Address of the internal protocol.
    pub fn internal_addr(&self) -> SocketAddr {
        self.node.inner.internal_addr
    }

    /// Address of the RESP listener, if it runs one.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shard's request handler (for in-process use and tests).
    pub fn node(&self) -> &ShardNode {
        &self.node
    }

    /// Serves until `shutdown` fires, drains in-flight requests, then syncs and closes storage.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServerError> {
        let ShardServer {
            node,
            http,
            internal,
            resp,
            resp_config,
            max_connections,
        } = self;
        tracing::info!(
            shard = %node.inner.id,
            storage = %node.inner.storage_kind,
            http = %node.inner.http_addr,
            internal = %node.inner.internal_addr,
            "shard serving"
        );
        let metrics = &node.inner.metrics;
        let http_task = crate::http::serve::serve(
            http,
            crate::http::api::router(node.clone()),
            max_connections,
            metrics.connections("http"),
            shutdown.clone(),
        );
        let internal_task = internal::serve(
            internal,
            node.clone(),
            max_connections,
            metrics.connections("internal"),
            shutdown.clone(),
        );
        let resp_task = crate::resp::serve_if_bound(
            resp,
            node.clone(),
            resp_config,
            max_connections,
            metrics,
            shutdown,
        );
        tokio::join!(http_task, internal_task, resp_task);
        node.inner
            .storage
            .close()
            .await
            .map_err(|e| ServerError::Task(format!("cannot close storage cleanly: {e}")))?;
        tracing::info!(shard = %node.inner.id, "shard stopped; storage synced and closed");
        Ok(())
    }
}

/// A Redis reply as the internal protocol carries it (RESP3 bytes).
fn reply(value: limedb_resp::Value) -> Response {
    Response::Reply(value.to_bytes(limedb_resp::Protocol::Resp3))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, ServerError> {
    listener.local_addr().map_err(|source| ServerError::Io {
        context: "cannot read the bound address".into(),
        source,
    })
}
