//! What makes a shard a replica of a Raft group, on the server side: opening the replica
//! (checking its data directory and `--peers` against what it stored), forming the group on
//! first start, and [`PeerLinks`], the transport that carries Raft RPCs to the other replicas
//! over the internal protocol. The replication logic itself lives in `limedb-raft`.
//!
//! # Forming a group
//!
//! A replica whose log and engine are empty asks its peers (their `/api/v1/health`, every
//! 300 ms) whether a group exists. If any peer already belongs to a group, this replica waits to
//! be replicated to (it is a wiped replica rejoining, or one added by an operator). Once a
//! majority of the peers, itself included, answer and all of them are empty, it initializes the
//! group with exactly `--peers`. Replicas starting together may all do so: they write the
//! identical first entry, which Raft accepts. Until a majority is up nothing happens, so
//! "whichever starts first waits for the others".

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use limedb_cluster::ShardId;
use limedb_proto::{Request, Response};
use limedb_raft::network::BoxFuture;
use limedb_raft::{RaftTransport, Replica, ReplicaId, ReplicaNode, RpcKind, TransportError};

use crate::config::ReplicationConfig;
use crate::coordinator::discover;
use crate::coordinator::link::{LinkError, LinkOptions, ShardLink};
use crate::error::ServerError;
use crate::metrics::ShardMetrics;
use crate::shutdown::Shutdown;

/// The file naming the shard and replica a data directory belongs to.
const IDENTITY_FILE: &str = "REPLICA";
/// How long a peer has to answer a formation probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between formation probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// How long a Raft RPC waits for the first connection to a peer.
const FIRST_CONNECTION_WAIT: Duration = Duration::from_millis(300);

/// Refuses a data directory that belongs to another shard or replica, or holds a shard started
/// without `--peers`; records the identity in a new one.
pub fn check_data_dir(dir: &Path, shard: ShardId, replica: ReplicaId) -> Result<(), ServerError> {
    let config_err = |m: String| ServerError::Config(m);
    for single in ["CURRENT", "memory.log"] {
        if dir.join(single).exists() {
            return Err(config_err(format!(
                "{} holds the data of a shard started without --peers (a single copy); a replica keeps its data in another layout. Use another --data-dir (copy the data in through the HTTP API), or start the shard without --peers",
                dir.display()
            )));
        }
    }
    let path = dir.join(IDENTITY_FILE);
    let want = format!("shard {shard} replica {replica}\n");
    match std::fs::read_to_string(&path) {
        Ok(found) if found == want => Ok(()),
        Ok(found) => Err(config_err(format!(
            "{} holds the data of {}, not of shard {shard} replica {replica}; give each replica its own --data-dir",
            dir.display(),
            found.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
                context: format!("cannot create {}", dir.display()),
                source,
            })?;
            limedb_raft::fsutil::write_small_file_plain(&path, want.as_bytes())
                .map_err(ServerError::Replica)
        }
        Err(source) => Err(ServerError::Io {
            context: format!("cannot read {}", path.display()),
            source,
        }),
    }
}

/// Refuses to start a replica whose `--peers` disagree with the membership it stored.
pub async fn check_peers(replica: &Replica, config: &ReplicationConfig) -> Result<(), ServerError> {
    if replica.is_pristine() {
        return Ok(());
    }
    let stored = replica.stored_membership().await?;
    let stored: BTreeMap<ReplicaId, String> = stored
        .nodes()
        .map(|(id, node)| (*id, node.url.clone()))
        .collect();
    if stored.is_empty() || stored == config.peers {
        return Ok(());
    }
    let show = |m: &BTreeMap<ReplicaId, String>| {
        m.iter()
            .map(|(id, url)| format!("{id}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    Err(ServerError::Config(format!(
        "--peers {} disagrees with the group's membership stored in this replica's data directory, {}; start it with --peers {} (membership changes online are made with `limedb admin add-replica` / `remove-replica`, which the stored list follows), or give it an empty --data-dir to join as a new replica",
        show(&config.peers),
        show(&stored),
        show(&stored)
    )))
}

/// Forms the group on a first start (see the module docs). Returns when the replica belongs to a
/// group, or at shutdown.
pub async fn form_group(
    replica: Replica,
    shard: ShardId,
    config: ReplicationConfig,
    mut shutdown: Shutdown,
) {
    let majority = config.peers.len() / 2 + 1;
    let mut reported = false;
    while replica.is_pristine() && !shutdown.is_triggered() {
        let mut empty = 1;
        let mut existing = None;
        for (&id, url) in config
            .peers
            .iter()
            .filter(|(id, _)| **id != config.replica_id)
        {
            let Ok(doc) = discover::health(url, PROBE_TIMEOUT).await else {
                continue;
            };
            if doc["shardId"].as_u64() != Some(u64::from(shard.0))
                || doc["replicaId"].as_u64() != Some(id)
            {
                tracing::warn!(%url, shard = %shard, replica = id, "a peer in --peers is another shard or replica: {}", doc["replicaId"]);
                continue;
            }
            match doc["raft"]["pristine"].as_bool() {
                Some(true) => empty += 1,
                Some(false) => existing = Some(id),
                None => {}
            }
        }
        if let Some(id) = existing {
            tracing::info!(shard = %shard, peer = id, "the group exists; waiting for its leader to replicate to this replica");
            return;
        }
        if empty >= majority {
            let peers = config
                .peers
                .iter()
                .map(|(id, url)| (*id, ReplicaNode { url: url.clone() }))
                .collect();
            match replica.initialize(peers).await {
                Ok(()) => {
                    tracing::info!(shard = %shard, replicas = config.peers.len(), "formed the group")
                }
                Err(e) => tracing::error!(shard = %shard, error = %e, "cannot form the group"),
            }
            return;
        }
        if !reported {
            tracing::info!(shard = %shard, up = empty, needed = majority, "waiting for a majority of --peers to start before forming the group");
            reported = true;
        }
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = shutdown.wait() => return,
        }
    }
}

/// Raft RPCs to peer replicas over the internal protocol: one supervised [`ShardLink`] per
/// peer, made on first use.
pub struct PeerLinks {
    shard: ShardId,
    options: LinkOptions,
    links: Mutex<HashMap<(ReplicaId, String), Arc<ShardLink>>>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl PeerLinks {
    /// Links of shard `shard`'s replica; their supervisors stop at `shutdown`.
    pub fn new(shard: ShardId, options: LinkOptions, shutdown: Shutdown) -> PeerLinks {
        PeerLinks {
            shard,
            options,
            links: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// Makes the links to `peers` now, so that they are connected before Raft needs them.
    pub fn connect_all(&self, peers: &BTreeMap<ReplicaId, String>, me: ReplicaId) {
        for (id, url) in peers.iter().filter(|(id, _)| **id != me) {
            self.link(*id, url);
        }
    }

    fn link(&self, target: ReplicaId, url: &str) -> Arc<ShardLink> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let key = (target, url.to_string());
        if let Some(link) = links.get(&key) {
            return Arc::clone(link);
        }
        let link = Arc::new(
            ShardLink::new(
                self.shard,
                url.to_string(),
                self.options.clone(),
                ShardMetrics::unregistered(),
            )
            .to_replica(target),
        );
        tokio::spawn(Arc::clone(&link).supervise(self.shutdown.clone()));
        links.insert(key, Arc::clone(&link));
        link
    }
}

impl RaftTransport for PeerLinks {
    fn call<'a>(
        &'a self,
        target: ReplicaId,
        url: &'a str,
        kind: RpcKind,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let link = self.link(target, url);
            // A peer this replica has not talked to yet (a follower asking another for its
            // vote) gets a moment to connect instead of failing the election at once.
            link.first_connection(timeout.min(FIRST_CONNECTION_WAIT))
                .await;
            let request = Request::Raft {
                shard_id: self.shard.0,
                target,
                rpc: kind as u8,
                payload,
            };
            match link.call_within(request, timeout).await {
                Ok(Response::RaftReply(reply)) => Ok(reply),
                Ok(Response::Error { message, .. }) => Err(TransportError::Remote(message)),
                Ok(other) => Err(TransportError::Remote(format!(
                    "unexpected answer to a raft request: {}",
                    other.kind_name()
                ))),
                Err(LinkError::Down(why)) => Err(TransportError::Unreachable(why)),
                Err(LinkError::Busy(n)) => {
                    Err(TransportError::Unreachable(format!("{n} requests queued")))
                }
                Err(LinkError::Timeout(_)) => Err(TransportError::Timeout(timeout)),
                Err(LinkError::ConnectionLost) => Err(TransportError::Unreachable(
                    "the connection was lost".into(),
                )),
            }
        })
    }
}
