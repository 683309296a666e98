//! openraft's storage suite against our log store and state machine, and the log's own
//! recovery rules: torn tails, damage, purge and truncation across reopen, segment rotation.

use std::collections::BTreeSet;
use std::sync::Arc;

use limedb_storage::{LsmEngine, LsmOptions};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, StorageError};

use super::*;
use crate::state_machine::{EngineFactory, StateMachineStore};
use crate::types::{Command, ReplicaId, ReplicatedWrite};

/// Small engines, so a store is cheap to make.
pub(crate) fn test_factory() -> EngineFactory {
    Arc::new(|dir: &std::path::Path| {
        let options = LsmOptions {
            memtable_bytes: 1 << 20,
            block_cache_bytes: 4 << 20,
            ..LsmOptions::default()
        };
        Ok(Arc::new(LsmEngine::open(dir, options)?) as Arc<dyn limedb_storage::Engine>)
    })
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> std::result::Result<
        (tempfile::TempDir, LogStore, StateMachineStore),
        StorageError<ReplicaId>,
    > {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("raft"), LogOptions::default()).expect("log");
        let sm = StateMachineStore::open(
            &dir.path().join("sm"),
            &dir.path().join("snapshots"),
            test_factory(),
        )
        .expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn entry(term: u64, index: u64, key: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Command {
            writes: vec![ReplicatedWrite::Put {
                key: key.as_bytes().to_vec().into(),
                value: vec![b'v'; 100].into(),
                expires_at_ms: None,
            }],
            record: None,
        }),
    }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Blank,
    }
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    log.blocking_append(entries).await.expect("append");
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(0..u64::MAX)
        .await
        .expect("read")
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 1024,
        cache_bytes: 0,
        ..LogOptions::default()
    }
}

#[tokio::test]
async fn entries_survive_reopen_across_segments_and_are_read_back_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogStore::open(dir.path(), small_segments()).expect("open");
        append(
            &mut log,
            (0..50).map(|i| entry(1, i, &format!("k{i}"))).collect(),
        )
        .await;
        log.save_vote(&Vote::new_committed(3, 2))
            .await
            .expect("vote");
    }
    let segments = std::fs::read_dir(dir.path())
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        })
        .count();
    assert!(segments > 3, "1 KiB segments rotate: {segments}");
    // Every segment was grown by a window of zeros, the closed ones too: their zero tails are
    // where their records end, not damage.
    for e in std::fs::read_dir(dir.path()).expect("list").flatten() {
        if e.file_name().to_string_lossy().ends_with(".seg") {
            let len = e.metadata().expect("stat").len();
            assert_eq!(len, PREALLOCATE_BYTES, "{:?}", e.file_name());
        }
    }
    let mut log = LogStore::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(indexes(&mut log).await, (0..50).collect::<Vec<_>>());
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(3, 2))
    );
    let e = log.try_get_log_entries(17..18).await.expect("read");
    assert_eq!(e[0], entry(1, 17, "k17"));
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_damage_inside_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogStore::open(dir.path(), small_segments()).expect("open");
        append(&mut log, (0..30).map(|i| entry(1, i, "k")).collect()).await;
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    // Segments grow in windows of zeros; the records end where the zeros begin.
    let last = segs.last().expect("a segment").clone();
    let mut bytes = std::fs::read(&last).expect("read");
    assert_eq!(bytes.len() as u64 % PREALLOCATE_BYTES, 0, "a whole window");
    let mut keep = 0;
    while let Ok(payload) = check_record(&bytes[keep..]) {
        keep += RECORD_HEADER_BYTES + payload.len();
    }
    assert!(
        bytes[keep..].iter().all(|b| *b == 0),
        "zeros after the records"
    );
    // A torn write at the end of the last segment: half a record over the zeros.
    bytes[keep..keep + 6].copy_from_slice(&[7, 0, 0, 0, 1, 2]);
    std::fs::write(&last, &bytes).expect("tear");
    {
        let mut log = LogStore::open(dir.path(), small_segments()).expect("torn tail is fine");
        assert_eq!(indexes(&mut log).await.len(), 30);
        assert_eq!(std::fs::metadata(&last).expect("stat").len() as usize, keep);
        // Appends continue after the cut.
        append(&mut log, vec![entry(1, 30, "k")]).await;
    }
    // A flipped byte in the first segment: acknowledged data is damaged.
    let first = segs.first().expect("a segment");
    let mut bytes = std::fs::read(first).expect("read");
    bytes[20] ^= 0xff;
    std::fs::write(first, &bytes).expect("damage");
    let err = LogStore::open(dir.path(), small_segments()).expect_err("damaged");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[tokio::test]
async fn data_after_the_zeros_of_a_closed_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogStore::open(dir.path(), small_segments()).expect("open");
        append(&mut log, (0..30).map(|i| entry(1, i, "k")).collect()).await;
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let first = segs.first().expect("a segment");
    let mut bytes = std::fs::read(first).expect("read");
    let at = bytes.len() - 100;
    bytes[at] = 1;
    std::fs::write(first, &bytes).expect("damage");
    let err = LogStore::open(dir.path(), small_segments()).expect_err("damaged");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[tokio::test]
async fn truncate_and_purge_hold_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogStore::open(dir.path(), small_segments()).expect("open");
        append(&mut log, (0..40).map(|i| entry(1, i, "k")).collect()).await;
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 25))
            .await
            .expect("truncate");
        assert_eq!(indexes(&mut log).await, (0..25).collect::<Vec<_>>());
        append(&mut log, (25..30).map(|i| blank(2, i)).collect()).await;
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 12))
            .await
            .expect("purge");
        assert_eq!(indexes(&mut log).await, (13..30).collect::<Vec<_>>());
    }
    let mut log = LogStore::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(indexes(&mut log).await, (13..30).collect::<Vec<_>>());
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(12));
    assert_eq!(state.last_log_id, Some(blank(2, 29).log_id));
    let e = log.try_get_log_entries(26..27).await.expect("read");
    assert_eq!(e, vec![blank(2, 26)]);
    // Purging past the end leaves an empty log that continues after the purge point.
    log.purge(LogId::new(CommittedLeaderId::new(2, 1), 100))
        .await
        .expect("purge all");
    append(&mut log, vec![blank(3, 101)]).await;
    drop(log);
    let mut log = LogStore::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![101]);
}

#[tokio::test]
async fn limited_reads_stop_at_the_byte_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        max_read_bytes: 1000,
        ..LogOptions::default()
    };
    let mut log = LogStore::open(dir.path(), options).expect("open");
    append(&mut log, (0..20).map(|i| entry(1, i, "k")).collect()).await;
    let got = log.limited_get_log_entries(0, 20).await.expect("read");
    assert!(!got.is_empty() && got.len() < 20, "{} entries", got.len());
    let members: BTreeSet<u64> = BTreeSet::new();
    assert!(members.is_empty());
}

#[tokio::test]
async fn state_machine_applies_and_persists_its_position_lazily() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        StateMachineStore::open(
            &dir.path().join("sm"),
            &dir.path().join("snap"),
            test_factory(),
        )
        .expect("open")
    };
    let mut sm = open();
    let out = sm
        .apply(vec![entry(1, 1, "a"), entry(1, 2, "b")])
        .await
        .expect("apply");
    assert_eq!(out.len(), 2);
    assert_eq!(sm.applied().0.map(|l| l.index), Some(2));
    assert_eq!(sm.durable_applied(), None, "nothing persisted yet");
    assert_eq!(
        sm.persist_applied().expect("persist").map(|l| l.index),
        Some(2)
    );
    sm.close().expect("close");
    drop(sm);
    let sm = open();
    assert_eq!(sm.applied().0.map(|l| l.index), Some(2));
    let v = sm.engine().get(b"a").expect("get").expect("present");
    assert_eq!(v.data.len(), 100);
}
