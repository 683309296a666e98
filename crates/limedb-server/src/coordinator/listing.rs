//! Listing keys across shards while ranges move: `SCAN` and `KEYS` through a coordinator.
//!
//! A key that moves is in two engines for a while: the destination holds it from its copy on,
//! the source until its clean-up, and for a moment around the cut-over neither *serves* it. So
//! neither "ask each shard in turn" (a key moving from a shard not yet listed to one already
//! listed is missed) nor "each shard lists what it serves" (the cut-over hides keys) keeps
//! Redis's promise that a key present for the whole `SCAN` is returned at least once. Instead:
//!
//! - a **round** asks every shard that owns part of the hash space at epoch E at once, each
//!   listing its engine's keys in key order from the same position;
//! - a shard answers a listing routed at E with `WrongShard` if its ownership record is newer
//!   than E once it has listed (`ShardNode::listed_at`): no range of it was fenced, and so none
//!   cleaned up, before it read its engine;
//! - the coordinator keeps each key only from the shard that owns it at E ([`merge`]). That
//!   shard held the key when it answered: a destination owns a range at E only once it holds
//!   all of it, and a source gives one up only by a fence newer than E;
//! - a round in which a shard answered `WrongShard`, or after which the coordinator's routing
//!   is no longer at E, is thrown away; the coordinator follows the map and runs it again.
//!
//! A `SCAN` cursor is therefore a position in key order across the whole cluster (not a shard
//! and a key): each step lists from it on every shard and returns the keys below the smallest
//! position any shard stopped at.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use limedb_cluster::{Routing, ShardId};
use limedb_resp::Value;

use super::routes::RouteState;
use super::CoordinatorNode;
use crate::resp::Fail;

/// One shard's part of a round: the keys it listed and where it stopped (`None`: it listed
/// everything from the round's position on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardListing {
    /// The shard that listed.
    pub shard: ShardId,
    /// Its keys, ascending.
    pub keys: Vec<Bytes>,
    /// The first key it did not look at.
    pub next: Option<Bytes>,
}

/// The keys of one round: from each shard the keys it owns under `routing`, below the first
/// position any shard stopped at, ascending; and that position (`None`: every shard listed to
/// the end). Keys at or past it are listed again by the next round.
pub fn merge(routing: &Routing, listings: Vec<ShardListing>) -> (Vec<Bytes>, Option<Bytes>) {
    let bound = listings.iter().filter_map(|l| l.next.clone()).min();
    let mut keys: Vec<Bytes> = listings
        .into_iter()
        .flat_map(|l| {
            let shard = l.shard;
            l.keys
                .into_iter()
                .filter(move |k| routing.owner_of_key(k) == shard)
        })
        .filter(|k| bound.as_ref().is_none_or(|b| k < b))
        .collect();
    // Each key has one owner, so no key comes twice.
    keys.sort_unstable();
    (keys, bound)
}

/// A shard's reply to `LIMEDB.SCAN`: `[next or nil, [keys]]`.
fn scan_reply(shard: ShardId, reply: Value) -> Result<ShardListing, Fail> {
    let bad = || Fail::new(format!("ERR shard {shard} sent a malformed reply to SCAN"));
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let [next, Value::Array(found)] = <[Value; 2]>::try_from(items).map_err(|_| bad())? else {
        return Err(bad());
    };
    let next = match next {
        Value::Bulk(k) => Some(k),
        Value::Null | Value::NullArray => None,
        _ => return Err(bad()),
    };
    Ok(ShardListing {
        shard,
        keys: bulk_strings(found).ok_or_else(bad)?,
        next,
    })
}

/// A shard's reply to `KEYS`: every matching key.
fn keys_reply(shard: ShardId, reply: Value) -> Result<ShardListing, Fail> {
    match reply {
        Value::Array(found) => Ok(ShardListing {
            shard,
            keys: bulk_strings(found)
                .ok_or_else(|| Fail::new(format!("ERR shard {shard} sent a malformed key")))?,
            next: None,
        }),
        _ => Err(Fail::new(format!(
            "ERR shard {shard} sent a malformed reply to KEYS"
        ))),
    }
}

fn bulk_strings(values: Vec<Value>) -> Option<Vec<Bytes>> {
    values
        .into_iter()
        .map(|v| match v {
            Value::Bulk(k) => Some(k),
            _ => None,
        })
        .collect()
}

/// How a round turned out.
enum Round {
    Listed(Vec<ShardListing>),
    /// A shard's ownership changed since the round's epoch (it answered `WrongShard`, and the
    /// coordinator followed the map): run the round again.
    Moved,
}

impl CoordinatorNode {
    /// One `SCAN` step from `start` that looks at about `count` keys in all (Redis's `COUNT`
    /// is an amount of work): the keys found and the position to continue from.
    pub(super) async fn scan_step(
        &self,
        start: Option<Bytes>,
        count: usize,
        pattern: Option<Bytes>,
    ) -> Result<(Vec<Bytes>, Option<Bytes>), Fail> {
        let shards = self.inner.routes.state().routing.owners().len().max(1);
        let mut args = vec![
            Bytes::from_static(b"LIMEDB.SCAN"),
            start.unwrap_or_default(),
            Bytes::from(count.div_ceil(shards).to_string()),
        ];
        args.extend(pattern);
        let (state, listings) = self.listing_round(args, scan_reply).await?;
        Ok(merge(&state.routing, listings))
    }

    /// `KEYS pattern` across the cluster, each key once.
    pub(super) async fn keys_everywhere(&self, pattern: Bytes) -> Result<Vec<Bytes>, Fail> {
        let args = vec![Bytes::from_static(b"KEYS"), pattern];
        let (state, listings) = self.listing_round(args, keys_reply).await?;
        Ok(merge(&state.routing, listings).0)
    }

    /// Sends `args` to every shard of the routing at once, and runs the round again until no
    /// shard's ownership changed during it (see the module docs), up to the shard timeout.
    async fn listing_round(
        &self,
        args: Vec<Bytes>,
        parse: fn(ShardId, Value) -> Result<ShardListing, Fail>,
    ) -> Result<(Arc<RouteState>, Vec<ShardListing>), Fail> {
        let routes = &self.inner.routes;
        let deadline = Instant::now() + self.inner.shard_timeout;
        loop {
            let state = routes.state();
            let epoch = state.routing.epoch();
            let round = match self.ask_every_shard(&state.routing, &args, parse).await {
                Ok(round) => round,
                // A shard that fails may have left the cluster (a removal finished, an
                // addition was cancelled) since this round read the routing.
                Err(e)
                    if Instant::now() < deadline
                        && (!Arc::ptr_eq(&routes.state(), &state) || routes.refresh().await) =>
                {
                    tracing::debug!(error = %e.0, "a listing failed under an older map; listing again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            match round {
                Round::Listed(listings) if routes.state().routing.epoch() == epoch => {
                    return Ok((state, listings));
                }
                _ if Instant::now() < deadline => {}
                _ => {
                    return Err(Fail::new(
                        "TRYAGAIN the cluster is moving keys and the map kept changing during this listing; retry",
                    ))
                }
            }
        }
    }

    /// One round: `args` to every shard that owns part of `routing`, at once.
    async fn ask_every_shard(
        &self,
        routing: &Routing,
        args: &[Bytes],
        parse: fn(ShardId, Value) -> Result<ShardListing, Fail>,
    ) -> Result<Round, Fail> {
        let routes = &self.inner.routes;
        let owners = routing
            .owners()
            .into_iter()
            .map(|shard| {
                routes.index_of(shard).map(|i| (i, shard)).ok_or_else(|| {
                    Fail::new(format!(
                        "ERR internal error: the ring names shard {shard}, which has no link"
                    ))
                })
            })
            .collect::<Result<Vec<_>, Fail>>()?;
        let calls = owners.iter().map(|&(i, _)| (i, args.to_vec())).collect();
        let replies = self.fan_out(calls).await;
        if replies.iter().any(super::resp_backend::is_moved) {
            return Ok(Round::Moved);
        }
        owners
            .into_iter()
            .zip(replies)
            .map(|((_, shard), reply)| match reply {
                Value::Error(e) => Err(Fail(e)),
                reply => parse(shard, reply),
            })
            .collect::<Result<Vec<_>, Fail>>()
            .map(Round::Listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<S: AsRef<str>>(names: &[S]) -> Vec<Bytes> {
        names
            .iter()
            .map(|n| Bytes::copy_from_slice(n.as_ref().as_bytes()))
            .collect()
    }

    /// Keys named `prefix` + a number, `n` of them, each owned by `shard` under `routing`.
    fn owned_by(routing: &Routing, shard: ShardId, prefix: &str, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}{i:05}"))
            .filter(|k| routing.owner_of_key(k.as_bytes()) == shard)
            .take(n)
            .collect()
    }

    #[test]
    fn a_round_keeps_each_key_from_its_owner_and_stops_at_the_smallest_position() {
        let routing = Routing::new(&[ShardId(1), ShardId(2)], 64).expect("valid in this test");
        let one = owned_by(&routing, ShardId(1), "k", 3);
        let two = owned_by(&routing, ShardId(2), "k", 3);
        // Shard 2 also still holds one of shard 1's keys (given away, not yet cleaned up):
        // it is listed once, from its owner.
        let mut held_by_two: Vec<&str> = two.iter().map(String::as_str).collect();
        held_by_two.push(&one[0]);
        held_by_two.sort_unstable();
        let listings = vec![
            ShardListing {
                shard: ShardId(1),
                keys: keys(&one),
                next: None,
            },
            ShardListing {
                shard: ShardId(2),
                keys: keys(&held_by_two),
                next: Some(Bytes::from(two[2].clone())),
            },
        ];
        let (found, next) = merge(&routing, listings);
        let bound = two[2].clone();
        let mut expected: Vec<String> = one
            .iter()
            .chain(two.iter())
            .filter(|k| **k < bound)
            .cloned()
            .collect();
        expected.sort();
        assert_eq!(found, keys(&expected));
        assert_eq!(next, Some(Bytes::from(bound)));
    }

    #[test]
    fn a_round_where_every_shard_reached_its_end_ends_the_scan() {
        let routing = Routing::new(&[ShardId(1)], 64).expect("valid in this test");
        let listings = vec![ShardListing {
            shard: ShardId(1),
            keys: keys(&["a", "b"]),
            next: None,
        }];
        assert_eq!(merge(&routing, listings), (keys(&["a", "b"]), None));
    }

    #[test]
    fn during_a_move_a_key_is_listed_from_whichever_shard_owns_it_at_the_epoch() {
        let mut routing = Routing::new(&[ShardId(1), ShardId(2)], 64).expect("valid in this test");
        routing
            .begin(&[ShardId(1), ShardId(2), ShardId(3)])
            .expect("valid in this test");
        let target = routing.target().expect("a move is in progress").clone();
        let moving: Vec<String> = (0..)
            .map(|i| format!("m{i:05}"))
            .filter(|k| {
                routing.owner_of_key(k.as_bytes()) == ShardId(1)
                    && target.shard_for_key(k.as_bytes()) == ShardId(3)
            })
            .take(5)
            .collect();
        let both = |routing: &Routing| {
            // The source still holds the keys and the destination has copied them.
            let listings = vec![
                ShardListing {
                    shard: ShardId(1),
                    keys: keys(&moving),
                    next: None,
                },
                ShardListing {
                    shard: ShardId(3),
                    keys: keys(&moving),
                    next: None,
                },
            ];
            merge(routing, listings).0.len()
        };
        assert_eq!(
            both(&routing),
            5,
            "before the hand-over, once (from the source)"
        );
        routing
            .hand_over(ShardId(1), ShardId(3))
            .expect("valid in this test");
        assert_eq!(both(&routing), 5, "after it, once (from the destination)");
    }

    #[test]
    fn malformed_shard_replies_are_errors() {
        let shard = ShardId(1);
        assert!(scan_reply(shard, Value::Integer(1)).is_err());
        assert!(scan_reply(shard, Value::Array(vec![Value::Null])).is_err());
        assert!(scan_reply(
            shard,
            Value::Array(vec![Value::Integer(3), Value::Array(Vec::new())])
        )
        .is_err());
        assert!(scan_reply(
            shard,
            Value::Array(vec![Value::Null, Value::Array(vec![Value::Integer(3)])])
        )
        .is_err());
        assert!(keys_reply(shard, Value::Integer(1)).is_err());
        let ok = scan_reply(
            shard,
            Value::Array(vec![Value::bulk("n"), Value::Array(vec![Value::bulk("a")])]),
        )
        .expect("well formed");
        assert_eq!(ok.keys, keys(&["a"]));
        assert_eq!(ok.next, Some(Bytes::from_static(b"n")));
    }
}
