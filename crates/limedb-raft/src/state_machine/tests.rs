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
            record: None,
        }),
    }
}

/// The state machine kept under `d` (`sm/`, snapshots in `snap/`).
fn open(d: &tempfile::TempDir) -> StateMachineStore {
    StateMachineStore::open(&d.path().join("sm"), &d.path().join("snap"), test_factory())
        .expect("open")
}

/// An entry that sets the group record (and writes nothing).
fn record(index: u64, text: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command {
            writes: Vec::new(),
            record: Some(text.as_bytes().to_vec().into()),
        }),
    }
}

#[tokio::test]
async fn the_group_record_survives_a_reopen_and_travels_with_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir);
    assert_eq!(sm.record(), None);
    sm.apply(vec![
        put(1, "a", "1"),
        record(2, "epoch 1"),
        put(3, "b", "2"),
    ])
    .await
    .expect("apply");
    assert_eq!(sm.record().as_deref(), Some(&b"epoch 1"[..]));
    // A later record replaces it; entries without one leave it alone.
    sm.apply(vec![record(4, "epoch 2"), put(5, "c", "3")])
        .await
        .expect("apply");
    assert_eq!(sm.record().as_deref(), Some(&b"epoch 2"[..]));
    sm.close().expect("close");
    drop(sm);

    let mut sm = open(&dir);
    assert_eq!(
        sm.record().as_deref(),
        Some(&b"epoch 2"[..]),
        "kept by the marker"
    );
    let snapshot = sm.build_snapshot().await.expect("build");

    let mut elsewhere = open(&other);
    elsewhere
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    assert_eq!(elsewhere.record().as_deref(), Some(&b"epoch 2"[..]));
    elsewhere.close().expect("close");
    drop(elsewhere);
    let elsewhere = open(&other);
    assert_eq!(elsewhere.record().as_deref(), Some(&b"epoch 2"[..]));
}

#[test]
fn a_marker_from_before_group_records_still_opens() {
    // The marker of the format before group records: log id and membership only.
    let old = AppliedState {
        last: Some(LogId::new(CommittedLeaderId::new(3, 1), 42)),
        membership: StoredMembership::default(),
        record: None,
    };
    let mut bytes = to_bytes(&old).to_vec();
    assert_eq!(
        bytes.pop(),
        Some(0),
        "the new format ends with the record's presence byte"
    );
    let decoded = from_bytes::<AppliedState>(bytes.into()).expect("decodes");
    assert_eq!(decoded.last, old.last);
    assert_eq!(decoded.record, None);
}

#[tokio::test]
async fn a_snapshot_installed_elsewhere_replaces_the_engine_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
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

/// A snapshot built while entries keep being applied claims no position beyond the one its
/// marker made durable: after a crash the replica restarts from the marker, and openraft
/// refuses to start with a snapshot ahead of the applied position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_never_claims_more_than_the_durable_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sm = StateMachineStore::open(
        &dir.path().join("sm"),
        &dir.path().join("snap"),
        test_factory(),
    )
    .expect("open");
    let mut applier = sm.clone();
    let applying = tokio::spawn(async move {
        for i in 1..=3000u64 {
            applier
                .apply(vec![put(i, &format!("k{}", i % 50), "v")])
                .await
                .expect("apply");
            if i % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut builder = sm.clone();
    let mut built = 0;
    while !applying.is_finished() {
        let snapshot = builder.build_snapshot().await.expect("build");
        let durable = builder.durable_applied();
        assert!(
            snapshot.meta.last_log_id <= durable,
            "snapshot at {:?}, marker at {durable:?}",
            snapshot.meta.last_log_id
        );
        built += 1;
    }
    applying.await.expect("applier");
    assert!(built > 0);
    // Reopened from what is on disk (no close: as after a crash), the applied position is
    // at least the newest snapshot's.
    let newest = builder.snapshot_meta().and_then(|m| m.last_log_id);
    drop(builder);
    drop(sm);
    let reopened = StateMachineStore::open(
        &dir.path().join("sm"),
        &dir.path().join("snap"),
        test_factory(),
    )
    .expect("reopen");
    assert!(reopened.applied().0 >= newest);
}

/// What an observer was told, in order: the keys of each applied batch, and installs.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl ApplyObserver for Recorder {
    fn applied(&self, writes: &[ReplicatedWrite]) {
        let keys: Vec<String> = writes
            .iter()
            .map(|w| String::from_utf8_lossy(w.key()).into_owned())
            .collect();
        lock(&self.0).push(keys.join(","));
    }

    fn replaced(&self) {
        lock(&self.0).push("replaced".into());
    }
}

#[tokio::test]
async fn an_observer_sees_every_applied_write_in_order_and_every_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir);
    let seen = std::sync::Arc::new(Recorder::default());
    sm.set_observer(Some(std::sync::Arc::clone(&seen) as _));
    sm.apply(vec![put(1, "a", "1"), record(2, "r"), put(3, "b", "2")])
        .await
        .expect("apply");
    // A batch too large to apply inline goes to the blocking pool; the observer still sees it.
    let many: Vec<Entry> = (4..=700).map(|i| put(i, &format!("k{i}"), "v")).collect();
    sm.apply(many).await.expect("apply");
    {
        let seen = lock(&seen.0);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], "a,b");
        assert!(seen[1].starts_with("k4,k5,") && seen[1].ends_with(",k700"));
    }
    // After its writes were observed, the record is the applied one.
    assert_eq!(sm.record().as_deref(), Some(&b"r"[..]));

    let snapshot = sm.build_snapshot().await.expect("build");
    let mut elsewhere = open(&other);
    let theirs = std::sync::Arc::new(Recorder::default());
    elsewhere.set_observer(Some(std::sync::Arc::clone(&theirs) as _));
    elsewhere
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    assert_eq!(*lock(&theirs.0), vec!["replaced".to_string()]);
    // Removed, it is told nothing more.
    sm.set_observer(None);
    sm.apply(vec![put(701, "c", "3")]).await.expect("apply");
    assert_eq!(lock(&seen.0).len(), 2);
}
