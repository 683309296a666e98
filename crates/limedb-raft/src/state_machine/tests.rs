//! Snapshots of the state machine: built from a checkpoint, installed by switching engines,
//! and still in place after a reopen.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

use super::*;
use crate::log_store::tests::test_factory;
use crate::types::Command;

fn put(index: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command {
            writes: vec![ReplicatedWrite::Put {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                expires_at_ms: None,
            }],
        }),
    }
}

#[tokio::test]
async fn a_snapshot_installed_elsewhere_replaces_the_engine_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let open = |d: &tempfile::TempDir| {
        StateMachineStore::open(&d.path().join("sm"), &d.path().join("snap"), test_factory())
            .expect("open")
    };
    let mut leader = open(&leader_dir);
    let entries: Vec<Entry> = (1..=200).map(|i| put(i, &format!("k{i}"), "v")).collect();
    leader.apply(entries).await.expect("apply");
    let snapshot = leader.build_snapshot().await.expect("build");
    let meta = snapshot.meta.clone();
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(200));
    // Built snapshots make their position durable first.
    assert_eq!(leader.durable_applied().map(|l| l.index), Some(200));

    let mut follower = open(&follower_dir);
    follower
        .apply(vec![put(1, "stale", "x")])
        .await
        .expect("apply");
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    assert_eq!(follower.applied().0.map(|l| l.index), Some(200));
    assert!(follower.engine().get(b"stale").expect("get").is_none());
    assert!(follower.engine().get(b"k150").expect("get").is_some());
    follower.close().expect("close");
    drop(follower);

    let mut follower = open(&follower_dir);
    assert_eq!(follower.applied().0.map(|l| l.index), Some(200));
    assert!(follower.engine().get(b"k7").expect("get").is_some());
    let current = follower
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("kept");
    assert_eq!(current.meta, meta);
    let engines = std::fs::read_dir(follower_dir.path().join("sm"))
        .expect("list")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count();
    assert_eq!(engines, 1, "the replaced engine directory is gone");
}
