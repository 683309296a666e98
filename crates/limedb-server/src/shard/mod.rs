//! A shard: one storage engine served over HTTP (direct access) and over the internal binary
//! protocol (traffic from the coordinator).
//!
//! [`ShardNode`] owns the engine and answers requests; [`storage::Storage`] runs each engine
//! call where it cannot stall the runtime (inline for in-memory reads, a writer thread, or the
//! blocking pool). [`ShardServer`] binds the two
//! listeners, runs them until shutdown, drains in-flight requests and then syncs and closes the
//! engine, so a clean stop never loses an acknowledged write.

pub mod capture;
pub mod internal;
pub mod map_group;
pub mod mover;
pub mod ownership;
pub mod replication;
mod resp_backend;
pub mod storage;
pub mod transfer;

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
use crate::node::{
    HealthReport, KeyEntry, KeysPage, KvNode, MapRequest, MoveRequest, ReplicaChange,
};
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
    /// Replication settings, on a replicated shard.
    replication: Option<crate::config::ReplicationConfig>,
    storage: Storage,
    storage_kind: StorageKind,
    limits: Limits,
    metrics: Metrics,
    http_addr: SocketAddr,
    internal_addr: SocketAddr,
    started: Instant,
    cursors: crate::resp::cursor::Cursors,
    /// Which keys this shard serves (see [`ownership`]).
    ownership: ownership::Ownership,
    /// On a map-group replica: what the move driver reports.
    mover: mover::MoverStatus,
    /// The changes this replica follows for a transfer being copied (see [`capture`]).
    captures: Arc<capture::Captures>,
    /// Who may use the client listeners (see [`crate::auth`]).
    users: Arc<crate::auth::Users>,
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

    /// This replica's id in the shard's group (1 for a shard started without `--peers`).
    pub fn replica_id(&self) -> u64 {
        self.inner.replication.as_ref().map_or(1, |r| r.replica_id)
    }

    /// Answers one internal-protocol request, routed by a coordinator at `ring_epoch` (`None`:
    /// sent without one, as by a seed-style coordinator or a tool).
    pub async fn handle(&self, request: Request, ring_epoch: Option<u64>) -> Response {
        let started = Instant::now();
        let limits = self.inner.limits;
        match request {
            Request::Hello => Response::HelloOk {
                shard_id: self.inner.id.0,
                protocol_version: PROTOCOL_VERSION,
                server: SERVER_NAME.to_string(),
            },
            Request::Ping => Response::Pong,
            Request::Raft {
                shard_id,
                target,
                rpc,
                payload,
            } => self.handle_raft(shard_id, target, rpc, payload).await,
            data => {
                if let Err(e) = self.refuse_on_map_group() {
                    return error_response(&e);
                }
                // A follower refuses data requests up front, naming the leader, so that a
                // coordinator can send them there (and never sees a follower's RESP error).
                if let Some(replica) = self.inner.storage.replica() {
                    if let Err(e) = replica.check_leader() {
                        return error_response(&ApiError::from(e));
                    }
                }
                let listing = ring_epoch.filter(|_| is_listing(&data));
                let response = self.handle_data(data, started, limits).await;
                match listing {
                    Some(sent) if !matches!(response, Response::Error { .. }) => {
                        match self.listed_at(sent) {
                            Ok(()) => response,
                            Err(e) => error_response(&e),
                        }
                    }
                    _ => response,
                }
            }
        }
    }

    /// After a listing routed at ring epoch `sent`: `WrongShard` if this shard's ownership
    /// record is newer. A listing is not refused for the keys it names (it names none) but
    /// for when it ran: a coordinator keeps the keys each shard owns at `sent`, which is
    /// complete only if no range of this shard was fenced (and so perhaps cleaned up) before
    /// the listing read the engine. The record is read after the listing, so a record no
    /// newer than `sent` means the engine was read before any newer fence.
    fn listed_at(&self, sent: u64) -> Result<(), ApiError> {
        let Some(replica) = self.inner.storage.replica() else {
            return Ok(());
        };
        match self.inner.ownership.routing(replica.record())? {
            Some(routing) if routing.epoch() > sent => Err(ApiError::WrongShard {
                epoch: routing.epoch(),
                shard: self.inner.id,
                owner: self.inner.id,
            }),
            _ => Ok(()),
        }
    }

    async fn handle_data(&self, request: Request, started: Instant, limits: Limits) -> Response {
        let _admitted = match self.admit(&request_keys(&request)).await {
            Ok(guard) => guard,
            Err(e) => {
                self.inner
                    .metrics
                    .record(Api::Internal, op_of(&request), started, false);
                return error_response(&e);
            }
        };
        let (op, result) = match request {
            Request::Hello | Request::Ping | Request::Raft { .. } => {
                return Response::Error {
                    code: ErrorCode::Internal,
                    message: "not a data request".into(),
                }
            }
            Request::Get { key } => (
                Op::Get,
                async {
                    limits.check_key(&key)?;
                    self.read_key(key).await.map(Response::Value)
                }
                .await,
            ),
            Request::Set { key, value, ttl_ms } => (
                Op::Set,
                async {
                    limits.check_key(&key)?;
                    limits.check_value(value.len())?;
                    limits.check_ttl(ttl_ms)?;
                    self.write_key(key, value, ttl_ms)
                        .await
                        .map(|()| Response::Done)
                }
                .await,
            ),
            Request::Delete { key } => (
                Op::Delete,
                async {
                    limits.check_key(&key)?;
                    self.delete_key(key).await.map(Response::Deleted)
                }
                .await,
            ),
            Request::Command { args } => (Op::Command, Ok(reply(self.run_command(args).await))),
            Request::Transaction { commands, watched } => (
                Op::Command,
                Ok(reply(self.run_transaction(commands, watched).await)),
            ),
            Request::Pipeline { commands } => {
                (Op::Command, Ok(reply(self.run_pipeline(commands).await)))
            }
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

    async fn handle_raft(&self, shard_id: u32, target: u64, rpc: u8, payload: Bytes) -> Response {
        let bad = |message: String| Response::Error {
            code: ErrorCode::BadRequest,
            message,
        };
        let (Some(replica), Some(rep)) = (self.inner.storage.replica(), &self.inner.replication)
        else {
            return Response::Error {
                code: ErrorCode::Unsupported,
                message: format!(
                    "shard {} is not replicated (started without --peers)",
                    self.inner.id
                ),
            };
        };
        if shard_id != self.inner.id.0 || target != rep.replica_id {
            return bad(format!(
                "this is replica {} of shard {}, not replica {target} of shard {shard_id}",
                rep.replica_id, self.inner.id
            ));
        }
        let Some(kind) = limedb_raft::RpcKind::from_u8(rpc) else {
            return bad(format!("unknown raft rpc {rpc}"));
        };
        match replica.handle_rpc(kind, payload).await {
            Ok(reply) => Response::RaftReply(reply),
            Err(e) => Response::Error {
                code: ErrorCode::Internal,
                message: e.to_string(),
            },
        }
    }

    /// The replication part of the health document.
    async fn replication_json(&self) -> serde_json::Value {
        let pid = std::process::id();
        let (Some(replica), Some(rep)) = (self.inner.storage.replica(), &self.inner.replication)
        else {
            return serde_json::json!({
                "pid": pid,
                "replicated": false,
                "replicaId": 1,
                "role": "leader",
                "leader": format!("http://{}", self.inner.http_addr),
                "term": 0,
                "commitIndex": null,
                "appliedIndex": null,
            });
        };
        let status = replica.status();
        let last = status.last_log_index.unwrap_or(0);
        let leading = status.role == limedb_raft::Role::Leader;
        let members: Vec<serde_json::Value> = status
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "replicaId": m.id,
                    "url": m.url,
                    "voter": m.voter,
                    "matchedIndex": if leading { m.matched.into() } else { serde_json::Value::Null },
                    "lag": if leading { m.matched.map(|i| last.saturating_sub(i)).into() } else { serde_json::Value::Null },
                })
            })
            .collect();
        let counters = replica.counters();
        serde_json::json!({
            "pid": pid,
            "shardId": self.inner.id.0,
            "replicated": true,
            "replicaId": rep.replica_id,
            "role": status.role.as_str(),
            "leader": status.leader.as_ref().map(|(_, url)| url.clone()),
            "leaderId": status.leader.as_ref().map(|(id, _)| *id),
            "term": status.term,
            "commitIndex": replica.committed_index().await,
            "appliedIndex": status.applied_index,
            "lastLogIndex": status.last_log_index,
            "snapshotIndex": status.snapshot_index,
            "raft": {
                "pristine": replica.is_pristine(),
                "members": members,
                "peers": rep.peers,
                "logBytes": replica.log_bytes(),
                "millisSinceQuorumAck": status.millis_since_quorum_ack,
                "leaderChanges": counters.leader_changes.load(std::sync::atomic::Ordering::Relaxed),
                "snapshotsReceived": counters.snapshots_received.load(std::sync::atomic::Ordering::Relaxed),
                "snapshotsSent": replica.network_counters().snapshots_sent.load(std::sync::atomic::Ordering::Relaxed),
                "proposals": counters.proposals.load(std::sync::atomic::Ordering::Relaxed),
                "proposedWrites": counters.proposed_writes.load(std::sync::atomic::Ordering::Relaxed),
                "leaseReads": counters.lease_reads.load(std::sync::atomic::Ordering::Relaxed),
                "readRounds": counters.read_rounds.load(std::sync::atomic::Ordering::Relaxed),
                "commitUpdatesDeferred": replica.network_counters().commit_updates_deferred.load(std::sync::atomic::Ordering::Relaxed),
            },
        })
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
        ApiError::WrongShard { epoch, .. } => return Response::WrongShard { ring_epoch: *epoch },
        ApiError::NotLeader { leader } => {
            return Response::NotLeader {
                leader_id: leader.as_ref().map(|(id, _)| *id),
                leader_url: leader.as_ref().map(|(_, url)| url.clone()),
            }
        }
        ApiError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
        ApiError::GroupUnavailable(_) => ErrorCode::Unavailable,
        ApiError::BadRequest(_)
        | ApiError::NotFound
        | ApiError::RequestTimeout(_)
        | ApiError::Conflict { .. }
        | ApiError::Gone(_)
        | ApiError::Unauthorized(_)
        | ApiError::Forbidden(_)
        | ApiError::NoSuchResource(_) => ErrorCode::BadRequest,
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

impl ShardNode {
    /// Reads a key (the caller checked ownership).
    async fn read_key(&self, key: Bytes) -> Result<Option<Bytes>, ApiError> {
        Ok(self.inner.storage.get(key).await?.map(|v| v.data))
    }

    /// Writes a key (the caller checked ownership).
    async fn write_key(
        &self,
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
    ) -> Result<(), ApiError> {
        let expires_at_ms = ttl_ms.map(|ttl| now_ms().saturating_add(ttl));
        self.inner.storage.put(key, value, expires_at_ms).await
    }

    /// Deletes a key (the caller checked ownership).
    async fn delete_key(&self, key: Bytes) -> Result<bool, ApiError> {
        self.inner.storage.delete(key).await
    }

    /// Checks that this shard owns every one of `keys` by its ownership record, and returns
    /// the gate to hold while the request runs (see [`ownership`]). A leader that has not yet
    /// applied its own term's first entry waits for it first, so it never checks against a
    /// record older than one an earlier leader committed. `None` on a shard that keeps no
    /// records (not replicated).
    pub(crate) async fn admit<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Option<ownership::OwnershipGuard<'_>>, ApiError> {
        let Some(replica) = self.inner.storage.replica() else {
            return Ok(None);
        };
        if !replica.has_applied_own_term() {
            replica.read_barrier().await?;
        }
        let guard = self.inner.ownership.enter().await;
        if let Some(routing) = self.inner.ownership.routing(replica.record())? {
            ownership::check(&routing, self.inner.id, keys)?;
        }
        Ok(Some(guard))
    }

    /// This shard's replica, which keeps its ownership record; a shard on its own has none.
    fn record_keeper(&self) -> Result<&limedb_raft::Replica, ApiError> {
        self.inner.storage.replica().ok_or_else(|| {
            ApiError::BadRequest(
                "ownership records are kept by replicated shards (started with --peers)".into(),
            )
        })
    }

    /// The ownership record (`None`: this shard has none and serves every key), read at the
    /// leader after a read barrier.
    pub async fn routing(&self) -> Result<Option<limedb_cluster::Routing>, ApiError> {
        let replica = self.record_keeper()?;
        replica.read_barrier().await?;
        Ok(self
            .inner
            .ownership
            .routing(replica.record())?
            .map(|r| (*r).clone()))
    }

    /// Replaces the ownership record with `routing`, once every request admitted under the
    /// current one has been answered (see [`ownership`]). Idempotent; a record older than the
    /// current one (a stale driver) is refused with 409.
    pub async fn set_routing(&self, routing: &limedb_cluster::Routing) -> Result<(), ApiError> {
        let replica = self.record_keeper()?;
        replica.check_leader()?;
        let _exclusive = self.inner.ownership.exclusive().await;
        replica.read_barrier().await?;
        if let Some(current) = self.inner.ownership.routing(replica.record())? {
            if *current == *routing {
                return Ok(());
            }
            if current.epoch() >= routing.epoch() {
                return Err(ApiError::Conflict {
                    message: format!(
                        "shard {} holds ownership at epoch {}, not older than the {} offered",
                        self.inner.id,
                        current.epoch(),
                        routing.epoch()
                    ),
                    current: serde_json::to_value(&*current).ok(),
                });
            }
        }
        replica
            .write_record(Vec::new(), ownership::encode(routing)?)
            .await?;
        Ok(())
    }
}

/// The keys a data request touches (none for a listing).
fn request_keys(request: &Request) -> Vec<Bytes> {
    use resp_backend::{command_keys, commands_keys, transaction_keys};
    match request {
        Request::Get { key } | Request::Set { key, .. } | Request::Delete { key } => {
            vec![key.clone()]
        }
        Request::Command { args } => {
            let mut keys = Vec::new();
            command_keys(args, &mut keys);
            keys
        }
        Request::Transaction { commands, watched } => transaction_keys(commands, watched),
        Request::Pipeline { commands } => commands_keys(commands),
        Request::Hello | Request::Ping | Request::KeysPage { .. } | Request::Raft { .. } => {
            Vec::new()
        }
    }
}

/// Whether `request` lists keys (`KEYS`, or the coordinator's `LIMEDB.SCAN` step): answered
/// `WrongShard` when the shard's ownership changed after the epoch it was routed at.
fn is_listing(request: &Request) -> bool {
    match request {
        Request::Command { args } => args.first().is_some_and(|name| {
            name.eq_ignore_ascii_case(b"LIMEDB.SCAN") || name.eq_ignore_ascii_case(b"KEYS")
        }),
        _ => false,
    }
}

/// The metrics label of a data request.
fn op_of(request: &Request) -> Op {
    match request {
        Request::Get { .. } => Op::Get,
        Request::Set { .. } => Op::Set,
        Request::Delete { .. } => Op::Delete,
        Request::KeysPage { .. } => Op::Keys,
        _ => Op::Command,
    }
}

impl KvNode for ShardNode {
    async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ApiError> {
        self.refuse_on_map_group()?;
        let _admitted = self.admit(&[&key]).await?;
        self.read_key(key).await
    }

    async fn set(&self, key: Bytes, value: Bytes, ttl_ms: Option<u64>) -> Result<(), ApiError> {
        self.refuse_on_map_group()?;
        let _admitted = self.admit(&[&key]).await?;
        self.write_key(key, value, ttl_ms).await
    }

    async fn delete(&self, key: Bytes) -> Result<bool, ApiError> {
        self.refuse_on_map_group()?;
        let _admitted = self.admit(&[&key]).await?;
        self.delete_key(key).await
    }

    async fn keys_page(
        &self,
        offset: u64,
        limit: u32,
        value_prefix_bytes: u32,
    ) -> Result<KeysPage, ApiError> {
        self.refuse_on_map_group()?;
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
        let mut body = serde_json::json!({
            "status": status,
            "reason": reason,
            "type": if self.is_map_group() { "meta" } else { "shard" },
            "shardId": self.inner.id.0,
            "httpAddr": self.inner.http_addr.to_string(),
            "internalAddr": self.inner.internal_addr.to_string(),
            "internalPort": self.inner.internal_addr.port(),
            "protocolVersion": PROTOCOL_VERSION,
            "storage": self.storage_json(&health),
            "uptimeSecs": self.inner.started.elapsed().as_secs(),
            "version": SERVER_NAME,
        });
        if let (Some(obj), serde_json::Value::Object(more)) =
            (body.as_object_mut(), self.replication_json().await)
        {
            obj.extend(more);
        }
        HealthReport { serving, body }
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

    async fn ownership(
        &self,
        set: Option<Box<limedb_cluster::Routing>>,
    ) -> Result<serde_json::Value, ApiError> {
        if let Some(routing) = set {
            self.set_routing(&routing).await?;
        }
        let routing = self.routing().await?;
        Ok(serde_json::json!({
            "epoch": routing.as_ref().map(limedb_cluster::Routing::epoch),
            "routing": routing,
        }))
    }

    async fn moves(&self, request: MoveRequest) -> Result<serde_json::Value, ApiError> {
        match request {
            MoveRequest::List if self.is_map_group() => {
                let map = self.read_map().await?;
                Ok(mover::moves_json(map.as_ref(), &self.inner.mover))
            }
            _ => Err(ApiError::NoSuchResource(
                "moves are started at a coordinator started with --meta (and listed there or at the map group)".into(),
            )),
        }
    }

    async fn cluster_map(&self, request: MapRequest) -> Result<serde_json::Value, ApiError> {
        match request {
            MapRequest::Get => match self.read_map().await? {
                Some(map) => Ok(serde_json::json!({
                    "version": map.version(),
                    "epoch": map.epoch(),
                    "map": map,
                })),
                None => Err(ApiError::NoSuchResource(
                    "no cluster map has been created yet: the first coordinator started with --meta and --shards creates it".into(),
                )),
            },
            MapRequest::CompareAndSet {
                expected_version,
                map,
            } => {
                self.compare_and_set_map(expected_version, &map).await?;
                Ok(serde_json::json!({ "version": map.version(), "epoch": map.epoch() }))
            }
        }
    }

    async fn replicas(
        &self,
        shard: Option<u32>,
        change: ReplicaChange,
    ) -> Result<serde_json::Value, ApiError> {
        if let Some(shard) = shard.filter(|s| *s != self.inner.id.0) {
            return Err(ApiError::BadRequest(format!(
                "this is shard {}, not shard {shard}",
                self.inner.id
            )));
        }
        let Some(replica) = self.inner.storage.replica() else {
            return Err(ApiError::BadRequest(format!(
                "shard {} is not replicated (it was started without --peers), so it has no replicas to list or change",
                self.inner.id
            )));
        };
        if change == ReplicaChange::List {
            return Ok(self.replication_json().await);
        }
        match replica.check_leader() {
            Ok(()) => {}
            Err(limedb_raft::ReplicaError::NotLeader {
                leader: Some((_, url)),
            }) => return crate::http::client::forward_replica_change(&url, &change).await,
            Err(e) => return Err(e.into()),
        }
        match change {
            ReplicaChange::Add { replica_id, url } => {
                tracing::info!(shard = %self.inner.id, replica = replica_id, %url, "adding a replica");
                replica
                    .add_replica(replica_id, url, crate::http::client::ADD_REPLICA_TIMEOUT)
                    .await?;
            }
            ReplicaChange::Remove { replica_id } => {
                tracing::info!(shard = %self.inner.id, replica = replica_id, "removing a replica");
                replica.remove_replica(replica_id).await?;
            }
            ReplicaChange::List => {}
        }
        Ok(self.replication_json().await)
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn users(&self) -> &Arc<crate::auth::Users> {
        &self.inner.users
    }

    async fn refresh_metrics(&self) {
        let stats = self.inner.storage.engine().stats();
        self.inner.metrics.set_storage(&stats);
        if let Some(replica) = self.inner.storage.replica() {
            let committed = replica.committed_index().await;
            self.inner.metrics.set_raft(replica, committed);
        }
        if self.is_map_group() {
            self.inner.metrics.set_moves(&self.inner.mover.figures());
        }
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
    /// Stops the links to peer replicas (replicated shards), once the replica has stopped.
    links_stop: Option<crate::shutdown::ShutdownTrigger>,
}

/// Opens a shard's engine on its own, with its writer thread.
async fn open_local(config: &ShardConfig) -> Result<Storage, ServerError> {
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
    Storage::new(engine, format!("shard-{}-writer", config.id)).map_err(|source| ServerError::Io {
        context: "cannot start the storage writer thread".into(),
        source,
    })
}

/// Opens a replica of the shard's Raft group (see [`replication`]).
async fn open_replicated(
    config: &ShardConfig,
    rep: &crate::config::ReplicationConfig,
    links_shutdown: Shutdown,
    commit_latency: prometheus_client::metrics::histogram::Histogram,
) -> Result<Storage, ServerError> {
    match config.storage {
        StorageKind::Lsm => {}
        StorageKind::Postgres => {
            return Err(ServerError::Config(
                "--storage postgres cannot be replicated with --peers: PostgreSQL brings its own replication (streaming replicas, failover tools); run the shard without --peers".into(),
            ))
        }
        other => {
            return Err(ServerError::Config(format!(
                "--storage {other} cannot be replicated with --peers: replicas are built on the LSM engine's checkpoints; use --storage lsm (the default)"
            )))
        }
    }
    if !rep.peers.contains_key(&rep.replica_id) {
        return Err(ServerError::Config(format!(
            "--peers must list this replica too: it has no entry for --replica {}",
            rep.replica_id
        )));
    }
    let dir = config.data_dir.clone();
    let (id, replica_id) = (config.id, rep.replica_id);
    tokio::task::spawn_blocking(move || replication::check_data_dir(&dir, id, replica_id))
        .await
        .map_err(|e| ServerError::Task(format!("data directory check failed: {e}")))??;
    // The Raft log is the synced log; the engine's own WAL is synced only when the replica
    // records how far it has applied (see ARCHITECTURE.md, Replication).
    let engine_options = config.lsm.options(limedb_storage::SyncPolicy::Never);
    let factory: limedb_raft::state_machine::EngineFactory = Arc::new(move |dir| {
        Ok(Arc::new(LsmEngine::open(dir, engine_options.clone())?) as Arc<dyn Engine>)
    });
    let link_options = crate::coordinator::link::LinkOptions {
        timeout: crate::config::DEFAULT_SHARD_TIMEOUT,
        health_interval: crate::config::DEFAULT_HEALTH_INTERVAL,
        connections: 2,
        max_frame_bytes: crate::config::MAX_INTERNAL_FRAME_BYTES,
        ring_epoch: std::sync::Arc::default(),
    };
    let links = Arc::new(replication::PeerLinks::new(
        config.id,
        link_options,
        links_shutdown,
    ));
    links.connect_all(&rep.peers, rep.replica_id);
    let replica = limedb_raft::Replica::open(
        limedb_raft::ReplicaConfig {
            shard_id: config.id.0,
            replica_id: rep.replica_id,
            dir: config.data_dir.clone(),
            log_sync: rep.log_sync,
            timing: rep.timing,
            snapshot_logs: rep.snapshot_logs,
            keep_logs: rep.keep_logs,
            engine_factory: factory,
        },
        links,
    )
    .await?;
    if let Err(e) = replication::check_peers(&replica, rep).await {
        let _ = replica.shutdown().await;
        return Err(e);
    }
    tracing::info!(
        shard = %config.id,
        replica = rep.replica_id,
        peers = rep.peers.len(),
        data_dir = %config.data_dir.display(),
        applied = ?replica.status().applied_index,
        "replica open"
    );
    Ok(Storage::replicated(replica, commit_latency))
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
        let metrics = Metrics::new();
        let (storage, links_stop) = match &config.replication {
            None => (open_local(&config).await?, None),
            Some(rep) => {
                let (stop, links_shutdown) = crate::shutdown::channel();
                let storage = open_replicated(
                    &config,
                    rep,
                    links_shutdown,
                    metrics.raft.commit_latency.clone(),
                )
                .await?;
                (storage, Some(stop))
            }
        };
        let captures = Arc::new(capture::Captures::default());
        if let Some(replica) = storage.replica() {
            replica.set_apply_observer(Some(Arc::clone(&captures) as _));
        }
        let node = ShardNode {
            inner: Arc::new(ShardInner {
                id: config.id,
                replication: config.replication.clone(),
                storage,
                storage_kind: config.storage,
                limits: config.limits,
                metrics,
                http_addr,
                internal_addr,
                started: Instant::now(),
                cursors: crate::resp::cursor::Cursors::default(),
                ownership: ownership::Ownership::default(),
                mover: mover::MoverStatus::default(),
                captures,
                users: Arc::clone(&config.users),
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
            links_stop,
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
            links_stop,
        } = self;
        let core_failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let shutdown = match node.inner.storage.replica() {
            Some(replica) => stop_when_core_stops(replica.clone(), shutdown, &core_failure),
            None => shutdown,
        };
        let formation = match (node.inner.storage.replica(), &node.inner.replication) {
            (Some(replica), Some(rep)) => Some(tokio::spawn(replication::form_group(
                replica.clone(),
                node.inner.id,
                rep.clone(),
                shutdown.clone(),
            ))),
            _ => None,
        };
        let driver = node
            .is_map_group()
            .then(|| tokio::spawn(mover::run(node.clone(), shutdown.clone())));
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
            crate::http::api::router(node.clone()).merge(transfer::routes(node.clone())),
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
            Arc::clone(&node.inner.users),
            resp_config,
            max_connections,
            metrics,
            shutdown,
        );
        tokio::join!(http_task, internal_task, resp_task);
        if let Some(formation) = formation {
            formation.abort();
        }
        if let Some(driver) = driver {
            driver.abort();
        }
        let closed = node
            .inner
            .storage
            .close()
            .await
            .map_err(|e| ServerError::Task(format!("cannot close storage cleanly: {e}")));
        if let Some(stop) = links_stop {
            stop.trigger();
        }
        let failure = core_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(why) = failure {
            return Err(ServerError::Task(format!("the replica stopped: {why}")));
        }
        closed?;
        tracing::info!(shard = %node.inner.id, "shard stopped; storage synced and closed");
        Ok(())
    }
}

/// A shutdown that fires with `shutdown`, or when the replica's Raft core stops on its own
/// (its reason then goes to `failure`): such a replica can neither replicate nor serve, so the
/// process stops with an error and a supervisor restarts it, instead of it answering health
/// checks while serving nothing.
fn stop_when_core_stops(
    replica: limedb_raft::Replica,
    mut shutdown: Shutdown,
    failure: &Arc<std::sync::Mutex<Option<String>>>,
) -> Shutdown {
    let (stop, inner) = crate::shutdown::channel();
    let failure = Arc::clone(failure);
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.wait() => {}
            why = replica.stopped() => {
                tracing::error!(reason = %why, "the replica cannot go on; stopping");
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
        }
        stop.trigger();
    });
    inner
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
