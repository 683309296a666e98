//! [`ShardGroup`]: a shard as the coordinator sees it — the replicas of its Raft group (just
//! one for a shard started without `--peers`), a [`ShardLink`] to each, and the replica it
//! believes leads.
//!
//! # Learning the group
//!
//! The coordinator is given one URL per shard, any replica's. The group's supervisor reads that
//! replica's `/api/v1/health`, which lists every member (`raft.members`) and the leader, opens a
//! link to each member, and refreshes the list every health interval from any member that
//! answers, so added and removed replicas are followed.
//!
//! # Routing a request ([`ShardGroup::call`])
//!
//! The request goes to the believed leader. A `NotLeader` answer (nothing was done) names the
//! new leader, or none during an election: the request goes there at once, or after a 20 ms
//! pause to the next replica. A replica that answers a data request leads, and becomes the
//! believed leader. A request that could not be sent (link down, queue full) tries the next
//! replica. All of this stops at the deadline, `--shard-timeout-ms` after the request arrived:
//! 503 naming the shard and the last thing seen. (A shard without replication whose link is
//! down fails at once, as before replication existed: there is no leader to wait for.)
//!
//! A request that **was sent** and got no answer (timeout, connection lost) may have been
//! executed. Reads are retried (each attempt gets at most [`ATTEMPT_TIMEOUT`], so one stopped
//! leader cannot eat the whole deadline) and the silent replica is *suspect* for a while: a hint
//! that names it is ignored, since a stopped leader is still named by followers until they
//! elect another. A **write** in that state is never retried: it fails at once with 503
//! `outcome_unknown`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use limedb_cluster::ShardId;
use limedb_proto::{Request, Response};

use super::discover;
use super::link::{LinkError, LinkOptions, LinkStatus, ShardLink};
use crate::error::ApiError;
use crate::metrics::ShardMetrics;
use crate::shutdown::Shutdown;

/// Longest a read waits for one replica before it tries another.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(700);
/// Pause before trying again while no leader is known.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(20);
/// How long a replica that went silent on a request is not trusted as the leader.
const SUSPECT_FOR: Duration = Duration::from_millis(1500);

/// One member of a group as the coordinator knows it.
#[derive(Debug)]
pub struct Member {
    /// Its replica id (1 for a shard without replication).
    pub replica_id: u64,
    /// Its HTTP URL.
    pub url: String,
    /// The link to it.
    pub link: Arc<ShardLink>,
}

/// What the coordinator knows about a group, for health and cluster state.
#[derive(Clone, Debug)]
pub struct GroupView {
    /// Members: replica id, URL, link state.
    pub members: Vec<(u64, String, LinkStatus)>,
    /// The believed leader.
    pub leader: Option<u64>,
    /// Whether the group is replicated (`--peers`).
    pub replicated: bool,
    /// The last health document of the leader (role, term, lag per member), if any.
    pub leader_health: Option<serde_json::Value>,
}

/// A shard's replica group, as the coordinator routes to it.
pub struct ShardGroup {
    id: ShardId,
    seed_url: String,
    options: LinkOptions,
    metrics: ShardMetrics,
    members: RwLock<Vec<Arc<Member>>>,
    /// Believed leader's replica id; 0 = unknown.
    leader: AtomicU64,
    suspect: Mutex<Option<(u64, Instant)>>,
    replicated: std::sync::atomic::AtomicBool,
    leader_health: Mutex<Option<serde_json::Value>>,
    /// Stops the members' link supervisors.
    shutdown: Mutex<Option<Shutdown>>,
}

impl std::fmt::Debug for ShardGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGroup")
            .field("id", &self.id)
            .field("url", &self.seed_url)
            .finish_non_exhaustive()
    }
}

/// Whether `request` may be sent again after it was sent and got no answer: reads only.
pub fn retry_safe(request: &Request) -> bool {
    let read_only = |args: &[bytes::Bytes]| {
        args.first().is_some_and(|name| {
            let internal = name.len() > 7 && name[..7].eq_ignore_ascii_case(b"LIMEDB.");
            internal || crate::resp::table::lookup(name).is_some_and(|spec| !spec.is_write())
        })
    };
    match request {
        Request::Get { .. } | Request::KeysPage { .. } | Request::Ping | Request::Hello => true,
        Request::Command { args } => read_only(args),
        Request::Pipeline { commands } => commands.iter().all(|c| read_only(c)),
        _ => false,
    }
}

impl ShardGroup {
    /// A group known only by one replica's URL, until its supervisor learns the rest.
    pub fn new(id: ShardId, url: String, options: LinkOptions, metrics: ShardMetrics) -> Self {
        metrics.up.set(0);
        ShardGroup {
            id,
            seed_url: url,
            options,
            metrics,
            members: RwLock::new(Vec::new()),
            leader: AtomicU64::new(0),
            suspect: Mutex::new(None),
            replicated: std::sync::atomic::AtomicBool::new(false),
            leader_health: Mutex::new(None),
            shutdown: Mutex::new(None),
        }
    }

    /// The shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The URL the coordinator was given for this shard.
    pub fn url(&self) -> &str {
        &self.seed_url
    }

    fn members(&self) -> Vec<Arc<Member>> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What is known about the group.
    pub fn view(&self) -> GroupView {
        let leader = match self.leader.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        };
        GroupView {
            members: self
                .members()
                .iter()
                .map(|m| (m.replica_id, m.url.clone(), m.link.status()))
                .collect(),
            leader,
            replicated: self.replicated.load(Ordering::Acquire),
            leader_health: self
                .leader_health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Whether a majority of the members is reachable (the group can serve).
    pub fn healthy(&self) -> bool {
        let members = self.members();
        let up = members.iter().filter(|m| m.link.status().up).count();
        !members.is_empty() && up * 2 > members.len()
    }

    /// Sets the up gauge from the members' links (before a metrics scrape).
    pub fn refresh_metrics(&self) {
        self.metrics.up.set(i64::from(self.healthy()));
    }

    fn is_suspect(&self, replica: u64) -> bool {
        let suspect = self.suspect.lock().unwrap_or_else(|p| p.into_inner());
        suspect.is_some_and(|(id, until)| id == replica && Instant::now() < until)
    }

    fn set_leader(&self, replica: u64) {
        let old = self.leader.swap(replica, Ordering::AcqRel);
        if old != replica && replica != 0 {
            tracing::info!(shard = %self.id, leader = replica, "shard leader");
        }
    }

    /// Sends `request` to the group's leader, following redirects and waiting for an election
    /// up to the configured timeout (see the module docs).
    pub async fn call(&self, request: Request) -> Result<Response, ApiError> {
        let started = Instant::now();
        let deadline = started + self.options.timeout;
        let retry = retry_safe(&request);
        let mut next = 0usize;
        let mut last_problem = String::from("no replica reachable yet");
        let result = loop {
            let now = Instant::now();
            if now >= deadline {
                break Err(self.unavailable(format!(
                    "no leader answered within {} ms ({last_problem})",
                    self.options.timeout.as_millis()
                )));
            }
            let members = self.members();
            let believed = self.leader.load(Ordering::Acquire);
            let replicated = self.replicated.load(Ordering::Acquire);
            let target = members
                .iter()
                .find(|m| !replicated || (m.replica_id == believed && believed != 0))
                .or_else(|| {
                    // No leader known: walk the members that are up, round robin, leaving out
                    // one that just went silent on a request (it is likely the dead leader,
                    // still named by followers until they elect another).
                    let up: Vec<&Arc<Member>> = members
                        .iter()
                        .filter(|m| m.link.status().up && !self.is_suspect(m.replica_id))
                        .collect();
                    let pick = up.get(next % up.len().max(1)).copied();
                    next += 1;
                    pick
                })
                .cloned();
            let Some(target) = target else {
                tokio::time::sleep(NO_LEADER_PAUSE.min(deadline - now)).await;
                continue;
            };
            let remaining = deadline - now;
            let attempt = if retry {
                remaining.min(ATTEMPT_TIMEOUT)
            } else {
                remaining
            };
            match target.link.call_within(request.clone(), attempt).await {
                Ok(Response::NotLeader {
                    leader_id,
                    leader_url,
                }) => {
                    match leader_id.filter(|id| *id != target.replica_id && !self.is_suspect(*id)) {
                        Some(id) => {
                            self.set_leader(id);
                            if !members.iter().any(|m| m.replica_id == id) {
                                if let Some(url) = leader_url {
                                    self.add_member(id, url);
                                }
                            }
                        }
                        None => {
                            self.leader.store(0, Ordering::Release);
                            last_problem = format!(
                                "replica {} knows no leader (an election is on)",
                                target.replica_id
                            );
                            tokio::time::sleep(
                                NO_LEADER_PAUSE
                                    .min(deadline.saturating_duration_since(Instant::now())),
                            )
                            .await;
                        }
                    }
                }
                Ok(response) => {
                    self.set_leader(target.replica_id);
                    break Ok(response);
                }
                Err(e @ (LinkError::Down(_) | LinkError::Busy(_))) if !replicated => {
                    // A shard on its own that is known to be down fails at once.
                    break Err(self.unavailable(e.to_string()));
                }
                Err(e @ (LinkError::Down(_) | LinkError::Busy(_))) => {
                    // Not sent: try another replica.
                    if believed == target.replica_id {
                        self.leader.store(0, Ordering::Release);
                    }
                    last_problem = format!("replica {} at {}: {e}", target.replica_id, target.url);
                    if !members.iter().any(|m| m.link.status().up) {
                        tokio::time::sleep(NO_LEADER_PAUSE.min(deadline - now)).await;
                    }
                }
                Err(e @ (LinkError::Timeout(_) | LinkError::ConnectionLost)) => {
                    // Sent, and maybe executed.
                    *self.suspect.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((target.replica_id, Instant::now() + SUSPECT_FOR));
                    self.leader.store(0, Ordering::Release);
                    if !replicated {
                        // As before replication: the shard's 503 says the answer was lost.
                        break Err(self.unavailable(e.to_string()));
                    }
                    if !retry {
                        break Err(ApiError::OutcomeUnknown(format!(
                            "shard {} replica {} at {}: {e}",
                            self.id, target.replica_id, target.url
                        )));
                    }
                    last_problem = format!("replica {} at {}: {e}", target.replica_id, target.url);
                }
            }
        };
        self.metrics
            .forward_latency
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.forward_errors.inc();
        }
        result
    }

    fn unavailable(&self, reason: String) -> ApiError {
        ApiError::ShardUnavailable {
            shard: self.id,
            url: self.seed_url.clone(),
            reason,
        }
    }

    /// Adds a member (a link to it, supervised until shutdown) unless it is known.
    fn add_member(&self, replica_id: u64, url: String) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        if members
            .iter()
            .any(|m| m.replica_id == replica_id && m.url == url)
        {
            return;
        }
        members.retain(|m| m.replica_id != replica_id);
        let mut link = ShardLink::new(
            self.id,
            url.clone(),
            self.options.clone(),
            ShardMetrics::unregistered(),
        );
        if self.replicated.load(Ordering::Acquire) {
            link = link.to_replica(replica_id);
        }
        let link = Arc::new(link);
        if let Some(shutdown) = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            tokio::spawn(Arc::clone(&link).supervise(shutdown));
        }
        tracing::info!(shard = %self.id, replica = replica_id, %url, "shard member");
        members.push(Arc::new(Member {
            replica_id,
            url,
            link,
        }));
        members.sort_by_key(|m| m.replica_id);
    }

    /// Applies a health document of a member: the member list and the leader.
    fn learn(&self, doc: &serde_json::Value) {
        let replicated = doc["replicated"].as_bool().unwrap_or(false);
        self.replicated.store(replicated, Ordering::Release);
        let listed: BTreeMap<u64, String> = doc["raft"]["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .filter_map(|m| {
                        Some((m["replicaId"].as_u64()?, m["url"].as_str()?.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if replicated && !listed.is_empty() {
            for (id, url) in &listed {
                self.add_member(*id, url.clone());
            }
            self.members
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|m| listed.contains_key(&m.replica_id));
        } else if !replicated {
            let id = doc["replicaId"].as_u64().unwrap_or(1);
            self.add_member(id, self.seed_url.clone());
        }
        if doc["role"] == "leader" {
            if let Some(id) = doc["replicaId"].as_u64() {
                if !self.is_suspect(id) {
                    self.set_leader(id);
                }
            }
            *self.leader_health.lock().unwrap_or_else(|p| p.into_inner()) = Some(doc.clone());
        }
    }

    /// Keeps the member list and links current until `shutdown` (see the module docs).
    pub async fn supervise(self: Arc<Self>, mut shutdown: Shutdown) {
        *self.shutdown.lock().unwrap_or_else(|p| p.into_inner()) = Some(shutdown.clone());
        let mut reported = None::<String>;
        while !shutdown.is_triggered() {
            // Ask the members (the seed URL first, while none is known); the leader's document
            // is the one whose member list is the newest.
            let mut urls: Vec<String> = self.members().iter().map(|m| m.url.clone()).collect();
            if urls.is_empty() {
                urls.push(self.seed_url.clone());
            }
            let mut learned = false;
            for url in urls {
                match discover::health(&url, self.options.timeout).await {
                    Ok(doc) if doc["shardId"].as_u64() == Some(u64::from(self.id.0)) => {
                        self.learn(&doc);
                        learned = true;
                        if doc["role"] == "leader" {
                            break;
                        }
                    }
                    Ok(doc) => {
                        let why =
                            format!("{url} reports shard id {}, not {}", doc["shardId"], self.id);
                        if reported.as_deref() != Some(why.as_str()) {
                            tracing::warn!(shard = %self.id, "{why}");
                            reported = Some(why);
                        }
                    }
                    Err(_) => {}
                }
            }
            self.metrics.up.set(i64::from(self.healthy()));
            let pause = if learned && self.leader.load(Ordering::Acquire) != 0 {
                self.options.health_interval
            } else {
                Duration::from_millis(200)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.wait() => break,
            }
        }
        self.metrics.up.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn command(args: &[&str]) -> Request {
        Request::Command {
            args: args.iter().map(|a| Bytes::from(a.to_string())).collect(),
        }
    }

    #[test]
    fn only_reads_are_retried_after_an_unknown_outcome() {
        assert!(retry_safe(&Request::Get {
            key: Bytes::from("k")
        }));
        assert!(retry_safe(&command(&["GET", "k"])));
        assert!(retry_safe(&command(&["mget", "a", "b"])));
        assert!(retry_safe(&command(&["LIMEDB.SCAN", "", "10"])));
        assert!(!retry_safe(&Request::Set {
            key: Bytes::from("k"),
            value: Bytes::new(),
            ttl_ms: None
        }));
        assert!(!retry_safe(&Request::Delete {
            key: Bytes::from("k")
        }));
        assert!(!retry_safe(&command(&["INCR", "k"])));
        assert!(!retry_safe(&command(&["set", "k", "v"])));
        assert!(!retry_safe(&Request::Pipeline {
            commands: vec![
                vec![Bytes::from("GET"), Bytes::from("a")],
                vec![Bytes::from("DEL"), Bytes::from("a")]
            ]
        }));
        assert!(!retry_safe(&Request::Transaction {
            commands: vec![],
            watched: vec![]
        }));
    }
}
