//! [`PgEngine`]: the [`Engine`] trait over a PostgreSQL database.
//!
//! # Why the engine owns a tokio runtime
//!
//! The `Engine` trait is synchronous: the shard calls it from its writer thread (`write_many`,
//! group commit) and from tokio's blocking pool (`get`, `page`, `close`), never from an async
//! worker. tokio-postgres is async. The engine therefore owns a small multi-thread runtime (2
//! threads named `limedb-pg`) that drives the sockets of its pooled connections, and each call
//! runs its future with [`Handle::block_on`] on the calling thread, bounded by
//! [`PgOptions::timeout`]. Owning the runtime (instead of borrowing the server's) keeps the crate
//! usable from plain threads and tests, and means a stalled database can never occupy the
//! server's async workers. `stats` and `health` are answered from figures the background tasks
//! keep, so they never block and may be called from async code.
//!
//! # Failure and recovery
//!
//! Every call is bounded: connecting ([`PgOptions::timeout`] as the connect timeout), waiting
//! for a pooled connection, and each statement (also the server's `statement_timeout`). A call
//! that fails for lack of a server returns [`StorageError::Unavailable`] and marks the engine
//! unavailable; the next call that succeeds, or the health probe (a `SELECT 1` every
//! [`PgOptions::health_interval`]), marks it healthy again. Pooled connections are checked on
//! checkout and replaced when PostgreSQL closed them (a restart), so the engine recovers by
//! itself. A write is acknowledged only after its transaction committed, so an outage loses
//! nothing that was acknowledged.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::try_join_all;
use limedb_storage::{
    now_ms, Engine, EngineStats, Health, Page, Result, StorageError, Value, WriteOp,
};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use tokio_postgres::Row;

use crate::errors::{from_pool, timed_out, During};
use crate::options::{redact_url, PgOptions};
use crate::sql;
use crate::BACKEND;

/// How often the live-key figures of [`Engine::stats`] are recounted (a full scan).
const FIGURES_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on one background statement (the stats recount scans the whole table).
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most expired rows deleted by one maintenance statement.
const RECLAIM_BATCH_ROWS: i64 = 10_000;

/// A shard's keys in a PostgreSQL database. See the [module docs](self).
pub struct PgEngine {
    shared: Arc<Shared>,
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the engine and its background tasks share.
struct Shared {
    pool: Pool,
    /// `user@host:port/database`, for messages.
    target: String,
    timeout: Duration,
    closed: AtomicBool,
    /// Fast path of `health`: `true` when `health` holds [`Health::Healthy`].
    healthy: AtomicBool,
    health: Mutex<Health>,
    keys: AtomicU64,
    live_bytes: AtomicU64,
    expired_reclaimed: AtomicU64,
    user_bytes_written: AtomicU64,
}

impl std::fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEngine")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_i64(ms: Option<i64>) -> Option<u64> {
    ms.map(|v| u64::try_from(v).unwrap_or(0))
}

/// Reads column `i` of `row`, turning a type mismatch into an error instead of a panic.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(|e| StorageError::Backend {
        backend: BACKEND,
        reason: format!("unexpected column {i} in an answer: {e}"),
    })
}

fn entry(row: &Row) -> Result<(Bytes, Value)> {
    let key: Vec<u8> = column(row, 0)?;
    let data: Vec<u8> = column(row, 1)?;
    let expires: Option<i64> = column(row, 2)?;
    Ok((
        Bytes::from(key),
        Value {
            data: Bytes::from(data),
            expires_at_ms: from_i64(expires),
        },
    ))
}

impl Shared {
    /// Records the outcome of a call: unavailable marks the engine unhealthy, success healthy.
    fn observe<T>(&self, result: &Result<T>) {
        match result {
            Ok(_) => {
                if !self.healthy.load(Ordering::Acquire) {
                    self.set_health(Health::Healthy);
                }
            }
            Err(e @ StorageError::Unavailable { .. }) => {
                self.set_health(Health::Unavailable {
                    reason: e.to_string(),
                });
            }
            Err(_) => {}
        }
    }

    fn set_health(&self, health: Health) {
        let mut current = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match (&*current, &health) {
            (Health::Healthy, Health::Unavailable { reason }) => {
                tracing::warn!(server = %self.target, %reason, "PostgreSQL is unavailable");
            }
            (Health::Unavailable { .. }, Health::Healthy) => {
                tracing::info!(server = %self.target, "PostgreSQL is available again");
            }
            _ => {}
        }
        self.healthy
            .store(matches!(health, Health::Healthy), Ordering::Release);
        *current = health;
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| from_pool(&format!("cannot connect to {}", self.target), &e))
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        let client = self.client().await?;
        let ctx = || format!("get on {}", self.target);
        let statement = client.prepare_cached(sql::GET).await.during(ctx)?;
        let row = client
            .query_opt(&statement, &[&key, &to_i64(now_ms())])
            .await
            .during(ctx)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let data: Vec<u8> = column(&row, 0)?;
                let expires: Option<i64> = column(&row, 1)?;
                Ok(Some(Value {
                    data: Bytes::from(data),
                    expires_at_ms: from_i64(expires),
                }))
            }
        }
    }

    async fn write_many(&self, ops: &[WriteOp<'_>]) -> Result<Vec<bool>> {
        let mut client = self.client().await?;
        let ctx = || format!("write of {} keys on {}", ops.len(), self.target);
        let put = client.prepare_cached(sql::PUT).await.during(ctx)?;
        let delete = client.prepare_cached(sql::DELETE).await.during(ctx)?;
        let tx = client.transaction().await.during(ctx)?;
        let now = to_i64(now_ms());
        // Polled together, the statements are pipelined on the connection and run in order.
        let statements = ops.iter().map(|op| {
            let tx = &tx;
            let (put, delete) = (&put, &delete);
            async move {
                match *op {
                    WriteOp::Put {
                        key,
                        value,
                        expires_at_ms,
                    } => {
                        let expires = expires_at_ms.map(to_i64);
                        tx.execute(put, &[&key, &value, &expires])
                            .await
                            .map(|_| false)
                    }
                    WriteOp::Delete { key } => tx
                        .query_opt(delete, &[&key, &now])
                        .await
                        .map(|row| row.and_then(|r| r.try_get::<_, bool>(0).ok()) == Some(true)),
                }
            }
        });
        let flags = try_join_all(statements).await.during(ctx)?;
        tx.commit().await.during(ctx)?;
        let written: usize = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key } => key.len(),
            })
            .sum();
        self.user_bytes_written
            .fetch_add(written as u64, Ordering::Relaxed);
        Ok(flags)
    }

    async fn page(&self, offset: u64, limit: usize) -> Result<Page> {
        let mut client = self.client().await?;
        let ctx = || format!("key listing on {}", self.target);
        let page = client.prepare_cached(sql::PAGE).await.during(ctx)?;
        let count = client.prepare_cached(sql::COUNT).await.during(ctx)?;
        // One snapshot for the page and the total, so they agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .during(ctx)?;
        let now = to_i64(now_ms());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = tx
            .query(&page, &[&now, &to_i64(offset), &limit])
            .await
            .during(ctx)?;
        let total_row = tx.query_one(&count, &[&now]).await.during(ctx)?;
        tx.commit().await.during(ctx)?;
        let total: i64 = column(&total_row, 0)?;
        let entries = rows.iter().map(entry).collect::<Result<Vec<_>>>()?;
        Ok(Page {
            entries,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn scan(&self, start: Option<&[u8]>, limit: usize) -> Result<Vec<(Bytes, Value)>> {
        let client = self.client().await?;
        let ctx = || format!("scan on {}", self.target);
        let statement = client.prepare_cached(sql::SCAN).await.during(ctx)?;
        let start: &[u8] = start.unwrap_or(&[]);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&statement, &[&start, &to_i64(now_ms()), &limit])
            .await
            .during(ctx)?;
        rows.iter().map(entry).collect()
    }

    async fn len(&self) -> Result<u64> {
        let client = self.client().await?;
        let ctx = || format!("count on {}", self.target);
        let statement = client.prepare_cached(sql::COUNT).await.during(ctx)?;
        let row = client
            .query_one(&statement, &[&to_i64(now_ms())])
            .await
            .during(ctx)?;
        let n: i64 = column(&row, 0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `SELECT 1`: is the server there and answering?
    async fn probe(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .during(|| format!("health probe of {}", self.target))?;
        Ok(())
    }

    /// Deletes expired rows in bounded batches; returns how many.
    async fn reclaim(&self) -> Result<u64> {
        let client = self.client().await?;
        let ctx = || format!("expiry sweep on {}", self.target);
        let statement = client.prepare_cached(sql::RECLAIM).await.during(ctx)?;
        let mut total = 0;
        loop {
            let n = client
                .execute(&statement, &[&to_i64(now_ms()), &RECLAIM_BATCH_ROWS])
                .await
                .during(ctx)?;
            total += n;
            if n < RECLAIM_BATCH_ROWS as u64 {
                return Ok(total);
            }
        }
    }

    /// Recounts the live keys and their bytes for [`Engine::stats`].
    ///
    /// A full scan: on a large table it takes longer than a request may, so it runs in a
    /// transaction with its own statement timeout, [`BACKGROUND_TIMEOUT`].
    async fn refresh_figures(&self) -> Result<()> {
        let mut client = self.client().await?;
        let ctx = || format!("stats on {}", self.target);
        let statement = client.prepare_cached(sql::FIGURES).await.during(ctx)?;
        let tx = client.transaction().await.during(ctx)?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            BACKGROUND_TIMEOUT.as_millis()
        ))
        .await
        .during(ctx)?;
        let row = tx
            .query_one(&statement, &[&to_i64(now_ms())])
            .await
            .during(ctx)?;
        tx.commit().await.during(ctx)?;
        let keys: i64 = column(&row, 0)?;
        let bytes: i64 = column(&row, 1)?;
        self.keys
            .store(u64::try_from(keys).unwrap_or(0), Ordering::Relaxed);
        self.live_bytes
            .store(u64::try_from(bytes).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Runs `f` within the timeout and records the outcome in the health state.
    async fn bounded<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let result = match tokio::time::timeout(self.timeout, f).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(
                &format!("{what} on {}", self.target),
                self.timeout,
            )),
        };
        self.observe(&result);
        result
    }
}

impl PgEngine {
    /// Connects, creates the shard's database and table if absent, and starts the health probe
    /// and the expiry sweep. Fails with a clear error (wrong credentials, no server, a malformed
    /// URL) within about [`PgOptions::timeout`] per connection attempt.
    ///
    /// Call it from a thread that is not running async tasks (it blocks).
    pub fn open(options: PgOptions) -> Result<PgEngine> {
        let mut config: tokio_postgres::Config = options.url.parse().map_err(|e| {
            StorageError::Config(format!(
                "{:?} is not a PostgreSQL URL (postgres://user[:password]@host[:port]/): {e}",
                redact_url(&options.url)
            ))
        })?;
        crate::options::database_name(&options.database, 0)?;
        if options.pool_size == 0 {
            return Err(StorageError::Config(
                "the PostgreSQL pool needs at least 1 connection".into(),
            ));
        }
        let timeout = options.timeout.max(Duration::from_millis(1));
        config.connect_timeout(timeout);
        if config.get_application_name().is_none() {
            config.application_name("limedb");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("limedb-pg")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Io {
                path: std::path::PathBuf::new(),
                source: e,
                context: "cannot start the PostgreSQL engine's runtime",
            })?;
        let handle = runtime.handle().clone();
        let database = options.database.clone();
        let target = sql::describe(&config, &database);
        let shared = runtime.block_on(async {
            sql::ensure_database(&config, &database, timeout).await?;
            let mut shard_config = config.clone();
            shard_config.dbname(&database);
            // Statements that outlive the timeout are cancelled by the server too.
            shard_config.options(format!("-c statement_timeout={}", timeout.as_millis()));
            let manager = Manager::from_config(
                shard_config,
                tokio_postgres::NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            let pool = Pool::builder(manager)
                .max_size(options.pool_size)
                .wait_timeout(Some(timeout))
                .create_timeout(Some(timeout))
                .recycle_timeout(Some(timeout))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| {
                    StorageError::Config(format!("cannot build the connection pool: {e}"))
                })?;
            let shared = Shared {
                pool,
                target: target.clone(),
                timeout,
                closed: AtomicBool::new(false),
                healthy: AtomicBool::new(true),
                health: Mutex::new(Health::Healthy),
                keys: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
                expired_reclaimed: AtomicU64::new(0),
                user_bytes_written: AtomicU64::new(0),
            };
            let client = shared.client().await?;
            sql::ensure_table(&client, &target).await?;
            // Open a few more connections now, concurrently: logging in (SCRAM) costs CPU, and
            // a burst of first requests should not all wait for new connections. Best effort:
            // the pool opens what is missing on demand.
            let warm = options.pool_size.min(4).saturating_sub(1);
            let more = futures_util::future::join_all((0..warm).map(|_| shared.client())).await;
            drop(more);
            drop(client);
            shared.refresh_figures().await?;
            Ok::<_, StorageError>(Arc::new(shared))
        })?;
        let tasks = vec![
            handle.spawn(monitor(Arc::clone(&shared), options.health_interval)),
            handle.spawn(maintain(Arc::clone(&shared), options.reclaim_interval)),
        ];
        tracing::info!(server = %target, pool_size = options.pool_size, "PostgreSQL storage open");
        Ok(PgEngine {
            shared,
            handle,
            runtime: Mutex::new(Some(runtime)),
            tasks: Mutex::new(tasks),
        })
    }

    /// `user@host:port/database` of the server this engine uses (never the password).
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// Runs one call: refuses after `close`, bounds it by the timeout, records its outcome.
    fn run<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        self.handle.block_on(self.shared.bounded(what, f))
    }
}

/// The health probe: `SELECT 1` every `interval`, so the health endpoint shows an outage (and
/// its end) even when no requests arrive.
async fn monitor(shared: Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let _ = shared.bounded("health probe", shared.probe()).await;
    }
}

/// Deletes expired rows every `interval` and refreshes the stats figures now and then. Their
/// failures are logged but do not change the engine's health: a slow recount of a large table
/// says nothing about whether requests can be served (the probe and the requests tell that).
async fn maintain(shared: Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_figures = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        if !shared.healthy.load(Ordering::Acquire) {
            continue;
        }
        match tokio::time::timeout(BACKGROUND_TIMEOUT, shared.reclaim()).await {
            Ok(Ok(n)) => {
                shared.expired_reclaimed.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "expiry sweep failed"),
            Err(_) => tracing::warn!("expiry sweep timed out"),
        }
        if last_figures.elapsed() >= FIGURES_INTERVAL {
            last_figures = tokio::time::Instant::now();
            match tokio::time::timeout(BACKGROUND_TIMEOUT, shared.refresh_figures()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "stats recount failed"),
                Err(_) => tracing::warn!("stats recount timed out"),
            }
        }
    }
}

impl Engine for PgEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        self.run("get", self.shared.get(key))
    }

    fn put(&self, key: &[u8], value: &[u8], expires_at_ms: Option<u64>) -> Result<()> {
        let op = WriteOp::Put {
            key,
            value,
            expires_at_ms,
        };
        self.write_many(&[op]).map(|_| ())
    }

    fn delete(&self, key: &[u8]) -> Result<bool> {
        let flags = self.write_many(&[WriteOp::Delete { key }])?;
        Ok(flags.first().copied().unwrap_or(false))
    }

    /// One transaction for the whole batch: all of it commits or none of it does.
    fn write_many(&self, ops: &[WriteOp<'_>]) -> Result<Vec<bool>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.run("write", self.shared.write_many(ops))
    }

    fn page(&self, offset: u64, limit: usize) -> Result<Page> {
        self.run("key listing", self.shared.page(offset, limit))
    }

    fn scan(&self, start: Option<&[u8]>, limit: usize) -> Result<Vec<(Bytes, Value)>> {
        self.run("scan", self.shared.scan(start, limit))
    }

    fn len(&self) -> Result<u64> {
        self.run("count", self.shared.len())
    }

    /// Figures kept by the background tasks: `keys` and `live_bytes` are recounted every few
    /// seconds, so they trail recent writes.
    fn stats(&self) -> EngineStats {
        EngineStats {
            backend: "postgres",
            keys: self.shared.keys.load(Ordering::Relaxed),
            live_bytes: self.shared.live_bytes.load(Ordering::Relaxed),
            expired_reclaimed: self.shared.expired_reclaimed.load(Ordering::Relaxed),
            user_bytes_written: self.shared.user_bytes_written.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }

    fn health(&self) -> Health {
        if self.shared.closed.load(Ordering::Acquire) {
            return Health::Unavailable {
                reason: "the PostgreSQL storage engine is closed".into(),
            };
        }
        if self.shared.healthy.load(Ordering::Acquire) {
            return Health::Healthy;
        }
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Nothing to do: a write is acknowledged only after its transaction committed, which
    /// under `synchronous_commit = on` (PostgreSQL's default) is on disk.
    fn sync(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    fn close(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.shared.pool.close();
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        tracing::info!(server = %self.shared.target, "PostgreSQL storage closed");
        Ok(())
    }
}

impl Drop for PgEngine {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed on an async worker; this never does.
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}
