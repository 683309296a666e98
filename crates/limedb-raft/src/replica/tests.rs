//! A group of three replicas in one process, joined by an in-memory transport that can cut
//! replicas off: elections, replicated writes, read barriers, failover, a replica that catches
//! up through a snapshot, and membership changes. (Process-level tests with real sockets live
//! in the workspace's `tests/`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::log_store::tests::test_factory;
use crate::network::{BoxFuture, RaftTransport, RpcKind, TransportError};

#[derive(Default)]
struct Mesh {
    replicas: Mutex<HashMap<ReplicaId, Replica>>,
    /// Replicas that can neither send nor receive.
    down: Mutex<HashSet<ReplicaId>>,
}

struct MeshTransport {
    from: ReplicaId,
    mesh: Arc<Mesh>,
}

impl RaftTransport for MeshTransport {
    fn call<'a>(
        &'a self,
        target: ReplicaId,
        _url: &'a str,
        kind: RpcKind,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, std::result::Result<Bytes, TransportError>> {
        Box::pin(async move {
            {
                let down = self.mesh.down.lock().expect("lock");
                if down.contains(&self.from) || down.contains(&target) {
                    return Err(TransportError::Unreachable("cut off".into()));
                }
            }
            let replica = self
                .mesh
                .replicas
                .lock()
                .expect("lock")
                .get(&target)
                .cloned();
            let Some(replica) = replica else {
                return Err(TransportError::Unreachable(format!("no replica {target}")));
            };
            match tokio::time::timeout(timeout, replica.handle_rpc(kind, payload)).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(TransportError::Remote(e.to_string())),
                Err(_) => Err(TransportError::Timeout(timeout)),
            }
        })
    }
}

fn url(id: ReplicaId) -> String {
    format!("http://replica-{id}")
}

async fn start(
    mesh: &Arc<Mesh>,
    root: &std::path::Path,
    id: ReplicaId,
    snapshot_logs: u64,
) -> Replica {
    let config = ReplicaConfig {
        shard_id: 1,
        replica_id: id,
        dir: root.join(format!("r{id}")),
        log_sync: SyncPolicy::Always,
        timing: RaftTiming::default(),
        snapshot_logs,
        keep_logs: 10,
        engine_factory: test_factory(),
    };
    let transport = Arc::new(MeshTransport {
        from: id,
        mesh: Arc::clone(mesh),
    });
    let replica = Replica::open(config, transport)
        .await
        .expect("open replica");
    mesh.replicas
        .lock()
        .expect("lock")
        .insert(id, replica.clone());
    replica
}

fn peers(ids: &[ReplicaId]) -> BTreeMap<ReplicaId, ReplicaNode> {
    ids.iter()
        .map(|&id| (id, ReplicaNode { url: url(id) }))
        .collect()
}

/// Waits (at most 10 s) until some replica among `ids` leads, and returns it.
async fn leader_among(mesh: &Arc<Mesh>, ids: &[ReplicaId]) -> Replica {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = {
            let replicas = mesh.replicas.lock().expect("lock");
            ids.iter()
                .filter_map(|id| replicas.get(id))
                .find(|r| r.check_leader().is_ok())
                .cloned()
        };
        if let Some(r) = found {
            return r;
        }
        assert!(Instant::now() < deadline, "no leader elected among {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes through whichever replica among `ids` leads, again after a leadership change (the
/// machine running the tests may be loaded enough for an election).
async fn write_to_leader(mesh: &Arc<Mesh>, ids: &[ReplicaId], writes: Vec<ReplicatedWrite>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = leader_among(mesh, ids).await;
        match leader.write(writes.clone()).await {
            Ok(_) => return,
            // These writes are idempotent puts: one whose outcome is unknown can be sent again.
            Err(ReplicaError::NotLeader { .. } | ReplicaError::OutcomeUnknown(_))
                if Instant::now() < deadline =>
            {
                continue
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

fn put(key: &str, value: &str) -> ReplicatedWrite {
    ReplicatedWrite::Put {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        expires_at_ms: None,
    }
}

async fn wait_applied(replica: &Replica, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.status().applied_index.unwrap_or(0) < index {
        assert!(
            Instant::now() < deadline,
            "replica {} did not apply {index}",
            replica.id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_forms_replicates_and_fails_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Arc::new(Mesh::default());
    let mut replicas = Vec::new();
    for id in 1..=3 {
        let r = start(&mesh, dir.path(), id, 10_000).await;
        assert!(r.is_pristine());
        replicas.push(r);
    }
    // Every replica initializes with the same peers, as `limedb shard --peers` does.
    for r in &replicas {
        r.initialize(peers(&[1, 2, 3])).await.expect("initialize");
    }
    let leader = leader_among(&mesh, &[1, 2, 3]).await;
    // Concurrent writes share entries.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let leader = leader.clone();
        tasks.spawn(async move { leader.write(vec![put(&format!("k{i}"), "v1")]).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("write");
    }
    // Commit-index-only updates rode on later messages instead of round trips of their own.
    assert!(
        leader
            .network_counters()
            .commit_updates_deferred
            .load(Ordering::Relaxed)
            > 0
    );
    let proposals = leader.counters().proposals.load(Ordering::Relaxed);
    assert!(
        proposals < 200,
        "200 concurrent writes took {proposals} entries"
    );
    let removed = leader
        .write(vec![
            ReplicatedWrite::Delete {
                key: Bytes::from("k0"),
            },
            ReplicatedWrite::Delete {
                key: Bytes::from("nope"),
            },
        ])
        .await
        .expect("delete");
    assert_eq!(removed, vec![true, false]);
    // Right after a committed write a quorum has acknowledged the leader: the read is served
    // under its lease, without a round.
    let rounds = leader.counters().read_rounds.load(Ordering::Relaxed);
    leader.read_barrier().await.expect("barrier on the leader");
    assert_eq!(leader.counters().lease_reads.load(Ordering::Relaxed), 1);
    assert_eq!(
        leader.counters().read_rounds.load(Ordering::Relaxed),
        rounds
    );
    // A follower refuses reads and writes, naming the leader.
    let follower = replicas
        .iter()
        .find(|r| r.id() != leader.id())
        .expect("a follower");
    match follower.write(vec![put("x", "y")]).await {
        Err(ReplicaError::NotLeader {
            leader: Some((id, _)),
        }) => assert_eq!(id, leader.id()),
        other => panic!("a follower wrote: {other:?}"),
    }
    assert!(follower.read_barrier().await.is_err());
    // Every replica applies everything.
    let last = leader.status().last_log_index.expect("entries");
    for r in &replicas {
        wait_applied(r, last).await;
        assert!(r.engine().get(b"k199").expect("get").is_some());
        assert!(r.engine().get(b"k0").expect("get").is_none());
    }
    // Cut the leader off: the others elect a new one that has every acknowledged write.
    mesh.down.lock().expect("lock").insert(leader.id());
    let others: Vec<ReplicaId> = (1..=3).filter(|&id| id != leader.id()).collect();
    let started = Instant::now();
    let new_leader = leader_among(&mesh, &others).await;
    let failover = started.elapsed();
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
    // The lease's promise: the old leader may serve reads for the read lease after its last
    // quorum acknowledgement (before the cut); no other leader is elected before then.
    let read_lease = RaftTiming::default().read_lease();
    assert!(
        failover >= read_lease,
        "a new leader after {failover:?}, inside the old leader's read lease of {read_lease:?}"
    );
    new_leader.read_barrier().await.expect("barrier");
    assert!(new_leader.engine().get(b"k150").expect("get").is_some());
    new_leader
        .write(vec![put("after", "failover")])
        .await
        .expect("write after failover");
    // The old leader, cut off, cannot confirm its leadership for a read.
    assert!(
        leader.read_barrier().await.is_err(),
        "a deposed leader passed a read barrier"
    );
    // Healed, it follows and catches up.
    mesh.down.lock().expect("lock").clear();
    let last = new_leader.status().last_log_index.expect("entries");
    wait_applied(&leader, last).await;
    assert!(leader.engine().get(b"after").expect("get").is_some());
    for r in &replicas {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_catches_up_through_a_snapshot_and_replaces_a_dead_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Arc::new(Mesh::default());
    let mut replicas = Vec::new();
    for id in 1..=3 {
        let r = start(&mesh, dir.path(), id, 20).await;
        r.initialize(peers(&[1, 2, 3])).await.expect("initialize");
        replicas.push(r);
    }
    // A group record set early: its entry is purged long before the new replica joins, so it
    // can only reach it with the snapshot.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = leader_among(&mesh, &[1, 2, 3]).await;
        match leader
            .write_record(vec![put("r", "1")], Bytes::from_static(b"record-1"))
            .await
        {
            Ok(_) => break,
            Err(ReplicaError::NotLeader { .. } | ReplicaError::OutcomeUnknown(_))
                if Instant::now() < deadline => {}
            Err(e) => panic!("write_record: {e}"),
        }
    }
    for i in 0..300 {
        write_to_leader(&mesh, &[1, 2, 3], vec![put(&format!("k{i}"), "v")]).await;
    }
    for r in &replicas {
        wait_applied(r, 300).await;
        assert_eq!(
            r.record().as_deref(),
            Some(&b"record-1"[..]),
            "replica {}",
            r.id()
        );
    }
    // Snapshots were taken and the log purged, so a new replica needs the snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_among(&mesh, &[1, 2, 3])
        .await
        .status()
        .snapshot_index
        .unwrap_or(0)
        < 200
    {
        assert!(Instant::now() < deadline, "no snapshot on the leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = leader_among(&mesh, &[1, 2, 3]).await;
    let dead = replicas
        .iter()
        .find(|r| r.id() != leader.id())
        .expect("follower")
        .clone();
    dead.shutdown().await.expect("stop");
    mesh.replicas.lock().expect("lock").remove(&dead.id());
    let fresh = start(&mesh, dir.path(), 4, 20).await;
    assert!(fresh.is_pristine());
    let alive: Vec<ReplicaId> = (1..=3).filter(|&id| id != dead.id()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = leader_among(&mesh, &alive).await;
        match leader.add_replica(4, url(4), Duration::from_secs(20)).await {
            Ok(()) => break,
            Err(ReplicaError::NotLeader { .. }) if Instant::now() < deadline => {}
            Err(e) => panic!("add replica 4: {e}"),
        }
    }
    let mut voters_now: Vec<ReplicaId> = alive.clone();
    voters_now.push(4);
    loop {
        let leader = leader_among(&mesh, &voters_now).await;
        match leader.remove_replica(dead.id()).await {
            Ok(()) => break,
            Err(ReplicaError::NotLeader { .. }) if Instant::now() < deadline => {}
            Err(e) => panic!("remove the dead one: {e}"),
        }
    }
    let leader = leader_among(&mesh, &voters_now).await;
    let voters: Vec<ReplicaId> = leader.membership().voter_ids().collect();
    assert!(
        voters.contains(&4) && !voters.contains(&dead.id()),
        "{voters:?}"
    );
    assert!(fresh.counters().snapshots_received.load(Ordering::Relaxed) >= 1);
    write_to_leader(&mesh, &voters, vec![put("last", "v")]).await;
    let last = leader_among(&mesh, &voters)
        .await
        .status()
        .last_log_index
        .expect("entries");
    wait_applied(&fresh, last).await;
    for key in ["k0", "k299", "last"] {
        assert!(
            fresh.engine().get(key.as_bytes()).expect("get").is_some(),
            "{key}"
        );
    }
    assert_eq!(
        fresh.record().as_deref(),
        Some(&b"record-1"[..]),
        "the group record came with the snapshot"
    );
    let remaining: Vec<Replica> = mesh
        .replicas
        .lock()
        .expect("lock")
        .values()
        .cloned()
        .collect();
    for r in remaining {
        r.shutdown().await.expect("shutdown");
    }
}

#[test]
fn election_slots_are_staggered_by_replica_id_and_rotate_with_the_term() {
    let t = RaftTiming::default();
    assert_eq!(t.lease(), Duration::from_millis(400));
    let at = |id, term| t.stand_after(id, term, 0.0).as_millis();
    // In one term, three replicas stand 100 ms apart.
    let mut term7: Vec<u128> = [1, 2, 3].iter().map(|&id| at(id, 7)).collect();
    term7.sort_unstable();
    assert!(term7.windows(2).all(|w| w[1] - w[0] >= 100), "{term7:?}");
    // The first one differs from term to term.
    let first = |term| (1..=3).min_by_key(|&id| at(id, term)).expect("a replica");
    let firsts: std::collections::BTreeSet<u64> = (0..4).map(first).collect();
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    // Jitter stays inside the slot gap.
    assert!(t.stand_after(1, 0, 1.0) < t.stand_after(2, 0, 0.0));
    // Nobody stands before its peers' leases, measured from a heartbeat they received up to
    // E/8 later, have run out.
    let earliest = (1..=3).map(|id| at(id, 7)).min().expect("a replica");
    assert!(earliest >= 450, "{earliest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_that_stops_on_its_own_is_reported_and_a_clean_shutdown_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Arc::new(Mesh::default());
    let crashed = start(&mesh, dir.path(), 1, 10_000).await;
    crashed.initialize(peers(&[1])).await.expect("initialize");
    leader_among(&mesh, &[1]).await;
    // openraft's core ends behind the replica's back (as after a panic or a fatal storage
    // error): the replica says so, with a reason.
    crashed.inner.raft.shutdown().await.expect("stop the core");
    let why = tokio::time::timeout(Duration::from_secs(5), crashed.stopped())
        .await
        .expect("reported within 5 s");
    assert!(why.contains("openraft"), "{why}");
    // A replica shut down cleanly reports nothing.
    let other = tempfile::tempdir().expect("tempdir");
    let mesh = Arc::new(Mesh::default());
    let clean = start(&mesh, other.path(), 1, 10_000).await;
    clean.initialize(peers(&[1])).await.expect("initialize");
    leader_among(&mesh, &[1]).await;
    clean.shutdown().await.expect("shutdown");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), clean.stopped())
            .await
            .is_err(),
        "a clean shutdown was reported as a failure"
    );
}
