//! [`LogStore`]: the Raft log of one replica, on disk. openraft's `RaftLogStorage` and
//! `RaftLogReader` over segment files, with the vote and the purge point beside them.
//!
//! # Files
//!
//! ```text
//!   <dir>/log-<first index, 20 digits>.seg   segments of records, appended in index order
//!   <dir>/vote                               the last vote (small file, replaced atomically)
//!   <dir>/purged                             the last purged log id (small file)
//! ```
//!
//! A record is `len u32 | crc32c(payload) u32 | payload`, the payload an entry in the
//! [`codec`](crate::codec) encoding (its log id first). Records of one segment have consecutive
//! indexes; a segment is named after its first index and closed once it passes
//! [`LogOptions::segment_bytes`]. Small files are described in [`crate::fsutil`].
//!
//! A segment grows ahead of its records in windows of [`PREALLOCATE_BYTES`] written as zeros:
//! an append then overwrites bytes the file already has, so its fsync (`fdatasync`) has no new
//! file size to commit to the filesystem's journal, only the data. On this project's ext4 VM
//! that is about a third less CPU and latency per fsync. The records end where the zeros begin.
//!
//! # What runs where
//!
//! `append`, `truncate` and `purge` update the in-memory index at once (so a reader sees the
//! change when the call returns) and queue the file work for the log's own writer thread, which
//! performs everything in order: it writes every queued append, then under
//! [`SyncPolicy::Always`] fsyncs once and completes every append it wrote (group commit);
//! under `Interval` it completes appends once written and fsyncs on a timer; under `Never` only
//! on close. A vote is always fsynced before `save_vote` returns. A failed write or fsync
//! poisons the log: every later write fails, so nothing is acknowledged that is not stored.
//!
//! Entries appended recently stay decoded in a cache of [`LogOptions::cache_bytes`]; older ones
//! are read back from their segment with `pread` (replication of a lagging follower).
//!
//! # Recovery
//!
//! On open every segment is scanned and each record's checksum verified. Zeros from a record
//! boundary to the end of a file are the unused rest of its window: the records end there. A
//! torn or corrupt record at the end of the **last** segment is a write cut short by a crash:
//! the segment is truncated there (such a record was never acknowledged). Damage anywhere else,
//! or a gap in the indexes, is corruption of acknowledged data and the log refuses to open,
//! naming the file and offset. (A segment is fsynced before the first write to the next one, so
//! a crash cannot leave a torn record anywhere but in the last.) Records at or below the purge point are skipped, and segments holding only such
//! records are deleted.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use limedb_storage::SyncPolicy;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogReader, StorageError, StorageIOError};

use crate::codec::{from_bytes, to_bytes, Encode};
use crate::error::{ReplicaError, Result};
use crate::fsutil::{read_small_file, sync_dir, write_small_file};
use crate::types::{Entry, LogId, ReplicaId, TypeConfig, Vote};

const VOTE_MAGIC: &[u8; 8] = b"LMRVOTE1";
const PURGED_MAGIC: &[u8; 8] = b"LMRPURG1";
const RECORD_HEADER_BYTES: usize = 8;
/// A log id takes the first 24 bytes of every payload.
const LOG_ID_BYTES: usize = 24;
/// Largest record payload accepted on recovery: a maximal entry the proposer builds, with room.
const MAX_RECORD_BYTES: usize = 1 << 30;
/// A segment file is extended with zeros in windows of this many bytes (see the module docs).
pub const PREALLOCATE_BYTES: u64 = 1 << 20;

/// Tuning of a [`LogStore`].
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// When appends reach the disk (see the module docs).
    pub sync: SyncPolicy,
    /// A segment is closed once it holds this many bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// Decoded recent entries kept in memory. Default 64 MiB.
    pub cache_bytes: usize,
    /// `limited_get_log_entries` stops after this many bytes of entries (at least one entry).
    /// Default 4 MiB: the size of one AppendEntries message to a catching-up follower.
    pub max_read_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            sync: SyncPolicy::Always,
            segment_bytes: 64 << 20,
            cache_bytes: 64 << 20,
            max_read_bytes: 4 << 20,
        }
    }
}

/// Where an entry is stored.
#[derive(Clone, Debug)]
struct Loc {
    log_id: LogId,
    segment: u64,
    offset: u64,
    /// Record bytes, header included.
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Arc<File>,
}

#[derive(Debug, Default)]
struct Index {
    vote: Option<Vote>,
    purged: Option<LogId>,
    /// Every entry after the purge point, by index. openraft appends consecutive indexes;
    /// its storage test suite also appends with gaps, which the index tolerates.
    locs: BTreeMap<u64, Loc>,
    /// Decoded recent entries and their encoded sizes.
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
    /// Segment files by first index.
    segments: BTreeMap<u64, Segment>,
    /// The segment appends go to, and its size.
    active: Option<(u64, u64)>,
}

impl Index {
    fn last_log_id(&self) -> Option<LogId> {
        self.locs
            .last_key_value()
            .map(|(_, l)| l.log_id)
            .or(self.purged)
    }

    fn next_index(&self) -> Option<u64> {
        self.last_log_id().map(|id| id.index + 1)
    }
}

/// File work queued for the writer thread, performed in order.
enum Op {
    Write {
        file: Arc<File>,
        offset: u64,
        bytes: Vec<u8>,
        /// A new segment: fsync the directory before this write counts as durable.
        new_segment: bool,
        /// One past the last index this write holds.
        upto: u64,
        done: Option<LogFlushed<TypeConfig>>,
    },
    Truncate {
        file: Arc<File>,
        len: u64,
        remove: Vec<PathBuf>,
        upto: u64,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    Purge {
        purged: LogId,
        remove: Vec<PathBuf>,
    },
    SaveVote {
        vote: Vote,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    Stop,
}

struct Shared {
    dir: PathBuf,
    options: LogOptions,
    index: Mutex<Index>,
    /// One past the highest index the writer thread has written to its segment.
    written_upto: Arc<AtomicU64>,
    ops: Mutex<mpsc::Sender<Op>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = lock(&self.ops).send(Op::Stop);
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "the raft log writer thread panicked");
            }
        }
    }
}

/// The Raft log of one replica; cheap to clone (clones share everything), and its clones are
/// the log readers openraft's replication tasks use.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("log-{first_index:020}.seg"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("log-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

fn open_segment(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(ReplicaError::io("cannot open raft log segment", path))
}

fn io_err(e: std::io::Error) -> StorageError<ReplicaId> {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: std::io::Error) -> StorageError<ReplicaId> {
    StorageIOError::read_logs(&e).into()
}

fn writer_gone() -> std::io::Error {
    std::io::Error::other("the raft log writer thread is gone")
}

/// One write the writer thread performs: file, offset, bytes, whether it starts a new
/// segment, and one past the last index it holds.
struct PendingWrite {
    file: Arc<File>,
    offset: u64,
    bytes: Vec<u8>,
    new_segment: bool,
    upto: u64,
}

fn defensive(message: String) -> StorageError<ReplicaId> {
    StorageIOError::write_logs(AnyError::error(message)).into()
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, recovering as the module docs describe.
    pub fn open(dir: &Path, options: LogOptions) -> Result<LogStore> {
        crate::fsutil::create_dir(dir)?;
        let vote = read_small_file(&dir.join("vote"), VOTE_MAGIC)?
            .map(from_bytes::<Vote>)
            .transpose()?;
        let purged = read_small_file(&dir.join("purged"), PURGED_MAGIC)?
            .map(from_bytes::<LogId>)
            .transpose()?;
        let mut index = Index {
            vote,
            purged,
            ..Index::default()
        };
        recover_segments(dir, &mut index)?;
        let written = index.next_index().unwrap_or(0);
        let written_upto = Arc::new(AtomicU64::new(written));
        let (tx, rx) = mpsc::channel();
        let thread_written = Arc::clone(&written_upto);
        let thread_dir = dir.to_path_buf();
        let sync = options.sync;
        let thread = std::thread::Builder::new()
            .name("limedb-raft-log".into())
            .spawn(move || run_writer(&thread_dir, sync, rx, &thread_written))
            .map_err(ReplicaError::io(
                "cannot start the log writer thread for",
                dir,
            ))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                options,
                index: Mutex::new(index),
                written_upto,
                ops: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn send(&self, op: Op) -> std::io::Result<()> {
        lock(&self.shared.ops).send(op).map_err(|_| writer_gone())
    }

    /// The last log id stored (or purged), without going through openraft.
    pub fn last_log_id(&self) -> Option<LogId> {
        lock(&self.shared.index).last_log_id()
    }

    /// The vote stored, without going through openraft.
    pub fn stored_vote(&self) -> Option<Vote> {
        lock(&self.shared.index).vote
    }

    /// Whether this log has never been written: no vote, no entry, nothing purged.
    pub fn is_pristine(&self) -> bool {
        let index = lock(&self.shared.index);
        index.vote.is_none() && index.locs.is_empty() && index.purged.is_none()
    }

    /// Bytes of the segment files.
    pub fn size_bytes(&self) -> u64 {
        let index = lock(&self.shared.index);
        index
            .segments
            .values()
            .filter_map(|s| s.file.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Entries with indexes in `range`, at most `max_bytes` of them (at least one if any is in
    /// range). Cached entries are cloned; older ones are read from their segment.
    fn read_entries(&self, start: u64, end: u64, max_bytes: usize) -> std::io::Result<Vec<Entry>> {
        enum Source {
            Cached(Entry),
            File(Arc<File>, Loc),
        }
        let mut sources = Vec::new();
        {
            let index = lock(&self.shared.index);
            let mut bytes = 0usize;
            for (&i, loc) in index.locs.range(start..end.max(start)) {
                if !sources.is_empty() && bytes >= max_bytes {
                    break;
                }
                bytes += loc.len as usize;
                match index.cache.get(&i) {
                    Some((entry, _)) => sources.push(Source::Cached(entry.clone())),
                    None => match index.segments.get(&loc.segment) {
                        Some(seg) => sources.push(Source::File(Arc::clone(&seg.file), loc.clone())),
                        None => {
                            return Err(std::io::Error::other(format!(
                                "raft log entry {i} names segment {} which is not open",
                                loc.segment
                            )))
                        }
                    },
                }
            }
        }
        sources
            .into_iter()
            .map(|source| match source {
                Source::Cached(entry) => Ok(entry),
                Source::File(file, loc) => read_record(&file, &loc),
            })
            .collect()
    }
}

fn read_record(file: &File, loc: &Loc) -> std::io::Result<Entry> {
    let read_err = |e: &dyn std::fmt::Display| {
        std::io::Error::other(format!(
            "raft log entry {} at offset {}: {e}",
            loc.log_id.index, loc.offset
        ))
    };
    let mut buf = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut buf, loc.offset)
        .map_err(|e| read_err(&e))?;
    let payload = check_record(&buf).map_err(|e| read_err(&e))?;
    let entry: Entry = from_bytes(Bytes::copy_from_slice(payload)).map_err(|e| read_err(&e))?;
    if entry.log_id != loc.log_id {
        return Err(read_err(&format!(
            "holds entry {} instead of {}",
            entry.log_id, loc.log_id
        )));
    }
    Ok(entry)
}

/// The payload of a complete record in `buf`, its checksum verified.
fn check_record(buf: &[u8]) -> std::result::Result<&[u8], String> {
    let header = buf
        .get(..RECORD_HEADER_BYTES)
        .ok_or_else(|| "a truncated record header".to_string())?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(LOG_ID_BYTES..=MAX_RECORD_BYTES).contains(&len) {
        return Err(format!("an impossible record length {len}"));
    }
    let payload = buf
        .get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)
        .ok_or_else(|| format!("a record of {len} bytes cut short"))?;
    if crc32c::crc32c(payload) != crc {
        return Err("a record whose checksum does not match".into());
    }
    Ok(payload)
}

fn frame_record(entry: &Entry) -> Vec<u8> {
    let mut payload = BytesMut::new();
    entry.encode(&mut payload);
    let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    record.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    record.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

/// Scans every segment into `index` (see the module docs on recovery).
fn recover_segments(dir: &Path, index: &mut Index) -> Result<()> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ReplicaError::io("cannot list", dir))? {
        let entry = entry.map_err(ReplicaError::io("cannot list", dir))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let purged_upto = index.purged.map(|p| p.index);
    let mut obsolete = Vec::new();
    for (n, &id) in ids.iter().enumerate() {
        let path = segment_path(dir, id);
        let is_last = n + 1 == ids.len();
        let bytes = std::fs::read(&path).map_err(ReplicaError::io("cannot read", &path))?;
        let mut offset = 0usize;
        let mut kept = 0usize;
        while offset < bytes.len() {
            let payload = match check_record(&bytes[offset..]) {
                Ok(p) => p,
                Err(_) if bytes[offset..].iter().all(|b| *b == 0) => break,
                Err(why) if is_last => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        reason = %why,
                        "raft log: dropping a torn record at the end of the last segment"
                    );
                    let file = open_segment(&path, false)?;
                    file.set_len(offset as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(ReplicaError::io("cannot truncate", &path))?;
                    break;
                }
                Err(why) => {
                    return Err(ReplicaError::Config(format!(
                        "raft log segment {} is corrupt at offset {offset}: {why}; it is not the last segment, so acknowledged entries are damaged",
                        path.display()
                    )))
                }
            };
            let log_id: LogId = {
                let mut r = crate::codec::Reader::new(Bytes::copy_from_slice(
                    payload.get(..LOG_ID_BYTES).unwrap_or_default(),
                ));
                crate::codec::Decode::decode(&mut r)?
            };
            let len = RECORD_HEADER_BYTES + payload.len();
            if purged_upto.is_none_or(|p| log_id.index > p) {
                if let Some(expected) = index.next_index() {
                    if log_id.index < expected {
                        return Err(ReplicaError::Config(format!(
                            "raft log segment {} holds entry {} at offset {offset} after entry {}: the log goes backwards",
                            path.display(),
                            log_id.index,
                            expected - 1
                        )));
                    }
                    if log_id.index > expected {
                        tracing::warn!(segment = %path.display(), offset, entry = log_id.index, expected, "raft log: a gap before this entry");
                    }
                }
                index.locs.insert(
                    log_id.index,
                    Loc {
                        log_id,
                        segment: id,
                        offset: offset as u64,
                        len: len as u32,
                    },
                );
                kept += 1;
            }
            offset += len;
        }
        if kept == 0 && !is_last {
            obsolete.push(path);
            continue;
        }
        let file = open_segment(&path, false)?;
        // Appends continue where the records end, over the zeros after them.
        let size = offset as u64;
        index.segments.insert(
            id,
            Segment {
                path,
                file: Arc::new(file),
            },
        );
        if is_last {
            index.active = Some((id, size));
        }
    }
    for path in obsolete {
        std::fs::remove_file(&path).map_err(ReplicaError::io("cannot remove", &path))?;
    }
    Ok(())
}

/// The writer thread: performs queued file work in order (see the module docs).
fn run_writer(dir: &Path, sync: SyncPolicy, ops: mpsc::Receiver<Op>, written_upto: &AtomicU64) {
    let mut writer = Writer {
        dir,
        allocated: None,
        zeros: Vec::new(),
        dirty: Vec::new(),
        dir_dirty: false,
        waiting: Vec::new(),
        failed: None,
        last_sync: Instant::now(),
    };
    loop {
        let first = match sync {
            SyncPolicy::Interval(period) => match ops.recv_timeout(period) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            _ => match ops.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            },
        };
        let mut stop = false;
        let mut next = first;
        while let Some(op) = next.take() {
            match op {
                Op::Stop => {
                    stop = true;
                    break;
                }
                op => writer.perform(op, written_upto),
            }
            next = ops.try_recv().ok();
        }
        // Always: one fsync completes every append of the batch (group commit). The other
        // policies complete appends once written; Interval fsyncs on its timer.
        let due = match sync {
            SyncPolicy::Always => true,
            SyncPolicy::Interval(period) => writer.last_sync.elapsed() >= period,
            SyncPolicy::Never => false,
        };
        writer.flush(due);
        if stop {
            break;
        }
    }
    writer.flush(true);
}

struct Writer<'a> {
    dir: &'a Path,
    /// The file appends went to last and its length (records and the zeros after them).
    allocated: Option<(Arc<File>, u64)>,
    /// [`PREALLOCATE_BYTES`] of zeros, once the first window is written.
    zeros: Vec<u8>,
    /// Files written since their last fsync.
    dirty: Vec<Arc<File>>,
    dir_dirty: bool,
    /// Appends written but not yet completed.
    waiting: Vec<LogFlushed<TypeConfig>>,
    /// The first failure; every later write fails with it.
    failed: Option<String>,
    last_sync: Instant,
}

impl Writer<'_> {
    fn fail(&mut self, what: String) -> std::io::Error {
        tracing::error!(dir = %self.dir.display(), error = %what, "raft log write failed; the log refuses further writes");
        self.failed.get_or_insert(what.clone());
        std::io::Error::other(what)
    }

    fn poisoned(&self) -> Option<std::io::Error> {
        self.failed
            .as_ref()
            .map(|f| std::io::Error::other(format!("the raft log failed earlier: {f}")))
    }

    fn perform(&mut self, op: Op, written_upto: &AtomicU64) {
        match op {
            Op::Write {
                file,
                offset,
                bytes,
                new_segment,
                upto,
                done,
            } => {
                if let Some(e) = self.poisoned() {
                    if let Some(done) = done {
                        done.log_io_completed(Err(e));
                    }
                    return;
                }
                if new_segment {
                    // Every earlier segment is durable before the next one holds anything, so
                    // only the last segment can end in a torn record (see the recovery docs).
                    self.flush(true);
                }
                let written = self
                    .allocate(&file, offset + bytes.len() as u64)
                    .and_then(|()| file.write_all_at(&bytes, offset));
                if let Err(e) = written {
                    let e = self.fail(format!("append failed: {e}"));
                    if let Some(done) = done {
                        done.log_io_completed(Err(e));
                    }
                    return;
                }
                written_upto.store(upto, Ordering::Release);
                self.dir_dirty |= new_segment;
                if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &file)) {
                    self.dirty.push(file);
                }
                if let Some(done) = done {
                    self.waiting.push(done);
                }
            }
            Op::Truncate {
                file,
                len,
                remove,
                upto,
                done,
            } => {
                self.flush(true);
                self.allocated = None;
                let result = self.poisoned().map_or_else(
                    || {
                        file.set_len(len)
                            .and_then(|()| file.sync_all())
                            .and_then(|()| remove.iter().try_for_each(std::fs::remove_file))
                            .and_then(|()| sync_dir(self.dir).map_err(std::io::Error::other))
                    },
                    Err,
                );
                let result = result.map_err(|e| self.fail(format!("truncate failed: {e}")));
                if result.is_ok() {
                    written_upto.store(upto, Ordering::Release);
                }
                let _ = done.send(result);
            }
            Op::Purge { purged, remove } => {
                self.flush(true);
                if self.failed.is_some() {
                    return;
                }
                let result =
                    write_small_file(&self.dir.join("purged"), PURGED_MAGIC, &to_bytes(&purged))
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            remove
                                .iter()
                                .try_for_each(std::fs::remove_file)
                                .map_err(|e| e.to_string())
                        });
                if let Err(e) = result {
                    let _ = self.fail(format!("purge failed: {e}"));
                }
            }
            Op::SaveVote { vote, done } => {
                self.flush(true);
                let result = match self.poisoned() {
                    Some(e) => Err(e),
                    None => write_small_file(&self.dir.join("vote"), VOTE_MAGIC, &to_bytes(&vote))
                        .map_err(|e| self.fail(format!("saving the vote failed: {e}"))),
                };
                let _ = done.send(result);
            }
            Op::Stop => {}
        }
    }

    /// Makes `file` at least `end` bytes long, growing it to the next multiple of
    /// [`PREALLOCATE_BYTES`] with zeros when it is shorter.
    fn allocate(&mut self, file: &Arc<File>, end: u64) -> std::io::Result<()> {
        let mut len = match &self.allocated {
            Some((known, len)) if Arc::ptr_eq(known, file) => *len,
            _ => file.metadata()?.len(),
        };
        if end > len {
            if self.zeros.is_empty() {
                self.zeros = vec![0; PREALLOCATE_BYTES as usize];
            }
            let target = end.div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
            while len < target {
                let n = (target - len).min(PREALLOCATE_BYTES);
                file.write_all_at(&self.zeros[..n as usize], len)?;
                len += n;
            }
        }
        self.allocated = Some((Arc::clone(file), len));
        Ok(())
    }

    /// Completes the appends written so far, after one fsync of every file written since the
    /// last (and of the directory, if a segment was created) when `fsync` is set.
    fn flush(&mut self, fsync: bool) {
        if fsync && (!self.dirty.is_empty() || self.dir_dirty) {
            let result = self
                .dirty
                .iter()
                .try_for_each(|f| f.sync_data())
                .and_then(|()| {
                    if self.dir_dirty {
                        sync_dir(self.dir).map_err(std::io::Error::other)
                    } else {
                        Ok(())
                    }
                });
            self.dirty.clear();
            self.dir_dirty = false;
            self.last_sync = Instant::now();
            if let Err(e) = result {
                let e = self.fail(format!("fsync failed: {e}"));
                for done in self.waiting.drain(..) {
                    done.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
                return;
            }
        }
        for done in self.waiting.drain(..) {
            done.log_io_completed(Ok(()));
        }
    }
}

fn range_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError<ReplicaId>> {
        let (start, end) = range_bounds(&range);
        self.read_entries(start, end, usize::MAX).map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> std::result::Result<Vec<Entry>, StorageError<ReplicaId>> {
        self.read_entries(start, end, self.shared.options.max_read_bytes)
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(
        &mut self,
    ) -> std::result::Result<LogState<TypeConfig>, StorageError<ReplicaId>> {
        let index = lock(&self.shared.index);
        Ok(LogState {
            last_purged_log_id: index.purged,
            last_log_id: index.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), StorageError<ReplicaId>> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.send(Op::SaveVote { vote: *vote, done })
            .map_err(io_err)?;
        answer
            .await
            .map_err(|_| io_err(writer_gone()))?
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        lock(&self.shared.index).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, StorageError<ReplicaId>> {
        Ok(lock(&self.shared.index).vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError<ReplicaId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let segment_bytes = self.shared.options.segment_bytes;
        let mut writes: Vec<PendingWrite> = Vec::new();
        {
            let mut guard = lock(&self.shared.index);
            let index = &mut *guard;
            for entry in entries {
                // At or below the purge point the entry is already part of a snapshot (openraft's
                // storage suite appends such entries after a purge): nothing to store.
                if index.purged.is_some_and(|p| entry.log_id.index <= p.index) {
                    continue;
                }
                if let Some(expected) = index.next_index() {
                    if entry.log_id.index < expected {
                        return Err(defensive(format!(
                            "append of entry {} where entry {expected} is next: truncate first",
                            entry.log_id.index
                        )));
                    }
                }
                let record = frame_record(&entry);
                let len = record.len() as u64;
                let rotate = match index.active {
                    None => true,
                    Some((_, size)) => size > 0 && size + len > segment_bytes,
                };
                let mut new_segment = false;
                if rotate {
                    let id = entry.log_id.index;
                    let path = segment_path(&self.shared.dir, id);
                    let file = open_segment(&path, true).map_err(|e| defensive(e.to_string()))?;
                    file.set_len(0).map_err(io_err)?;
                    index.segments.insert(
                        id,
                        Segment {
                            path,
                            file: Arc::new(file),
                        },
                    );
                    index.active = Some((id, 0));
                    new_segment = true;
                }
                let Some((segment, offset)) = index.active else {
                    return Err(defensive("no active raft log segment".into()));
                };
                let Some(file) = index.segments.get(&segment).map(|s| Arc::clone(&s.file)) else {
                    return Err(defensive(format!("segment {segment} is not open")));
                };
                index.active = Some((segment, offset + len));
                index.locs.insert(
                    entry.log_id.index,
                    Loc {
                        log_id: entry.log_id,
                        segment,
                        offset,
                        len: len as u32,
                    },
                );
                let upto = entry.log_id.index + 1;
                let size = record.len();
                index.cache.insert(entry.log_id.index, (entry, size));
                index.cache_bytes += size;
                // Consecutive records of one segment go out as one write.
                match writes.last_mut() {
                    Some(w)
                        if Arc::ptr_eq(&w.file, &file)
                            && w.offset + w.bytes.len() as u64 == offset =>
                    {
                        w.bytes.extend_from_slice(&record);
                        w.upto = upto;
                    }
                    _ => writes.push(PendingWrite {
                        file,
                        offset,
                        bytes: record,
                        new_segment,
                        upto,
                    }),
                }
            }
            evict(
                index,
                &self.shared.written_upto,
                self.shared.options.cache_bytes,
            );
        }
        let Some(last) = writes.len().checked_sub(1) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let mut callback = Some(callback);
        for (i, w) in writes.into_iter().enumerate() {
            self.send(Op::Write {
                file: w.file,
                offset: w.offset,
                bytes: w.bytes,
                new_segment: w.new_segment,
                upto: w.upto,
                done: if i == last { callback.take() } else { None },
            })
            .map_err(io_err)?;
        }
        Ok(())
    }

    async fn truncate(
        &mut self,
        log_id: LogId,
    ) -> std::result::Result<(), StorageError<ReplicaId>> {
        let since = log_id.index;
        let (file, len, remove) = {
            let mut guard = lock(&self.shared.index);
            let index = &mut *guard;
            let Some(cut) = index.locs.range(since..).next().map(|(_, l)| l.clone()) else {
                return Ok(());
            };
            drop(index.locs.split_off(&since));
            let dropped: Vec<u64> = index.cache.range(since..).map(|(i, _)| *i).collect();
            for i in dropped {
                if let Some((_, size)) = index.cache.remove(&i) {
                    index.cache_bytes -= size;
                }
            }
            let later: Vec<u64> = index
                .segments
                .range(cut.segment + 1..)
                .map(|(id, _)| *id)
                .collect();
            let remove = later
                .into_iter()
                .filter_map(|id| index.segments.remove(&id))
                .map(|s| s.path)
                .collect();
            let Some(file) = index
                .segments
                .get(&cut.segment)
                .map(|s| Arc::clone(&s.file))
            else {
                return Err(defensive(format!("segment {} is not open", cut.segment)));
            };
            index.active = Some((cut.segment, cut.offset));
            (file, cut.offset, remove)
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        self.send(Op::Truncate {
            file,
            len,
            remove,
            upto: since,
            done,
        })
        .map_err(io_err)?;
        answer
            .await
            .map_err(|_| io_err(writer_gone()))?
            .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError<ReplicaId>> {
        let remove = {
            let mut guard = lock(&self.shared.index);
            let index = &mut *guard;
            if index.purged.is_some_and(|p| p.index >= log_id.index) {
                return Ok(());
            }
            index.purged = Some(log_id);
            index.locs = index.locs.split_off(&(log_id.index + 1));
            let dropped: Vec<u64> = index
                .cache
                .range(..=log_id.index)
                .map(|(i, _)| *i)
                .collect();
            for i in dropped {
                if let Some((_, size)) = index.cache.remove(&i) {
                    index.cache_bytes -= size;
                }
            }
            // A segment can go once the next one starts at or before the first kept index.
            let first_kept = log_id.index + 1;
            let ids: Vec<u64> = index.segments.keys().copied().collect();
            let active = index.active.map(|(id, _)| id);
            let mut remove = Vec::new();
            for pair in ids.windows(2) {
                let (id, next) = (pair[0], pair[1]);
                if next <= first_kept && Some(id) != active {
                    if let Some(seg) = index.segments.remove(&id) {
                        remove.push(seg.path);
                    }
                }
            }
            remove
        };
        self.send(Op::Purge {
            purged: log_id,
            remove,
        })
        .map_err(io_err)
    }
}

/// Drops the oldest cached entries beyond the budget, but only entries already written (an
/// entry not yet in its segment can be read from nowhere else).
fn evict(index: &mut Index, written_upto: &AtomicU64, budget: usize) {
    let written = written_upto.load(Ordering::Acquire);
    while index.cache_bytes > budget {
        let Some((&i, _)) = index.cache.iter().next() else {
            break;
        };
        if i >= written {
            break;
        }
        if let Some((_, size)) = index.cache.remove(&i) {
            index.cache_bytes -= size;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
