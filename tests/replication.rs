//! Replicated shards with real processes: a shard's Raft group of three `limedb shard --replica`
//! processes on loopback, a coordinator in front, clients over HTTP, and faults — SIGKILL and
//! SIGSTOP of the leader, a wiped replica, a replica down during a long write run, a dead
//! replica replaced while writes go on — with every acknowledged write checked at the end.
//! (Network partitions and the linearizability check are in `tests/partitions.rs`.)
//!
//! The tests take a process-wide lock so that they run one at a time: failover times are
//! measured, and two groups electing leaders on two cores at once would measure each other.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use limedb_testkit::group::{Group, Placement};
use limedb_testkit::{http, temp_dir, wait_for, HttpConn};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What became of one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Acknowledged (200).
    Acked,
    /// Not acknowledged: it may or may not have been applied.
    Unknown,
}

/// Every write each client tried, per key, in order (one writer per key).
#[derive(Default)]
struct Ledger {
    writes: Mutex<HashMap<String, Vec<(String, Fate)>>>,
    acked: AtomicU64,
    unknown: AtomicU64,
}

impl Ledger {
    fn record(&self, key: &str, value: String, fate: Fate) {
        match fate {
            Fate::Acked => self.acked.fetch_add(1, Ordering::Relaxed),
            Fate::Unknown => self.unknown.fetch_add(1, Ordering::Relaxed),
        };
        self.writes
            .lock()
            .expect("ledger")
            .entry(key.to_string())
            .or_default()
            .push((value, fate));
    }

    /// Whether `found` may be the value of `key` now: the last acknowledged write or any write
    /// tried after it (an older value would be a lost acknowledged write).
    fn allows(&self, key: &str, found: Option<&str>) -> Result<(), String> {
        let writes = self.writes.lock().expect("ledger");
        let Some(tried) = writes.get(key) else {
            return Ok(());
        };
        let last_acked = tried.iter().rposition(|(_, f)| *f == Fate::Acked);
        let allowed: Vec<&str> = match last_acked {
            Some(i) => tried[i..].iter().map(|(v, _)| v.as_str()).collect(),
            None => tried.iter().map(|(v, _)| v.as_str()).collect(),
        };
        match found {
            Some(v) if allowed.contains(&v) => Ok(()),
            None if last_acked.is_none() => Ok(()),
            other => Err(format!(
                "{key} reads {other:?}, but its last acknowledged value is {:?} (later attempts: {:?})",
                last_acked.map(|i| &tried[i].0),
                allowed
            )),
        }
    }
}

/// A client writing its own keys through `coordinator` until `stop`, reading each back after
/// writing it (a read must never go back before an acknowledged write).
async fn client(
    coordinator: String,
    client: usize,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut conn = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("c{client}-k{}", seq % 8);
        let value = format!("c{client}-v{seq}");
        seq += 1;
        if conn.is_none() {
            conn = HttpConn::connect(&coordinator).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            ledger.record(&key, value, Fate::Unknown);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match c.set(&key, &value).await {
            Ok(r) if r.status == 200 => ledger.record(&key, value, Fate::Acked),
            Ok(_) => ledger.record(&key, value, Fate::Unknown),
            Err(_) => {
                ledger.record(&key, value, Fate::Unknown);
                conn = None;
                continue;
            }
        }
        match c.get(&key).await {
            Ok(r) if r.status == 200 => ledger.allows(&key, Some(&r.text()))?,
            Ok(r) if r.status == 404 => ledger.allows(&key, None)?,
            Ok(_) => {}
            Err(_) => conn = None,
        }
    }
    Ok(())
}

/// Reads every key the ledger knows through `coordinator` and checks it.
async fn verify_all(coordinator: &str, ledger: &Ledger) {
    let keys: Vec<String> = ledger
        .writes
        .lock()
        .expect("ledger")
        .keys()
        .cloned()
        .collect();
    let mut conn = HttpConn::connect(coordinator).await.expect("connect");
    for key in keys {
        let r = conn.get(&key).await.expect("get");
        let found = match r.status {
            200 => Some(r.text()),
            404 => None,
            other => panic!("GET {key} answered {other}: {}", r.text()),
        };
        if let Err(e) = ledger.allows(&key, found.as_deref()) {
            panic!("{e}");
        }
    }
}

/// Writes to `key` through `coordinator` every 10 ms until one is acknowledged; the time it
/// took.
async fn time_until_writable(coordinator: &str, key: &str, since: Instant) -> Duration {
    loop {
        if let Ok(mut c) = HttpConn::connect(coordinator).await {
            if let Ok(r) = c.set(key, "probe").await {
                if r.status == 200 {
                    return since.elapsed();
                }
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{key} was not writable 30 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn health_of(url: &str) -> Option<serde_json::Value> {
    let addr = url.trim_start_matches("http://").to_string();
    http::request(&addr, "GET", "/api/v1/health", &[], None)
        .await
        .ok()?
        .json()
}

/// Waits until replica `r` follows a leader and has applied what that leader had committed.
async fn wait_caught_up(group: &Group, r: u64) {
    let leader = group.leader(Duration::from_secs(20)).await;
    let target = health_of(&group.url(leader))
        .await
        .and_then(|h| h["commitIndex"].as_u64())
        .unwrap_or(0);
    let url = group.url(r);
    wait_for(
        Duration::from_secs(30),
        &format!("replica {r} to catch up to {target}"),
        || {
            let url = url.clone();
            async move {
                let h = health_of(&url).await?;
                (h["appliedIndex"].as_u64()? >= target && h["leaderId"].as_u64().is_some())
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_leader_kills_lose_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let mut group = Group::start(bin(), dir.path(), 1, 3, &[]);
    let coordinator = group.coordinator(&[]);
    let coord = coordinator.http_addr();
    group.wait_known_by(&coordinator).await;
    group.leader(Duration::from_secs(20)).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..16 {
        clients.spawn(client(
            coord.clone(),
            c,
            Arc::clone(&ledger),
            Arc::clone(&stop),
        ));
    }
    let mut failovers = Vec::new();
    for round in 1..=20 {
        let leader = group.leader(Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed_at = Instant::now();
        group.kill(leader);
        let survivors: Vec<String> = group.replicas.keys().map(|r| group.url(*r)).collect();
        let elected = tokio::spawn(async move {
            loop {
                for url in &survivors {
                    if health_of(url).await.is_some_and(|h| h["role"] == "leader") {
                        return killed_at.elapsed();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let took = time_until_writable(&coord, "probe", killed_at).await;
        let elected = elected.await.expect("election watch");
        println!(
            "round {round}: killed leader {leader}; a new leader after {elected:?}, writes succeed again after {took:?}"
        );
        failovers.push(took);
        group.spawn(leader);
        wait_caught_up(&group, leader).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.expect("client task")
            .unwrap_or_else(|e| panic!("{e}\n{}", group.logs()));
    }
    verify_all(&coord, &ledger).await;
    let acked = ledger.acked.load(Ordering::Relaxed);
    println!(
        "{acked} writes acknowledged, {} with an unknown outcome; failover max {:?}",
        ledger.unknown.load(Ordering::Relaxed),
        failovers.iter().max()
    );
    assert!(acked > 1000, "only {acked} writes were acknowledged");
    for (round, took) in failovers.iter().enumerate() {
        assert!(
            *took <= Duration::from_secs(2),
            "round {}: writes failed for {took:?} after the kill",
            round + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_steps_down_and_serves_nothing_stale() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let group = Group::start(bin(), dir.path(), 1, 3, &[]);
    let coordinator = group.coordinator(&[]);
    let coord = coordinator.http_addr();
    group.wait_known_by(&coordinator).await;
    let old = group.leader(Duration::from_secs(20)).await;
    let old_url = group.url(old);
    let mut c = HttpConn::connect(&coord).await.expect("connect");
    assert_eq!(c.set("paused", "before").await.expect("set").status, 200);
    let old_term = health_of(&old_url).await.expect("health")["term"].as_u64();
    // Paused for longer than an election takes; the others elect a leader and go on.
    group.replicas[&old].freeze();
    let others: Vec<u64> = group
        .replicas
        .keys()
        .copied()
        .filter(|r| *r != old)
        .collect();
    let new = wait_for(Duration::from_secs(10), "a new leader", || {
        let others = others.clone();
        let group = &group;
        async move {
            for r in others {
                if health_of(&group.url(r)).await?["role"] == "leader" {
                    return Some(r);
                }
            }
            None
        }
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "a write through the new leader",
        || {
            let coord = coord.clone();
            async move {
                let mut c = HttpConn::connect(&coord).await.ok()?;
                (c.set("paused", "after").await.ok()?.status == 200).then_some(())
            }
        },
    )
    .await;
    // Resumed, the old leader still believes it leads until it hears the new term; it must not
    // answer a read (that would be the stale "before") nor acknowledge a write.
    group.replicas[&old].signal("CONT");
    let addr = old_url.trim_start_matches("http://").to_string();
    let mut direct = HttpConn::connect(&addr)
        .await
        .expect("connect to the old leader");
    let read = direct.get("paused").await.expect("get");
    assert_ne!(
        (read.status, read.text()),
        (200, "before".to_string()),
        "the deposed leader served a stale read"
    );
    assert_ne!(
        read.status,
        200,
        "the deposed leader answered a read: {}",
        read.text()
    );
    let write = direct.set("paused", "stale").await.expect("set");
    assert_ne!(write.status, 200, "the deposed leader acknowledged a write");
    let h = wait_for(
        Duration::from_secs(10),
        "the old leader to step down",
        || {
            let url = old_url.clone();
            async move {
                let h = health_of(&url).await?;
                (h["role"] == "follower" && h["leaderId"].as_u64() == Some(new)).then_some(h)
            }
        },
    )
    .await;
    assert!(h["term"].as_u64() > old_term, "the term moved on: {h}");
    let r = c.get("paused").await.expect("get");
    assert_eq!(r.text(), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_replica_rejoins_through_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let mut group = Group::start(
        bin(),
        dir.path(),
        1,
        3,
        &["--raft-snapshot-entries", "20", "--raft-keep-entries", "5"],
    );
    let coordinator = group.coordinator(&[]);
    let coord = coordinator.http_addr();
    group.wait_known_by(&coordinator).await;
    let leader = group.leader(Duration::from_secs(20)).await;
    let mut c = HttpConn::connect(&coord).await.expect("connect");
    for i in 0..400 {
        assert_eq!(
            c.set(&format!("k{i}"), &format!("v{i}"))
                .await
                .expect("set")
                .status,
            200
        );
    }
    let wiped = *group
        .replicas
        .keys()
        .find(|r| **r != leader)
        .expect("a follower");
    group.kill(wiped);
    std::fs::remove_dir_all(group.data_dir(wiped)).expect("wipe");
    group.spawn(wiped);
    wait_caught_up(&group, wiped).await;
    let h = health_of(&group.url(wiped)).await.expect("health");
    assert!(
        h["raft"]["snapshotsReceived"].as_u64() >= Some(1),
        "the wiped replica caught up without a snapshot: {h}"
    );
    // Its copy is complete: make it the leader and read everything through it.
    make_leader(&mut group, wiped).await;
    for i in 0..400 {
        let r = c.get(&format!("k{i}")).await.expect("get");
        assert_eq!((r.status, r.text()), (200, format!("v{i}")), "k{i}");
    }
}

/// Kills leaders other than `r` (restarting each) until `r` leads.
async fn make_leader(group: &mut Group, r: u64) {
    for _ in 0..40 {
        let leader = group.leader(Duration::from_secs(20)).await;
        if leader == r {
            return;
        }
        group.kill(leader);
        let others: Vec<u64> = group.replicas.keys().copied().collect();
        wait_for(Duration::from_secs(10), "a new leader", || {
            let others = others.clone();
            let group = &*group;
            async move {
                for id in others {
                    if health_of(&group.url(id)).await?["role"] == "leader" {
                        return Some(());
                    }
                }
                None
            }
        })
        .await;
        group.spawn(leader);
        wait_caught_up(group, leader).await;
    }
    panic!("replica {r} never became the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_down_during_200k_writes_catches_up_from_the_log() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let mut group = Group::start(bin(), dir.path(), 1, 3, &[]);
    let coordinator = group.coordinator(&["--resp-port", "0"]);
    let resp = coordinator
        .ready
        .get("resp")
        .cloned()
        .expect("resp address");
    group.wait_known_by(&coordinator).await;
    let leader = group.leader(Duration::from_secs(20)).await;
    let down = *group
        .replicas
        .keys()
        .find(|r| **r != leader)
        .expect("a follower");
    group.kill(down);
    let client = redis::Client::open(format!("redis://{resp}/")).expect("client");
    let started = Instant::now();
    let writer = client.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = writer.get_connection().expect("connect");
        for chunk in 0..200 {
            let mut pipe = redis::pipe();
            for i in 0..1000 {
                let n = chunk * 1000 + i;
                pipe.cmd("SET")
                    .arg(format!("key:{n}"))
                    .arg(format!("value-{n}"))
                    .ignore();
            }
            let () = pipe.query(&mut conn).expect("pipeline of SETs");
        }
    })
    .await
    .expect("writer");
    println!(
        "200k writes with replica {down} down took {:?}",
        started.elapsed()
    );
    group.spawn(down);
    wait_caught_up(&group, down).await;
    let h = health_of(&group.url(down)).await.expect("health");
    assert_eq!(
        h["raft"]["snapshotsReceived"].as_u64(),
        Some(0),
        "replica {down} should have caught up from the log: {h}"
    );
    make_leader(&mut group, down).await;
    tokio::task::spawn_blocking(move || {
        let mut conn = client.get_connection().expect("connect");
        for chunk in 0..200 {
            let keys: Vec<String> = (0..1000)
                .map(|i| format!("key:{}", chunk * 1000 + i))
                .collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query(&mut conn)
                .expect("mget");
            for (i, v) in values.into_iter().enumerate() {
                let n = chunk * 1000 + i;
                assert_eq!(v, Some(format!("value-{n}")), "key:{n}");
            }
        }
    })
    .await
    .expect("reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replica_is_replaced_while_writes_run() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let mut group = Group::start(bin(), dir.path(), 1, 3, &[]);
    let coordinator = group.coordinator(&[]);
    let coord = coordinator.http_addr();
    group.wait_known_by(&coordinator).await;
    let leader = group.leader(Duration::from_secs(20)).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8 {
        clients.spawn(client(
            coord.clone(),
            c,
            Arc::clone(&ledger),
            Arc::clone(&stop),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = *group
        .replicas
        .keys()
        .find(|r| **r != leader)
        .expect("a follower");
    group.kill(dead);
    // A fresh replica 4: started with the group's members and itself, empty data directory.
    group.place(4, Placement::loopback());
    group.spawn(4);
    let coord_url = format!("http://{coord}");
    let admin = move |args: Vec<String>| {
        let out = std::process::Command::new(bin())
            .arg("admin")
            .arg("--coordinator")
            .arg(&coord_url)
            .args(args)
            .output()
            .expect("admin runs");
        assert!(
            out.status.success(),
            "admin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url4 = group.url(4);
    let out = tokio::task::spawn_blocking(move || {
        admin(
            [
                "replace-replica",
                "--shard",
                "1",
                "--old",
                &dead.to_string(),
                "--replica",
                "4",
                "--url",
                &url4,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )
    })
    .await
    .expect("admin task");
    println!("{out}");
    group.forget(dead);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.expect("client task")
            .unwrap_or_else(|e| panic!("{e}\n{}", group.logs()));
    }
    verify_all(&coord, &ledger).await;
    let h = health_of(&group.url(4)).await.expect("health");
    let members: Vec<u64> = h["raft"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["replicaId"].as_u64())
        .collect();
    let mut want: Vec<u64> = group.placements.keys().copied().collect();
    want.sort_unstable();
    assert_eq!(members, want, "{h}");
    wait_caught_up(&group, 4).await;
    // Replica 4 holds everything: make it lead and read every key through it.
    make_leader(&mut group, 4).await;
    verify_all(&coord, &ledger).await;
    assert!(ledger.acked.load(Ordering::Relaxed) > 100);
}

/// Runs `limedb args...`, which must refuse to start; returns its stderr.
fn refuses_to_start(args: &[String]) -> String {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("limedb runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started:\n{stderr}");
    stderr
}

/// A replica restarted with a `--peers` list that disagrees with the membership its data
/// directory stores, or pointed at the data directory of another shard or replica, or at a
/// single-copy shard's data, refuses to start and says why, leaving the data untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_a_wrong_peers_list_or_someone_elses_data() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let mut group = Group::start(bin(), dir.path(), 1, 3, &[]);
    let coordinator = group.coordinator(&[]);
    group.wait_known_by(&coordinator).await;
    let mut c = HttpConn::connect(&coordinator.http_addr())
        .await
        .expect("connect");
    assert_eq!(c.set("kept", "yes").await.expect("set").status, 200);
    let leader = group.leader(Duration::from_secs(20)).await;
    let stopped = *group
        .replicas
        .keys()
        .find(|r| **r != leader)
        .expect("a follower");
    group.kill(stopped);
    let data = group.data_dir(stopped).display().to_string();
    let port = group.placements[&stopped].port.to_string();
    let base = |shard: &str, replica: &str, peers: &str, data: &str| -> Vec<String> {
        [
            "shard",
            "--id",
            shard,
            "--replica",
            replica,
            "--peers",
            peers,
            "--port",
            &port,
            "--internal-port",
            "0",
            "--data-dir",
            data,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // --peers naming another address for a member.
    let other = (1..=3u64).find(|r| *r != stopped).expect("another member");
    let wrong_peers = group
        .peers_arg()
        .replace(&group.url(other), "http://127.0.0.1:1");
    let err = refuses_to_start(&base("1", &stopped.to_string(), &wrong_peers, &data));
    assert!(
        err.contains("disagrees with the group's membership"),
        "{err}"
    );
    // The data directory of shard 1's replica, started as shard 2 or as another replica.
    let err = refuses_to_start(&base("2", &stopped.to_string(), &group.peers_arg(), &data));
    assert!(
        err.contains(&format!("holds the data of shard 1 replica {stopped}")),
        "{err}"
    );
    // A single-copy shard's data directory.
    let single = dir.path().join("single");
    std::fs::create_dir_all(&single).expect("mkdir");
    let mut s = limedb_testkit::start_shard(bin(), &single, 7, "0", &[]);
    assert!(s.terminate(Duration::from_secs(10)));
    let err = refuses_to_start(&base(
        "7",
        "1",
        &format!("1=http://127.0.0.1:{port}"),
        &single.join("shard-7").display().to_string(),
    ));
    assert!(err.contains("a shard started without --peers"), "{err}");

    // Restarted as it was, it rejoins with its data.
    group.spawn(stopped);
    make_leader(&mut group, stopped).await;
    let r = c.get("kept").await.expect("get");
    assert_eq!((r.status, r.text()), (200, "yes".to_string()));
}
