//! The write-ahead log of the LSM engine: every [`WriteBatch`] is appended here, checksummed,
//! before it reaches a memtable, and replayed on open.
//!
//! # Files
//!
//! The log is a directory of *segments* named after the first sequence number they may hold,
//! zero-padded to 20 digits so that name order is seqno order:
//!
//! ```text
//!   <dir>/wal-00000000000000000001.log     seqnos 1 ..= 4710           (closed)
//!   <dir>/wal-00000000000000004711.log     seqnos 4711 ..              (active: appended to)
//! ```
//!
//! [`Wal::rotate`] (called when a memtable is frozen) closes the active segment and starts the
//! next; so does an append that finds the active segment larger than
//! [`WalOptions::max_segment_bytes`]. Once a memtable has been flushed to an SSTable,
//! [`Wal::delete_obsolete`] removes the closed segments whose records it covered. The active
//! segment is never deleted, so the directory always remembers the next sequence number.
//!
//! # Format (version 1)
//!
//! All integers are little-endian.
//!
//! ```text
//!  segment header (16 bytes)
//!  +---+---+---+---+---+---+---+---------+---------------------------+
//!  | L | I | M | E | W | A | L | version |  first_seqno u64          |
//!  +---+---+---+---+---+---+---+---------+---------------------------+
//!    magic b"LIMEWAL"            u8 = 1    = the number in the file name
//!
//!  record (one write batch), back to back after the header
//!  +-----------------+---------------------+--------------------------------+
//!  | payload_len u32 | crc32c(payload) u32 | payload (payload_len bytes)    |
//!  +-----------------+---------------------+--------------------------------+
//!
//!  payload
//!  +------------------+-----------+-------+-------+-- … --+----------------+
//!  | first_seqno u64  | count u32 | op 0  | op 1  |       | op count-1     |
//!  +------------------+-----------+-------+-------+-- … --+----------------+
//!    op i has sequence number first_seqno + i; count >= 1
//!
//!  op, put (kind = 1)
//!  +---------+-------------+-----+---------------+-------+
//!  | kind u8 | key_len u32 | key | value_len u32 | value |
//!  +---------+-------------+-----+---------------+-------+
//!
//!  op, delete (kind = 0)
//!  +---------+-------------+-----+
//!  | kind u8 | key_len u32 | key |
//!  +---------+-------------+-----+
//! ```
//!
//! The kind bytes are those of [`ValueKind`]. Keys are at most [`crate::MAX_KEY_BYTES`], values
//! at most [`crate::MAX_VALUE_BYTES`], a payload at most 4 GiB − 1; replay checks every count
//! and length against these limits and against the bytes present before allocating. Within a
//! segment the batches' sequence numbers are contiguous, starting at the header's
//! `first_seqno`; a later segment starts at or above where the previous one ended.
//!
//! # Recovery
//!
//! [`Wal::open`] replays every segment in order and returns the batches. The recovery mode is
//! *tolerate torn tail*, the rules of the memory engine's log (`memory/log.rs`) plus two that
//! writing ahead of the file's size calls for (`lsm/records.rs` has them all):
//!
//! - A **torn tail** in the **last** segment is a final record cut short by a crash (its header
//!   or payload runs past end of file), a final record that fails its CRC with nothing but zero
//!   bytes after it (end of file, or the zeros the segment was extended with), or a tail of
//!   zero bytes (the zeros written ahead, after a crash). A segment header cut short (a crash
//!   while the segment was created) is torn too. Recovery logs a warning, truncates the
//!   segment to the end of its last good record, and appends continue there.
//! - A **lost page** in the last segment is torn as well: a power failure may lose a page of
//!   the unsynced tail while later pages reach the disk. Its traces are a record that fails
//!   its CRC (no shorter prefix matching it) and overlaps a whole 4 KiB-aligned page of zeros,
//!   and a record header of zeros with only zeros to the end of its page. Every record from
//!   there on was written after the last fsync, so the sync policy allows losing it.
//! - A damaged length field does not pass for a torn write: if a final record runs past end of
//!   file or fails its CRC, but a prefix of its payload matches the stored CRC, it is corrupt.
//! - Anything else is **corruption** and [`Wal::open`] fails with [`StorageError::Corrupt`]
//!   naming the segment and the byte offset of the record: a CRC mismatch or an undecodable
//!   payload with data after it, sequence numbers out of order, a bad header, or *any* damage
//!   in a segment that is not the last. (A segment is fsynced before the next one is created,
//!   so only the last can have been cut short by a crash.) Synced data is never dropped
//!   silently, with one blind spot: bit rot in a record of the last segment that also holds a
//!   4 KiB-aligned page of zeros (a large value of zero bytes) reads as a lost page. A damaged
//!   file never causes a panic.
//!
//! # Durability and group commit
//!
//! [`Wal::append`] has handed the record to the kernel's page cache before it returns, so an
//! acknowledged batch survives the process being killed under every [`SyncPolicy`]. The record
//! goes into space the file already has: the active segment is extended by [`EXTEND_BYTES`] of
//! zeros whenever a record would not fit, instead of growing the file with every record (on
//! ext4, +5–7% SETs at redis-benchmark `-P 16`). The extension is allocated on disk (zeros
//! written over it) and mapped, and appends copy their records into the map (the *append
//! window*, see `window.rs`): a store into a shared file mapping is in the page cache as
//! soon as it is made, like a `pwrite(2)`, without the system call (HTTP SET against one shard
//! +8–10%, in two alternating pairs of `bench/http.sh`). On a file system that copies on write
//! (btrfs, ZFS; a full disk could then fault a store) or that LimeDB does not know, the
//! extension is sparse and each record is written with one `pwrite(2)`. A segment is
//! trimmed to its last record, and fsynced, when it is closed (rotation, [`Wal::close`], drop),
//! so only the last segment can end in zeros. Under
//! [`SyncPolicy::Always`] it also waits until the record is fsynced, by a leader/follower
//! group commit (`Wal::sync_to_gathering`): the first waiter becomes the leader and fsyncs
//! everything written so far; writers that come meanwhile sleep until it is done and return
//! without an fsync of their own if it covered them, else one of them leads the next fsync.
//! (The engine lets its leader wait a moment for writers about to append, so that the
//! fsync carries them too.) Under `Interval` the engine's background thread
//! calls [`Wal::sync`] every period; under `Never` only [`Wal::sync`] and [`Wal::close`] fsync
//! (dropping a [`Wal`] fsyncs too, best effort). A failed write or fsync **poisons** the log:
//! every later append returns [`StorageError::Poisoned`] until it is reopened, since after a
//! failed fsync the kernel may have dropped the dirty pages.
//!
//! # Example
//!
//! ```
//! use limedb_storage::lsm::wal::{Wal, WalOptions, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! let (wal, recovered) = Wal::open(dir.path(), WalOptions::default())?;
//! assert!(recovered.is_empty());
//! let mut batch = WriteBatch::new();
//! batch.put("lime", "green").delete("lemon");
//! assert_eq!(wal.append(&batch)?, 2); // seqnos 1 and 2
//! wal.close()?;
//!
//! let (wal, recovered) = Wal::open(dir.path(), WalOptions::default())?;
//! assert_eq!(recovered.len(), 1);
//! assert_eq!((recovered[0].first_seqno, &recovered[0].batch), (1, &batch));
//! assert_eq!(wal.append(&batch)?, 4); // continues after recovery
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
#[cfg(test)]
mod tests;
mod window;

use crate::fsutil::fsync_dir;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

pub use batch::{BatchOp, RecoveredBatch, WriteBatch, MAX_PAYLOAD_BYTES};

use crate::error::StorageError;
use crate::lsm::key::{ValueKind, MAX_SEQNO};
use crate::lsm::records;
use crate::sync::SyncPolicy;
use crate::Result;
use batch::{check_batch, decode_payload, MIN_PAYLOAD_LEN};
use window::AppendWindow;

/// Magic bytes opening every segment.
pub const MAGIC: &[u8; 7] = b"LIMEWAL";

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of a segment header: magic, version, first seqno.
pub const SEGMENT_HEADER_LEN: usize = 16;

/// How far ahead of its records the active segment's file is extended (with zero bytes,
/// allocated and mapped where the file system allows, sparse otherwise): appends write into
/// space the file already has, so that they do not change its size (see the
/// [module docs](self#durability-and-group-commit)).
pub const EXTEND_BYTES: u64 = 1 << 20;

/// How a [`Wal`] syncs and when it starts a new segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// When appended records are fsynced (default: every second).
    pub sync: SyncPolicy,
    /// An append that finds the active segment at least this large first starts a new one
    /// (default 64 MiB). A single batch may make a segment larger.
    pub max_segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            sync: SyncPolicy::default(),
            max_segment_bytes: 64 << 20,
        }
    }
}

/// The write-ahead log (see the [module docs](self)). Shared by reference between writer
/// threads: every method takes `&self`.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// The append side. Lock order: `writer` before `syncer`.
    writer: Mutex<Writer>,
    /// The fsync side: a second handle on the active segment, so that a group-commit fsync
    /// does not hold up appends.
    syncer: Mutex<Syncer>,
    /// Sequence number of the last operation written to the active segment (0 if none ever).
    written_seqno: AtomicU64,
    /// A copy of `syncer.synced_seqno`, readable without waiting for an fsync in progress.
    synced_seqno: AtomicU64,
    /// Whether a group-commit leader is fsyncing (see [`Wal::sync_to_gathering`]); waiters
    /// sleep on `sync_done` until it is done.
    sync_leader: Mutex<bool>,
    sync_done: Condvar,
    poisoned: AtomicBool,
    fsyncs: AtomicU64,
    /// Whether appends go through an [`AppendWindow`]: where the file system allows
    /// ([`window::file_system_allows`]), but in tests of the `pwrite` path.
    map_appends: bool,
    /// Test hooks: the next append writes half its record and fails; the next fsync fails.
    #[cfg(test)]
    fail_next_write: AtomicBool,
    #[cfg(test)]
    fail_next_sync: AtomicBool,
}

#[derive(Debug)]
struct Segment {
    first_seqno: u64,
    path: PathBuf,
}

#[derive(Debug)]
struct Writer {
    /// The active segment, opened for writing at explicit offsets.
    file: File,
    /// Bytes of its header and records: where the next record goes.
    len_bytes: u64,
    /// The size of its file: `len_bytes` and, after it, zero bytes appends will write over.
    file_bytes: u64,
    /// The sequence number the next operation gets.
    next_seqno: u64,
    /// Every segment on disk, oldest first; the last is the active one.
    segments: VecDeque<Segment>,
    /// Encoding buffer, reused between appends.
    buf: Vec<u8>,
    /// The allocated space after the records, mapped for appends (see [`window`]); `None`
    /// until the file is extended, on a file system the log does not map, after a record
    /// larger than an extension, or if the map failed (appends then `pwrite`).
    window: Option<AppendWindow>,
}

#[derive(Debug)]
struct Syncer {
    file: File,
    /// The path of `file`, for errors.
    path: PathBuf,
    /// Every operation up to this sequence number is on stable storage.
    synced_seqno: u64,
}

/// The name of the segment whose first sequence number is `first_seqno`.
pub fn segment_file_name(first_seqno: u64) -> String {
    format!("wal-{first_seqno:020}.log")
}

/// The first sequence number encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn segment_header(first_seqno: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..7].copy_from_slice(MAGIC);
    h[7] = FORMAT_VERSION;
    h[8..].copy_from_slice(&first_seqno.to_le_bytes());
    h
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wal {
    /// Opens the log in `dir` (created if absent), replays every segment and returns the log,
    /// positioned after the last good record, with the recovered batches in sequence order.
    ///
    /// A torn tail of the last segment is truncated with a warning; any other damage fails
    /// with [`StorageError::Corrupt`] (or [`StorageError::UnsupportedVersion`]); see the
    /// [module docs](self#recovery).
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Vec<RecoveredBatch>)> {
        std::fs::create_dir_all(dir)
            .map_err(StorageError::io("failed to create WAL directory", dir))?;
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(dir).map_err(StorageError::io("failed to list WAL directory", dir))?
        {
            let entry = entry.map_err(StorageError::io("failed to list WAL directory", dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_file_name) {
                found.push((first, entry.path()));
            }
        }
        found.sort();

        let mut recovered = Vec::new();
        let mut segments = VecDeque::with_capacity(found.len() + 1);
        let mut next_seqno = 1u64;
        let count = found.len();
        for (i, (first_seqno, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            if first_seqno < next_seqno || first_seqno == 0 || first_seqno > MAX_SEQNO + 1 {
                return Err(StorageError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "segment starts at seqno {first_seqno}, but the segments before it \
                         reach seqno {}",
                        next_seqno - 1
                    ),
                });
            }
            let data = std::fs::read(&path)
                .map_err(StorageError::io("failed to read WAL segment", &path))?;
            let data_len = data.len() as u64;
            let replay = replay_segment(&Bytes::from(data), &path, first_seqno, is_last)?;
            if let Some(reason) = &replay.torn {
                tracing::warn!(
                    path = %path.display(),
                    offset = replay.good_len,
                    dropped_bytes = data_len - replay.good_len,
                    %reason,
                    "torn tail in WAL segment; truncating to the last good record"
                );
                repair_segment(&path, first_seqno, replay.good_len)?;
            }
            next_seqno = replay.next_seqno;
            recovered.extend(replay.batches);
            segments.push_back(Segment { first_seqno, path });
        }

        let (file, len_bytes, active_path) = match segments.back() {
            Some(active) => {
                // Read as well as write: a shared mapping of the file needs both.
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&active.path)
                    .map_err(StorageError::io("failed to open WAL segment", &active.path))?;
                let len = file
                    .metadata()
                    .map_err(StorageError::io("failed to stat WAL segment", &active.path))?
                    .len();
                // What we replayed may have been only in the page cache of a crashed process.
                file.sync_all().map_err(StorageError::io(
                    "failed to fsync WAL segment",
                    &active.path,
                ))?;
                (file, len, active.path.clone())
            }
            None => {
                let (file, path) = create_segment(dir, next_seqno)?;
                segments.push_back(Segment {
                    first_seqno: next_seqno,
                    path: path.clone(),
                });
                (file, SEGMENT_HEADER_LEN as u64, path)
            }
        };
        let sync_file = file
            .try_clone()
            .map_err(StorageError::io("failed to clone WAL handle", &active_path))?;
        let map_appends = window::file_system_allows(&file);
        let last = next_seqno - 1;
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            writer: Mutex::new(Writer {
                file,
                len_bytes,
                file_bytes: len_bytes,
                next_seqno,
                segments,
                buf: Vec::new(),
                window: None,
            }),
            syncer: Mutex::new(Syncer {
                file: sync_file,
                path: active_path,
                synced_seqno: last,
            }),
            written_seqno: AtomicU64::new(last),
            synced_seqno: AtomicU64::new(last),
            sync_leader: Mutex::new(false),
            sync_done: Condvar::new(),
            poisoned: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            map_appends,
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
        };
        Ok((wal, recovered))
    }

    /// Logs `batch` as one record, giving its operations the next sequence numbers in order,
    /// and returns the last of them. The record is in the page cache when this returns (copied
    /// into the mapped append window, or written with `pwrite(2)`), and under
    /// [`SyncPolicy::Always`] also fsynced (group commit).
    ///
    /// An empty batch logs nothing and returns the last sequence number assigned so far.
    /// Fails with [`StorageError::KeyTooLarge`]/[`StorageError::ValueTooLarge`] (a batch over
    /// [`MAX_PAYLOAD_BYTES`] counts as too large a value), or [`StorageError::Poisoned`] after a
    /// failed write or fsync.
    pub fn append(&self, batch: &WriteBatch) -> Result<u64> {
        check_batch(batch)?;
        let last = {
            let mut w = lock(&self.writer);
            self.check_writable()?;
            if batch.is_empty() {
                return Ok(w.next_seqno - 1);
            }
            if w.len_bytes >= self.options.max_segment_bytes
                && w.len_bytes > SEGMENT_HEADER_LEN as u64
            {
                self.rotate_locked(&mut w)?;
            }
            let first = w.next_seqno;
            let last = first
                .checked_add(batch.len() as u64 - 1)
                .filter(|last| *last <= MAX_SEQNO)
                .ok_or_else(|| {
                    StorageError::io("cannot append to WAL", &self.dir)(std::io::Error::other(
                        "sequence numbers exhausted",
                    ))
                })?;
            let Writer {
                file,
                buf,
                len_bytes,
                file_bytes,
                window,
                ..
            } = &mut *w;
            buf.clear();
            batch.encode_record(first, buf);
            if let Err(e) = self.write_record(file, buf, *len_bytes, file_bytes, window) {
                let path = w.segments.back().map_or(&self.dir, |s| &s.path);
                let error = StorageError::io("failed to append to WAL segment", path)(e);
                self.poison(&error);
                return Err(error);
            }
            w.len_bytes += w.buf.len() as u64;
            w.next_seqno = last + 1;
            self.written_seqno.store(last, Ordering::SeqCst);
            // Don't keep a huge buffer around after one large batch.
            if w.buf.capacity() > 1 << 20 {
                w.buf = Vec::new();
            }
            last
        };
        match self.options.sync {
            SyncPolicy::Always => self.sync_to(last)?,
            SyncPolicy::Interval(_) | SyncPolicy::Never => {}
        }
        Ok(last)
    }

    /// Writes `record` at offset `at` of the active segment, first extending the file by at
    /// least [`EXTEND_BYTES`] if the record would not fit in its size `*file_bytes`: with
    /// zeros written, then mapped ([`window`]), where the file system overwrites in place, else
    /// sparsely. The record is copied into the window if there is one, else `pwrite`n.
    fn write_record(
        &self,
        file: &File,
        record: &[u8],
        at: u64,
        file_bytes: &mut u64,
        window: &mut Option<AppendWindow>,
    ) -> std::io::Result<()> {
        let end = at + record.len() as u64;
        if end > *file_bytes {
            let extended = end.max(*file_bytes + EXTEND_BYTES);
            // The window ends where the file did.
            *window = None;
            // From the record on: the whole window is then allocated, whatever lies before. A
            // window is for a stream of small records: one larger than an extension is not
            // written twice (zeros, then itself), it goes into a sparse extension by `pwrite`.
            if self.map_appends && record.len() as u64 <= EXTEND_BYTES {
                window::allocate(file, at, extended)?;
                *window = AppendWindow::map(file, at, extended)
                    .inspect_err(|error| {
                        tracing::debug!(%error, "cannot map the WAL append window; using pwrite");
                    })
                    .ok();
            } else {
                file.set_len(extended)?;
            }
            *file_bytes = extended;
        }
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::SeqCst) {
            // A crash or full disk in the middle of the record.
            let half = record.get(..record.len() / 2).unwrap_or_default();
            file.write_all_at(half, at)?;
            return Err(std::io::Error::other("injected write failure"));
        }
        if window.as_mut().is_some_and(|w| w.write(at, record)) {
            return Ok(());
        }
        file.write_all_at(record, at)
    }

    /// Cuts the zero bytes after the last record off the active segment's file, so that a
    /// closed segment ends at its last record; the caller's fsync of the segment makes that
    /// durable. A failed truncation changes nothing: the zeros stay, harmless in the last
    /// segment.
    fn trim_locked(&self, w: &mut Writer) -> Result<()> {
        // Unmapped before the file is cut: nothing may be mapped past its end.
        w.window = None;
        if w.file_bytes > w.len_bytes {
            let path = w.segments.back().map_or(&self.dir, |s| &s.path);
            w.file
                .set_len(w.len_bytes)
                .map_err(StorageError::io("failed to trim WAL segment", path))?;
            w.file_bytes = w.len_bytes;
        }
        Ok(())
    }

    /// Trims the active segment and fsyncs it with every record: the log's last act (close,
    /// drop). Nothing is written after it.
    fn finish(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        let trimmed = w.file_bytes > w.len_bytes;
        self.trim_locked(&mut w)?;
        let mut syncer = lock(&self.syncer);
        if trimmed || syncer.synced_seqno < self.written_seqno.load(Ordering::SeqCst) {
            self.fsync_active(&mut syncer)?;
        }
        Ok(())
    }

    /// fsyncs every record written so far; the call the engine's background thread makes
    /// under [`SyncPolicy::Interval`]. Does nothing if everything is already synced.
    pub fn sync(&self) -> Result<()> {
        self.sync_to(self.written_seqno.load(Ordering::SeqCst))
    }

    /// Group commit: returns once operation `seqno` is on stable storage. A caller that finds
    /// it already synced by another returns without an fsync; otherwise it fsyncs everything
    /// written so far, covering every writer queued behind it. The engine calls it after
    /// releasing its writer lock, so that writers queued behind one another share an fsync.
    pub(crate) fn sync_to(&self, seqno: u64) -> Result<()> {
        self.sync_to_gathering(seqno, || {})
    }

    /// As [`Wal::sync_to`], as a leader/follower protocol: the first caller that finds
    /// `seqno` unsynced becomes the *leader*, runs `gather` (the engine's chance to let
    /// writers that are about to append join this fsync), then fsyncs everything written so
    /// far; callers that come while a leader works sleep until it is done and return at once
    /// if its fsync covered them. Nobody waits on a lock held across an fsync just to learn
    /// that their record is already synced.
    pub(crate) fn sync_to_gathering(&self, seqno: u64, gather: impl FnOnce()) -> Result<()> {
        let mut gather = Some(gather);
        loop {
            if self.synced_seqno.load(Ordering::SeqCst) >= seqno {
                return Ok(());
            }
            let mut leader = lock(&self.sync_leader);
            if self.synced_seqno.load(Ordering::SeqCst) >= seqno {
                return Ok(());
            }
            if *leader {
                drop(
                    self.sync_done
                        .wait(leader)
                        .unwrap_or_else(PoisonError::into_inner),
                );
                continue;
            }
            *leader = true;
            drop(leader);
            if let Some(gather) = gather.take() {
                gather();
            }
            let result = self.sync_written();
            *lock(&self.sync_leader) = false;
            self.sync_done.notify_all();
            return result;
        }
    }

    /// fsyncs everything written so far (the leader's part of [`Wal::sync_to_gathering`]).
    fn sync_written(&self) -> Result<()> {
        let mut syncer = lock(&self.syncer);
        // After a failed fsync the kernel may have dropped dirty pages; never retry.
        self.check_writable()?;
        if syncer.synced_seqno >= self.written_seqno.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.fsync_active(&mut syncer)
    }

    /// fsyncs the active segment and marks everything written so far synced: it was written
    /// to this segment or to an earlier one, which was fsynced when it was closed (rotation
    /// swaps the file under the `syncer` lock).
    fn fsync_active(&self, syncer: &mut Syncer) -> Result<()> {
        let target = self.written_seqno.load(Ordering::SeqCst);
        self.fsync(&syncer.file, &syncer.path)?;
        syncer.synced_seqno = target;
        self.synced_seqno.store(target, Ordering::SeqCst);
        Ok(())
    }

    fn fsync(&self, file: &File, path: &Path) -> Result<()> {
        let result = file.sync_data();
        #[cfg(test)]
        let result = if self.fail_next_sync.swap(false, Ordering::SeqCst) {
            Err(std::io::Error::other("injected fsync failure"))
        } else {
            result
        };
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        result.map_err(|e| {
            let error = StorageError::io("failed to fsync WAL segment", path)(e);
            self.poison(&error);
            error
        })
    }

    /// Closes the active segment and starts a new one, so that the batches written so far can
    /// be deleted on their own once flushed (the engine calls this when it freezes a
    /// memtable). Does nothing if the active segment holds no record yet.
    ///
    /// The closed segment is fsynced first, whatever the sync policy.
    pub fn rotate(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        self.check_writable()?;
        if w.len_bytes <= SEGMENT_HEADER_LEN as u64 {
            return Ok(());
        }
        self.rotate_locked(&mut w)
    }

    fn rotate_locked(&self, w: &mut Writer) -> Result<()> {
        // Recovery allows a zero tail in the last segment only.
        self.trim_locked(w)?;
        let mut syncer = lock(&self.syncer);
        // The old segment must be complete on disk, trimmed, before a newer one exists:
        // recovery treats damage in any segment but the last as corruption.
        self.fsync_active(&mut syncer)?;
        // A failure from here on leaves the old segment active and intact: no poison.
        let (file, path) = create_segment(&self.dir, w.next_seqno)?;
        let sync_file = match file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(StorageError::io("failed to clone WAL handle", &path)(e));
            }
        };
        syncer.file = sync_file;
        syncer.path = path.clone();
        w.file = file;
        w.len_bytes = SEGMENT_HEADER_LEN as u64;
        w.file_bytes = SEGMENT_HEADER_LEN as u64;
        w.segments.push_back(Segment {
            first_seqno: w.next_seqno,
            path,
        });
        Ok(())
    }

    /// Deletes the closed segments whose operations all have sequence numbers `<= seqno`
    /// (because they have been flushed to SSTables) and returns how many were deleted. The
    /// active segment is never deleted.
    pub fn delete_obsolete(&self, seqno: u64) -> Result<usize> {
        let mut w = lock(&self.writer);
        let mut removed = 0;
        // Segment 0 holds sequence numbers below the first one of segment 1.
        while let Some(next_first) = w.segments.get(1).map(|next| next.first_seqno) {
            if next_first - 1 > seqno {
                break;
            }
            let Some(oldest) = w.segments.front() else {
                break;
            };
            match std::fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StorageError::io(
                        "failed to delete obsolete WAL segment",
                        &oldest.path,
                    )(e))
                }
            }
            tracing::debug!(path = %oldest.path.display(), "deleted obsolete WAL segment");
            w.segments.pop_front();
            removed += 1;
        }
        if removed > 0 {
            fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Makes appends `pwrite` their records, as on a file system that copies on write.
    #[cfg(test)]
    fn without_append_windows(mut self) -> Self {
        self.map_appends = false;
        self
    }

    /// Whether the next append goes through a mapped window.
    #[cfg(test)]
    fn has_append_window(&self) -> bool {
        lock(&self.writer).window.is_some()
    }

    /// Trims the active segment's zero tail, fsyncs what is left to sync and closes the log.
    pub fn close(self) -> Result<()> {
        if self.is_poisoned() {
            return self.sync();
        }
        self.finish()
    }

    /// The last sequence number assigned (0 if none ever was).
    pub fn last_seqno(&self) -> u64 {
        self.written_seqno.load(Ordering::SeqCst)
    }

    /// Whether the next [`Wal::append`] starts a new segment first (creating a file and
    /// fsyncing the old one) instead of only writing a record.
    pub fn append_would_rotate(&self) -> bool {
        let w = lock(&self.writer);
        w.len_bytes >= self.options.max_segment_bytes && w.len_bytes > SEGMENT_HEADER_LEN as u64
    }

    /// Whether a failed write or fsync has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// The paths of every segment, oldest first; the last is the active one.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        lock(&self.writer)
            .segments
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    /// Bytes of the log: the sizes of the closed segments and the header and records of the
    /// active one (not the zeros it was extended with).
    pub fn size_bytes(&self) -> u64 {
        let (closed, active) = {
            let w = lock(&self.writer);
            let closed: Vec<PathBuf> = w
                .segments
                .iter()
                .take(w.segments.len().saturating_sub(1))
                .map(|s| s.path.clone())
                .collect();
            (closed, w.len_bytes)
        };
        closed
            .iter()
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|m| m.len())
            .sum::<u64>()
            + active
    }

    /// Number of fsyncs of segment files since open (a group-commit statistic).
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    fn poison(&self, error: &StorageError) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            tracing::error!(%error, dir = %self.dir.display(), "WAL poisoned; refusing writes");
        }
    }

    /// Test hook: the next append writes half of its record, then fails like `pwrite(2)`.
    #[cfg(test)]
    fn fail_next_write(&self) {
        self.fail_next_write.store(true, Ordering::SeqCst);
    }

    /// Test hook: the next fsync fails.
    #[cfg(test)]
    fn fail_next_sync(&self) {
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if !self.is_poisoned() {
            if let Err(error) = self.finish() {
                tracing::warn!(%error, "trimming or fsyncing the WAL on drop failed");
            }
        }
    }
}

/// Creates the segment starting at `first_seqno`: writes and fsyncs its header, fsyncs the
/// directory, and returns it opened for writing.
fn create_segment(dir: &Path, first_seqno: u64) -> Result<(File, PathBuf)> {
    let path = dir.join(segment_file_name(first_seqno));
    let io = |context| StorageError::io(context, &path);
    // Read as well as write: a shared mapping of the file needs both.
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("failed to create WAL segment"));
    let mut file = created?;
    let written = file
        .write_all(&segment_header(first_seqno))
        .and_then(|()| file.sync_all())
        .map_err(io("failed to write WAL segment header"))
        .and_then(|()| fsync_dir(dir));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&path);
        return Err(error);
    }
    Ok((file, path))
}

/// Truncates a segment with a torn tail to `good_len` bytes (rewriting its header if that was
/// torn) and fsyncs it.
fn repair_segment(path: &Path, first_seqno: u64, good_len: u64) -> Result<()> {
    let io = |context| StorageError::io(context, path);
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("failed to open WAL segment for repair"))?;
    if good_len < SEGMENT_HEADER_LEN as u64 {
        file.set_len(0)
            .map_err(io("failed to truncate WAL segment"))?;
        file.write_all(&segment_header(first_seqno))
            .map_err(io("failed to rewrite WAL segment header"))?;
    } else {
        file.set_len(good_len)
            .map_err(io("failed to truncate WAL segment"))?;
    }
    file.sync_all().map_err(io("failed to fsync WAL segment"))
}

/// What replaying one segment found.
#[derive(Debug)]
struct Replay {
    batches: Vec<RecoveredBatch>,
    /// The sequence number after the last replayed operation (`first_seqno` if none).
    next_seqno: u64,
    /// Bytes of header and good records; the segment is truncated here if `torn` is set.
    good_len: u64,
    /// Why the tail is torn, if it is.
    torn: Option<String>,
}

/// Replays the bytes of one segment. Pure: never panics, reads nothing but `data`.
///
/// `first_seqno` is the number in the file name; `is_last` allows a torn tail.
fn replay_segment(data: &Bytes, path: &Path, first_seqno: u64, is_last: bool) -> Result<Replay> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let expected_header = segment_header(first_seqno);
    let torn_header = |reason: &str| -> Result<Replay> {
        if !is_last {
            return Err(corrupt(
                0,
                format!("{reason}, but only the last segment may be torn"),
            ));
        }
        Ok(Replay {
            batches: Vec::new(),
            next_seqno: first_seqno,
            good_len: 0,
            torn: Some(reason.to_owned()),
        })
    };
    let Some(header) = data.get(..SEGMENT_HEADER_LEN) else {
        // A crash while the segment was being created.
        if expected_header.starts_with(data) || data.iter().all(|&b| b == 0) {
            return torn_header(&format!(
                "segment header is cut short ({} of {SEGMENT_HEADER_LEN} bytes)",
                data.len()
            ));
        }
        return Err(bad_magic(path, data));
    };
    if header.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        if header.iter().all(|&b| b == 0) && data.iter().all(|&b| b == 0) {
            return torn_header("segment is all zero bytes");
        }
        return Err(bad_magic(path, header));
    }
    let version = header.get(MAGIC.len()).copied().unwrap_or_default();
    if version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if header != expected_header {
        return Err(corrupt(
            MAGIC.len() + 1,
            format!(
                "header names first seqno {}, the file name {first_seqno}",
                u64::from_le_bytes(
                    header
                        .get(8..)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or_default()
                )
            ),
        ));
    }

    let mut batches = Vec::new();
    let mut next_seqno = first_seqno;
    let walked = records::walk(
        data,
        SEGMENT_HEADER_LEN,
        MIN_PAYLOAD_LEN,
        "segment",
        records::Tolerate::LostPages,
        |payload| {
            let batch = decode_payload(&data.slice(payload))?;
            if batch.first_seqno != next_seqno {
                return Err(format!(
                    "batch starts at seqno {}, expected {next_seqno}",
                    batch.first_seqno
                ));
            }
            next_seqno = batch.last_seqno() + 1;
            batches.push(batch);
            Ok(())
        },
    )
    .map_err(|(offset, reason)| corrupt(offset, reason))?;
    let (offset, torn) = (walked.good_len, walked.torn);
    if let Some(reason) = &torn {
        if !is_last {
            return Err(corrupt(
                offset,
                format!("{reason}, but only the last segment may end in a torn record"),
            ));
        }
    }
    Ok(Replay {
        batches,
        next_seqno,
        good_len: offset as u64,
        torn,
    })
}

fn bad_magic(path: &Path, found: &[u8]) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: format!(
            "bad segment header {:?}: expected magic \"LIMEWAL\" and version {FORMAT_VERSION}; \
             this is not a LimeDB write-ahead log segment",
            found.escape_ascii().to_string()
        ),
    }
}

// Keep the kind bytes of the format tied to `ValueKind`.
const _: () = assert!(ValueKind::Put as u8 == 1 && ValueKind::Delete as u8 == 0);
