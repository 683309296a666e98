//! The RESP listener: Redis's protocol on a shard or a coordinator, so that redis-cli,
//! redis-benchmark and Redis client libraries work against LimeDB unchanged (see `docs/resp.md`).
//!
//! - [`serve`] accepts connections (capped, stopped by shutdown) and runs one task per
//!   connection; a slow or stuck client holds up only its own task.
//! - A connection reads into a bounded buffer, takes every complete request off it with
//!   [`limedb_resp::RequestParser`], executes them one after another and appends the replies to
//!   an output buffer, which is written once the read buffer holds no complete request (or once
//!   it passes [`FLUSH_BYTES`]): pipelined requests are answered in order with few writes.
//!   The requests that are buffered together go to the session as one batch, and stretches of
//!   data commands in it to [`Backend::execute_many`], so a shard serves a pipeline of GETs with
//!   one storage hand-off and a coordinator sends one round trip per shard.
//!   While a reply is being written nothing more is read, so a client that does not read its
//!   replies only fills its own socket. Memory per connection is one request (bounded by
//!   [`RespConfig`]'s limits) plus [`FLUSH_BYTES`] of replies plus the replies of one stretch
//!   of batched commands, a stretch being at most [`conn::MAX_STRETCH`] commands and sized to
//!   its replies: [`conn::FIRST_STRETCH`] at first, then about one flush of replies (one reply
//!   if each is larger).
//! - A protocol error is answered with Redis's text and the connection closed, as Redis does;
//!   an idle connection is closed after [`RespConfig::idle_timeout`] (if set).
//! - [`conn`] answers the connection's own commands (PING, HELLO, AUTH, CLIENT, MULTI, ...),
//!   [`access`] checks credentials and each command's permission;
//!   everything else goes to the node's [`Backend`]: [`keys`] on a shard, the router on a
//!   coordinator. [`table`] lists the commands; [`glob`] matches `KEYS`/`SCAN` patterns;
//!   [`cursor`] keeps `SCAN` cursors.

pub mod access;
pub mod conn;
pub mod cursor;
pub mod glob;
pub mod keys;
pub mod table;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use limedb_resp::{RequestLimits, RequestParser, Value};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::accept::{self, Acceptor};
use crate::http::serve::DRAIN_TIMEOUT;
use crate::shutdown::Shutdown;

/// Replies buffered before they are written even though more requests are waiting.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Most requests of one pipeline executed as one batch.
const MAX_BATCH_COMMANDS: usize = 1024;
/// A batch stops growing once its arguments reach this many bytes.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Bytes asked of the socket per read (more when a large argument is arriving).
const READ_CHUNK: usize = 16 * 1024;
/// Largest single read reservation, so a declared huge argument costs memory only as it arrives.
const MAX_READ_RESERVE: usize = 1 << 20;

/// Settings of a RESP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespConfig {
    /// Close a connection that sends nothing for this long (`None`: never, Redis's default).
    pub idle_timeout: Option<Duration>,
    /// Request limits (largest argument, most arguments, inline line length).
    pub limits: RequestLimits,
}

impl RespConfig {
    /// Limits that follow the node's key and value limits: an argument may be as large as the
    /// largest key or value, a request as large as a few of them.
    pub fn for_limits(limits: &crate::config::Limits, idle_timeout: Option<Duration>) -> Self {
        let max_bulk = limits.max_value_bytes.max(limits.max_key_bytes);
        RespConfig {
            idle_timeout,
            limits: RequestLimits {
                max_bulk_bytes: max_bulk,
                max_args: 1 << 20,
                max_inline_bytes: limedb_resp::DEFAULT_MAX_INLINE_BYTES,
                max_request_bytes: max_bulk.saturating_mul(2).max(256 << 20),
            },
        }
    }
}

/// An error reply on its way out; its text is what follows the `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fail(pub String);

impl Fail {
    /// An error reply with `text` (starting with a code such as `ERR`).
    pub fn new(text: impl Into<String>) -> Fail {
        Fail(text.into())
    }
}

/// A command's outcome.
pub type Reply = Result<Value, Fail>;

/// Redis's wrong-arity error.
pub fn arity_error(name: &str) -> Fail {
    Fail(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Redis's unknown-command error, quoting (the start of) the first arguments.
pub fn unknown_command(args: &[Bytes]) -> Fail {
    let clip = |b: &Bytes| {
        let s = String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned();
        s.replace(['\r', '\n'], " ")
    };
    let name = args.first().map(clip).unwrap_or_default();
    let mut rest = String::new();
    for a in args.iter().skip(1) {
        if rest.len() >= 128 {
            break;
        }
        rest.push_str(&format!("'{}' ", clip(a)));
    }
    Fail(format!(
        "ERR unknown command '{name}', with args beginning with: {rest}"
    ))
}

/// What a node executes for its RESP connections: the data commands and transactions.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Executes one data command (any command whose [`table::Route`] is not `Connection`).
    fn execute(&self, args: Vec<Bytes>) -> impl Future<Output = Value> + Send;
    /// Executes several data commands of one pipeline, in order, with the same effect and
    /// replies as calling [`Backend::execute`] on each in turn; lets a node share work among
    /// them (one storage hand-off, one round trip per shard).
    fn execute_many(&self, commands: Vec<Vec<Bytes>>) -> impl Future<Output = Vec<Value>> + Send;
    /// The write versions of `keys` now, for `WATCH`.
    fn watch(&self, keys: Vec<Bytes>) -> impl Future<Output = Result<Vec<u64>, Fail>> + Send;
    /// Runs `commands` atomically if no watched key changed since its version was taken:
    /// an array of replies, or a null array when a watched key changed.
    fn transaction(
        &self,
        commands: Vec<Vec<Bytes>>,
        watched: Vec<(Bytes, u64)>,
    ) -> impl Future<Output = Value> + Send;
    /// `shard` or `coordinator`, for INFO.
    fn role(&self) -> &'static str;
    /// The body of INFO's `# Replication` section, Redis-style `field:value` lines.
    fn replication_info(&self) -> impl Future<Output = String> + Send;
}

/// Counters shared by a listener's connections (INFO clients/stats).
#[derive(Debug)]
pub struct RespStats {
    /// Connections open now.
    pub connected: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Commands executed since start.
    pub commands: AtomicU64,
    /// Next client id.
    pub next_id: AtomicU64,
    /// When the listener started.
    pub started: Instant,
    /// The listener's port.
    pub port: u16,
}

/// [`serve`] on `listener` when the node has a RESP listener (its connection gauge registered
/// in `metrics` only then); finishes at once when it has none.
pub async fn serve_if_bound<B: Backend>(
    listener: Option<TcpListener>,
    backend: B,
    users: Arc<crate::auth::Users>,
    config: RespConfig,
    max_connections: usize,
    metrics: &crate::metrics::Metrics,
    shutdown: Shutdown,
) {
    if let Some(listener) = listener {
        let open_connections = metrics.connections("resp");
        serve(
            listener,
            backend,
            users,
            config,
            max_connections,
            open_connections,
            shutdown,
        )
        .await;
    }
}

/// Accepts RESP connections until `shutdown`, then closes them (after the request each is
/// executing) within the drain timeout.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: B,
    users: Arc<crate::auth::Users>,
    config: RespConfig,
    max_connections: usize,
    open_connections: Gauge,
    mut shutdown: Shutdown,
) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let stats = Arc::new(RespStats {
        connected: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        commands: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        started: Instant::now(),
        port,
    });
    let acceptor = Acceptor::new(listener, max_connections, "resp");
    let mut connections = JoinSet::new();
    while let Some((stream, peer, permit)) = acceptor.next(&mut shutdown).await {
        while connections.try_join_next().is_some() {}
        let backend = backend.clone();
        let users = Arc::clone(&users);
        let gauge = open_connections.clone();
        let shutdown = shutdown.clone();
        let stats = Arc::clone(&stats);
        gauge.inc();
        stats.connected.fetch_add(1, Ordering::Relaxed);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            let session = conn::Session::new(
                stats.next_id.fetch_add(1, Ordering::Relaxed),
                peer,
                backend,
                Arc::clone(&stats),
                users,
            );
            if let Err(e) = serve_connection(stream, peer, session, config, &stats, shutdown).await
            {
                tracing::debug!(%peer, error = %e, "resp connection closed with an error");
            }
            stats.connected.fetch_sub(1, Ordering::Relaxed);
            gauge.dec();
            drop(permit);
        });
    }
    drop(acceptor);
    accept::drain(connections, DRAIN_TIMEOUT, "resp").await;
}

/// Serves one connection until the client quits or closes, a protocol error, the idle
/// timeout, or shutdown.
async fn serve_connection<B: Backend>(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut session: conn::Session<B>,
    config: RespConfig,
    stats: &RespStats,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut parser = RequestParser::new(config.limits);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    let mut batch: VecDeque<Vec<Bytes>> = VecDeque::new();
    loop {
        loop {
            // Take every complete request that is buffered (up to a bound), then execute them
            // together: the session batches what it can.
            let mut failure = None;
            let mut batch_bytes = 0;
            while batch.len() < MAX_BATCH_COMMANDS && batch_bytes < MAX_BATCH_BYTES {
                match parser.next(&mut input) {
                    Ok(Some(args)) => {
                        batch_bytes += args.iter().map(|a| a.len() + 16).sum::<usize>();
                        batch.push_back(args);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if batch.is_empty() && failure.is_none() {
                break;
            }
            stats
                .commands
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            while !batch.is_empty() {
                let close = session.handle_batch(&mut batch, &mut output).await;
                if close {
                    stream.write_all(&output).await?;
                    return stream.shutdown().await;
                }
                if output.len() >= FLUSH_BYTES {
                    stream.write_all(&output).await?;
                    output.clear();
                }
            }
            if let Some(e) = failure {
                tracing::debug!(%peer, error = %e, "resp protocol error; closing");
                Value::error(e.to_string()).encode(session.protocol(), &mut output);
                stream.write_all(&output).await?;
                return stream.shutdown().await;
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
            // Give back the memory of an unusually large reply.
            if output.capacity() > 4 * FLUSH_BYTES {
                output = BytesMut::new();
            }
        }
        if input.is_empty() && input.capacity() > 4 * MAX_READ_RESERVE {
            input = BytesMut::with_capacity(READ_CHUNK);
        }
        let want = parser
            .bytes_wanted(&input)
            .clamp(READ_CHUNK, MAX_READ_RESERVE);
        input.reserve(want);
        let read = stream.read_buf(&mut input);
        let n = tokio::select! {
            n = async {
                match config.idle_timeout {
                    Some(limit) => tokio::time::timeout(limit, read).await.ok(),
                    None => Some(read.await),
                }
            } => n,
            () = shutdown.wait() => return Ok(()),
        };
        match n {
            None => {
                tracing::debug!(%peer, "resp connection idle past the timeout; closing");
                return Ok(());
            }
            Some(Ok(0)) => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
        }
    }
}
