//! # limedb-cluster
//!
//! Cluster logic for LimeDB: decisions about *where* data lives, made in pure
//! code. Nothing here opens a socket or a file; the server crate acts on what
//! this crate decides.
//!
//! ## What lives here today
//!
//! - [`ring`]: the consistent-hash [`Ring`] with virtual nodes, which maps a key
//!   to the [`ShardId`] that owns it. It replaces the seed prototype's
//!   `abs(key.hashCode()) % n`, so that adding or removing one shard moves only
//!   about `1/N` of the keys instead of nearly all of them.
//! - [`map`]: the [`ClusterMap`] (groups, replicas, the move in progress) and its
//!   [`Routing`] (who owns each hash at which ring epoch, during a move too), with pure,
//!   all-or-nothing transitions.
//! - [`plan`]: which hash ranges move between which shards when the ring changes
//!   ([`plan::transfers`]).
//! - [`error`]: [`ClusterError`], the crate's one error enum.
//!
//! ```text
//!   key bytes ──key_hash (xxh3-64)──▶ u64 hash ──Ring::shard_for_hash──▶ ShardId
//!
//!   hash space 0 ─────────────────────────────────────────────── 2^64-1
//!              │    ●s1      ●s3   ●s2          ●s1     ●s2     │
//!              └─ a hash belongs to the first vnode point at or after it,
//!                 wrapping past 2^64-1 to the first point ─────────┘
//! ```
//!
//! ## Contracts
//!
//! - [`key_hash`] (xxh3-64, seed 0, over the raw key bytes) and the vnode
//!   placement described in [`ring`] are part of the on-disk and on-wire
//!   contract: changing either reassigns keys to shards. Golden tests pin both.
//! - A ring is a pure function of its shard set and `vnodes_per_shard`: every
//!   coordinator that builds a ring from the same inputs routes identically.
//!
//! ## What comes later (see `ROADMAP.md`)
//!
//! - The map group and the move driver live in the server and raft crates; this
//!   crate stays the pure model they share (see ARCHITECTURE.md, *Elasticity*).

pub mod error;
pub mod map;
pub mod plan;
pub mod ring;

pub use error::ClusterError;
pub use map::{CaptureRef, ClusterMap, Group, Move, MoveKind, Phase, Routing, TransferState};
pub use plan::Transfer;
pub use ring::{
    key_hash, HashRange, Ring, ShardId, SpreadStats, VNode, DEFAULT_VNODES_PER_SHARD,
    MAX_VNODES_PER_SHARD,
};
