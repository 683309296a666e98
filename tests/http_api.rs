//! The HTTP API of the coordinator and of a shard, with real processes: the documented answers
//! and errors, URL-encoded and binary keys and values, TTLs, paging, metrics, and 64 concurrent
//! clients. Every check runs on every storage backend: memory, lsm and postgres (the postgres
//! shards use fresh databases on the server named by `LIMEDB_TEST_PG_URL`, dropped afterwards).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use limedb_cluster::{Ring, ShardId, DEFAULT_VNODES_PER_SHARD};
use limedb_testkit::http::encode;
use limedb_testkit::pg::{backend_args, TestDatabases};
use limedb_testkit::{wait_for, Cluster, HttpConn, HttpResponse};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

/// Small limits so the oversized cases are cheap to send.
const LIMITS: [&str; 4] = ["--max-key-bytes", "1024", "--max-value-bytes", "65536"];

/// A cluster and, on postgres, the databases its shards use (dropped after the processes).
struct TestCluster {
    cluster: Cluster,
    _databases: Option<TestDatabases>,
}

impl std::ops::Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// Starts 3 shards with `extra` arguments on `storage` and a coordinator with `coordinator`
/// arguments.
async fn cluster_with(storage: &str, extra: &[&str], coordinator: &[&str]) -> TestCluster {
    let (backend, databases) = backend_args(storage);
    let mut shard_args: Vec<&str> = extra.to_vec();
    shard_args.extend(backend.iter().map(String::as_str));
    TestCluster {
        cluster: Cluster::start(bin(), 3, &shard_args, coordinator).await,
        _databases: databases,
    }
}

/// Starts 3 shards on `storage` and a coordinator, with small limits.
async fn cluster(storage: &str) -> TestCluster {
    cluster_with(storage, &LIMITS, &LIMITS).await
}

/// Runs one check against a cluster of every storage backend: the API must not depend on it.
macro_rules! on_every_backend {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$check("memory").await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn lsm() {
                    super::$check("lsm").await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$check("postgres").await
                }
            }
        )*
    };
}

on_every_backend!(
    documented_answers_and_errors,
    declared_oversized_body_is_refused_before_it_is_sent,
    awkward_keys_and_binary_values_round_trip,
    ttl_expires_keys,
    coordinator_pages_through_every_key_of_every_shard,
    a_page_of_keys_at_the_size_limits_lists_without_breaking_the_link,
    health_cluster_ring_and_metrics,
    shard_limits_below_the_coordinators_give_413_and_keep_the_link,
    sixty_four_concurrent_clients_never_lose_or_mix_values,
    requests_ending_in_a_half_close_are_answered,
);

fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let doc = r
        .json()
        .unwrap_or_else(|| panic!("error body is not JSON: {}", r.text()));
    assert_eq!(doc["error"], code, "{doc}");
    assert!(
        doc["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a message: {doc}"
    );
}

/// Every check runs against the coordinator and against shard 1 directly.
async fn both(cluster: &TestCluster) -> Vec<HttpConn> {
    vec![
        HttpConn::connect(&cluster.addr())
            .await
            .expect("coordinator"),
        HttpConn::connect(&cluster.shards[0].http_addr())
            .await
            .expect("shard"),
    ]
}

async fn documented_answers_and_errors(storage: &str) {
    let cluster = cluster(storage).await;
    for mut c in both(&cluster).await {
        let r = c.set("greeting", "hello").await.expect("set");
        assert_eq!((r.status, r.text()), (200, "OK".into()));
        let r = c.get("greeting").await.expect("get");
        assert_eq!((r.status, r.text()), (200, "hello".into()));
        assert_error(&c.get("absent-key").await.expect("get"), 404, "not_found");
        assert_eq!(c.del("greeting").await.expect("del").text(), "1");
        assert_eq!(c.del("greeting").await.expect("del").text(), "0");
        assert_error(&c.get("greeting").await.expect("get"), 404, "not_found");

        for body in [
            "{not json",
            r#"{"value": "v"}"#,
            r#"{"key": "k"}"#,
            r#"{"key": 5, "value": "v"}"#,
            r#"{"key": "", "value": "v"}"#,
            r#"{"key": "k", "value": "v", "ttl_ms": 0}"#,
            r#"{"key": "k", "value": "v", "ttl_ms": -5}"#,
            "",
        ] {
            let r = c.post_set(body).await.expect("post");
            assert_error(&r, 400, "bad_request");
        }
        let big_key = "k".repeat(1025);
        assert_error(
            &c.set(&big_key, "v").await.expect("set"),
            413,
            "key_too_large",
        );
        assert_error(&c.get(&big_key).await.expect("get"), 413, "key_too_large");
        let big_value = "v".repeat(65_537);
        assert_error(
            &c.set("k", &big_value).await.expect("set"),
            413,
            "value_too_large",
        );
        let r = c
            .request("PUT", "/api/v1/kv/k", big_value.as_bytes(), None)
            .await
            .expect("put");
        assert_error(&r, 413, "value_too_large");
        // Exactly at the limits is fine.
        let r = c
            .set(&"k".repeat(1024), &"v".repeat(65_536))
            .await
            .expect("set");
        assert_eq!(r.status, 200, "{}", r.text());

        for path in [
            "/api/v1/keys?page=0",
            "/api/v1/keys?pageSize=101",
            "/api/v1/keys?page=x",
        ] {
            let r = c.request("GET", path, &[], None).await.expect("keys");
            assert_error(&r, 400, "bad_request");
        }
        assert_error(
            &c.request("GET", "/nope", &[], None).await.expect("get"),
            404,
            "not_found",
        );
        let r = c
            .request("POST", "/api/v1/get/x", &[], None)
            .await
            .expect("post");
        assert_error(&r, 405, "method_not_allowed");
    }
}

async fn declared_oversized_body_is_refused_before_it_is_sent(storage: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = cluster(storage).await;
    let mut stream = tokio::net::TcpStream::connect(cluster.addr())
        .await
        .expect("connect");
    // Announce 1 GiB and send nothing: the answer must come at once, not after a body.
    stream
        .write_all(b"PUT /api/v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered without waiting for the body")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("value_too_large"), "{head}");
}

/// Sends `request` on a new connection to `addr`, shuts down the sending side (as
/// `printf ... | nc -N` does), and returns everything the server answers before it closes.
async fn half_closed_exchange(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("{addr} neither answered nor closed within 10 s"))
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that sends a whole request and then shuts down its side of the socket gets the
/// answer, and its write is applied: on the coordinator and on a shard, over HTTP/1.1 and
/// HTTP/1.0. A malformed or cut-short request is answered 400 the same way.
async fn requests_ending_in_a_half_close_are_answered(storage: &str) {
    let cluster = cluster(storage).await;
    let addrs = [cluster.addr(), cluster.shards[0].http_addr()];
    for (n, addr) in addrs.iter().enumerate() {
        for version in ["1.1", "1.0"] {
            let key = format!("half-closed-{n}-{version}");
            let body = format!(r#"{{"key": "{key}", "value": "v{n}"}}"#);
            let request = format!(
                "POST /api/v1/set HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let ok = format!("HTTP/{version} 200");
            let answer = half_closed_exchange(addr, request.as_bytes()).await;
            assert!(answer.starts_with(&ok), "{addr}: {answer:?}");
            let mut conn = HttpConn::connect(addr).await.expect("connect");
            let r = conn.get(&key).await.expect("get");
            assert_eq!((r.status, r.text()), (200, format!("v{n}")), "{addr} {key}");
            let answer = half_closed_exchange(
                addr,
                format!("GET /api/v1/get/{key} HTTP/{version}\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert!(answer.starts_with(&ok), "{addr}: {answer:?}");
            assert!(answer.ends_with(&format!("v{n}")), "{addr}: {answer:?}");
        }
        let garbage = half_closed_exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{addr}: {garbage:?}");
        let cut_short = half_closed_exchange(
            addr,
            b"POST /api/v1/set HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"key\"",
        )
        .await;
        assert!(
            cut_short.starts_with("HTTP/1.1 400"),
            "{addr}: {cut_short:?}"
        );
    }
}

async fn awkward_keys_and_binary_values_round_trip(storage: &str) {
    let cluster = cluster(storage).await;
    let keys = [
        "a/b/c",
        "with space",
        "100%",
        "ключ",
        "日本語のキー",
        "emoji 🍋",
        "q?x=1&y=2#frag",
        "+plus+",
    ];
    for mut c in both(&cluster).await {
        for key in keys {
            let value = format!("value of {key} ✓");
            assert_eq!(c.set(key, &value).await.expect("set").status, 200);
            let r = c.get(key).await.expect("get");
            assert_eq!((r.status, r.text()), (200, value), "{key}");
        }
        // An unencoded slash is part of the key too.
        let r = c
            .request("GET", "/api/v1/get/a/b/c", &[], None)
            .await
            .expect("get");
        assert_eq!(r.status, 200);

        let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let path = format!("/api/v1/kv/{}", encode(b"bin\x00key"));
        let r = c
            .request("PUT", &path, &binary, Some("application/octet-stream"))
            .await
            .expect("put");
        assert_eq!(r.status, 200, "{}", r.text());
        let r = c.request("GET", &path, &[], None).await.expect("get");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(r.body, binary);
        assert_eq!(
            c.request("DELETE", &path, &[], None)
                .await
                .expect("del")
                .text(),
            "1"
        );
    }
    // Written through the coordinator, each key sits byte for byte on the shard the ring names.
    let ring = Ring::new(
        &[ShardId(1), ShardId(2), ShardId(3)],
        DEFAULT_VNODES_PER_SHARD,
    )
    .expect("ring");
    let mut coord = HttpConn::connect(&cluster.addr()).await.expect("connect");
    for key in keys {
        let key = format!("routed {key}");
        assert_eq!(coord.set(&key, &key).await.expect("set").status, 200);
        let owner = ring.shard_for_key(key.as_bytes()).0 as usize;
        let mut s = HttpConn::connect(&cluster.shards[owner - 1].http_addr())
            .await
            .expect("connect");
        let r = s.get(&key).await.expect("get");
        assert_eq!((r.status, r.text()), (200, key.clone()));
    }
}

async fn ttl_expires_keys(storage: &str) {
    let cluster = cluster(storage).await;
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    let body = r#"{"key": "short-lived", "value": "v", "ttl_ms": 300}"#;
    let r = c.post_set(body).await.expect("set");
    assert_eq!(r.status, 200);
    let r = c
        .request("PUT", "/api/v1/kv/short-binary?ttl_ms=300", b"v", None)
        .await
        .expect("put");
    assert_eq!(r.status, 200);
    assert_eq!(c.set("long-lived", "v").await.expect("set").status, 200);
    assert_eq!(c.get("short-lived").await.expect("get").status, 200);
    let addr = cluster.addr();
    wait_for(Duration::from_secs(10), "keys with a TTL to expire", || {
        let addr = addr.clone();
        async move {
            let mut c = HttpConn::connect(&addr).await.ok()?;
            let a = c.get("short-lived").await.ok()?.status;
            let b = c.get("short-binary").await.ok()?.status;
            (a == 404 && b == 404).then_some(())
        }
    })
    .await;
    assert_eq!(c.get("long-lived").await.expect("get").status, 200);
}

async fn coordinator_pages_through_every_key_of_every_shard(storage: &str) {
    let cluster = cluster(storage).await;
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    let expected: BTreeSet<String> = (0..45).map(|i| format!("page-key-{i:02}")).collect();
    for key in &expected {
        assert_eq!(
            c.set(key, &format!("v-{key}")).await.expect("set").status,
            200
        );
    }
    let mut seen = BTreeSet::new();
    for page in 1..=3 {
        let r = c
            .request(
                "GET",
                &format!("/api/v1/keys?page={page}&pageSize=20"),
                &[],
                None,
            )
            .await
            .expect("keys");
        let doc = r.json().expect("json");
        assert_eq!(doc["total"], 45);
        assert_eq!(doc["totalPages"], 3);
        assert_eq!(doc["page"], page);
        assert_eq!(doc["pageSize"], 20);
        let keys = doc["keys"].as_array().expect("keys array");
        assert_eq!(keys.len(), if page < 3 { 20 } else { 5 });
        for entry in keys {
            let key = entry["key"].as_str().expect("key").to_string();
            assert_eq!(entry["value"], format!("v-{key}"));
            assert_eq!(entry["size"], format!("v-{key}").len());
            assert!(seen.insert(key), "a key appears on two pages");
        }
    }
    assert_eq!(seen, expected);
    let r = c
        .request("GET", "/api/v1/keys?page=4&pageSize=20", &[], None)
        .await
        .expect("keys");
    assert_eq!(
        r.json().expect("json")["keys"].as_array().map(Vec::len),
        Some(0)
    );
    let r = c
        .request("GET", "/api/v1/keys", &[], None)
        .await
        .expect("keys");
    assert_eq!(r.json().expect("json")["pageSize"], 20);
}

async fn health_cluster_ring_and_metrics(storage: &str) {
    let cluster = cluster(storage).await;
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    assert_eq!(c.set("m", "1").await.expect("set").status, 200);
    assert_eq!(c.get("m").await.expect("get").status, 200);
    assert_eq!(c.get("absent").await.expect("get").status, 404);

    let health = c
        .request("GET", "/api/v1/health", &[], None)
        .await
        .expect("health");
    let doc = health.json().expect("json");
    assert_eq!(doc["status"], "healthy");
    assert_eq!(doc["type"], "coordinator");
    assert_eq!(doc["shardCount"], 3);
    assert_eq!(doc["shards"].as_array().map(Vec::len), Some(3));
    assert!(doc["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .all(|s| s["status"] == "up"));

    let state = c
        .request("GET", "/api/v1/cluster/state", &[], None)
        .await
        .expect("state");
    let doc = state.json().expect("json");
    assert_eq!(doc["totalNodes"], 3);
    assert_eq!(doc["status"], "healthy");
    assert!(doc["nodeId"].is_string());
    assert_eq!(doc["peers"].as_array().map(Vec::len), Some(3));
    assert_eq!(doc["members"].as_array().map(Vec::len), Some(3));

    let ring = c
        .request("GET", "/api/v1/cluster/ring", &[], None)
        .await
        .expect("ring");
    let doc = ring.json().expect("json");
    assert_eq!(doc["totalNodes"], 3);
    assert_eq!(doc["virtualNodesPerNode"], 128);
    assert_eq!(doc["virtualNodes"], 384);
    let distribution = doc["virtualNodeDistribution"]
        .as_object()
        .expect("distribution");
    assert_eq!(distribution.len(), 3);
    assert!(distribution.values().all(|v| v == 128));
    for key in [
        "ranges",
        "rangesDegrees",
        "ownership",
        "keySpread",
        "keysPerNode",
    ] {
        assert!(doc[key].is_object(), "ring has {key}: {doc}");
    }
    let keys_per_node: u64 = doc["keysPerNode"]
        .as_object()
        .expect("keysPerNode")
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(keys_per_node, 1);

    let shard_health = HttpConn::connect(&cluster.shards[2].http_addr())
        .await
        .expect("connect")
        .request("GET", "/api/v1/health", &[], None)
        .await
        .expect("health");
    let doc = shard_health.json().expect("json");
    assert_eq!(doc["status"], "healthy");
    assert_eq!(doc["type"], "shard");
    assert_eq!(doc["shardId"], 3);
    assert!(doc["storage"]["keys"].is_u64());

    let metrics = c
        .request("GET", "/metrics", &[], None)
        .await
        .expect("metrics")
        .text();
    for needle in [
        r#"limedb_requests_total{api="http",op="set"} 1"#,
        r#"limedb_requests_total{api="http",op="get"} 2"#,
        "limedb_request_duration_seconds_bucket",
        "limedb_shard_forward_duration_seconds_count",
        r#"limedb_shard_up{shard="1"} 1"#,
        r#"limedb_open_connections{listener="http"}"#,
    ] {
        assert!(
            metrics.contains(needle),
            "coordinator metrics lack {needle}:\n{metrics}"
        );
    }
    let shard_metrics = HttpConn::connect(&cluster.shards[0].http_addr())
        .await
        .expect("connect")
        .request("GET", "/metrics", &[], None)
        .await
        .expect("metrics")
        .text();
    for needle in [
        "limedb_storage_keys",
        "limedb_storage_flushes",
        "limedb_storage_cache_hits",
        "limedb_storage_kept_memtable_bytes",
        r#"limedb_requests_total{api="internal",op="get"}"#,
    ] {
        assert!(
            shard_metrics.contains(needle),
            "shard metrics lack {needle}"
        );
    }
    if storage == "lsm" {
        assert!(
            shard_metrics.contains(r#"limedb_storage_level_tables{level="0"}"#),
            "an LSM shard shows its levels:\n{shard_metrics}"
        );
    }
}

async fn sixty_four_concurrent_clients_never_lose_or_mix_values(storage: &str) {
    let cluster = cluster(storage).await;
    let clients = 64;
    let rounds = 40;
    let shared: Vec<String> = (0..16).map(|i| format!("shared-{i}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let addr = cluster.addr();
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut c = HttpConn::connect(&addr).await.expect("connect");
            let mut last_own = HashMap::new();
            for round in 0..rounds {
                // Own keys: what I wrote is what I read.
                let key = format!("own-{client}-{}", round % 10);
                let value = format!("{key}|{client}|{round}");
                assert_eq!(c.set(&key, &value).await.expect("set").status, 200);
                last_own.insert(key.clone(), value.clone());
                let r = c.get(&key).await.expect("get");
                assert_eq!(r.text(), value, "read-your-write of {key}");
                // Shared keys: any client's value for *that* key, never another key's.
                let skey = &shared[(client + round) % shared.len()];
                let svalue = format!("{skey}|{client}|{round}");
                assert_eq!(c.set(skey, &svalue).await.expect("set").status, 200);
                let other = &shared[(client * 7 + round) % shared.len()];
                let r = c.get(other).await.expect("get");
                if r.status == 200 {
                    assert!(
                        r.text().starts_with(&format!("{other}|")),
                        "{other} holds {}",
                        r.text()
                    );
                } else {
                    assert_eq!(r.status, 404, "{}", r.text());
                }
            }
            last_own
        });
    }
    let mut expected = HashMap::new();
    while let Some(t) = tasks.join_next().await {
        expected.extend(t.expect("client task"));
    }
    assert_eq!(expected.len(), clients * 10);
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    for (key, value) in &expected {
        assert_eq!(
            &c.get(key).await.expect("get").text(),
            value,
            "final value of {key}"
        );
    }
    for key in &shared {
        let r = c.get(key).await.expect("get");
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with(&format!("{key}|")));
    }
}

async fn a_page_of_keys_at_the_size_limits_lists_without_breaking_the_link(storage: &str) {
    let cluster = cluster(storage).await;
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    // 300 keys of 1000 bytes with 1000-byte values: a page of 100 is far larger than one
    // maximal key and value of these small limits.
    for i in 0..300 {
        let key = format!("{i:04}{}", "k".repeat(996));
        assert_eq!(
            c.set(&key, &"v".repeat(1000)).await.expect("set").status,
            200
        );
    }
    for page in 1..=3 {
        let r = c
            .request(
                "GET",
                &format!("/api/v1/keys?page={page}&pageSize=100"),
                &[],
                None,
            )
            .await
            .expect("keys");
        assert_eq!(r.status, 200, "{}", r.text());
        let doc = r.json().expect("json");
        assert_eq!(doc["keys"].as_array().map(Vec::len), Some(100));
    }
    // The shards are still up and serving.
    let health = c
        .request("GET", "/api/v1/health", &[], None)
        .await
        .expect("health");
    assert_eq!(health.json().expect("json")["healthyShards"], 3);
}

async fn shard_limits_below_the_coordinators_give_413_and_keep_the_link(storage: &str) {
    let cluster = cluster_with(storage, &["--max-value-bytes", "1024"], &[]).await;
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    let r = c
        .set("too-big-for-the-shard", &"v".repeat(2000))
        .await
        .expect("set");
    assert_error(&r, 413, "value_too_large");
    assert!(
        r.text().contains("shard"),
        "the message says a shard refused: {}",
        r.text()
    );
    let health = c
        .request("GET", "/api/v1/health", &[], None)
        .await
        .expect("health");
    assert_eq!(health.json().expect("json")["healthyShards"], 3);
    assert_eq!(c.set("small", "ok").await.expect("set").status, 200);
}
