//! `limedb-bench`: the load generator behind `limedb bench`, successor of the
//! seed prototype's `bulk_set.py`.
//!
//! It opens `C` keep-alive HTTP/1.1 connections to a LimeDB coordinator or
//! shard (or anything speaking the same API), or to etcd's HTTP/JSON gateway
//! for a side-by-side comparison ([`Api`]), and drives them closed-loop — one
//! request in flight per connection — until `N` requests are done, then
//! reports throughput and latency percentiles.
//!
//! ```text
//!   BenchOptions ──validate──▶ Target ──resolve+probe──▶ SocketAddr
//!        │
//!        ▼                      ┌── worker 0: Client ──▶ HTTP/1.1 conn ──┐
//!   run(): prefill? warm-up? ───┼── worker 1: Client ──▶ HTTP/1.1 conn ──┼──▶ server
//!          bench (measured)     └── worker C-1 …                         ┘
//!        │    tickets: one AtomicU64; latencies: one Recorder per worker
//!        ▼
//!   merged Recorder ──▶ BenchReport ──▶ to_table() / JSON
//! ```
//!
//! # Modules
//!
//! * [`options`]: [`BenchOptions`], [`Api`], [`Workload`], [`KeyPattern`],
//!   [`ValueKind`], and [`Target`] (the checked base URL).
//! * [`keys`]: key names (`key:000000000042`), value bytes (compressible or
//!   not, per [`ValueKind`]), the PRNG and the per-connection key choice.
//! * [`client`]: one connection; builds requests from pre-built parts and
//!   drives hyper's connection in its own task.
//! * [`etcd`]: etcd's gateway format (base64 bodies, reading its answers).
//! * [`run`](mod@run): phases, tickets, error limit, progress bar.
//! * [`report`]: per-connection HDR histograms, [`BenchReport`] with its
//!   table and JSON forms.
//! * [`error`]: the one error type, [`BenchError`].
//!
//! # The API exercised
//!
//! * `POST {prefix}/api/v1/set` with `{"key":"…","value":"…"}` → 200.
//! * `GET {prefix}/api/v1/get/{key}` → 200 with the value, or 404 (counted
//!   as `not_found`, not as an error).
//!
//! With [`Api::Etcd`], the same operations go to etcd v3's gateway:
//! `POST {prefix}/v3/kv/put` and a linearizable `POST {prefix}/v3/kv/range`,
//! keys and values in base64; a range without `kvs` counts as `not_found`, and
//! any non-2xx status (404 included) or error answer as an error.
//!
//! # Limits
//!
//! `http://` only (no TLS), HTTP/1.1 only, at most
//! [`MAX_CONNECTIONS`](options::MAX_CONNECTIONS) connections and
//! [`MAX_VALUE_SIZE`](options::MAX_VALUE_SIZE)-byte values. A run aborts once
//! failures exceed 1 % of the requests (at least [`run::MIN_ERROR_LIMIT`]).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), limedb_bench::BenchError> {
//! use limedb_bench::{run, BenchOptions, Workload};
//! let report = run(&BenchOptions {
//!     url: "http://127.0.0.1:8080".into(),
//!     workload: Workload::Get,
//!     ..BenchOptions::default()
//! })
//! .await?;
//! println!("{}", report.to_table());
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod etcd;
pub mod keys;
pub mod options;
pub mod report;
pub mod run;

pub use error::BenchError;
pub use options::{Api, BenchOptions, KeyPattern, Target, ValueKind, Workload};
pub use report::{BenchReport, LatencySummary, OpSummary};
pub use run::run;
