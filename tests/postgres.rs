//! `--storage postgres` with real processes and a real PostgreSQL server of each test's own
//! (initdb + pg_ctl on an ephemeral port, see `limedb_testkit::pg::PrivatePostgres`), so that
//! stopping and restarting it disturbs no other test: an outage is reported by the shard's
//! health, fails requests fast with 503 naming PostgreSQL, and ends by itself without losing an
//! acknowledged write; start-up errors are clear and exit non-zero; the flags, the TOML file and
//! LIMEDB_PG_URL configure it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use limedb_testkit::pg::{test_url, PrivatePostgres, TestDatabases};
use limedb_testkit::{temp_dir, wait_for, Cluster, HttpConn, Node};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

/// `GET /api/v1/health` of `addr`: (status, document).
async fn health(addr: &str) -> Option<(u16, serde_json::Value)> {
    let r = limedb_testkit::http::request(addr, "GET", "/api/v1/health", &[], None)
        .await
        .ok()?;
    Some((r.status, r.json()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_is_reported_fails_fast_and_heals_without_losing_writes() {
    let mut server = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .expect("task")
        .expect("private PostgreSQL");
    let url = server.url();
    let shard_args = [
        "--storage",
        "postgres",
        "--pg-url",
        url.as_str(),
        "--pg-timeout-ms",
        "1000",
        "--resp-port",
        "0",
    ];
    let mut cluster = Cluster::start(bin(), 3, &shard_args, &["--resp-port", "0"]).await;
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    let keys: Vec<String> = (0..200).map(|i| format!("acked-{i}")).collect();
    for key in &keys {
        let r = c.set(key, &format!("v-{key}")).await.expect("set");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let shard = cluster.shards[0].http_addr();
    let (status, doc) = health(&shard).await.expect("health");
    assert_eq!((status, doc["status"].as_str()), (200, Some("healthy")));
    assert_eq!(doc["storage"]["backend"], "postgres");

    // A crash of PostgreSQL: no checkpoint; committed writes come back from its WAL.
    let stop = tokio::task::spawn_blocking(move || server.stop("immediate").map(|()| server));
    let mut server = stop.await.expect("task").expect("stop PostgreSQL");

    let down = wait_for(
        Duration::from_secs(10),
        "the shard to report PostgreSQL down",
        || {
            let shard = shard.clone();
            async move {
                let (status, doc) = health(&shard).await?;
                (status == 503).then_some(doc)
            }
        },
    )
    .await;
    assert_eq!(down["status"], "unhealthy");
    assert_eq!(down["shardId"], 1);
    let reason = down["reason"].as_str().expect("a reason");
    assert!(reason.contains("PostgreSQL"), "{reason}");
    assert_eq!(down["storage"]["status"], "unavailable");

    // Requests fail fast, with 503 and a message naming PostgreSQL, directly and through the
    // coordinator.
    for addr in [cluster.addr(), shard.clone()] {
        let mut conn = HttpConn::connect(&addr).await.expect("connect");
        for key in keys.iter().take(5) {
            let started = Instant::now();
            let r = conn.get(key).await.expect("get");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "a get took {:?}",
                started.elapsed()
            );
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(r.text().contains("PostgreSQL"), "{}", r.text());
        }
        let started = Instant::now();
        let r = conn.set("during-outage", "x").await.expect("set");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(r.status, 503, "{}", r.text());
        let r = conn
            .request("GET", "/api/v1/keys", &[], None)
            .await
            .expect("keys");
        assert_eq!(r.status, 503, "{}", r.text());
    }

    // Over RESP too: an -ERR naming PostgreSQL, quickly, from the shard and the coordinator.
    let resp_addrs = [
        cluster.shards[0]
            .ready
            .get("resp")
            .cloned()
            .expect("shard resp="),
        cluster
            .coordinator
            .ready
            .get("resp")
            .cloned()
            .expect("coordinator resp="),
    ];
    let resp_keys = keys.clone();
    tokio::task::spawn_blocking(move || {
        for addr in resp_addrs {
            let mut conn = redis::Client::open(format!("redis://{addr}/"))
                .expect("client")
                .get_connection()
                .expect("connect");
            for key in resp_keys.iter().take(5) {
                let started = Instant::now();
                let r: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(key).query(&mut conn);
                assert!(started.elapsed() < Duration::from_secs(3));
                let e = r.expect_err("GET during the outage");
                assert!(e.to_string().contains("PostgreSQL"), "{addr}: {e}");
            }
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg("during-outage-resp")
                .arg("x")
                .query(&mut conn);
            let e = r.expect_err("SET during the outage");
            assert!(e.to_string().contains("PostgreSQL"), "{addr}: {e}");
        }
    })
    .await
    .expect("RESP checks");

    // A coordinator started during the outage still finds the shards (their health answers
    // 503 but names them) and forwards to them.
    cluster.restart_coordinator();
    cluster.wait_all_up().await;
    let r = HttpConn::connect(&cluster.addr())
        .await
        .expect("connect")
        .get(&keys[0])
        .await
        .expect("get");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("PostgreSQL"), "{}", r.text());

    let start = tokio::task::spawn_blocking(move || server.start_again().map(|()| server));
    let _server = start.await.expect("task").expect("restart PostgreSQL");
    for node in &cluster.shards {
        let addr = node.http_addr();
        wait_for(
            Duration::from_secs(20),
            "the shard to be healthy again",
            || {
                let addr = addr.clone();
                async move {
                    let (status, doc) = health(&addr).await?;
                    (status == 200 && doc["status"] == "healthy").then_some(())
                }
            },
        )
        .await;
    }
    // Nothing acknowledged was lost, nothing refused was written, and writes work again.
    let mut c = HttpConn::connect(&cluster.addr()).await.expect("connect");
    for key in &keys {
        let r = c.get(key).await.expect("get");
        assert_eq!((r.status, r.text()), (200, format!("v-{key}")), "{key}");
    }
    assert_eq!(c.get("during-outage").await.expect("get").status, 404);
    assert_eq!(c.get("during-outage-resp").await.expect("get").status, 404);
    assert_eq!(c.set("after", "y").await.expect("set").status, 200);
    assert_eq!(c.get("after").await.expect("get").text(), "y");
}

/// Runs `limedb` to completion with a deadline; returns (success, stderr).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(bin());
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let started = Instant::now();
    let out = command.output().expect("runs");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{args:?} took {:?} to fail",
        started.elapsed()
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn start_up_errors_name_the_cause_and_exit_non_zero() {
    let mut server = PrivatePostgres::start().expect("private PostgreSQL");
    let wrong = server.url_with_wrong_password();
    let base = ["shard", "--port", "0", "--internal-port", "0"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let argv = with(&["--storage", "postgres", "--pg-url", &wrong]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, stderr) = run_to_exit(&argv, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-password"),
        "the password is never printed: {stderr}"
    );

    let argv = with(&["--storage", "postgres"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, stderr) = run_to_exit(&argv, &[]);
    assert!(!ok);
    assert!(stderr.contains("--pg-url"), "{stderr}");

    let argv = with(&[
        "--storage",
        "postgres",
        "--pg-url",
        "postgres://u@h/",
        "--pg-database",
        "no spaces",
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, stderr) = run_to_exit(&argv, &[]);
    assert!(!ok);
    assert!(stderr.contains("--pg-database"), "{stderr}");

    let port = server.port();
    server.stop("fast").expect("stop");
    let url = format!("postgres://limedb:x@127.0.0.1:{port}/");
    let argv = with(&["--storage", "postgres", "--pg-url", &url]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, stderr) = run_to_exit(&argv, &[]);
    assert!(!ok);
    assert!(stderr.contains("PostgreSQL is unavailable"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_and_the_environment_select_postgres() {
    let databases = TestDatabases::new(&test_url());
    let dir = temp_dir();
    let file = dir.path().join("limedb.toml");
    let config = format!(
        "[shard]\nid = 4\nstorage = \"postgres\"\npg_url = \"{}\"\npg_database = \"{}\"\npg_pool_size = 2\n",
        databases.url(),
        databases.template()
    );
    std::fs::write(&file, config).expect("write config");
    let file_arg = file.to_string_lossy().to_string();
    let node = Node::spawn(
        bin(),
        &[
            "shard",
            "--config",
            &file_arg,
            "--port",
            "0",
            "--internal-port",
            "0",
        ],
        &dir.path().join("file.log"),
    )
    .expect("a shard configured by file starts");
    let mut c = HttpConn::connect(&node.http_addr()).await.expect("connect");
    assert_eq!(c.set("from-file", "1").await.expect("set").status, 200);
    let (_, doc) = health(&node.http_addr()).await.expect("health");
    assert_eq!(doc["storage"]["backend"], "postgres");
    drop(node);

    // The same database through LIMEDB_* variables: the key written above is there.
    let template = databases.template();
    let node = Node::spawn_in(
        bin(),
        &["shard", "--id", "4", "--port", "0", "--internal-port", "0"],
        &dir.path().join("env.log"),
        None,
        &[
            ("LIMEDB_STORAGE", "postgres"),
            ("LIMEDB_PG_URL", databases.url()),
            ("LIMEDB_PG_DATABASE", &template),
        ],
    )
    .expect("a shard configured by environment starts");
    let mut c = HttpConn::connect(&node.http_addr()).await.expect("connect");
    assert_eq!(c.get("from-file").await.expect("get").text(), "1");
}
