//! The cluster crate's error type.
//!
//! One enum, [`RingError`], for everything that can go wrong when building a
//! [`Ring`](crate::Ring). Lookups on a built ring cannot fail: a ring always has
//! at least one virtual node.

use crate::ShardId;

/// Why a [`Ring`](crate::Ring) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
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
}
