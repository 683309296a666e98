//! Round trips of every message, and garbage, truncated and bit-flipped input: always an error
//! or a valid value, never a panic, and never more allocation than the input justifies.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;

use super::*;

fn log_id() -> impl Strategy<Value = LogId> {
    (0u64..1000, 0u64..10, 0u64..1_000_000)
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

fn vote() -> impl Strategy<Value = Vote> {
    (0u64..1000, 0u64..10, any::<bool>()).prop_map(|(t, n, c)| {
        if c {
            Vote::new_committed(t, n)
        } else {
            Vote::new(t, n)
        }
    })
}

fn membership() -> impl Strategy<Value = Membership> {
    (
        prop::collection::btree_set(1u64..8, 1..4),
        prop::collection::btree_set(1u64..8, 0..4),
        any::<bool>(),
        prop::collection::btree_set(8u64..12, 0..3),
    )
        .prop_map(|(a, b, joint, learners)| {
            let mut configs = vec![a];
            if joint && !b.is_empty() {
                configs.push(b);
            }
            let mut nodes = BTreeMap::new();
            for id in configs.iter().flatten().chain(learners.iter()) {
                nodes.insert(
                    *id,
                    ReplicaNode {
                        url: format!("http://10.0.0.{id}:700{id}"),
                    },
                );
            }
            Membership::new(configs, nodes)
        })
}

fn write() -> impl Strategy<Value = ReplicatedWrite> {
    (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..16),
        prop::collection::vec(any::<u8>(), 0..32),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(put, key, value, expires_at_ms)| {
            if put {
                ReplicatedWrite::Put {
                    key: key.into(),
                    value: value.into(),
                    expires_at_ms,
                }
            } else {
                ReplicatedWrite::Delete { key: key.into() }
            }
        })
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        log_id(),
        0u8..3,
        prop::collection::vec(write(), 0..6),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        membership(),
    )
        .prop_map(|(log_id, kind, writes, record, m)| Entry {
            log_id,
            payload: match kind {
                0 => EntryPayload::Blank,
                1 => EntryPayload::Normal(Command {
                    writes,
                    record: record.map(Into::into),
                }),
                _ => EntryPayload::Membership(m),
            },
        })
}

fn append_request() -> impl Strategy<Value = AppendEntriesRequest<TypeConfig>> {
    (
        vote(),
        prop::option::of(log_id()),
        prop::collection::vec(entry(), 0..5),
        prop::option::of(log_id()),
    )
        .prop_map(
            |(vote, prev_log_id, entries, leader_commit)| AppendEntriesRequest {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            },
        )
}

fn append_response() -> impl Strategy<Value = AppendEntriesResponse<ReplicaId>> {
    (0u8..4, prop::option::of(log_id()), vote()).prop_map(|(kind, matching, v)| match kind {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(matching),
        2 => AppendEntriesResponse::Conflict,
        _ => AppendEntriesResponse::HigherVote(v),
    })
}

fn snapshot_meta() -> impl Strategy<Value = SnapshotMeta> {
    (
        prop::option::of(log_id()),
        prop::option::of(log_id()),
        membership(),
        "[a-z0-9-]{0,40}",
    )
        .prop_map(|(last, mlog, m, id)| SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::new(mlog, m),
            snapshot_id: id,
        })
}

/// Encodes, decodes, and checks every strict prefix is refused.
fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Encode + Decode + std::fmt::Debug,
{
    let bytes = to_bytes(value);
    let back: T = from_bytes(bytes.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(format!("{back:?}"), format!("{value:?}"));
    for cut in 0..bytes.len() {
        prop_assert!(
            from_bytes::<T>(bytes.slice(..cut)).is_err(),
            "a prefix of {} of {} bytes decoded",
            cut,
            bytes.len()
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    prop_assert!(matches!(
        from_bytes::<T>(Bytes::from(longer)),
        Err(CodecError::Trailing(1))
    ));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn entries_round_trip(e in entry()) {
        round_trip(&e)?;
    }

    #[test]
    fn append_requests_round_trip(r in append_request()) {
        round_trip(&r)?;
    }

    #[test]
    fn append_responses_round_trip(r in append_response()) {
        round_trip(&r)?;
    }

    #[test]
    fn votes_round_trip(v in vote(), last in prop::option::of(log_id()), granted in any::<bool>()) {
        round_trip(&VoteRequest { vote: v, last_log_id: last })?;
        round_trip(&VoteResponse { vote: v, vote_granted: granted, last_log_id: last })?;
    }

    #[test]
    fn snapshot_meta_round_trips(m in snapshot_meta()) {
        round_trip(&m)?;
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let b = Bytes::from(bytes);
        let _ = from_bytes::<AppendEntriesRequest<TypeConfig>>(b.clone());
        let _ = from_bytes::<AppendEntriesResponse<ReplicaId>>(b.clone());
        let _ = from_bytes::<VoteRequest<ReplicaId>>(b.clone());
        let _ = from_bytes::<VoteResponse<ReplicaId>>(b.clone());
        let _ = from_bytes::<SnapshotMeta>(b.clone());
        let _ = from_bytes::<Entry>(b);
    }

    #[test]
    fn flipped_bytes_never_panic(r in append_request(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = to_bytes(&r).to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let _ = from_bytes::<AppendEntriesRequest<TypeConfig>>(Bytes::from(bytes));
    }
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // A vote, no prev log id, then a count of 2^32-1 entries with nothing behind it.
    let mut bytes = to_bytes(&Vote::new(1, 1)).to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    let err =
        from_bytes::<AppendEntriesRequest<TypeConfig>>(Bytes::from(bytes)).expect_err("cannot fit");
    assert!(err.to_string().contains("cannot fit"), "{err}");
}

#[test]
fn a_voter_without_a_member_entry_is_refused() {
    // One voter set {5}, no members.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let err = from_bytes::<Membership>(Bytes::from(bytes)).expect_err("no node for voter 5");
    assert!(err.to_string().contains("voter 5"), "{err}");
}

#[test]
fn the_wire_image_of_a_log_id_is_pinned() {
    let id = LogId::new(CommittedLeaderId::new(2, 3), 4);
    let mut want = Vec::new();
    for n in [2u64, 3, 4] {
        want.extend_from_slice(&n.to_le_bytes());
    }
    assert_eq!(to_bytes(&id).to_vec(), want);
    let m = Membership::new(vec![BTreeSet::from([1u64])], ());
    let back: Membership = from_bytes(to_bytes(&m)).expect("round trip");
    assert_eq!(back, m);
}
