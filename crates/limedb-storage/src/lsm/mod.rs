//! Building blocks of LimeDB's own LSM-tree engine (issue 4), not yet assembled into an
//! [`crate::Engine`].
//!
//! - [`cache`]: the block cache, a sharded LRU of decompressed data blocks with a byte budget.
//! - [`key`]: internal keys (user key + sequence number + kind) and their order.
//! - [`memtable`]: the in-memory write buffer, a concurrent skiplist of internal keys.
//! - [`sstable`]: immutable sorted table files (blocks, index, bloom filter, footer), their
//!   writer and reader.
//! - [`wal`]: the write-ahead log: segmented, checksummed write batches with group commit.
//!
//! The engine that ties write-ahead log, memtables, SSTables, manifest and compaction together
//! comes in later changes; until then shards use [`crate::MemoryEngine`].

pub mod cache;
pub mod key;
pub mod memtable;
pub mod sstable;
pub mod wal;
