//! The coordinator's link to one shard: a small pool of internal-protocol connections, each
//! carrying many requests at once, kept alive by a supervisor task.
//!
//! Each connection has a writer task (which coalesces queued requests into one socket write) and a
//! reader task (which hands each response to the caller waiting on its request id), and a
//! sweeper that times out overdue requests. The supervisor ([`ShardLink::supervise`]) connects,
//! pings the shard when it has answered nothing for a `health_interval`, and reconnects with
//! exponential backoff after any failure. While a link is down every request fails at once with
//! the reason, instead of waiting for a timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use limedb_cluster::ShardId;
use limedb_proto::{Frame, Message, Request, Response};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

use super::discover;
use crate::metrics::ShardMetrics;
use crate::shutdown::Shutdown;
use crate::wire::{write_coalesced, FrameReader, ReadError};

/// First reconnect delay after a failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Requests queued per connection; past that a request fails at once with [`LinkError::Busy`].
const QUEUE_DEPTH: usize = 4096;

/// Why a request could not be answered by the shard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link is down; the reason is the last failure seen.
    #[error("{0}")]
    Down(String),
    /// The connection broke while the request was in flight.
    #[error("the connection to the shard was lost")]
    ConnectionLost,
    /// No answer within the configured timeout.
    #[error("no answer within {0} ms")]
    Timeout(u128),
    /// Too many requests are already queued for the shard's connection.
    #[error("{0} requests are already queued for this shard")]
    Busy(usize),
}

/// Settings of a link.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Health check period.
    pub health_interval: Duration,
    /// Connections kept open.
    pub connections: usize,
    /// Largest frame accepted from the shard ([`crate::config::MAX_INTERNAL_FRAME_BYTES`]).
    pub max_frame_bytes: usize,
    /// The ring epoch the sender routes by, sent with every request (protocol flag `0x0001`);
    /// 0 sends none (a coordinator without a cluster map, a replica's Raft traffic).
    pub ring_epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// A caller waiting for the answer to one request.
struct Waiter {
    reply: oneshot::Sender<Result<Response, LinkError>>,
    deadline: Instant,
}

type Pending = Mutex<HashMap<u64, Waiter>>;

/// One internal-protocol connection.
struct Conn {
    requests: mpsc::Sender<(u64, Request)>,
    pending: Pending,
    next_id: AtomicU64,
    closed: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Conn {
    /// Fails every waiting caller and stops both tasks.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.pending).clear();
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    /// Sends `request` and waits for its answer. The connection's sweeper answers
    /// [`LinkError::Timeout`] once `timeout` has passed, so no timer is set per request.
    async fn call(&self, request: Request, timeout: Duration) -> Result<Response, LinkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LinkError::ConnectionLost);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        lock(&self.pending).insert(id, Waiter { reply, deadline });
        // Removes the entry if this future is dropped (the client went away) before the answer.
        let _forget = ForgetOnDrop {
            pending: &self.pending,
            id,
        };
        self.requests.try_send((id, request)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Busy(QUEUE_DEPTH),
            mpsc::error::TrySendError::Closed(_) => LinkError::ConnectionLost,
        })?;
        answer.await.map_err(|_| LinkError::ConnectionLost)?
    }

    /// Answers [`LinkError::Timeout`] to every waiter whose deadline has passed.
    fn expire(&self, now: Instant, timeout: Duration) {
        let mut pending = lock(&self.pending);
        let expired: Vec<u64> = pending
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(waiter) = pending.remove(&id) {
                let _ = waiter
                    .reply
                    .send(Err(LinkError::Timeout(timeout.as_millis())));
            }
        }
    }
}

struct ForgetOnDrop<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

enum LinkState {
    Down {
        reason: String,
    },
    Up {
        conns: Vec<Arc<Conn>>,
        internal_addr: SocketAddr,
    },
}

/// A snapshot of a link's state for health reports.
#[derive(Clone, Debug)]
pub struct LinkStatus {
    /// Whether requests are being forwarded.
    pub up: bool,
    /// The shard's internal-protocol address, while up.
    pub internal_addr: Option<SocketAddr>,
    /// Why it is down.
    pub reason: Option<String>,
    /// Seconds since the last change of state.
    pub since_secs: u64,
}

/// The coordinator's link to one shard (or one replica of a shard's group).
pub struct ShardLink {
    id: ShardId,
    /// The replica it must be, when that matters (links between replicas).
    replica: Option<u64>,
    url: String,
    options: LinkOptions,
    state: RwLock<LinkState>,
    changed_at: Mutex<Instant>,
    next: AtomicUsize,
    broken: Notify,
    metrics: ShardMetrics,
    /// When the link was created; [`ShardLink::last_answer_ms`] counts from here.
    epoch: Instant,
    /// Milliseconds after `epoch` when the shard last answered anything.
    last_answer_ms: AtomicU64,
    /// Whether the link has ever been up (a new link is down until its first connection).
    ever_up: AtomicBool,
    /// Woken whenever the link comes up.
    came_up: Notify,
}

impl std::fmt::Debug for ShardLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLink")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ShardLink {
    /// A link that starts down until its supervisor connects.
    pub fn new(id: ShardId, url: String, options: LinkOptions, metrics: ShardMetrics) -> Self {
        metrics.up.set(0);
        ShardLink {
            id,
            replica: None,
            url,
            options,
            state: RwLock::new(LinkState::Down {
                reason: "not connected yet".into(),
            }),
            changed_at: Mutex::new(Instant::now()),
            next: AtomicUsize::new(0),
            broken: Notify::new(),
            metrics,
            epoch: Instant::now(),
            last_answer_ms: AtomicU64::new(0),
            ever_up: AtomicBool::new(false),
            came_up: Notify::new(),
        }
    }

    /// Waits (at most `timeout`) for a link that has never been up to make its first
    /// connection; returns at once for a link that was up before (a broken link fails fast).
    pub async fn first_connection(&self, timeout: Duration) {
        if self.ever_up.load(Ordering::Acquire) {
            return;
        }
        let came_up = self.came_up.notified();
        if self.status().up {
            return;
        }
        let _ = tokio::time::timeout(timeout, came_up).await;
    }

    /// A link that also checks the replica id the shard reports.
    pub fn to_replica(mut self, replica: u64) -> Self {
        self.replica = Some(replica);
        self
    }

    /// The shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The shard's HTTP base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Current state, for health reports.
    pub fn status(&self) -> LinkStatus {
        let since_secs = lock(&self.changed_at).elapsed().as_secs();
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            LinkState::Up { internal_addr, .. } => LinkStatus {
                up: true,
                internal_addr: Some(*internal_addr),
                reason: None,
                since_secs,
            },
            LinkState::Down { reason } => LinkStatus {
                up: false,
                internal_addr: None,
                reason: Some(reason.clone()),
                since_secs,
            },
        }
    }

    fn pick(&self) -> Result<Arc<Conn>, LinkError> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            LinkState::Up { conns, .. } if !conns.is_empty() => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
                Ok(Arc::clone(&conns[i]))
            }
            LinkState::Up { .. } => Err(LinkError::Down("no open connection".into())),
            LinkState::Down { reason } => Err(LinkError::Down(reason.clone())),
        }
    }

    /// Sends one request and waits for its answer, at most the configured timeout.
    pub async fn call(&self, request: Request) -> Result<Response, LinkError> {
        self.call_within(request, self.options.timeout).await
    }

    /// Sends one request and waits for its answer, at most `timeout`.
    pub async fn call_within(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, LinkError> {
        let started = Instant::now();
        let result = match self.pick() {
            Ok(conn) => conn.call(request, timeout).await,
            Err(e) => Err(e),
        };
        self.metrics
            .forward_latency
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.forward_errors.inc();
        }
        result
    }

    fn set_state(&self, new: LinkState) {
        let old = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *state, new)
        };
        let was_up = matches!(old, LinkState::Up { .. });
        let up = self.status().up;
        if was_up != up {
            *lock(&self.changed_at) = Instant::now();
        }
        if up {
            self.ever_up.store(true, Ordering::Release);
            self.came_up.notify_waiters();
        }
        if let LinkState::Up { conns, .. } = old {
            for conn in conns {
                conn.close();
            }
        }
        self.metrics.up.set(i64::from(self.status().up));
    }

    /// Marks the link down; logs a warning when it goes down or the reason changes (so a
    /// misconfiguration such as a wrong shard id is visible once, not at every retry).
    fn mark_down(&self, reason: String) {
        let status = self.status();
        if status.up || status.reason.as_deref() != Some(reason.as_str()) {
            tracing::warn!(shard = %self.id, url = %self.url, %reason, "shard is down");
        }
        self.set_state(LinkState::Down { reason });
    }

    /// Keeps the link connected until `shutdown`: connects, health-checks, reconnects.
    pub async fn supervise(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut backoff = MIN_BACKOFF;
        while !shutdown.is_triggered() {
            if !self.status().up {
                match self.connect().await {
                    Ok((conns, internal_addr)) => {
                        tracing::info!(shard = %self.id, url = %self.url, %internal_addr, "shard is up");
                        self.set_state(LinkState::Up {
                            conns,
                            internal_addr,
                        });
                        backoff = MIN_BACKOFF;
                    }
                    Err(reason) => {
                        self.mark_down(reason);
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.wait() => break,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.health_interval) => {
                    // A shard that answered anything lately is alive; ping only an idle one, so
                    // a busy shard is never taken down by a ping stuck behind its backlog.
                    if self.answered_within(self.options.health_interval) {
                        continue;
                    }
                    match self.call(Request::Ping).await {
                        Ok(Response::Pong) | Err(LinkError::Busy(_)) => {}
                        Ok(other) => self.mark_down(format!("unexpected answer to ping: {other:?}")),
                        Err(e) => self.mark_down(format!("health check failed: {e}")),
                    }
                }
                () = self.broken.notified() => {
                    // A notice may come from a connection of an earlier generation that was
                    // already replaced; only a broken current connection takes the link down.
                    if self.any_conn_closed() {
                        self.mark_down("the connection to the shard was lost".into());
                    }
                }
                () = shutdown.wait() => break,
            }
        }
        self.set_state(LinkState::Down {
            reason: "the coordinator is shutting down".into(),
        });
    }

    /// Learns the shard's internal port over HTTP, then opens and greets every connection.
    async fn connect(self: &Arc<Self>) -> Result<(Vec<Arc<Conn>>, SocketAddr), String> {
        let timeout = self.options.timeout;
        let identity = discover::identify(&self.url, timeout).await?;
        if identity.id != self.id {
            return Err(format!(
                "the shard at {} reports id {}, but the coordinator's shard list gives it id {}",
                self.url, identity.id, self.id
            ));
        }
        if let Some(replica) = self.replica.filter(|&r| r != identity.replica_id) {
            return Err(format!(
                "the shard at {} is replica {} of shard {}, not replica {replica}",
                self.url, identity.replica_id, self.id
            ));
        }
        let host = discover::host(discover::authority(&self.url));
        let target = format!("{host}:{}", identity.internal_port);
        let internal_addr = tokio::net::lookup_host(&target)
            .await
            .map_err(|e| format!("cannot resolve {target}: {e}"))?
            .next()
            .ok_or_else(|| format!("{target} resolves to no address"))?;
        let mut conns = Vec::with_capacity(self.options.connections);
        if let Err(e) = self.open_conns(internal_addr, &mut conns).await {
            for conn in &conns {
                conn.close();
            }
            return Err(e);
        }
        Ok((conns, internal_addr))
    }

    async fn open_conns(
        self: &Arc<Self>,
        internal_addr: SocketAddr,
        conns: &mut Vec<Arc<Conn>>,
    ) -> Result<(), String> {
        let timeout = self.options.timeout;
        for _ in 0..self.options.connections.max(1) {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(internal_addr))
                .await
                .map_err(|_| format!("connecting to {internal_addr} timed out"))?
                .map_err(|e| format!("cannot connect to {internal_addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let conn = self.start_conn(stream);
            let failure = match conn.call(Request::Hello, timeout).await {
                Ok(Response::HelloOk { shard_id, .. }) if shard_id == self.id.0 => {
                    conns.push(conn);
                    continue;
                }
                Ok(Response::HelloOk { shard_id, .. }) => format!(
                    "the shard at {internal_addr} says it is shard {shard_id}, expected {}",
                    self.id
                ),
                Ok(other) => format!("unexpected answer to hello: {other:?}"),
                Err(e) => format!("hello failed: {e}"),
            };
            conn.close();
            return Err(failure);
        }
        Ok(())
    }

    fn start_conn(self: &Arc<Self>, stream: TcpStream) -> Arc<Conn> {
        let (reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let conn = Arc::new(Conn {
            requests: tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::with_capacity(3)),
        });
        let write_task = tokio::spawn(write_requests(
            writer,
            rx,
            Arc::clone(&conn),
            Arc::clone(self),
        ));
        let read_task = tokio::spawn(read_responses(
            reader,
            Arc::clone(&conn),
            Arc::clone(self),
            self.options.max_frame_bytes,
        ));
        let sweep_task = tokio::spawn(sweep_deadlines(Arc::clone(&conn), self.options.timeout));
        lock(&conn.tasks).extend([
            write_task.abort_handle(),
            read_task.abort_handle(),
            sweep_task.abort_handle(),
        ]);
        conn
    }

    fn note_answer(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_answer_ms.store(now, Ordering::Relaxed);
    }

    fn answered_within(&self, window: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        last > 0 && now.saturating_sub(last) < window.as_millis() as u64
    }

    fn any_conn_closed(&self) -> bool {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            LinkState::Up { conns, .. } => conns.iter().any(|c| c.closed.load(Ordering::Acquire)),
            LinkState::Down { .. } => false,
        }
    }

    fn connection_broke(&self, conn: &Conn) {
        // Only the first task to notice reports it; a closed conn was already handled.
        if !conn.closed.swap(true, Ordering::AcqRel) {
            lock(&conn.pending).clear();
            self.broken.notify_one();
        }
    }
}

/// Times out overdue requests of `conn` until the connection closes: one timer per connection
/// instead of one per request. A request is answered at most one tick after its deadline.
async fn sweep_deadlines(conn: Arc<Conn>, timeout: Duration) {
    let tick = (timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !conn.closed.load(Ordering::Acquire) {
        interval.tick().await;
        conn.expire(Instant::now(), timeout);
    }
}

async fn write_requests(
    mut writer: OwnedWriteHalf,
    mut requests: mpsc::Receiver<(u64, Request)>,
    conn: Arc<Conn>,
    link: Arc<ShardLink>,
) {
    let epoch = Arc::clone(&link.options.ring_epoch);
    let result = write_coalesced(&mut writer, &mut requests, |(id, request), out| {
        match epoch.load(Ordering::Relaxed) {
            0 => Frame::request(id, request),
            epoch => Frame::routed(id, epoch, request),
        }
        .encode(out)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(shard = %link.id, error = %e, "write to shard failed");
    }
    link.connection_broke(&conn);
}

async fn read_responses(
    reader: OwnedReadHalf,
    conn: Arc<Conn>,
    link: Arc<ShardLink>,
    max_frame_bytes: usize,
) {
    let mut frames = FrameReader::new(reader, max_frame_bytes);
    loop {
        match frames.next().await {
            Ok(Some(Frame {
                request_id,
                message: Message::Response(response),
                ..
            })) => {
                link.note_answer();
                if let Some(waiter) = lock(&conn.pending).remove(&request_id) {
                    let _ = waiter.reply.send(Ok(response));
                }
            }
            Ok(Some(_)) => {
                tracing::warn!(shard = %link.id, "shard sent a request frame; closing the connection");
                break;
            }
            Err(ReadError::Malformed(e)) => {
                tracing::warn!(shard = %link.id, error = %e, "malformed frame from shard; closing the connection");
                break;
            }
            Ok(None) | Err(ReadError::Io(_)) => break,
        }
    }
    link.connection_broke(&conn);
}
