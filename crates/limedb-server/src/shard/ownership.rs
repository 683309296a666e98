//! Which keys this shard serves: its **ownership record**, kept as its Raft group's record
//! (`limedb_raft::Replica::write_record`), so that every replica agrees on it and a new leader
//! inherits it. See ARCHITECTURE.md, *Elasticity*.
//!
//! The record is the cluster's [`Routing`] as this shard last heard it from the move driver: a
//! key is served here only while `routing.owner_of_key(key)` is this shard; any other key is
//! answered `WrongShard` with the record's epoch, and nothing is done. A shard without a record
//! (a seed-style cluster, or a shard on its own) serves every key, as before.
//!
//! A request holds the **gate** (a read lock) from its ownership check until it is answered; a
//! new record is written while holding the gate exclusively. So a record that hands keys away
//! is committed after every request that was allowed to touch them, and before any request
//! that checks again: the writes to a key handed over are all in the log before the record.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use limedb_cluster::{Routing, ShardId};
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::error::ApiError;

/// The gate and a decoded copy of the record.
#[derive(Debug, Default)]
pub struct Ownership {
    gate: RwLock<()>,
    /// The last record decoded, with its bytes (so a request decodes nothing new).
    decoded: Mutex<Option<(Bytes, Arc<Routing>)>>,
}

/// Held by a request while it runs: no new record is written meanwhile.
pub type OwnershipGuard<'a> = RwLockReadGuard<'a, ()>;

impl Ownership {
    /// Waits for the gate (shared).
    pub async fn enter(&self) -> OwnershipGuard<'_> {
        self.gate.read().await
    }

    /// Takes the gate exclusively: every request holding it has been answered.
    pub async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// The routing in `record` (`None`: no record).
    pub fn routing(&self, record: Option<Bytes>) -> Result<Option<Arc<Routing>>, ApiError> {
        let Some(record) = record else {
            return Ok(None);
        };
        let mut decoded = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bytes, routing)) = decoded.as_ref() {
            if *bytes == record {
                return Ok(Some(Arc::clone(routing)));
            }
        }
        let routing = Arc::new(decode(&record)?);
        *decoded = Some((record, Arc::clone(&routing)));
        Ok(Some(routing))
    }
}

/// Decodes a stored record.
pub fn decode(record: &[u8]) -> Result<Routing, ApiError> {
    serde_json::from_slice(record).map_err(|e| {
        ApiError::Internal(format!("the shard's ownership record cannot be read: {e}"))
    })
}

/// Encodes a record.
pub fn encode(routing: &Routing) -> Result<Bytes, ApiError> {
    serde_json::to_vec(routing)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("cannot encode an ownership record: {e}")))
}

/// `Ok` if `shard` owns every key under `routing`, else the `WrongShard` answer for the first
/// key it does not own.
pub fn check<K: AsRef<[u8]>>(
    routing: &Routing,
    shard: ShardId,
    keys: &[K],
) -> Result<(), ApiError> {
    match keys
        .iter()
        .map(|k| routing.owner_of_key(k.as_ref()))
        .find(|owner| *owner != shard)
    {
        None => Ok(()),
        Some(owner) => Err(ApiError::WrongShard {
            epoch: routing.epoch(),
            shard,
            owner,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_owned_elsewhere_are_refused_with_the_owner_and_epoch() {
        let routing = Routing::new(&[ShardId(1), ShardId(2)], 16).expect("routing");
        let (mine, theirs): (Vec<String>, Vec<String>) = (0..200)
            .map(|i| format!("k{i}"))
            .partition(|k| routing.owner_of_key(k.as_bytes()) == ShardId(1));
        assert!(!mine.is_empty() && !theirs.is_empty());
        assert!(check(&routing, ShardId(1), &mine).is_ok());
        let mixed = [mine[0].clone(), theirs[0].clone()];
        match check(&routing, ShardId(1), &mixed) {
            Err(ApiError::WrongShard {
                epoch,
                shard,
                owner,
            }) => {
                assert_eq!((epoch, shard, owner), (1, ShardId(1), ShardId(2)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_is_decoded_once_and_a_bad_one_is_an_error() {
        let ownership = Ownership::default();
        assert!(ownership.routing(None).expect("none").is_none());
        let routing = Routing::new(&[ShardId(1)], 4).expect("routing");
        let bytes = encode(&routing).expect("encode");
        let a = ownership
            .routing(Some(bytes.clone()))
            .expect("a")
            .expect("some");
        let b = ownership.routing(Some(bytes)).expect("b").expect("some");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second lookup reuses the decoded record"
        );
        assert!(ownership.routing(Some(Bytes::from_static(b"{"))).is_err());
    }
}
