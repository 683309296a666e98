//! Batches of puts, as a pipeline of SETs writes them: the cost per put of the engine's write
//! path (building the batch, the WAL append, the memtable inserts, flushes behind).
//!
//! Two workloads, 16 puts a batch through `Engine::write_many`, 100-byte values, keys like
//! `key:000000000042`, best of 3 passes on a fresh engine each:
//!
//! - `pipeline`: 1,200,000 puts of random keys out of 100,000 (`redis-benchmark -r 100000`):
//!   after each flush the memtable starts empty, so a quarter of its inserts are keys new to
//!   it (a search down the skiplist) and the rest newer versions of keys it holds;
//! - `fill`: 1,000,000 puts of distinct random keys, every one a search.
//!
//! ```sh
//! cargo run --release -p limedb-storage --example batched_puts -- /tmp/batched-puts [pipeline|fill]
//! ```

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use limedb_storage::{Engine, LsmEngine, LsmOptions, SyncPolicy, WriteOp};

const BATCH: usize = 16;

/// Nanoseconds per put of `keys` in batches, on a fresh engine in `dir`.
fn time_puts(dir: &Path, keys: &[Vec<u8>]) -> Result<f64, Box<dyn Error>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let options = LsmOptions {
        sync: SyncPolicy::Never,
        ..LsmOptions::default()
    };
    let engine = LsmEngine::open(dir, options)?;
    let value = [b'x'; 100];
    let start = Instant::now();
    for batch in keys.chunks(BATCH) {
        let ops: Vec<WriteOp<'_>> = batch
            .iter()
            .map(|key| WriteOp::Put {
                key,
                value: &value,
                expires_at_ms: None,
            })
            .collect();
        engine.write_many(&ops)?;
    }
    let ns = start.elapsed().as_nanos() as f64 / keys.len() as f64;
    engine.close()?;
    Ok(ns)
}

/// `n` keys drawn at random (xorshift64, the same every run) out of `space`.
fn random_keys(n: usize, space: u64) -> Vec<Vec<u8>> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("key:{:012}", x % space).into_bytes()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: batched_puts DIR (a scratch directory, emptied first)")?;
    let dir = Path::new(&dir);
    // An optional second argument runs only the workload of that name.
    let only = std::env::args().nth(2);
    let workloads = [
        ("pipeline", random_keys(1_200_000, 100_000)),
        // A space this large repeats a key about once in a million puts.
        ("fill", random_keys(1_000_000, 1 << 60)),
    ];
    for (name, keys) in &workloads {
        if only.as_deref().is_some_and(|only| only != *name) {
            continue;
        }
        let mut best = f64::MAX;
        for _ in 0..3 {
            best = best.min(time_puts(dir, keys)?);
        }
        println!("{name:>8}: {best:>5.0} ns per put");
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
