//! What a coordinator routes by, and how it follows the cluster map when it changes.
//!
//! [`Routes`] holds the current [`RouteState`] (the routing and, with `--meta`, the map it came
//! from) and the shard groups. Groups are only ever added, at the end, so an index into them
//! stays valid for as long as a request holds it. A coordinator routing by `--shards` never
//! changes its routes. One started with `--meta` refreshes them from the map group when a
//! shard answers `WrongShard` (and every [`MAP_POLL`] in the background): a newer map replaces
//! the routing, and groups it names that the coordinator did not know get links of their own.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use limedb_cluster::{key_hash, ClusterMap, Routing, ShardId};

use super::group::ShardGroup;
use super::link::LinkOptions;
use super::map_client::MapClient;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Period of the background check for a newer cluster map.
pub const MAP_POLL: Duration = Duration::from_secs(1);

/// Bound on one read of the map when following a change.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause before routing again when the map group has nothing newer yet (a cut-over is between
/// the shards' records and the map's publication).
const UNCHANGED_PAUSE: Duration = Duration::from_millis(20);

/// The routing in force.
#[derive(Debug)]
pub struct RouteState {
    /// Who owns each hash.
    pub routing: Routing,
    /// The map `routing` comes from; `None` when routing by `--shards`.
    pub map: Option<ClusterMap>,
}

/// The coordinator's routes (see the module docs).
#[derive(Debug)]
pub struct Routes {
    state: RwLock<Arc<RouteState>>,
    groups: RwLock<Vec<Arc<ShardGroup>>>,
    map_client: Option<MapClient>,
    options: LinkOptions,
    metrics: Arc<Metrics>,
    /// Where links made after start-up learn that the coordinator stops.
    links_shutdown: Mutex<Option<Shutdown>>,
    /// One refresh at a time, and when the last read of the map ended.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
}

impl Routes {
    /// Routes for `state` over `groups` (sorted by shard id); `map_client` when `--meta`.
    pub fn new(
        state: RouteState,
        groups: Vec<Arc<ShardGroup>>,
        map_client: Option<MapClient>,
        options: LinkOptions,
        metrics: Arc<Metrics>,
    ) -> Routes {
        Routes {
            state: RwLock::new(Arc::new(state)),
            groups: RwLock::new(groups),
            map_client,
            options,
            metrics,
            links_shutdown: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(None),
        }
    }

    /// The routing in force.
    pub fn state(&self) -> Arc<RouteState> {
        Arc::clone(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every group (known so far), in the order they were added.
    pub fn groups(&self) -> Vec<Arc<ShardGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The groups of the shards in the routing in force: every group but those retired by a
    /// removal, in the order they were added.
    pub fn members(&self) -> Vec<Arc<ShardGroup>> {
        let shards = self.state().routing.shards();
        self.groups()
            .into_iter()
            .filter(|g| shards.contains(&g.id()))
            .collect()
    }

    /// The group at `index` (stable: groups are only appended).
    pub fn group(&self, index: usize) -> Option<Arc<ShardGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(index)
            .cloned()
    }

    /// Shard `id`'s group.
    pub fn group_of(&self, id: ShardId) -> Option<Arc<ShardGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|g| g.id() == id)
            .cloned()
    }

    /// The index of shard `id`'s group.
    pub fn index_of(&self, id: ShardId) -> Option<usize> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .position(|g| g.id() == id)
    }

    /// The shard that owns `key` now.
    pub fn owner(&self, key: &[u8]) -> ShardId {
        self.state().routing.owner(key_hash(key))
    }

    /// Whether these routes follow a cluster map.
    pub fn follows_map(&self) -> bool {
        self.map_client.is_some()
    }

    /// Starts the links' supervision for groups added later (the ones known at start-up are
    /// supervised by the server).
    pub fn set_links_shutdown(&self, shutdown: Shutdown) {
        *self
            .links_shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(shutdown);
    }

    /// After a shard answered `WrongShard` (its epoch `seen`): reads the map and adopts it if
    /// newer. Returns whether routing again may succeed before `deadline` (it pauses briefly
    /// when the map has not caught up with the shards yet); `false` without a map to follow.
    pub async fn follow(&self, seen: u64, deadline: Instant) -> bool {
        if self.map_client.is_none() {
            return false;
        }
        if self.refresh().await {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tracing::debug!(
            seen,
            "a shard is at a newer ring epoch than the cluster map; waiting for the map"
        );
        tokio::time::sleep(UNCHANGED_PAUSE.min(left)).await;
        Instant::now() < deadline
    }

    /// Reads the map from the map group and adopts it if it is newer (by version) than the one
    /// in force; returns whether it did.
    pub async fn refresh(&self) -> bool {
        let Some(client) = &self.map_client else {
            return false;
        };
        let before = self.state().map.as_ref().map_or(0, ClusterMap::version);
        let mut last_read = self.refreshing.lock().await;
        let current = self.state().map.as_ref().map_or(0, ClusterMap::version);
        // Requests that met WrongShard together wait here together: one read of the map serves
        // them all.
        if current > before {
            return true;
        }
        if last_read.is_some_and(|at| at.elapsed() < UNCHANGED_PAUSE / 2) {
            return false;
        }
        let read = client.get(REFRESH_TIMEOUT).await;
        *last_read = Some(Instant::now());
        let map = match read {
            Ok(Some(map)) if map.version() > current => map,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster map");
                return false;
            }
        };
        self.adopt(map);
        true
    }

    /// Lists the moves (asking the map group) or starts one (a compare-and-set of the map).
    pub async fn moves(
        &self,
        request: crate::node::MoveRequest,
    ) -> Result<serde_json::Value, crate::error::ApiError> {
        use crate::error::ApiError;
        use crate::node::MoveRequest;
        let Some(client) = &self.map_client else {
            return Err(ApiError::BadRequest(
                "this coordinator routes by --shards: shards can be added and removed online only in a cluster with a map group (start coordinators with --meta)".into(),
            ));
        };
        let unavailable =
            |e: String| ApiError::GroupUnavailable(format!("the cluster-map group: {e}"));
        if request == MoveRequest::List {
            let (status, body) = client
                .call(
                    hyper::Method::GET,
                    "/api/v1/admin/moves",
                    None,
                    REFRESH_TIMEOUT,
                )
                .await
                .map_err(unavailable)?;
            if status != hyper::StatusCode::OK {
                return Err(unavailable(format!("it answered {status}")));
            }
            return serde_json::from_slice(&body).map_err(|e| {
                ApiError::Internal(format!("the map group's answer is not JSON: {e}"))
            });
        }
        // Read, change, compare-and-set; again if another writer got there first.
        for _ in 0..10 {
            let map = client
                .get(REFRESH_TIMEOUT)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| ApiError::BadRequest("the cluster has no map yet".into()))?;
            let mut next = map.clone();
            let started = match &request {
                MoveRequest::AddShard { id, replicas } => next.add_shard(
                    *id,
                    limedb_cluster::Group {
                        replicas: replicas.clone(),
                    },
                ),
                MoveRequest::RemoveShard { id } => next.remove_shard(*id),
                MoveRequest::Cancel { id } => next.request_cancel(*id).map(|()| *id),
                MoveRequest::List => unreachable!("answered above"),
            }
            .map_err(|e| match e {
                limedb_cluster::ClusterError::NoSuchMove(_)
                | limedb_cluster::ClusterError::NoMove => ApiError::NoSuchResource(e.to_string()),
                e => ApiError::Conflict {
                    message: e.to_string(),
                    current: None,
                },
            })?;
            match client
                .compare_and_set(Some(map.version()), &next, REFRESH_TIMEOUT)
                .await
                .map_err(unavailable)?
            {
                super::map_client::CasOutcome::Stored => {
                    tracing::info!(
                        move_id = started,
                        ?request,
                        "move started (or its cancellation asked)"
                    );
                    self.adopt_if_newer(next.clone());
                    return Ok(serde_json::json!({
                        "moveId": started,
                        "version": next.version(),
                        "epoch": next.epoch(),
                        "transfers": next.moving().map(|m| m.transfers.clone()),
                    }));
                }
                super::map_client::CasOutcome::Conflict => continue,
            }
        }
        Err(ApiError::GroupUnavailable(
            "the cluster map kept changing; try again".into(),
        ))
    }

    fn adopt_if_newer(&self, map: ClusterMap) {
        let current = self.state().map.as_ref().map_or(0, ClusterMap::version);
        if map.version() > current {
            self.adopt(map);
        }
    }

    /// Makes `map` the routing in force, adding links to groups it names for the first time
    /// (or under replicas other than the ones the coordinator knows).
    fn adopt(&self, map: ClusterMap) {
        {
            let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
            for (&id, group) in map.groups() {
                let known = groups.iter().position(|g| g.id() == id);
                let same_group = |g: &ShardGroup| {
                    group
                        .replicas
                        .values()
                        .any(|u| u.trim_end_matches('/') == g.url().trim_end_matches('/'))
                };
                if known.is_some_and(|i| same_group(&groups[i])) {
                    continue;
                }
                let Some(url) = group.replicas.values().next() else {
                    continue;
                };
                let link = Arc::new(ShardGroup::new(
                    id,
                    url.clone(),
                    self.options.clone(),
                    self.metrics.shard(&id.to_string()),
                ));
                if let Some(shutdown) = self
                    .links_shutdown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                {
                    tokio::spawn(Arc::clone(&link).supervise(shutdown));
                }
                tracing::info!(shard = %id, url, "learned a new shard group from the cluster map");
                match known {
                    // The id names other replicas now (a shard added again after a cancelled
                    // move): the new link takes the old one's place, so indices stay valid.
                    // The old link's supervisor goes on probing its replicas until the
                    // coordinator stops.
                    Some(i) => groups[i] = link,
                    None => groups.push(link),
                }
            }
        }
        let epoch = map.epoch();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        // Two adoptions may race (a refresh and a move's own map): the newer one stays.
        if state
            .map
            .as_ref()
            .is_some_and(|current| current.version() >= map.version())
        {
            return;
        }
        *state = Arc::new(RouteState {
            routing: map.routing().clone(),
            map: Some(map),
        });
        // The epoch requests carry follows the routing, never leads it: a listing filters by
        // the routing it read, so shards must not be asked at a newer epoch than that.
        self.options.ring_epoch.store(epoch, Ordering::Relaxed);
        drop(state);
        tracing::debug!(epoch, "routing by a newer cluster map");
    }
}
