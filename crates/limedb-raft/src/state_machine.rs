//! [`StateMachineStore`]: openraft's `RaftStateMachine` over a LimeDB storage engine. Applies
//! committed entries, records how far it has applied, builds snapshots as engine checkpoints
//! and installs snapshots by switching to a new engine directory.
//!
//! # Files
//!
//! ```text
//!   <sm>/CURRENT                    small file: the name of the engine directory in use
//!   <sm>/engine-<n>/                the engine's own files
//!   <sm>/engine-<n>.applied         small file: applied log id, membership and group record
//!                                   (the marker)
//!   <snapshots>/snap-<id>/engine/   a checkpoint of the engine
//!   <snapshots>/snap-<id>/meta      small file: the snapshot's `SnapshotMeta`
//!   <snapshots>/snap-<id>/record    small file: the group record at the snapshot (see
//!                                   `types::Command`); absent in snapshots made before them
//!   <snapshots>/incoming-<id>/      a snapshot being received from the leader
//! ```
//!
//! # Applied position: recorded lazily, replayed idempotently
//!
//! `apply` writes each batch of entries to the engine with one `write_many` and answers from
//! memory. The marker file is rewritten only by [`StateMachineStore::persist_applied`] (every
//! second, before every snapshot and on close): it notes the applied log id, syncs the engine,
//! then writes the marker. So after any crash the engine holds at least everything up to the
//! marker, and openraft re-applies the log from there. Entries carry blind writes only (see
//! [`crate::types`]), so applying again what the engine already holds changes nothing.
//!
//! # Snapshots
//!
//! Building one takes the applied position, makes it durable as above, and checkpoints the
//! engine (`Engine::checkpoint`: for the LSM engine, flushed memtables and hard links to the
//! tables), so a snapshot holds at least the state at its `last_log_id` — possibly more, which
//! replay tolerates for the same reason. Installing one hard-links the snapshot's checkpoint
//! into a new engine directory with its own marker, fsyncs both, switches `CURRENT` to it
//! atomically, reopens the engine and deletes the old directory. A crash at any point leaves
//! either the old or the new engine in use, never a mix. The current snapshot is kept (for
//! followers that need it) until a newer one replaces it and every transfer of it has ended.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::{Bytes, BytesMut};
use limedb_storage::{Engine, StorageError as EngineError};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageError, StorageIOError};

use crate::codec::{from_bytes, put_record, read_record, to_bytes, Decode, Encode, Reader};
use crate::error::{ReplicaError, Result};
use crate::fsutil::{
    create_dir, link_tree, read_small_file, remove_dir, sync_dir, write_small_file,
};
use crate::types::{
    Applied, Entry, LogId, ReplicaId, ReplicatedWrite, SnapshotMeta, StoredMembership, TypeConfig,
};

const CURRENT_MAGIC: &[u8; 8] = b"LMRCURR1";
const APPLIED_MAGIC: &[u8; 8] = b"LMRAPPL1";
const META_MAGIC: &[u8; 8] = b"LMRSNAP1";
const RECORD_MAGIC: &[u8; 8] = b"LMRGREC1";

/// Opens the engine kept in a directory (the server decides which engine and its tuning).
pub type EngineFactory =
    Arc<dyn Fn(&Path) -> std::result::Result<Arc<dyn Engine>, EngineError> + Send + Sync>;

/// Told, on this replica, about every write it applies, in log order, once the engine holds it
/// (and before the entry's group record shows as applied), and when an installed snapshot
/// replaces the whole state. How a shard follows the changes to the ranges it is giving away
/// (see `limedb-server`'s `shard::capture`).
pub trait ApplyObserver: Send + Sync + 'static {
    /// `writes` were applied, in this order.
    fn applied(&self, writes: &[ReplicatedWrite]);
    /// A snapshot replaced the state: what was observed so far no longer describes it.
    fn replaced(&self);
}

/// A snapshot directory on disk, deleted once it is obsolete and no transfer holds it.
#[derive(Debug)]
pub struct SnapshotDir {
    path: PathBuf,
    obsolete: AtomicBool,
}

impl SnapshotDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SnapshotDir {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            if let Err(e) = remove_dir(&self.path) {
                tracing::warn!(error = %e, "cannot remove an obsolete snapshot");
            }
        }
    }
}

/// openraft's snapshot data: a directory holding `engine/` (a checkpoint) and `meta`.
#[derive(Clone, Debug)]
pub struct SnapshotFiles {
    dir: Arc<SnapshotDir>,
}

impl SnapshotFiles {
    /// Snapshot files in `path` (not deleted by this handle).
    pub fn at(path: PathBuf) -> SnapshotFiles {
        SnapshotFiles {
            dir: Arc::new(SnapshotDir {
                path,
                obsolete: AtomicBool::new(false),
            }),
        }
    }

    /// The snapshot's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The checkpoint inside it.
    pub fn engine_dir(&self) -> PathBuf {
        self.dir.path().join("engine")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AppliedState {
    last: Option<LogId>,
    membership: StoredMembership,
    /// The group record as of `last` (see `types::Command`).
    record: Option<Bytes>,
}

impl Encode for AppliedState {
    fn encode(&self, out: &mut BytesMut) {
        self.last.encode(out);
        self.membership.encode(out);
        put_record(out, self.record.as_ref());
    }
}

impl Decode for AppliedState {
    fn decode(r: &mut Reader) -> std::result::Result<Self, crate::codec::CodecError> {
        let last = Option::<LogId>::decode(r)?;
        let membership = StoredMembership::decode(r)?;
        // Markers written before group records existed end here.
        let record = if r.remaining() > 0 {
            read_record(r)?
        } else {
            None
        };
        Ok(AppliedState {
            last,
            membership,
            record,
        })
    }
}

/// Writes the group record file of a snapshot directory.
pub(crate) fn write_record_file(dir: &Path, record: Option<&Bytes>) -> Result<()> {
    let mut out = BytesMut::new();
    put_record(&mut out, record);
    write_small_file(&dir.join("record"), RECORD_MAGIC, &out)
}

/// Reads the group record file of a snapshot directory (`None` when it has none).
pub(crate) fn read_record_file(dir: &Path) -> Result<Option<Bytes>> {
    match read_small_file(&dir.join("record"), RECORD_MAGIC)? {
        None => Ok(None),
        Some(bytes) => {
            let mut r = Reader::new(bytes);
            let record = read_record(&mut r)?;
            r.finish()?;
            Ok(record)
        }
    }
}

struct Shared {
    sm_dir: PathBuf,
    snapshots_dir: PathBuf,
    factory: EngineFactory,
    engine: RwLock<Arc<dyn Engine>>,
    /// Number of the engine directory in use (`engine-<n>`).
    generation: AtomicU64,
    applied: Mutex<AppliedState>,
    /// The applied log id the marker file holds.
    durable: Mutex<Option<LogId>>,
    /// Serializes marker writes, snapshot builds and engine switches.
    io: Mutex<()>,
    current_snapshot: Mutex<Option<(SnapshotMeta, Arc<SnapshotDir>)>>,
    observer: RwLock<Option<Arc<dyn ApplyObserver>>>,
}

/// The state machine of one replica; clones share everything (openraft takes one as the state
/// machine and others as snapshot builders; the shard keeps one to reach the engine).
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("dir", &self.shared.sm_dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn engine_name(generation: u64) -> String {
    format!("engine-{generation}")
}

fn parse_engine_name(name: &str) -> Option<u64> {
    name.strip_prefix("engine-")?.parse().ok()
}

fn sm_error(e: impl std::fmt::Display) -> StorageError<ReplicaId> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snapshot_error(e: impl std::fmt::Display) -> StorageError<ReplicaId> {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// Applies of at most this many writes try the engine inline on the runtime first
/// ([`Engine::try_write_many_now`]: no fsync, no log maintenance), saving two thread hand-offs
/// per apply; larger ones, or when the engine would wait, go to the blocking pool.
const INLINE_APPLY_MAX_WRITES: usize = 512;

/// Runs blocking engine or file work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReplicaError::Raft(format!("a storage task failed: {e}")))?
}

impl StateMachineStore {
    /// Opens the state machine under `sm_dir`, keeping snapshots in `snapshots_dir`, with
    /// engines opened by `factory`. A first open creates an empty engine.
    pub fn open(sm_dir: &Path, snapshots_dir: &Path, factory: EngineFactory) -> Result<Self> {
        create_dir(sm_dir)?;
        create_dir(snapshots_dir)?;
        let current_path = sm_dir.join("CURRENT");
        let generation = match read_small_file(&current_path, CURRENT_MAGIC)? {
            Some(name) => std::str::from_utf8(&name)
                .ok()
                .and_then(parse_engine_name)
                .ok_or_else(|| {
                    ReplicaError::Config(format!(
                        "{} names no engine directory",
                        current_path.display()
                    ))
                })?,
            None => {
                let marker = sm_dir.join(format!("{}.applied", engine_name(1)));
                write_small_file(&marker, APPLIED_MAGIC, &to_bytes(&AppliedState::default()))?;
                create_dir(&sm_dir.join(engine_name(1)))?;
                write_small_file(&current_path, CURRENT_MAGIC, engine_name(1).as_bytes())?;
                1
            }
        };
        let name = engine_name(generation);
        let applied = read_small_file(&sm_dir.join(format!("{name}.applied")), APPLIED_MAGIC)?
            .map(from_bytes::<AppliedState>)
            .transpose()?
            .ok_or_else(|| {
                ReplicaError::Config(format!(
                    "{} has no applied marker for {name}",
                    sm_dir.display()
                ))
            })?;
        remove_other_engines(sm_dir, generation)?;
        let engine = factory(&sm_dir.join(&name))?;
        let current_snapshot = load_snapshots(snapshots_dir)?;
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                sm_dir: sm_dir.to_path_buf(),
                snapshots_dir: snapshots_dir.to_path_buf(),
                factory,
                engine: RwLock::new(engine),
                generation: AtomicU64::new(generation),
                durable: Mutex::new(applied.last),
                applied: Mutex::new(applied),
                io: Mutex::new(()),
                current_snapshot: Mutex::new(current_snapshot),
                observer: RwLock::new(None),
            }),
        })
    }

    /// Sets (or, with `None`, removes) the observer of applied writes.
    pub fn set_observer(&self, observer: Option<Arc<dyn ApplyObserver>>) {
        *self
            .shared
            .observer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = observer;
    }

    fn observer(&self) -> Option<Arc<dyn ApplyObserver>> {
        self.shared
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The engine in use (it changes when a snapshot is installed).
    pub fn engine(&self) -> Arc<dyn Engine> {
        Arc::clone(&self.shared.engine.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The last applied log id and membership, as in memory.
    pub fn applied(&self) -> (Option<LogId>, StoredMembership) {
        let a = lock(&self.shared.applied);
        (a.last, a.membership.clone())
    }

    /// The group record as of the last applied entry (see `types::Command`).
    pub fn record(&self) -> Option<Bytes> {
        lock(&self.shared.applied).record.clone()
    }

    /// The applied log id the marker file holds (what survives a crash).
    pub fn durable_applied(&self) -> Option<LogId> {
        *lock(&self.shared.durable)
    }

    /// The current snapshot's metadata, if any.
    pub fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        lock(&self.shared.current_snapshot)
            .as_ref()
            .map(|(m, _)| m.clone())
    }

    /// A fresh directory to receive snapshot `id` into.
    pub fn incoming_dir(&self, id: &str) -> PathBuf {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.shared.snapshots_dir.join(format!("incoming-{safe}"))
    }

    /// Makes the applied position durable: notes it, syncs the engine, writes the marker
    /// (blocking; see the module docs).
    pub fn persist_applied(&self) -> Result<Option<LogId>> {
        let _io = lock(&self.shared.io);
        Ok(self.persist_applied_locked()?.last)
    }

    /// Returns the state the marker now holds. Entries may be applied meanwhile; they are not
    /// part of it.
    fn persist_applied_locked(&self) -> Result<AppliedState> {
        let state = lock(&self.shared.applied).clone();
        if *lock(&self.shared.durable) == state.last {
            return Ok(state);
        }
        self.engine().sync()?;
        let name = engine_name(self.shared.generation.load(Ordering::Acquire));
        write_small_file(
            &self.shared.sm_dir.join(format!("{name}.applied")),
            APPLIED_MAGIC,
            &to_bytes(&state),
        )?;
        *lock(&self.shared.durable) = state.last;
        Ok(state)
    }

    /// Persists the applied position and closes the engine.
    pub fn close(&self) -> Result<()> {
        self.persist_applied()?;
        match self.engine().close() {
            Ok(()) | Err(EngineError::Closed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn build(&self) -> Result<(SnapshotMeta, Arc<SnapshotDir>)> {
        let _io = lock(&self.shared.io);
        // The snapshot claims the position the marker holds, never a later one applied while
        // it is built: after a crash the engine restarts from the marker, and a snapshot ahead
        // of it would claim entries the replica might not have (openraft refuses to start on
        // that). The checkpoint may hold more; replaying those entries is harmless (module
        // docs).
        let state = self.persist_applied_locked()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = match state.last {
            Some(l) => format!("{}-{}-{stamp}", l.leader_id.term, l.index),
            None => format!("0-0-{stamp}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last,
            last_membership: state.membership,
            snapshot_id: id.clone(),
        };
        let building = self.shared.snapshots_dir.join(format!("building-{id}"));
        remove_dir(&building)?;
        create_dir(&building)?;
        self.engine().checkpoint(&building.join("engine"))?;
        write_record_file(&building, state.record.as_ref())?;
        write_small_file(&building.join("meta"), META_MAGIC, &to_bytes(&meta))?;
        let done = self.shared.snapshots_dir.join(format!("snap-{id}"));
        std::fs::rename(&building, &done).map_err(ReplicaError::io("cannot rename", &building))?;
        sync_dir(&self.shared.snapshots_dir)?;
        let dir = Arc::new(SnapshotDir {
            path: done,
            obsolete: AtomicBool::new(false),
        });
        self.set_current_snapshot(meta.clone(), Arc::clone(&dir));
        Ok((meta, dir))
    }

    fn set_current_snapshot(&self, meta: SnapshotMeta, dir: Arc<SnapshotDir>) {
        let old = lock(&self.shared.current_snapshot).replace((meta, dir));
        if let Some((_, old)) = old {
            old.obsolete.store(true, Ordering::Release);
        }
    }

    fn install(&self, meta: &SnapshotMeta, files: &SnapshotFiles) -> Result<()> {
        let _io = lock(&self.shared.io);
        // Keep the snapshot (for followers of ours) under our own snapshots directory.
        let kept = self
            .shared
            .snapshots_dir
            .join(format!("snap-{}", meta.snapshot_id));
        if files.path() != kept {
            let staging = self
                .shared
                .snapshots_dir
                .join(format!("building-{}", meta.snapshot_id));
            remove_dir(&staging)?;
            remove_dir(&kept)?;
            link_tree(&files.engine_dir(), &staging.join("engine"))?;
            write_record_file(&staging, read_record_file(files.path())?.as_ref())?;
            write_small_file(&staging.join("meta"), META_MAGIC, &to_bytes(meta))?;
            std::fs::rename(&staging, &kept)
                .map_err(ReplicaError::io("cannot rename", &staging))?;
            sync_dir(&self.shared.snapshots_dir)?;
            // A snapshot received from the leader has served its purpose once adopted.
            if files.path().parent() == Some(self.shared.snapshots_dir.as_path())
                && files
                    .path()
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("incoming-"))
            {
                remove_dir(files.path())?;
            }
        }
        let old_generation = self.shared.generation.load(Ordering::Acquire);
        let generation = old_generation + 1;
        let name = engine_name(generation);
        let engine_dir = self.shared.sm_dir.join(&name);
        remove_dir(&engine_dir)?;
        link_tree(&kept.join("engine"), &engine_dir)?;
        let state = AppliedState {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
            record: read_record_file(&kept)?,
        };
        write_small_file(
            &self.shared.sm_dir.join(format!("{name}.applied")),
            APPLIED_MAGIC,
            &to_bytes(&state),
        )?;
        match self.engine().close() {
            Ok(()) | Err(EngineError::Closed) => {}
            Err(e) => tracing::warn!(error = %e, "closing the replaced engine failed"),
        }
        write_small_file(
            &self.shared.sm_dir.join("CURRENT"),
            CURRENT_MAGIC,
            name.as_bytes(),
        )?;
        let engine = (self.shared.factory)(&engine_dir)?;
        *self
            .shared
            .engine
            .write()
            .unwrap_or_else(|p| p.into_inner()) = engine;
        self.shared.generation.store(generation, Ordering::Release);
        *lock(&self.shared.applied) = state;
        *lock(&self.shared.durable) = meta.last_log_id;
        if let Some(observer) = self.observer() {
            observer.replaced();
        }
        remove_other_engines(&self.shared.sm_dir, generation)?;
        self.set_current_snapshot(
            meta.clone(),
            Arc::new(SnapshotDir {
                path: kept,
                obsolete: AtomicBool::new(false),
            }),
        );
        tracing::info!(
            snapshot = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            "installed a snapshot"
        );
        Ok(())
    }
}

/// Deletes engine directories and markers other than generation `keep` (left by an install
/// that a crash interrupted, or by the install that just finished).
fn remove_other_engines(sm_dir: &Path, keep: u64) -> Result<()> {
    for entry in std::fs::read_dir(sm_dir).map_err(ReplicaError::io("cannot list", sm_dir))? {
        let entry = entry.map_err(ReplicaError::io("cannot list", sm_dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let generation = parse_engine_name(name.strip_suffix(".applied").unwrap_or(name));
        if generation.is_some_and(|g| g != keep) {
            let path = entry.path();
            if path.is_dir() {
                remove_dir(&path)?;
            } else {
                std::fs::remove_file(&path).map_err(ReplicaError::io("cannot remove", &path))?;
            }
        }
    }
    Ok(())
}

/// Finds the newest complete snapshot; removes partial and older ones.
fn load_snapshots(dir: &Path) -> Result<Option<(SnapshotMeta, Arc<SnapshotDir>)>> {
    let mut found: Vec<(SnapshotMeta, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ReplicaError::io("cannot list", dir))? {
        let entry = entry.map_err(ReplicaError::io("cannot list", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap-") {
            let meta = read_small_file(&path.join("meta"), META_MAGIC)
                .ok()
                .flatten()
                .and_then(|bytes| from_bytes::<SnapshotMeta>(bytes).ok());
            if let Some(meta) = meta {
                found.push((meta, path));
                continue;
            }
        }
        remove_dir(&path)?;
    }
    found.sort_by_key(|(meta, _)| meta.last_log_id);
    let newest = found.pop();
    for (_, path) in found {
        remove_dir(&path)?;
    }
    Ok(newest.map(|(meta, path)| {
        (
            meta,
            Arc::new(SnapshotDir {
                path,
                obsolete: AtomicBool::new(false),
            }),
        )
    }))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(
        &mut self,
    ) -> std::result::Result<Snapshot<TypeConfig>, StorageError<ReplicaId>> {
        let this = self.clone();
        let (meta, dir) = blocking(move || this.build())
            .await
            .map_err(snapshot_error)?;
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFiles { dir }),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId>, StoredMembership), StorageError<ReplicaId>> {
        Ok(self.applied())
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> std::result::Result<Vec<Applied>, StorageError<ReplicaId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut writes: Vec<ReplicatedWrite> = Vec::new();
        let mut counts = Vec::new();
        let mut last = None;
        let mut membership = None;
        let mut record = None;
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => counts.push(0),
                EntryPayload::Normal(command) => {
                    counts.push(command.writes.len());
                    writes.extend(command.writes);
                    if command.record.is_some() {
                        record = command.record;
                    }
                }
                EntryPayload::Membership(m) => {
                    counts.push(0);
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                }
            }
        }
        let removed = if writes.is_empty() {
            Vec::new()
        } else {
            let engine = self.engine();
            let inline = if writes.len() <= INLINE_APPLY_MAX_WRITES {
                let ops: Vec<_> = writes.iter().map(ReplicatedWrite::as_op).collect();
                engine.try_write_many_now(&ops)
            } else {
                None
            };
            let removed = match inline {
                Some(answer) => answer.map_err(sm_error)?,
                None => {
                    let (removed, back) = blocking(move || {
                        let ops: Vec<_> = writes.iter().map(ReplicatedWrite::as_op).collect();
                        let removed = engine.write_many(&ops)?;
                        drop(ops);
                        Ok((removed, writes))
                    })
                    .await
                    .map_err(sm_error)?;
                    writes = back;
                    removed
                }
            };
            if let Some(observer) = self.observer() {
                observer.applied(&writes);
            }
            removed
        };
        {
            let mut applied = lock(&self.shared.applied);
            if last.is_some() {
                applied.last = last;
            }
            if let Some(m) = membership {
                applied.membership = m;
            }
            if record.is_some() {
                applied.record = record;
            }
        }
        let mut flags = removed.into_iter();
        Ok(counts
            .into_iter()
            .map(|n| Applied {
                removed: flags.by_ref().take(n).collect(),
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<SnapshotFiles>, StorageError<ReplicaId>> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = self.incoming_dir(&stamp.to_string());
        create_dir(&dir).map_err(snapshot_error)?;
        Ok(Box::new(SnapshotFiles::at(dir)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFiles>,
    ) -> std::result::Result<(), StorageError<ReplicaId>> {
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || this.install(&meta, &snapshot))
            .await
            .map_err(snapshot_error)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError<ReplicaId>> {
        Ok(lock(&self.shared.current_snapshot)
            .as_ref()
            .map(|(meta, dir)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(SnapshotFiles {
                    dir: Arc::clone(dir),
                }),
            }))
    }
}

#[cfg(test)]
mod tests;
