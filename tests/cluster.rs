//! Cluster behaviour with real processes on 127.0.0.1: routing of 10k keys, restarts of every
//! process, a shard killed with SIGKILL and brought back.

use std::path::Path;
use std::time::{Duration, Instant};

use limedb_cluster::{Ring, ShardId, DEFAULT_VNODES_PER_SHARD};
use limedb_testkit::{wait_for, Cluster, HttpConn};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

/// Writes `keys` through the coordinator with `parallel` keep-alive connections.
async fn write_all(addr: &str, keys: &[String], parallel: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(parallel).max(1)) {
        let chunk = chunk.to_vec();
        let addr = addr.to_string();
        tasks.spawn(async move {
            let mut conn = HttpConn::connect(&addr).await.expect("connect");
            for key in chunk {
                let r = conn
                    .set(&key, &format!("value-of-{key}"))
                    .await
                    .expect("set");
                assert_eq!((r.status, r.text()), (200, "OK".to_string()), "set {key}");
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.expect("writer task");
    }
}

/// Reads `keys` back through `addr` and asserts each holds its value.
async fn read_all(addr: &str, keys: &[String], parallel: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(parallel).max(1)) {
        let chunk = chunk.to_vec();
        let addr = addr.to_string();
        tasks.spawn(async move {
            let mut conn = HttpConn::connect(&addr).await.expect("connect");
            for key in chunk {
                let r = conn.get(&key).await.expect("get");
                assert_eq!(r.status, 200, "get {key}: {}", r.text());
                assert_eq!(r.text(), format!("value-of-{key}"));
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.expect("reader task");
    }
}

/// Waits (at most 15 s) until `key` reads back 200 through `addr`.
async fn wait_until_readable(addr: &str, key: &str) {
    wait_for(
        Duration::from_secs(15),
        &format!("{key} readable again"),
        || async {
            let mut c = HttpConn::connect(addr).await.ok()?;
            (c.get(key).await.ok()?.status == 200).then_some(())
        },
    )
    .await;
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_route_to_exactly_one_shard_each() {
    let cluster = Cluster::start(bin(), 3, &[], &[]).await;
    let all = keys("route", 10_000);
    write_all(&cluster.addr(), &all, 16).await;
    read_all(&cluster.addr(), &all, 16).await;

    // Ask every shard directly: each key is on exactly one, the one the ring names.
    let ring = Ring::new(
        &[ShardId(1), ShardId(2), ShardId(3)],
        DEFAULT_VNODES_PER_SHARD,
    )
    .expect("ring");
    let mut per_shard = [0usize; 3];
    let mut conns = Vec::new();
    for shard in &cluster.shards {
        conns.push(
            HttpConn::connect(&shard.http_addr())
                .await
                .expect("connect shard"),
        );
    }
    for key in &all {
        let mut holders = Vec::new();
        for (i, conn) in conns.iter_mut().enumerate() {
            let r = conn.get(key).await.expect("get from shard");
            match r.status {
                200 => holders.push(i + 1),
                404 => {}
                other => panic!("shard {} answered {other} for {key}", i + 1),
            }
        }
        assert_eq!(holders.len(), 1, "{key} is on shards {holders:?}");
        assert_eq!(
            ShardId(holders[0] as u32),
            ring.shard_for_key(key.as_bytes()),
            "{key}"
        );
        per_shard[holders[0] - 1] += 1;
    }
    for (i, count) in per_shard.iter().enumerate() {
        // Every shard owns roughly a third; at least a fifth proves the spread is real.
        assert!(
            *count > 2_000,
            "shard {} holds only {count} keys: {per_shard:?}",
            i + 1
        );
    }
    // Each shard's own key listing agrees, and the coordinator's total is the sum.
    for (i, conn) in conns.iter_mut().enumerate() {
        let r = conn
            .request("GET", "/api/v1/keys?page=1&pageSize=1", &[], None)
            .await
            .expect("keys");
        assert_eq!(r.json().expect("json")["total"], per_shard[i] as u64);
    }
    let r = HttpConn::connect(&cluster.addr())
        .await
        .expect("connect")
        .request("GET", "/api/v1/keys?page=1&pageSize=100", &[], None)
        .await
        .expect("keys");
    let doc = r.json().expect("json");
    assert_eq!(doc["total"], 10_000);
    assert_eq!(doc["totalPages"], 100);
    assert_eq!(doc["keys"].as_array().map(Vec::len), Some(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_restarted_keeps_all_data_memory() {
    every_process_restarted_keeps_all_data("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_restarted_keeps_all_data_lsm() {
    every_process_restarted_keeps_all_data("lsm").await;
}

async fn every_process_restarted_keeps_all_data(storage: &str) {
    let mut cluster = Cluster::start(bin(), 3, &["--storage", storage], &[]).await;
    let clean = keys("clean", 1_000);
    write_all(&cluster.addr(), &clean, 8).await;

    // A clean stop (SIGTERM) of every process, then a restart on the same ports and data.
    assert!(
        cluster.coordinator.terminate(Duration::from_secs(15)),
        "coordinator exits 0 on SIGTERM"
    );
    for shard in &mut cluster.shards {
        assert!(
            shard.terminate(Duration::from_secs(15)),
            "shard exits 0 on SIGTERM"
        );
    }
    for id in 1..=3 {
        cluster.restart_shard(id);
    }
    cluster.restart_coordinator();
    cluster.wait_all_up().await;
    read_all(&cluster.addr(), &clean, 8).await;

    // SIGKILL right after the acknowledgements: every acknowledged write is still there.
    let crashed = keys("crash", 1_000);
    write_all(&cluster.addr(), &crashed, 8).await;
    for id in 1..=3 {
        cluster.restart_shard(id); // kill -9, then start again
    }
    cluster.restart_coordinator();
    cluster.wait_all_up().await;
    read_all(&cluster.addr(), &clean, 8).await;
    read_all(&cluster.addr(), &crashed, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shard_fails_fast_and_comes_back_by_itself() {
    let mut cluster = Cluster::start(bin(), 3, &[], &["--shard-timeout-ms", "2000"]).await;
    let ring = Ring::new(
        &[ShardId(1), ShardId(2), ShardId(3)],
        DEFAULT_VNODES_PER_SHARD,
    )
    .expect("ring");
    let all = keys("kill", 300);
    write_all(&cluster.addr(), &all, 4).await;
    let (on_two, elsewhere): (Vec<String>, Vec<String>) = all
        .iter()
        .cloned()
        .partition(|k| ring.shard_for_key(k.as_bytes()) == ShardId(2));
    assert!(!on_two.is_empty() && !elsewhere.is_empty());

    cluster.shards[1].kill9();
    let mut conn = HttpConn::connect(&cluster.addr()).await.expect("connect");
    for key in on_two.iter().take(20) {
        let started = Instant::now();
        let r = conn.get(key).await.expect("get");
        let elapsed = started.elapsed();
        assert_eq!(r.status, 503, "{key}: {}", r.text());
        let doc = r.json().expect("json error");
        assert_eq!(doc["error"], "shard_unavailable");
        assert!(
            doc["message"].as_str().unwrap_or("").contains("shard 2"),
            "{doc}"
        );
        assert!(
            elapsed < Duration::from_millis(2_500),
            "503 took {elapsed:?}"
        );
    }
    read_all(&cluster.addr(), &elsewhere, 2).await;
    let health = conn
        .request("GET", "/api/v1/health", &[], None)
        .await
        .expect("health");
    let doc = health.json().expect("json");
    assert_eq!(doc["status"], "degraded");
    assert_eq!(doc["healthyShards"], 2);

    // Start it again on the same port: the coordinator finds it without being told.
    cluster.restart_shard(2);
    wait_until_readable(&cluster.addr(), &on_two[0]).await;
    read_all(&cluster.addr(), &all, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_shard_times_out_instead_of_hanging() {
    let cluster = Cluster::start(bin(), 3, &[], &["--shard-timeout-ms", "1000"]).await;
    let ring = Ring::new(
        &[ShardId(1), ShardId(2), ShardId(3)],
        DEFAULT_VNODES_PER_SHARD,
    )
    .expect("ring");
    let all = keys("frozen", 200);
    write_all(&cluster.addr(), &all, 4).await;
    let on_three = all
        .iter()
        .find(|k| ring.shard_for_key(k.as_bytes()) == ShardId(3))
        .expect("a key on shard 3")
        .clone();
    let elsewhere: Vec<String> = all
        .iter()
        .filter(|k| ring.shard_for_key(k.as_bytes()) != ShardId(3))
        .cloned()
        .collect();

    // SIGSTOP: the shard's sockets stay open but nothing answers.
    cluster.shards[2].freeze();
    let mut conn = HttpConn::connect(&cluster.addr()).await.expect("connect");
    let started = Instant::now();
    let r = conn.get(&on_three).await.expect("get");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("shard 3"), "{}", r.text());
    assert!(
        elapsed < Duration::from_millis(1_500),
        "answered after {elapsed:?}"
    );
    read_all(&cluster.addr(), &elsewhere, 2).await;

    // Thawed, it is used again without help.
    cluster.shards[2].signal("CONT");
    wait_until_readable(&cluster.addr(), &on_three).await;
    read_all(&cluster.addr(), &all, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_shutdown_answers_what_is_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let mut cluster = Cluster::start(bin(), 3, &[], &[]).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let addr = cluster.addr();
        let acked = Arc::clone(&acked);
        let answered = Arc::clone(&answered);
        writers.spawn(async move {
            let mut statuses = Vec::new();
            let Ok(mut conn) = HttpConn::connect(&addr).await else {
                return statuses;
            };
            for i in 0.. {
                let key = format!("inflight-{w}-{i}");
                // A closed connection ends this writer; an answer is recorded.
                let Ok(r) = conn.set(&key, &format!("value-of-{key}")).await else {
                    break;
                };
                statuses.push(r.status);
                answered.fetch_add(1, Ordering::Relaxed);
                if r.status == 200 {
                    acked.lock().expect("lock").push(key);
                }
            }
            statuses
        });
    }
    let counter = Arc::clone(&answered);
    wait_for(Duration::from_secs(20), "writes flowing", || {
        let counter = Arc::clone(&counter);
        async move { (counter.load(Ordering::Relaxed) > 2_000).then_some(()) }
    })
    .await;
    assert!(
        cluster.coordinator.terminate(Duration::from_secs(15)),
        "clean exit"
    );
    let mut statuses = Vec::new();
    while let Some(t) = writers.join_next().await {
        statuses.extend(t.expect("writer"));
    }
    let refused = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        refused, 0,
        "every request the coordinator answered during shutdown succeeded"
    );

    cluster.restart_coordinator();
    cluster.wait_all_up().await;
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 2_000);
    read_all(&cluster.addr(), &acked, 8).await;
}
