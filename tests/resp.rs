//! The RESP listener of a shard, with a real `limedb shard` process and the `redis` crate (and
//! raw sockets where the exact bytes matter): Redis's replies and error texts, pipelining,
//! expiry, atomic read-modify-write under concurrency (RESP and HTTP together), RESP3, bad input,
//! idle timeouts, and data shared with the HTTP API byte for byte.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use limedb_testkit::pg::{backend_args, TestDatabases};
use limedb_testkit::{http, start_shard, temp_dir, Node};
use redis::{Commands, RedisResult, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

struct Shard {
    node: Node,
    _dir: tempfile::TempDir,
    _databases: Option<TestDatabases>,
}

impl Shard {
    fn start(extra: &[&str]) -> Shard {
        Shard::start_on("lsm", extra)
    }

    /// A shard on backend `storage` ("lsm", "memory" or "postgres").
    fn start_on(storage: &str, extra: &[&str]) -> Shard {
        let dir = temp_dir();
        let (backend, databases) = backend_args(storage);
        let mut args = vec!["--resp-port", "0"];
        args.extend_from_slice(extra);
        args.extend(backend.iter().map(String::as_str));
        let node = start_shard(bin(), dir.path(), 1, "0", &args);
        Shard {
            node,
            _dir: dir,
            _databases: databases,
        }
    }

    fn resp_addr(&self) -> String {
        resp_addr(&self.node)
    }

    fn client(&self) -> redis::Connection {
        connect(&self.resp_addr())
    }

    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(self.resp_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }
}

/// The RESP address a node announced in its ready line.
fn resp_addr(node: &Node) -> String {
    node.ready
        .get("resp")
        .cloned()
        .expect("resp= in the ready line")
}

/// A `redis` crate connection to `addr`.
fn connect(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .expect("client")
        .get_connection()
        .expect("connect")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sends `input` and reads until `expected.len()` bytes arrived (or the peer closed).
fn exchange(stream: &mut TcpStream, input: &[u8], expected_len: usize) -> Vec<u8> {
    stream.write_all(input).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < expected_len {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    got
}

/// Whether the peer closed the connection (read returns 0 within the read timeout).
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0))
}

/// Runs the command `words` (name first) and converts its reply; panics, failing the test,
/// on an error reply.
fn run<T: redis::FromRedisValue>(c: &mut impl redis::ConnectionLike, words: &[&str]) -> T {
    let mut cmd = redis::cmd(words.first().copied().unwrap_or("PING"));
    for word in words.iter().skip(1) {
        cmd.arg(*word);
    }
    cmd.query(c).unwrap_or_else(|e| panic!("{words:?}: {e}"))
}

fn err_text<T: std::fmt::Debug>(r: RedisResult<T>) -> String {
    let e = r.expect_err("an error reply");
    // The redis crate splits "CODE detail"; put it back together.
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

fn string_commands_follow_redis_semantics(storage: &str) {
    let shard = Shard::start_on(storage, &[]);
    let mut c = shard.client();
    let pong: String = run(&mut c, &["PING"]);
    assert_eq!(pong, "PONG");
    let _: () = c.set("k", "v").expect("set");
    assert_eq!(
        c.get::<_, Option<String>>("k").expect("get").as_deref(),
        Some("v")
    );
    // SET options: NX/XX/GET/KEEPTTL.
    let r: Option<String> = run(&mut c, &["SET", "k", "w", "NX"]);
    assert_eq!(r, None);
    let r: Option<String> = run(&mut c, &["SET", "k", "w", "XX", "GET"]);
    assert_eq!(r.as_deref(), Some("v"));
    let r: Option<String> = run(&mut c, &["SET", "absent", "x", "XX"]);
    assert_eq!(r, None);
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("1")
        .arg("EX")
        .arg(100)
        .query(&mut c)
        .expect("ex");
    let _: () = run(&mut c, &["SET", "t", "2", "KEEPTTL"]);
    let ttl: i64 = c.ttl("t").expect("ttl");
    assert!((99..=100).contains(&ttl), "KEEPTTL kept the ttl: {ttl}");
    let _: () = c.set("t", "3").expect("set");
    assert_eq!(
        c.ttl::<_, i64>("t").expect("ttl"),
        -1,
        "a plain SET clears the ttl"
    );
    assert_eq!(c.ttl::<_, i64>("nope").expect("ttl"), -2);
    // Counters.
    assert_eq!(c.incr::<_, _, i64>("n", 1).expect("incr"), 1);
    assert_eq!(c.incr::<_, _, i64>("n", 41).expect("incrby"), 42);
    assert_eq!(c.decr::<_, _, i64>("n", 2).expect("decrby"), 40);
    let f: String = run(&mut c, &["INCRBYFLOAT", "f", "10.5"]);
    assert_eq!(f, "10.5");
    let f: String = run(&mut c, &["INCRBYFLOAT", "f", "0.1"]);
    assert_eq!(f, "10.6");
    let _: () = c.set("big", i64::MAX).expect("set");
    assert_eq!(
        err_text(c.incr::<_, _, i64>("big", 1)),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(
        err_text(c.incr::<_, _, i64>("k", 1)),
        "ERR value is not an integer or out of range"
    );
    // APPEND / STRLEN / GETRANGE / SETRANGE.
    assert_eq!(c.append::<_, _, i64>("s", "Hello").expect("append"), 5);
    assert_eq!(c.append::<_, _, i64>("s", " World").expect("append"), 11);
    assert_eq!(c.strlen::<_, i64>("s").expect("strlen"), 11);
    assert_eq!(
        c.getrange::<_, String>("s", -5, -1).expect("getrange"),
        "World"
    );
    assert_eq!(c.setrange::<_, _, i64>("pad", 3, "x").expect("setrange"), 4);
    assert_eq!(c.get::<_, Vec<u8>>("pad").expect("get"), b"\0\0\0x");
    // GETSET / GETDEL / GETEX.
    assert_eq!(
        c.getset::<_, _, String>("s", "new").expect("getset"),
        "Hello World"
    );
    let gd: Option<String> = run(&mut c, &["GETDEL", "s"]);
    assert_eq!(gd.as_deref(), Some("new"));
    assert!(!c.exists::<_, bool>("s").expect("exists"));
    let _: () = c.set("g", "1").expect("set");
    let _: String = redis::cmd("GETEX")
        .arg("g")
        .arg("PX")
        .arg(50_000)
        .query(&mut c)
        .expect("getex");
    let pttl: i64 = c.pttl("g").expect("pttl");
    assert!(pttl > 49_000 && pttl <= 50_000, "{pttl}");
    let _: String = run(&mut c, &["GETEX", "g", "PERSIST"]);
    assert_eq!(c.pttl::<_, i64>("g").expect("pttl"), -1);
    // Multi-key.
    let _: () = run(&mut c, &["MSET", "a", "1", "b", "2"]);
    let got: Vec<Option<String>> = run(&mut c, &["MGET", "a", "zz", "b"]);
    assert_eq!(got, vec![Some("1".into()), None, Some("2".into())]);
    let n: i64 = run(&mut c, &["MSETNX", "a", "9", "c", "3"]);
    assert_eq!(n, 0);
    assert!(
        !c.exists::<_, bool>("c").expect("exists"),
        "MSETNX set nothing"
    );
    let n: i64 = run(&mut c, &["EXISTS", "a", "a", "zz"]);
    assert_eq!(n, 2);
    let n: i64 = run(&mut c, &["DEL", "a", "b", "zz"]);
    assert_eq!(n, 2);
    // RENAME / RENAMENX / COPY / TYPE.
    let _: () = redis::cmd("SET")
        .arg("r")
        .arg("x")
        .arg("PX")
        .arg(60_000)
        .query(&mut c)
        .expect("set");
    let _: () = c.rename("r", "r2").expect("rename");
    assert!(
        c.pttl::<_, i64>("r2").expect("pttl") > 59_000,
        "RENAME keeps the ttl"
    );
    assert_eq!(err_text(c.rename::<_, _, ()>("r", "r3")), "ERR no such key");
    let n: i64 = run(&mut c, &["COPY", "r2", "r4"]);
    assert_eq!(n, 1);
    let n: i64 = run(&mut c, &["COPY", "r2", "r4"]);
    assert_eq!(n, 0);
    let t: String = run(&mut c, &["TYPE", "r4"]);
    assert_eq!(t, "string");
    let t: String = run(&mut c, &["TYPE", "nothing"]);
    assert_eq!(t, "none");
    // EXPIRE options.
    let _: () = c.set("e", "1").expect("set");
    let n: i64 = redis::cmd("EXPIRE")
        .arg("e")
        .arg(100)
        .arg("XX")
        .query(&mut c)
        .expect("expire");
    assert_eq!(n, 0, "XX on a key without ttl");
    let n: i64 = redis::cmd("EXPIRE")
        .arg("e")
        .arg(100)
        .arg("NX")
        .query(&mut c)
        .expect("expire");
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("EXPIRE")
        .arg("e")
        .arg(50)
        .arg("GT")
        .query(&mut c)
        .expect("expire");
    assert_eq!(n, 0);
    let at: i64 = run(&mut c, &["EXPIRETIME", "e"]);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((now_s + 98..=now_s + 101).contains(&at), "{at} vs {now_s}");
    assert_eq!(c.persist::<_, i64>("e").expect("persist"), 1);
    let n: i64 = redis::cmd("EXPIRE")
        .arg("e")
        .arg(-1)
        .query(&mut c)
        .expect("expire");
    assert_eq!(n, 1);
    assert!(
        !c.exists::<_, bool>("e").expect("exists"),
        "a past expiry deletes"
    );
    // Keyspace.
    let _: () = run(&mut c, &["FLUSHDB"]);
    assert_eq!(
        redis::cmd("DBSIZE").query::<i64>(&mut c).expect("dbsize"),
        0
    );
    let none: Option<String> = run(&mut c, &["RANDOMKEY"]);
    assert_eq!(none, None);
    for i in 0..30 {
        let _: () = c.set(format!("user:{i}"), i).expect("set");
    }
    let _: () = c.set("other", 1).expect("set");
    let mut keys: Vec<String> = c.keys("user:*").expect("keys");
    keys.sort();
    assert_eq!(keys.len(), 30);
    let mut scanned: Vec<String> = c.scan_match("user:*").expect("scan").collect();
    scanned.sort();
    assert_eq!(scanned, keys);
    let rk: String = run(&mut c, &["RANDOMKEY"]);
    assert!(rk == "other" || rk.starts_with("user:"));
}

#[test]
fn errors_use_redis_wording() {
    let shard = Shard::start(&[]);
    let mut c = shard.client();
    assert_eq!(
        err_text(redis::cmd("FOO").arg("a").arg("b").query::<()>(&mut c)),
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    assert_eq!(
        err_text(redis::cmd("GET").query::<()>(&mut c)),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        err_text(
            redis::cmd("SET")
                .arg("k")
                .arg("v")
                .arg("EX")
                .query::<()>(&mut c)
        ),
        "ERR syntax error"
    );
    assert_eq!(
        err_text(
            redis::cmd("SET")
                .arg("k")
                .arg("v")
                .arg("EX")
                .arg(0)
                .query::<()>(&mut c)
        ),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        err_text(
            redis::cmd("SET")
                .arg("k")
                .arg("v")
                .arg("NX")
                .arg("XX")
                .query::<()>(&mut c)
        ),
        "ERR syntax error"
    );
    assert_eq!(
        err_text(redis::cmd("INCRBY").arg("k").arg("x").query::<()>(&mut c)),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        err_text(redis::cmd("SELECT").arg(1).query::<()>(&mut c)),
        "ERR DB index is out of range"
    );
    assert_eq!(
        err_text(redis::cmd("EXEC").query::<()>(&mut c)),
        "ERR EXEC without MULTI"
    );
    // The connection is still usable after error replies.
    let _: () = redis::cmd("SELECT").arg(0).query(&mut c).expect("select 0");
    let pong: String = run(&mut c, &["PING"]);
    assert_eq!(pong, "PONG");
}

#[test]
fn a_pipeline_of_10k_commands_is_answered_in_order() {
    let shard = Shard::start(&[]);
    let mut c = shard.client();
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        if i % 2 == 0 {
            pipe.cmd("SET").arg(format!("p{i}")).arg(i);
        } else {
            pipe.cmd("INCR").arg("pipe-counter");
        }
    }
    let replies: Vec<Value> = pipe.query(&mut c).expect("pipeline");
    assert_eq!(replies.len(), 10_000);
    for (i, reply) in replies.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(reply, &Value::Okay, "reply {i}");
        } else {
            assert_eq!(reply, &Value::Int((i as i64 + 1) / 2), "reply {i}");
        }
    }
    let mut gets = redis::pipe();
    for i in (0..10_000).step_by(2) {
        gets.cmd("GET").arg(format!("p{i}"));
    }
    let values: Vec<i64> = gets.query(&mut c).expect("gets");
    assert_eq!(values, (0..10_000).step_by(2).collect::<Vec<i64>>());
}

fn expiry_has_millisecond_precision(storage: &str) {
    let shard = Shard::start_on(storage, &[]);
    let mut c = shard.client();
    let started = Instant::now();
    let _: () = redis::cmd("SET")
        .arg("soon")
        .arg("v")
        .arg("PX")
        .arg(150)
        .query(&mut c)
        .expect("set");
    let pttl: i64 = c.pttl("soon").expect("pttl");
    assert!(pttl > 0 && pttl <= 150, "pttl {pttl}");
    // Poll until the key is gone; it must not vanish early and must vanish on time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: Option<String> = c.get("soon").expect("get");
        let elapsed = started.elapsed();
        match v {
            Some(_) => assert!(
                elapsed < Duration::from_millis(1000),
                "still there after {elapsed:?}"
            ),
            None => {
                assert!(
                    elapsed >= Duration::from_millis(140),
                    "gone early, after {elapsed:?}"
                );
                break;
            }
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.pttl::<_, i64>("soon").expect("pttl"), -2);
    // PEXPIREAT in the past deletes at once; PSETEX and PEXPIRE set ms expiries.
    let _: () = c.set("k", "v").expect("set");
    let n: i64 = redis::cmd("PEXPIREAT")
        .arg("k")
        .arg(1)
        .query(&mut c)
        .expect("pexpireat");
    assert_eq!(n, 1);
    assert_eq!(c.get::<_, Option<String>>("k").expect("get"), None);
    let _: () = redis::cmd("PSETEX")
        .arg("k")
        .arg(100_000)
        .arg("v")
        .query(&mut c)
        .expect("psetex");
    let at: i64 = run(&mut c, &["PEXPIRETIME", "k"]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    assert!((now_ms + 99_000..=now_ms + 100_000).contains(&at));
}

#[test]
fn concurrent_incrs_and_http_sets_lose_no_update() {
    let shard = Shard::start(&[]);
    const CLIENTS: usize = 16;
    const INCRS: usize = 300;
    // Phase 1: only INCRs; the count must be exact.
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = shard.client();
            std::thread::spawn(move || {
                for _ in 0..INCRS {
                    let _: i64 = c.incr("counter", 1).expect("incr");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let mut c = shard.client();
    assert_eq!(
        c.get::<_, i64>("counter").expect("get"),
        (CLIENTS * INCRS) as i64
    );

    // Phase 2: INCRs race HTTP SETs of the same key to fresh bases (i * 1e6). If every write
    // is atomic against the others, no two INCRs return the same number, and the final value
    // is the last base plus the INCRs that came after it.
    let http_addr = shard.node.http_addr();
    let incr_threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = shard.client();
            std::thread::spawn(move || {
                (0..INCRS)
                    .map(|_| c.incr::<_, _, i64>("race", 1).expect("incr"))
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let rt = runtime();
    const SETS: i64 = 20;
    rt.block_on(async {
        let mut conn = http::HttpConn::connect(&http_addr).await.expect("http");
        for i in 1..=SETS {
            let r = conn
                .request(
                    "PUT",
                    "/api/v1/kv/race",
                    (i * 1_000_000).to_string().as_bytes(),
                    None,
                )
                .await
                .expect("put");
            assert_eq!(r.status, 200, "{}", r.text());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut replies: Vec<i64> = Vec::new();
    for t in incr_threads {
        replies.extend(t.join().expect("thread"));
    }
    let total = replies.len();
    replies.sort_unstable();
    replies.dedup();
    assert_eq!(
        replies.len(),
        total,
        "two INCRs returned the same value: an update was lost"
    );
    let last_base = SETS * 1_000_000;
    let after_last = replies.iter().filter(|&&v| v > last_base).count() as i64;
    let final_value: i64 = c.get("race").expect("get");
    assert_eq!(
        final_value,
        last_base + after_last,
        "the last HTTP SET was overwritten"
    );
}

fn http_and_resp_see_the_same_bytes(storage: &str) {
    let shard = Shard::start_on(storage, &[]);
    let mut c = shard.client();
    let all_bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let _: () = c.set(b"bin\x00key\xff", &all_bytes[..]).expect("set");
    let rt = runtime();
    let addr = shard.node.http_addr();
    let path = format!("/api/v1/kv/{}", http::encode(b"bin\x00key\xff"));
    let got = rt
        .block_on(http::request(&addr, "GET", &path, &[], None))
        .expect("http get");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, all_bytes, "RESP → HTTP byte for byte");
    let value: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    let r = rt
        .block_on(http::request(
            &addr,
            "PUT",
            "/api/v1/kv/from-http",
            &value,
            None,
        ))
        .expect("put");
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get::<_, Vec<u8>>("from-http").expect("get"),
        value,
        "HTTP → RESP byte for byte"
    );
    // A TTL set over HTTP is visible over RESP.
    let r = rt
        .block_on(http::request(
            &addr,
            "PUT",
            "/api/v1/kv/ttl-http?ttl_ms=60000",
            b"x",
            None,
        ))
        .expect("put");
    assert_eq!(r.status, 200);
    let pttl: i64 = c.pttl("ttl-http").expect("pttl");
    assert!(pttl > 59_000 && pttl <= 60_000, "{pttl}");
}

#[test]
fn resp3_after_hello_3() {
    let shard = Shard::start(&[]);
    let mut s = shard.raw();
    let got = exchange(&mut s, b"GET missing\r\n", 5);
    assert_eq!(got, b"$-1\r\n", "RESP2 null by default");
    s.write_all(b"HELLO 3\r\n").expect("write");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).expect("read");
    assert!(
        buf[..n].starts_with(b"%7\r\n$6\r\nserver\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(exchange(&mut s, b"GET missing\r\n", 3), b"_\r\n");
    assert_eq!(
        exchange(&mut s, b"CONFIG GET appendonly\r\n", 26),
        b"%1\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    );
    // The redis crate in RESP3 mode works too.
    let client = redis::Client::open(format!("redis://{}/?protocol=resp3", shard.resp_addr()))
        .expect("client");
    let mut c = client.get_connection().expect("connect");
    let _: () = c.set("k", "v").expect("set");
    assert_eq!(
        c.get::<_, Option<String>>("k").expect("get").as_deref(),
        Some("v")
    );
    assert_eq!(c.get::<_, Option<String>>("nope").expect("get"), None);
}

#[test]
fn bad_input_gets_redis_errors_and_the_connection_closes() {
    let shard = Shard::start(&["--max-key-bytes", "512", "--max-value-bytes", "1024"]);
    let cases: [(&[u8], &[u8]); 5] = [
        (
            b"*1\r\n$-5\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$2000\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*abc\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n:5\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"SET \"a b\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (input, expected) in cases {
        let mut s = shard.raw();
        assert_eq!(exchange(&mut s, input, expected.len()), expected);
        assert!(
            closed_by_peer(&mut s),
            "closed after {:?}",
            String::from_utf8_lossy(input)
        );
    }
    let mut s = shard.raw();
    let long = vec![b'a'; 70 * 1024];
    let expected = b"-ERR Protocol error: too big inline request\r\n";
    assert_eq!(exchange(&mut s, &long, expected.len()), expected);
    // Random garbage never takes the server down; a fresh client still works.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        let mut s = shard.raw();
        let garbage: Vec<u8> = (0..200)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = s.write_all(&garbage);
    }
    let mut c = shard.client();
    let pong: String = run(&mut c, &["PING"]);
    assert_eq!(pong, "PONG");
    // Telnet-style inline commands work.
    let mut s = shard.raw();
    assert_eq!(
        exchange(&mut s, b"set greeting \"hi there\"\r\n", 5),
        b"+OK\r\n"
    );
    assert_eq!(
        exchange(&mut s, b"get greeting\n", 14),
        b"$8\r\nhi there\r\n"
    );
    assert_eq!(exchange(&mut s, b"QUIT\r\n", 5), b"+OK\r\n");
    assert!(closed_by_peer(&mut s));
}

#[test]
fn a_stuck_client_does_not_stall_others_and_idle_ones_are_closed() {
    let shard = Shard::start(&["--resp-idle-timeout-ms", "400"]);
    // A client that sends half a request and stops.
    let mut stuck = shard.raw();
    stuck
        .write_all(b"*2\r\n$3\r\nGET\r\n$10\r\nabc")
        .expect("write");
    // A client that pipelines big replies and never reads them.
    let mut c = shard.client();
    let _: () = c.set("big", vec![b'x'; 512 * 1024]).expect("set");
    // Four clients that pipeline 200 GETs of it (100 MiB of replies each) and never read.
    let mut req = Vec::new();
    for _ in 0..200 {
        req.extend_from_slice(b"GET big\r\n");
    }
    let greedy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = shard.raw();
            s.write_all(&req).expect("write");
            s
        })
        .collect();
    // Others are served meanwhile.
    let started = Instant::now();
    for i in 0..100 {
        let _: () = c.set("other", i).expect("set");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // An active client outlives the idle timeout; the stuck one does not.
    let mut active = shard.raw();
    for _ in 0..8 {
        assert_eq!(exchange(&mut active, b"PING\r\n", 7), b"+PONG\r\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed_by_peer(&mut stuck),
        "the idle half-request connection was closed"
    );
    // The greedy clients' replies are produced only as they are written: the shard's memory
    // stays far below the 400 MiB they asked for.
    let rss_kib = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    let pid = shard.node.pid().expect("pid");
    let rss = rss_kib(pid);
    assert!(
        rss > 0 && rss < 200 * 1024,
        "shard RSS {rss} KiB with 4 clients not reading"
    );
    drop(greedy);
}

fn multi_exec_is_atomic_and_watch_aborts_on_a_change(storage: &str) {
    let shard = Shard::start_on(storage, &[]);
    let mut c = shard.client();
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("x")
        .cmd("INCRBY")
        .arg("y")
        .arg(10)
        .query(&mut c)
        .expect("exec");
    assert_eq!((a, b), (1, 10));
    // WATCH, a write by someone else, EXEC: aborted (nil).
    let _: () = run(&mut c, &["WATCH", "x"]);
    let mut other = shard.client();
    let _: () = other.set("x", 100).expect("set");
    let _: () = run(&mut c, &["MULTI"]);
    let q: String = run(&mut c, &["INCR", "x"]);
    assert_eq!(q, "QUEUED");
    let r: Value = run(&mut c, &["EXEC"]);
    assert_eq!(r, Value::Nil);
    assert_eq!(c.get::<_, i64>("x").expect("get"), 100);
    // Unchanged watch: EXEC runs.
    let _: () = run(&mut c, &["WATCH", "x"]);
    let r: Vec<i64> = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("x")
        .query(&mut c)
        .expect("exec");
    assert_eq!(r, vec![101]);
    // A queued command with wrong arity aborts the whole transaction.
    let _: () = run(&mut c, &["MULTI"]);
    let _: String = run(&mut c, &["SET", "x", "0"]);
    assert_eq!(
        err_text(redis::cmd("GET").query::<()>(&mut c)),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        err_text(redis::cmd("EXEC").query::<()>(&mut c)),
        "EXECABORT Transaction discarded because of previous errors."
    );
    assert_eq!(c.get::<_, i64>("x").expect("get"), 101);
    // Concurrent transactions moving units between keys keep the sum.
    let _: () = redis::cmd("MSET")
        .arg("acct1")
        .arg(1000)
        .arg("acct2")
        .arg(0)
        .query(&mut c)
        .expect("mset");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let mut c = shard.client();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let _: (i64, i64) = redis::pipe()
                        .atomic()
                        .cmd("DECR")
                        .arg("acct1")
                        .cmd("INCR")
                        .arg("acct2")
                        .query(&mut c)
                        .expect("exec");
                }
            })
        })
        .collect();
    let mut reader = shard.client();
    for _ in 0..50 {
        let (x, y): (i64, i64) = redis::pipe()
            .atomic()
            .get("acct1")
            .get("acct2")
            .query(&mut reader)
            .expect("read");
        assert_eq!(x + y, 1000, "a transaction was seen half done");
    }
    for t in threads {
        t.join().expect("thread");
    }
    let (x, y): (i64, i64) = redis::pipe()
        .get("acct1")
        .get("acct2")
        .query(&mut c)
        .expect("read");
    assert_eq!((x, y), (600, 400));
}

// ---- through the coordinator, 3 shards -------------------------------------------------

struct Cluster3 {
    cluster: limedb_testkit::Cluster,
    rt: tokio::runtime::Runtime,
    _databases: Option<TestDatabases>,
}

impl Cluster3 {
    fn start() -> Cluster3 {
        Cluster3::start_on("lsm")
    }

    /// Three shards on backend `storage` and a coordinator with a RESP listener.
    fn start_on(storage: &str) -> Cluster3 {
        let rt = runtime();
        let (backend, databases) = backend_args(storage);
        let shard_args: Vec<&str> = backend.iter().map(String::as_str).collect();
        let cluster = rt.block_on(limedb_testkit::Cluster::start(
            bin(),
            3,
            &shard_args,
            &["--resp-port", "0"],
        ));
        Cluster3 {
            cluster,
            rt,
            _databases: databases,
        }
    }

    fn resp_addr(&self) -> String {
        resp_addr(&self.cluster.coordinator)
    }

    fn client(&self) -> redis::Connection {
        connect(&self.resp_addr())
    }

    /// How many keys shard `i` (0-based) holds, asked over HTTP.
    fn shard_keys(&self, i: usize) -> u64 {
        let addr = self.cluster.shards[i].http_addr();
        let r = self
            .rt
            .block_on(http::request(
                &addr,
                "GET",
                "/api/v1/keys?page=1&pageSize=1",
                &[],
                None,
            ))
            .expect("keys");
        r.json()
            .and_then(|d| d["total"].as_u64())
            .unwrap_or_else(|| panic!("no total in {}", r.text()))
    }
}

fn cluster_multi_key_commands_span_shards_without_crossslot(storage: &str) {
    let c3 = Cluster3::start_on(storage);
    let mut c = c3.client();
    let keys: Vec<String> = (0..60).map(|i| format!("key:{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for (i, k) in keys.iter().enumerate() {
        mset.arg(k).arg(format!("v{i}"));
    }
    let _: () = mset.query(&mut c).expect("mset");
    // The keys really are spread: every shard holds some.
    for i in 0..3 {
        assert!(
            c3.shard_keys(i) > 0,
            "shard {} holds none of the 60 keys",
            i + 1
        );
    }
    let mut mget = redis::cmd("MGET");
    mget.arg("missing-1");
    for k in &keys {
        mget.arg(k);
    }
    let values: Vec<Option<String>> = mget.query(&mut c).expect("mget");
    assert_eq!(values[0], None);
    for (i, v) in values[1..].iter().enumerate() {
        assert_eq!(
            v.as_deref(),
            Some(format!("v{i}").as_str()),
            "MGET keeps the key order"
        );
    }
    let n: i64 = redis::cmd("EXISTS")
        .arg(&keys[..10])
        .arg("missing")
        .arg(&keys[0])
        .query(&mut c)
        .expect("exists");
    assert_eq!(n, 11);
    assert_eq!(
        redis::cmd("DBSIZE").query::<i64>(&mut c).expect("dbsize"),
        60
    );
    let mut all: Vec<String> = c.keys("key:*").expect("keys");
    all.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(all, expected);
    // One SCAN cursor walks every shard; COUNT 7 makes it take many steps.
    let mut cursor = 0u64;
    let mut scanned = Vec::new();
    let mut steps = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("key:*")
            .arg("COUNT")
            .arg(7)
            .query(&mut c)
            .expect("scan");
        scanned.extend(batch);
        steps += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    scanned.sort();
    assert_eq!(scanned, expected, "SCAN returned every key exactly once");
    assert!(
        steps >= 6,
        "a cursor per step, not one big answer: {steps} steps"
    );
    // RENAME and COPY across shards keep value and ttl.
    let _: () = redis::cmd("SET")
        .arg("src")
        .arg("payload")
        .arg("PX")
        .arg(60_000)
        .query(&mut c)
        .expect("set");
    let mut renamed = 0;
    for i in 0..20 {
        let dst = format!("dst{i}");
        let _: () = c.rename("src", &dst).expect("rename");
        assert_eq!(
            c.get::<_, Option<String>>(&dst).expect("get").as_deref(),
            Some("payload")
        );
        assert!(c.pttl::<_, i64>(&dst).expect("pttl") > 59_000);
        assert!(!c.exists::<_, bool>("src").expect("exists"));
        let _: () = c.rename(&dst, "src").expect("rename back");
        renamed += 1;
    }
    assert_eq!(renamed, 20);
    let n: i64 = run(&mut c, &["COPY", "src", "copy-a"]);
    assert_eq!(n, 1);
    let n: i64 = run(&mut c, &["COPY", "src", "copy-a"]);
    assert_eq!(n, 0);
    assert_eq!(
        err_text(c.rename::<_, _, ()>("nothing", "x")),
        "ERR no such key"
    );
    let n: i64 = run(
        &mut c,
        &["MSETNX", "fresh1", "1", "fresh2", "2", "key:1", "x"],
    );
    assert_eq!(n, 0);
    assert!(!c.exists::<_, bool>("fresh1").expect("exists"));
    let n: i64 = run(
        &mut c,
        &["MSETNX", "fresh1", "1", "fresh2", "2", "fresh3", "3"],
    );
    assert_eq!(n, 1);
    // DEL across shards counts every removed key.
    let n: i64 = redis::cmd("DEL")
        .arg(&keys)
        .arg("missing")
        .query(&mut c)
        .expect("del");
    assert_eq!(n, 60);
    let rk: String = run(&mut c, &["RANDOMKEY"]);
    assert!(c.exists::<_, bool>(&rk).expect("exists"));
    let _: () = run(&mut c, &["FLUSHDB"]);
    assert_eq!(
        redis::cmd("DBSIZE").query::<i64>(&mut c).expect("dbsize"),
        0
    );
}

fn cluster_pipelines_expiry_and_transactions(storage: &str) {
    let c3 = Cluster3::start_on(storage);
    let mut c = c3.client();
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
    }
    for i in 0..10_000 {
        pipe.cmd("GET").arg(format!("p{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut c).expect("pipeline");
    assert_eq!(values, (0..10_000).collect::<Vec<i64>>());
    // Expiry through the coordinator.
    let started = Instant::now();
    let _: () = redis::cmd("SET")
        .arg("brief")
        .arg("v")
        .arg("PX")
        .arg(120)
        .query(&mut c)
        .expect("set");
    loop {
        let v: Option<String> = c.get("brief").expect("get");
        if v.is_none() {
            assert!(started.elapsed() >= Duration::from_millis(110));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "never expired");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A transaction on keys of one shard runs atomically; one spanning shards is refused whole.
    let tagged: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    let shard_of = |k: &str| -> u64 {
        let ring = limedb_cluster::Ring::new(
            &[
                limedb_cluster::ShardId(1),
                limedb_cluster::ShardId(2),
                limedb_cluster::ShardId(3),
            ],
            limedb_cluster::DEFAULT_VNODES_PER_SHARD,
        )
        .expect("ring");
        u64::from(ring.shard_for_key(k.as_bytes()).0)
    };
    let a = &tagged[0];
    let same = tagged
        .iter()
        .find(|k| *k != a && shard_of(k) == shard_of(a))
        .expect("a key on the same shard");
    let other = tagged
        .iter()
        .find(|k| shard_of(k) != shard_of(a))
        .expect("a key on another shard");
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .incr(a, 1)
        .incr(same, 5)
        .query(&mut c)
        .expect("exec");
    assert_eq!((x, y), (1, 5));
    let _: () = run(&mut c, &["MULTI"]);
    let _: String = redis::cmd("INCR").arg(a).query(&mut c).expect("queued");
    let _: String = redis::cmd("INCR").arg(other).query(&mut c).expect("queued");
    let e = err_text(redis::cmd("EXEC").query::<()>(&mut c));
    assert!(
        e.starts_with("ERR this transaction's keys live on shards"),
        "{e}"
    );
    assert_eq!(
        c.get::<_, i64>(a).expect("get"),
        1,
        "nothing of the refused transaction ran"
    );
    assert!(!c.exists::<_, bool>(other).expect("exists"));
    // WATCH through the coordinator.
    let _: () = redis::cmd("WATCH").arg(a).query(&mut c).expect("watch");
    let mut d = c3.client();
    let _: () = d.set(a, 50).expect("set");
    let r: Value = redis::pipe()
        .atomic()
        .incr(a, 1)
        .query(&mut c)
        .expect("exec");
    assert_eq!(r, Value::Nil);
    // Same data over HTTP and RESP through the coordinator.
    let _: () = c
        .set("shared", b"\x00\x01\xfe\xff".as_slice())
        .expect("set");
    let got = c3
        .rt
        .block_on(http::request(
            &c3.cluster.addr(),
            "GET",
            "/api/v1/kv/shared",
            &[],
            None,
        ))
        .expect("get");
    assert_eq!(got.body, b"\x00\x01\xfe\xff");
}

/// The number after `name:` in an INFO reply.
fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {info}"))
}

/// The introspection commands clients and redis-cli send: COMMAND (COUNT, INFO, DOCS),
/// CLIENT ID/SETINFO/INFO and the INFO sections, with Redis's shapes and live figures.
#[test]
fn introspection_commands_answer_what_clients_ask() {
    let shard = Shard::start(&[]);
    let mut c = shard.client();
    let mut other = shard.client();

    // COMMAND: one entry per command, COUNT of them; INFO by name (nil for an unknown one).
    let count: i64 = run(&mut c, &["COMMAND", "COUNT"]);
    let all: Vec<redis::Value> = run(&mut c, &["COMMAND"]);
    assert_eq!(all.len() as i64, count);
    let mut names: Vec<String> = all
        .iter()
        .map(|entry| match entry {
            redis::Value::Array(items) => redis::from_redis_value::<String>(&items[0])
                .expect("name")
                .to_uppercase(),
            other => panic!("COMMAND entry {other:?}"),
        })
        .collect();
    names.sort();
    // Every command the server answers, and no other.
    let mut served: Vec<&str> =
        "ACL APPEND AUTH CLIENT COMMAND CONFIG COPY DBSIZE DECR DECRBY DEL DISCARD \
        ECHO EXEC EXISTS EXPIRE EXPIREAT EXPIRETIME FLUSHALL FLUSHDB GET GETDEL GETEX GETRANGE \
        GETSET HELLO INCR INCRBY INCRBYFLOAT INFO KEYS MGET MSET MSETNX MULTI PERSIST PEXPIRE \
        PEXPIREAT PEXPIRETIME PING PSETEX PTTL QUIT RANDOMKEY RENAME RENAMENX SCAN SELECT SET \
        SETEX SETNX SETRANGE STRLEN TTL TYPE UNLINK UNWATCH WATCH"
            .split_whitespace()
            .collect();
    served.sort_unstable();
    assert_eq!(names, served);
    let entries: Vec<redis::Value> = run(&mut c, &["COMMAND", "INFO", "get", "set", "nosuch"]);
    let infos: Vec<Option<(String, i64)>> = entries
        .into_iter()
        .map(|v| match v {
            redis::Value::Array(items) => {
                let name: String = redis::from_redis_value(&items[0]).expect("name");
                let arity: i64 = redis::from_redis_value(&items[1]).expect("arity");
                Some((name.to_lowercase(), arity))
            }
            redis::Value::Nil => None,
            other => panic!("COMMAND INFO entry {other:?}"),
        })
        .collect();
    assert_eq!(
        infos,
        vec![Some(("get".into(), 2)), Some(("set".into(), -3)), None]
    );
    // DOCS is a map from command name to its docs (a flat array in RESP2).
    let docs: Vec<redis::Value> = run(&mut c, &["COMMAND", "DOCS", "get"]);
    assert_eq!(docs.len(), 2);
    let name: String = redis::from_redis_value(&docs[0]).expect("name");
    assert_eq!(name.to_lowercase(), "get");
    let err = err_text(redis::cmd("COMMAND").arg("NOSUCH").query::<()>(&mut c));
    assert!(err.contains("unknown subcommand"), "{err}");

    // CLIENT: each connection has its own ID; SETINFO shows up in CLIENT INFO.
    let id: i64 = run(&mut c, &["CLIENT", "ID"]);
    let other_id: i64 = run(&mut other, &["CLIENT", "ID"]);
    assert!(id > 0 && other_id > 0 && id != other_id, "{id} {other_id}");
    let ok: String = run(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "limetest"]);
    assert_eq!(ok, "OK");
    let ok: String = run(&mut c, &["CLIENT", "SETINFO", "LIB-VER", "1.2.3"]);
    assert_eq!(ok, "OK");
    let line: String = run(&mut c, &["CLIENT", "INFO"]);
    assert!(line.starts_with(&format!("id={id} ")), "{line}");
    assert!(line.contains(" lib-name=limetest "), "{line}");
    assert!(line.contains(" lib-ver=1.2.3"), "{line}");
    let err = err_text(
        redis::cmd("CLIENT")
            .arg("SETINFO")
            .arg("NOSUCH")
            .arg("x")
            .query::<()>(&mut c),
    );
    assert!(err.contains("Unrecognized option"), "{err}");

    // INFO: every section by default, one when asked; the keyspace counts the keys.
    for i in 0..3 {
        let _: () = c.set(format!("info:{i}"), i).expect("set");
    }
    let info: String = run(&mut c, &["INFO"]);
    for section in ["# Server", "# Clients", "# Stats", "# Keyspace"] {
        assert!(info.contains(section), "{section} missing from {info}");
    }
    assert!(info.contains("redis_version:"), "{info}");
    assert!(info.contains("db0:keys=3,"), "{info}");
    let connected = info_field(&info, "connected_clients");
    assert!(connected >= 2, "{connected} connected");
    let keyspace: String = run(&mut c, &["INFO", "keyspace"]);
    assert!(keyspace.starts_with("# Keyspace"), "{keyspace}");
    assert!(!keyspace.contains("# Server"), "{keyspace}");
    let stats: String = run(&mut c, &["INFO", "stats"]);
    let processed = info_field(&stats, "total_commands_processed");
    assert!(processed >= 15, "{processed} commands processed");
}

#[test]
fn thousands_of_concurrent_connections_are_served() {
    let shard = Shard::start(&[]);
    // 2000 connections, or fewer if this process's file-descriptor limit (which the server
    // inherits) is too low for that.
    let fd_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    let connections = 2000.min(fd_limit.saturating_sub(200));
    if connections < 2000 {
        eprintln!("file-descriptor limit {fd_limit}: testing {connections} connections");
    }
    let mut sockets: Vec<TcpStream> = (0..connections).map(|_| shard.raw()).collect();
    // Every connection is open at once; each one sets its own key and reads it back.
    for (i, s) in sockets.iter_mut().enumerate() {
        let cmd = format!("SET conn:{i} {i}\r\n");
        s.write_all(cmd.as_bytes()).expect("write");
    }
    for (i, s) in sockets.iter_mut().enumerate() {
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"+OK\r\n", "connection {i}");
    }
    let mut c = shard.client();
    let info: String = run(&mut c, &["INFO", "clients"]);
    let connected = info_field(&info, "connected_clients");
    assert!(connected > connections as u64, "{connected} connected");
    assert_eq!(
        redis::cmd("DBSIZE").query::<usize>(&mut c).expect("dbsize"),
        connections
    );
}

#[test]
fn strings_cannot_grow_past_the_value_limit() {
    let shard = Shard::start(&["--max-value-bytes", "1024"]);
    let mut c = shard.client();
    assert_eq!(
        err_text(
            redis::cmd("SETRANGE")
                .arg("k")
                .arg(100_000_000)
                .arg("x")
                .query::<()>(&mut c)
        ),
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    let _: () = c.set("a", vec![b'a'; 1000]).expect("set");
    assert_eq!(
        err_text(c.append::<_, _, i64>("a", vec![b'b'; 100])),
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(
        c.strlen::<_, i64>("a").expect("strlen"),
        1000,
        "the refused APPEND changed nothing"
    );
}

/// A pipeline mixing batched stretches (plain GETs, plain SETs) with other commands and errors
/// must behave exactly as the commands one by one (raw bytes, so the error reply is checked in
/// place).
fn check_pipeline_order(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let commands: &[&[&str]] = &[
        &["SET", "po", "a"],
        &["SET", "po", "b"],
        &["SET", "po2", "x"],
        &["SET", "po", "c"],
        &["GET", "po"],
        &["GET", "po2"],
        &["APPEND", "po", "d"],
        &["GET", "po"],
        &["SET", "", "empty-key"],
        &["SET", "po", "1"],
        &["INCR", "po"],
        &["GET", "po"],
        &["DEL", "po"],
        &["GET", "po"],
    ];
    let mut wire = Vec::new();
    for args in commands {
        wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in *args {
            wire.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    let expected: &[u8] = b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n$1\r\nc\r\n$1\r\nx\r\n:2\r\n$2\r\ncd\r\n-ERR empty keys are not supported by LimeDB\r\n+OK\r\n:2\r\n$1\r\n2\r\n:1\r\n$-1\r\n";
    let got = exchange(&mut s, &wire, expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

#[test]
fn pipelined_stretches_keep_command_order() {
    let shard = Shard::start(&[]);
    check_pipeline_order(&shard.resp_addr());
    let c3 = Cluster3::start();
    check_pipeline_order(&c3.resp_addr());
}

/// Runs each check against shards on every storage backend: the commands, their TTLs, the
/// multi-key commands and SCAN behave the same whatever keeps the data.
macro_rules! on_every_backend {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[test]
                fn lsm() {
                    super::$check("lsm")
                }
                #[test]
                fn memory() {
                    super::$check("memory")
                }
                #[test]
                fn postgres() {
                    super::$check("postgres")
                }
            }
        )*
    };
}

on_every_backend!(
    string_commands_follow_redis_semantics,
    expiry_has_millisecond_precision,
    http_and_resp_see_the_same_bytes,
    multi_exec_is_atomic_and_watch_aborts_on_a_change,
    cluster_multi_key_commands_span_shards_without_crossslot,
    cluster_pipelines_expiry_and_transactions,
);
