//! SSTables: immutable sorted files of (internal key, value) entries, the on-disk unit of the
//! LSM tree. [`TableWriter`] builds one from entries in order; [`Table`] opens one and serves
//! point reads ([`Table::get`]) and ordered scans, forward and backward ([`TableIter`]).
//!
//! # File layout (format version 1)
//!
//! All integers are little-endian. A table is written front to back in one pass; the footer
//! comes last, so a file cut short by a crash has no valid footer and is refused.
//!
//! ```text
//!  +-------------------------+  offset 0
//!  | data block 0  + trailer |  entries in compare_encoded order, ~block_size_bytes each
//!  | data block 1  + trailer |
//!  | ...                     |
//!  | data block n-1+ trailer |
//!  +-------------------------+
//!  | filter block  + trailer |  bloom filter over user keys (stored uncompressed)
//!  | properties    + trailer |  smallest/largest key, min seqno, counts (uncompressed)
//!  | index block   + trailer |  per data block: its last key -> BlockHandle
//!  +-------------------------+
//!  | footer (68 bytes)       |  handles, entry count, max seqno, version, crc, magic
//!  +-------------------------+  end of file
//! ```
//!
//! Every block is stored as `payload | compression u8 | crc32c u32` (see [`codec`] for the
//! payload of each compression type); a [`BlockHandle`] (`offset u64 | size u32`) points at
//! one, `size` counting the payload only. Data and index blocks share one format ([`block`]):
//! prefix-compressed entries `shared varint | unshared varint | value_len varint | key
//! suffix | value`, a restart point every 16 entries, and `restart offsets u32... | count
//! u32` at the end. The filter ([`bloom`]) holds about 10 bits per distinct user key and 7
//! probes (about 1% false positives). The footer ([`footer`]) is:
//!
//! ```text
//!  | index handle 12 | filter handle 12 | properties handle 12 | entry_count u64 |
//!  | max_seqno u64 | format_version u32 = 1 | crc32c u32 (of the 56 bytes before) |
//!  | magic u64 = "LIMEDBST" |
//! ```
//!
//! # Reading
//!
//! [`Table::open`] checks the footer (length, magic, version, checksum), then loads the
//! properties, filter and index blocks into memory and checks them; data blocks are read on
//! demand through one function, [`Table::read_block`], via a memory map ([`ReadMode::Mmap`],
//! the default) or `pread` ([`ReadMode::Pread`]). A table opened with [`Table::open_with`]
//! keeps decompressed data blocks in a shared [`crate::lsm::cache::BlockCache`] (except
//! uncompressed blocks of a mapped table, which are read from the map). Every block
//! is checksummed before it is decoded, and every length read from disk is checked against
//! the bytes present: damage is a [`crate::StorageError::Corrupt`] naming the file and the
//! block's offset, never a panic and never wrong data.
//!
//! A point read ([`Table::get`]) asks the bloom filter, binary-searches the index for the
//! first block whose last key is `>=` [`crate::lsm::key::seek_key`]`(user_key, snapshot)`,
//! binary-searches that block's restart points and scans at most 16 entries.
//!
//! # Limits and not yet done
//!
//! - A table holds at least one entry; [`TableWriter::finish`] refuses an empty one.
//! - Index separators are whole last keys (not shortened as LevelDB does); a later version
//!   may shorten them.
//! - No fuzz target yet for the block decoder (a proptest feeds it arbitrary bytes instead).
//!
//! # Example
//!
//! ```
//! use limedb_storage::lsm::key::{encode, ValueKind};
//! use limedb_storage::lsm::sstable::{Compression, ReadMode, Table, TableOptions, TableWriter};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("000001.sst");
//! let options = TableOptions { compression: Compression::Zstd { level: 1 }, ..Default::default() };
//! let mut writer = TableWriter::create(&path, options)?;
//! writer.add(&encode(b"lime", 9, ValueKind::Delete), b"")?;
//! writer.add(&encode(b"lime", 4, ValueKind::Put), b"green")?;
//! writer.finish()?;
//!
//! let table = Table::open(&path, ReadMode::Pread)?;
//! assert_eq!(table.get(b"lime", 9)?, Some((ValueKind::Delete, bytes::Bytes::new())));
//! assert_eq!(table.get(b"lime", 8)?, Some((ValueKind::Put, "green".into())));
//! assert_eq!(table.get(b"lime", 3)?, None);
//! assert_eq!(table.get(b"kiwi", 9)?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::PathBuf;

use bytes::Bytes;

pub mod block;
pub mod bloom;
pub mod codec;
pub mod footer;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use bloom::hash64;
pub use codec::{BlockHandle, Compression};
pub use footer::{FORMAT_VERSION, MAGIC};
pub(crate) use reader::release_mapped_pages;
pub use reader::{Entries, ReadMode, Table, TableIter};
pub use writer::{TableWriter, MAX_BLOCK_SIZE_BYTES, MIN_BLOCK_SIZE_BYTES};

/// How [`TableWriter`] lays out a table. Readers need none of it: everything a reader needs is
/// in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableOptions {
    /// Target uncompressed size of a data block; a block is cut after the entry that reaches
    /// it. Default 4 KiB; [`MIN_BLOCK_SIZE_BYTES`]..=[`MAX_BLOCK_SIZE_BYTES`].
    pub block_size_bytes: usize,
    /// Entries between restart points in data and index blocks. Default 16; 1..=1024.
    pub restart_interval: usize,
    /// Block compression. Default [`Compression::Lz4`].
    pub compression: Compression,
    /// Bloom filter bits per distinct user key. Default 10 (7 probes, about 1% false
    /// positives); 1..=64.
    pub bloom_bits_per_key: u32,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            block_size_bytes: 4096,
            restart_interval: 16,
            compression: Compression::Lz4,
            bloom_bits_per_key: 10,
        }
    }
}

/// What a manifest needs to know about a table: returned by [`TableWriter::finish`] and
/// available from an open [`Table::meta`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMeta {
    /// The table's file.
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub file_size_bytes: u64,
    /// Number of entries (puts and tombstones).
    pub entry_count: u64,
    /// The smallest internal key.
    pub smallest_key: Bytes,
    /// The largest internal key.
    pub largest_key: Bytes,
    /// Smallest sequence number of any entry.
    pub min_seqno: u64,
    /// Largest sequence number of any entry.
    pub max_seqno: u64,
    /// Number of deletion tombstones.
    pub tombstone_count: u64,
    /// Number of data blocks.
    pub data_block_count: u64,
}
