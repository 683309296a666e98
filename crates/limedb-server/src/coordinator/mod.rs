//! The coordinator: routes every key to the shard that owns it on the consistent-hash ring and
//! forwards the request over the internal binary protocol.
//!
//! The coordinator is configured with the shards' HTTP URLs only (as in the seed prototype); each
//! [`group::ShardGroup`] learns the shard's replicas from its health document and keeps a
//! [`link::ShardLink`] to each; a link learns the replica's internal port and keeps a
//! small pool of multiplexed connections to it. Requests for a shard that is down fail at once
//! with 503 naming the shard; requests for the other shards go on unaffected.

pub mod cluster_map;
pub mod discover;
pub mod group;
pub mod link;
mod listing;
pub mod map_client;
mod resp_backend;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use limedb_cluster::{ClusterMap, ShardId};
use limedb_proto::{Request, Response};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{CoordinatorConfig, Limits};
use crate::error::{ApiError, ServerError};
use crate::metrics::Metrics;
use crate::node::{HealthReport, KeysPage, KvNode, MapRequest, MoveRequest, ReplicaChange};
use crate::ring_json::ring_json;
use crate::shutdown::Shutdown;
use group::ShardGroup;
use link::LinkOptions;

/// The coordinator's request handling. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CoordinatorNode {
    inner: Arc<CoordinatorInner>,
}

#[derive(Debug)]
struct CoordinatorInner {
    /// Who may use the client listeners (see [`crate::auth`]).
    users: Arc<crate::auth::Users>,
    /// The routing and the shard groups (see [`routes`]).
    routes: routes::Routes,
    /// How long a request may wait for its shard (and for the map to settle after a
    /// `WrongShard`).
    shard_timeout: std::time::Duration,
    limits: Limits,
    metrics: Arc<Metrics>,
    http_addr: SocketAddr,
    started: Instant,
    cursors: crate::resp::cursor::Cursors,
}

impl CoordinatorNode {
    fn shard_group(&self, shard: ShardId) -> Result<Arc<ShardGroup>, ApiError> {
        self.inner.routes.group_of(shard).ok_or_else(|| {
            ApiError::Internal(format!("the ring names shard {shard}, which has no link"))
        })
    }

    fn group_for_key(&self, key: &[u8]) -> Result<Arc<ShardGroup>, ApiError> {
        self.shard_group(self.inner.routes.owner(key))
    }

    /// The shard that owns `key` (for tests and tools).
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        self.inner.routes.owner(key)
    }

    async fn forward(group: &ShardGroup, request: Request) -> Result<Response, ApiError> {
        match group.call(request).await? {
            Response::Error { code, message } => Err(ApiError::ShardRejected {
                shard: group.id(),
                code,
                message,
            }),
            response => Ok(response),
        }
    }

    /// Sends `request` about `key` to the shard that owns it; when that shard answers
    /// `WrongShard` (the key moved), follows the cluster map and routes again, until the
    /// shard timeout. A `WrongShard` request did nothing, so sending it again is safe.
    async fn call_for_key(&self, key: &[u8], request: Request) -> Result<Response, ApiError> {
        let deadline = Instant::now() + self.inner.shard_timeout;
        loop {
            let group = self.group_for_key(key)?;
            match Self::forward(&group, request.clone()).await? {
                Response::WrongShard { ring_epoch } => {
                    if !self.inner.routes.follow(ring_epoch, deadline).await {
                        return Err(moved_error(
                            &group,
                            ring_epoch,
                            self.inner.routes.follows_map(),
                        ));
                    }
                }
                response => return Ok(response),
            }
        }
    }

    fn links_json(&self) -> Vec<serde_json::Value> {
        let ownership = self.inner.routes.state().routing.base().ownership();
        self.inner
            .routes
            .members()
            .iter()
            .map(|group| {
                let view = group.view();
                let leader = view
                    .members
                    .iter()
                    .find(|(id, _, _)| Some(*id) == view.leader);
                let shown = leader.or(view.members.first());
                let status = shown.map(|(_, _, s)| s.clone());
                serde_json::json!({
                    "shardId": group.id().0,
                    "url": group.url(),
                    "status": if group.healthy() { "up" } else { "down" },
                    "internalAddr": status.as_ref().and_then(|s| s.internal_addr.map(|a| a.to_string())),
                    "reason": status.as_ref().and_then(|s| s.reason.clone()),
                    "sinceSecs": status.as_ref().map(|s| s.since_secs),
                    "ringShare": ownership.get(&group.id()).copied().unwrap_or(0.0),
                    "leader": leader.map(|(_, url, _)| url.clone()),
                    "replicas": view.members.len(),
                    "replicasUp": view.members.iter().filter(|(_, _, s)| s.up).count(),
                })
            })
            .collect()
    }

    /// Every group with its replicas, roles and lag, from the leaders' health documents.
    fn shards_json(&self) -> Vec<serde_json::Value> {
        self.inner
            .routes
            .members()
            .iter()
            .map(|group| {
                let view = group.view();
                let health = view.leader_health.as_ref();
                let leader_url = view
                    .members
                    .iter()
                    .find(|(id, _, _)| Some(*id) == view.leader)
                    .map(|(_, url, _)| url.clone());
                let replicas: Vec<serde_json::Value> = view
                    .members
                    .iter()
                    .map(|(id, url, status)| {
                        let reported = health.and_then(|h| {
                            h["raft"]["members"]
                                .as_array()?
                                .iter()
                                .find(|m| m["replicaId"].as_u64() == Some(*id))
                                .cloned()
                        });
                        let role = if Some(*id) == view.leader {
                            "leader"
                        } else if reported.as_ref().is_some_and(|m| m["voter"] == false) {
                            "learner"
                        } else if view.replicated {
                            "follower"
                        } else {
                            "leader"
                        };
                        serde_json::json!({
                            "replicaId": id,
                            "url": url,
                            "role": if status.up { role } else { "unreachable" },
                            "status": if status.up { "up" } else { "down" },
                            "lag": reported.map_or(serde_json::Value::Null, |m| m["lag"].clone()),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "shardId": group.id().0,
                    "replicated": view.replicated,
                    "leader": leader_url,
                    "term": health.map_or(serde_json::Value::Null, |h| h["term"].clone()),
                    "healthy": group.healthy(),
                    "replicas": replicas,
                })
            })
            .collect()
    }

    fn up_count(&self) -> usize {
        self.inner
            .routes
            .members()
            .iter()
            .filter(|g| g.healthy())
            .count()
    }

    fn status_word(&self) -> &'static str {
        let up = self.up_count();
        if up == self.inner.routes.members().len() {
            "healthy"
        } else if up == 0 {
            "unhealthy"
        } else {
            "degraded"
        }
    }

    /// Live key count of every shard, in shard-id order (concurrently).
    async fn shard_totals(&self) -> Vec<(Arc<ShardGroup>, Result<u64, ApiError>)> {
        let mut tasks = JoinSet::new();
        let groups = self.inner.routes.members();
        for (i, link) in groups.iter().enumerate() {
            let link = Arc::clone(link);
            tasks.spawn(async move {
                let total = match Self::forward(
                    &link,
                    Request::KeysPage {
                        offset: 0,
                        limit: 0,
                        value_prefix_bytes: 0,
                    },
                )
                .await
                {
                    Ok(Response::KeysPage { total, .. }) => Ok(total),
                    Ok(other) => Err(unexpected(&link, &other)),
                    Err(e) => Err(e),
                };
                (i, link, total)
            });
        }
        let mut totals: Vec<(usize, Arc<ShardGroup>, Result<u64, ApiError>)> =
            Vec::with_capacity(groups.len());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(t) => totals.push(t),
                Err(e) => tracing::warn!(error = %e, "shard count task failed"),
            }
        }
        // Shard-id order (groups learned from a newer map come last among the groups).
        totals.sort_by_key(|(_, group, _)| group.id());
        totals.into_iter().map(|(_, l, t)| (l, t)).collect()
    }
}

/// The answer when a key's shard said `WrongShard` and no routing found its owner in time.
fn moved_error(group: &ShardGroup, ring_epoch: u64, follows_map: bool) -> ApiError {
    if follows_map {
        ApiError::GroupUnavailable(format!(
            "shard {} no longer owns this key (ring epoch {ring_epoch}) and the cluster map did not name its new owner in time; retry",
            group.id()
        ))
    } else {
        ApiError::GroupUnavailable(format!(
            "shard {} no longer owns this key (ring epoch {ring_epoch}), and this coordinator routes by --shards; start coordinators with --meta to follow the cluster map",
            group.id()
        ))
    }
}

fn unexpected_answer(response: &Response) -> ApiError {
    ApiError::Internal(format!(
        "a shard answered with an unexpected message: {response:?}"
    ))
}

fn unexpected(link: &ShardGroup, response: &Response) -> ApiError {
    ApiError::Internal(format!(
        "shard {} answered with an unexpected message: {response:?}",
        link.id()
    ))
}

impl KvNode for CoordinatorNode {
    async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ApiError> {
        match self
            .call_for_key(&key.clone(), Request::Get { key })
            .await?
        {
            Response::Value(v) => Ok(v),
            other => Err(unexpected_answer(&other)),
        }
    }

    async fn set(&self, key: Bytes, value: Bytes, ttl_ms: Option<u64>) -> Result<(), ApiError> {
        let request = Request::Set {
            key: key.clone(),
            value,
            ttl_ms,
        };
        match self.call_for_key(&key, request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected_answer(&other)),
        }
    }

    async fn delete(&self, key: Bytes) -> Result<bool, ApiError> {
        match self
            .call_for_key(&key.clone(), Request::Delete { key })
            .await?
        {
            Response::Deleted(existed) => Ok(existed),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Keys are listed shard by shard in shard-id order (each shard's keys sorted), so a page is
    /// found from the shards' counts without merging. Pages are not a snapshot: writes between
    /// two page requests can shift keys across page boundaries.
    async fn keys_page(
        &self,
        offset: u64,
        limit: u32,
        value_prefix_bytes: u32,
    ) -> Result<KeysPage, ApiError> {
        let totals = self.shard_totals().await;
        let mut counted = Vec::with_capacity(totals.len());
        for (link, total) in totals {
            counted.push((link, total?));
        }
        let total: u64 = counted.iter().map(|(_, t)| t).sum();
        let mut entries = Vec::with_capacity(limit as usize);
        let mut skip = offset;
        for (link, shard_total) in counted {
            if entries.len() >= limit as usize {
                break;
            }
            if skip >= shard_total {
                skip -= shard_total;
                continue;
            }
            // A shard may answer with fewer entries than asked for; keep asking until the page
            // is full or the shard runs out (it may hold fewer keys than it counted a moment ago).
            let mut shard_offset = skip;
            while entries.len() < limit as usize && shard_offset < shard_total {
                let want = limit - entries.len() as u32;
                let request = Request::KeysPage {
                    offset: shard_offset,
                    limit: want,
                    value_prefix_bytes,
                };
                let page = match Self::forward(&link, request).await? {
                    Response::KeysPage { entries: page, .. } => page,
                    other => return Err(unexpected(&link, &other)),
                };
                if page.is_empty() {
                    break;
                }
                shard_offset += page.len() as u64;
                entries.extend(page);
            }
            skip = 0;
        }
        entries.truncate(limit as usize);
        Ok(KeysPage { total, entries })
    }

    async fn health(&self) -> HealthReport {
        let up = self.up_count();
        HealthReport {
            serving: up > 0,
            body: serde_json::json!({
                "status": self.status_word(),
                "type": "coordinator",
                "shardCount": self.inner.routes.members().len(),
                "healthyShards": up,
                "shards": self.links_json(),
                "virtualNodesPerShard": self.inner.routes.state().routing.base().vnodes_per_shard(),
                "uptimeSecs": self.inner.started.elapsed().as_secs(),
                "version": crate::SERVER_NAME,
            }),
        }
    }

    async fn cluster_state(&self) -> serde_json::Value {
        let groups = self.inner.routes.members();
        let state = self.inner.routes.state();
        let peers: Vec<&str> = groups.iter().map(|l| l.url()).collect();
        serde_json::json!({
            "nodeId": format!("coordinator@{}", self.inner.http_addr),
            "type": "coordinator",
            "peers": peers,
            "totalNodes": groups.len(),
            "status": self.status_word(),
            "members": self.links_json(),
            "shards": self.shards_json(),
            "ringEpoch": state.map.as_ref().map(ClusterMap::epoch),
            "routing": if state.map.is_some() { "clusterMap" } else { "shardsFlag" },
        })
    }

    async fn ring(&self) -> serde_json::Value {
        let label = |shard: ShardId| {
            self.shard_group(shard)
                .map(|l| l.url().to_string())
                .unwrap_or_else(|_| format!("shard-{shard}"))
        };
        let state = self.inner.routes.state();
        let mut doc = ring_json(state.routing.base(), &label);
        // Where the keys actually are, next to the share of the hash space each shard owns.
        let mut keys_per_node = serde_json::Map::new();
        for (link, total) in self.shard_totals().await {
            let count = total
                .map(serde_json::Value::from)
                .unwrap_or(serde_json::Value::Null);
            keys_per_node.insert(link.url().to_string(), count);
        }
        if let Some(obj) = doc.as_object_mut() {
            obj.insert(
                "keysPerNode".into(),
                serde_json::Value::Object(keys_per_node),
            );
        }
        doc
    }

    async fn replicas(
        &self,
        shard: Option<u32>,
        change: ReplicaChange,
    ) -> Result<serde_json::Value, ApiError> {
        let Some(shard) = shard else {
            return Err(ApiError::BadRequest(
                "a coordinator routes to several shards: name one, /api/v1/admin/shards/{id}/replicas"
                    .into(),
            ));
        };
        let group = self.shard_group(ShardId(shard)).map_err(|_| {
            let ids: Vec<String> = self
                .inner
                .routes
                .members()
                .iter()
                .map(|g| g.id().to_string())
                .collect();
            ApiError::BadRequest(format!(
                "there is no shard {shard} in this cluster (shards: {})",
                ids.join(", ")
            ))
        })?;
        if change == ReplicaChange::List {
            let index = self.inner.routes.index_of(group.id());
            return Ok(index
                .and_then(|i| self.shards_json().into_iter().nth(i))
                .unwrap_or(serde_json::Value::Null));
        }
        // The group's leader makes the change; any member forwards it there.
        let view = group.view();
        let target = view
            .members
            .iter()
            .find(|(id, _, s)| Some(*id) == view.leader && s.up)
            .or_else(|| view.members.iter().find(|(_, _, s)| s.up))
            .map(|(_, url, _)| url.clone())
            .unwrap_or_else(|| group.url().to_string());
        crate::http::client::forward_replica_change(&target, &change).await
    }

    async fn ownership(
        &self,
        _set: Option<Box<limedb_cluster::Routing>>,
    ) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::NoSuchResource(
            "ownership records are kept by shards; ask a replica of the shard".into(),
        ))
    }

    async fn moves(&self, request: MoveRequest) -> Result<serde_json::Value, ApiError> {
        self.inner.routes.moves(request).await
    }

    async fn cluster_map(&self, request: MapRequest) -> Result<serde_json::Value, ApiError> {
        let state = self.inner.routes.state();
        match (request, &state.map) {
            (MapRequest::Get, Some(map)) => Ok(serde_json::json!({
                "version": map.version(),
                "epoch": map.epoch(),
                "map": map,
            })),
            (MapRequest::Get, None) => Err(ApiError::NoSuchResource(
                "this coordinator routes by its --shards flag and has no cluster map (start it with --meta to route by one)".into(),
            )),
            (MapRequest::CompareAndSet { .. }, _) => Err(ApiError::NoSuchResource(
                "the cluster map is changed at the map group's replicas (limedb meta), not at a coordinator".into(),
            )),
        }
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
        for group in self.inner.routes.members() {
            group.refresh_metrics();
        }
        let state = self.inner.routes.state();
        let moving = state
            .map
            .as_ref()
            .and_then(limedb_cluster::ClusterMap::moving);
        let transfers = moving.map_or(&[][..], |mv| &mv.transfers[..]);
        self.inner.metrics.set_moves(&crate::metrics::MoveFigures {
            in_progress: u64::from(moving.is_some()),
            transfers: transfers.len() as u64,
            transfers_done: transfers
                .iter()
                .filter(|t| t.phase == limedb_cluster::Phase::Done)
                .count() as u64,
            keys_copied: transfers.iter().map(|t| t.keys_copied).sum(),
            ring_epoch: state.routing.epoch(),
            ..crate::metrics::MoveFigures::default()
        });
    }
}

/// How long a coordinator started with `--meta` waits for the map group (and, creating the
/// map, for the shards) before giving up.
const MAP_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A coordinator whose listener is bound, ready to [`run`](Self::run).
pub struct CoordinatorServer {
    node: CoordinatorNode,
    http: TcpListener,
    resp: Option<TcpListener>,
    resp_config: crate::resp::RespConfig,
    max_connections: usize,
    health_interval: std::time::Duration,
}

impl CoordinatorServer {
    /// Builds the ring (from the cluster map with `--meta`, else from `--shards`) and binds
    /// the HTTP listener. Shards need not be up yet, except to create the cluster map.
    pub async fn bind(mut config: CoordinatorConfig) -> Result<Self, ServerError> {
        let (map, client) = if config.meta.is_empty() {
            (None, None)
        } else {
            let client = map_client::MapClient::new(config.meta.clone());
            let map = cluster_map::establish(
                &client,
                &config.shards,
                config.vnodes_per_shard,
                MAP_START_TIMEOUT,
            )
            .await?;
            config.shards = map
                .groups()
                .iter()
                .filter_map(|(&id, group)| {
                    let url = group.replicas.values().next()?.clone();
                    Some(crate::config::ShardSpec { id, url })
                })
                .collect();
            (Some(map), Some(client))
        };
        let routing = match &map {
            Some(map) => map.routing().clone(),
            None => {
                let ids: Vec<ShardId> = config.shards.iter().map(|s| s.id).collect();
                limedb_cluster::Routing::new(&ids, config.vnodes_per_shard)
                    .map_err(|e| ServerError::Config(e.to_string()))?
            }
        };
        let http = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.http_addr.to_string(),
                source,
            })?;
        let http_addr = http.local_addr().map_err(|source| ServerError::Io {
            context: "cannot read the bound address".into(),
            source,
        })?;
        let resp = match config.resp_addr {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Bind {
                            addr: addr.to_string(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let options = LinkOptions {
            timeout: config.shard_timeout,
            health_interval: config.health_interval,
            connections: config.connections_per_shard,
            max_frame_bytes: crate::config::MAX_INTERNAL_FRAME_BYTES,
            ring_epoch: Arc::new(std::sync::atomic::AtomicU64::new(
                map.as_ref().map_or(0, ClusterMap::epoch),
            )),
        };
        let mut links: Vec<Arc<ShardGroup>> = config
            .shards
            .iter()
            .map(|spec| {
                Arc::new(ShardGroup::new(
                    spec.id,
                    spec.url.clone(),
                    options.clone(),
                    metrics.shard(&spec.id.to_string()),
                ))
            })
            .collect();
        links.sort_by_key(|l| l.id());
        let routes = routes::Routes::new(
            routes::RouteState { routing, map },
            links,
            client,
            options,
            Arc::clone(&metrics),
        );
        Ok(CoordinatorServer {
            node: CoordinatorNode {
                inner: Arc::new(CoordinatorInner {
                    users: Arc::clone(&config.users),
                    routes,
                    shard_timeout: config.shard_timeout,
                    limits: config.limits,
                    metrics,
                    http_addr,
                    started: Instant::now(),
                    cursors: crate::resp::cursor::Cursors::default(),
                }),
            },
            http,
            resp,
            resp_config: crate::resp::RespConfig::for_limits(
                &config.limits,
                config.resp_idle_timeout,
            ),
            max_connections: config.max_connections,
            health_interval: config.health_interval,
        })
    }

    /// Address of the HTTP API.
    pub fn http_addr(&self) -> SocketAddr {
        self.node.inner.http_addr
    }

    /// Address of the RESP listener, if it runs one.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The coordinator's request handler.
    pub fn node(&self) -> &CoordinatorNode {
        &self.node
    }

    /// Serves until `shutdown` fires, then answers the requests in flight (still forwarding them
    /// to shards) and closes the shard links last.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServerError> {
        let CoordinatorServer {
            node,
            http,
            resp,
            resp_config,
            max_connections,
            health_interval,
        } = self;
        tracing::info!(
            http = %node.inner.http_addr,
            shards = node.inner.routes.groups().len(),
            vnodes_per_shard = node.inner.routes.state().routing.base().vnodes_per_shard(),
            health_interval_ms = health_interval.as_millis() as u64,
            "coordinator serving"
        );
        // The links outlive the HTTP server: requests still in flight at shutdown are forwarded
        // and answered before the links close.
        let (stop_links, links_shutdown) = crate::shutdown::channel();
        let mut supervisors = JoinSet::new();
        node.inner.routes.set_links_shutdown(links_shutdown.clone());
        for link in node.inner.routes.groups() {
            supervisors.spawn(link.supervise(links_shutdown.clone()));
        }
        if node.inner.routes.follows_map() {
            // Learn map changes even while no shard has answered WrongShard yet (new groups
            // get their links; health and cluster state show the map in force).
            let node = node.clone();
            let mut stop = links_shutdown.clone();
            supervisors.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.wait() => break,
                        () = tokio::time::sleep(routes::MAP_POLL) => {
                            node.inner.routes.refresh().await;
                        }
                    }
                }
            });
        }
        let http_task = crate::http::serve::serve(
            http,
            crate::http::api::router(node.clone()),
            max_connections,
            node.inner.metrics.connections("http"),
            shutdown.clone(),
        );
        let resp_task = crate::resp::serve_if_bound(
            resp,
            node.clone(),
            Arc::clone(&node.inner.users),
            resp_config,
            max_connections,
            &node.inner.metrics,
            shutdown,
        );
        tokio::join!(http_task, resp_task);
        stop_links.trigger();
        while supervisors.join_next().await.is_some() {}
        tracing::info!("coordinator stopped");
        Ok(())
    }
}
