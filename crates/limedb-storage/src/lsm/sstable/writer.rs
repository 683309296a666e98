//! [`TableWriter`]: builds one SSTable file from entries added in order.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::block::BlockBuilder;
use super::bloom::{self, hash64};
use super::codec::{self, BlockHandle, Compression};
use super::footer::{Footer, Properties};
use super::{TableMeta, TableOptions};
use crate::error::StorageError;
use crate::lsm::key::{compare_encoded, InternalKeyRef, ValueKind};
use crate::{Result, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Largest accepted [`TableOptions::block_size_bytes`] (16 MiB).
pub const MAX_BLOCK_SIZE_BYTES: usize = 16 << 20;

/// Smallest accepted [`TableOptions::block_size_bytes`].
pub const MIN_BLOCK_SIZE_BYTES: usize = 64;

/// Writes one SSTable: [`TableWriter::add`] entries in strictly increasing
/// [`compare_encoded`] order, then [`TableWriter::finish`].
///
/// The file is created at the path given (failing if it exists) and written through a
/// `BufWriter`; `finish` fsyncs it. Naming (temporary names, renames) and fsyncing the
/// directory are the caller's business. If the writer is dropped without `finish`, or any call
/// fails with an I/O error, the file is incomplete (it has no footer, so no reader accepts it)
/// and the caller should delete it; after an I/O error every further call fails.
///
/// ```
/// use limedb_storage::lsm::key::{encode, ValueKind};
/// use limedb_storage::lsm::sstable::{ReadMode, Table, TableOptions, TableWriter};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("000001.sst");
/// let mut writer = TableWriter::create(&path, TableOptions::default())?;
/// writer.add(&encode(b"apple", 2, ValueKind::Put), b"red")?;
/// writer.add(&encode(b"lime", 1, ValueKind::Put), b"green")?;
/// let meta = writer.finish()?;
/// assert_eq!(meta.entry_count, 2);
///
/// let table = Table::open(&path, ReadMode::Mmap)?;
/// let (kind, value) = table.get(b"lime", u64::MAX)?.expect("present");
/// assert_eq!((kind, &value[..]), (ValueKind::Put, &b"green"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TableWriter {
    path: PathBuf,
    file: BufWriter<File>,
    options: TableOptions,
    /// Bytes written so far: the offset of the next block.
    offset: u64,
    data_block: BlockBuilder,
    index_block: BlockBuilder,
    /// Scratch buffer for compressed payloads.
    compressed: Vec<u8>,
    /// Hashes of the distinct user keys, for the bloom filter.
    user_key_hashes: Vec<u64>,
    smallest_key: Vec<u8>,
    last_key: Vec<u8>,
    entry_count: u64,
    tombstone_count: u64,
    data_block_count: u64,
    min_seqno: u64,
    max_seqno: u64,
    /// Set after an I/O error: the file is in an unknown state.
    failed: bool,
}

impl TableWriter {
    /// Creates the file at `path` (which must not exist) and checks `options`.
    pub fn create(path: impl AsRef<Path>, options: TableOptions) -> Result<TableWriter> {
        let path = path.as_ref().to_path_buf();
        validate(&path, &options)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StorageError::io("failed to create SSTable", &path))?;
        Ok(TableWriter {
            path,
            file: BufWriter::with_capacity(256 << 10, file),
            data_block: BlockBuilder::new(options.restart_interval),
            index_block: BlockBuilder::new(options.restart_interval),
            options,
            offset: 0,
            compressed: Vec::new(),
            user_key_hashes: Vec::new(),
            smallest_key: Vec::new(),
            last_key: Vec::new(),
            entry_count: 0,
            tombstone_count: 0,
            data_block_count: 0,
            min_seqno: u64::MAX,
            max_seqno: 0,
            failed: false,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries added so far.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// Bytes handed to the file so far (not counting the block being built); lets a caller
    /// cut tables at a target size.
    pub fn written_bytes(&self) -> u64 {
        self.offset
    }

    fn invalid(&self, reason: impl Into<String>) -> StorageError {
        StorageError::InvalidInput {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(self.invalid("an earlier write to this table failed; discard the file"));
        }
        Ok(())
    }

    /// Adds an entry. `internal_key` is an encoded internal key
    /// ([`crate::lsm::key::encode`]) strictly greater, in [`compare_encoded`] order, than the
    /// previous one; a tombstone's value is ignored by readers (pass an empty one).
    pub fn add(&mut self, internal_key: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        let Some(key) = InternalKeyRef::decode(internal_key) else {
            return Err(self.invalid(format!(
                "{} bytes are not an internal key (too short or unknown kind)",
                internal_key.len()
            )));
        };
        if key.user_key.len() > MAX_KEY_BYTES {
            return Err(StorageError::KeyTooLarge {
                len: key.user_key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(StorageError::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_BYTES,
            });
        }
        let new_user_key = if self.entry_count == 0 {
            self.smallest_key = internal_key.to_vec();
            true
        } else {
            if compare_encoded(&self.last_key, internal_key) != std::cmp::Ordering::Less {
                return Err(self.invalid(format!(
                    "key {:?} added out of order: not greater than the previous key {:?}",
                    Bytes::copy_from_slice(internal_key),
                    Bytes::copy_from_slice(&self.last_key),
                )));
            }
            key.user_key != crate::lsm::key::user_key(&self.last_key)
        };
        if new_user_key {
            self.user_key_hashes.push(hash64(key.user_key));
        }
        if let Err(reason) = self.data_block.add(internal_key, value) {
            return Err(self.invalid(reason));
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(internal_key);
        self.entry_count += 1;
        self.min_seqno = self.min_seqno.min(key.seqno);
        self.max_seqno = self.max_seqno.max(key.seqno);
        if key.kind == ValueKind::Delete {
            self.tombstone_count += 1;
        }
        if self.data_block.estimated_size_bytes() >= self.options.block_size_bytes {
            self.flush_data_block()?;
        }
        Ok(())
    }

    /// Writes the pending data block and records it in the index.
    fn flush_data_block(&mut self) -> Result<()> {
        if self.data_block.entry_count() == 0 {
            return Ok(());
        }
        let compression = self.options.compression;
        let raw = self.data_block.finish();
        let handle = write_block(
            &mut self.file,
            &mut self.offset,
            raw,
            compression,
            &mut self.compressed,
        )
        .map_err(|e| self.fail(e))?;
        let mut encoded = Vec::with_capacity(BlockHandle::ENCODED_LEN);
        handle.encode_into(&mut encoded);
        let separator = self.data_block.last_key().to_vec();
        self.data_block.reset();
        self.data_block_count += 1;
        self.index_block
            .add(&separator, &encoded)
            .map_err(|reason| self.invalid(reason))
    }

    fn fail(&mut self, err: BlockWriteError) -> StorageError {
        self.failed = true;
        match err {
            BlockWriteError::Io(source) => StorageError::Io {
                path: self.path.clone(),
                source,
                context: "failed to write SSTable",
            },
            BlockWriteError::Other(reason) => self.invalid(reason),
        }
    }

    /// Writes the last data block, the filter, properties and index blocks and the footer,
    /// fsyncs the file and returns what a manifest needs to know about it.
    ///
    /// A table with no entries is refused ([`StorageError::InvalidInput`]) and its file
    /// removed: an empty flush or compaction output should produce no table at all.
    pub fn finish(mut self) -> Result<TableMeta> {
        self.check_usable()?;
        if self.entry_count == 0 {
            let err = self.invalid("an SSTable needs at least one entry");
            drop(self.file);
            std::fs::remove_file(&self.path).map_err(StorageError::io(
                "failed to remove empty SSTable",
                &self.path,
            ))?;
            return Err(err);
        }
        self.flush_data_block()?;

        let filter = bloom::build(&self.user_key_hashes, self.options.bloom_bits_per_key);
        let filter_handle = self.write_meta_block(&filter, Compression::None)?;

        let properties = Properties {
            smallest_key: std::mem::take(&mut self.smallest_key),
            largest_key: self.last_key.clone(),
            min_seqno: self.min_seqno,
            tombstone_count: self.tombstone_count,
            data_block_count: self.data_block_count,
        };
        let Some(encoded_properties) = properties.encode() else {
            return Err(self.invalid("a boundary key is too long for the properties block"));
        };
        let properties_handle = self.write_meta_block(&encoded_properties, Compression::None)?;

        let index = self.index_block.finish().to_vec();
        let index_handle = self.write_meta_block(&index, self.options.compression)?;

        let footer = Footer {
            index: index_handle,
            filter: filter_handle,
            properties: properties_handle,
            entry_count: self.entry_count,
            max_seqno: self.max_seqno,
        };
        let footer_bytes = footer.encode();
        let io = |context| StorageError::io(context, self.path.clone());
        self.file
            .write_all(&footer_bytes)
            .map_err(io("failed to write SSTable footer"))?;
        self.offset += footer_bytes.len() as u64;
        let file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io("failed to write SSTable"))?;
        file.sync_all().map_err(io("failed to fsync SSTable"))?;
        Ok(TableMeta {
            path: self.path,
            file_size_bytes: self.offset,
            entry_count: self.entry_count,
            smallest_key: Bytes::from(properties.smallest_key),
            largest_key: Bytes::from(properties.largest_key),
            min_seqno: self.min_seqno,
            max_seqno: self.max_seqno,
            tombstone_count: self.tombstone_count,
            data_block_count: self.data_block_count,
        })
    }

    fn write_meta_block(&mut self, raw: &[u8], compression: Compression) -> Result<BlockHandle> {
        write_block(
            &mut self.file,
            &mut self.offset,
            raw,
            compression,
            &mut self.compressed,
        )
        .map_err(|e| self.fail(e))
    }
}

enum BlockWriteError {
    Io(std::io::Error),
    Other(String),
}

/// Compresses (if worthwhile) and writes one block with its trailer at `*offset`, advancing
/// it.
fn write_block(
    file: &mut BufWriter<File>,
    offset: &mut u64,
    raw: &[u8],
    compression: Compression,
    scratch: &mut Vec<u8>,
) -> std::result::Result<BlockHandle, BlockWriteError> {
    let kind = codec::compress(raw, compression, scratch).map_err(BlockWriteError::Other)?;
    let (kind, payload) = match kind {
        Some(kind) => (kind, scratch.as_slice()),
        None => (codec::type_none(), raw),
    };
    let size = u32::try_from(payload.len())
        .map_err(|_| BlockWriteError::Other(format!("block of {} bytes", payload.len())))?;
    file.write_all(payload).map_err(BlockWriteError::Io)?;
    file.write_all(&codec::trailer(payload, kind))
        .map_err(BlockWriteError::Io)?;
    let handle = BlockHandle {
        offset: *offset,
        size,
    };
    *offset += payload.len() as u64 + codec::BLOCK_TRAILER_LEN as u64;
    Ok(handle)
}

fn validate(path: &Path, options: &TableOptions) -> Result<()> {
    let invalid = |reason: String| StorageError::InvalidInput {
        path: path.to_path_buf(),
        reason,
    };
    if !(MIN_BLOCK_SIZE_BYTES..=MAX_BLOCK_SIZE_BYTES).contains(&options.block_size_bytes) {
        return Err(invalid(format!(
            "block_size_bytes {} is outside {MIN_BLOCK_SIZE_BYTES}..={MAX_BLOCK_SIZE_BYTES}",
            options.block_size_bytes
        )));
    }
    if !(1..=1024).contains(&options.restart_interval) {
        return Err(invalid(format!(
            "restart_interval {} is outside 1..=1024",
            options.restart_interval
        )));
    }
    if !(1..=64).contains(&options.bloom_bits_per_key) {
        return Err(invalid(format!(
            "bloom_bits_per_key {} is outside 1..=64",
            options.bloom_bits_per_key
        )));
    }
    if let Compression::Zstd { level } = options.compression {
        if !(1..=22).contains(&level) {
            return Err(invalid(format!("zstd level {level} is outside 1..=22")));
        }
    }
    Ok(())
}
