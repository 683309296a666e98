//! The `limedb` command line: the seed prototype's flag forms, defaults, the TOML file,
//! environment variables, `--help`, clear start-up errors, and `limedb dev`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use limedb_testkit::{temp_dir, wait_for, HttpConn, Node};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flags_start_a_shard_and_a_coordinator() {
    let dir = temp_dir();
    // No --data-dir: the shard keeps its data under ./limedb-data/shard-<id> of its cwd.
    let mut shard = Node::spawn_in(
        bin(),
        &[
            "--node.type=shard",
            "--server.port=0",
            "--shard.id=1",
            "--internal-port=0",
        ],
        &dir.path().join("shard.log"),
        Some(dir.path()),
        &[],
    )
    .expect("seed-style shard starts");
    assert_eq!(shard.ready["role"], "shard");
    assert_eq!(shard.ready["id"], "1");
    let shards = format!("--shards={}", shard.url());
    let coordinator = Node::spawn(
        bin(),
        &[
            "--node.type=coordinator",
            "--server.port=0",
            shards.as_str(),
        ],
        &dir.path().join("coordinator.log"),
    )
    .expect("seed-style coordinator starts");
    let addr = coordinator.http_addr();
    wait_for(Duration::from_secs(20), "shard up", || {
        let addr = addr.clone();
        async move {
            let r = limedb_testkit::http::request(&addr, "GET", "/api/v1/health", &[], None)
                .await
                .ok()?;
            (r.json()?["status"] == "healthy").then_some(())
        }
    })
    .await;
    let mut c = HttpConn::connect(&addr).await.expect("connect");
    assert_eq!(c.set("seed", "works").await.expect("set").status, 200);
    assert_eq!(c.get("seed").await.expect("get").text(), "works");
    assert!(shard.terminate(Duration::from_secs(15)));
    assert!(
        dir.path().join("limedb-data/shard-1/CURRENT").is_file(),
        "default data directory ./limedb-data/shard-1 holds the default (lsm) backend's files"
    );
}

#[test]
fn config_file_and_environment_configure_a_shard() {
    let dir = temp_dir();
    let data = dir.path().join("from-file");
    let config = dir.path().join("limedb.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"warn\"\n[shard]\nid = 4\nport = 0\ninternal_port = 0\ndata_dir = {:?}\nwal_sync = \"always\"\n",
            data.display().to_string()
        ),
    )
    .expect("write config");
    let config_arg = config.display().to_string();
    let node = Node::spawn(
        bin(),
        &["shard", "--config", config_arg.as_str()],
        &dir.path().join("a.log"),
    )
    .expect("starts from the file");
    assert_eq!(node.ready["id"], "4");
    assert!(data.is_dir());
    drop(node);

    // An environment variable beats the file; a flag beats both.
    let node = Node::spawn_in(
        bin(),
        &["shard", "--config", config_arg.as_str()],
        &dir.path().join("b.log"),
        None,
        &[("LIMEDB_SHARD_ID", "5")],
    )
    .expect("starts");
    assert_eq!(node.ready["id"], "5");
    drop(node);
    let node = Node::spawn_in(
        bin(),
        &["shard", "--config", config_arg.as_str(), "--id", "6"],
        &dir.path().join("c.log"),
        None,
        &[("LIMEDB_SHARD_ID", "5")],
    )
    .expect("starts");
    assert_eq!(node.ready["id"], "6");
}

fn fails_with(args: &[&str], needle: &str) {
    let out = Command::new(bin()).args(args).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr lacks {needle:?}:\n{stderr}"
    );
}

#[test]
fn bad_configuration_is_a_clear_error_and_a_nonzero_exit() {
    let dir = temp_dir();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[shard]\nprot = 7001\n").expect("write");
    let bad = bad.display().to_string();
    fails_with(&["shard", "--config", &bad], "unknown key \"prot\"");
    fails_with(
        &["shard", "--config", "/nonexistent/limedb.toml"],
        "cannot read config file",
    );
    fails_with(&["shard", "--storage", "floppy"], "unknown storage backend");
    fails_with(&["meta"], "limedb meta needs --peers");
    fails_with(
        &[
            "meta",
            "--replica",
            "4",
            "--peers",
            "1=http://127.0.0.1:7901",
        ],
        "--peers has no entry for this replica",
    );
    fails_with(&["shard", "--wal-sync", "sometimes"], "--wal-sync");
    fails_with(
        &["shard", "--table-reads", "floppy"],
        "--table-reads: unknown mode",
    );
    fails_with(
        &["shard", "--memtable-mb", "0"],
        "--memtable-mb must be at least 1",
    );
    fails_with(
        &["shard", "--block-cache-mb", "0"],
        "--block-cache-mb must be at least 1",
    );
    fails_with(&["shard", "--id", "0"], "shard ids start at 1");
    fails_with(
        &["coordinator", "--shards", "1=http://a:1,1=http://b:2"],
        "twice",
    );
    fails_with(&["coordinator", "--port", "notaport"], "invalid value");
    // Shard 1's internal port (its HTTP port + 10000) is shard 2's HTTP port: refused before
    // anything binds or opens storage, naming the replicas (3 per shard by default) or shards.
    fails_with(
        &["dev", "--shard-ports", "7001,17001"],
        "port 17001 would be both shard 1 replica 1's internal port",
    );
    fails_with(
        &["dev", "--replicas", "1", "--shard-ports", "7001,17001"],
        "port 17001 would be both shard 1's internal port",
    );
    fails_with(
        &[
            "dev",
            "--storage",
            "memory",
            "--replicas",
            "3",
            "--shard-ports",
            "0",
        ],
        "--replicas 1",
    );
    // A data directory of one backend opened with the other.
    let lsm_dir = dir.path().join("lsm-data").display().to_string();
    let node = Node::spawn(
        bin(),
        &[
            "shard",
            "--port",
            "0",
            "--internal-port",
            "0",
            "--storage",
            "lsm",
            "--data-dir",
            &lsm_dir,
        ],
        &dir.path().join("lsm.log"),
    )
    .expect("lsm shard starts");
    drop(node);
    fails_with(
        &[
            "shard",
            "--port",
            "0",
            "--internal-port",
            "0",
            "--storage",
            "memory",
            "--data-dir",
            &lsm_dir,
        ],
        "holds data of the lsm storage backend",
    );
    // A port already in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let data = dir.path().join("d").display().to_string();
    fails_with(
        &[
            "shard",
            "--port",
            &port,
            "--internal-port",
            "0",
            "--data-dir",
            &data,
        ],
        "cannot listen on",
    );
}

#[test]
fn help_explains_every_option() {
    for (args, needles) in [
        (
            vec!["--help"],
            vec![
                "shard",
                "coordinator",
                "meta",
                "dev",
                "bench",
                "admin",
                "--config",
                "--log-level",
            ],
        ),
        (
            vec!["admin", "--help"],
            vec![
                "status",
                "add-replica",
                "remove-replica",
                "replace-replica",
                "add-shard",
                "remove-shard",
                "--coordinator",
                "--json",
            ],
        ),
        (
            vec!["shard", "--help"],
            vec![
                "--id",
                "--port",
                "--internal-port",
                "--data-dir",
                "--storage",
                "--wal-sync",
                "--replica",
                "--peers",
                "--raft-election-ms",
                "--max-value-bytes",
                "--resp-port",
                "--resp-idle-timeout-ms",
                "LIMEDB_",
            ],
        ),
        (
            vec!["coordinator", "--help"],
            vec![
                "--shards",
                "--vnodes",
                "--shard-timeout-ms",
                "--health-interval-ms",
                "[default: 128]",
                "--meta",
                "LIMEDB_META",
            ],
        ),
        (
            vec!["meta", "--help"],
            vec![
                "--replica",
                "--peers",
                "--port",
                "--internal-port",
                "--data-dir",
                "[default: 7900 + replica id]",
                "--raft-election-ms",
            ],
        ),
        (
            vec!["dev", "--help"],
            vec![
                "--coordinator-port",
                "--shard-ports",
                "--data-dir",
                "--resp-port",
                "--replicas",
                "--meta-port",
            ],
        ),
        (
            vec!["bench", "--help"],
            vec![
                "--connections",
                "--requests",
                "--workload",
                "--keyspace",
                "--value-size",
                "--values",
                "repeating",
                "random",
                "--json",
            ],
        ),
    ] {
        let out = Command::new(bin()).args(&args).output().expect("runs");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for needle in needles {
            assert!(text.contains(needle), "{args:?} lacks {needle}:\n{text}");
        }
    }
}

/// The report of a `limedb bench --json` run that exited 0: its last line of stdout.
fn bench_report(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_cluster_and_bench_drives_it() {
    let dir = temp_dir();
    let mut dev = Node::spawn_in(
        bin(),
        &[
            "dev",
            "--coordinator-port",
            "0",
            "--shard-ports",
            "0,0,0",
            "--resp-port",
            "0",
            "--meta-port",
            "0",
        ],
        &dir.path().join("dev.log"),
        Some(dir.path()),
        &[],
    )
    .expect("dev starts");
    let addr = dev.http_addr();
    wait_for(Duration::from_secs(20), "dev cluster healthy", || {
        let addr = addr.clone();
        async move {
            let r = limedb_testkit::http::request(&addr, "GET", "/api/v1/health", &[], None)
                .await
                .ok()?;
            (r.json()?["healthyShards"] == 3).then_some(())
        }
    })
    .await;
    // The coordinator's RESP listener is announced and serves Redis clients.
    let resp = dev
        .ready
        .get("resp")
        .cloned()
        .expect("resp= in the ready line");
    let answer = tokio::task::spawn_blocking(move || -> redis::RedisResult<Option<String>> {
        let mut c = redis::Client::open(format!("redis://{resp}/"))?.get_connection()?;
        redis::cmd("SET")
            .arg("dev-key")
            .arg("dev-value")
            .query::<()>(&mut c)?;
        redis::cmd("GET").arg("dev-key").query(&mut c)
    })
    .await
    .expect("join")
    .expect("redis round trip");
    assert_eq!(answer.as_deref(), Some("dev-value"));
    let url = format!("http://{addr}");
    let bench_args: Vec<String> = [
        "bench",
        "--url",
        &url,
        "-c",
        "8",
        "-n",
        "2000",
        "-w",
        "mixed",
        "--keyspace",
        "500",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || Command::new(bin()).args(bench_args).output())
        .await
        .expect("join")
        .expect("bench runs");
    let report = bench_report(&out);
    assert_eq!(report["requests"], 2000);
    assert_eq!(report["errors"], 0);
    assert!(report["throughput_ops"].as_f64().is_some_and(|t| t > 0.0));
    assert!(report["latency_us"]["p99"]
        .as_f64()
        .is_some_and(|p| p > 0.0));
    // SIGTERM ends a long run early, with the report of what ran (how bench/rebalance.sh
    // measures the load during a move).
    let endless = std::process::Command::new(bin())
        .args([
            "bench",
            "--url",
            &url,
            "-c",
            "4",
            "-n",
            "1000000000",
            "-w",
            "mixed",
            "--keyspace",
            "500",
            "--no-prefill",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bench starts");
    let metrics_addr = addr.clone();
    wait_for(
        Duration::from_secs(20),
        "the endless bench to make requests",
        || {
            let addr = metrics_addr.clone();
            async move {
                let text = limedb_testkit::http::request(&addr, "GET", "/metrics", &[], None)
                    .await
                    .ok()?
                    .text();
                let gets: f64 = text
                    .lines()
                    .find(|l| l.starts_with(r#"limedb_requests_total{api="http",op="get"}"#))?
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()?;
                (gets > 3000.0).then_some(())
            }
        },
    )
    .await;
    let term = Command::new("kill")
        .args(["-TERM", &endless.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || endless.wait_with_output()),
    )
    .await
    .expect("the bench ends soon after SIGTERM")
    .expect("join")
    .expect("bench output");
    let report = bench_report(&out);
    let requests = report["requests"].as_u64().expect("requests");
    assert!(
        requests > 1000 && requests < 1_000_000_000,
        "stopped early: {report}"
    );
    assert_eq!(report["errors"], 0, "{report}");

    // The coordinator routes by the cluster map the dev cluster's map group keeps.
    let state = limedb_testkit::http::request(&addr, "GET", "/api/v1/cluster/state", &[], None)
        .await
        .expect("state")
        .json()
        .expect("json");
    assert_eq!(state["routing"], "clusterMap", "{state}");
    assert_eq!(state["ringEpoch"], 1, "{state}");
    // The keys the bench wrote are in the default data directories, one per replica of each
    // shard's group; Ctrl-C stops it cleanly.
    assert!(
        dev.terminate(Duration::from_secs(15)),
        "dev exits 0 on SIGTERM"
    );
    for id in 1..=3 {
        for replica in 1..=3 {
            let data = dir
                .path()
                .join(format!("limedb-data/shard-{id}-replica-{replica}"));
            assert!(
                data.join("raft").is_dir(),
                "{} has a raft log",
                data.display()
            );
            assert!(data.join("sm").is_dir(), "{} has an engine", data.display());
        }
        assert!(
            dir.path()
                .join(format!("limedb-data/meta-replica-{id}/raft"))
                .is_dir(),
            "map-group replica {id} has a raft log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_without_shards_routes_to_the_seed_shards() {
    let dir = temp_dir();
    let node = Node::spawn(
        bin(),
        &["coordinator", "--port", "0"],
        &dir.path().join("c.log"),
    )
    .expect("starts without --shards");
    let r =
        limedb_testkit::http::request(&node.http_addr(), "GET", "/api/v1/cluster/state", &[], None)
            .await
            .expect("state");
    let doc = r.json().expect("json");
    assert_eq!(
        doc["peers"],
        serde_json::json!([
            "http://127.0.0.1:7001",
            "http://127.0.0.1:7002",
            "http://127.0.0.1:7003"
        ])
    );
}

#[test]
fn log_level_flag_beats_rust_log_and_logs_go_to_stderr() {
    let dir = temp_dir();
    let data = dir.path().join("d").display().to_string();
    let args = [
        "shard",
        "--port",
        "0",
        "--internal-port",
        "0",
        "--data-dir",
        data.as_str(),
    ];
    let quiet = Node::spawn_in(
        bin(),
        &[&args[..], &["--log-level", "warn"]].concat(),
        &dir.path().join("quiet.log"),
        None,
        &[("RUST_LOG", "debug")],
    )
    .expect("starts");
    let mut quiet = quiet;
    assert!(quiet.terminate(Duration::from_secs(15)));
    let log = quiet.log_text();
    assert!(
        !log.contains(" INFO ") && !log.contains("DEBUG"),
        "--log-level warn wins:\n{log}"
    );

    let chatty = Node::spawn_in(
        bin(),
        &args,
        &dir.path().join("chatty.log"),
        None,
        &[("RUST_LOG", "info")],
    )
    .expect("starts");
    let mut chatty = chatty;
    assert!(chatty.terminate(Duration::from_secs(15)));
    assert!(
        chatty.log_text().contains("shard serving"),
        "info logs on stderr"
    );
}

#[test]
fn sigterm_right_after_the_ready_line_is_a_clean_stop() {
    // Regression: the signal handlers were installed after the readiness line, so an early
    // SIGTERM killed the process instead of stopping it cleanly.
    let dir = temp_dir();
    for round in 0..5 {
        let data = dir.path().join(format!("d{round}")).display().to_string();
        let mut shard = Node::spawn(
            bin(),
            &[
                "shard",
                "--port",
                "0",
                "--internal-port",
                "0",
                "--data-dir",
                &data,
            ],
            &dir.path().join(format!("s{round}.log")),
        )
        .expect("starts");
        assert!(
            shard.terminate(Duration::from_secs(15)),
            "round {round}: exit 0"
        );
        let mut coordinator = Node::spawn(
            bin(),
            &[
                "coordinator",
                "--port",
                "0",
                "--shards",
                "http://127.0.0.1:1",
            ],
            &dir.path().join(format!("c{round}.log")),
        )
        .expect("starts");
        assert!(
            coordinator.terminate(Duration::from_secs(15)),
            "round {round}: exit 0"
        );
    }
}

/// Protected mode: beyond loopback, a coordinator without a password, and a shard, map-group
/// replica or dev cluster without `--insecure` (password or not), refuse to start and say what
/// to set; a coordinator with a password, and any node with `--insecure`, start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_mode_refuses_an_open_node_on_a_public_address() {
    let dir = temp_dir();
    let data = dir.path().join("d").to_string_lossy().into_owned();
    let shard = [
        "shard",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--internal-port",
        "0",
        "--data-dir",
        &data,
    ];
    // A shard needs --insecure beyond loopback, password or not (its internal listener and
    // the routes cluster members call on it are not guarded yet).
    for needle in ["protected mode", "0.0.0.0", "--insecure", "cluster secret"] {
        fails_with(&shard, needle);
        fails_with(&[&shard[..], &["--requirepass", "pw"]].concat(), needle);
    }
    let coordinator = ["coordinator", "--host", "0.0.0.0", "--port", "0"];
    for needle in ["protected mode", "--requirepass", "--insecure"] {
        fails_with(&coordinator, needle);
    }
    fails_with(
        &[
            "meta",
            "--host",
            "0.0.0.0",
            "--replica",
            "1",
            "--peers",
            "1=http://127.0.0.1:7901",
        ],
        "protected mode",
    );
    fails_with(
        &["dev", "--host", "0.0.0.0", "--requirepass", "pw"],
        "protected mode",
    );
    let started = [
        [&shard[..], &["--insecure"]].concat(),
        [&coordinator[..], &["--requirepass", "pw"]].concat(),
        [&coordinator[..], &["--insecure"]].concat(),
    ];
    for args in started {
        let node = Node::spawn(bin(), &args, &dir.path().join("open.log"))
            .unwrap_or_else(|e| panic!("{args:?} starts: {e}"));
        let addr = node.http_addr();
        assert!(addr.starts_with("0.0.0.0:"), "{addr}");
        let port = addr.rsplit(':').next().unwrap_or_default();
        let health = limedb_testkit::http::request(
            &format!("127.0.0.1:{port}"),
            "GET",
            "/api/v1/health",
            &[],
            None,
        )
        .await
        .expect("health");
        // A coordinator whose (seed) shards are down answers 503: it serves, as asked.
        assert!(
            matches!(health.status, 200 | 503),
            "{args:?}: {}",
            health.status
        );
        drop(node);
    }
}
