//! How a coordinator started with `--meta` comes by its cluster map: it reads the map from the
//! map group; on an empty cluster it creates the map from `--shards` (learning each group's
//! replicas from the shard it was given); when the stored map and `--shards` disagree it refuses
//! to start and names the differences, rather than route keys to shards that do not hold them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use limedb_cluster::{ClusterMap, Group, ShardId};

use super::discover;
use super::map_client::{CasOutcome, MapClient};
use crate::config::ShardSpec;
use crate::error::ServerError;

/// The map this coordinator will route by, created if the cluster has none yet.
///
/// `shards` empty means "use the stored map"; otherwise it must agree with the stored map (or
/// creates it, with `vnodes_per_shard`). Waits up to `timeout` for the map group and, when
/// creating the map, for each shard to answer its health.
pub async fn establish(
    client: &MapClient,
    shards: &[ShardSpec],
    vnodes_per_shard: u32,
    timeout: Duration,
) -> Result<ClusterMap, ServerError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    loop {
        let stored = client.get(left()).await.map_err(ServerError::Config)?;
        let map = match stored {
            Some(map) => map,
            None => {
                if shards.is_empty() {
                    return Err(ServerError::Config(
                        "the cluster-map group holds no map yet: give --shards (every shard's URL) to create it".into(),
                    ));
                }
                let groups = discover_groups(shards, left()).await?;
                let map = ClusterMap::bootstrap(groups, vnodes_per_shard)
                    .map_err(|e| ServerError::Config(format!("--shards: {e}")))?;
                match client
                    .compare_and_set(None, &map, left())
                    .await
                    .map_err(ServerError::Config)?
                {
                    CasOutcome::Stored => {
                        tracing::info!(
                            epoch = map.epoch(),
                            shards = map.groups().len(),
                            "created the cluster map"
                        );
                        return Ok(map);
                    }
                    // Another coordinator created it first: compare with that one.
                    CasOutcome::Conflict => continue,
                }
            }
        };
        return check_agrees(map, shards);
    }
}

/// `map`, unless `shards` (when given) disagrees with it.
fn check_agrees(map: ClusterMap, shards: &[ShardSpec]) -> Result<ClusterMap, ServerError> {
    if !shards.is_empty() {
        let given: BTreeMap<ShardId, String> =
            shards.iter().map(|s| (s.id, s.url.clone())).collect();
        let differences = map.differences(&given);
        if !differences.is_empty() {
            return Err(ServerError::Config(format!(
                "--shards disagrees with the cluster map (epoch {}): {}. Routing by --shards would send keys to shards that do not hold them. Start the coordinator without --shards to route by the map. (Changing the shard set means moving keys between shards: adding and removing shards online is not available yet.)",
                map.epoch(),
                differences.join("; ")
            )));
        }
    }
    Ok(map)
}

/// Each shard's group as its replica at the given URL describes it: every replica of its
/// `--peers` list, or the shard alone.
async fn discover_groups(
    shards: &[ShardSpec],
    timeout: Duration,
) -> Result<BTreeMap<ShardId, Group>, ServerError> {
    let deadline = Instant::now() + timeout;
    let mut groups = BTreeMap::new();
    for spec in shards {
        let doc = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match discover::health(&spec.url, left.min(Duration::from_secs(2))).await {
                Ok(doc) => break doc,
                Err(e) if left.is_zero() => {
                    return Err(ServerError::Config(format!(
                        "cannot create the cluster map: shard {} at {} does not answer ({e})",
                        spec.id, spec.url
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        groups.insert(spec.id, group_of(spec, &doc)?);
    }
    Ok(groups)
}

/// The group a shard's health document describes.
fn group_of(spec: &ShardSpec, doc: &serde_json::Value) -> Result<Group, ServerError> {
    if doc["type"] != "shard" || doc["shardId"].as_u64() != Some(u64::from(spec.id.0)) {
        return Err(ServerError::Config(format!(
            "--shards names shard {} at {}, but that node is {} {}",
            spec.id, spec.url, doc["type"], doc["shardId"]
        )));
    }
    let peers: BTreeMap<u64, String> = doc["raft"]["peers"]
        .as_object()
        .map(|peers| {
            peers
                .iter()
                .filter_map(|(id, url)| Some((id.parse().ok()?, url.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let replicas = if peers.is_empty() {
        let replica = doc["replicaId"].as_u64().unwrap_or(1);
        BTreeMap::from([(replica, spec.url.clone())])
    } else {
        peers
    };
    Ok(Group { replicas })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32, url: &str) -> ShardSpec {
        ShardSpec {
            id: ShardId(id),
            url: url.into(),
        }
    }

    #[test]
    fn a_group_comes_from_the_peers_list_or_the_shard_alone() {
        let replicated = serde_json::json!({
            "type": "shard", "shardId": 2, "replicaId": 3,
            "raft": { "peers": { "1": "http://a:1", "2": "http://b:2", "3": "http://c:3" } }
        });
        let g = group_of(&spec(2, "http://c:3"), &replicated).expect("a group");
        assert_eq!(g.replicas.len(), 3);
        assert_eq!(g.replicas[&2], "http://b:2");

        let single = serde_json::json!({ "type": "shard", "shardId": 1, "replicaId": 1 });
        let g = group_of(&spec(1, "http://x:7001"), &single).expect("a group");
        assert_eq!(
            g.replicas,
            BTreeMap::from([(1, "http://x:7001".to_string())])
        );
    }

    #[test]
    fn a_url_that_is_another_shard_or_a_map_replica_is_refused() {
        let other = serde_json::json!({ "type": "shard", "shardId": 5 });
        let err = group_of(&spec(1, "http://x:7005"), &other).expect_err("refused");
        assert!(
            err.to_string().contains("shard 1 at http://x:7005"),
            "{err}"
        );
        let meta = serde_json::json!({ "type": "meta", "shardId": 0 });
        assert!(group_of(&spec(1, "http://x:7900"), &meta).is_err());
    }
}
