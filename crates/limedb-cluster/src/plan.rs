//! Which hash ranges move, and between which shards, when the ring changes.
//!
//! Going from one [`Ring`] to another (a shard added or removed) changes the owner of some
//! stretches of the hash space and leaves the rest alone. [`transfers`] lists those stretches
//! grouped by (source, destination) pair: one [`Transfer`] per pair, which is the unit a move
//! copies, cuts over and cleans up (see ARCHITECTURE.md, *Elasticity*). Pure computation over
//! the two rings' points: no keys are needed to know what moves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ring::{fraction, range_size};
use crate::{Ring, ShardId};

/// The hash ranges that go from one shard to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    /// The shard that owns the ranges before.
    pub from: ShardId,
    /// The shard that owns them after.
    pub to: ShardId,
    /// `(start, end]` ranges in point order; a range with `start >= end` wraps past `u64::MAX`.
    /// Adjacent ranges are merged.
    pub ranges: Vec<(u64, u64)>,
    /// The share of the hash space that moves, `0.0..=1.0`.
    pub fraction: f64,
}

impl Transfer {
    /// Whether `hash` is in one of the transfer's ranges.
    #[must_use]
    pub fn contains(&self, hash: u64) -> bool {
        self.ranges.iter().any(|&(start, end)| {
            if start < end {
                hash > start && hash <= end
            } else {
                hash > start || hash <= end
            }
        })
    }
}

/// Every (source, destination) pair whose ownership changes going from `before` to `after`,
/// sorted by (from, to). Empty when the rings route every hash alike.
///
/// ```
/// use limedb_cluster::{plan, Ring, ShardId};
///
/// let three = Ring::new(&[ShardId(1), ShardId(2), ShardId(3)], 64)?;
/// let four = Ring::new(&[ShardId(1), ShardId(2), ShardId(3), ShardId(4)], 64)?;
/// let moves = plan::transfers(&three, &four);
/// // Adding a shard only ever moves ranges to it, from each of the others.
/// assert_eq!(moves.len(), 3);
/// assert!(moves.iter().all(|t| t.to == ShardId(4)));
/// # Ok::<(), limedb_cluster::ClusterError>(())
/// ```
#[must_use]
pub fn transfers(before: &Ring, after: &Ring) -> Vec<Transfer> {
    // (from, to) → the ranges and their total size.
    type Ranges = (Vec<(u64, u64)>, u128);
    let mut by_pair: BTreeMap<(ShardId, ShardId), Ranges> = BTreeMap::new();
    before.segments(after, |start, end, from, to| {
        if from == to {
            return;
        }
        let (ranges, size) = by_pair.entry((from, to)).or_default();
        *size += range_size(start, end);
        match ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => ranges.push((start, end)),
        }
    });
    by_pair
        .into_iter()
        .map(|((from, to), (mut ranges, size))| {
            merge_wrap(&mut ranges);
            Transfer {
                from,
                to,
                ranges,
                fraction: fraction(size),
            }
        })
        .collect()
}

/// The segment walk starts with the wrapping segment, so a pair's first range may continue
/// its last one across `u64::MAX`; joins them into one wrapping range.
fn merge_wrap(ranges: &mut Vec<(u64, u64)>) {
    if ranges.len() < 2 {
        return;
    }
    let (first, last) = (ranges[0], ranges[ranges.len() - 1]);
    if last.1 == first.0 {
        ranges[0] = (last.0, first.1);
        ranges.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_hash;
    use proptest::prelude::*;

    fn ids(ids: &[u32]) -> Vec<ShardId> {
        ids.iter().map(|&i| ShardId(i)).collect()
    }

    #[test]
    fn identical_rings_move_nothing() {
        let ring = Ring::new(&ids(&[1, 2, 3]), 32).expect("valid in this test");
        assert!(transfers(&ring, &ring).is_empty());
    }

    #[test]
    fn removing_a_shard_moves_only_its_ranges_and_all_of_them() {
        let four = Ring::new(&ids(&[1, 2, 3, 4]), 64).expect("valid in this test");
        let three = Ring::new(&ids(&[1, 2, 3]), 64).expect("valid in this test");
        let moves = transfers(&four, &three);
        assert_eq!(moves.len(), 3);
        assert!(moves.iter().all(|t| t.from == ShardId(4)));
        let moved: f64 = moves.iter().map(|t| t.fraction).sum();
        let owned = four.ownership()[&ShardId(4)];
        assert!((moved - owned).abs() < 1e-12, "{moved} vs {owned}");
    }

    #[test]
    fn a_single_vnode_ring_grown_wraps_correctly() {
        let one = Ring::new(&ids(&[1]), 1).expect("valid in this test");
        let two = Ring::new(&ids(&[1, 2]), 1).expect("valid in this test");
        let moves = transfers(&one, &two);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].ranges.len(), 1);
        for probe in [0u64, 1, u64::MAX, u64::MAX / 2, 12345] {
            let moved = two.shard_for_hash(probe) == ShardId(2);
            assert_eq!(moves[0].contains(probe), moved, "hash {probe}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A hash is in transfer (a, b) exactly when the first ring gives it to a and the
        /// second to b, and the transfers' shares add up to the rings' moved fraction.
        #[test]
        fn transfers_are_exactly_the_changed_ownership(
            before in proptest::collection::btree_set(1u32..12, 1..6),
            after in proptest::collection::btree_set(1u32..12, 1..6),
            vnodes in 1u32..40,
            probes in proptest::collection::vec(any::<u64>(), 200),
            keys in proptest::collection::vec(any::<Vec<u8>>(), 50),
        ) {
            let before = Ring::new(&before.into_iter().map(ShardId).collect::<Vec<_>>(), vnodes).expect("valid in this test");
            let after = Ring::new(&after.into_iter().map(ShardId).collect::<Vec<_>>(), vnodes).expect("valid in this test");
            let moves = transfers(&before, &after);
            let total: f64 = moves.iter().map(|t| t.fraction).sum();
            prop_assert!((total - before.moved_fraction(&after)).abs() < 1e-9);
            let hashes = probes.into_iter()
                .chain(keys.iter().map(|k| key_hash(k)))
                .chain(before.vnodes().iter().chain(after.vnodes()).flat_map(|v| [v.point, v.point.wrapping_add(1)]));
            for h in hashes {
                let (a, b) = (before.shard_for_hash(h), after.shard_for_hash(h));
                let holders: Vec<_> = moves.iter().filter(|t| t.contains(h)).collect();
                if a == b {
                    prop_assert!(holders.is_empty(), "hash {} stays on {} but is in a transfer", h, a);
                } else {
                    prop_assert_eq!(holders.len(), 1);
                    prop_assert_eq!((holders[0].from, holders[0].to), (a, b));
                }
            }
        }
    }
}
