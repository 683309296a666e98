//! The cluster map with real processes: a map group of three `limedb meta` replicas, shards,
//! and several coordinators started with `--meta`. The first coordinator creates the map from
//! its `--shards`; later ones learn it from any member and route identically; one whose
//! `--shards` disagrees refuses to start and names the difference; the map survives the loss of
//! the map group's leader; changes are compare-and-set on the epoch.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use limedb_cluster::{ClusterMap, Group as MapGroup, ShardId};
use limedb_testkit::group::Group;
use limedb_testkit::{http, start_shard, temp_dir, wait_for, Node};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

/// One test at a time: each runs up to nine processes, and elections on two loaded cores
/// would otherwise change leaders under the tests' feet.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts a coordinator and waits until it reaches every shard it knows.
async fn coordinator(dir: &Path, name: &str, args: &[&str]) -> Node {
    let mut all = vec!["coordinator", "--port", "0"];
    all.extend_from_slice(args);
    let node = Node::spawn(bin(), &all, &dir.join(format!("{name}.log")))
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = node.http_addr();
    wait_for(
        Duration::from_secs(20),
        "the coordinator to reach every shard",
        || {
            let addr = addr.clone();
            async move {
                let doc = http::request(&addr, "GET", "/api/v1/health", &[], None)
                    .await
                    .ok()?
                    .json()?;
                let known = doc["shardCount"].as_u64().filter(|&n| n > 0)?;
                (doc["healthyShards"].as_u64() == Some(known)).then_some(())
            }
        },
    )
    .await;
    node
}

/// Runs a coordinator that is expected to refuse to start; returns its stderr.
fn refused(args: &[&str]) -> String {
    let mut all = vec!["coordinator", "--port", "0"];
    all.extend_from_slice(args);
    let mut child = Command::new(bin())
        .args(&all)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coordinator");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            assert!(!status.success(), "the coordinator {all:?} started");
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the coordinator {all:?} neither refused nor stopped within 40 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let r = http::request(addr, "GET", path, &[], None)
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    (r.status, r.json().unwrap_or_default())
}

async fn post_json(addr: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let body = body.to_string();
    let r = http::request(
        addr,
        "POST",
        path,
        body.as_bytes(),
        Some("application/json"),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {addr}{path}: {e}"));
    (r.status, r.json().unwrap_or_default())
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// A Redis connection to `resp_addr` (a coordinator's RESP address).
fn redis_conn(resp_addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{resp_addr}/"))
        .expect("client")
        .get_connection()
        .expect("connect")
}

/// Writes `key-<i>` = `v<i>` for every `i` below `total` over RESP, 500 keys per MSET.
fn mset_keys(redis: &mut redis::Connection, total: usize) {
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let mut mset = redis::cmd("MSET");
        for i in chunk {
            mset.arg(format!("key-{i}")).arg(format!("v{i}"));
        }
        let () = mset.query(redis).expect("mset");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_share_one_map_and_a_disagreeing_one_refuses_to_start() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let mut meta = Group::start_meta(bin(), dir.path(), 3);
    meta.leader(Duration::from_secs(20)).await;
    let shards: Vec<Node> = (1..=3)
        .map(|id| start_shard(bin(), dir.path(), id, "0", &[]))
        .collect();
    let shard_list = shards
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}={}", i + 1, s.url()))
        .collect::<Vec<_>>()
        .join(",");

    // Without a map and without --shards there is nothing to route by.
    let err = refused(&["--meta", &meta.url(1)]);
    assert!(err.contains("holds no map yet"), "{err}");

    // The first coordinator creates the map from its --shards; it is given one member only.
    let a = coordinator(
        dir.path(),
        "a",
        &["--meta", &meta.url(2), "--shards", &shard_list],
    )
    .await;
    let leader = meta.leader(Duration::from_secs(10)).await;
    let (status, doc) = get_json(&host_port(&meta.url(leader)), "/api/v1/meta/map").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["epoch"], 1);
    let map: ClusterMap = serde_json::from_value(doc["map"].clone()).expect("a map");
    for (i, s) in shards.iter().enumerate() {
        let group = &map.groups()[&ShardId(i as u32 + 1)];
        assert_eq!(group.replicas.values().collect::<Vec<_>>(), vec![&s.url()]);
    }

    let mut conn = limedb_testkit::HttpConn::connect(&a.http_addr())
        .await
        .expect("connect a");
    for i in 0..300 {
        let r = conn
            .set(&format!("key-{i}"), &format!("v{i}"))
            .await
            .expect("set");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // A second coordinator with no --shards learns the map and routes every key alike.
    let b = coordinator(dir.path(), "b", &["--meta", &meta.url(3)]).await;
    let (_, state) = get_json(&b.http_addr(), "/api/v1/cluster/state").await;
    assert_eq!(state["ringEpoch"], 1, "{state}");
    assert_eq!(state["routing"], "clusterMap");
    let (_, a_state) = get_json(&a.http_addr(), "/api/v1/cluster/state").await;
    assert_eq!(a_state["ringEpoch"], 1);
    let mut conn_b = limedb_testkit::HttpConn::connect(&b.http_addr())
        .await
        .expect("connect b");
    for i in 0..300 {
        let r = conn_b.get(&format!("key-{i}")).await.expect("get");
        assert_eq!(r.status, 200, "key-{i} through b: {}", r.text());
        assert_eq!(r.text(), format!("v{i}"));
    }
    // Each coordinator shows the map it routes by.
    let (status, b_map) = get_json(&b.http_addr(), "/api/v1/meta/map").await;
    assert_eq!(status, 200);
    assert_eq!(b_map["map"], doc["map"]);

    // A fourth shard on the command line would hide keys: refused, naming it.
    let four = format!("{shard_list},4=http://127.0.0.1:1");
    let err = refused(&["--meta", &meta.url(1), "--shards", &four]);
    assert!(
        err.contains("shard 4") && err.contains("not in the cluster map"),
        "{err}"
    );
    // So is a shard id pointed at another shard's address.
    let swapped = format!(
        "1={},2={},3={}",
        shards[0].url(),
        shards[2].url(),
        shards[1].url()
    );
    let err = refused(&["--meta", &meta.url(1), "--shards", &swapped]);
    assert!(
        err.contains("shard 2") && err.contains(&shards[2].url()),
        "{err}"
    );
    // Agreeing --shards are fine.
    let c = coordinator(
        dir.path(),
        "c",
        &["--meta", &meta.url(1), "--shards", &shard_list],
    )
    .await;

    // The map outlives its group's leader.
    meta.kill(leader);
    let survivor = if leader == 1 { 2 } else { 1 };
    let d = coordinator(dir.path(), "d", &["--meta", &meta.url(survivor)]).await;
    let mut conn_d = limedb_testkit::HttpConn::connect(&d.http_addr())
        .await
        .expect("connect d");
    for i in (0..300).step_by(7) {
        let r = conn_d.get(&format!("key-{i}")).await.expect("get");
        assert_eq!(r.text(), format!("v{i}"), "key-{i} through d");
    }
    drop((a, b, c, d, shards));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_changes_only_by_compare_and_set_on_its_version() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let meta = Group::start_meta(bin(), dir.path(), 3);
    let leader = meta.leader(Duration::from_secs(20)).await;
    let leader_addr = host_port(&meta.url(leader));
    let follower = (1..=3).find(|r| *r != leader).expect("a follower");

    let groups: BTreeMap<ShardId, MapGroup> = (1..=3u32)
        .map(|s| {
            (
                ShardId(s),
                MapGroup {
                    replicas: BTreeMap::from([(1, format!("http://127.0.0.1:{}", 7000 + s))]),
                },
            )
        })
        .collect();
    let first = ClusterMap::bootstrap(groups, 32).expect("map");
    let mut grown = first.clone();
    grown
        .add_shard(
            ShardId(4),
            MapGroup {
                replicas: BTreeMap::from([(1, "http://127.0.0.1:7004".to_string())]),
            },
        )
        .expect("add");
    let mut shrunk = first.clone();
    shrunk.remove_shard(ShardId(3)).expect("remove");
    assert_eq!((grown.epoch(), shrunk.epoch()), (2, 2));

    let (status, _) = get_json(&leader_addr, "/api/v1/meta/map").await;
    assert_eq!(status, 404, "no map before the first one is stored");
    let create = serde_json::json!({ "expectedVersion": null, "map": first });
    let (status, doc) = post_json(&leader_addr, "/api/v1/meta/map", &create).await;
    assert_eq!(
        (status, &doc["epoch"]),
        (200, &serde_json::json!(1)),
        "{doc}"
    );
    let (status, doc) = post_json(&leader_addr, "/api/v1/meta/map", &create).await;
    assert_eq!(status, 409, "{doc}");
    assert_eq!(doc["current"]["routing"]["epoch"], 1);

    // An epoch must grow.
    let same = serde_json::json!({ "expectedVersion": 1, "map": first });
    let (status, doc) = post_json(&leader_addr, "/api/v1/meta/map", &same).await;
    assert_eq!(status, 400, "{doc}");

    // Two changes from the same epoch, at once: exactly one wins.
    let a = serde_json::json!({ "expectedVersion": 1, "map": grown });
    let b = serde_json::json!({ "expectedVersion": 1, "map": shrunk });
    let (ra, rb) = tokio::join!(
        post_json(&leader_addr, "/api/v1/meta/map", &a),
        post_json(&leader_addr, "/api/v1/meta/map", &b)
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{ra:?} {rb:?}");
    let winner = if ra.0 == 200 { &grown } else { &shrunk };
    let (_, doc) = get_json(&leader_addr, "/api/v1/meta/map").await;
    let stored: ClusterMap = serde_json::from_value(doc["map"].clone()).expect("map");
    assert_eq!(&stored, winner);

    // A follower refuses and names the leader (once it has heard from one: on a loaded
    // machine an election may be under way); a garbled map is refused; keys are not served.
    let follower_addr = host_port(&meta.url(follower));
    let named = wait_for(
        Duration::from_secs(20),
        "the follower to name a leader",
        || {
            let follower_addr = follower_addr.clone();
            let a = a.clone();
            async move {
                let (status, doc) = post_json(&follower_addr, "/api/v1/meta/map", &a).await;
                assert_ne!(status, 200, "a follower stored a map: {doc}");
                doc["leader"].as_str().map(str::to_string)
            }
        },
    )
    .await;
    assert!(
        (1..=3).any(|r| r != follower && meta.url(r) == named),
        "{named} is not another member"
    );
    let garbled = serde_json::json!({ "expectedVersion": 2, "map": { "routing": 7 } });
    let (status, doc) = post_json(&leader_addr, "/api/v1/meta/map", &garbled).await;
    assert_eq!(status, 400, "{doc}");
    let r = http::request(&leader_addr, "GET", "/api/v1/get/k", &[], None)
        .await
        .expect("get");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("cluster-map group"), "{}", r.text());
}

async fn put_json(addr: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let body = body.to_string();
    let r = http::request(addr, "PUT", path, body.as_bytes(), Some("application/json"))
        .await
        .unwrap_or_else(|e| panic!("PUT {addr}{path}: {e}"));
    (r.status, r.json().unwrap_or_default())
}

/// A shard's ownership record decides which keys it serves: the others are refused with
/// `WrongShard` (421 over HTTP), from the moment the record is committed, on whichever replica
/// leads; a record older than the one held is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_serves_only_the_keys_its_ownership_record_gives_it() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let mut group = Group::start(bin(), dir.path(), 1, 3, &[]);
    let leader = group.leader(Duration::from_secs(20)).await;
    let urls: BTreeMap<u64, String> = (1..=3).map(|r| (r, host_port(&group.url(r)))).collect();
    let addr = |r: u64| urls[&r].clone();

    // Without a record a shard serves every key, as before.
    let (status, doc) = get_json(&addr(leader), "/api/v1/admin/ownership").await;
    assert_eq!(
        (status, &doc["routing"]),
        (200, &serde_json::Value::Null),
        "{doc}"
    );
    let routing = limedb_cluster::Routing::new(&[ShardId(1), ShardId(2)], 16).expect("routing");
    let (mine, theirs): (Vec<String>, Vec<String>) = (0..400)
        .map(|i| format!("key-{i}"))
        .partition(|k| routing.owner_of_key(k.as_bytes()) == ShardId(1));
    let mut conn = limedb_testkit::HttpConn::connect(&addr(leader))
        .await
        .expect("connect");
    for k in mine.iter().chain(&theirs).take(50) {
        let r = conn.set(k, "before").await.expect("set");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Writers keep writing keys the record is about to give away while it is set.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let keys: Vec<String> = theirs.iter().skip(w).step_by(4).cloned().collect();
        let target = addr(leader);
        let stop = std::sync::Arc::clone(&stop);
        let written = std::sync::Arc::clone(&written);
        writers.push(tokio::spawn(async move {
            let mut conn = limedb_testkit::HttpConn::connect(&target)
                .await
                .expect("connect");
            // (sent at, status) of every write.
            let mut outcomes = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                i += 1;
                let sent = Instant::now();
                match conn.set(key, &format!("w{i}")).await {
                    Ok(r) => outcomes.push((sent, r.status)),
                    Err(_) => break,
                }
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            outcomes
        }));
    }
    let writes_past = |n: usize, what: &'static str| {
        let written = std::sync::Arc::clone(&written);
        wait_for(Duration::from_secs(30), what, move || {
            let m = written.load(std::sync::atomic::Ordering::Relaxed);
            async move { (m > n).then_some(m) }
        })
    };
    writes_past(40, "writes before the record").await;
    let (status, doc) = put_json(
        &addr(leader),
        "/api/v1/admin/ownership",
        &serde_json::to_value(&routing).expect("json"),
    )
    .await;
    let committed = Instant::now();
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["epoch"], 1);
    let at_commit = written.load(std::sync::atomic::Ordering::Relaxed);
    writes_past(at_commit + 40, "writes after the record").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut before = 0;
    for writer in writers {
        for (sent, status) in writer.await.expect("writer") {
            if sent > committed {
                // 421 from the leader (503 if an election on the loaded machine deposed it).
                assert_ne!(
                    status, 200,
                    "a write sent after the record was acknowledged"
                );
            } else if status == 200 {
                before += 1;
            }
        }
    }
    assert!(before > 0, "the writers wrote before the record");

    // Refused keys name the owner and the epoch; owned keys are served.
    let r = conn.get(&theirs[0]).await.expect("get");
    assert_eq!(r.status, 421, "{}", r.text());
    let doc = r.json().expect("json");
    assert_eq!(
        (
            doc["error"].as_str(),
            doc["ringEpoch"].as_u64(),
            doc["owner"].as_u64()
        ),
        (Some("wrong_shard"), Some(1), Some(2))
    );
    assert_eq!(conn.set(&mine[0], "after").await.expect("set").status, 200);

    // Through a coordinator that routes every key here, a refused key is a clear 503.
    let coordinator = group.coordinator(&[]);
    group.wait_known_by(&coordinator).await;
    let r = http::request(
        &coordinator.http_addr(),
        "GET",
        &format!("/api/v1/get/{}", theirs[1]),
        &[],
        None,
    )
    .await
    .expect("get");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("no longer owns"), "{}", r.text());

    // An older record is refused; the same one again is fine.
    let older = limedb_cluster::Routing::new(&[ShardId(1), ShardId(3)], 16).expect("routing");
    let (status, _) = put_json(
        &addr(leader),
        "/api/v1/admin/ownership",
        &serde_json::to_value(&older).expect("json"),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = put_json(
        &addr(leader),
        "/api/v1/admin/ownership",
        &serde_json::to_value(&routing).expect("json"),
    )
    .await;
    assert_eq!(status, 200);

    // The record outlives its leader.
    group.kill(leader);
    let next = group.leader(Duration::from_secs(20)).await;
    let mut conn = limedb_testkit::HttpConn::connect(&addr(next))
        .await
        .expect("connect");
    let r = conn.get(&theirs[2]).await.expect("get");
    assert_eq!(r.status, 421, "{}", r.text());
    let r = conn.get(&mine[0]).await.expect("get");
    assert_eq!((r.status, r.text()), (200, "after".to_string()));
    drop(coordinator);
}

/// A map group of three and shard groups 1, 2, ... with `replicas[i]` replicas each, every
/// group with a leader.
async fn start_cluster(dir: &Path, replicas: &[u64]) -> (Group, Vec<Group>) {
    let meta = Group::start_meta(bin(), dir, 3);
    let groups: Vec<Group> = replicas
        .iter()
        .zip(1u32..)
        .map(|(&n, s)| Group::start(bin(), dir, s, n, &[]))
        .collect();
    for g in &groups {
        g.leader(Duration::from_secs(20)).await;
    }
    meta.leader(Duration::from_secs(20)).await;
    (meta, groups)
}

/// A coordinator given every member of the map group and `--shards` naming `groups` (which
/// creates the map on a new cluster).
async fn first_coordinator(dir: &Path, name: &str, meta: &Group, groups: &[Group]) -> Node {
    let shards = shards_arg(groups);
    coordinator(
        dir,
        name,
        &["--meta", &meta.urls_arg(), "--shards", &shards],
    )
    .await
}

/// Coordinator "c" with `--meta meta`, `--shards shards` and a RESP listener.
async fn resp_coordinator(dir: &Path, meta: &str, shards: &str) -> Node {
    coordinator(
        dir,
        "c",
        &["--meta", meta, "--shards", shards, "--resp-port", "0"],
    )
    .await
}

/// `--shards` naming replica 1 of each of `groups`.
fn shards_arg(groups: &[Group]) -> String {
    groups
        .iter()
        .map(|g| format!("{}={}", g.shard, g.url(1)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `key-<i>` = `v<i>` for every `i` below `total`.
async fn load(conn: &mut limedb_testkit::HttpConn, total: usize) {
    for i in 0..total {
        let r = conn
            .set(&format!("key-{i}"), &format!("v{i}"))
            .await
            .expect("set");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Waits for the move in progress to finish, failing with the driver's report after 60 s.
async fn wait_move_done(coordinator: &Node) {
    let addr = coordinator.http_addr();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, doc) = get_json(&addr, "/api/v1/admin/moves").await;
        if status == 200 && doc["moving"].is_null() {
            return;
        }
        assert!(Instant::now() < deadline, "the move did not finish: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Live keys a shard holds (its key listing's total: exact, unlike the health figure).
async fn keys_held(group: &Group) -> u64 {
    let leader = group.leader(Duration::from_secs(20)).await;
    let (_, doc) = get_json(
        &host_port(&group.url(leader)),
        "/api/v1/keys?page=1&pageSize=1",
    )
    .await;
    doc["total"].as_u64().expect("a key count")
}

/// Clients of the 3 → 4 → 3 test that write new keys, and that overwrite and delete keys.
const WRITERS: usize = 8;
const UPDATERS: usize = 8;
/// Keys each updater overwrites and deletes.
const UPDATED_PER_CLIENT: usize = 50;

/// A client writing keys `<prefix><n>` = `l<n>` through coordinator `addr` until `stop`: the
/// `n` acknowledged, and the failures (it gives up after 20).
async fn write_new_keys(
    addr: String,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> (Vec<usize>, Vec<(usize, u16, String)>) {
    let mut conn = limedb_testkit::HttpConn::connect(&addr)
        .await
        .expect("connect");
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && failed.len() < 20 {
        match conn.set(&format!("{prefix}{n}"), &format!("l{n}")).await {
            Ok(r) if r.status == 200 => acked.push(n),
            Ok(r) => failed.push((n, r.status, r.text())),
            Err(e) => {
                failed.push((n, 0, e));
                break;
            }
        }
        n += 1;
    }
    (acked, failed)
}

/// Pass `round` of an updater over key `key` (its `j`-th): a delete one time in five, else a
/// set to `u<j>-<round>`; the answer, and the key's state if the answer acknowledges it.
async fn update_once(
    conn: &mut limedb_testkit::HttpConn,
    key: &str,
    j: usize,
    round: usize,
) -> Result<(limedb_testkit::HttpResponse, Option<String>), String> {
    if (round * 7 + j).is_multiple_of(5) {
        conn.del(key).await.map(|r| (r, None))
    } else {
        let value = format!("u{j}-{round}");
        conn.set(key, &value).await.map(|r| (r, Some(value)))
    }
}

/// A client going over keys `<prefix><j>` (j below [`UPDATED_PER_CLIENT`]) through coordinator
/// `addr` until `stop`, setting each to `u<j>-<pass>` or deleting it, counting its passes: the
/// last acknowledged state of each key (`Some(None)`: deleted; `None`: its last request
/// failed, so it is left out of the check), and the failures (it gives up after 20).
#[allow(clippy::type_complexity)]
async fn update_keys(
    addr: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicU64>,
) -> (Vec<Option<Option<String>>>, Vec<(String, u16, String)>) {
    let mut conn = limedb_testkit::HttpConn::connect(&addr)
        .await
        .expect("connect");
    let mut expected: Vec<Option<Option<String>>> = (0..UPDATED_PER_CLIENT)
        .map(|j| Some(Some(format!("u{j}-0"))))
        .collect();
    let mut failures = Vec::new();
    let mut round = 1;
    while !stop.load(Ordering::Relaxed) && failures.len() < 20 {
        for (j, slot) in expected.iter_mut().enumerate() {
            let key = format!("{prefix}{j}");
            *slot = match update_once(&mut conn, &key, j, round).await {
                Ok((r, state)) if r.status == 200 || r.status == 404 => Some(state),
                Ok((r, _)) => {
                    failures.push((key, r.status, r.text()));
                    None
                }
                Err(e) => {
                    failures.push((key, 0, e));
                    None
                }
            };
        }
        round += 1;
        passes.fetch_add(1, Ordering::Relaxed);
    }
    (expected, failures)
}

/// 3 → 4 → 3 shards while sixteen clients write through two coordinators (eight write new
/// keys, eight overwrite and delete existing ones): the driver on the map group copies the ranges while
/// they are served, forwards the changes made meanwhile, and cuts each transfer over (a short
/// fence the coordinator rides out by following the map); no request fails; every acknowledged
/// write (and delete) is what reads find afterwards through either coordinator, over HTTP and
/// RESP, and every key is stored by exactly one shard (the shards' key counts add up to the live
/// keys: the sources hold none of what they gave away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_is_added_and_removed_online_and_the_keys_follow() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let (meta, groups) = start_cluster(dir.path(), &[1, 1, 1, 1]).await;
    let shards = shards_arg(&groups[..3]);
    let c = resp_coordinator(dir.path(), &meta.url(1), &shards).await;
    let mut conn = limedb_testkit::HttpConn::connect(&c.http_addr())
        .await
        .expect("connect");
    let total = 3000;
    load(&mut conn, total).await;
    // Large values too: a page of a transfer holds whole values, so these outgrow its 1 MiB.
    let big = |i: usize| format!("{i:08}").repeat(131_072);
    for i in 0..60 {
        let r = conn.set(&format!("big-{i}"), &big(i)).await.expect("set");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Keys that half of the clients overwrite and delete during the moves: their ranges are
    // copied while they change, so only the catch-up brings the last state across.
    for u in 0..UPDATERS {
        for j in 0..UPDATED_PER_CLIENT {
            let r = conn
                .set(&format!("upd{u}-{j}"), &format!("u{j}-0"))
                .await
                .expect("set");
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let total_keys = total + 60;

    // Sixteen clients through two coordinators: half write new keys, half overwrite and
    // delete the keys above.
    let d = coordinator(
        dir.path(),
        "d",
        &["--meta", &meta.url(2), "--resp-port", "0"],
    )
    .await;
    let through = |i: usize| [&c, &d][i % 2].http_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let passes: Vec<Arc<AtomicU64>> = (0..UPDATERS).map(|_| Arc::default()).collect();
    let updaters: Vec<_> = (0..UPDATERS)
        .map(|u| {
            tokio::spawn(update_keys(
                through(u),
                format!("upd{u}-"),
                Arc::clone(&stop),
                Arc::clone(&passes[u]),
            ))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(write_new_keys(
                through(w + 1),
                format!("live{w}-"),
                Arc::clone(&stop),
            ))
        })
        .collect();

    let add = serde_json::json!({ "shardId": 4, "replicas": { "1": groups[3].url(1) } });
    let (status, doc) = post_json(&c.http_addr(), "/api/v1/admin/shards", &add).await;
    assert_eq!(status, 202, "{doc}");
    wait_move_done(&c).await;
    let leader = meta.leader(Duration::from_secs(20)).await;
    let (_, state) = get_json(&host_port(&meta.url(leader)), "/api/v1/meta/map").await;
    let map: ClusterMap = serde_json::from_value(state["map"].clone()).expect("map");
    assert_eq!(map.groups().len(), 4);
    assert_eq!(map.routing().base().shards().len(), 4);
    // The move's figures: the driver's report, and /metrics on the coordinator and the driver.
    let (_, moves) = get_json(&c.http_addr(), "/api/v1/admin/moves").await;
    let cut_over = moves["driver"]["longestCutOverMs"]
        .as_u64()
        .expect("the longest cut-over is reported");
    assert!(cut_over < 10_000, "{moves}");
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not in /metrics"))
    };
    // The coordinator learns the final map within its refresh period.
    let text = limedb_testkit::wait_for(
        Duration::from_secs(10),
        "the coordinator's metrics to show the final ring epoch",
        || {
            let addr = c.http_addr();
            let epoch = map.epoch();
            async move {
                let text = limedb_testkit::http::request(&addr, "GET", "/metrics", &[], None)
                    .await
                    .ok()?
                    .text();
                (metric(&text, "limedb_cluster_ring_epoch") as u64 == epoch).then_some(text)
            }
        },
    )
    .await;
    assert_eq!(metric(&text, "limedb_move_in_progress"), 0.0);
    let text =
        limedb_testkit::http::request(&host_port(&meta.url(leader)), "GET", "/metrics", &[], None)
            .await
            .expect("metrics")
            .text();
    assert_eq!(
        metric(&text, "limedb_move_longest_cut_over_ms") as u64,
        cut_over
    );
    assert!(
        metric(&text, "limedb_move_catch_up_keys") > 0.0,
        "the updates during the copies were caught up: {moves}"
    );
    // Over RESP, one MGET across every shard, the new one included.
    let resp_addr = c.ready.get("resp").expect("resp address").clone();
    let mut redis = redis_conn(&resp_addr);
    let keys: Vec<String> = (0..total).map(|i| format!("key-{i}")).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut redis)
        .expect("mget");
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "key-{i}");
    }

    // Removal through the command line, which waits for the move.
    let coordinator_url = format!("http://{}", c.http_addr());
    let admin = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(&args)
                .output()
                .expect("limedb admin runs")
        })
    };
    let out = admin(vec![
        "admin".into(),
        "--coordinator".into(),
        coordinator_url.clone(),
        "remove-shard".into(),
        "2".into(),
    ])
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("finished"), "{text}");
    let out = admin(vec![
        "admin".into(),
        "--coordinator".into(),
        coordinator_url,
        "status".into(),
    ])
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("no move in progress"), "{text}");
    // Each updater has gone over its keys at least twice by now (most passes ran during the
    // moves; the catch-up figures above show that some changes were forwarded).
    wait_for(
        Duration::from_secs(30),
        "two passes of every updater",
        || {
            let done = passes.iter().all(|p| p.load(Ordering::Relaxed) >= 2);
            async move { done.then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for (w, writer) in writers.into_iter().enumerate() {
        let (acked, failed) = writer.await.expect("writer");
        assert!(
            failed.is_empty(),
            "writes of client {w} failed during the moves: {:?}",
            &failed[..failed.len().min(5)]
        );
        assert!(
            acked.len() > 10,
            "writer {w} wrote during the moves ({})",
            acked.len()
        );
        written.extend(
            acked
                .into_iter()
                .map(|n| (format!("live{w}-{n}"), format!("l{n}"))),
        );
    }
    let mut updated = Vec::new();
    for (u, updater) in updaters.into_iter().enumerate() {
        let (expected, failures) = updater.await.expect("updater");
        assert!(
            failures.is_empty(),
            "updates of client {u} failed during the moves: {:?}",
            &failures[..failures.len().min(5)]
        );
        updated.extend(
            expected
                .into_iter()
                .enumerate()
                .filter_map(|(j, state)| Some((format!("upd{u}-{j}"), state?))),
        );
    }

    // Every acknowledged write and delete is what reads find, through either coordinator.
    let (keys, wanted): (Vec<String>, Vec<Option<String>>) = (0..total)
        .map(|i| (format!("key-{i}"), Some(format!("v{i}"))))
        .chain(written.iter().map(|(k, v)| (k.clone(), Some(v.clone()))))
        .chain(updated.iter().cloned())
        .unzip();
    for node in [&c, &d] {
        let mut redis = redis_conn(node.ready.get("resp").expect("resp address"));
        for (keys, wanted) in keys.chunks(500).zip(wanted.chunks(500)) {
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(keys)
                .query(&mut redis)
                .expect("mget");
            for ((key, want), got) in keys.iter().zip(wanted).zip(&values) {
                assert_eq!(got, want, "{key} through {}", node.http_addr());
            }
        }
        let mut conn = limedb_testkit::HttpConn::connect(&node.http_addr())
            .await
            .expect("connect");
        for i in 0..60 {
            let r = conn.get(&format!("big-{i}")).await.expect("get");
            assert!(r.status == 200 && r.text() == big(i), "big-{i}");
        }
    }
    let live_updated = updated.iter().filter(|(_, state)| state.is_some()).count();
    // Each key is stored once: the remaining shards hold exactly the keys written, shard 2 none.
    let mut held = 0;
    for (i, g) in groups.iter().enumerate() {
        let n = keys_held(g).await;
        if i == 1 {
            assert_eq!(n, 0, "the removed shard gave every key away");
        }
        held += n;
    }
    assert_eq!(held, (total_keys + written.len() + live_updated) as u64);
    drop((c, d));
}

/// The coordinator that started a move is killed (SIGKILL) and another takes its place; the map
/// group's leader is killed while it drives the move, twice: at the start and once a transfer
/// has finished. The next leader finds each transfer's phase in the map and
/// carries the move to its end; no key is lost or left on two shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_the_death_of_the_map_group_leader() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let (mut meta, groups) = start_cluster(dir.path(), &[1, 1, 1, 1]).await;
    // Given every member, so that it reaches the map group whichever replica is down.
    let c = first_coordinator(dir.path(), "c", &meta, &groups[..3]).await;
    let mut conn = limedb_testkit::HttpConn::connect(&c.http_addr())
        .await
        .expect("connect");
    // 5000 small keys and 400 values of 256 KiB: each transfer copies megabytes, long enough
    // for the move to be caught between two transfers below.
    let total = 5000;
    load(&mut conn, total).await;
    let big = "x".repeat(256 << 10);
    for i in 0..400 {
        let r = conn.set(&format!("big-{i}"), &big).await.expect("set");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let add = serde_json::json!({ "shardId": 4, "replicas": { "1": groups[3].url(1) } });
    let (status, doc) = post_json(&c.http_addr(), "/api/v1/admin/shards", &add).await;
    assert_eq!(status, 202, "{doc}");
    // The coordinator that started the move dies (SIGKILL) at once; another one, given only
    // the map group, follows the move and serves the keys.
    drop(conn);
    drop(c);
    let c = coordinator(dir.path(), "d", &["--meta", &meta.urls_arg()]).await;
    let mut conn = limedb_testkit::HttpConn::connect(&c.http_addr())
        .await
        .expect("connect");

    // Kill the driver right away, bring the replica back, and kill the next driver once a
    // transfer has finished.
    let first = meta.leader(Duration::from_secs(20)).await;
    meta.kill(first);
    meta.spawn(first);
    let one_done = wait_for(Duration::from_secs(60), "a transfer to finish", || {
        let addr = c.http_addr();
        async move {
            let (_, doc) = get_json(&addr, "/api/v1/admin/moves").await;
            if doc["moving"].is_null() {
                return Some(false);
            }
            let done = doc["moving"]["transfers"]
                .as_array()?
                .iter()
                .any(|t| t["phase"] == "done");
            done.then_some(true)
        }
    })
    .await;
    assert!(one_done, "the move finished before the second kill");
    let second = meta.leader(Duration::from_secs(20)).await;
    meta.kill(second);
    wait_move_done(&c).await;

    let mut held = 0;
    for g in &groups {
        held += keys_held(g).await;
    }
    assert_eq!(held, total as u64 + 400, "every key stored exactly once");
    for i in (0..total).step_by(7) {
        let r = conn.get(&format!("key-{i}")).await.expect("get");
        assert_eq!((r.status, r.text()), (200, format!("v{i}")), "key-{i}");
    }
    let (_, doc) = get_json(&c.http_addr(), "/api/v1/admin/moves").await;
    assert!(doc["driver"]["lastError"].is_null(), "{doc}");
}

/// Reads and writes of unique values on a few keys through two coordinators while a shard is
/// added (the map group's leader killed during it) and another removed: the history, with every
/// operation's invoke and completion time and outcome, is linearizable per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_across_moves_are_linearizable() {
    use limedb_testkit::history::{history_client, judge, more_ops_than, ops_recorded};
    use limedb_testkit::linearizability::History;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let (mut meta, groups) = start_cluster(dir.path(), &[1, 1, 1, 1]).await;
    let a = first_coordinator(dir.path(), "a", &meta, &groups[..3]).await;
    let b = coordinator(dir.path(), "b", &["--meta", &meta.urls_arg()]).await;
    // Keys that move in both moves as well as keys that stay.
    let keys: Vec<String> = (0..24).map(|i| format!("hist-{i}")).collect();
    let ring = |ids: &[u32]| {
        limedb_cluster::Ring::new(&ids.iter().map(|&i| ShardId(i)).collect::<Vec<_>>(), 128)
            .expect("ring")
    };
    let (three, four, after) = (ring(&[1, 2, 3]), ring(&[1, 2, 3, 4]), ring(&[2, 3, 4]));
    let moved = |from: &limedb_cluster::Ring, to: &limedb_cluster::Ring| {
        keys.iter()
            .filter(|k| from.shard_for_key(k.as_bytes()) != to.shard_for_key(k.as_bytes()))
            .count()
    };
    let (moved_by_add, moved_by_remove) = (moved(&three, &four), moved(&four, &after));
    println!("keys moved: {moved_by_add} by the addition, {moved_by_remove} by the removal");
    assert!(moved_by_add > 0 && moved_by_remove > 0);
    let history = Arc::new(Mutex::new(History::new()));
    for k in &keys {
        history
            .lock()
            .expect("history")
            .set_initial(k.clone(), None);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..6u64 {
        let coordinator = if client % 2 == 0 {
            a.http_addr()
        } else {
            b.http_addr()
        };
        clients.spawn(history_client(
            coordinator,
            client,
            keys.clone(),
            start,
            Arc::clone(&history),
            Arc::clone(&stop),
        ));
    }
    more_ops_than(&history, 50, "operations before the first move").await;
    let add = serde_json::json!({ "shardId": 4, "replicas": { "1": groups[3].url(1) } });
    let (status, doc) = post_json(&a.http_addr(), "/api/v1/admin/shards", &add).await;
    assert_eq!(status, 202, "{doc}");
    // The move's driver is killed once the move has moved on from its first phase.
    wait_for(
        Duration::from_secs(30),
        "the move to get past preparing",
        || {
            let addr = a.http_addr();
            async move {
                let (_, doc) = get_json(&addr, "/api/v1/admin/moves").await;
                let started = doc["moving"].is_null()
                    || doc["moving"]["transfers"]
                        .as_array()?
                        .iter()
                        .any(|t| t["phase"] != "prepare");
                started.then_some(())
            }
        },
    )
    .await;
    let leader = meta.leader(Duration::from_secs(20)).await;
    meta.kill(leader);
    meta.spawn(leader);
    wait_move_done(&a).await;
    let r = http::request(
        &b.http_addr(),
        "DELETE",
        "/api/v1/admin/shards/1",
        &[],
        None,
    )
    .await
    .expect("delete");
    assert_eq!(r.status, 202, "{}", r.text());
    wait_move_done(&b).await;
    let done = ops_recorded(&history);
    more_ops_than(&history, done + 50, "operations after the moves").await;
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}

    let history = history.lock().expect("history").clone();
    if let Err(violation) = judge(&history, "across an addition and a removal") {
        panic!("not linearizable:\n{violation:?}");
    }
    drop((a, b));
}

/// Shards that are groups of three: while a shard is added, the leaders of a source and of the
/// destination are killed (SIGKILL) and restarted; the driver carries on with the new leaders,
/// and every key is readable and stored once when the move ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_the_death_of_source_and_destination_leaders() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let (meta, mut groups) = start_cluster(dir.path(), &[3, 1, 1, 3]).await;
    let c = first_coordinator(dir.path(), "c", &meta, &groups[..3]).await;
    let mut conn = limedb_testkit::HttpConn::connect(&c.http_addr())
        .await
        .expect("connect");
    let total = 12_000;
    load(&mut conn, total).await;
    let peers: serde_json::Map<String, serde_json::Value> = (1..=3u64)
        .map(|r| (r.to_string(), groups[3].url(r).into()))
        .collect();
    let add = serde_json::json!({ "shardId": 4, "replicas": peers });
    let (status, doc) = post_json(&c.http_addr(), "/api/v1/admin/shards", &add).await;
    assert_eq!(status, 202, "{doc}");
    // Kill shard 1's leader while its transfer is under way, then shard 4's.
    for target in [0usize, 3] {
        let leader = groups[target].leader(Duration::from_secs(20)).await;
        groups[target].kill(leader);
        tokio::time::sleep(Duration::from_millis(300)).await;
        groups[target].spawn(leader);
    }
    wait_move_done(&c).await;
    let mut held = 0;
    for g in &groups {
        held += keys_held(g).await;
    }
    assert_eq!(held, total as u64, "every key stored exactly once");
    for i in (0..total).step_by(11) {
        let r = conn.get(&format!("key-{i}")).await.expect("get");
        assert_eq!((r.status, r.text()), (200, format!("v{i}")), "key-{i}");
    }
}

/// Full scans started and finished by [`scan_until`].
#[derive(Debug, Default)]
struct ScanProgress {
    started: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl ScanProgress {
    /// Waits until a full scan is under way; returns its number.
    async fn scanning(self: &std::sync::Arc<Self>) -> u64 {
        let progress = std::sync::Arc::clone(self);
        wait_for(Duration::from_secs(60), "a scan under way", move || {
            let progress = std::sync::Arc::clone(&progress);
            async move {
                let started = progress.started.load(std::sync::atomic::Ordering::SeqCst);
                let done = progress.done.load(std::sync::atomic::Ordering::SeqCst);
                (started > done).then_some(started)
            }
        })
        .await
    }

    /// Waits until scan number `n` (and every one before) has finished.
    async fn finished(self: &std::sync::Arc<Self>, n: u64) {
        let progress = std::sync::Arc::clone(self);
        wait_for(Duration::from_secs(60), "a scan to finish", move || {
            let progress = std::sync::Arc::clone(&progress);
            async move {
                (progress.done.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(())
            }
        })
        .await;
    }
}

/// What a client scanning the keyspace again and again saw.
#[derive(Debug, Default)]
struct ScanRecord {
    /// Full `SCAN`s completed, and `KEYS` calls answered.
    scans: u64,
    keys_calls: u64,
    /// Rounds of MGET, MSET and DEL across shards.
    multi_key_rounds: u64,
    /// What went wrong: a key missing from a scan, a key listed twice by `KEYS`, an error.
    problems: Vec<String>,
}

/// Scans `key-0` .. `key-{total}` through `resp_addr` until `stop`: every full `SCAN` (COUNT
/// 20) must return all of them, every `KEYS key-*` each of them exactly once; and MGET of 200
/// of them, MSET of 100 new keys and DEL of those, across shards, must succeed.
fn scan_until(
    resp_addr: &str,
    total: usize,
    stop: &std::sync::atomic::AtomicBool,
    progress: &ScanProgress,
) -> ScanRecord {
    let mut redis = redis_conn(resp_addr);
    let mut record = ScanRecord::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && record.problems.len() < 10 {
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0u64;
        progress
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        loop {
            let answer: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("key-*")
                .arg("COUNT")
                .arg(20)
                .query(&mut redis);
            match answer {
                Ok((next, keys)) => {
                    seen.extend(keys);
                    cursor = next;
                }
                Err(e) => {
                    record.problems.push(format!("SCAN: {e}"));
                    break;
                }
            }
            if cursor == 0 {
                let missing: Vec<usize> = (0..total)
                    .filter(|i| !seen.contains(&format!("key-{i}")))
                    .collect();
                if !missing.is_empty() {
                    record.problems.push(format!(
                        "a scan missed {} keys, e.g. key-{}",
                        missing.len(),
                        missing[0]
                    ));
                }
                record.scans += 1;
                progress
                    .done
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                break;
            }
        }
        match redis::cmd("KEYS")
            .arg("key-*")
            .query::<Vec<String>>(&mut redis)
        {
            Ok(keys) => {
                let unique: std::collections::HashSet<&String> = keys.iter().collect();
                if keys.len() != total || unique.len() != total {
                    record.problems.push(format!(
                        "KEYS listed {} keys ({} distinct), not {total}",
                        keys.len(),
                        unique.len()
                    ));
                }
                record.keys_calls += 1;
            }
            Err(e) => record.problems.push(format!("KEYS: {e}")),
        }
        // Multi-key commands across shards: split by shard, and routed again for a part
        // whose keys moved meanwhile.
        let round = record.scans + record.keys_calls;
        let window: Vec<usize> = (0..200)
            .map(|j| (round as usize * 37 + j * 13) % total)
            .collect();
        let names: Vec<String> = window.iter().map(|i| format!("key-{i}")).collect();
        match redis::cmd("MGET")
            .arg(&names)
            .query::<Vec<Option<String>>>(&mut redis)
        {
            Ok(values) => {
                for (i, v) in window.iter().zip(values) {
                    if v.as_deref() != Some(format!("v{i}").as_str()) {
                        record.problems.push(format!("MGET key-{i}: {v:?}"));
                    }
                }
            }
            Err(e) => record.problems.push(format!("MGET: {e}")),
        }
        let written: Vec<(String, String)> = (0..100)
            .map(|j| (format!("m-{round}-{j}"), format!("x{j}")))
            .collect();
        if let Err(e) = redis::cmd("MSET").arg(&written).query::<()>(&mut redis) {
            record.problems.push(format!("MSET: {e}"));
        }
        let names: Vec<&String> = written.iter().map(|(k, _)| k).collect();
        match redis::cmd("DEL").arg(&names).query::<usize>(&mut redis) {
            Ok(100) => {}
            Ok(n) => record
                .problems
                .push(format!("DEL removed {n} of 100 keys just set")),
            Err(e) => record.problems.push(format!("DEL: {e}")),
        }
        record.multi_key_rounds += 1;
    }
    record
}

/// SCAN and KEYS through a coordinator while a shard is added and another removed, with a
/// client writing meanwhile: the keys of a moving range sit in two engines between their copy
/// and the source's clean-up, and in neither shard's served set for a moment at the cut-over,
/// yet every full SCAN returns every key that existed throughout (Redis's promise), KEYS
/// lists each key exactly once, and MGET, MSET and DEL across shards answer without errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_and_multi_key_commands_stay_correct_while_ranges_move() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let (meta, groups) = start_cluster(dir.path(), &[1, 1, 1, 1]).await;
    let shards = shards_arg(&groups[..3]);
    let c = resp_coordinator(dir.path(), &meta.url(1), &shards).await;
    let mut conn = limedb_testkit::HttpConn::connect(&c.http_addr())
        .await
        .expect("connect");
    let total = 4000;
    load(&mut conn, total).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(ScanProgress::default());
    let scanner = {
        let resp_addr = c.ready.get("resp").expect("resp address").clone();
        let stop = std::sync::Arc::clone(&stop);
        let progress = std::sync::Arc::clone(&progress);
        tokio::task::spawn_blocking(move || scan_until(&resp_addr, total, &stop, &progress))
    };
    // Writes keep the moves' catch-ups busy (other keys than the scanned ones).
    let writer = {
        let addr = c.http_addr();
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut conn = limedb_testkit::HttpConn::connect(&addr)
                .await
                .expect("connect");
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = conn.set(&format!("w-{n}"), "x").await.expect("set");
                assert_eq!(r.status, 200, "{}", r.text());
                n += 1;
            }
            n
        })
    };
    // Each move starts while a full scan is under way, which must still find every key.
    let overlapping = progress.scanning().await;
    let add = serde_json::json!({ "shardId": 4, "replicas": { "1": groups[3].url(1) } });
    let (status, doc) = post_json(&c.http_addr(), "/api/v1/admin/shards", &add).await;
    assert_eq!(status, 202, "{doc}");
    wait_move_done(&c).await;
    progress.finished(overlapping).await;
    let overlapping = progress.scanning().await;
    let r = http::request(
        &c.http_addr(),
        "DELETE",
        "/api/v1/admin/shards/2",
        &[],
        None,
    )
    .await
    .expect("remove shard 2");
    assert_eq!(r.status, 202, "{}", r.text());
    wait_move_done(&c).await;
    progress.finished(overlapping).await;
    // And one full scan on the final ring.
    let last = progress.scanning().await;
    progress.finished(last + 1).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let record = scanner.await.expect("scanner");
    let written = writer.await.expect("writer");
    assert!(record.problems.is_empty(), "{record:?}");
    assert!(record.keys_calls >= 2, "{record:?}");
    assert!(written > 0);
    // The removed shard's group is no longer asked: DBSIZE counts the remaining shards.
    let resp_addr = c.ready.get("resp").expect("resp address").clone();
    let mut redis = redis_conn(&resp_addr);
    let size: u64 = redis::cmd("DBSIZE").query(&mut redis).expect("dbsize");
    assert_eq!(size, total as u64 + written);
}

/// Who a fault during a move hits.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The leader of the transfer's source group.
    Source,
    /// The leader of the transfer's destination group.
    Destination,
    /// The leader of the map group, which drives the move.
    MapLeader,
}

/// Reads the map group's leader's map, remembering which replica leads.
struct MapReader {
    leader: Option<u64>,
}

/// A transfer of the move in progress: source, destination, phase.
type TransferView = (ShardId, ShardId, limedb_cluster::Phase);

impl MapReader {
    /// The transfers of the move in progress (empty once none is); `None` if the map group
    /// did not answer.
    async fn transfers(&mut self, meta: &Group) -> Option<Vec<TransferView>> {
        // Every member is tried, the last leader first: one restarted in the background may
        // lead without being among the group's running replicas yet.
        let last = self.leader.take();
        let order = last.into_iter().chain((1..=3).filter(|r| Some(*r) != last));
        for r in order {
            let answer = tokio::time::timeout(
                Duration::from_millis(500),
                http::request(
                    &host_port(&meta.url(r)),
                    "GET",
                    "/api/v1/meta/map",
                    &[],
                    None,
                ),
            )
            .await;
            let Ok(Ok(answer)) = answer else { continue };
            if answer.status != 200 {
                continue;
            }
            let map: ClusterMap = serde_json::from_value(answer.json()?["map"].clone()).ok()?;
            self.leader = Some(r);
            return Some(map.moving().map_or_else(Vec::new, |m| {
                m.transfers
                    .iter()
                    .map(|t| (t.from, t.to, t.phase))
                    .collect()
            }));
        }
        None
    }
}

/// A transfer in `phase` (`Done` once no move is in progress); `None` while none is.
fn transfer_in(transfers: &[TransferView], phase: limedb_cluster::Phase) -> Option<TransferView> {
    if transfers.is_empty() {
        return Some((ShardId(0), ShardId(0), limedb_cluster::Phase::Done));
    }
    transfers.iter().find(|(_, _, p)| *p == phase).copied()
}

/// A removal (shard 2 of three groups of three replicas gives its ranges to 1 and 3) with a
/// fault planned in every phase of each of its two transfers: the leader of the source, of the
/// destination or of the map group is killed (SIGKILL) and started again. For a shard leader,
/// the map group is frozen (SIGSTOP) from the moment the phase is seen until the leader is
/// dead, so the move is still in that phase when it dies. Meanwhile one client writes new keys
/// and another overwrites and deletes keys of the moving ranges. The move ends by itself; every
/// acknowledged write reads back, no acknowledged delete is undone, and each key is stored by
/// exactly one group (shard 2 holds none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_survives_a_fault_in_every_phase() {
    use limedb_cluster::Phase;
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let (mut meta, mut groups) = start_cluster(dir.path(), &[3, 3, 3]).await;
    let shards = shards_arg(&groups);
    let c = resp_coordinator(dir.path(), &meta.urls_arg(), &shards).await;
    let resp_addr = c.ready.get("resp").expect("resp address").clone();
    let total = 60_000;
    mset_keys(&mut redis_conn(&resp_addr), total);
    let updated = 300;
    let mut conn = limedb_testkit::HttpConn::connect(&c.http_addr())
        .await
        .expect("connect");
    for j in 0..updated {
        let r = conn
            .set(&format!("upd-{j}"), &format!("u{j}-0"))
            .await
            .expect("set");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Overwrites and deletes; the last acknowledged state of each key (`None` inside: deleted),
    // or `None` when its last request's outcome is unknown (a leader died under it).
    let updater = {
        let addr = c.http_addr();
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut conn = limedb_testkit::HttpConn::connect(&addr)
                .await
                .expect("connect");
            let mut expected: Vec<Option<Option<String>>> = (0..updated)
                .map(|j| Some(Some(format!("u{j}-0"))))
                .collect();
            let mut round = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (j, slot) in expected.iter_mut().enumerate() {
                    let key = format!("upd-{j}");
                    *slot = match update_once(&mut conn, &key, j, round).await {
                        Ok((r, state)) if r.status == 200 || r.status == 404 => Some(state),
                        Ok(_) => None,
                        Err(_) => {
                            let Ok(c) = limedb_testkit::HttpConn::connect(&addr).await else {
                                return expected;
                            };
                            conn = c;
                            None
                        }
                    };
                }
                round += 1;
            }
            expected
        })
    };
    let writer = {
        let addr = c.http_addr();
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut conn = limedb_testkit::HttpConn::connect(&addr)
                .await
                .expect("connect");
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match conn.set(&format!("live-{n}"), &format!("l{n}")).await {
                    Ok(r) if r.status == 200 => acked.push(n),
                    Ok(_) => {}
                    Err(_) => {
                        let Ok(c) = limedb_testkit::HttpConn::connect(&addr).await else {
                            break;
                        };
                        conn = c;
                    }
                }
                n += 1;
            }
            acked
        })
    };

    let r = http::request(
        &c.http_addr(),
        "DELETE",
        "/api/v1/admin/shards/2",
        &[],
        None,
    )
    .await
    .expect("remove shard 2");
    assert_eq!(r.status, 202, "{}", r.text());
    // One transfer is copied and cut over at a time (which one goes first depends on the
    // faults); the other's copy runs beside the first one's clean-up. The cut-over itself is
    // the end of the catch-up phase in the map (the destination's grant and the phase after it
    // are one compare-and-set). Each fault waits for some transfer in its phase.
    let plan = [
        (Phase::Prepare, Victim::Destination),
        (Phase::Copy, Victim::Source),
        (Phase::CatchUp, Victim::MapLeader),
        (Phase::CleanUp, Victim::Source),
        (Phase::Copy, Victim::Destination),
        (Phase::CatchUp, Victim::Source),
        (Phase::CleanUp, Victim::MapLeader),
    ];
    let mut hit = Vec::new();
    let mut reader = MapReader { leader: None };
    let mut restarting: Vec<(Option<usize>, u64, std::thread::JoinHandle<Node>)> = Vec::new();
    for (planned, victim) in plan {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (from, to, phase) = loop {
            if let Some(transfers) = reader.transfers(&meta).await {
                if let Some(found) = transfer_in(&transfers, planned) {
                    break found;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no transfer reached {planned:?} (faults so far: {hit:?})"
            );
        };
        assert_ne!(
            phase,
            Phase::Done,
            "the move ended before a transfer was seen in {planned:?}: {hit:?}"
        );
        // The map group stays frozen from the moment the phase was seen until a shard leader
        // is dead; victims start again in the background while the move goes on.
        let group_index = |shard: ShardId| shard.0 as usize - 1;
        // A group never has two replicas down: its last victim is back before the next fault.
        let target = match victim {
            Victim::MapLeader => None,
            Victim::Source => Some(group_index(from)),
            Victim::Destination => Some(group_index(to)),
        };
        let (back, still) = restarting.into_iter().partition(|(g, _, _)| *g == target);
        restarting = still;
        for (group, r, handle) in back {
            let node: Node = tokio::task::spawn_blocking(move || handle.join().expect("restarted"))
                .await
                .expect("join");
            match group {
                Some(g) => groups[g].adopt(r, node),
                None => meta.adopt(r, node),
            }
        }
        match victim {
            Victim::MapLeader => {
                let leader = meta.leader(Duration::from_secs(20)).await;
                meta.kill(leader);
                restarting.push((None, leader, meta.spawn_in_background(leader)));
            }
            Victim::Source | Victim::Destination => {
                let shard = if matches!(victim, Victim::Source) {
                    from
                } else {
                    to
                };
                let running = meta.running();
                for &r in &running {
                    meta.freeze(r);
                }
                let g = &mut groups[group_index(shard)];
                let leader = g.leader(Duration::from_secs(20)).await;
                g.kill(leader);
                for &r in &running {
                    meta.thaw(r);
                }
                let handle = g.spawn_in_background(leader);
                restarting.push((Some(group_index(shard)), leader, handle));
            }
        }
        hit.push(format!(
            "transfer {from} → {to}: {victim:?} killed in {phase:?}"
        ));
    }
    for (group, r, handle) in restarting {
        let node = tokio::task::spawn_blocking(move || handle.join().expect("restarted"))
            .await
            .expect("join");
        match group {
            Some(g) => groups[g].adopt(r, node),
            None => meta.adopt(r, node),
        }
    }
    wait_move_done(&c).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let expected = updater.await.expect("updater");
    let acked = writer.await.expect("writer");
    eprintln!("faults: {hit:#?}");
    assert!(!acked.is_empty(), "the writer wrote during the move");

    let mut conn = limedb_testkit::HttpConn::connect(&c.http_addr())
        .await
        .expect("connect");
    for i in (0..total).step_by(7) {
        let r = conn.get(&format!("key-{i}")).await.expect("get");
        assert_eq!((r.status, r.text()), (200, format!("v{i}")), "key-{i}");
    }
    for &n in &acked {
        let r = conn.get(&format!("live-{n}")).await.expect("get");
        assert_eq!((r.status, r.text()), (200, format!("l{n}")), "live-{n}");
    }
    for (j, state) in expected.iter().enumerate() {
        let Some(state) = state else { continue };
        let r = conn.get(&format!("upd-{j}")).await.expect("get");
        match state {
            Some(value) => assert_eq!((r.status, r.text()), (200, value.clone()), "upd-{j}"),
            None => assert_eq!(r.status, 404, "upd-{j} was deleted: {}", r.text()),
        }
    }
    // Each key once: shard 2 gave everything away, and 1 and 3 hold the live keys between
    // them. Writes whose outcome was unknown may or may not have happened: count the keys.
    assert_eq!(keys_held(&groups[1]).await, 0, "shard 2 holds no key");
    let held = keys_held(&groups[0]).await + keys_held(&groups[2]).await;
    let mut redis = redis_conn(&resp_addr);
    let listed: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis).expect("keys");
    assert_eq!(held, listed.len() as u64, "no key is stored by two groups");
    drop(meta);
}

/// An addition whose new shard dies for good during its copy is cancelled with `limedb admin
/// cancel-move`: a source that had fenced its ranges for a cut-over (here fenced by hand, with
/// the record the driver writes) serves them again, the new group leaves the map, and every
/// key stays readable and writable where it was. Cancelling is refused once a range was handed
/// over (the map's unit tests) and for a move that is not in progress. Then the shard is added
/// again as a new group at another address, and its share of the keys moves to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_new_shard_dies_is_cancelled_and_the_keys_stay() {
    use limedb_cluster::Phase;
    let _serial = SERIAL.lock().await;
    let dir = temp_dir();
    let (meta, mut groups) = start_cluster(dir.path(), &[1, 1, 1, 1]).await;
    let c = resp_coordinator(dir.path(), &meta.urls_arg(), &shards_arg(&groups[..3])).await;
    let resp_addr = c.ready.get("resp").expect("resp address").clone();
    let mut redis = redis_conn(&resp_addr);
    let total = 40_000;
    mset_keys(&mut redis, total);
    let add = serde_json::json!({ "shardId": 4, "replicas": { "1": groups[3].url(1) } });
    let (status, doc) = post_json(&c.http_addr(), "/api/v1/admin/shards", &add).await;
    assert_eq!(status, 202, "{doc}");
    let move_id = doc["moveId"].as_u64().expect("a move id");
    // The new shard dies for good while a transfer copies.
    let mut reader = MapReader { leader: None };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (from, to, _) = loop {
        if let Some(found) = reader
            .transfers(&meta)
            .await
            .and_then(|t| transfer_in(&t, Phase::Copy))
        {
            break found;
        }
        assert!(Instant::now() < deadline, "no transfer started copying");
    };
    groups[3].kill(1);
    assert_eq!(to, ShardId(4));
    // Fence the source as a cut-over would: its record hands the transfer's ranges over.
    let leader = meta.leader(Duration::from_secs(20)).await;
    let (_, state) = get_json(&host_port(&meta.url(leader)), "/api/v1/meta/map").await;
    let map: ClusterMap = serde_json::from_value(state["map"].clone()).expect("map");
    let mut fenced = map.routing().clone();
    fenced.hand_over(from, to).expect("a transfer of the move");
    let source = &groups[from.0 as usize - 1];
    let (status, doc) = put_json(
        &host_port(&source.url(1)),
        "/api/v1/admin/ownership",
        &serde_json::to_value(&fenced).expect("json"),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    let moving_key = (0..total)
        .map(|i| format!("key-{i}"))
        .find(|k| fenced.owner_of_key(k.as_bytes()) == to)
        .expect("a key of the fenced ranges");
    let r = http::request(
        &host_port(&source.url(1)),
        "GET",
        &format!("/api/v1/get/{moving_key}"),
        &[],
        None,
    )
    .await
    .expect("get");
    assert_eq!(r.status, 421, "the fenced source refuses: {}", r.text());

    // A move that is not the one in progress cannot be cancelled.
    let r = http::request(
        &c.http_addr(),
        "DELETE",
        &format!("/api/v1/admin/moves/{}", move_id + 1),
        &[],
        None,
    )
    .await
    .expect("delete");
    assert_eq!(r.status, 404, "{}", r.text());
    let out = tokio::task::spawn_blocking({
        let coordinator = format!("http://{}", c.http_addr());
        move || {
            Command::new(bin())
                .args(["admin", "--coordinator", &coordinator, "cancel-move"])
                .output()
                .expect("limedb admin runs")
        }
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("move {move_id} cancelled")),
        "{text}"
    );

    let (_, state) = get_json(
        &host_port(&meta.url(meta.leader(Duration::from_secs(20)).await)),
        "/api/v1/meta/map",
    )
    .await;
    let after: ClusterMap = serde_json::from_value(state["map"].clone()).expect("map");
    assert!(after.moving().is_none());
    assert_eq!(
        after.groups().keys().copied().collect::<Vec<_>>(),
        vec![ShardId(1), ShardId(2), ShardId(3)]
    );
    assert_eq!(after.epoch(), map.epoch() + 2);
    assert_eq!(after.routing().base(), map.routing().base());
    // Every key where it was, readable and writable through the coordinator.
    let keys: Vec<String> = (0..total).map(|i| format!("key-{i}")).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut redis)
        .expect("mget");
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "key-{i}");
    }
    let () = redis::cmd("SET")
        .arg(&moving_key)
        .arg("after")
        .query(&mut redis)
        .expect("the source serves the fenced ranges again");
    let listed: Vec<String> = redis::cmd("KEYS")
        .arg("key-*")
        .query(&mut redis)
        .expect("keys");
    assert_eq!(listed.len(), total);
    let held: u64 = {
        let mut n = 0;
        for g in &groups[..3] {
            n += keys_held(g).await;
        }
        n
    };
    assert_eq!(held, total as u64, "each key on its one shard");

    // The shard is added again, as a new group at another address: coordinators link to it
    // and its share of the keys moves.
    let again_dir = dir.path().join("again");
    std::fs::create_dir_all(&again_dir).expect("a directory for the new group");
    let again = Group::start(bin(), &again_dir, 4, 1, &[]);
    again.leader(Duration::from_secs(20)).await;
    let add = serde_json::json!({ "shardId": 4, "replicas": { "1": again.url(1) } });
    let (status, doc) = post_json(&c.http_addr(), "/api/v1/admin/shards", &add).await;
    assert_eq!(status, 202, "{doc}");
    wait_move_done(&c).await;
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut redis)
        .expect("mget");
    for (i, v) in values.iter().enumerate() {
        let expected = if keys[i] == moving_key {
            "after".to_string()
        } else {
            format!("v{i}")
        };
        assert_eq!(v.as_deref(), Some(expected.as_str()), "key-{i}");
    }
    assert!(keys_held(&again).await > 0, "the new group took its share");
}
