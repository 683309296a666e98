//! The append-only log that makes [`super::MemoryEngine`] durable: its byte format, the pure
//! record codec, replay with torn-tail recovery, appending, and rewriting.
//!
//! # Format (version 1)
//!
//! All integers are little-endian. The file `memory.log` starts with an 8-byte header, followed
//! by records back to back:
//!
//! ```text
//!  file header (8 bytes)
//!  +---+---+---+---+---+---+---+---------+
//!  | L | I | M | E | L | O | G | version |   magic b"LIMELOG", version u8 = 1
//!  +---+---+---+---+---+---+---+---------+
//!
//!  record
//!  +-----------------+-----------------------+--------------------------+
//!  | payload_len u32 | crc32c(payload) u32   | payload (payload_len B)  |
//!  +-----------------+-----------------------+--------------------------+
//!
//!  payload, put (op = 1)
//!  +-------+-------------+-----+--------------------+---------------+-------+
//!  | op u8 | key_len u32 | key | expires_at_ms u64  | value_len u32 | value |
//!  +-------+-------------+-----+--------------------+---------------+-------+
//!                                (0 = never expires)
//!
//!  payload, delete (op = 2)
//!  +-------+-------------+-----+
//!  | op u8 | key_len u32 | key |
//!  +-------+-------------+-----+
//! ```
//!
//! Keys are at most [`crate::MAX_KEY_BYTES`] and values at most [`crate::MAX_VALUE_BYTES`];
//! every length is checked against these limits and against the bytes actually present before
//! anything is allocated.
//!
//! # Recovery
//!
//! Replay reads records in order and applies them. The mode is *tolerate torn tail*:
//!
//! - A **torn tail** is a last record that was cut short by a crash: its header or payload runs
//!   past the end of the file, or it is the final record, ends exactly at end of file and fails
//!   its CRC. A tail consisting only of zero bytes (a filesystem extending the file before the
//!   data reached disk) counts as torn too. Replay logs a warning, truncates the file to the end
//!   of the last good record and carries on.
//! - One exception keeps a damaged length field from passing as a torn write: if a record
//!   runs past end of file but a prefix of the bytes present matches its stored CRC, the
//!   length was damaged and the file is corrupt.
//! - Anything else that fails its CRC or does not decode, with more data after it, is
//!   **corruption**: opening fails with [`StorageError::Corrupt`] naming the byte offset of the
//!   record. Acknowledged data is never dropped silently.
//!
//! # Rewrite
//!
//! [`rewrite`] writes the live entries to `memory.log.tmp`, fsyncs it, renames it over
//! `memory.log` and fsyncs the directory. Until the rename the old log is intact; after it the
//! new one is complete and durable, so a crash at any point leaves a log holding every
//! acknowledged write. A leftover `.tmp` file is deleted on open.

use crate::fsutil::fsync_dir;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::engine::Value;
use crate::error::StorageError;
use crate::{Result, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Name of the log file inside the engine directory.
pub(crate) const LOG_FILE_NAME: &str = "memory.log";

/// Magic bytes opening every log file.
pub(crate) const MAGIC: &[u8; 7] = b"LIMELOG";

/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// Length of the file header: magic plus version byte.
pub(crate) const FILE_HEADER_LEN: u64 = 8;

/// Length of a record header: payload length plus CRC.
pub(crate) const RECORD_HEADER_LEN: u64 = 8;

/// Bytes a put record costs beyond its key and value: record header, op, key length, expiry,
/// value length.
pub(crate) const PUT_OVERHEAD_BYTES: u64 = RECORD_HEADER_LEN + 1 + 4 + 8 + 4;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// Smallest valid payload: a delete of the empty key.
const MIN_PAYLOAD_BYTES: u32 = 1 + 4;

/// Largest valid payload: a put of a maximal key and value.
const MAX_PAYLOAD_BYTES: u64 = 1 + 4 + MAX_KEY_BYTES as u64 + 8 + 4 + MAX_VALUE_BYTES as u64;

/// The full file header.
fn file_header() -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..7].copy_from_slice(MAGIC);
    h[7] = FORMAT_VERSION;
    h
}

/// Path of the temporary file a rewrite builds before renaming it over `path`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// One logical log record, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Absolute expiry in ms since the epoch; never `Some(0)` (0 encodes "none").
        expires_at_ms: Option<u64>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

impl<'a> Record<'a> {
    /// Appends the framed record (header and payload) to `out`.
    ///
    /// The caller has checked key and value against the format limits.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; RECORD_HEADER_LEN as usize]);
        match *self {
            Record::Put {
                key,
                value,
                expires_at_ms,
            } => {
                debug_assert_ne!(expires_at_ms, Some(0), "Some(0) is not encodable");
                out.push(OP_PUT);
                put_len(out, key.len());
                out.extend_from_slice(key);
                out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_le_bytes());
                put_len(out, value.len());
                out.extend_from_slice(value);
            }
            Record::Delete { key } => {
                out.push(OP_DELETE);
                put_len(out, key.len());
                out.extend_from_slice(key);
            }
        }
        let payload = out
            .get(start + RECORD_HEADER_LEN as usize..)
            .unwrap_or_default();
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let crc = crc32c::crc32c(payload);
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&crc.to_le_bytes());
        if let Some(slot) = out.get_mut(start..start + RECORD_HEADER_LEN as usize) {
            slot.copy_from_slice(&header);
        }
    }

    /// Decodes a payload whose CRC has already been checked. Pure: never panics, returns the
    /// reason on malformed input.
    pub(crate) fn decode_payload(payload: &'a [u8]) -> Result<Self, String> {
        let mut r = Cursor { rest: payload };
        let op = r.u8("op")?;
        let key_len = r.u32("key length")? as usize;
        if key_len > MAX_KEY_BYTES {
            return Err(format!(
                "key length {key_len} exceeds the limit of {MAX_KEY_BYTES}"
            ));
        }
        let key = r.bytes(key_len, "key")?;
        let record = match op {
            OP_PUT => {
                let expires = r.u64("expiry")?;
                let value_len = r.u32("value length")? as usize;
                if value_len > MAX_VALUE_BYTES {
                    return Err(format!(
                        "value length {value_len} exceeds the limit of {MAX_VALUE_BYTES}"
                    ));
                }
                let value = r.bytes(value_len, "value")?;
                Record::Put {
                    key,
                    value,
                    expires_at_ms: (expires != 0).then_some(expires),
                }
            }
            OP_DELETE => Record::Delete { key },
            other => return Err(format!("unknown record op {other}")),
        };
        if !r.rest.is_empty() {
            return Err(format!("{} trailing bytes after record", r.rest.len()));
        }
        Ok(record)
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

/// A bounds-checked reader over a payload.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or_else(|| {
            format!(
                "{what} needs {n} bytes but only {} remain in the payload",
                self.rest.len()
            )
        })?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let b = self.bytes(N, what)?;
        <[u8; N]>::try_from(b).map_err(|_| format!("{what} is truncated"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

/// The open log file, positioned for appending.
#[derive(Debug)]
pub(crate) struct LogWriter {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    buf: Vec<u8>,
}

impl LogWriter {
    fn new(file: File, path: PathBuf, len_bytes: u64) -> Self {
        LogWriter {
            file,
            path,
            len_bytes,
            buf: Vec::new(),
        }
    }

    /// Size of the log file in bytes.
    pub(crate) fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Writes `records` back to back with one `write(2)` (no user-space buffering left
    /// pending). Does not fsync.
    pub(crate) fn append(&mut self, records: &[Record<'_>]) -> Result<()> {
        self.buf.clear();
        for record in records {
            record.encode(&mut self.buf);
        }
        self.file
            .write_all(&self.buf)
            .map_err(StorageError::io("failed to append to log", &self.path))?;
        self.len_bytes += self.buf.len() as u64;
        // Don't keep a huge buffer around after one large value.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// A second handle on the same file, used to fsync without holding the append lock.
    pub(crate) fn sync_handle(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(StorageError::io("failed to clone log handle", &self.path))
    }
}

/// Opens (creating if absent) the log at `path`, replays every record into `apply`, repairs a
/// torn tail and returns a writer positioned at the end. The file is fsynced before returning,
/// so everything replayed is durable.
///
/// `apply` gets each record and the buffer its slices point into (so values can share it).
pub(crate) fn open_log(
    path: &Path,
    mut apply: impl FnMut(Record<'_>, &Bytes),
) -> Result<LogWriter> {
    let io = |context| StorageError::io(context, path);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io("failed to open log"))?;
    let file_len = file.metadata().map_err(io("failed to stat log"))?.len();

    if file_len < FILE_HEADER_LEN {
        // New file, or a crash while its header was being written.
        let mut found = Vec::new();
        (&file)
            .read_to_end(&mut found)
            .map_err(io("failed to read log header"))?;
        if !file_header().starts_with(&found) {
            return Err(bad_magic(path, &found));
        }
        if !found.is_empty() {
            tracing::warn!(path = %path.display(), "log header is torn; rewriting it");
            file.set_len(0).map_err(io("failed to truncate log"))?;
        }
        file.write_all(&file_header())
            .map_err(io("failed to write log header"))?;
        file.sync_all().map_err(io("failed to fsync log"))?;
        if let Some(dir) = path.parent() {
            fsync_dir(dir)?;
        }
        return Ok(LogWriter::new(file, path.to_path_buf(), FILE_HEADER_LEN));
    }

    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    reader
        .read_exact(&mut header)
        .map_err(io("failed to read log header"))?;
    if header.get(..7) != Some(MAGIC.as_slice()) {
        return Err(bad_magic(path, &header));
    }
    if header[7] != FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: header[7],
            supported: FORMAT_VERSION,
        });
    }

    let mut offset = FILE_HEADER_LEN;
    let mut torn: Option<String> = None;
    while offset < file_len {
        let remaining = file_len - offset;
        if remaining < RECORD_HEADER_LEN {
            torn = Some(format!(
                "record header needs {RECORD_HEADER_LEN} bytes, {remaining} remain"
            ));
            break;
        }
        let mut rh = [0u8; RECORD_HEADER_LEN as usize];
        reader
            .read_exact(&mut rh)
            .map_err(io("failed to read log"))?;
        let [l0, l1, l2, l3, c0, c1, c2, c3] = rh;
        let payload_len = u32::from_le_bytes([l0, l1, l2, l3]);
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let record_len = RECORD_HEADER_LEN + u64::from(payload_len);
        if record_len > remaining {
            // Either a torn write or a damaged length field. In the second case the stored
            // checksum still matches the real (shorter) payload, so look for such a prefix.
            let available = remaining - RECORD_HEADER_LEN;
            if let Some(real_len) = checksum_matching_prefix(&mut reader, available, crc)
                .map_err(io("failed to read log"))?
            {
                return Err(StorageError::Corrupt {
                    path: path.to_path_buf(),
                    offset,
                    reason: format!(
                        "damaged length field: claims a {payload_len}-byte payload running \
                         past end of file, but the checksum matches the first {real_len} bytes"
                    ),
                });
            }
            torn = Some(format!(
                "record of {record_len} bytes runs past end of file ({remaining} remain)"
            ));
            break;
        }
        let problem = if payload_len < MIN_PAYLOAD_BYTES
            || u64::from(payload_len) > MAX_PAYLOAD_BYTES
        {
            Some(format!(
                "payload length {payload_len} outside {MIN_PAYLOAD_BYTES}..={MAX_PAYLOAD_BYTES}"
            ))
        } else {
            // Bounded by MAX_PAYLOAD_BYTES and by the bytes present in the file.
            let mut payload = vec![0u8; payload_len as usize];
            reader
                .read_exact(&mut payload)
                .map_err(io("failed to read log"))?;
            let actual = crc32c::crc32c(&payload);
            if actual != crc {
                if offset + record_len == file_len {
                    torn = Some(format!(
                        "final record fails its checksum (stored {crc:#010x}, computed {actual:#010x})"
                    ));
                    break;
                }
                Some(format!(
                    "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
                ))
            } else {
                let payload = Bytes::from(payload);
                match Record::decode_payload(&payload) {
                    Ok(record) => {
                        apply(record, &payload);
                        None
                    }
                    Err(reason) => Some(reason),
                }
            }
        };
        if let Some(reason) = problem {
            drop(reader);
            if tail_is_zero(&file, offset, file_len).map_err(io("failed to read log"))? {
                torn = Some(format!("{reason}; the rest of the file is zero bytes"));
                break;
            }
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason,
            });
        }
        offset += record_len;
    }

    if let Some(reason) = torn {
        tracing::warn!(
            path = %path.display(),
            offset,
            dropped_bytes = file_len - offset,
            %reason,
            "torn tail in log; truncating to the last good record"
        );
        file.set_len(offset).map_err(io("failed to truncate log"))?;
    }
    // Whatever we replayed may have been only in the page cache of a crashed process.
    file.sync_all().map_err(io("failed to fsync log"))?;
    Ok(LogWriter::new(file, path.to_path_buf(), offset))
}

fn bad_magic(path: &Path, found: &[u8]) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: format!(
            "bad file header {:?}: expected magic \"LIMELOG\" and version {FORMAT_VERSION}; \
             this is not a LimeDB memory log",
            found.escape_ascii().to_string()
        ),
    }
}

/// The smallest plausible payload length `len <= available` whose bytes (read from `reader`)
/// have checksum `stored`, if any. One pass, bounded by [`MAX_PAYLOAD_BYTES`].
fn checksum_matching_prefix(
    reader: &mut impl Read,
    available: u64,
    stored: u32,
) -> std::io::Result<Option<u64>> {
    let mut left = available.min(MAX_PAYLOAD_BYTES);
    let mut crc = 0u32;
    let mut len = 0u64;
    let mut chunk = vec![0u8; 64 << 10];
    while left > 0 {
        let want = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        let buf = chunk.get_mut(..want).unwrap_or_default();
        reader.read_exact(buf)?;
        for byte in buf.iter() {
            crc = crc32c::crc32c_append(crc, std::slice::from_ref(byte));
            len += 1;
            if len >= u64::from(MIN_PAYLOAD_BYTES) && crc == stored {
                return Ok(Some(len));
            }
        }
        left -= want as u64;
    }
    Ok(None)
}

/// Whether every byte of `file` in `from..to` is zero.
fn tail_is_zero(mut file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    file.seek(SeekFrom::Start(from))?;
    let mut left = to.saturating_sub(from);
    let mut chunk = vec![0u8; 64 << 10];
    while left > 0 {
        let want = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        let buf = chunk.get_mut(..want).unwrap_or_default();
        file.read_exact(buf)?;
        if buf.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        left -= want as u64;
    }
    Ok(true)
}

/// A failed [`rewrite`], saying whether the old log is still the one in place.
#[derive(Debug)]
pub(crate) struct RewriteError {
    /// What went wrong.
    pub error: StorageError,
    /// `true` if the rename had happened, so the caller's writer points at a replaced file.
    pub after_rename: bool,
}

/// Writes `entries` as a fresh log at `<path>.tmp`, fsyncs it, renames it over `path`, fsyncs
/// the directory, and returns a writer appending to the new file.
pub(crate) fn rewrite<'a>(
    path: &Path,
    entries: impl Iterator<Item = (&'a Bytes, &'a Value)>,
) -> Result<LogWriter, RewriteError> {
    let tmp = tmp_path(path);
    let before = |error| RewriteError {
        error,
        after_rename: false,
    };
    let written = write_tmp(&tmp, entries);
    if let Err(error) = written {
        // Best effort: open() removes it anyway.
        let _ = std::fs::remove_file(&tmp);
        return Err(before(error));
    }
    std::fs::rename(&tmp, path)
        .map_err(StorageError::io("failed to rename rewritten log", path))
        .map_err(before)?;

    let after = |error| RewriteError {
        error,
        after_rename: true,
    };
    if let Some(dir) = path.parent() {
        fsync_dir(dir).map_err(after)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(StorageError::io("failed to reopen rewritten log", path))
        .map_err(after)?;
    let len = file
        .metadata()
        .map_err(StorageError::io("failed to stat rewritten log", path))
        .map_err(after)?
        .len();
    Ok(LogWriter::new(file, path.to_path_buf(), len))
}

fn write_tmp<'a>(tmp: &Path, entries: impl Iterator<Item = (&'a Bytes, &'a Value)>) -> Result<()> {
    let io = |context| StorageError::io(context, tmp);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(io("failed to create rewritten log"))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&file_header())
        .map_err(io("failed to write rewritten log"))?;
    let mut buf = Vec::new();
    for (key, value) in entries {
        buf.clear();
        Record::Put {
            key,
            value: &value.data,
            expires_at_ms: value.expires_at_ms,
        }
        .encode(&mut buf);
        out.write_all(&buf)
            .map_err(io("failed to write rewritten log"))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io("failed to write rewritten log")(e.into_error()))?;
    file.sync_all()
        .map_err(io("failed to fsync rewritten log"))?;
    Ok(())
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    fn decode_framed(buf: &[u8]) -> Result<Record<'_>, String> {
        let payload = buf.get(RECORD_HEADER_LEN as usize..).ok_or("short")?;
        Record::decode_payload(payload)
    }

    #[test]
    fn round_trips_put_and_delete() -> Result<(), String> {
        for record in [
            Record::Put {
                key: b"k",
                value: b"value",
                expires_at_ms: Some(42),
            },
            Record::Put {
                key: b"",
                value: b"",
                expires_at_ms: None,
            },
            Record::Delete { key: b"gone" },
        ] {
            let mut buf = Vec::new();
            record.encode(&mut buf);
            assert_eq!(decode_framed(&buf)?, record);
        }
        Ok(())
    }

    #[test]
    fn rejects_malformed_payloads_without_panicking() {
        let cases: &[&[u8]] = &[
            &[],
            &[OP_PUT],
            &[9, 0, 0, 0, 0],
            &[OP_DELETE, 5, 0, 0, 0, b'a'],
            &[OP_DELETE, 0xff, 0xff, 0xff, 0xff],
            &[OP_DELETE, 1, 0, 0, 0, b'a', b'x'],
            &[OP_PUT, 0, 0, 0, 0, 1, 2, 3],
            &[
                OP_PUT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f,
            ],
        ];
        for case in cases {
            assert!(Record::decode_payload(case).is_err(), "{case:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Record::decode_payload(&bytes);
        }
    }
}
