//! LimeDB storage: the engines a shard keeps its keys in, behind one synchronous [`Engine`] trait.
//!
//! # Tour
//!
//! ```text
//!   limedb-server (tokio)                       limedb-storage (blocking, no tokio)
//!   ─────────────────────                       ────────────────────────────────────
//!   shard/storage.rs: engine.put(..) ────────►  trait Engine            (engine.rs)
//!                                                 ├─ MemoryEngine       (memory/; --storage memory)
//!                                                 │    ├─ BTreeMap + TTL index in memory
//!                                                 │    └─ memory.log    (memory/log.rs)
//!                                                 └─ LsmEngine          (lsm/engine/; --storage lsm)
//!                                                      ├─ WAL, memtables
//!                                                      └─ SSTables in levels, manifest
//! ```
//!
//! - [`engine`]: the backend-agnostic [`Engine`] trait and its plain data types ([`Value`],
//!   [`Page`], [`EngineStats`], [`Health`]). The PostgreSQL backend implements the same trait
//!   in its own crate, `limedb-postgres`, so that this crate stays free of async code and
//!   sockets.
//! - [`memory`]: the first backend, [`MemoryEngine`]: an ordered in-memory map made durable by
//!   an append-only log that is replayed on open and rewritten when it grows too large.
//! - [`lsm`]: LimeDB's own LSM-tree engine, [`LsmEngine`], and its building blocks (WAL,
//!   memtable, SSTables, block cache, manifest, leveled compaction).
//! - [`sync`]: [`SyncPolicy`], how eagerly acknowledged writes are fsynced.
//! - [`error`]: [`StorageError`], the one error type of this crate.
//! - [`clock`]: [`now_ms`], the wall clock that expiry is measured against.
//!
//! # Durability promise
//!
//! Every acknowledged `put`/`delete` has been handed to the operating system (`write(2)`,
//! `pwrite(2)`, or a store into a shared mapping of the log file) before it returns, so it
//! survives the process being killed (`kill -9`) under
//! every policy.
//! Surviving a machine crash or power loss depends on the [`SyncPolicy`]:
//!
//! | policy         | an acknowledged write survives power loss                      |
//! |----------------|----------------------------------------------------------------|
//! | `Always`       | always: fsynced before the call returns (group commit)         |
//! | `Interval(d)`  | if it was acknowledged more than about `d` before the crash    |
//! | `Never`        | only after an explicit [`Engine::sync`] or [`Engine::close`]    |
//!
//! A failed write or fsync poisons the engine: reads keep working, every later write returns
//! [`StorageError::Poisoned`].
//!
//! # Limits
//!
//! Keys are at most [`MAX_KEY_BYTES`] (16 MiB) and values at most [`MAX_VALUE_BYTES`] (1 GiB);
//! these are hard limits of the on-disk format. Expiry times are absolute milliseconds since
//! the Unix epoch; a value with `expires_at_ms <= now_ms()` is expired and reads as absent.
//!
//! # Example
//!
//! ```
//! use limedb_storage::{Engine, MemoryEngine, MemoryOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = MemoryEngine::open(dir.path(), MemoryOptions::default())?;
//! engine.put(b"lime", b"green", None)?;
//! assert_eq!(engine.get(b"lime")?.map(|v| v.data), Some("green".into()));
//! engine.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clock;
pub mod engine;
pub mod error;
mod fsutil;
mod lifecycle;
pub mod lsm;
pub mod memory;
pub mod sync;

pub use clock::now_ms;
pub use engine::{Engine, EngineStats, Health, LevelFigures, Page, Value, WriteOp};
pub use error::StorageError;
pub use lsm::engine::{LsmEngine, LsmOptions};
pub use memory::{MemoryEngine, MemoryOptions};
pub use sync::{ParseSyncPolicyError, SyncPolicy};

/// The result type of every fallible storage call.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Largest key the on-disk formats accept, in bytes (16 MiB).
pub const MAX_KEY_BYTES: usize = 16 << 20;

/// Largest value the on-disk formats accept, in bytes (1 GiB).
pub const MAX_VALUE_BYTES: usize = 1 << 30;
