//! Clients that record histories for the linearizability checker: random reads and writes of
//! unique values on a few keys through a coordinator's HTTP API, each with its invoke and
//! completion times and outcome (acknowledged, failed for certain, or unknown).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::linearizability::{History, OpKind, Outcome};
use crate::HttpConn;

/// Microseconds since `start`.
pub fn at(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

fn lock(history: &Mutex<History>) -> MutexGuard<'_, History> {
    history.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits (up to 30 s, failing with `what`) until `history` records more than `n` operations;
/// returns how many it records then.
pub async fn more_ops_than(history: &Mutex<History>, n: usize, what: &str) -> usize {
    crate::wait_for(Duration::from_secs(30), what, || {
        let len = lock(history).len();
        async move { (len > n).then_some(len) }
    })
    .await
}

/// Operations `history` records now.
pub fn ops_recorded(history: &Mutex<History>) -> usize {
    lock(history).len()
}

/// Client `client`: random reads and writes of unique values (`c<client>-<seq>`) on `keys`
/// through `coordinator` until `stop`, recorded in `history`. A write answered `not_leader` did
/// nothing (failed); any other error leaves its outcome unknown.
pub async fn history_client(
    coordinator: String,
    client: u64,
    keys: Vec<String>,
    start: Instant,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    let mut conn: Option<HttpConn> = None;
    let mut state = client.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while !stop.load(Ordering::Relaxed) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = keys[(state % keys.len() as u64) as usize].clone();
        // A high bit, not the low one: with an even number of keys the low bit would tie each
        // key to reads only or to writes only.
        let write = (state >> 40) & 1 == 0;
        if conn.is_none() {
            conn = HttpConn::connect(&coordinator).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if write {
            let value = format!("c{client}-{seq}");
            seq += 1;
            let kind = OpKind::Write(value.clone());
            let id = lock(&history).invoke(client, key.clone(), kind, at(start));
            let outcome = match c.set(&key, &value).await {
                Ok(r) if r.status == 200 => Outcome::Written,
                Ok(r) if r.json().is_some_and(|j| j["error"] == "not_leader") => Outcome::Failed,
                Ok(_) => Outcome::Unknown,
                Err(_) => {
                    conn = None;
                    Outcome::Unknown
                }
            };
            lock(&history).complete(id, outcome, at(start));
        } else {
            let id = lock(&history).invoke(client, key.clone(), OpKind::Read, at(start));
            let outcome = match c.get(&key).await {
                Ok(r) if r.status == 200 => Outcome::Read(Some(r.text())),
                Ok(r) if r.status == 404 => Outcome::Read(None),
                Ok(_) => Outcome::Unknown,
                Err(_) => {
                    conn = None;
                    Outcome::Unknown
                }
            };
            lock(&history).complete(id, outcome, at(start));
        }
    }
}

/// Checks a finished history: prints how many operations ended how (with `context`), asserts
/// there was enough traffic to judge (over 100 acknowledged writes and 100 reads), and
/// returns the checker's verdict.
pub fn judge(
    history: &History,
    context: &str,
) -> Result<(), Box<crate::linearizability::Violation>> {
    let ops = history.ops();
    let count = |f: &dyn Fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    let written = count(&|o| *o == Outcome::Written);
    let reads = count(&|o| matches!(o, Outcome::Read(_)));
    let unknown = count(&|o| *o == Outcome::Unknown);
    println!(
        "{} operations: {written} acknowledged writes, {reads} reads, {unknown} unknown; {context}",
        ops.len()
    );
    assert!(written > 100 && reads > 100, "too little traffic to judge");
    crate::linearizability::check(history)
}
