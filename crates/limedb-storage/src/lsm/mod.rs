//! LimeDB's own LSM-tree engine (issue 4): [`engine::LsmEngine`] and its building blocks.
//!
//! - [`engine`]: [`engine::LsmEngine`], the blocks below assembled into a [`crate::Engine`]:
//!   write path, recovery, reads and scans, background flushes and compactions.
//! - [`cache`]: the block cache, a sharded LRU of decompressed data blocks with a byte budget.
//! - [`compaction`]: compaction decisions, pure: leveled compaction picks a
//!   [`compaction::Choice`] from a [`version::Version`]; a worker acts on it.
//! - [`key`]: internal keys (user key + sequence number + kind) and their order.
//! - [`manifest`]: the durable log of version edits (`MANIFEST-<n>` and `CURRENT`) that
//!   installs flushes and compactions atomically.
//! - [`memtable`]: the in-memory write buffer of internal keys, indexed by [`skiplist`].
//! - [`skiplist`]: the memtable's skiplist: nodes (key, value, tower) in an arena, one writer
//!   at a time, readers without locks.
//! - [`sstable`]: immutable sorted table files (blocks, index, bloom filter, footer), their
//!   writer and reader.
//! - [`version`]: an immutable snapshot of the tables in each level (L0..L6) and the counters.
//! - [`wal`]: the write-ahead log: segmented, checksummed write batches with group commit.
//!
//! It is every shard's default backend (`limedb shard --storage lsm`).

pub mod cache;
pub mod compaction;
pub mod engine;
pub mod key;
pub mod manifest;
pub mod memtable;
mod records;
pub mod skiplist;
pub mod sstable;
pub mod version;
pub mod wal;
