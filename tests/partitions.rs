//! A shard's Raft group across network partitions, and histories checked for linearizability.
//!
//! Each replica runs in a Linux network namespace of its own (a [`netns::Lab`] the test makes:
//! veth pairs into a bridge); the coordinator and the clients run in the test's namespace and
//! reach every replica. Faults cut the leader off from everyone, or from its peers only (the
//! coordinator still reaching it). Where the kernel refuses namespaces (not root, no
//! CAP_NET_ADMIN) the partition tests say so and skip (CI sets `LIMEDB_REQUIRE_NETNS=1`, which
//! makes that a failure); the linearizability test then injects kills and pauses only.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use limedb_raft::RaftTiming;
use limedb_testkit::group::{Group, Placement};
use limedb_testkit::history::{history_client, judge, more_ops_than, ops_recorded};
use limedb_testkit::linearizability::History;
use limedb_testkit::netns::{self, Host, Lab};
use limedb_testkit::{http, temp_dir, wait_for, HttpConn};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three replicas of shard 1, each in a namespace of `lab`, all on port 7001 of their host.
fn group_in(lab: &Lab, dir: &Path) -> (Group, BTreeMap<u64, Host>) {
    let mut hosts = BTreeMap::new();
    let mut placements = BTreeMap::new();
    for r in 1..=3u64 {
        let host = lab
            .add_host(&format!("r{r}"))
            .unwrap_or_else(|e| panic!("{e}"));
        placements.insert(
            r,
            Placement {
                ip: host.ip().to_string(),
                port: 7001,
                wrapper: host.wrapper(),
            },
        );
        hosts.insert(r, host);
    }
    (Group::start_at(bin(), dir, 1, placements, &[]), hosts)
}

async fn health_of(url: &str) -> Option<serde_json::Value> {
    let addr = url.trim_start_matches("http://").to_string();
    tokio::time::timeout(
        Duration::from_secs(1),
        http::request(&addr, "GET", "/api/v1/health", &[], None),
    )
    .await
    .ok()?
    .ok()?
    .json()
}

/// Waits until some replica other than `old` leads; returns it.
async fn new_leader(group: &Group, old: u64) -> u64 {
    let others: Vec<u64> = group
        .replicas
        .keys()
        .copied()
        .filter(|r| *r != old)
        .collect();
    wait_for(
        Duration::from_secs(15),
        "a new leader on the majority side",
        || {
            let others = others.clone();
            async move {
                for r in others {
                    if health_of(&group.url(r)).await?["role"] == "leader" {
                        return Some(r);
                    }
                }
                None
            }
        },
    )
    .await
}

/// Waits until replica `r` follows the group's leader (`leader`, or whichever replica leads
/// by then: a partition healing may bring one more election) and has applied everything that
/// leader had committed when it was first seen leading.
async fn converged(group: &Group, r: u64, leader: u64) {
    let url = group.url(r);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Option<(u64, u64)> = None;
    loop {
        let h = health_of(&url).await;
        let following = h
            .as_ref()
            .filter(|h| h["role"] == "follower")
            .and_then(|h| h["leaderId"].as_u64());
        if let Some(current) = following {
            if seen.is_none_or(|(l, _)| l != current) {
                if current != leader {
                    println!("after healing, replica {current} leads (not {leader})");
                }
                let target = health_of(&group.url(current))
                    .await
                    .filter(|h| h["role"] == "leader")
                    .and_then(|h| h["commitIndex"].as_u64());
                seen = target.map(|t| (current, t));
            }
        }
        let done = h.as_ref().is_some_and(|h| {
            seen.is_some_and(|(l, target)| {
                h["role"] == "follower"
                    && h["leaderId"].as_u64() == Some(l)
                    && h["appliedIndex"].as_u64().is_some_and(|a| a >= target)
            })
        });
        if done {
            return;
        }
        if Instant::now() >= deadline {
            let mut states = String::new();
            for id in group.replicas.keys() {
                let h = health_of(&group.url(*id)).await;
                states.push_str(&format!("replica {id}: {h:?}\n"));
            }
            panic!(
                "replica {r} did not follow the leader ({leader}, then {seen:?}) and apply its commit within 20 s\n{states}{}",
                group.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets `key` through `coordinator` until one write is acknowledged; how long it took.
async fn writable_after(coordinator: &str, key: &str, since: Instant) -> Duration {
    loop {
        if let Ok(mut c) = HttpConn::connect(coordinator).await {
            if c.set(key, "x").await.is_ok_and(|r| r.status == 200) {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "no write went through for 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_is_replaced_and_rejoins() {
    if netns::skip_if_unavailable("an_isolated_leader_is_replaced_and_rejoins") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::new("iso").unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_dir();
    let (mut group, hosts) = group_in(&lab, dir.path());
    let coordinator = group.coordinator(&[]);
    let coord = coordinator.http_addr();
    group.wait_known_by(&coordinator).await;
    let old = group.leader(Duration::from_secs(20)).await;
    let mut c = HttpConn::connect(&coord).await.expect("connect");
    assert_eq!(c.set("before", "1").await.expect("set").status, 200);
    let cut = Instant::now();
    lab.isolate(&hosts[&old]).unwrap_or_else(|e| panic!("{e}"));
    let took = writable_after(&coord, "during", cut).await;
    println!("leader {old} isolated; writes go through again after {took:?}");
    let new = new_leader(&group, old).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.heal().unwrap_or_else(|e| panic!("{e}"));
    converged(&group, old, new).await;
    let mut c = HttpConn::connect(&coord).await.expect("connect");
    for key in ["before", "during"] {
        assert_eq!(c.get(key).await.expect("get").status, 200, "{key}");
    }
    // Everything stops cleanly inside the namespaces too.
    for (_, mut node) in std::mem::take(&mut group.replicas) {
        assert!(node.terminate(Duration::from_secs(15)), "clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_peers_acknowledges_nothing() {
    if netns::skip_if_unavailable("a_leader_cut_off_from_its_peers_acknowledges_nothing") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::new("cut").unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_dir();
    let (group, hosts) = group_in(&lab, dir.path());
    let coordinator = group.coordinator(&[]);
    let coord = coordinator.http_addr();
    group.wait_known_by(&coordinator).await;
    let old = group.leader(Duration::from_secs(20)).await;
    let mut c = HttpConn::connect(&coord).await.expect("connect");
    assert_eq!(c.set("k", "before").await.expect("set").status, 200);
    let peers: Vec<&Host> = hosts
        .iter()
        .filter(|(r, _)| **r != old)
        .map(|(_, h)| h)
        .collect();
    let cut = Instant::now();
    lab.partition(&[&hosts[&old]], &peers)
        .unwrap_or_else(|e| panic!("{e}"));
    // The old leader is still reachable from here, but cannot commit: a write sent to it
    // directly is not acknowledged, and a read is refused (it cannot confirm its leadership).
    let addr = group.url(old).trim_start_matches("http://").to_string();
    let mut direct = HttpConn::connect(&addr)
        .await
        .expect("the old leader answers");
    let write = direct.set("k", "minority").await.expect("an answer");
    assert_ne!(write.status, 200, "the cut-off leader acknowledged a write");
    // Inside its read lease (3/4 of the election timeout after the last acknowledgement, so at
    // most that long after the cut) it may still serve reads: no other leader can exist yet.
    // The write above waited until the leader had heard from no majority for two election
    // timeouts, far longer; the lease is over.
    assert!(
        cut.elapsed() > RaftTiming::default().read_lease(),
        "the write was refused after {:?}, inside the read lease",
        cut.elapsed()
    );
    let read = direct.get("k").await.expect("an answer");
    assert_ne!(
        read.status,
        200,
        "the cut-off leader answered a read: {}",
        read.text()
    );
    // The majority elects a leader; the coordinator follows it.
    let took = writable_after(&coord, "k", cut).await;
    println!("leader {old} cut off from its peers; writes go through again after {took:?}");
    let new = new_leader(&group, old).await;
    lab.heal().unwrap_or_else(|e| panic!("{e}"));
    converged(&group, old, new).await;
    // The write the cut-off leader took was never committed, so it never appears.
    let mut c = HttpConn::connect(&coord).await.expect("connect");
    let r = c.get("k").await.expect("get");
    assert_eq!((r.status, r.text()), (200, "x".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_kills_pauses_and_partitions_are_linearizable() {
    let _serial = SERIAL.lock().await;
    let lab = match netns::available() {
        Ok(()) => Some(Lab::new("lin").unwrap_or_else(|e| panic!("{e}"))),
        Err(why) => {
            assert!(
                std::env::var_os(netns::REQUIRE_ENV).is_none(),
                "{} is set but network namespaces are unavailable: {why}",
                netns::REQUIRE_ENV
            );
            eprintln!(
                "network namespaces are unavailable ({why}): faults are kills and pauses only"
            );
            None
        }
    };
    let dir = temp_dir();
    let (mut group, hosts) = match &lab {
        Some(lab) => group_in(lab, dir.path()),
        None => (Group::start(bin(), dir.path(), 1, 3, &[]), BTreeMap::new()),
    };
    let coordinator = group.coordinator(&[]);
    let coord = coordinator.http_addr();
    group.wait_known_by(&coordinator).await;
    group.leader(Duration::from_secs(20)).await;
    let start = Instant::now();
    let history = Arc::new(Mutex::new(History::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let keys: Vec<String> = (0..3).map(|i| format!("lin-{i}")).collect();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..6 {
        clients.spawn(history_client(
            coord.clone(),
            client,
            keys.clone(),
            start,
            Arc::clone(&history),
            Arc::clone(&stop),
        ));
    }
    let mut faults = Vec::new();
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let leader = group.leader(Duration::from_secs(20)).await;
        let kinds = if lab.is_some() { 4 } else { 2 };
        match round % kinds {
            0 => {
                group.kill(leader);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                group.spawn(leader);
                faults.push(format!("killed leader {leader}"));
            }
            1 => {
                group.replicas[&leader].freeze();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                group.replicas[&leader].signal("CONT");
                faults.push(format!("paused leader {leader}"));
            }
            2 => {
                let lab = lab.as_ref().expect("a lab");
                let peers: Vec<&Host> = hosts
                    .iter()
                    .filter(|(r, _)| **r != leader)
                    .map(|(_, h)| h)
                    .collect();
                lab.partition(&[&hosts[&leader]], &peers)
                    .unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(Duration::from_millis(2000)).await;
                lab.heal().unwrap_or_else(|e| panic!("{e}"));
                faults.push(format!("cut leader {leader} off from its peers"));
            }
            _ => {
                let lab = lab.as_ref().expect("a lab");
                lab.isolate(&hosts[&leader])
                    .unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(Duration::from_millis(2000)).await;
                lab.heal().unwrap_or_else(|e| panic!("{e}"));
                faults.push(format!("isolated leader {leader}"));
            }
        }
    }
    // The clients go on after the last fault healed.
    let healed = ops_recorded(&history);
    more_ops_than(&history, healed + 50, "operations after the last fault").await;
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let history = history.lock().expect("history").clone();
    if let Err(violation) = judge(&history, &format!("faults: {}", faults.join(", "))) {
        panic!("not linearizable:\n{violation:?}\n{}", group.logs());
    }
}
