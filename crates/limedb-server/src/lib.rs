//! LimeDB's servers: the shard and coordinator services and everything that touches a socket.
//!
//! ```text
//!  client ──HTTP/JSON──▶ coordinator ──internal binary protocol──▶ shard ──▶ storage engine
//!                        (ring: key → shard)   (multiplexed TCP)     (HTTP API for direct access too)
//! ```
//!
//! Tour:
//! - [`shard`]: a storage engine served over HTTP and the internal protocol ([`shard::ShardServer`]).
//! - [`coordinator`]: routes keys on the consistent-hash ring to shards ([`coordinator::CoordinatorServer`]),
//!   with a supervised connection pool per shard ([`coordinator::link`]).
//! - [`http`]: the JSON API router shared by both node kinds and the accept loop.
//! - [`node`]: the [`node::KvNode`] trait the HTTP API is written against.
//! - [`resp`]: the Redis protocol listener (shard and coordinator), its commands and
//!   transactions.
//! - [`config`]: resolved configuration of each node kind; [`metrics`]: Prometheus metrics;
//!   [`shutdown`]: the shutdown signal every loop listens to; [`dev`]: a whole local cluster in
//!   one process.
//!
//! Engine calls never wait on a runtime worker: [`shard::storage`] runs in-memory reads and
//! small writes that need no waiting inline, group-commits the rest on a writer thread, and sends
//! scans to the blocking pool. Every server takes a bound listener and a
//! [`shutdown::Shutdown`], caps its connections, and answers in-flight requests before it
//! returns.

mod accept;
pub mod auth;
pub mod config;
pub mod coordinator;
pub mod dev;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod resp;
pub mod ring_json;
pub mod shard;
pub mod shutdown;
mod wire;

/// Name and version reported by nodes.
pub const SERVER_NAME: &str = concat!("limedb/", env!("CARGO_PKG_VERSION"));

pub use error::{ApiError, ServerError};
