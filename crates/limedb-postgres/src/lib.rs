//! LimeDB's PostgreSQL storage backend: [`PgEngine`] implements the synchronous
//! [`limedb_storage::Engine`] trait over one PostgreSQL database per shard, as the original
//! LimeDB did (`limedb_shard_1`, `limedb_shard_2`, ...).
//!
//! It lives in its own crate because it needs async I/O (tokio-postgres, a deadpool connection
//! pool), which `limedb-storage` deliberately does without.
//!
//! # Tour
//!
//! ```text
//!   shard/storage.rs (server)          limedb-postgres
//!   ─────────────────────────          ───────────────────────────────────────────────────────
//!   writer thread ── write_many ──►    PgEngine::run: Handle::block_on on the engine's own
//!   blocking pool ── get, page  ──►      2-thread tokio runtime, bounded by --pg-timeout-ms
//!                                        └─ deadpool Pool ─► tokio-postgres connections
//!   health endpoint ── health() ──►    last observed state (never blocks)
//!                                      background tasks on the same runtime:
//!                                        monitor: SELECT 1 every 500 ms → Health
//!                                        maintenance: delete expired rows, refresh stats
//! ```
//!
//! - [`options`]: [`PgOptions`], the connection URL, database name and timeouts.
//! - [`engine`]: [`PgEngine`], the `Engine` implementation, and why it owns a runtime.
//! - [`sql`]: every SQL statement the engine runs, the table layout and database creation.
//! - [`errors`]: how a tokio-postgres or pool error becomes a [`limedb_storage::StorageError`]:
//!   `Unavailable` (the server is down, restarting, unreachable, slow or refuses us; the shard
//!   answers 503) or `Backend` (anything else).
//!
//! # Data layout
//!
//! One table per shard database:
//!
//! ```sql
//! CREATE TABLE limedb_kv (
//!     key           bytea  PRIMARY KEY,   -- ordered bytewise, as every LimeDB engine orders keys
//!     value         bytea  NOT NULL,
//!     expires_at_ms bigint NULL           -- ms since the Unix epoch; NULL lives forever
//! );
//! ```
//!
//! Durability is PostgreSQL's: a write is acknowledged after its transaction commits, which with
//! `synchronous_commit = on` (PostgreSQL's default) means its WAL record is on disk.
//!
//! # Example
//!
//! ```no_run
//! use limedb_postgres::{PgEngine, PgOptions};
//! use limedb_storage::Engine;
//!
//! let engine = PgEngine::open(PgOptions::new("postgres://limedb@127.0.0.1:5432/", "limedb_shard_1"))?;
//! engine.put(b"lime", b"green", None)?;
//! assert_eq!(engine.get(b"lime")?.map(|v| v.data), Some("green".into()));
//! engine.close()?;
//! # Ok::<(), limedb_storage::StorageError>(())
//! ```

pub mod engine;
pub mod errors;
pub mod options;
pub mod sql;

pub use engine::PgEngine;
pub use options::{database_name, PgOptions, DEFAULT_DATABASE_TEMPLATE};

/// How PostgreSQL is named in error messages and health reports.
pub const BACKEND: &str = "PostgreSQL";
