//! [`BlockCache`]: a sharded LRU cache of decompressed SSTable data blocks with a byte budget,
//! shared by every open [`crate::lsm::sstable::Table`] of an engine.
//!
//! # Design
//!
//! ```text
//!   BlockCache ── shard = mix(table_id, offset) & (N - 1)     N a power of two, <= 16
//!    ├─ Shard 0: Mutex<Lru> + atomic counters     capacity_bytes / N each
//!    ├─ Shard 1
//!    └─ ...
//!
//!   Lru:  map: HashMap<BlockKey, slot>   slots: Vec<Slot>   free: Vec<slot>
//!         head (most recent) ⇄ slot ⇄ slot ⇄ ... ⇄ tail (least recent, evicted first)
//! ```
//!
//! - A block is keyed by [`BlockKey`]: the table's id (unique among the tables sharing one
//!   cache, e.g. its file number) and the block's offset in the file.
//! - Each shard is an LRU list threaded through a `Vec` of slots by `u32` indices, with a hash
//!   map from key to slot. `get`, `insert` and an eviction are O(1) (expected, one hash lookup
//!   plus a constant number of link updates); freed slots are reused through a free list, so
//!   the steady state allocates nothing but the map's and the block's own memory.
//! - Every entry is charged `value.len() + ENTRY_OVERHEAD_BYTES`; a shard evicts from its
//!   least recently used end until the new entry fits, so a shard never holds more than
//!   `capacity_bytes / N` and the whole cache never more than `capacity_bytes`. An entry whose
//!   charge exceeds a shard's capacity is not cached (it would flush the whole shard) and is
//!   counted as `rejected`.
//! - Counters (hits, misses, inserts, evictions, rejections, used bytes, entries) are atomics
//!   kept per shard, next to that shard's lock, and summed by [`BlockCache::stats`] without
//!   taking any lock.
//! - Part of the budget can be lent to memory kept outside the cache
//!   ([`BlockCache::set_reserved`]: the engine lends a flushed memtable it keeps for point
//!   reads its bytes); the shards' capacities shrink by as much, evicting at once.
//! - Tables read through memory maps register their maps here: the pages those reads keep
//!   resident share the cache's budget, and are released when reads pass it (see
//!   [`BlockCache::charge_mapped`]).
//! - A shard whose lock was poisoned by a panic is bypassed: reads miss and inserts are
//!   dropped, so a half-updated shard never answers.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use limedb_storage::lsm::cache::{BlockCache, BlockKey};
//!
//! let cache = BlockCache::new(1 << 20);
//! let key = BlockKey::new(7, 4096);
//! assert_eq!(cache.get(key), None);
//! cache.insert(key, Bytes::from_static(b"block"));
//! assert_eq!(cache.get(key).as_deref(), Some(&b"block"[..]));
//! cache.remove_table(7);
//! assert_eq!(cache.get(key), None);
//! let stats = cache.stats();
//! assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 0));
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;

/// Bytes charged for each entry on top of its value: an estimate of the bookkeeping, i.e. the
/// 64-byte slot (key 16, `Bytes` 32, charge 8, links 8), the hash-map entry (24 bytes plus a
/// control byte, with the table at most 7/8 full) and the 32-byte header `bytes` allocates
/// for a shared buffer.
pub const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Most shards a cache is split into.
pub const MAX_SHARDS: usize = 16;

/// Least capacity [`BlockCache::new`] gives a shard: small caches get fewer shards so that a
/// shard still holds a useful number of blocks.
pub const MIN_SHARD_CAPACITY_BYTES: usize = 256 << 10;

/// Marks "no slot" in the links of the LRU list.
const NIL: u32 = u32::MAX;

/// Where a cached block comes from: which table, and where in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The table's id, unique among the tables sharing a cache (e.g. its file number).
    pub table_id: u64,
    /// Offset of the block in the table's file.
    pub offset: u64,
}

impl BlockKey {
    /// The key of the block at `offset` in table `table_id`.
    pub const fn new(table_id: u64, offset: u64) -> BlockKey {
        BlockKey { table_id, offset }
    }
}

/// A snapshot of a [`BlockCache`]'s counters (summed over its shards, each read atomically
/// but not all at one instant).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `get` calls that found their block.
    pub hits: u64,
    /// `get` calls that did not.
    pub misses: u64,
    /// Blocks admitted by `insert` (including replacements of a block already cached).
    pub inserts: u64,
    /// Blocks dropped to make room for others (not counting `remove_table` or replacements).
    pub evictions: u64,
    /// `insert` calls refused because the block alone exceeds a shard's capacity.
    pub rejected: u64,
    /// Bytes currently charged: values plus [`ENTRY_OVERHEAD_BYTES`] per entry.
    pub used_bytes: u64,
    /// The budget [`BlockCache::new`] was given; `used_bytes` plus `reserved_bytes` stays
    /// within it (once a `set_reserved` call has returned).
    pub capacity_bytes: u64,
    /// Bytes of the budget lent to memory outside the cache ([`BlockCache::set_reserved`]).
    pub reserved_bytes: u64,
    /// Blocks currently cached.
    pub entries: u64,
    /// Times the pages of the table maps were released to keep them within the budget (see
    /// [`BlockCache::charge_mapped`]).
    pub mapped_releases: u64,
}

/// A sharded LRU cache of blocks with a byte budget. `Send + Sync`; share it with an `Arc`.
///
/// See the [module documentation](self) for the design and an example.
#[derive(Debug)]
pub struct BlockCache {
    shards: Box<[Shard]>,
    /// `shards.len() - 1`; the shard count is a power of two.
    shard_mask: usize,
    capacity_bytes: usize,
    /// See [`BlockCache::set_reserved`].
    reserved_bytes: AtomicU64,
    mapped: MappedPages,
}

/// Least budget for table pages mapped into memory, whatever the cache holds (see
/// [`BlockCache::charge_mapped`]).
pub const MIN_MAPPED_BYTES: u64 = 4 << 20;

/// The memory maps of the tables read through this cache, and how many bytes of them were
/// read since their pages were last released (see [`BlockCache::charge_mapped`]).
#[derive(Debug, Default)]
struct MappedPages {
    charged: AtomicU64,
    maps: Mutex<Vec<Weak<memmap2::Mmap>>>,
    releases: AtomicU64,
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` (values plus [`ENTRY_OVERHEAD_BYTES`] per
    /// entry), in up to [`MAX_SHARDS`] shards of at least [`MIN_SHARD_CAPACITY_BYTES`] each
    /// (one shard if the whole cache is smaller). A capacity of 0 caches nothing.
    pub fn new(capacity_bytes: usize) -> BlockCache {
        let mut shards = MAX_SHARDS;
        while shards > 1 && capacity_bytes / shards < MIN_SHARD_CAPACITY_BYTES {
            shards /= 2;
        }
        BlockCache::with_shards(capacity_bytes, shards)
    }

    /// A cache of `capacity_bytes` split evenly into `shards` shards, rounded up to a power of
    /// two (at least 1). Each shard holds at most `capacity_bytes / shards`.
    pub fn with_shards(capacity_bytes: usize, shards: usize) -> BlockCache {
        let shards = shards
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SHARDS);
        let shard_capacity = capacity_bytes / shards;
        BlockCache {
            shards: (0..shards).map(|_| Shard::new(shard_capacity)).collect(),
            shard_mask: shards - 1,
            capacity_bytes,
            reserved_bytes: AtomicU64::new(0),
            mapped: MappedPages::default(),
        }
    }

    /// Counts `map`, a table file mapped into memory, under this cache's budget: its pages
    /// are released when [`BlockCache::charge_mapped`] finds the budget spent. Held weakly.
    pub fn register_map(&self, map: &Arc<memmap2::Mmap>) {
        if let Ok(mut maps) = self.mapped.maps.lock() {
            maps.retain(|m| m.strong_count() > 0);
            maps.push(Arc::downgrade(map));
        }
    }

    /// Charges `bytes` read from a registered map. Pages of a map that a read touched stay in
    /// the process's resident memory for as long as the kernel keeps them cached, so reads
    /// through maps would otherwise grow resident memory up to the size of every table. The
    /// budget for them is what the cache's capacity leaves over the blocks it holds (at least
    /// [`MIN_MAPPED_BYTES`]); once more than that was read, every registered map's pages are
    /// released (`MADV_DONTNEED`: they leave the process, stay in the page cache, and a later
    /// read faults them back in without I/O while the kernel keeps them). Reads are counted,
    /// not pages, so rereading a page counts again: a release may come early, never late.
    pub fn charge_mapped(&self, bytes: u64) {
        let before = self.mapped.charged.fetch_add(bytes, Ordering::Relaxed);
        let after = before.saturating_add(bytes);
        // Check the budget once per MiB read, not on every read.
        if before >> 20 == after >> 20 {
            return;
        }
        let budget = (self.capacity_bytes as u64)
            .saturating_sub(self.reserved_bytes.load(Ordering::Relaxed))
            .saturating_sub(self.used_bytes())
            .max(MIN_MAPPED_BYTES);
        if after <= budget {
            return;
        }
        // One releaser at a time; the others go on reading.
        let Ok(mut maps) = self.mapped.maps.try_lock() else {
            return;
        };
        self.mapped.charged.store(0, Ordering::Relaxed);
        maps.retain(|weak| match weak.upgrade() {
            Some(map) => {
                if let Err(error) = crate::lsm::sstable::release_mapped_pages(&map) {
                    tracing::debug!(%error, "madvise(MADV_DONTNEED) on a table map failed");
                }
                true
            }
            None => false,
        });
        self.mapped.releases.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times [`BlockCache::charge_mapped`] released the pages of the maps.
    pub fn mapped_releases(&self) -> u64 {
        self.mapped.releases.load(Ordering::Relaxed)
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The block cached under `key`, which becomes the most recently used of its shard.
    pub fn get(&self, key: BlockKey) -> Option<Bytes> {
        let found = self.probe(key);
        if found.is_none() {
            self.shard(key).misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// As [`BlockCache::get`], but a miss is not counted: for a caller that only wants to know
    /// whether a lookup can be answered without I/O, and does the counted `get` afterwards
    /// when it cannot.
    pub fn probe(&self, key: BlockKey) -> Option<Bytes> {
        let shard = self.shard(key);
        let found = shard.lock().and_then(|mut lru| lru.get(key));
        if found.is_some() {
            shard.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Caches `value` under `key` as the most recently used block of its shard, replacing
    /// any block cached under `key` and evicting least recently used blocks until it fits.
    /// Returns whether the block was admitted: a block larger than a shard's capacity is not
    /// (and any older block under `key` is dropped, so `get` never returns stale data).
    pub fn insert(&self, key: BlockKey, value: Bytes) -> bool {
        let shard = self.shard(key);
        let Some(mut lru) = shard.lock() else {
            return false;
        };
        let outcome = lru.insert(key, value);
        shard.publish(&lru);
        drop(lru);
        match outcome {
            Inserted::Admitted { evicted } => {
                shard.inserts.fetch_add(1, Ordering::Relaxed);
                shard.evictions.fetch_add(evicted, Ordering::Relaxed);
                true
            }
            Inserted::Rejected => {
                shard.rejected.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Drops every block of table `table_id` (call it when the table's file is deleted).
    /// Walks every shard: O(entries in the cache). Returns how many blocks were dropped.
    pub fn remove_table(&self, table_id: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            if let Some(mut lru) = shard.lock() {
                removed += lru.remove_table(table_id);
                shard.publish(&lru);
            }
        }
        removed
    }

    /// Lends `bytes` of the budget to memory the engine keeps outside the cache (a memtable
    /// kept after its flush to answer point reads; see `LsmOptions::retain_flushed_memtable`),
    /// replacing any earlier reservation: each shard's capacity becomes its share of
    /// `capacity - bytes`, and shards above it evict their least recently used blocks at once,
    /// so blocks and the reservation together stay within the budget. A reservation above the
    /// budget leaves the cache no room at all.
    pub fn set_reserved(&self, bytes: usize) {
        let bytes = bytes.min(self.capacity_bytes);
        self.reserved_bytes.store(bytes as u64, Ordering::Relaxed);
        let shard_capacity = (self.capacity_bytes - bytes) / self.shards.len();
        for shard in self.shards.iter() {
            if let Some(mut lru) = shard.lock() {
                let evicted = lru.set_capacity(shard_capacity);
                shard.publish(&lru);
                drop(lru);
                shard.evictions.fetch_add(evicted, Ordering::Relaxed);
            }
        }
    }

    /// Bytes currently charged, summed over the shards without locking them.
    fn used_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.used_bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// The counters, summed over the shards without locking them.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            capacity_bytes: self.capacity_bytes as u64,
            reserved_bytes: self.reserved_bytes.load(Ordering::Relaxed),
            mapped_releases: self.mapped_releases(),
            used_bytes: self.used_bytes(),
            ..CacheStats::default()
        };
        for shard in self.shards.iter() {
            stats.hits += shard.hits.load(Ordering::Relaxed);
            stats.misses += shard.misses.load(Ordering::Relaxed);
            stats.inserts += shard.inserts.load(Ordering::Relaxed);
            stats.evictions += shard.evictions.load(Ordering::Relaxed);
            stats.rejected += shard.rejected.load(Ordering::Relaxed);
            stats.entries += shard.entries.load(Ordering::Relaxed);
        }
        stats
    }

    fn shard(&self, key: BlockKey) -> &Shard {
        // A different mix from the one the shard's hash map uses, so that the keys of one
        // shard still spread over all of its map's buckets.
        let hash = fmix64(key.table_id.rotate_left(32) ^ key.offset ^ 0x5851_f42d_4c95_7f2d);
        let index = (hash as usize) & self.shard_mask;
        // The mask keeps `index` below `shards.len()`, a power of two.
        &self.shards[index]
    }

    /// Checks every shard's internal invariants (links, map, charges, counters).
    #[cfg(test)]
    fn check(&self) {
        for shard in self.shards.iter() {
            let lru = shard.lock().expect("not poisoned");
            lru.check();
            assert_eq!(
                shard.used_bytes.load(Ordering::Relaxed),
                lru.used_bytes as u64
            );
            assert_eq!(shard.entries.load(Ordering::Relaxed), lru.map.len() as u64);
        }
    }
}

/// One shard: its LRU under a lock and its counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(64))]
struct Shard {
    lru: Mutex<Lru>,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    rejected: AtomicU64,
    /// Mirrors `Lru::used_bytes`, written under the lock.
    used_bytes: AtomicU64,
    /// Mirrors `Lru::map.len()`, written under the lock.
    entries: AtomicU64,
}

impl Shard {
    fn new(capacity_bytes: usize) -> Shard {
        Shard {
            lru: Mutex::new(Lru::new(capacity_bytes)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            used_bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        }
    }

    /// The LRU, or `None` if a panic poisoned it (its links may be half updated).
    fn lock(&self) -> Option<MutexGuard<'_, Lru>> {
        self.lru.lock().ok()
    }

    /// Copies the LRU's size into the counters; called with the lock held.
    fn publish(&self, lru: &Lru) {
        self.used_bytes
            .store(lru.used_bytes as u64, Ordering::Relaxed);
        self.entries.store(lru.map.len() as u64, Ordering::Relaxed);
    }
}

/// A cached block, linked into its shard's LRU list (or, while free, holding an empty value).
#[derive(Debug)]
struct Slot {
    key: BlockKey,
    value: Bytes,
    /// `value.len() + ENTRY_OVERHEAD_BYTES`, fixed at insert.
    charge: usize,
    /// Toward the most recently used end.
    prev: u32,
    /// Toward the least recently used end.
    next: u32,
}

/// What [`Lru::insert`] did.
#[derive(Debug, PartialEq, Eq)]
enum Inserted {
    Admitted { evicted: u64 },
    Rejected,
}

/// One shard's LRU: a doubly linked list threaded through `slots` by index, most recently
/// used at `head`, plus a map from key to slot.
#[derive(Debug)]
struct Lru {
    map: HashMap<BlockKey, u32, BuildHasherDefault<KeyHasher>>,
    slots: Vec<Slot>,
    /// Slots not in the list, to be reused before `slots` grows.
    free: Vec<u32>,
    head: u32,
    tail: u32,
    used_bytes: usize,
    capacity_bytes: usize,
}

impl Lru {
    fn new(capacity_bytes: usize) -> Lru {
        Lru {
            map: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            used_bytes: 0,
            capacity_bytes,
        }
    }

    fn slot(&mut self, index: u32) -> &mut Slot {
        &mut self.slots[index as usize]
    }

    /// Takes slot `index` out of the list.
    fn unlink(&mut self, index: u32) {
        let (prev, next) = {
            let slot = self.slot(index);
            (slot.prev, slot.next)
        };
        match prev {
            NIL => self.head = next,
            prev => self.slot(prev).next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.slot(next).prev = prev,
        }
    }

    /// Puts slot `index` (not in the list) at the most recently used end.
    fn push_front(&mut self, index: u32) {
        let old_head = self.head;
        {
            let slot = self.slot(index);
            slot.prev = NIL;
            slot.next = old_head;
        }
        match old_head {
            NIL => self.tail = index,
            old_head => self.slot(old_head).prev = index,
        }
        self.head = index;
    }

    /// Unlinks and frees slot `index`, which the map no longer lists.
    fn release(&mut self, index: u32) {
        self.unlink(index);
        let slot = self.slot(index);
        let charge = slot.charge;
        slot.value = Bytes::new();
        slot.charge = 0;
        self.used_bytes -= charge;
        self.free.push(index);
    }

    /// Changes the capacity, evicting from the least recently used end until the entries
    /// fit; returns how many were evicted.
    fn set_capacity(&mut self, capacity_bytes: usize) -> u64 {
        self.capacity_bytes = capacity_bytes;
        let mut evicted = 0;
        while self.used_bytes > self.capacity_bytes && self.tail != NIL {
            self.evict_tail();
            evicted += 1;
        }
        evicted
    }

    /// Drops the least recently used entry (the caller checked there is one).
    fn evict_tail(&mut self) {
        let victim = self.tail;
        let victim_key = self.slot(victim).key;
        self.map.remove(&victim_key);
        self.release(victim);
    }

    fn get(&mut self, key: BlockKey) -> Option<Bytes> {
        let index = *self.map.get(&key)?;
        if self.head != index {
            self.unlink(index);
            self.push_front(index);
        }
        Some(self.slot(index).value.clone())
    }

    fn insert(&mut self, key: BlockKey, value: Bytes) -> Inserted {
        if let Some(old) = self.map.remove(&key) {
            self.release(old);
        }
        let charge = value.len().saturating_add(ENTRY_OVERHEAD_BYTES);
        if charge > self.capacity_bytes {
            return Inserted::Rejected;
        }
        let mut evicted = 0;
        while self.used_bytes + charge > self.capacity_bytes && self.tail != NIL {
            self.evict_tail();
            evicted += 1;
        }
        let slot = Slot {
            key,
            value,
            charge,
            prev: NIL,
            next: NIL,
        };
        let index = match self.free.pop() {
            Some(index) => {
                *self.slot(index) = slot;
                index
            }
            None => match u32::try_from(self.slots.len()) {
                Ok(index) if index != NIL => {
                    self.slots.push(slot);
                    index
                }
                // 2^32 - 1 live entries in one shard: not reachable with any real budget,
                // since each entry is charged at least ENTRY_OVERHEAD_BYTES.
                _ => return Inserted::Rejected,
            },
        };
        self.map.insert(key, index);
        self.push_front(index);
        self.used_bytes += charge;
        Inserted::Admitted { evicted }
    }

    fn remove_table(&mut self, table_id: u64) -> usize {
        let mut doomed = Vec::new();
        self.map.retain(|key, &mut index| {
            let keep = key.table_id != table_id;
            if !keep {
                doomed.push(index);
            }
            keep
        });
        for &index in &doomed {
            self.release(index);
        }
        doomed.len()
    }

    /// Walks the list both ways and checks it against the map, the free list and the charges.
    #[cfg(test)]
    fn check(&self) {
        let mut forward = Vec::new();
        let (mut at, mut prev) = (self.head, NIL);
        while at != NIL {
            let slot = &self.slots[at as usize];
            assert_eq!(slot.prev, prev, "back link of slot {at}");
            assert_eq!(self.map.get(&slot.key), Some(&at), "map entry of slot {at}");
            assert_eq!(slot.charge, slot.value.len() + ENTRY_OVERHEAD_BYTES);
            forward.push(at);
            prev = at;
            at = slot.next;
            assert!(forward.len() <= self.slots.len(), "cycle in the list");
        }
        assert_eq!(self.tail, prev, "tail");
        assert_eq!(forward.len(), self.map.len(), "list and map sizes");
        assert_eq!(
            forward.len() + self.free.len(),
            self.slots.len(),
            "slots lost"
        );
        let used: usize = forward.iter().map(|&i| self.slots[i as usize].charge).sum();
        assert_eq!(used, self.used_bytes, "used bytes");
        assert!(self.used_bytes <= self.capacity_bytes, "over budget");
        for &free in &self.free {
            assert!(
                self.slots[free as usize].value.is_empty(),
                "free slot holds a value"
            );
        }
    }
}

/// A fast hasher for [`BlockKey`] (two `u64`s): not DoS-resistant, which is fine for keys the
/// engine makes itself (table ids and file offsets).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn block(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    /// Capacity for exactly `n` entries of `len` bytes.
    fn room_for(n: usize, len: usize) -> usize {
        n * (len + ENTRY_OVERHEAD_BYTES)
    }

    #[test]
    fn slot_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<BlockCache>();
        assert_send_sync::<Arc<BlockCache>>();
    }

    #[test]
    fn shard_counts() {
        assert_eq!(BlockCache::new(64 << 20).shard_count(), 16);
        assert_eq!(BlockCache::new(1 << 20).shard_count(), 4);
        assert_eq!(BlockCache::new(1000).shard_count(), 1);
        assert_eq!(BlockCache::new(0).shard_count(), 1);
        assert_eq!(BlockCache::with_shards(1 << 20, 5).shard_count(), 8);
        assert_eq!(BlockCache::with_shards(1 << 20, 0).shard_count(), 1);
        assert_eq!(BlockCache::new(64 << 20).stats().capacity_bytes, 64 << 20);
    }

    #[test]
    fn keys_spread_over_shards() {
        let cache = BlockCache::with_shards(16 << 20, 16);
        let mut per_shard = [0usize; 16];
        for table_id in 1..=4 {
            for block in 0..1000u64 {
                let shard = cache.shard(BlockKey::new(table_id, block * 4133));
                let index = cache
                    .shards
                    .iter()
                    .position(|s| std::ptr::eq(s, shard))
                    .expect("a shard of this cache");
                per_shard[index] += 1;
            }
        }
        // 4000 keys, 250 expected per shard.
        assert!(
            per_shard.iter().all(|&n| (150..350).contains(&n)),
            "{per_shard:?}"
        );
    }

    #[test]
    fn a_reservation_shrinks_the_cache_and_evicts_at_once() {
        let cache = BlockCache::with_shards(room_for(4, 100), 1);
        let keys = [1, 2, 3, 4].map(|offset| BlockKey::new(1, offset));
        for (i, &key) in keys.iter().enumerate() {
            assert!(cache.insert(key, block(100, i as u8)));
        }
        // Touch the first: the second and third are now the least recently used.
        assert!(cache.get(keys[0]).is_some());
        cache.set_reserved(room_for(2, 100));
        let stats = cache.stats();
        assert_eq!(stats.reserved_bytes, room_for(2, 100) as u64);
        assert_eq!((stats.entries, stats.evictions), (2, 2));
        assert!(stats.used_bytes + stats.reserved_bytes <= stats.capacity_bytes);
        assert!(cache.get(keys[0]).is_some() && cache.get(keys[3]).is_some());
        assert!(cache.get(keys[1]).is_none() && cache.get(keys[2]).is_none());
        // A new block still fits only by evicting another.
        assert!(cache.insert(keys[1], block(100, 9)));
        assert_eq!(cache.stats().entries, 2);
        // More than the budget leaves no room; releasing the reservation gives it all back.
        cache.set_reserved(usize::MAX);
        assert_eq!(cache.stats().entries, 0);
        assert!(
            !cache.insert(keys[0], block(100, 0)),
            "no room while all is lent"
        );
        cache.set_reserved(0);
        for (i, &key) in keys.iter().enumerate() {
            assert!(cache.insert(key, block(100, i as u8)));
        }
        assert_eq!(cache.stats().entries, 4);
        cache.check();
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let cache = BlockCache::with_shards(room_for(3, 100), 1);
        let [a, b, c, d] = [1, 2, 3, 4].map(|offset| BlockKey::new(1, offset));
        assert!(cache.insert(a, block(100, 1)));
        assert!(cache.insert(b, block(100, 2)));
        assert!(cache.insert(c, block(100, 3)));
        // Touch `a`: `b` is now the least recently used.
        assert_eq!(cache.get(a), Some(block(100, 1)));
        assert!(cache.insert(d, block(100, 4)));
        assert_eq!(cache.get(b), None, "least recently used is evicted");
        assert_eq!(cache.get(a), Some(block(100, 1)), "recently used survives");
        assert_eq!(cache.get(c), Some(block(100, 3)));
        assert_eq!(cache.get(d), Some(block(100, 4)));
        // Order now (most recent first): d, c, a. Two more evict a, then c.
        assert!(cache.insert(BlockKey::new(2, 1), block(100, 5)));
        assert_eq!(cache.get(a), None);
        assert!(cache.insert(BlockKey::new(2, 2), block(100, 6)));
        assert_eq!(cache.get(c), None);
        assert_eq!(cache.get(d), Some(block(100, 4)));
        cache.check();
    }

    #[test]
    fn a_big_block_evicts_as_many_as_needed() {
        let cache = BlockCache::with_shards(room_for(4, 100), 1);
        for offset in 0..4 {
            assert!(cache.insert(BlockKey::new(1, offset), block(100, 0)));
        }
        // Needs the room of two small entries plus 100 bytes: three go, oldest first.
        assert!(cache.insert(
            BlockKey::new(1, 9),
            block(2 * 100 + ENTRY_OVERHEAD_BYTES + 100, 9)
        ));
        let stats = cache.stats();
        assert_eq!((stats.evictions, stats.entries), (3, 2));
        assert_eq!(cache.get(BlockKey::new(1, 3)), Some(block(100, 0)));
        assert_eq!(cache.get(BlockKey::new(1, 0)), None);
        cache.check();
    }

    #[test]
    fn replacing_a_block_recharges_it() {
        let cache = BlockCache::with_shards(room_for(2, 100), 1);
        let key = BlockKey::new(1, 0);
        assert!(cache.insert(key, block(10, 1)));
        assert!(cache.insert(key, block(100, 2)));
        let stats = cache.stats();
        assert_eq!(stats.entries, 1);
        assert_eq!(stats.used_bytes, (100 + ENTRY_OVERHEAD_BYTES) as u64);
        assert_eq!(stats.evictions, 0, "a replacement is not an eviction");
        assert_eq!(cache.get(key), Some(block(100, 2)));
        cache.check();
    }

    #[test]
    fn oversized_blocks_are_not_cached() {
        // 4 shards of 1000 bytes each.
        let cache = BlockCache::with_shards(4000, 4);
        let key = BlockKey::new(1, 0);
        let fits = 1000 - ENTRY_OVERHEAD_BYTES;
        assert!(
            cache.insert(key, block(fits, 1)),
            "exactly a shard's capacity fits"
        );
        assert_eq!(cache.get(key), Some(block(fits, 1)));
        // One byte more than a shard holds (though less than the whole cache): refused, and
        // the older block under the key is gone rather than stale.
        assert!(!cache.insert(key, block(fits + 1, 2)));
        assert_eq!(cache.get(key), None);
        let stats = cache.stats();
        assert_eq!(
            (
                stats.rejected,
                stats.inserts,
                stats.entries,
                stats.used_bytes
            ),
            (1, 1, 0, 0)
        );
        // A zero-capacity cache caches nothing.
        let empty = BlockCache::new(0);
        assert!(!empty.insert(key, Bytes::new()));
        assert_eq!(empty.get(key), None);
        cache.check();
    }

    #[test]
    fn remove_table_drops_only_that_table() {
        let cache = BlockCache::with_shards(1 << 20, 4);
        for table_id in 1..=3 {
            for offset in 0..50 {
                cache.insert(
                    BlockKey::new(table_id, offset * 4096),
                    block(10, table_id as u8),
                );
            }
        }
        assert_eq!(cache.remove_table(2), 50);
        assert_eq!(cache.remove_table(2), 0);
        assert_eq!(cache.remove_table(99), 0);
        let stats = cache.stats();
        assert_eq!(stats.entries, 100);
        assert_eq!(stats.used_bytes, 100 * (10 + ENTRY_OVERHEAD_BYTES) as u64);
        for offset in 0..50 {
            assert_eq!(cache.get(BlockKey::new(2, offset * 4096)), None);
            assert_eq!(
                cache.get(BlockKey::new(1, offset * 4096)),
                Some(block(10, 1))
            );
            assert_eq!(
                cache.get(BlockKey::new(3, offset * 4096)),
                Some(block(10, 3))
            );
        }
        cache.check();
        // Freed slots are reused rather than growing the slot vectors (the same keys land in
        // the same shards).
        let slots_before: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").slots.len())
            .sum();
        for offset in 0..50 {
            cache.insert(BlockKey::new(2, offset * 4096), block(10, 2));
        }
        let slots_after: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").slots.len())
            .sum();
        assert_eq!(slots_before, slots_after);
        cache.check();
    }

    #[test]
    fn counters_are_exact() {
        let cache = BlockCache::with_shards(room_for(2, 50), 1);
        let [a, b, c] = [1, 2, 3].map(|offset| BlockKey::new(5, offset));
        assert_eq!(cache.get(a), None); // miss 1
        cache.insert(a, block(50, 1)); // insert 1
        cache.insert(b, block(50, 2)); // insert 2
        assert!(cache.get(a).is_some()); // hit 1
        cache.insert(c, block(50, 3)); // insert 3, evicts b (eviction 1)
        assert_eq!(cache.get(b), None); // miss 2
        assert!(cache.get(c).is_some()); // hit 2
        assert!(cache.get(a).is_some()); // hit 3
        cache.insert(b, block(50, 2)); // insert 4, evicts c (eviction 2)
        cache.insert(BlockKey::new(5, 4), block(10_000, 0)); // rejected 1
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 3,
                misses: 2,
                inserts: 4,
                evictions: 2,
                rejected: 1,
                used_bytes: room_for(2, 50) as u64,
                capacity_bytes: room_for(2, 50) as u64,
                reserved_bytes: 0,
                entries: 2,
                mapped_releases: 0,
            }
        );
        assert_eq!(cache.remove_table(5), 2);
        let stats = cache.stats();
        assert_eq!(
            (stats.used_bytes, stats.entries, stats.evictions),
            (0, 0, 2)
        );
    }

    #[test]
    fn eight_threads_share_a_cache() {
        const THREADS: u64 = 8;
        const OPS: u64 = 20_000;
        // Small enough to evict constantly: about 4 KiB per shard, 16 shards.
        let cache = Arc::new(BlockCache::with_shards(64 << 10, 16));
        let totals: Vec<(u64, u64, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let cache = Arc::clone(&cache);
                    scope.spawn(move || {
                        let (mut gets, mut hits, mut admitted) = (0, 0, 0);
                        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (thread + 1);
                        for _ in 0..OPS {
                            // xorshift64
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            let table_id = state % 4;
                            let offset = (state >> 8) % 200;
                            let key = BlockKey::new(table_id, offset);
                            // A block's bytes name its key, so a mix-up cannot go unnoticed.
                            let len = 1 + (offset as usize % 7) * 40;
                            let expected = block(len, (table_id * 200 + offset) as u8);
                            match state >> 60 {
                                0 if offset.is_multiple_of(50) => {
                                    cache.remove_table(table_id);
                                }
                                0..=9 => {
                                    gets += 1;
                                    if let Some(found) = cache.get(key) {
                                        hits += 1;
                                        assert_eq!(found, expected, "{key:?}");
                                    }
                                }
                                _ => {
                                    if cache.insert(key, expected) {
                                        admitted += 1;
                                    }
                                }
                            }
                        }
                        (gets, hits, admitted)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread panicked"))
                .collect()
        });
        let gets: u64 = totals.iter().map(|t| t.0).sum();
        let hits: u64 = totals.iter().map(|t| t.1).sum();
        let admitted: u64 = totals.iter().map(|t| t.2).sum();
        let stats = cache.stats();
        assert!(gets > 0 && hits > 0 && stats.evictions > 0, "{stats:?}");
        assert_eq!(stats.hits + stats.misses, gets, "no lost counts");
        assert_eq!(stats.hits, hits);
        assert_eq!(stats.inserts, admitted);
        assert!(stats.used_bytes <= stats.capacity_bytes);
        cache.check();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert {
            table_id: u64,
            offset: u64,
            len: usize,
            fill: u8,
        },
        Get {
            table_id: u64,
            offset: u64,
        },
        RemoveTable {
            table_id: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..3u64, 0..12u64, 0..400usize, any::<u8>())
                .prop_map(|(table_id, offset, len, fill)| Op::Insert { table_id, offset, len, fill }),
            5 => (0..3u64, 0..12u64).prop_map(|(table_id, offset)| Op::Get { table_id, offset }),
            1 => (0..3u64).prop_map(|table_id| Op::RemoveTable { table_id }),
        ]
    }

    /// A plain LRU over a `VecDeque` (most recent first), O(n) per step: the reference that a
    /// one-shard cache must match exactly.
    struct ModelLru {
        order: VecDeque<(BlockKey, Bytes)>,
        capacity_bytes: usize,
    }

    impl ModelLru {
        fn used(&self) -> usize {
            self.order
                .iter()
                .map(|(_, v)| v.len() + ENTRY_OVERHEAD_BYTES)
                .sum()
        }

        fn take(&mut self, key: BlockKey) -> Option<Bytes> {
            let at = self.order.iter().position(|(k, _)| *k == key)?;
            self.order.remove(at).map(|(_, v)| v)
        }

        fn get(&mut self, key: BlockKey) -> Option<Bytes> {
            let value = self.take(key)?;
            self.order.push_front((key, value.clone()));
            Some(value)
        }

        fn insert(&mut self, key: BlockKey, value: Bytes) {
            self.take(key);
            let charge = value.len() + ENTRY_OVERHEAD_BYTES;
            if charge > self.capacity_bytes {
                return;
            }
            while self.used() + charge > self.capacity_bytes {
                self.order.pop_back();
            }
            self.order.push_front((key, value));
        }
    }

    proptest! {
        /// Any sharding: never over budget, and a get returns exactly the last block inserted
        /// under its key (not removed since), or nothing.
        #[test]
        fn budget_holds_and_gets_are_never_stale(
            shards in prop_oneof![Just(1usize), Just(2), Just(4), Just(16)],
            capacity in 0..4000usize,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let cache = BlockCache::with_shards(capacity, shards);
            let mut last: HashMap<BlockKey, Bytes> = HashMap::new();
            let mut gets = 0;
            for op in ops {
                match op {
                    Op::Insert { table_id, offset, len, fill } => {
                        let key = BlockKey::new(table_id, offset);
                        let value = block(len, fill);
                        cache.insert(key, value.clone());
                        last.insert(key, value);
                    }
                    Op::Get { table_id, offset } => {
                        gets += 1;
                        let key = BlockKey::new(table_id, offset);
                        if let Some(found) = cache.get(key) {
                            prop_assert_eq!(Some(&found), last.get(&key));
                        }
                    }
                    Op::RemoveTable { table_id } => {
                        cache.remove_table(table_id);
                        last.retain(|key, _| key.table_id != table_id);
                    }
                }
                let stats = cache.stats();
                prop_assert!(stats.used_bytes <= stats.capacity_bytes, "{:?}", stats);
            }
            let stats = cache.stats();
            prop_assert_eq!(stats.hits + stats.misses, gets);
            cache.check();
        }

        /// One shard behaves exactly like a textbook LRU with a byte budget.
        #[test]
        fn one_shard_matches_a_model_lru(
            capacity in 0..3000usize,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let cache = BlockCache::with_shards(capacity, 1);
            let mut model = ModelLru { order: VecDeque::new(), capacity_bytes: capacity };
            for op in ops {
                match op {
                    Op::Insert { table_id, offset, len, fill } => {
                        let key = BlockKey::new(table_id, offset);
                        cache.insert(key, block(len, fill));
                        model.insert(key, block(len, fill));
                    }
                    Op::Get { table_id, offset } => {
                        let key = BlockKey::new(table_id, offset);
                        prop_assert_eq!(cache.get(key), model.get(key));
                    }
                    Op::RemoveTable { table_id } => {
                        cache.remove_table(table_id);
                        model.order.retain(|(key, _)| key.table_id != table_id);
                    }
                }
                let stats = cache.stats();
                prop_assert_eq!(stats.used_bytes, model.used() as u64);
                prop_assert_eq!(stats.entries, model.order.len() as u64);
            }
            cache.check();
        }
    }
}
