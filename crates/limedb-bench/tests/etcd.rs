//! `--target etcd`: the load generator against an in-process fake of etcd's
//! HTTP/JSON gateway (always runs), and against a real single-member etcd
//! when an `etcd` binary is on `PATH` (Debian: `apt-get install etcd-server`;
//! skipped with a message otherwise).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use limedb_bench::client::{Client, Op, Outcome, RequestParts};
use limedb_bench::keys::ValuePool;
use limedb_bench::{etcd, run, Api, BenchError, BenchOptions, Target, ValueKind, Workload};
use tokio::net::TcpListener;

/// Base64 key → base64 value, as the fake gateway stores them.
type Store = Arc<Mutex<HashMap<String, String>>>;
type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `key:000000000007` in base64, written out independently of the encoder.
const KEY_7_BASE64: &str = "a2V5OjAwMDAwMDAwMDAwNw==";

const HEADER: &str = r#"{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"}"#;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn invalid(message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": message, "message": message, "code": 3});
    respond(StatusCode::BAD_REQUEST, body.to_string())
}

/// What etcd 3.4's gateway answers, minus revisions: the same JSON shapes.
async fn gateway(
    store: Store,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(invalid("bad body")),
    };
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(json) => json,
        Err(_) => return Ok(invalid("bad json")),
    };
    let response = match (method, path.as_str()) {
        (Method::POST, "/v3/kv/put") => match (json["key"].as_str(), json["value"].as_str()) {
            (Some(key), Some(value)) => {
                if let Ok(mut map) = store.lock() {
                    map.insert(key.to_owned(), value.to_owned());
                }
                respond(StatusCode::OK, format!(r#"{{"header":{HEADER}}}"#))
            }
            _ => invalid("etcdserver: key is not provided"),
        },
        (Method::POST, "/v3/kv/range") => match json["key"].as_str() {
            Some(key) => {
                let value = store.lock().ok().and_then(|map| map.get(key).cloned());
                match value {
                    Some(value) => respond(
                        StatusCode::OK,
                        format!(
                            r#"{{"header":{HEADER},"kvs":[{{"key":"{key}","create_revision":"2","mod_revision":"2","version":"1","value":"{value}"}}],"count":"1"}}"#
                        ),
                    ),
                    None => respond(StatusCode::OK, format!(r#"{{"header":{HEADER}}}"#)),
                }
            }
            None => invalid("etcdserver: key is not provided"),
        },
        _ => respond(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    Ok(response)
}

async fn start_fake_gateway() -> Result<(SocketAddr, Store), std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let store: Store = Arc::default();
    let served = Arc::clone(&store);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = Arc::clone(&served);
            tokio::spawn(async move {
                let service = service_fn(move |request| gateway(Arc::clone(&store), request));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, store))
}

fn options(url: String, workload: Workload) -> BenchOptions {
    BenchOptions {
        url,
        api: Api::Etcd,
        connections: 8,
        requests: 2_000,
        workload,
        keyspace: 500,
        value_size: 32,
        timeout_ms: 5_000,
        ..BenchOptions::default()
    }
}

fn base64(input: &[u8]) -> String {
    let mut out = BytesMut::new();
    etcd::write_base64(&mut out, input);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_gateway_set_then_get_finds_every_key() -> TestResult {
    let (addr, store) = start_fake_gateway().await?;
    let url = format!("http://{addr}");

    let set = run(&options(url.clone(), Workload::Set)).await?;
    assert_eq!(set.errors, 0, "{}", set.to_table());
    assert_eq!(set.per_op["set"].requests, 2_000);
    assert_eq!(set.target, "etcd");
    {
        let map = store.lock().map_err(|e| e.to_string())?;
        assert!(
            map.len() > 400,
            "random puts covered only {} keys",
            map.len()
        );
        let value = map.get(KEY_7_BASE64).ok_or("key 7 missing")?;
        assert_eq!(
            *value,
            base64(ValuePool::new(32, ValueKind::Repeating).value(7))
        );
    }

    let get = run(&options(url, Workload::Get)).await?;
    assert_eq!(get.errors, 0, "{}", get.to_table());
    assert_eq!(
        get.not_found, 0,
        "prefill must make every range find its key"
    );
    assert_eq!(get.per_op["get"].requests, 2_000);
    assert_eq!(store.lock().map_err(|e| e.to_string())?.len(), 500);
    let json: serde_json::Value = serde_json::from_str(&get.to_json())?;
    assert_eq!(json["target"], "etcd");
    assert!(get.to_table().contains("target       etcd"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_gateway_with_random_values() -> TestResult {
    let (addr, store) = start_fake_gateway().await?;
    let url = format!("http://{addr}");
    let random = |workload| BenchOptions {
        value_kind: ValueKind::Random,
        ..options(url.clone(), workload)
    };

    let set = run(&random(Workload::Set)).await?;
    assert_eq!(set.errors, 0, "{}", set.to_table());
    {
        let map = store.lock().map_err(|e| e.to_string())?;
        let value = map.get(KEY_7_BASE64).ok_or("key 7 missing")?;
        assert_eq!(
            *value,
            base64(ValuePool::new(32, ValueKind::Random).value(7))
        );
        assert_ne!(
            *value,
            base64(ValuePool::new(32, ValueKind::Repeating).value(7))
        );
        let distinct: std::collections::HashSet<&String> = map.values().collect();
        assert!(
            distinct.len() + 5 >= map.len(),
            "{} distinct values for {} keys",
            distinct.len(),
            map.len()
        );
    }

    let get = run(&random(Workload::Get)).await?;
    assert_eq!(get.errors, 0, "{}", get.to_table());
    assert_eq!(get.not_found, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_gateway_ranges_of_absent_keys_count_not_found_not_errors() -> TestResult {
    let (addr, _store) = start_fake_gateway().await?;
    let report = run(&BenchOptions {
        prefill: false,
        requests: 300,
        ..options(format!("http://{addr}"), Workload::Get)
    })
    .await?;
    assert_eq!(report.errors, 0);
    assert_eq!(report.not_found, 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_gateway_mixed_with_warmup() -> TestResult {
    let (addr, _store) = start_fake_gateway().await?;
    let report = run(&BenchOptions {
        warmup_requests: 200,
        ..options(
            format!("http://{addr}"),
            Workload::Mixed { read_percent: 50 },
        )
    })
    .await?;
    assert_eq!(report.errors, 0);
    assert_eq!(report.not_found, 0);
    assert_eq!(
        report.per_op["get"].requests + report.per_op["set"].requests,
        2_000
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_in_etcd_mode_is_an_error_not_an_absent_key() -> TestResult {
    // A server without the gateway's routes (LimeDB, or a wrong path prefix).
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<Incoming>| async {
                    Ok::<_, Infallible>(respond(StatusCode::NOT_FOUND, "404 page not found\n"))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let result = run(&BenchOptions {
        prefill: false,
        ..options(format!("http://{addr}"), Workload::Get)
    })
    .await;
    match result {
        Err(BenchError::TooManyErrors { last_error, .. }) => {
            assert!(last_error.contains("404"), "{last_error}");
        }
        other => panic!("expected TooManyErrors, got {other:?}"),
    }
    Ok(())
}

/// A single-member etcd on ephemeral ports, killed and its data removed on drop.
struct Etcd {
    child: Child,
    dir: PathBuf,
    client_addr: SocketAddr,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Etcd {
    /// Whether an `etcd` binary can be run.
    fn installed() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Two distinct ports that were free a moment ago.
    fn free_ports() -> std::io::Result<(u16, u16)> {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let b = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok((a.local_addr()?.port(), b.local_addr()?.port()))
    }

    fn spawn() -> std::io::Result<Etcd> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("limedb-bench-etcd-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (client_port, peer_port) = Etcd::free_ports()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = File::create(dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Etcd {
            child,
            dir,
            client_addr: SocketAddr::from(([127, 0, 0, 1], client_port)),
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2_000);
        log.get(start..).unwrap_or(&log).to_owned()
    }

    /// Polls with a range until the gateway answers one (`true`), or until
    /// the process exits (`false`).
    async fn ready(&mut self, deadline: Duration) -> Result<bool, Box<dyn std::error::Error>> {
        let target = Target::parse(&self.url())?;
        let parts = RequestParts::new(
            Api::Etcd,
            &target,
            8,
            ValueKind::Repeating,
            Duration::from_millis(1_000),
        );
        let started = Instant::now();
        while started.elapsed() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            if let Ok(mut client) = Client::connect(self.client_addr, Arc::clone(&parts)).await {
                let (outcome, _) = client.request(Op::Get, 0).await;
                if matches!(outcome, Outcome::Ok | Outcome::NotFound) {
                    return Ok(true);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "etcd did not answer within {deadline:?}; its log:\n{}",
            self.log_tail()
        )
        .into())
    }

    /// Starts etcd and waits until it answers; retries with new ports if
    /// another process took one meanwhile (etcd then exits at once).
    async fn start() -> Result<Etcd, Box<dyn std::error::Error>> {
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut etcd = Etcd::spawn()?;
            if etcd.ready(Duration::from_secs(30)).await? {
                return Ok(etcd);
            }
            last_log = etcd.log_tail();
        }
        Err(format!("etcd exited before answering; its log:\n{last_log}").into())
    }
}

/// POSTs a range for `key_base64` with a plain hyper client and returns the answer.
async fn range(
    addr: SocketAddr,
    key_base64: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = format!(r#"{{"key":"{key_base64}"}}"#);
    let request = Request::post("/v3/kv/range")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_etcd_set_then_get_finds_every_key() -> TestResult {
    if !Etcd::installed() {
        eprintln!(
            "skipped real_etcd_set_then_get_finds_every_key: no `etcd` binary on PATH \
             (Debian: apt-get install etcd-server)"
        );
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let url = etcd.url();

    // A fresh member has no keys: every range is "not found", none an error.
    let absent = run(&BenchOptions {
        prefill: false,
        requests: 200,
        ..options(url.clone(), Workload::Get)
    })
    .await?;
    assert_eq!(absent.errors, 0, "{}", absent.to_table());
    assert_eq!(absent.not_found, 200);

    let set = run(&options(url.clone(), Workload::Set)).await?;
    assert_eq!(set.errors, 0, "{}", set.to_table());
    assert_eq!(set.per_op["set"].requests, 2_000);

    let get = run(&options(url, Workload::Get)).await?;
    assert_eq!(get.errors, 0, "{}", get.to_table());
    assert_eq!(
        get.not_found, 0,
        "prefill must make every range find its key"
    );
    assert_eq!(get.per_op["get"].requests, 2_000);
    assert_eq!(get.target, "etcd");

    // etcd decoded the key and value: the key named in independently written
    // base64 holds the value the prefill wrote.
    let answer = range(etcd.client_addr, KEY_7_BASE64).await?;
    assert_eq!(answer["count"], "1", "{answer}");
    assert_eq!(answer["kvs"][0]["key"], KEY_7_BASE64);
    assert_eq!(
        answer["kvs"][0]["value"],
        base64(ValuePool::new(32, ValueKind::Repeating).value(7))
    );

    // Random values go through base64 and back the same way.
    let set = run(&BenchOptions {
        value_kind: ValueKind::Random,
        ..options(etcd.url(), Workload::Set)
    })
    .await?;
    assert_eq!(set.errors, 0, "{}", set.to_table());
    let answer = range(etcd.client_addr, KEY_7_BASE64).await?;
    assert_eq!(
        answer["kvs"][0]["value"],
        base64(ValuePool::new(32, ValueKind::Random).value(7)),
        "{answer}"
    );
    Ok(())
}
