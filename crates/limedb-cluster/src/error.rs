//! The cluster crate's error type.
//!
//! One enum, [`ClusterError`], for everything that can go wrong when building a
//! [`Ring`](crate::Ring) or changing a [`ClusterMap`](crate::ClusterMap). Lookups on a
//! built ring cannot fail: a ring always has at least one virtual node.

use crate::map::Phase;
use crate::ShardId;

/// Why a ring could not be built, or a change of the cluster map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The shard list was empty; a ring needs at least one shard.
    #[error("a ring needs at least one shard")]
    NoShards,
    /// The same shard id appeared more than once in the shard list.
    #[error("shard {0} appears more than once")]
    DuplicateShard(ShardId),
    /// `vnodes_per_shard` was zero or above [`MAX_VNODES_PER_SHARD`](crate::MAX_VNODES_PER_SHARD).
    #[error("vnodes_per_shard must be in 1..={max}, got {vnodes_per_shard}")]
    InvalidVnodeCount {
        /// The value that was passed.
        vnodes_per_shard: u32,
        /// The largest accepted value.
        max: u32,
    },
    /// A move is already in progress; one runs at a time.
    #[error("a move is already in progress ({0}); wait for it to finish")]
    MoveInProgress(String),
    /// The requested ring is the current one.
    #[error("the cluster already has exactly these shards; nothing to move")]
    NothingToMove,
    /// No move is in progress.
    #[error("no move is in progress")]
    NoMove,
    /// The move in progress has another id.
    #[error("move {0} is not the move in progress")]
    NoSuchMove(u64),
    /// The move in progress has no transfer between these shards.
    #[error("the move in progress moves nothing from shard {from} to shard {to}")]
    NoSuchTransfer {
        /// Source shard.
        from: ShardId,
        /// Destination shard.
        to: ShardId,
    },
    /// Transfers have not finished.
    #[error("{0} transfer(s) of the move have not finished")]
    TransfersPending(usize),
    /// A transfer is not in the phase the caller expected.
    #[error("the transfer is in phase {actual}, not {expected}")]
    WrongPhase {
        /// The phase the caller expected.
        expected: Phase,
        /// The phase it is in.
        actual: Phase,
    },
    /// A group needs at least one replica.
    #[error("shard {0} has no replicas")]
    EmptyGroup(ShardId),
    /// The shard id is taken.
    #[error("shard {0} is already in the cluster map")]
    ShardExists(ShardId),
    /// The map has no such shard.
    #[error("shard {0} is not in the cluster map")]
    UnknownShard(ShardId),
    /// A move that handed ranges over can only go forward.
    #[error("move {move_id} has handed over the ranges of {transfers} already; it cannot be cancelled, only finished")]
    HandedOver {
        /// The move.
        move_id: u64,
        /// The transfers handed over, as `from → to` pairs.
        transfers: String,
    },
    /// The move is being cancelled: its transfers change no more.
    #[error("move {0} is being cancelled")]
    Cancelling(u64),
    /// The last shard cannot be removed.
    #[error("shard {0} is the only shard; a cluster needs at least one")]
    LastShard(ShardId),
}
