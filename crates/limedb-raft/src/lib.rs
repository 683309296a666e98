//! LimeDB replication: every shard a Raft group. openraft runs the consensus algorithm; this
//! crate gives it LimeDB's storage, and gives LimeDB a replica to write through.
//!
//! # Tour
//!
//! ```text
//!   limedb-server (sockets)                    limedb-raft (no sockets)
//!   ───────────────────────                    ────────────────────────
//!   shard write ─────────────────────────────▶ Replica::write ─ proposer ─ openraft::Raft
//!   shard read ──────────────────────────────▶ Replica::read_barrier         │      │
//!   internal listener: Raft RPC frames ──────▶ Replica::handle_rpc           │      │
//!   RaftTransport impl (peer connections) ◀── network (RaftNetworkFactory) ◀─┘      │
//!                                              log_store (segments, vote)  ◀────────┤
//!                                              state_machine (engine,      ◀────────┘
//!                                                snapshots = checkpoints)
//! ```
//!
//! - [`types`]: openraft's type configuration and what the log carries ([`types::Command`], a
//!   batch of blind [`types::ReplicatedWrite`]s).
//! - [`codec`]: the binary encoding of entries and Raft messages (pure).
//! - [`log_store`]: the Raft log on disk.
//! - [`state_machine`]: applying entries to a storage engine; snapshots.
//! - [`network`]: [`RaftTransport`] (implemented by the server) and openraft's network over it.
//! - [`replica`]: [`Replica`], what a shard holds: writes, read barriers, membership, status.
//! - [`election`]: when a replica stands for election (LimeDB's timer, with a pre-vote).
//! - [`lease`]: the leader's lease, which lets it serve reads without a round to its peers.
//! - [`fsutil`]: small atomically replaced files and directory syncs.
//! - [`error`]: [`ReplicaError`], the one error type.

pub mod codec;
pub mod election;
pub mod error;
pub mod fsutil;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod replica;
pub mod state_machine;
pub mod types;

pub use error::ReplicaError;
pub use network::{RaftTransport, RpcKind, TransportError};
pub use replica::{RaftTiming, Replica, ReplicaConfig, ReplicaStatus, Role};
pub use state_machine::ApplyObserver;
pub use types::{Applied, Command, ReplicaId, ReplicaNode, ReplicatedWrite, TypeConfig};
