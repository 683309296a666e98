//! The cluster map with real processes: a map group of three `limedb meta` replicas, shards,
//! and several coordinators started with `--meta`. The first coordinator creates the map from
//! its `--shards`; later ones learn it from any member and route identically; one whose
//! `--shards` disagrees refuses to start and names the difference; the map survives the loss of
//! the map group's leader; changes are compare-and-set on the epoch.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use limedb_cluster::{ClusterMap, Group as MapGroup, ShardId};
use limedb_testkit::group::Group;
use limedb_testkit::{http, start_shard, temp_dir, wait_for, Node};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

/// Starts a coordinator and waits until it reaches all three shards.
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
                (doc["healthyShards"] == 3).then_some(())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_share_one_map_and_a_disagreeing_one_refuses_to_start() {
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
async fn the_map_changes_only_by_compare_and_set_on_its_epoch() {
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
    let create = serde_json::json!({ "expectedEpoch": null, "map": first });
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
    let same = serde_json::json!({ "expectedEpoch": 1, "map": first });
    let (status, doc) = post_json(&leader_addr, "/api/v1/meta/map", &same).await;
    assert_eq!(status, 400, "{doc}");

    // Two changes from the same epoch, at once: exactly one wins.
    let a = serde_json::json!({ "expectedEpoch": 1, "map": grown });
    let b = serde_json::json!({ "expectedEpoch": 1, "map": shrunk });
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

    // A follower names the leader; a garbled map is refused; keys are not served here.
    let (status, doc) = post_json(&host_port(&meta.url(follower)), "/api/v1/meta/map", &a).await;
    assert_eq!(status, 503, "{doc}");
    assert_eq!(doc["leader"], meta.url(leader));
    let garbled = serde_json::json!({ "expectedEpoch": 2, "map": { "routing": 7 } });
    let (status, doc) = post_json(&leader_addr, "/api/v1/meta/map", &garbled).await;
    assert_eq!(status, 400, "{doc}");
    let r = http::request(&leader_addr, "GET", "/api/v1/get/k", &[], None)
        .await
        .expect("get");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("cluster-map group"), "{}", r.text());
}
