//! Small durable files (the vote, the purge point, the applied marker, snapshot metadata) and
//! directory syncs.
//!
//! A small file is `magic [8] | len u32 | crc32c(payload) u32 | payload`, replaced atomically:
//! written to `NAME.tmp`, fsynced, renamed over `NAME`, and the directory fsynced. A reader sees
//! the old or the new content, never a mix; a torn temporary file is ignored.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;

use crate::error::{ReplicaError, Result};

const HEADER_BYTES: usize = 16;

/// Writes `payload` to `path` atomically and durably (see the module docs).
pub fn write_small_file(path: &Path, magic: &[u8; 8], payload: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    let mut file = File::create(&tmp).map_err(ReplicaError::io("cannot create", &tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(ReplicaError::io("cannot write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(ReplicaError::io("cannot rename over", path))?;
    sync_parent(path)
}

/// Reads a file written by [`write_small_file`]; `None` if it does not exist. A wrong magic, a
/// length that does not match or a bad checksum is an error naming the file.
pub fn read_small_file(path: &Path, magic: &[u8; 8]) -> Result<Option<Bytes>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReplicaError::io("cannot read", path)(e)),
    };
    let corrupt = |why: &str| ReplicaError::Config(format!("{} is corrupt: {why}", path.display()));
    let header = bytes
        .get(..HEADER_BYTES)
        .ok_or_else(|| corrupt("too short"))?;
    if &header[..8] != magic {
        return Err(corrupt("unexpected magic (not a file of this kind)"));
    }
    let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() != len {
        return Err(corrupt("length does not match"));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Some(Bytes::copy_from_slice(payload)))
}

/// Writes `bytes` to `path` as is (no header), atomically and durably: temporary file, fsync,
/// rename, directory fsync. For small human-readable files.
pub fn write_small_file_plain(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(ReplicaError::io("cannot create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(ReplicaError::io("cannot write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(ReplicaError::io("cannot rename over", path))?;
    sync_parent(path)
}

/// fsyncs the directory holding `path`, so a create, rename or delete in it is durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => Ok(()),
    }
}

/// fsyncs a directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ReplicaError::io("cannot fsync directory", dir))
}

/// Creates `dir` and its parents.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(ReplicaError::io("cannot create directory", dir))
}

/// Removes a directory tree if it exists.
pub fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ReplicaError::io("cannot remove", dir)(e)),
    }
}

/// Makes `dest` a copy of the directory tree `src`, hard-linking files (copying where linking
/// fails, e.g. across filesystems) and fsyncing what it copied and every directory it made.
pub fn link_tree(src: &Path, dest: &Path) -> Result<()> {
    create_dir(dest)?;
    let entries = std::fs::read_dir(src).map_err(ReplicaError::io("cannot list", src))?;
    for entry in entries {
        let entry = entry.map_err(ReplicaError::io("cannot list", src))?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(ReplicaError::io("cannot stat", &from))?;
        if kind.is_dir() {
            link_tree(&from, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(ReplicaError::io("cannot copy", &from))?;
            File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(ReplicaError::io("cannot fsync", &to))?;
        }
    }
    sync_dir(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_round_trip_and_detect_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vote");
        assert!(read_small_file(&path, b"TESTMAG1").expect("read").is_none());
        write_small_file(&path, b"TESTMAG1", b"hello").expect("write");
        assert_eq!(
            read_small_file(&path, b"TESTMAG1")
                .expect("read")
                .as_deref(),
            Some(&b"hello"[..])
        );
        assert!(read_small_file(&path, b"OTHERMAG").is_err());
        let mut bytes = std::fs::read(&path).expect("read raw");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("damage");
        let err = read_small_file(&path, b"TESTMAG1").expect_err("checksum");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
