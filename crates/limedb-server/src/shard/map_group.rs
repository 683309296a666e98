//! The cluster map, kept by the replicas of the map group (`limedb meta`; see ARCHITECTURE.md,
//! *Elasticity*).
//!
//! A map-group replica is a replicated shard with the reserved id [`MAP_GROUP_ID`] whose engine
//! holds one key, the JSON of the [`ClusterMap`]. It serves no keys of its own: the data API
//! answers 400 there. Reads of the map are linearizable (the leader's read fence); a change is a
//! compare-and-set on the map's version (which grows with every change; the ring epoch grows
//! only with changes of ownership), made by the leader under the map key's lock, so two writers
//! that both read version V cannot both store their version V+1.

use bytes::Bytes;
use limedb_cluster::{ClusterMap, ShardId};

use super::ShardNode;
use crate::error::ApiError;

/// The shard id of the map group. Data shards start at 1.
pub const MAP_GROUP_ID: ShardId = ShardId(0);

/// The one key a map-group replica stores.
const MAP_KEY: &[u8] = b"cluster-map";

/// What a data request gets on a replica of the map group.
pub const NOT_A_DATA_SHARD: &str =
    "this is a replica of the cluster-map group (limedb meta); it keeps the cluster map and serves no keys: send key requests to a coordinator";

impl ShardNode {
    /// Whether this node is a replica of the map group.
    pub fn is_map_group(&self) -> bool {
        self.id() == MAP_GROUP_ID
    }

    /// Refuses key requests on a map-group replica.
    pub(super) fn refuse_on_map_group(&self) -> Result<(), ApiError> {
        if self.is_map_group() {
            return Err(ApiError::BadRequest(NOT_A_DATA_SHARD.into()));
        }
        Ok(())
    }

    fn require_map_group(&self) -> Result<(), ApiError> {
        if !self.is_map_group() {
            return Err(ApiError::NoSuchResource(format!(
                "shard {} is a data shard; the cluster map is kept by the map group (limedb meta)",
                self.id()
            )));
        }
        Ok(())
    }

    /// The stored map (`None` before the first coordinator created it), read linearizably.
    pub async fn read_map(&self) -> Result<Option<ClusterMap>, ApiError> {
        self.require_map_group()?;
        let stored = self.inner.storage.get(Bytes::from_static(MAP_KEY)).await?;
        stored.map(|v| decode(&v.data)).transpose()
    }

    /// Replaces the map with `map` if the stored map's version is `expected` (`None`: no map
    /// stored yet). `map`'s version must be greater than `expected`. Answers 409 (with the
    /// stored map) when the stored map is not at `expected`.
    pub async fn compare_and_set_map(
        &self,
        expected: Option<u64>,
        map: &ClusterMap,
    ) -> Result<(), ApiError> {
        self.require_map_group()?;
        if expected.is_some_and(|e| map.version() <= e) {
            return Err(ApiError::BadRequest(format!(
                "the new map's version {} must be greater than the expected version {}",
                map.version(),
                expected.unwrap_or_default()
            )));
        }
        let storage = &self.inner.storage;
        let locks = storage.lock(&[MAP_KEY]).await;
        let current = self.read_map().await?;
        let current_version = current.as_ref().map(ClusterMap::version);
        if current_version != expected {
            return Err(ApiError::Conflict {
                message: format!(
                    "the cluster map is at version {}, not {}",
                    version_text(current_version),
                    version_text(expected)
                ),
                current: current.and_then(|m| serde_json::to_value(m).ok()),
            });
        }
        let json = serde_json::to_vec(map)
            .map_err(|e| ApiError::Internal(format!("cannot encode the cluster map: {e}")))?;
        storage
            .put_locked(&locks, Bytes::from_static(MAP_KEY), Bytes::from(json), None)
            .await
    }
}

fn decode(bytes: &[u8]) -> Result<ClusterMap, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Internal(format!("the stored cluster map cannot be read: {e}")))
}

fn version_text(version: Option<u64>) -> String {
    version.map_or_else(|| "none (no map yet)".to_string(), |v| v.to_string())
}
