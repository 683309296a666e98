//! Client authentication with real processes: three shards and a coordinator started with
//! `--requirepass` and a configuration file holding a read-only and a read-write user (their
//! hashes made by `limedb hash-password`). Over RESP (redis-cli and the `redis` crate) and HTTP,
//! on the coordinator and on a shard: nothing without credentials, Redis's exact errors for
//! wrong ones, each user within its permission, and refusals counted in `/metrics`. Needs
//! `redis-cli` (Debian's redis-tools; `scripts/test.sh` installs it).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use limedb_testkit::Cluster;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

const PASSWORD: &str = "s3cret pass";

/// `limedb hash-password` of `password`.
fn hash(password: &str) -> String {
    let mut child = Command::new(bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("limedb hash-password runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(password), "the hash holds no password");
    hash
}

/// One HTTP/1.1 exchange on a new connection: status and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// redis-cli against `addr` with `auth` arguments: its stdout, trimmed.
fn redis_cli(addr: &str, auth: &[&str], command: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port, "--no-auth-warning"])
        .args(auth)
        .args(command)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install redis-tools"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_and_stay_within_their_permission() {
    let dir = limedb_testkit::temp_dir();
    let config = dir.path().join("limedb.toml");
    std::fs::write(
        &config,
        format!(
            "[[users]]\nname = \"reader\"\npassword_hash = \"{}\"\npermission = \"read\"\n\n\
             [[users]]\nname = \"writer\"\npassword_hash = \"{}\"\npermission = \"read-write\"\n",
            hash("r-pass"),
            hash("w-pass")
        ),
    )
    .expect("write config");
    let config = config.to_string_lossy().to_string();
    let auth = ["--config", &config, "--requirepass", PASSWORD];
    let shard_args = [&auth[..], &["--resp-port", "0"]].concat();
    let coordinator_args = [&auth[..], &["--resp-port", "0"]].concat();
    let cluster = Cluster::start(bin(), 3, &shard_args, &coordinator_args).await;
    let nodes = [&cluster.coordinator, &cluster.shards[0]];

    for node in nodes {
        let addr = node.http_addr();
        let resp = node.ready.get("resp").expect("a RESP listener").clone();

        // HTTP: the health probe is open; everything else needs credentials.
        assert_eq!(http(&addr, "GET", "/api/v1/health", None, "").await.0, 200);
        let (status, body) = http(&addr, "GET", "/api/v1/get/k", None, "").await;
        assert_eq!(status, 401, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(doc["error"], "unauthorized", "{doc}");
        let bearer = format!("Bearer {PASSWORD}");
        let set = r#"{"key": "k", "value": "v1"}"#;
        assert_eq!(
            http(&addr, "POST", "/api/v1/set", Some(&bearer), set)
                .await
                .0,
            200
        );
        assert_eq!(
            http(&addr, "GET", "/api/v1/get/k", Some(&bearer), "").await,
            (200, "v1".to_string())
        );
        let wrong = basic("default", "nope");
        assert_eq!(
            http(&addr, "GET", "/api/v1/get/k", Some(&wrong), "")
                .await
                .0,
            401
        );
        assert_eq!(
            http(&addr, "GET", "/metrics", Some("Digest x"), "").await.0,
            401
        );
        // The reader reads and may not write; the writer writes and may not administer.
        let reader = basic("reader", "r-pass");
        assert_eq!(
            http(&addr, "GET", "/api/v1/get/k", Some(&reader), "").await,
            (200, "v1".to_string())
        );
        let (status, body) = http(&addr, "POST", "/api/v1/set", Some(&reader), set).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("forbidden") && body.contains("read-write"),
            "{body}"
        );
        let writer = basic("writer", "w-pass");
        let set2 = r#"{"key": "k", "value": "v2"}"#;
        assert_eq!(
            http(&addr, "POST", "/api/v1/set", Some(&writer), set2)
                .await
                .0,
            200
        );
        let (status, body) = http(&addr, "GET", "/api/v1/admin/moves", Some(&writer), "").await;
        assert_eq!(status, 403, "{body}");

        // RESP with redis-cli: NOAUTH, WRONGPASS and NOPERM as Redis words them.
        assert_eq!(
            redis_cli(&resp, &[], &["get", "k"]),
            "NOAUTH Authentication required."
        );
        assert_eq!(redis_cli(&resp, &["-a", PASSWORD], &["get", "k"]), "v2");
        assert_eq!(
            redis_cli(&resp, &[], &["auth", "wrong"]),
            "WRONGPASS invalid username-password pair or user is disabled."
        );
        let as_reader = ["--user", "reader", "--pass", "r-pass"];
        assert_eq!(redis_cli(&resp, &as_reader, &["get", "k"]), "v2");
        assert_eq!(
            redis_cli(&resp, &as_reader, &["set", "k", "x"]),
            "NOPERM this user has no permissions to run the 'set' command"
        );
        assert_eq!(redis_cli(&resp, &as_reader, &["acl", "whoami"]), "reader");
        let as_writer = ["--user", "writer", "--pass", "w-pass"];
        assert_eq!(
            redis_cli(&resp, &as_writer, &["flushall"]),
            "NOPERM this user has no permissions to run the 'flushall' command"
        );

        // The redis crate's URL forms, and HELLO 3 AUTH on a fresh connection.
        let url = format!("redis://writer:w-pass@{resp}/");
        let mut conn = redis::Client::open(url)
            .expect("client")
            .get_connection()
            .expect("the writer connects");
        let () = redis::cmd("SET")
            .arg("k")
            .arg("v3")
            .query(&mut conn)
            .expect("the writer writes");
        let url = format!("redis://:{}@{resp}/", PASSWORD.replace(' ', "%20"));
        let mut conn = redis::Client::open(url)
            .expect("client")
            .get_connection()
            .expect("the default user connects");
        let got: String = redis::cmd("GET").arg("k").query(&mut conn).expect("get");
        assert_eq!(got, "v3");
        let mut conn = redis::Client::open(format!("redis://{resp}/"))
            .expect("client")
            .get_connection()
            .expect("connects without credentials");
        let err = redis::cmd("HELLO")
            .arg(3)
            .query::<redis::Value>(&mut conn)
            .expect_err("HELLO without AUTH");
        assert!(err.to_string().contains("HELLO must be called"), "{err}");
        let hello: redis::Value = redis::cmd("HELLO")
            .arg(3)
            .arg("AUTH")
            .arg("reader")
            .arg("r-pass")
            .query(&mut conn)
            .expect("HELLO 3 AUTH");
        assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");
        let whoami: String = redis::cmd("ACL")
            .arg("WHOAMI")
            .query(&mut conn)
            .expect("whoami");
        assert_eq!(whoami, "reader");
        // Who a connection is changes only outside a transaction.
        let () = redis::cmd("MULTI").query(&mut conn).expect("multi");
        let err = redis::cmd("AUTH")
            .arg("writer")
            .arg("w-pass")
            .query::<()>(&mut conn)
            .expect_err("AUTH inside MULTI");
        assert!(err.to_string().contains("inside MULTI"), "{err}");
        let err = redis::cmd("EXEC")
            .query::<redis::Value>(&mut conn)
            .expect_err("the transaction is aborted");
        assert!(err.to_string().contains("Transaction discarded"), "{err}");
        let whoami: String = redis::cmd("ACL")
            .arg("WHOAMI")
            .query(&mut conn)
            .expect("whoami");
        assert_eq!(whoami, "reader");

        // Refusals are counted.
        let (_, metrics) = http(&addr, "GET", "/metrics", Some(&bearer), "").await;
        let failures: f64 = metrics
            .lines()
            .find(|l| l.starts_with("limedb_auth_failures "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("limedb_auth_failures in /metrics");
        // The wrong basic password and the wrong AUTH (a missing header is no attempt).
        assert_eq!(failures, 2.0);
        assert!(!metrics.contains(PASSWORD), "no password in the metrics");
    }
    // `limedb admin` sends the password it is given (from the environment here).
    let admin = |env: &[(&str, &str)]| {
        let out = Command::new(bin())
            .args([
                "admin",
                "--coordinator",
                &format!("http://{}", cluster.addr()),
                "status",
            ])
            .env_remove("LIMEDB_PASSWORD")
            .env_remove("LIMEDB_USER")
            .envs(env.iter().copied())
            .output()
            .expect("limedb admin runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = admin(&[]);
    assert!(!ok && text.contains("401"), "{text}");
    let (ok, text) = admin(&[("LIMEDB_PASSWORD", PASSWORD)]);
    assert!(ok, "{text}");
    assert!(text.contains("shard 1"), "{text}");
    let (ok, text) = admin(&[("LIMEDB_USER", "reader"), ("LIMEDB_PASSWORD", "r-pass")]);
    assert!(ok, "status reads: {text}");
    // `limedb bench` takes the credentials in its URL; without them every request fails.
    let bench = |url: String| {
        let out = Command::new(bin())
            .args([
                "bench", "--url", &url, "-c", "2", "-n", "400", "-w", "mixed",
            ])
            .args(["--keyspace", "50", "--no-prefill", "--json"])
            .output()
            .expect("limedb bench runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_default();
        (report, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (report, err) = bench(format!("http://writer:w-pass@{}", cluster.addr()));
    assert_eq!(report["errors"], 0, "{report} {err}");
    assert_eq!(report["requests"], 400, "{report} {err}");
    let (report, err) = bench(format!("http://{}", cluster.addr()));
    assert!(
        report["errors"].as_u64().is_some_and(|e| e > 0) || !err.is_empty(),
        "{report} {err}"
    );
    // Writes through the coordinator reached the shards over the internal protocol.
    let logs = std::fs::read_dir(cluster.dir.path()).expect("logs");
    for log in logs.flatten() {
        if log.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            assert!(
                !text.contains(PASSWORD),
                "{} logs the password",
                log.path().display()
            );
            assert!(!text.contains("r-pass") && !text.contains("w-pass"));
        }
    }
}

#[test]
fn a_node_refuses_a_user_file_with_a_plain_password() {
    let dir = limedb_testkit::temp_dir();
    let config = dir.path().join("limedb.toml");
    std::fs::write(
        &config,
        "[[users]]\nname = \"app\"\npassword_hash = \"hunter2\"\npermission = \"read\"\n",
    )
    .expect("write config");
    let out = Command::new(bin())
        .args([
            "--config",
            &config.to_string_lossy(),
            "shard",
            "--port",
            "0",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limedb hash-password"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the refusal does not echo the value: {err}"
    );
}
