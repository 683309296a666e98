//! What the HTTP API needs from a node: the [`KvNode`] trait, implemented by a shard (which
//! answers from its own storage) and by the coordinator (which routes to shards).

use std::future::Future;

use bytes::Bytes;
pub use limedb_proto::KeyEntry;

use crate::config::Limits;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Values in key listings are cut to this many bytes; the listing gives each full size.
pub const LISTED_VALUE_PREFIX_BYTES: u32 = 1024;

/// One page of keys with (previews of) their values, in the node's listing order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysPage {
    /// Live keys in total on this node (all shards, on the coordinator).
    pub total: u64,
    /// The page's keys, each with a value prefix and the full value length.
    pub entries: Vec<KeyEntry>,
}

/// Health as reported on `GET /api/v1/health`.
#[derive(Clone, Debug)]
pub struct HealthReport {
    /// Whether the node can serve requests (a coordinator with every shard down cannot).
    pub serving: bool,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// An admin request about the replicas of a shard's group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaChange {
    /// List the members, their roles and lag.
    List,
    /// Add replica `replica_id` at `url`: a learner until it has caught up, then a voter.
    Add {
        /// The new replica's id.
        replica_id: u64,
        /// Its HTTP URL.
        url: String,
    },
    /// Remove replica `replica_id` from the group.
    Remove {
        /// The replica to remove.
        replica_id: u64,
    },
}

/// A request about the cluster map (`/api/v1/meta/map`).
#[derive(Clone, Debug, PartialEq)]
pub enum MapRequest {
    /// The map as this node knows it: linearizable on a map-group replica, the map the
    /// coordinator routes by on a coordinator.
    Get,
    /// Store `map` if the stored map is at version `expected_version` (`None`: none stored
    /// yet). Only on the map group's leader.
    CompareAndSet {
        /// The version the caller read.
        expected_version: Option<u64>,
        /// The new map; its version is greater than `expected_version`.
        map: Box<limedb_cluster::ClusterMap>,
    },
}

/// A request about moves of keys between shards (`/api/v1/admin/moves`, `/api/v1/admin/shards`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveRequest {
    /// The move in progress and the driver's report.
    List,
    /// Add shard group `id` with these replicas (id → HTTP URL); its share of the keys moves
    /// to it.
    AddShard {
        /// The new shard's id.
        id: limedb_cluster::ShardId,
        /// Its replicas.
        replicas: std::collections::BTreeMap<u64, String>,
    },
    /// Move shard `id`'s keys to the others, then drop it from the map.
    RemoveShard {
        /// The shard to remove.
        id: limedb_cluster::ShardId,
    },
    /// Cancel move `id`, which has handed no range over yet: the sources keep their ranges
    /// (and serve any they had fenced again), and a shard being added leaves the map.
    Cancel {
        /// The move.
        id: u64,
    },
}

/// A node that serves the key-value HTTP API.
pub trait KvNode: Clone + Send + Sync + 'static {
    /// Reads a key; `None` when absent or expired.
    fn get(&self, key: Bytes) -> impl Future<Output = Result<Option<Bytes>, ApiError>> + Send;
    /// Writes a key, with an optional time to live in milliseconds.
    fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Deletes a key; `true` when it existed.
    fn delete(&self, key: Bytes) -> impl Future<Output = Result<bool, ApiError>> + Send;
    /// Lists keys: skip `offset`, return at most `limit`, values cut to `value_prefix_bytes`.
    fn keys_page(
        &self,
        offset: u64,
        limit: u32,
        value_prefix_bytes: u32,
    ) -> impl Future<Output = Result<KeysPage, ApiError>> + Send;
    /// The node's health.
    fn health(&self) -> impl Future<Output = HealthReport> + Send;
    /// Cluster membership as this node sees it.
    fn cluster_state(&self) -> impl Future<Output = serde_json::Value> + Send;
    /// The hash ring as this node sees it.
    fn ring(&self) -> impl Future<Output = serde_json::Value> + Send;
    /// Lists or changes the replicas of shard `shard`'s group (`None`: the shard this node is,
    /// on a replica; a coordinator needs the shard named). Answers the group's members after
    /// the change.
    fn replicas(
        &self,
        shard: Option<u32>,
        change: ReplicaChange,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Reads or changes the cluster map; answers `{"version", "epoch", "map"}` for a read and
    /// `{"version", "epoch"}` after a change.
    fn cluster_map(
        &self,
        request: MapRequest,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Reads (`None`) or replaces a shard's ownership record; answers `{"epoch", "routing"}`
    /// (`routing` null when the shard has none).
    fn ownership(
        &self,
        set: Option<Box<limedb_cluster::Routing>>,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Lists moves or starts one (coordinators with `--meta`; map-group replicas list).
    fn moves(
        &self,
        request: MoveRequest,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Size limits of requests.
    fn limits(&self) -> Limits;
    /// The node's metrics.
    fn metrics(&self) -> &Metrics;
    /// Who may use the node's client listeners.
    fn users(&self) -> &std::sync::Arc<crate::auth::Users>;
    /// Refreshes gauges that are sampled rather than counted (storage and replication figures)
    /// before a scrape.
    fn refresh_metrics(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
