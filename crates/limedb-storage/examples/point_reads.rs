//! Point reads of recently written keys, answered from memory: a memtable (the active one, or
//! one a flush kept) against one flushed table whose blocks are all in the block cache.
//!
//! Writes 100,000 keys (`key:000000000042`, 100-byte values), then times 2,000,000 reads of
//! random keys through `Engine::try_get_many_now` in batches of 16 (a pipeline of GETs),
//! best of 5 passes, in three states:
//!
//! - `memtable`: nothing flushed;
//! - `kept`: flushed after point reads, so the engine keeps the memtable it flushed;
//! - `table`: flushed with `retain_flushed_memtable` off, every block then cached.
//!
//! ```sh
//! cargo run --release -p limedb-storage --example point_reads -- /tmp/point-reads
//! ```

use std::error::Error;
use std::time::Instant;

use limedb_storage::{Engine, LsmEngine, LsmOptions, SyncPolicy};

const KEYS: u64 = 100_000;
const READS: usize = 2_000_000;

fn key(i: u64) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

/// Nanoseconds per read in the best of five passes over `keys`.
fn time_reads(engine: &LsmEngine, keys: &[Vec<u8>]) -> Result<f64, Box<dyn Error>> {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for batch in keys.chunks(16) {
            let asked: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            for answer in engine.try_get_many_now(&asked) {
                match answer {
                    Some(Ok(Some(_))) => {}
                    other => {
                        return Err(format!("a read was not a hit from memory: {other:?}").into())
                    }
                }
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / keys.len() as f64);
    }
    Ok(best)
}

fn run(dir: &std::path::Path, state: &str, keys: &[Vec<u8>]) -> Result<f64, Box<dyn Error>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let options = LsmOptions {
        sync: SyncPolicy::Never,
        retain_flushed_memtable: state != "table",
        ..LsmOptions::default()
    };
    let engine = LsmEngine::open(dir, options)?;
    let value = [b'x'; 100];
    for i in 0..KEYS {
        engine.put(&key(i), &value, None)?;
    }
    if state != "memtable" {
        // A point read first, so that the flush keeps its memtable or warms its table.
        engine.get(&key(0))?;
        engine.flush()?;
        // Every block in the cache (the flush warmed them; this reads any it did not).
        for i in 0..KEYS {
            engine.get(&key(i))?;
        }
    }
    let ns = time_reads(&engine, keys)?;
    engine.close()?;
    Ok(ns)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: point_reads DIR (a scratch directory, emptied first)")?;
    let dir = std::path::Path::new(&dir);
    // xorshift64: the same random keys for every state.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let keys: Vec<Vec<u8>> = (0..READS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            key(x % KEYS)
        })
        .collect();
    for state in ["memtable", "kept", "table"] {
        println!("{state:>8}: {:>5.0} ns per read", run(dir, state, &keys)?);
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
