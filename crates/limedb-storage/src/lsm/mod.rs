//! Building blocks of LimeDB's own LSM-tree engine (issue 4), not yet assembled into an
//! [`crate::Engine`].
//!
//! - [`key`]: internal keys (user key + sequence number + kind) and their order.
//!
//! The engine that ties write-ahead log, memtables, SSTables, manifest and compaction together
//! comes in later changes; until then shards use [`crate::MemoryEngine`].

pub mod key;
