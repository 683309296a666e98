//! A scripted redis-cli session (`tests/redis-cli/session.redis`) must print exactly what it
//! prints against a real Redis 7 (`tests/redis-cli/session.expected`, recorded with
//! `tests/redis-cli/record.sh`), against a shard and against a coordinator with 3 shards.
//! Needs `redis-cli` (Debian's redis-tools; `scripts/test.sh` installs it).

use std::path::Path;
use std::process::{Command, Stdio};

use limedb_testkit::{start_shard, temp_dir, wait_until, Node};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

fn session_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redis-cli"))
}

/// Runs the session script through redis-cli against `addr` (`host:port`).
fn run_session(addr: &str) -> Vec<u8> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = std::fs::File::open(session_dir().join("session.redis")).expect("script");
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .stdin(Stdio::from(script))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-cli ({e}); install redis-tools (scripts/test.sh does)")
        });
    assert!(
        out.status.success(),
        "redis-cli failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn assert_same_as_redis(got: &[u8], against: &str) {
    let expected = std::fs::read(session_dir().join("session.expected")).expect("expected");
    if got != expected {
        let got = String::from_utf8_lossy(got);
        let expected = String::from_utf8_lossy(&expected);
        let first = got
            .lines()
            .zip(expected.lines())
            .position(|(g, e)| g != e)
            .unwrap_or_else(|| got.lines().count().min(expected.lines().count()));
        panic!(
            "redis-cli output against {against} differs from Redis's at output line {}: got {:?}, Redis gave {:?}",
            first + 1,
            got.lines().nth(first),
            expected.lines().nth(first)
        );
    }
}

#[test]
fn redis_cli_session_against_a_shard_matches_redis() {
    let dir = temp_dir();
    let shard = start_shard(bin(), dir.path(), 1, "0", &["--resp-port", "0"]);
    let addr = shard.ready.get("resp").cloned().expect("resp address");
    assert_same_as_redis(&run_session(&addr), "a shard");
}

#[test]
fn redis_cli_session_against_a_3_shard_cluster_matches_redis() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let data = data.to_string_lossy();
    let dev = Node::spawn(
        bin(),
        &[
            "dev",
            "--coordinator-port",
            "0",
            "--shard-ports",
            "0,0,0",
            "--resp-port",
            "0",
            "--data-dir",
            &data,
        ],
        &dir.path().join("dev.log"),
    )
    .expect("dev starts");
    let addr = dev.ready.get("resp").cloned().expect("resp address");
    // Wait until the coordinator reaches every shard (a PING answered by all of them).
    wait_until(
        std::time::Duration::from_secs(20),
        "DBSIZE through the coordinator to answer 0",
        || {
            let out = Command::new("redis-cli")
                .args(["-u", &format!("redis://{addr}"), "DBSIZE"])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim() == "0"
        },
    );
    assert_same_as_redis(&run_session(&addr), "a 3-shard cluster");
}
