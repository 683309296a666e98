use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn group(port: u16) -> Group {
    Group {
        replicas: (1..=3u64)
            .map(|r| {
                (
                    r,
                    format!("http://127.0.0.1:{}", port + 100 * (r as u16 - 1)),
                )
            })
            .collect(),
    }
}

fn three_shards() -> ClusterMap {
    let groups = (1..=3u32)
        .map(|s| (ShardId(s), group(7000 + s as u16)))
        .collect();
    ClusterMap::bootstrap(groups, 64).expect("valid in this test")
}

/// Runs every transfer of the move in progress through all its phases, in order.
fn run_to_done(map: &mut ClusterMap) {
    let m = map.moving().expect("valid in this test").clone();
    for t in &m.transfers {
        let mut phase = t.phase;
        while phase != Phase::Done {
            phase = map
                .advance(m.id, t.from, t.to, phase)
                .expect("valid in this test");
        }
    }
    map.finish_move(m.id).expect("valid in this test");
}

#[test]
fn adding_a_shard_ends_with_the_ring_of_the_new_shard_set() {
    let mut map = three_shards();
    assert_eq!(map.epoch(), 1);
    let id = map
        .add_shard(ShardId(4), group(7004))
        .expect("valid in this test");
    assert_eq!(map.epoch(), 2, "starting a move bumps the epoch");
    let m = map.moving().expect("valid in this test");
    assert_eq!(m.id, id);
    assert_eq!(m.transfers.len(), 3);
    assert!(m.transfers.iter().all(|t| t.to == ShardId(4)));
    assert_eq!(
        map.routing().shards(),
        vec![ShardId(1), ShardId(2), ShardId(3), ShardId(4)],
        "the shard being added is a member while it receives"
    );
    assert_eq!(
        map.routing().owners(),
        vec![ShardId(1), ShardId(2), ShardId(3)],
        "but owns nothing before a hand-over"
    );
    // Nothing changes owner before a cut-over.
    let before = Ring::new(&[ShardId(1), ShardId(2), ShardId(3)], 64).expect("valid in this test");
    for i in 0..2000u32 {
        let key = format!("k{i}");
        assert_eq!(
            map.routing().owner_of_key(key.as_bytes()),
            before.shard_for_key(key.as_bytes())
        );
    }
    let version = map.version();
    run_to_done(&mut map);
    // Start, three hand-overs, finish.
    assert_eq!(map.epoch(), 6);
    // Every change grows the version: 3 transfers × 5 phases, and the finish.
    assert_eq!(map.version(), version + 16);
    let after = Ring::new(&[ShardId(1), ShardId(2), ShardId(3), ShardId(4)], 64)
        .expect("valid in this test");
    assert_eq!(map.routing().base(), &after);
    assert!(map.routing().target().is_none());
    assert!(map.moving().is_none());
    assert_eq!(map.groups().len(), 4);
}

#[test]
fn removing_a_shard_drops_its_group_once_its_ranges_are_given_away() {
    let mut map = three_shards();
    let id = map.remove_shard(ShardId(2)).expect("valid in this test");
    assert!(map
        .moving()
        .expect("valid in this test")
        .transfers
        .iter()
        .all(|t| t.from == ShardId(2)));
    assert_eq!(
        map.finish_move(id),
        Err(ClusterError::TransfersPending(2)),
        "a move with transfers left cannot finish"
    );
    assert_eq!(
        map.groups().len(),
        3,
        "the group stays while it still owns ranges"
    );
    assert_eq!(
        map.routing().shards(),
        vec![ShardId(1), ShardId(2), ShardId(3)],
        "the shard being removed is a member until the move ends"
    );
    run_to_done(&mut map);
    assert_eq!(
        map.groups().keys().copied().collect::<Vec<_>>(),
        vec![ShardId(1), ShardId(3)]
    );
    assert_eq!(map.routing().shards(), vec![ShardId(1), ShardId(3)]);
    for i in 0..2000u32 {
        assert_ne!(
            map.routing().owner_of_key(format!("k{i}").as_bytes()),
            ShardId(2)
        );
    }
}

#[test]
fn refused_changes_leave_the_map_as_it_was() {
    let mut map = three_shards();
    let original = map.clone();
    assert_eq!(
        map.add_shard(ShardId(2), group(9000)),
        Err(ClusterError::ShardExists(ShardId(2)))
    );
    assert_eq!(
        map.add_shard(
            ShardId(9),
            Group {
                replicas: BTreeMap::new()
            }
        ),
        Err(ClusterError::EmptyGroup(ShardId(9)))
    );
    assert_eq!(
        map.remove_shard(ShardId(9)),
        Err(ClusterError::UnknownShard(ShardId(9)))
    );
    assert_eq!(map, original);

    let id = map
        .add_shard(ShardId(4), group(7004))
        .expect("valid in this test");
    let during = map.clone();
    assert!(matches!(
        map.add_shard(ShardId(5), group(7005)),
        Err(ClusterError::MoveInProgress(_))
    ));
    assert!(matches!(
        map.remove_shard(ShardId(1)),
        Err(ClusterError::MoveInProgress(_))
    ));
    assert_eq!(
        map.advance(id, ShardId(1), ShardId(4), Phase::Copy),
        Err(ClusterError::WrongPhase {
            expected: Phase::Copy,
            actual: Phase::Prepare
        }),
        "a stale driver cannot skip a phase"
    );
    assert_eq!(
        map.advance(id + 1, ShardId(1), ShardId(4), Phase::Prepare),
        Err(ClusterError::NoSuchMove(id + 1))
    );
    assert_eq!(
        map.advance(id, ShardId(4), ShardId(1), Phase::Prepare),
        Err(ClusterError::NoSuchTransfer {
            from: ShardId(4),
            to: ShardId(1)
        })
    );
    assert_eq!(map, during);
}

#[test]
fn the_last_shard_cannot_be_removed() {
    let groups = [(ShardId(1), group(7001))].into_iter().collect();
    let mut map = ClusterMap::bootstrap(groups, 16).expect("valid in this test");
    assert_eq!(
        map.remove_shard(ShardId(1)),
        Err(ClusterError::LastShard(ShardId(1)))
    );
}

#[test]
fn a_cut_over_gives_exactly_that_transfers_ranges_and_bumps_the_epoch() {
    let mut map = three_shards();
    let id = map
        .add_shard(ShardId(4), group(7004))
        .expect("valid in this test");
    let (from, to) = (ShardId(2), ShardId(4));
    let mut phase = Phase::Prepare;
    while phase != Phase::CutOver {
        phase = map
            .advance(id, from, to, phase)
            .expect("valid in this test");
    }
    let epoch = map.epoch();
    assert_eq!(
        map.advance(id, from, to, Phase::CutOver),
        Ok(Phase::CleanUp)
    );
    assert_eq!(map.epoch(), epoch + 1);
    let base = map.routing().base().clone();
    let target = map.routing().target().expect("valid in this test").clone();
    for i in 0..5000u32 {
        let hash = key_hash(format!("key-{i}").as_bytes());
        let (b, t) = (base.shard_for_hash(hash), target.shard_for_hash(hash));
        let expected = if (b, t) == (from, to) { to } else { b };
        assert_eq!(map.routing().owner(hash), expected, "hash {hash}");
    }
}

#[test]
fn handing_over_twice_is_one_hand_over() {
    let mut routing = Routing::new(&[ShardId(1), ShardId(2)], 32).expect("valid in this test");
    let transfers = routing
        .begin(&[ShardId(1), ShardId(2), ShardId(3)])
        .expect("valid in this test");
    let t = &transfers[0];
    assert_eq!(routing.hand_over(t.from, t.to), Ok(true));
    let epoch = routing.epoch();
    assert_eq!(routing.hand_over(t.from, t.to), Ok(false));
    assert_eq!(routing.epoch(), epoch);
    assert_eq!(
        routing.hand_over(ShardId(3), ShardId(1)),
        Err(ClusterError::NoSuchTransfer {
            from: ShardId(3),
            to: ShardId(1)
        })
    );
    assert_eq!(
        routing.begin(&[ShardId(1)]).map(|_| ()),
        Err(ClusterError::MoveInProgress(
            "from shards 1,2 to 1,2,3".into()
        ))
    );
}

#[test]
fn the_map_survives_json_and_bad_json_is_refused() {
    let mut map = three_shards();
    let id = map
        .add_shard(ShardId(4), group(7004))
        .expect("valid in this test");
    map.advance(id, ShardId(1), ShardId(4), Phase::Prepare)
        .expect("valid in this test");
    map.record_progress(id, ShardId(1), ShardId(4), 10, 1000)
        .expect("valid in this test");
    let json = serde_json::to_string(&map).expect("valid in this test");
    let back: ClusterMap = serde_json::from_str(&json).expect("valid in this test");
    assert_eq!(back, map);
    assert_eq!(
        back.moving().expect("valid in this test").transfers[0].keys_copied,
        10
    );

    // A hand-over naming a transfer the rings do not have is refused, as is a ring with no
    // shards.
    let mut value: serde_json::Value = serde_json::from_str(&json).expect("valid in this test");
    value["routing"]["handedOver"] = serde_json::json!([[4, 1]]);
    assert!(serde_json::from_value::<ClusterMap>(value).is_err());
    let mut value: serde_json::Value = serde_json::from_str(&json).expect("valid in this test");
    value["routing"]["base"] = serde_json::json!([]);
    assert!(serde_json::from_value::<ClusterMap>(value).is_err());
}

#[test]
fn differences_name_what_the_command_line_gets_wrong() {
    let map = three_shards();
    let agree: BTreeMap<ShardId, String> = (1..=3u32)
        .map(|s| (ShardId(s), format!("http://127.0.0.1:{}/", 7100 + s)))
        .collect();
    assert!(
        map.differences(&agree).is_empty(),
        "any replica's URL will do"
    );

    let mut extra = agree.clone();
    extra.insert(ShardId(4), "http://127.0.0.1:7004".into());
    extra.remove(&ShardId(1));
    extra.insert(ShardId(2), "http://10.0.0.9:7002".into());
    let diff = map.differences(&extra);
    assert_eq!(diff.len(), 3, "{diff:?}");
    assert!(diff
        .iter()
        .any(|d| d.contains("shard 4") && d.contains("not in the cluster map")));
    assert!(diff
        .iter()
        .any(|d| d.contains("shard 1") && d.contains("not on the command line")));
    assert!(diff
        .iter()
        .any(|d| d.contains("shard 2") && d.contains("10.0.0.9")));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever order transfers are cut over in, every hash has one owner at every step, that
    /// owner is its base or its target owner, and the end is the target ring.
    #[test]
    fn any_cut_over_order_keeps_one_owner_per_hash(
        before in proptest::collection::btree_set(1u32..10, 1..5),
        after in proptest::collection::btree_set(1u32..10, 1..5),
        order in any::<u64>(),
        hashes in proptest::collection::vec(any::<u64>(), 300),
    ) {
        let before: Vec<ShardId> = before.into_iter().map(ShardId).collect();
        let after: Vec<ShardId> = after.into_iter().map(ShardId).collect();
        prop_assume!(before != after);
        let mut routing = Routing::new(&before, 16).expect("valid in this test");
        let mut transfers = routing.begin(&after).expect("valid in this test");
        // A deterministic shuffle from `order`.
        let n = transfers.len();
        for i in (1..n).rev() {
            transfers.swap(i, (order.rotate_left(i as u32) % (i as u64 + 1)) as usize);
        }
        let base = routing.base().clone();
        let target = routing.target().expect("valid in this test").clone();
        for t in &transfers {
            routing.hand_over(t.from, t.to).expect("valid in this test");
            let json_round_trip: Routing =
                serde_json::from_str(&serde_json::to_string(&routing).expect("valid in this test")).expect("valid in this test");
            prop_assert_eq!(&json_round_trip, &routing);
            for &h in &hashes {
                let owner = routing.owner(h);
                prop_assert!(owner == base.shard_for_hash(h) || owner == target.shard_for_hash(h));
            }
        }
        routing.finish().expect("valid in this test");
        for &h in &hashes {
            prop_assert_eq!(routing.owner(h), target.shard_for_hash(h));
        }
    }
}

#[test]
fn a_lost_capture_sends_its_transfer_back_to_copy_and_only_from_catch_up() {
    let mut map = three_shards();
    let id = map
        .add_shard(ShardId(4), group(7004))
        .expect("valid in this test");
    let ends = (ShardId(1), ShardId(4));
    let capture = CaptureRef { replica: 2, id: 9 };
    // Recording a copy belongs to the copy phase.
    assert!(matches!(
        map.record_copy(id, ends, capture, 5, 50),
        Err(ClusterError::WrongPhase { .. })
    ));
    map.advance(id, ends.0, ends.1, Phase::Prepare)
        .expect("valid in this test");
    assert!(matches!(
        map.restart_copy(id, ends.0, ends.1),
        Err(ClusterError::WrongPhase { .. })
    ));
    map.record_copy(id, ends, capture, 5, 50)
        .expect("valid in this test");
    map.advance(id, ends.0, ends.1, Phase::Copy)
        .expect("valid in this test");
    let version = map.version();
    map.restart_copy(id, ends.0, ends.1)
        .expect("valid in this test");
    assert!(map.version() > version, "a restart is a change of the map");
    let t = &map.moving().expect("valid in this test").transfers[0];
    assert_eq!((t.phase, t.capture), (Phase::Copy, None));
    // A second copy replaces the counters: it copies everything again.
    map.record_copy(id, ends, CaptureRef { replica: 1, id: 3 }, 7, 70)
        .expect("valid in this test");
    let t = &map.moving().expect("valid in this test").transfers[0];
    assert_eq!((t.keys_copied, t.bytes_copied), (7, 70));
    // The capture survives JSON (a new leader of the map group drains the same one).
    let back: ClusterMap =
        serde_json::from_str(&serde_json::to_string(&map).expect("json")).expect("back");
    assert_eq!(back, map);
}

#[test]
fn a_move_is_cancelled_only_before_a_hand_over_and_then_changes_no_more() {
    let mut map = three_shards();
    let before = map.routing().clone();
    let id = map
        .add_shard(ShardId(4), group(7004))
        .expect("valid in this test");
    let t = map.moving().expect("a move").transfers[0].clone();
    map.advance(id, t.from, t.to, Phase::Prepare)
        .expect("valid in this test");
    assert_eq!(
        map.cancel_move(id),
        Err(ClusterError::NoSuchMove(id)),
        "a move is dropped only once its cancellation was asked"
    );
    let epoch = map.epoch();
    map.request_cancel(id).expect("nothing handed over yet");
    let version = map.version();
    map.request_cancel(id).expect("asking twice is asking once");
    assert_eq!(map.version(), version);
    assert!(map.moving().expect("still there").cancelling);
    assert_eq!(
        map.advance(id, t.from, t.to, Phase::Copy),
        Err(ClusterError::Cancelling(id)),
        "a cancelled move's transfers change no more"
    );
    map.cancel_move(id).expect("valid in this test");
    assert!(map.moving().is_none());
    assert!(
        !map.groups().contains_key(&ShardId(4)),
        "the new group left"
    );
    assert_eq!(
        map.epoch(),
        epoch + 2,
        "past any fence (one epoch above the move's)"
    );
    assert_eq!(map.routing().base(), before.base());
    assert!(map.routing().target().is_none());
    for i in 0..2000u32 {
        let key = format!("k{i}");
        assert_eq!(
            map.routing().owner_of_key(key.as_bytes()),
            before.owner_of_key(key.as_bytes())
        );
    }

    // Once a transfer is handed over, the move can only go forward.
    let id = map.remove_shard(ShardId(2)).expect("valid in this test");
    let t = map.moving().expect("a move").transfers[0].clone();
    let mut phase = t.phase;
    while phase != Phase::CleanUp {
        phase = map
            .advance(id, t.from, t.to, phase)
            .expect("valid in this test");
    }
    assert!(matches!(
        map.request_cancel(id),
        Err(ClusterError::HandedOver { move_id, .. }) if move_id == id
    ));
    assert!(!map.moving().expect("still there").cancelling);
}
