//! Runs the load generator against a tiny in-process hyper server that
//! implements `set` and `get` over a `HashMap`, and against addresses where
//! nothing listens.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use limedb_bench::keys::ValuePool;
use limedb_bench::{run, BenchError, BenchOptions, KeyPattern, ValueKind, Workload};
use tokio::net::TcpListener;

type Store = Arc<Mutex<HashMap<String, Bytes>>>;
type TestResult = Result<(), Box<dyn std::error::Error>>;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(
    store: Store,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(respond(StatusCode::BAD_REQUEST, "bad body")),
    };
    let response = match (method, path.as_str()) {
        (Method::POST, "/api/v1/set") => {
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
            match parsed {
                Ok(json) => match (json["key"].as_str(), json["value"].as_str()) {
                    (Some(key), Some(value)) => {
                        if let Ok(mut map) = store.lock() {
                            map.insert(key.to_owned(), Bytes::copy_from_slice(value.as_bytes()));
                        }
                        respond(StatusCode::OK, "OK")
                    }
                    _ => respond(StatusCode::BAD_REQUEST, "missing key or value"),
                },
                Err(_) => respond(StatusCode::BAD_REQUEST, "bad json"),
            }
        }
        (Method::GET, p) if p.starts_with("/api/v1/get/") => {
            let raw = p.trim_start_matches("/api/v1/get/");
            let key = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
            let value = store
                .lock()
                .ok()
                .and_then(|map| map.get(key.as_ref()).cloned());
            match value {
                Some(value) => respond(StatusCode::OK, value),
                None => respond(StatusCode::NOT_FOUND, r#"{"error":"key not found"}"#),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "no route"),
    };
    Ok(response)
}

async fn start_server() -> Result<(SocketAddr, Store), std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let store: Store = Arc::default();
    let served = Arc::clone(&store);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = Arc::clone(&served);
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(Arc::clone(&store), request));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, store))
}

fn options(addr: SocketAddr, workload: Workload) -> BenchOptions {
    BenchOptions {
        url: format!("http://{addr}"),
        connections: 8,
        requests: 2_000,
        workload,
        keyspace: 500,
        value_size: 32,
        timeout_ms: 2_000,
        ..BenchOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_then_get_with_prefill_finds_every_key() -> TestResult {
    let (addr, store) = start_server().await?;

    let set = run(&options(addr, Workload::Set)).await?;
    assert_eq!(set.errors, 0, "{}", set.to_table());
    assert_eq!(set.requests, 2_000);
    assert_eq!(set.per_op["set"].requests, 2_000);
    assert!(!set.per_op.contains_key("get"));
    assert!(set.throughput_ops > 0.0);
    assert!(set.latency_us.p50 > 0.0 && set.latency_us.p99 >= set.latency_us.p50);
    {
        let map = store.lock().map_err(|e| e.to_string())?;
        assert!(
            map.len() > 400,
            "random SETs covered only {} keys",
            map.len()
        );
        let value = map.get("key:000000000007").ok_or("key 7 missing")?;
        assert_eq!(value.len(), 32);
        assert!(value.iter().all(u8::is_ascii_alphanumeric));
    }

    let get = run(&options(addr, Workload::Get)).await?;
    assert_eq!(get.errors, 0, "{}", get.to_table());
    assert_eq!(get.not_found, 0, "prefill must make every GET hit");
    assert_eq!(get.requests, 2_000);
    assert_eq!(get.per_op["get"].requests, 2_000);
    assert_eq!(store.lock().map_err(|e| e.to_string())?.len(), 500);

    let json: serde_json::Value = serde_json::from_str(&get.to_json())?;
    assert_eq!(json["workload"], "get");
    assert_eq!(json["per_op"]["get"]["not_found"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_values_are_stored_as_generated_and_distinct() -> TestResult {
    let (addr, store) = start_server().await?;
    // A GET run prefills every key once with the random values, then reads them.
    let get = run(&BenchOptions {
        value_kind: ValueKind::Random,
        requests: 500,
        ..options(addr, Workload::Get)
    })
    .await?;
    assert_eq!(get.errors, 0, "{}", get.to_table());
    assert_eq!(get.not_found, 0);

    let map = store.lock().map_err(|e| e.to_string())?;
    assert_eq!(map.len(), 500, "the prefill writes the whole keyspace");
    let pool = ValuePool::new(32, ValueKind::Random);
    for index in [0, 7, 499] {
        let key = limedb_bench::keys::key_string(index);
        let value = map.get(&key).ok_or(format!("{key} missing"))?;
        assert_eq!(value.as_ref(), pool.value(index), "{key}");
        assert!(value.iter().all(u8::is_ascii_alphanumeric));
    }
    let distinct: std::collections::HashSet<&Bytes> = map.values().collect();
    assert!(distinct.len() >= 495, "{} distinct values", distinct.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_without_prefill_counts_not_found_not_errors() -> TestResult {
    let (addr, _store) = start_server().await?;
    let report = run(&BenchOptions {
        prefill: false,
        requests: 300,
        ..options(addr, Workload::Get)
    })
    .await?;
    assert_eq!(report.errors, 0);
    assert_eq!(report.not_found, 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_sequential_with_warmup_splits_ops() -> TestResult {
    let (addr, _store) = start_server().await?;
    let report = run(&BenchOptions {
        key_pattern: KeyPattern::Sequential,
        warmup_requests: 200,
        ..options(addr, Workload::Mixed { read_percent: 70 })
    })
    .await?;
    assert_eq!(report.workload, "mixed:70");
    assert_eq!(report.errors, 0);
    assert_eq!(report.not_found, 0);
    let gets = report.per_op["get"].requests;
    let sets = report.per_op["set"].requests;
    assert_eq!(gets + sets, 2_000);
    assert!((1_200..1_600).contains(&gets), "gets = {gets}");
    Ok(())
}

#[tokio::test]
async fn unreachable_url_fails_fast_with_a_clear_error() -> TestResult {
    // Bind then drop a listener: the port is (almost certainly) closed now.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let started = Instant::now();
    let result = run(&BenchOptions {
        url: format!("http://{addr}"),
        ..BenchOptions::default()
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    match result {
        Err(error @ BenchError::Connect { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&addr.to_string()), "{message}");
            assert!(message.contains("server running"), "{message}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn https_and_garbage_urls_are_rejected_before_connecting() {
    let https = run(&BenchOptions {
        url: "https://127.0.0.1:1".into(),
        ..BenchOptions::default()
    })
    .await;
    assert!(matches!(https, Err(BenchError::UnsupportedScheme { .. })));
    let garbage = run(&BenchOptions {
        url: "localhost 8080".into(),
        ..BenchOptions::default()
    })
    .await;
    assert!(matches!(garbage, Err(BenchError::InvalidUrl { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_always_fails_aborts_the_run() -> TestResult {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<Incoming>| async {
                    Ok::<_, Infallible>(respond(StatusCode::INTERNAL_SERVER_ERROR, "nope"))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let result = run(&options(addr, Workload::Set)).await;
    match result {
        Err(BenchError::TooManyErrors {
            errors, last_error, ..
        }) => {
            assert!(errors > 20);
            assert!(last_error.contains("500"), "{last_error}");
        }
        other => panic!("expected TooManyErrors, got {other:?}"),
    }
    Ok(())
}
