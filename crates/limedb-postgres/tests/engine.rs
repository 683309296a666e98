//! The PostgreSQL engine against a real server: the `Engine` contract (upserts, delete flags,
//! expiry, ordering, paging, batches), database creation races, start-up errors, and an outage
//! of a private server that the test stops and restarts.

use std::time::{Duration, Instant};

use limedb_postgres::{PgEngine, PgOptions};
use limedb_storage::{now_ms, Engine, Health, StorageError, WriteOp};
use limedb_testkit::pg::{test_url, PrivatePostgres, TestDatabases};
use limedb_testkit::wait_until;

fn open(dbs: &TestDatabases, id: u32) -> PgEngine {
    PgEngine::open(PgOptions::new(dbs.url(), dbs.name(id))).expect("open the engine")
}

#[test]
fn the_engine_contract_holds_on_postgres() {
    let dbs = TestDatabases::new(&test_url());
    let engine = open(&dbs, 1);
    assert_eq!(engine.len().expect("len"), 0);
    assert_eq!(engine.get(b"k").expect("get"), None);

    engine.put(b"k", b"v1", None).expect("put");
    engine.put(b"k", b"v2", None).expect("upsert");
    let v = engine.get(b"k").expect("get").expect("present");
    assert_eq!((v.data.as_ref(), v.expires_at_ms), (&b"v2"[..], None));

    // Expiry: a past expiry reads as absent and a delete of it reports "not there".
    engine
        .put(b"gone", b"x", Some(now_ms().saturating_sub(1)))
        .expect("put");
    assert_eq!(engine.get(b"gone").expect("get"), None);
    assert!(!engine.delete(b"gone").expect("delete expired"));
    let later = now_ms() + 60_000;
    engine.put(b"ttl", b"y", Some(later)).expect("put");
    assert_eq!(
        engine.get(b"ttl").expect("get").map(|v| v.expires_at_ms),
        Some(Some(later))
    );

    assert!(engine.delete(b"k").expect("delete"));
    assert!(!engine.delete(b"k").expect("delete again"));

    // Bytewise key order, including bytes that are not UTF-8.
    for key in [&b"\xff"[..], b"\x00a", b"b", b"a\x00", b"a"] {
        engine.put(key, key, None).expect("put");
    }
    let page = engine.page(0, 100).expect("page");
    let keys: Vec<&[u8]> = page.entries.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(
        keys,
        vec![&b"\x00a"[..], b"a", b"a\x00", b"b", b"ttl", b"\xff"]
    );
    assert_eq!(page.total, 6);
    let page = engine.page(2, 2).expect("page");
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.entries[0].0.as_ref(), b"a\x00");
    assert_eq!(page.total, 6);
    let scanned = engine.scan(Some(b"b"), 2).expect("scan");
    assert_eq!(scanned.len(), 2);
    assert_eq!(scanned[0].0.as_ref(), b"b");
    assert_eq!(engine.scan(None, 1).expect("scan")[0].0.as_ref(), b"\x00a");
    assert_eq!(engine.len().expect("len"), 6);

    // A batch applies in order with per-op answers.
    let flags = engine
        .write_many(&[
            WriteOp::Put {
                key: b"batch",
                value: b"1",
                expires_at_ms: None,
            },
            WriteOp::Delete { key: b"batch" },
            WriteOp::Delete { key: b"batch" },
            WriteOp::Put {
                key: b"batch",
                value: b"2",
                expires_at_ms: None,
            },
        ])
        .expect("batch");
    assert_eq!(flags, vec![false, true, false, false]);
    assert_eq!(
        engine.get(b"batch").expect("get").map(|v| v.data),
        Some("2".into())
    );
    assert_eq!(engine.health(), Health::Healthy);
    engine.close().expect("close");
    assert!(matches!(engine.get(b"batch"), Err(StorageError::Closed)));

    // Reopening finds the database and its data.
    let engine = open(&dbs, 1);
    assert_eq!(engine.len().expect("len"), 7);
    engine.close().expect("close");
}

#[test]
fn expired_rows_are_deleted_in_the_background() {
    let dbs = TestDatabases::new(&test_url());
    let engine = open(&dbs, 1);
    engine
        .put(b"short", b"v", Some(now_ms() + 100))
        .expect("put");
    engine.put(b"long", b"v", None).expect("put");
    wait_until(
        Duration::from_secs(10),
        "the expired row to be reclaimed",
        || engine.stats().expired_reclaimed > 0,
    );
    assert_eq!(engine.len().expect("len"), 1);
    engine.close().expect("close");
}

#[test]
fn shards_creating_their_databases_at_once_all_succeed() {
    let dbs = TestDatabases::new(&test_url());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let url = dbs.url().to_string();
            // Two engines per database: the creation race on the same name.
            let name = dbs.name(i / 2);
            std::thread::spawn(move || PgEngine::open(PgOptions::new(url, name)))
        })
        .collect();
    for t in threads {
        let engine = t.join().expect("thread").expect("open during a race");
        engine.put(b"k", b"v", None).expect("put");
        engine.close().expect("close");
    }
}

#[test]
fn wrong_credentials_and_a_missing_server_fail_to_open_with_the_cause() {
    let mut server = PrivatePostgres::start().expect("private postgres");
    let err = PgEngine::open(PgOptions::new(
        server.url_with_wrong_password(),
        "limedb_shard_1",
    ))
    .expect_err("wrong password");
    let message = err.to_string();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{message}");
    assert!(message.contains("PostgreSQL"), "{message}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );

    let url = server.url();
    server.stop("fast").expect("stop");
    let started = Instant::now();
    let err = PgEngine::open(PgOptions::new(url, "limedb_shard_1")).expect_err("no server");
    assert!(started.elapsed() < Duration::from_secs(5));
    let message = err.to_string();
    assert!(message.contains("PostgreSQL is unavailable"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", server.port())),
        "{message}"
    );

    let err = PgEngine::open(PgOptions::new("mysql://nope", "limedb_shard_1")).expect_err("url");
    assert!(matches!(err, StorageError::Config(_)), "{err}");
}

#[test]
fn an_outage_fails_fast_reports_unhealthy_and_recovers_without_losing_writes() {
    let mut server = PrivatePostgres::start().expect("private postgres");
    let mut options = PgOptions::new(server.url(), "limedb_shard_1");
    options.timeout = Duration::from_millis(1000);
    options.health_interval = Duration::from_millis(100);
    let engine = PgEngine::open(options).expect("open");
    for i in 0..100u32 {
        engine
            .put(format!("k{i}").as_bytes(), &i.to_le_bytes(), None)
            .expect("put");
    }

    // A crash: no checkpoint, so the acknowledged writes come back from PostgreSQL's WAL.
    server.stop("immediate").expect("stop");
    let started = Instant::now();
    let err = engine.get(b"k1").expect_err("no server");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
    assert!(engine.put(b"during", b"x", None).is_err());
    match engine.health() {
        Health::Unavailable { reason } => assert!(!reason.is_empty()),
        Health::Healthy => panic!("healthy while the server is down"),
    }

    server.start_again().expect("restart");
    wait_until(Duration::from_secs(20), "health to come back", || {
        engine.health() == Health::Healthy
    });
    for i in 0..100u32 {
        let v = engine
            .get(format!("k{i}").as_bytes())
            .expect("get after recovery")
            .expect("acknowledged write survived");
        assert_eq!(v.data.as_ref(), &i.to_le_bytes());
    }
    assert_eq!(engine.get(b"during").expect("get"), None);
    engine.put(b"after", b"y", None).expect("writes work again");
    engine.close().expect("close");
}
