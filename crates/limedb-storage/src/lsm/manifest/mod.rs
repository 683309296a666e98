//! The manifest: the durable history of [`Version`]s. Every flush and compaction is installed
//! by logging a [`VersionEdit`] here, fsynced, before the new version is handed out, so a
//! crash at any moment leaves either the old version or the new one on disk, never a mix.
//!
//! # Files
//!
//! ```text
//!   <dir>/CURRENT            "MANIFEST-000002\n": names the live manifest
//!   <dir>/MANIFEST-000002    the live manifest: a snapshot edit, then one edit per change
//!   <dir>/MANIFEST-000001    an older manifest, deleted once CURRENT no longer names it
//!   <dir>/CURRENT.tmp        only while CURRENT is being replaced
//! ```
//!
//! A manifest file is append-only. When it grows past
//! max([`ManifestOptions::max_manifest_bytes`], 2 × the size of a snapshot),
//! [`Manifest::log_and_apply`] calls [`Manifest::rewrite`]: it writes `MANIFEST-<n+1>` holding
//! one snapshot edit of the current version, fsyncs it, then points `CURRENT` at it
//! atomically (write `CURRENT.tmp`, fsync, rename over `CURRENT`, fsync the directory) and
//! deletes the old manifest. A crash before the rename leaves the old manifest live (the new
//! file is deleted on the next open); after it, the new one.
//!
//! Manifest numbers count on their own, independently of table file numbers.
//!
//! # Format
//!
//! All integers are little-endian. The record framing is the WAL's.
//!
//! ```text
//!  file header (16 bytes)
//!  +---+---+---+---+---+---+---+---------+---------------------------+
//!  | L | I | M | E | M | A | N | version |  manifest_number u64      |
//!  +---+---+---+---+---+---+---+---------+---------------------------+
//!    magic b"LIMEMAN"            u8 = 1    = the number in the file name
//!
//!  record (one version edit), back to back after the header
//!  +-----------------+---------------------+--------------------------------+
//!  | payload_len u32 | crc32c(payload) u32 | payload (payload_len bytes)    |
//!  +-----------------+---------------------+--------------------------------+
//!
//!  payload: one or more fields, each a tag byte and its body
//!   1 last seqno        | u64
//!   2 next file number  | u64
//!   3 log number        | u64
//!   4 deleted table     | level u8 | file_number u64
//!   5 new table         | level u8 | file_number u64 | file_size_bytes u64 |
//!                       | entry_count u64 | min_seqno u64 | max_seqno u64 |
//!                       | smallest_len u32 | smallest internal key |
//!                       | largest_len u32 | largest internal key
//!   6 compact cursor    | level u8 | key_len u32 | user key
//! ```
//!
//! Tags 1–3 appear at most once per edit; levels are `< 7`; key lengths are at most
//! [`crate::MAX_KEY_BYTES`] + 8 and checked against the bytes present. A payload is at least 9
//! bytes (one field). The first record of every manifest is a snapshot: it sets all three
//! counters and adds every table, so replaying a manifest needs no other file.
//!
//! # Recovery
//!
//! [`Manifest::open`] reads `CURRENT`, replays the manifest it names from an empty
//! [`Version`], and returns the last version. The rules are the WAL's (*tolerate torn tail*):
//!
//! - A **torn tail**, a final record cut short by a crash (header or payload past end of
//!   file), a final record that fails its checksum with nothing but zero bytes after it, or a
//!   zero-filled tail, is logged with a warning and truncated away: the manifest then ends at
//!   the last edit that was completely written, the version before the interrupted change.
//! - Anything else is **corruption**, [`StorageError::Corrupt`] naming the manifest and the
//!   byte offset of the record: a checksum mismatch or undecodable payload with data after it,
//!   a final record whose checksum matches a prefix of its payload (a damaged length field),
//!   an edit that does not apply to the version before it, a bad header, or a manifest
//!   without a complete first record (it was fsynced before `CURRENT` named it).
//! - A missing `CURRENT` is [`StorageError::Io`] of kind `NotFound` ("missing CURRENT
//!   file"); a `CURRENT` that is malformed or names a missing manifest is
//!   [`StorageError::Corrupt`] naming `CURRENT`.
//!
//! # Durability
//!
//! [`Manifest::log_and_apply`] writes the record and fsyncs it before it returns the new
//! version. If the write or fsync fails, the manifest is **poisoned**: the edit may or may not
//! be on disk, so the caller must not delete any file the edit removes, and every later edit
//! fails with [`StorageError::Poisoned`] until the manifest is reopened.
//!
//! # Example
//!
//! ```
//! use limedb_storage::lsm::manifest::{Manifest, ManifestOptions, VersionEdit};
//!
//! let dir = tempfile::tempdir()?;
//! let mut manifest = Manifest::create(dir.path(), ManifestOptions::default())?;
//! let mut edit = VersionEdit::default();
//! edit.set_last_seqno(42).set_log_number(43);
//! let version = manifest.log_and_apply(edit)?;
//! assert_eq!(version.last_seqno(), 42);
//! drop(manifest);
//!
//! let (_manifest, version) = Manifest::open(dir.path(), ManifestOptions::default())?;
//! assert_eq!((version.last_seqno(), version.log_number()), (42, 43));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod edit;
#[cfg(test)]
mod tests;

use crate::fsutil::fsync_dir;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use edit::{DeletedTable, NewTable, VersionEdit};

use crate::error::StorageError;
use crate::lsm::records;
use crate::lsm::version::Version;
use crate::Result;
use edit::MIN_PAYLOAD_LEN;

/// Magic bytes opening every manifest file.
pub const MAGIC: &[u8; 7] = b"LIMEMAN";

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of the file header: magic, version, manifest number.
pub const HEADER_LEN: usize = 16;

/// Bytes of a record header: `payload_len u32 | crc32c u32`.
pub const RECORD_HEADER_LEN: usize = 8;

/// The file naming the live manifest.
pub const CURRENT_FILE_NAME: &str = "CURRENT";

const CURRENT_TMP_FILE_NAME: &str = "CURRENT.tmp";

/// When a [`Manifest`] rewrites itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestOptions {
    /// A manifest larger than this (and than twice a snapshot of the current version) is
    /// rewritten as one snapshot. Default 16 MiB.
    pub max_manifest_bytes: u64,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            max_manifest_bytes: 16 << 20,
        }
    }
}

/// The name of manifest number `number`: `MANIFEST-000007`.
pub fn manifest_file_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// The number in a manifest file name, if it is one.
pub fn parse_manifest_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("MANIFEST-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The live manifest of one LSM directory (see the [module docs](self)). Owned by one thread
/// at a time (the engine keeps it under a lock); every change goes through
/// [`Manifest::log_and_apply`].
#[derive(Debug)]
pub struct Manifest {
    dir: PathBuf,
    options: ManifestOptions,
    /// Number and path of the live manifest file.
    number: u64,
    path: PathBuf,
    /// The live manifest, opened for appending.
    file: File,
    len_bytes: u64,
    /// The manifest is rewritten once it is larger than this.
    rewrite_at_bytes: u64,
    current: Arc<Version>,
    /// The next number [`Manifest::allocate_file_number`] hands out.
    next_file_number: u64,
    poisoned: bool,
    /// Test hook: the next fsync of the manifest fails.
    #[cfg(test)]
    fail_next_sync: bool,
}

impl Manifest {
    /// Creates the manifest of a new, empty tree in `dir` (created if absent): writes
    /// `MANIFEST-000001` holding a snapshot of [`Version::new`], fsyncs it, then points
    /// `CURRENT` at it. Fails with [`StorageError::InvalidInput`] if `dir` already has a
    /// `CURRENT` file.
    pub fn create(dir: &Path, options: ManifestOptions) -> Result<Manifest> {
        std::fs::create_dir_all(dir)
            .map_err(StorageError::io("failed to create LSM directory", dir))?;
        let current_path = dir.join(CURRENT_FILE_NAME);
        if current_path.exists() {
            return Err(StorageError::InvalidInput {
                path: current_path,
                reason: "a database already exists here (CURRENT is present); open it instead"
                    .into(),
            });
        }
        let version = Version::new();
        let number = 1;
        let written = write_manifest_file(dir, number, &version)?;
        if let Err(e) = install_current(dir, number) {
            let _ = std::fs::remove_file(&written.path);
            return Err(e.into_error());
        }
        Ok(Manifest::assemble(dir, options, number, written, version))
    }

    /// Opens the manifest `CURRENT` names in `dir`, replays it and returns it with the last
    /// version. A torn tail is truncated with a warning; other damage is an error (see the
    /// [module docs](self#recovery)). Leftovers of an interrupted rewrite (`CURRENT.tmp`,
    /// manifests `CURRENT` does not name) are deleted.
    pub fn open(dir: &Path, options: ManifestOptions) -> Result<(Manifest, Arc<Version>)> {
        let current_path = dir.join(CURRENT_FILE_NAME);
        let pointer = match std::fs::read(&current_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::io(
                    "missing CURRENT file (no LSM database in this directory, or CURRENT was \
                     lost):",
                    current_path,
                )(e))
            }
            Err(e) => return Err(StorageError::io("failed to read", current_path)(e)),
        };
        let number = std::str::from_utf8(&pointer)
            .ok()
            .and_then(|s| s.strip_suffix('\n'))
            .and_then(parse_manifest_file_name)
            .ok_or_else(|| StorageError::Corrupt {
                path: current_path.clone(),
                offset: 0,
                reason: format!(
                    "expected \"MANIFEST-<number>\\n\", found {:?}",
                    pointer.escape_ascii().to_string()
                ),
            })?;
        let path = dir.join(manifest_file_name(number));
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::Corrupt {
                    path: current_path,
                    offset: 0,
                    reason: format!("names {}, which does not exist", manifest_file_name(number)),
                })
            }
            Err(e) => return Err(StorageError::io("failed to read manifest", &path)(e)),
        };
        let replay = replay(&data, &path, number)?;
        if let Some(reason) = &replay.torn {
            tracing::warn!(
                path = %path.display(),
                offset = replay.good_len,
                dropped_bytes = data.len() as u64 - replay.good_len,
                %reason,
                "torn tail in manifest; truncating to the last complete edit"
            );
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(StorageError::io("failed to open manifest", &path))?;
        if replay.torn.is_some() {
            file.set_len(replay.good_len)
                .map_err(StorageError::io("failed to truncate manifest", &path))?;
        }
        // What we replayed may have been only in the page cache of a crashed process.
        file.sync_all()
            .map_err(StorageError::io("failed to fsync manifest", &path))?;
        remove_leftovers(dir, number);

        let version = replay.version;
        let snapshot_len = record_len(&version.snapshot_edit());
        let mut manifest = Manifest::assemble(
            dir,
            options,
            number,
            Written {
                file,
                path,
                len_bytes: replay.good_len,
                snapshot_len,
            },
            version,
        );
        manifest.rewrite_at_bytes = manifest.rewrite_at_bytes.max(replay.good_len);
        let current = manifest.current();
        Ok((manifest, current))
    }

    fn assemble(
        dir: &Path,
        options: ManifestOptions,
        number: u64,
        written: Written,
        version: Version,
    ) -> Manifest {
        Manifest {
            dir: dir.to_path_buf(),
            options,
            number,
            path: written.path,
            file: written.file,
            len_bytes: written.len_bytes,
            rewrite_at_bytes: rewrite_threshold(options, written.snapshot_len),
            next_file_number: version.next_file_number(),
            current: Arc::new(version),
            poisoned: false,
            #[cfg(test)]
            fail_next_sync: false,
        }
    }

    /// Logs `edit`, fsyncs it, and returns the new current version.
    ///
    /// If file numbers were handed out by [`Manifest::allocate_file_number`] and the edit
    /// sets no next file number, it is set to cover them. An empty edit logs nothing. An edit
    /// that does not apply ([`Version::apply`]) fails with [`StorageError::InvalidInput`] and
    /// changes nothing. A failed write or fsync fails with [`StorageError::Io`] and poisons the
    /// manifest (see the [module docs](self#durability)).
    ///
    /// When the manifest has grown past its limit it is then rewritten. The edit is durable
    /// either way: a failed rewrite is logged, not returned (if it failed after switching
    /// `CURRENT`, the manifest is poisoned and the next edit reports it).
    pub fn log_and_apply(&mut self, mut edit: VersionEdit) -> Result<Arc<Version>> {
        self.check_writable()?;
        if edit.next_file_number.is_none()
            && self.next_file_number > self.current.next_file_number()
        {
            edit.next_file_number = Some(self.next_file_number);
        }
        if edit.is_empty() {
            return Ok(self.current());
        }
        let invalid = |reason: String| StorageError::InvalidInput {
            path: self.path.clone(),
            reason,
        };
        let next = self
            .current
            .apply(&edit)
            .map_err(|e| invalid(e.to_string()))?;
        let record = encode_record(&edit)
            .ok_or_else(|| invalid("a level or key length does not fit the format".into()))?;
        if let Err(e) = self.append(&record) {
            self.poisoned = true;
            tracing::error!(path = %self.path.display(), error = %e, "manifest poisoned");
            return Err(StorageError::io("failed to append to manifest", &self.path)(e));
        }
        self.len_bytes += record.len() as u64;
        self.next_file_number = self.next_file_number.max(next.next_file_number());
        self.current = Arc::new(next);
        if self.len_bytes > self.rewrite_at_bytes {
            if let Err(error) = self.rewrite() {
                tracing::warn!(%error, path = %self.path.display(), "manifest rewrite failed");
                // Try again once it has grown by another limit's worth.
                self.rewrite_at_bytes = self
                    .len_bytes
                    .saturating_add(self.options.max_manifest_bytes);
            }
        }
        Ok(self.current())
    }

    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.file.write_all(record)?;
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        self.file.sync_data()
    }

    /// Writes `MANIFEST-<n+1>` holding one snapshot edit of the current version, switches
    /// `CURRENT` to it atomically and deletes the old manifest. On failure before `CURRENT`
    /// was replaced the old manifest stays live and the new file is removed; a failure after
    /// the rename (fsync of the directory) poisons the manifest.
    pub fn rewrite(&mut self) -> Result<()> {
        self.check_writable()?;
        let number = self.number + 1;
        let written = write_manifest_file(&self.dir, number, &self.current)?;
        if let Err(e) = install_current(&self.dir, number) {
            if let InstallError::AfterRename(_) = e {
                self.poisoned = true;
                return Err(e.into_error());
            }
            let _ = std::fs::remove_file(&written.path);
            return Err(e.into_error());
        }
        let old = std::mem::replace(&mut self.path, written.path);
        self.number = number;
        self.file = written.file;
        self.len_bytes = written.len_bytes;
        self.rewrite_at_bytes = rewrite_threshold(self.options, written.snapshot_len);
        match std::fs::remove_file(&old) {
            Ok(()) => {
                let _ = fsync_dir(&self.dir);
            }
            Err(error) => {
                tracing::warn!(%error, path = %old.display(), "failed to delete old manifest");
            }
        }
        tracing::debug!(path = %self.path.display(), "manifest rewritten");
        Ok(())
    }

    /// Hands out a new file number for a table (or any file) about to be written. The next
    /// edit logged records that numbers up to it are taken, so they are never reused, even
    /// if the file is never installed.
    pub fn allocate_file_number(&mut self) -> u64 {
        let n = self.next_file_number;
        self.next_file_number += 1;
        n
    }

    /// The current version.
    pub fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current)
    }

    /// The directory holding `CURRENT` and the manifests.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the live manifest file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of the live manifest file.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Size of the live manifest file in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Whether a failed write or fsync has poisoned the manifest.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn check_writable(&self) -> Result<()> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// Test hook: the next fsync of an appended edit fails.
    #[cfg(test)]
    fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }
}

fn rewrite_threshold(options: ManifestOptions, snapshot_len: u64) -> u64 {
    options
        .max_manifest_bytes
        .max(snapshot_len.saturating_mul(2))
}

/// A freshly written manifest file, opened for appending.
struct Written {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    snapshot_len: u64,
}

fn header(number: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..7].copy_from_slice(MAGIC);
    h[7] = FORMAT_VERSION;
    h[8..].copy_from_slice(&number.to_le_bytes());
    h
}

/// The framed record of `edit`; `None` if it does not fit the format.
fn encode_record(edit: &VersionEdit) -> Option<Vec<u8>> {
    let mut record = vec![0u8; RECORD_HEADER_LEN];
    edit.encode_into(&mut record)?;
    let payload = record.get(RECORD_HEADER_LEN..)?;
    let len = u32::try_from(payload.len()).ok()?;
    let crc = crc32c::crc32c(payload);
    record.get_mut(..4)?.copy_from_slice(&len.to_le_bytes());
    record.get_mut(4..8)?.copy_from_slice(&crc.to_le_bytes());
    Some(record)
}

fn record_len(edit: &VersionEdit) -> u64 {
    encode_record(edit).map_or(0, |r| r.len() as u64)
}

/// Writes `MANIFEST-<number>` (replacing a leftover of that name) with a header and a snapshot
/// of `version`, fsyncs it and the directory, and returns it opened for appending.
fn write_manifest_file(dir: &Path, number: u64, version: &Version) -> Result<Written> {
    let path = dir.join(manifest_file_name(number));
    let record =
        encode_record(&version.snapshot_edit()).ok_or_else(|| StorageError::InvalidInput {
            path: path.clone(),
            reason: "the version does not fit the manifest format".into(),
        })?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(StorageError::io("failed to create manifest", &path))?;
        file.write_all(&header(number))
            .and_then(|()| file.write_all(&record))
            .and_then(|()| file.sync_all())
            .map_err(StorageError::io("failed to write manifest", &path))?;
        fsync_dir(dir)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(StorageError::io("failed to open manifest", &path))?;
        Ok(file)
    })();
    match result {
        Ok(file) => Ok(Written {
            file,
            path,
            len_bytes: (HEADER_LEN + record.len()) as u64,
            snapshot_len: record.len() as u64,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// How replacing `CURRENT` failed.
enum InstallError {
    /// Before the rename: `CURRENT` still names the old manifest.
    BeforeRename(StorageError),
    /// After the rename: which manifest `CURRENT` names after a crash is unknown.
    AfterRename(StorageError),
}

impl InstallError {
    fn into_error(self) -> StorageError {
        match self {
            InstallError::BeforeRename(e) | InstallError::AfterRename(e) => e,
        }
    }
}

/// Points `CURRENT` at manifest `number`: writes `CURRENT.tmp`, fsyncs it, renames it over
/// `CURRENT` and fsyncs the directory.
fn install_current(dir: &Path, number: u64) -> std::result::Result<(), InstallError> {
    let tmp = dir.join(CURRENT_TMP_FILE_NAME);
    let current = dir.join(CURRENT_FILE_NAME);
    let contents = format!("{}\n", manifest_file_name(number));
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &current));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(InstallError::BeforeRename(StorageError::io(
            "failed to replace CURRENT via",
            tmp,
        )(e)));
    }
    fsync_dir(dir).map_err(InstallError::AfterRename)
}

/// Deletes `CURRENT.tmp` and every manifest but `live` (best effort: failures are logged).
fn remove_leftovers(dir: &Path, live: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let stale = name == CURRENT_TMP_FILE_NAME
            || parse_manifest_file_name(name).is_some_and(|n| n != live);
        if stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = name, "deleted leftover manifest file");
                    removed = true;
                }
                Err(error) => tracing::warn!(%error, file = name, "failed to delete leftover"),
            }
        }
    }
    if removed {
        let _ = fsync_dir(dir);
    }
}

/// What replaying a manifest found.
#[derive(Debug)]
struct Replay {
    /// The version after the last good edit.
    version: Version,
    /// Bytes of header and good records; the file is truncated here if `torn` is set.
    good_len: u64,
    /// Why the tail is torn, if it is.
    torn: Option<String>,
}

/// Replays the bytes of manifest `number`. Pure: never panics, reads nothing but `data`.
fn replay(data: &[u8], path: &Path, number: u64) -> Result<Replay> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let Some(head) = data.get(..HEADER_LEN) else {
        return Err(corrupt(
            0,
            format!("header cut short ({} of {HEADER_LEN} bytes)", data.len()),
        ));
    };
    if head.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(corrupt(
            0,
            format!(
                "bad header {:?}: expected magic \"LIMEMAN\"; this is not a LimeDB manifest",
                head.escape_ascii().to_string()
            ),
        ));
    }
    let version_byte = head.get(MAGIC.len()).copied().unwrap_or_default();
    if version_byte != FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version_byte,
            supported: FORMAT_VERSION,
        });
    }
    if head != header(number) {
        return Err(corrupt(
            MAGIC.len() + 1,
            "header names a different manifest number than the file name".into(),
        ));
    }

    let mut version = Version::new();
    let mut records = 0usize;
    let walked = records::walk(
        data,
        HEADER_LEN,
        MIN_PAYLOAD_LEN,
        "manifest",
        records::Tolerate::TornTail,
        |payload| {
            let edit = VersionEdit::decode(data.get(payload).unwrap_or_default())
                .map_err(|reason| format!("undecodable edit: {reason}"))?;
            version = version
                .apply(&edit)
                .map_err(|e| format!("edit does not apply: {}", e.reason))?;
            records += 1;
            Ok(())
        },
    )
    .map_err(|(offset, reason)| corrupt(offset, reason))?;
    let torn = walked.torn;
    if records == 0 {
        return Err(corrupt(
            HEADER_LEN,
            format!(
                "no complete snapshot record{}",
                torn.map(|t| format!(": {t}")).unwrap_or_default()
            ),
        ));
    }
    Ok(Replay {
        version,
        good_len: walked.good_len as u64,
        torn,
    })
}
