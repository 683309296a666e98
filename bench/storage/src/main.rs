//! `storage-bench`: one workload on one engine per invocation, driven by `bench/storage.sh`.
//!
//! ```text
//! storage-bench --engine limedb|rocksdb|fjall --workload W --dir D --keys N
//!               [--sync-ops S] [--threads T]
//! ```
//!
//! Prints one line of JSON on stdout (progress on stderr):
//! `{"engine","workload","ops","secs","ops_per_sec","found","max_rss_kb","rss_anon_kb",
//!   "disk_bytes","write_amp","rocksdb_version"}`.
//!
//! # Data
//!
//! - **Keys**, 16 bytes. `fillseq`: `[0u8; 8] ++ be64(i)` for i = 0..N, written in ascending
//!   order. Every other workload uses hashed keys: `be64(mix(i)) ++ be64(i)`, where `mix` is the
//!   splitmix64 finaliser (a bijection on u64), so the insertion order i = 0..N is a random
//!   order of the keys, every key is distinct, and `i >= N` gives keys that are certainly
//!   absent (`readmissing`).
//! - **Values**, 100 bytes from a xorshift64* PRNG (incompressible), seeded per workload with
//!   the same seed for every engine, so every engine stores the same bytes.
//! - Random choices (`overwrite`, `readrandom`, `readmissing`) come from another PRNG with a
//!   fixed seed per workload: every engine reads and writes the same key sequence.
//!
//! # Workloads (only the loop of operations is timed)
//!
//! | workload    | directory              | operations                                         |
//! |-------------|------------------------|----------------------------------------------------|
//! | fillseq     | fresh                  | N puts of sequential keys                          |
//! | fillrandom  | fresh                  | N puts of hashed keys (each key once, random order)|
//! | overwrite   | the fillrandom one     | N puts of random existing keys                     |
//! | readrandom  | the fillrandom one     | N gets of random existing keys (all must hit)      |
//! | readmissing | the fillrandom one     | N gets of absent keys (bloom filters)              |
//! | readseq     | the fillrandom one     | one full forward scan (ops = keys seen, must be N) |
//! | compact     | the fillrandom one     | one full compaction; `space_amp` = directory bytes |
//! |             |                        | after it / (N × 116 bytes of live keys and values) |
//! | syncwrite   | fresh                  | T threads put S keys in all, every put fsynced     |
//!
//! After a write workload the memtable is flushed (untimed) and the database closed, so the
//! next process reads SSTables rather than replaying a WAL. Background compactions that are
//! still running are left to each engine.
//!
//! # Engines
//!
//! Every engine: 64 MiB memtable, 64 MiB block cache, WAL on, bloom filters at 10 bits per key,
//! LZ4 block compression, 4 KiB blocks (the default of all three). Writes other than
//! `syncwrite` are not fsynced, but reach the OS (write(2)) before they return: LimeDB
//! `SyncPolicy::Never`, RocksDB `WriteOptions::sync = false` (its default), fjall's default
//! (journal flushed to OS buffers). `syncwrite` fsyncs (fdatasync) every write: LimeDB
//! `SyncPolicy::Always` (group commit), RocksDB `sync = true`, fjall
//! `PersistMode::SyncData` per write batch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const VALUE_BYTES: usize = 100;
const MEMTABLE_BYTES: u64 = 64 << 20;
const BLOCK_CACHE_BYTES: u64 = 64 << 20;
const BLOOM_BITS_PER_KEY: u32 = 10;
/// Entries per LimeDB `scan` call in `readseq` (the engine has no open-ended iterator in
/// its public API yet: each call merges from its start key).
const SCAN_PAGE: usize = 4096;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

// ---------------------------------------------------------------------------------------
// Keys, values, randomness

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seq_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn hashed_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix64(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// xorshift64* : fast, good enough for incompressible values and uniform key choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(mix64(seed) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Engines

trait Db: Sync {
    fn put(&self, key: &[u8], value: &[u8]) -> Res<()>;
    /// A put that is on disk (fdatasync) when it returns.
    fn put_synced(&self, key: &[u8], value: &[u8]) -> Res<()>;
    fn get(&self, key: &[u8]) -> Res<bool>;
    /// Full forward scan; returns the number of entries seen.
    fn scan_all(&self) -> Res<u64>;
    /// Writes the memtable(s) out to SSTables and waits for that.
    fn flush(&self) -> Res<()>;
    /// Compacts the whole key range into the bottom level (a full/major compaction).
    fn compact_all(&self) -> Res<()>;
    /// Engine-specific extras for the result line (e.g. LimeDB's write amplification).
    fn extras(&self, _user_bytes: u64) -> Vec<(&'static str, serde_json::Value)> {
        Vec::new()
    }
    fn close(self: Box<Self>) -> Res<()>;
}

// --- LimeDB --------------------------------------------------------------------------

mod lime {
    use super::*;
    use limedb_storage::lsm::sstable::{Compression, TableOptions};
    use limedb_storage::{Engine, LsmEngine, LsmOptions, SyncPolicy};

    pub struct Lime(LsmEngine);

    pub fn open(dir: &Path, synced: bool) -> Res<Box<dyn Db>> {
        let options = LsmOptions {
            sync: if synced {
                SyncPolicy::Always
            } else {
                SyncPolicy::Never
            },
            memtable_bytes: MEMTABLE_BYTES,
            block_cache_bytes: BLOCK_CACHE_BYTES as usize,
            table: TableOptions {
                bloom_bits_per_key: BLOOM_BITS_PER_KEY,
                compression: Compression::Lz4,
                ..TableOptions::default()
            },
            ..LsmOptions::default()
        };
        Ok(Box::new(Lime(LsmEngine::open(dir, options)?)))
    }

    impl Db for Lime {
        fn put(&self, key: &[u8], value: &[u8]) -> Res<()> {
            Ok(self.0.put(key, value, None)?)
        }
        fn put_synced(&self, key: &[u8], value: &[u8]) -> Res<()> {
            // Opened with SyncPolicy::Always: put returns after the (shared) fsync.
            Ok(self.0.put(key, value, None)?)
        }
        fn get(&self, key: &[u8]) -> Res<bool> {
            Ok(self.0.get(key)?.is_some())
        }
        fn scan_all(&self) -> Res<u64> {
            let mut n = 0u64;
            let mut start: Option<Vec<u8>> = None;
            loop {
                let page = self.0.scan(start.as_deref(), SCAN_PAGE)?;
                n += page.len() as u64;
                if page.len() < SCAN_PAGE {
                    return Ok(n);
                }
                // The next page starts at the smallest key after the last one.
                let mut next = page.last().map(|(k, _)| k.to_vec()).unwrap_or_default();
                next.push(0);
                start = Some(next);
            }
        }
        fn flush(&self) -> Res<()> {
            Ok(self.0.flush()?)
        }
        fn compact_all(&self) -> Res<()> {
            Ok(self.0.compact_range(None, None)?)
        }
        fn extras(&self, user_bytes: u64) -> Vec<(&'static str, serde_json::Value)> {
            // Bytes of SSTables written by flushes and compactions since open, over the
            // key + value bytes the workload wrote (the WAL writes about 1x more on top).
            // The flush thread bumps its counters just after waking `flush()`'s caller, so
            // wait until they settle (at most ~1 s, untimed).
            let mut c = self.0.counters();
            for _ in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let again = self.0.counters();
                if again == c && c.flushes > 0 {
                    break;
                }
                c = again;
            }
            let table_bytes = c.bytes_flushed + c.bytes_compacted;
            let mut out = vec![
                ("bytes_flushed", c.bytes_flushed.into()),
                ("bytes_compacted", c.bytes_compacted.into()),
                ("compactions", c.compactions.into()),
                ("write_stalls", c.write_stalls.into()),
                ("write_slowdowns", c.write_slowdowns.into()),
            ];
            if user_bytes > 0 {
                let wa = table_bytes as f64 / user_bytes as f64;
                out.push(("write_amp", ((wa * 1000.0).round() / 1000.0).into()));
            }
            out
        }
        fn close(self: Box<Self>) -> Res<()> {
            Ok(self.0.close()?)
        }
    }
}

// --- RocksDB -------------------------------------------------------------------------

#[cfg(any(feature = "rocksdb-current", feature = "rocksdb-quick"))]
mod rocks {
    use super::*;
    use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteOptions, DB};

    pub struct Rocks {
        db: DB,
        plain: WriteOptions,
        synced: WriteOptions,
        _cache: Cache,
    }

    pub fn version() -> String {
        if cfg!(feature = "rocksdb-quick") {
            "rocksdb crate 0.20.1, Debian librocksdb 7.8".into()
        } else {
            "rocksdb crate 0.25.0, RocksDB 11.8 (bundled)".into()
        }
    }

    pub fn open(dir: &Path) -> Res<Box<dyn Db>> {
        #[cfg(feature = "rocksdb-quick")]
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES as usize)?;
        #[cfg(not(feature = "rocksdb-quick"))]
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES as usize);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(f64::from(BLOOM_BITS_PER_KEY), false);
        table.set_block_size(4096);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_write_buffer_size(MEMTABLE_BYTES as usize);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, dir)?;
        let plain = WriteOptions::default();
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        Ok(Box::new(Rocks {
            db,
            plain,
            synced,
            _cache: cache,
        }))
    }

    impl Db for Rocks {
        fn put(&self, key: &[u8], value: &[u8]) -> Res<()> {
            Ok(self.db.put_opt(key, value, &self.plain)?)
        }
        fn put_synced(&self, key: &[u8], value: &[u8]) -> Res<()> {
            Ok(self.db.put_opt(key, value, &self.synced)?)
        }
        fn get(&self, key: &[u8]) -> Res<bool> {
            Ok(self.db.get_pinned(key)?.is_some())
        }
        fn scan_all(&self) -> Res<u64> {
            let mut it = self.db.raw_iterator();
            it.seek_to_first();
            let mut n = 0u64;
            while it.valid() {
                // Touch key and value as the other engines do.
                std::hint::black_box((it.key(), it.value()));
                n += 1;
                it.next();
            }
            it.status()?;
            Ok(n)
        }
        fn flush(&self) -> Res<()> {
            Ok(self.db.flush()?)
        }
        fn compact_all(&self) -> Res<()> {
            self.db.compact_range::<&[u8], &[u8]>(None, None);
            Ok(())
        }
        fn close(self: Box<Self>) -> Res<()> {
            drop(self);
            Ok(())
        }
    }
}

#[cfg(not(any(feature = "rocksdb-current", feature = "rocksdb-quick")))]
mod rocks {
    use super::*;
    pub fn version() -> String {
        "not built".into()
    }
    pub fn open(_dir: &Path) -> Res<Box<dyn Db>> {
        Err(
            "built without RocksDB: enable the cargo feature rocksdb-current (or build \
             bench/storage/quick)"
                .into(),
        )
    }
}

// --- fjall ---------------------------------------------------------------------------

mod fj {
    use super::*;
    use fjall::config::{
        BloomConstructionPolicy, CompressionPolicy, FilterPolicy, FilterPolicyEntry,
    };
    use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    pub struct Fjall {
        db: Database,
        ks: Keyspace,
    }

    pub fn open(dir: &Path) -> Res<Box<dyn Db>> {
        let db = Database::builder(dir)
            .cache_size(BLOCK_CACHE_BYTES)
            .open()?;
        let ks = db.keyspace("bench", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(
                    BloomConstructionPolicy::BitsPerKey(BLOOM_BITS_PER_KEY as f32),
                )))
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
        })?;
        Ok(Box::new(Fjall { db, ks }))
    }

    impl Db for Fjall {
        fn put(&self, key: &[u8], value: &[u8]) -> Res<()> {
            Ok(self.ks.insert(key, value)?)
        }
        fn put_synced(&self, key: &[u8], value: &[u8]) -> Res<()> {
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
            batch.insert(&self.ks, key, value);
            Ok(batch.commit()?)
        }
        fn get(&self, key: &[u8]) -> Res<bool> {
            Ok(self.ks.get(key)?.is_some())
        }
        fn scan_all(&self) -> Res<u64> {
            let mut n = 0u64;
            for guard in self.ks.iter() {
                std::hint::black_box(guard.into_inner()?);
                n += 1;
            }
            Ok(n)
        }
        fn flush(&self) -> Res<()> {
            Ok(self.ks.rotate_memtable_and_wait()?)
        }
        fn compact_all(&self) -> Res<()> {
            Ok(self.ks.major_compact()?)
        }
        fn close(self: Box<Self>) -> Res<()> {
            self.db.persist(PersistMode::SyncAll)?;
            drop(self);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Driver

struct Args {
    engine: String,
    workload: String,
    dir: PathBuf,
    keys: u64,
    sync_ops: u64,
    threads: u64,
}

fn parse_args() -> Res<Args> {
    let mut engine = None;
    let mut workload = None;
    let mut dir = None;
    let mut keys = 1_000_000u64;
    let mut sync_ops = None;
    let mut threads = 4u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--engine" => engine = Some(value()?),
            "--workload" => workload = Some(value()?),
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--keys" => keys = value()?.parse()?,
            "--sync-ops" => sync_ops = Some(value()?.parse()?),
            "--threads" => threads = value()?.parse()?,
            "-h" | "--help" => {
                eprintln!(
                    "usage: storage-bench --engine limedb|rocksdb|fjall --workload \
                     fillseq|fillrandom|overwrite|readrandom|readmissing|readseq|syncwrite \
                     --dir DIR [--keys N] [--sync-ops S] [--threads T]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if keys == 0 || threads == 0 {
        return Err("--keys and --threads must be positive".into());
    }
    Ok(Args {
        engine: engine.ok_or("--engine is required")?,
        workload: workload.ok_or("--workload is required")?,
        dir: dir.ok_or("--dir is required")?,
        keys,
        sync_ops: sync_ops.unwrap_or_else(|| (keys / 20).max(4000)),
        threads,
    })
}

fn open(engine: &str, dir: &Path, synced: bool) -> Res<Box<dyn Db>> {
    match engine {
        "limedb" => lime::open(dir, synced),
        "rocksdb" => rocks::open(dir),
        "fjall" => fj::open(dir),
        other => Err(format!("unknown engine {other} (limedb, rocksdb, fjall)").into()),
    }
}

/// Fixed seeds: the same for every engine.
fn seed(workload: &str) -> u64 {
    workload
        .bytes()
        .fold(0x6c69_6d65_6462u64, |h, b| mix64(h ^ u64::from(b)))
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

struct Outcome {
    ops: u64,
    secs: f64,
    found: Option<u64>,
    user_bytes: u64,
}

fn put_all(
    db: &dyn Db,
    n: u64,
    seed: u64,
    mut key: impl FnMut(&mut Rng) -> [u8; 16],
) -> Res<Outcome> {
    let mut values = Rng::new(seed);
    let mut choices = Rng::new(seed ^ 0xc0ffee);
    let mut value = [0u8; VALUE_BYTES];
    let start = Instant::now();
    for _ in 0..n {
        let k = key(&mut choices);
        values.fill(&mut value);
        db.put(&k, &value)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Outcome {
        ops: n,
        secs,
        found: None,
        user_bytes: n * (16 + VALUE_BYTES as u64),
    })
}

fn run(args: &Args) -> Res<serde_json::Value> {
    let n = args.keys;
    let s = seed(&args.workload);
    let fresh = matches!(
        args.workload.as_str(),
        "fillseq" | "fillrandom" | "syncwrite"
    );
    if fresh {
        if args.dir.exists() && std::fs::read_dir(&args.dir)?.next().is_some() {
            return Err(format!(
                "{} is not empty: fills need a fresh directory",
                args.dir.display()
            )
            .into());
        }
    } else if !args.dir.exists() {
        return Err(format!(
            "{} does not exist: run fillrandom first",
            args.dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(&args.dir)?;
    let synced = args.workload == "syncwrite";
    let db = open(&args.engine, &args.dir, synced)?;
    let mut write = false;
    let outcome = match args.workload.as_str() {
        "fillseq" => {
            write = true;
            let mut i = 0u64;
            put_all(&*db, n, s, move |_| {
                let k = seq_key(i);
                i += 1;
                k
            })?
        }
        "fillrandom" => {
            write = true;
            let mut i = 0u64;
            put_all(&*db, n, s, move |_| {
                let k = hashed_key(i);
                i += 1;
                k
            })?
        }
        "overwrite" => {
            write = true;
            put_all(&*db, n, s, |r| hashed_key(r.below(n)))?
        }
        "readrandom" | "readmissing" => {
            let missing = args.workload == "readmissing";
            let mut choices = Rng::new(s);
            let mut found = 0u64;
            let start = Instant::now();
            for _ in 0..n {
                let i = choices.below(n) + if missing { n } else { 0 };
                found += u64::from(db.get(&hashed_key(i))?);
            }
            let secs = start.elapsed().as_secs_f64();
            Outcome {
                ops: n,
                secs,
                found: Some(found),
                user_bytes: 0,
            }
        }
        "readseq" => {
            let start = Instant::now();
            let seen = db.scan_all()?;
            let secs = start.elapsed().as_secs_f64();
            Outcome {
                ops: seen,
                secs,
                found: Some(seen),
                user_bytes: 0,
            }
        }
        "compact" => {
            let start = Instant::now();
            db.compact_all()?;
            let secs = start.elapsed().as_secs_f64();
            Outcome {
                ops: n,
                secs,
                found: None,
                user_bytes: 0,
            }
        }
        "syncwrite" => {
            write = true;
            let total = args.sync_ops;
            let threads = args.threads;
            let start = Instant::now();
            std::thread::scope(|scope| -> Res<()> {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let db = &*db;
                        scope.spawn(move || -> Res<()> {
                            let mut values = Rng::new(s ^ t);
                            let mut value = [0u8; VALUE_BYTES];
                            let mut j = t;
                            while j < total {
                                values.fill(&mut value);
                                db.put_synced(&hashed_key(j), &value)?;
                                j += threads;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().map_err(|_| "writer thread panicked")??;
                }
                Ok(())
            })?;
            let secs = start.elapsed().as_secs_f64();
            Outcome {
                ops: total,
                secs,
                found: None,
                user_bytes: total * (16 + VALUE_BYTES as u64),
            }
        }
        other => return Err(format!("unknown workload {other}").into()),
    };
    let flush_secs = if write {
        let start = Instant::now();
        db.flush()?;
        Some(start.elapsed().as_secs_f64())
    } else {
        None
    };
    let extras = db.extras(outcome.user_bytes);
    let max_rss_kb = proc_status_kb("VmHWM");
    let rss_anon_kb = proc_status_kb("RssAnon");
    let rss_file_kb = proc_status_kb("RssFile");
    db.close()?;
    let mut doc = serde_json::json!({
        "engine": args.engine,
        "workload": args.workload,
        "keys": n,
        "ops": outcome.ops,
        "secs": outcome.secs,
        "ops_per_sec": if outcome.secs > 0.0 { outcome.ops as f64 / outcome.secs } else { 0.0 },
        "found": outcome.found,
        "flush_secs": flush_secs,
        "max_rss_kb": max_rss_kb,
        "rss_anon_kb": rss_anon_kb,
        "rss_file_kb": rss_file_kb,
        "disk_bytes": dir_bytes(&args.dir),
        "threads": if synced { Some(args.threads) } else { None },
    });
    if args.engine == "rocksdb" {
        doc["rocksdb_version"] = rocks::version().into();
    }
    if args.workload == "compact" {
        // Bytes on disk (tables, logs, manifest: the whole directory) per byte of live data.
        let live = n * (16 + VALUE_BYTES as u64);
        doc["space_amp"] = (dir_bytes(&args.dir) as f64 / live as f64).into();
    }
    for (k, v) in extras {
        doc[k] = v;
    }
    // Sanity checks: a fast wrong answer is not a result.
    let expect = match args.workload.as_str() {
        "readrandom" | "readseq" => Some(n),
        "readmissing" => Some(0),
        _ => None,
    };
    if let (Some(want), Some(got)) = (expect, outcome.found) {
        if want != got {
            return Err(format!(
                "{} on {}: expected {want} keys found, got {got}",
                args.workload, args.engine
            )
            .into());
        }
    }
    Ok(doc)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("storage-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(doc) => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "storage-bench: {} {} failed: {e}",
                args.engine, args.workload
            );
            ExitCode::FAILURE
        }
    }
}
