//! The memtable's index: a skiplist of encoded internal keys whose nodes live in an arena, with
//! a hash index of user keys and short chains of versions beside it.
//!
//! One node holds everything of one version in one piece of memory: a 40-byte header (the
//! key's 16-byte order prefix, the key and value lengths, the tower's height, the version
//! chain's link), the tower of `height` next-pointers, the encoded internal key and the value.
//! Nodes are carved out of 2 MiB chunks (anonymous maps that ask for transparent huge pages)
//! by a bump allocator (an entry above 512 KiB gets an allocation of its own), so an insert
//! costs no call to the allocator most of the time, a search touches one cache line and few
//! TLB entries per node it passes, and the whole memtable is freed at once when it is dropped
//! (its chunks, up to 64 MiB of them, kept for the next memtable: `SPARE_CHUNKS`).
//!
//! # Lists, chains and the hash index
//!
//! A search down a skiplist of a 64 MiB memtable passes some 20 to 40 nodes, the lower ones
//! cache misses: that walk was half the CPU time of a shard answering pipelined GETs, and a
//! third of it answering SETs. Two structures beside the list take most of it away:
//!
//! - **Version chains.** A newer version of a user key already in the list does not go into
//!   the list: it is chained to the key's first node in the list (its *owner*), in a sorted
//!   singly linked list that comes, in the list's order, right before the owner. A chain takes
//!   at most [`MAX_CHAIN`] versions at its front; the next newest version becomes a node of the
//!   list again (and the owner of a new chain), so when versions arrive oldest first, as the
//!   engine inserts them, a reader at an old snapshot never walks more than [`MAX_CHAIN`]
//!   versions past a node the search can reach. (A version older than some of a chain must go
//!   into it, so versions inserted out of order can make a chain longer.)
//! - **The hash index** maps each user key in the list to its owner: open addressing with
//!   linear probing, at most 3/4 full, each slot a node's address with 16 bits of the key's
//!   hash above it (where the address leaves them free), so a probe rarely touches a node that
//!   is not the one it looks for. A point read ([`SkipList::first_of_user_key`]) and the insert
//!   of a newer version of a present key cost a hash and two or three cache misses instead of
//!   a walk down the list. A full table is replaced by one twice its size; replaced tables
//!   stay allocated (a reader may still be probing them) until the list drops, and all of them
//!   are counted in [`SkipList::index_bytes`].
//!
//! The order of entries is [`compare_encoded`] (user key ascending, then newest version
//! first), decided first by the user key's 16-byte order prefix kept in the header (see
//! [`order_prefix`]). For two neighbours `P`, `X` in the list, every entry of `X`'s chain lies
//! after `P` and not after `X`; the seeks below rely on that.
//!
//! # Concurrency
//!
//! Nothing is ever removed from the list, which is what makes the concurrency simple:
//!
//! - **One writer at a time.** Inserts take the list's writer lock (the LSM engine already
//!   serialises its writers, so the lock is never contended there). The writer builds the
//!   node completely, then links it (in the list bottom level first, or into a chain), each
//!   link a release store; a new index table is filled before it is published.
//! - **Searches planned outside the lock.** The search that links a key new to the list is
//!   most of an insert's cost, nearly all of it cache misses. For a batch, the engine first
//!   calls [`SkipList::plan_inserts`], a reader: it walks down the list for all the batch's
//!   new keys at once, step by step together, each step prefetching what the next compares,
//!   and records where each walk stepped down at each level. It runs before the engine takes
//!   its writer lock, beside other writers. [`SkipList::insert_planned`] then searches from
//!   those nodes: they are still in the list and still below the key (nothing is removed), so
//!   inserts made since the plan can only lie to their right, a step or two. In
//!   `examples/batched_puts.rs` (batches of 16, 100-byte values), a put of a new key went from
//!   1,343–1,491 to 998–1,033 ns, and of random keys out of 100,000 from 698–746 to 641–699 ns.
//! - **Readers take no lock.** They follow next-pointers, chain links, the index table and its
//!   slots with acquire loads, so a node they reach is fully written. A node linked at level 0
//!   or into a chain is in the list; upper levels are only shortcuts, so a reader racing an
//!   insert either sees the new node or does not, and finds the right answer both ways. A
//!   version inserted before a reader starts (with a happens-before edge, such as the engine's
//!   publication of its sequence number) is found through whichever index table the reader
//!   loads: a replaced table holds every key inserted before its replacement.
//! - Memory is reclaimed only when the whole list is dropped, which the borrow checker ties to
//!   the end of every reader ([`Cursor`] borrows the list).
//!
//! Height: a node is `h` levels high with probability `(1/2)^h`, at most [`MAX_HEIGHT`]
//! (24): searches stay logarithmic up to some sixteen million entries. One node in two rather
//! than one in four continuing upward costs a node about 5 more bytes of tower on average; a
//! search then takes one step along each level instead of three (on average), over twice as
//! many levels. The upper levels are few nodes, which stay in the CPU caches; what a search
//! pays for is its steps along the lowest levels, each a cache miss. Measured with
//! `storage-bench --workload fillrandom` (1M random keys, one new node each), in four
//! alternating pairs: 267k → 304k puts/s (medians).
//!
//! This is one of the three places in the engine with `unsafe` code (the others map SSTables
//! and the WAL's append window):
//! every block says why it is sound, and the tests below exercise it (a sorted model in both
//! index layouts, entries larger than a chunk, long chains, readers racing a writer).
#![expect(
    unsafe_code,
    reason = "an arena of variable-sized nodes linked by atomic pointers"
)]

use std::alloc::{self, Layout};
use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, PoisonError};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::key::{compare_encoded, order_prefix, trailer, user_key, TRAILER_LEN};

/// The tallest tower.
pub const MAX_HEIGHT: usize = 24;

/// Most versions added at the front of one chain before the next newest version becomes a
/// node of the list.
pub const MAX_CHAIN: u16 = 16;

/// One node in `BRANCHING` of a level is also in the level above.
const BRANCHING: u64 = 2;

/// Size of an arena chunk: one transparent huge page on x86-64 Linux.
const CHUNK_BYTES: usize = 2 << 20;

/// Nodes larger than this get an allocation of their own rather than the rest of a chunk.
const LARGE_NODE_BYTES: usize = CHUNK_BYTES / 4;

/// Most chunks kept in [`SPARE_CHUNKS`]: 64 MiB, one memtable of the default budget.
const MAX_SPARE_CHUNKS: usize = 32;

/// Chunks of dropped lists, for the next lists to reuse. A memtable is dropped after its flush
/// and a fresh one fills at the same pace: reusing the flushed one's chunks spares the kernel
/// faulting in and zeroing a huge page per chunk, which was 5% of a shard's CPU time under a
/// stream of SETs. Kept for the whole process, at most [`MAX_SPARE_CHUNKS`].
static SPARE_CHUNKS: Mutex<Vec<memmap2::MmapMut>> = Mutex::new(Vec::new());

/// Slots of the first index table (8 KiB) when no size is expected; each replacement doubles
/// the table.
const FIRST_INDEX_SLOTS: usize = 1024;

/// Addresses below `1 << ADDRESS_BITS` leave the slot's top 16 bits to the hash tag.
const ADDRESS_BITS: u32 = 48;
const ADDRESS_MASK: u64 = (1 << ADDRESS_BITS) - 1;

/// The fixed part of a node; the tower, the key and the value follow it in memory.
#[repr(C)]
struct Node {
    /// The first 16 bytes of the user key, zero-padded, big-endian, as two words.
    prefix: [u64; 2],
    /// Length of the encoded internal key.
    key_len: u32,
    /// Number of next-pointers in the tower: 0 for a version made to be chained, which is
    /// never in the list. (A node built for the list may still end in a chain, see
    /// [`SkipList::insert`]; its tower is then never followed.)
    height: u16,
    /// In a node of the list: versions added at the front of its chain since it was linked
    /// (the writer's counter for [`MAX_CHAIN`]).
    chained: AtomicU16,
    /// Length of the value.
    value_len: u64,
    /// In a node of the list: the first (newest) version of its chain, null if none. In a
    /// chained version: the next version of the chain, null for the last one (which the owner
    /// follows).
    chain: AtomicPtr<Node>,
}

const HEADER_BYTES: usize = size_of::<Node>();
const POINTER_BYTES: usize = size_of::<AtomicPtr<Node>>();

// The tower right after the header must be aligned for its pointers.
const _: () = assert!(HEADER_BYTES.is_multiple_of(align_of::<AtomicPtr<Node>>()));
const _: () = assert!(align_of::<Node>() == 8);
const _: () = assert!(HEADER_BYTES == 40);

/// Bytes a node with a tower of `height` and the given key and value lengths occupies,
/// rounded up to 8 so that the next node is aligned.
fn node_bytes(height: usize, key_len: usize, value_len: usize) -> usize {
    let raw = HEADER_BYTES + height * POINTER_BYTES + key_len + value_len;
    raw.next_multiple_of(8)
}

/// A key to search for: an encoded internal key and its prefix.
#[derive(Clone, Copy)]
pub struct Probe<'k> {
    prefix: [u64; 2],
    encoded: &'k [u8],
}

impl<'k> Probe<'k> {
    /// A probe for the encoded internal key `encoded`.
    pub fn new(encoded: &'k [u8]) -> Self {
        Probe {
            prefix: order_prefix(user_key(encoded)),
            encoded,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Inserts on this thread whose search started from a plan's spot (tests check that plans
    /// are used, not only that they do no harm).
    static SEARCHES_FROM_SPOTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Nodes stepped over by searches from spots on this thread (tests).
    static SPOT_STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Index slots stepped past by probes on this thread (tests).
    static PROBE_STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Where the inserts of a batch of keys go, found for all of them at once by
/// [`SkipList::plan_inserts`] and used by [`SkipList::insert_planned`].
pub struct InsertPlan<'a> {
    list: &'a SkipList,
    /// For each key planned, its entry in `spots`; `None` for a key the hash index held.
    spot_of: Vec<Option<usize>>,
    /// For each key walked for, the node where its walk stepped down at each level (the head
    /// above the level it started at).
    spots: Vec<[*const Node; MAX_HEIGHT]>,
}

impl fmt::Debug for InsertPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InsertPlan")
            .field("keys", &self.spot_of.len())
            .field("walked", &self.spots.len())
            .finish()
    }
}

/// One key's walk down the list in [`SkipList::plan_inserts`].
struct Walk<'k> {
    user_key: &'k [u8],
    prefix: [u64; 2],
    /// The last node passed at `level` (the head at first): below the key.
    at: *const Node,
    /// `at`'s successor at `level` (null at the end), prefetched: what the next step compares.
    next: *const Node,
    level: usize,
    spot: [*const Node; MAX_HEIGHT],
}

impl Walk<'_> {
    /// Compares `next` with the key (the prefetch of the last step has loaded it by now) and
    /// moves onto it, or steps down until a link leads to a node not compared yet, then
    /// prefetches the new `next`. Returns `true` once the walk has stepped down from level 0.
    ///
    /// # Safety
    /// `at` must be the head or a published node of a list, reached at `level`, and `next`
    /// its successor there; the list must stay alive while the walk runs.
    unsafe fn step(&mut self) -> bool {
        loop {
            // SAFETY: a non-null `next` is a published node of the list.
            if !self.next.is_null()
                && unsafe { user_key_below(self.next, &self.prefix, self.user_key) }
            {
                self.at = self.next;
                // SAFETY: `at` was reached at `level`, so its tower is taller than `level`.
                self.next = unsafe { (*tower(self.at, self.level)).load(AtomicOrdering::Acquire) };
                prefetch(self.next, true);
                return false;
            }
            if let Some(slot) = self.spot.get_mut(self.level) {
                *slot = self.at;
            }
            if self.level == 0 {
                return true;
            }
            let passed = self.next;
            self.level -= 1;
            // SAFETY: a tower taller than `level + 1` is taller than `level`.
            self.next = unsafe { (*tower(self.at, self.level)).load(AtomicOrdering::Acquire) };
            // The same successor one level down is loaded already (and known not below).
            if self.next != passed {
                prefetch(self.next, true);
                return false;
            }
        }
    }
}

/// Seed of the hash index's hash: the cluster places keys on shards by the unseeded `xxh3_64`
/// of the key, so a shard's keys all hash into the arcs of the ring it owns; the index must
/// not use that hash, or its probes would start only in the matching stretches of the table
/// and run long (a shard owning a quarter of the ring would fill a quarter of the slots).
const INDEX_SEED: u64 = 0x4c69_6d65_4442_4958;

/// The hash the index places `user_key` by.
fn index_hash(user_key: &[u8]) -> u64 {
    xxh3_64_with_seed(user_key, INDEX_SEED)
}

/// One table of the hash index: user key → its owner node (see the [module docs](self)).
struct IndexTable {
    /// Whether each slot carries a 16-bit hash tag above a 48-bit address. A table is built
    /// untagged once an address does not fit in 48 bits.
    tagged: bool,
    /// 0 for a free slot, else the encoded address of an owner.
    slots: Box<[AtomicU64]>,
}

impl IndexTable {
    fn new(slots: usize, tagged: bool) -> Self {
        IndexTable {
            tagged,
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bytes(&self) -> usize {
        self.slots.len() * size_of::<AtomicU64>()
    }

    /// Whether the table holds as many owners as it should: 3/4 of its slots.
    fn is_full(&self, owners: usize) -> bool {
        owners * 4 >= self.slots.len() * 3
    }

    /// The slot where a probe for `hash` starts: the hash's high bits scaled to the table's
    /// length (which need not be a power of two).
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// The hash's low 16 bits (independent of [`IndexTable::home`]), never 0, so that a
    /// tagged slot is never 0.
    fn tag(hash: u64) -> u64 {
        (hash & 0xffff).max(1)
    }

    fn encode(&self, node: *const Node, hash: u64) -> u64 {
        let address = node.expose_provenance() as u64;
        if self.tagged {
            address | Self::tag(hash) << ADDRESS_BITS
        } else {
            address
        }
    }

    fn decode(&self, slot: u64) -> *const Node {
        let address = if self.tagged {
            slot & ADDRESS_MASK
        } else {
            slot
        };
        ptr::with_exposed_provenance(address as usize)
    }

    /// Walks the slots of a probe for `hash` from its home slot: returns the first slot whose
    /// tag matches (in an untagged table, the first used slot) and whose node `wanted`
    /// accepts, with that node; or the first free slot, with null.
    fn walk(&self, hash: u64, wanted: impl Fn(*const Node) -> bool) -> (&AtomicU64, *const Node) {
        let tag = Self::tag(hash);
        let mut i = self.home(hash);
        // The table always has free slots, so the loop ends at one if not before.
        loop {
            let Some(slot) = self.slots.get(i) else {
                i = 0;
                continue;
            };
            let value = slot.load(AtomicOrdering::Acquire);
            if value == 0 {
                return (slot, ptr::null());
            }
            if !self.tagged || value >> ADDRESS_BITS == tag {
                let node = self.decode(value);
                if wanted(node) {
                    return (slot, node);
                }
            }
            i += 1;
            #[cfg(test)]
            PROBE_STEPS.with(|n| n.set(n.get() + 1));
        }
    }

    /// The slot holding `user_key`'s owner, or the free slot where it would go.
    fn probe(&self, user_key: &[u8], hash: u64) -> (&AtomicU64, *const Node) {
        // SAFETY: a slot holds the address of a published node of the list that owns the
        // table, alive as long as the list.
        self.walk(hash, |node| unsafe { user_key_of(node) } == user_key)
    }

    /// The owner of `user_key`, null if the list holds no version of it.
    fn find(&self, user_key: &[u8], hash: u64) -> *const Node {
        self.probe(user_key, hash).1
    }

    /// Where the slots of a probe for `hash` start.
    fn home_slot(&self, hash: u64) -> *const AtomicU64 {
        self.slots.as_ptr().wrapping_add(self.home(hash))
    }

    /// The node a probe for `hash` would compare first, null if none: a hint to prefetch,
    /// found without touching any node.
    fn candidate(&self, hash: u64) -> *const Node {
        self.walk(hash, |_| true).1
    }

    /// Starts loading, for each of `hashes`, its home slot, then the node its probe would
    /// compare first: the first two steps of a batch of probes, their misses overlapped.
    fn prefetch_probes(&self, hashes: &[u64]) {
        for &hash in hashes {
            prefetch(self.home_slot(hash), false);
        }
        for &hash in hashes {
            prefetch(self.candidate(hash), true);
        }
    }
}

/// Asks the CPU to start loading the cache line at `at` (and, with `two_lines`, the next one
/// too) without waiting for it: lookups of a batch of keys issue the loads of one step for
/// every key before they use any, so that their cache misses overlap.
fn prefetch<T>(at: *const T, two_lines: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = at.cast::<i8>();
        // SAFETY: a prefetch is a hint: it never faults and changes no memory, whatever the
        // address (`wrapping_add` makes no claim about it either), and SSE, the intrinsic's
        // target feature, is part of every x86-64 target.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at);
            if two_lines {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, two_lines);
}

/// A fresh chunk: an anonymous map of [`CHUNK_BYTES`] that asks for transparent huge pages.
fn map_chunk() -> std::io::Result<memmap2::MmapMut> {
    let chunk = memmap2::MmapMut::map_anon(CHUNK_BYTES)?;
    #[cfg(target_os = "linux")]
    if let Err(error) = chunk.advise(memmap2::Advice::HugePage) {
        tracing::debug!(%error, "madvise(MADV_HUGEPAGE) on a memtable chunk failed");
    }
    Ok(chunk)
}

/// The bump allocator behind the nodes, and the state only the writer touches.
struct Writer {
    /// Every heap allocation (the head, large nodes, chunks that could not be mapped), freed
    /// when the list drops.
    allocations: Vec<(NonNull<u8>, Layout)>,
    /// The chunks, anonymous maps unmapped when the list drops.
    chunks: Vec<memmap2::MmapMut>,
    /// The free rest of the current chunk.
    cursor: *mut u8,
    remaining: usize,
    /// xorshift64 state for tower heights.
    rng: u64,
    /// Every index table built, the current one last; freed when the list drops.
    #[expect(
        clippy::vec_box,
        reason = "readers hold a table's address, which must not move when the Vec grows"
    )]
    tables: Vec<Box<IndexTable>>,
    /// Owners in the current table.
    indexed: usize,
    /// Slots of the first table: room for the keys the list is expected to hold.
    first_slots: usize,
    /// Whether new tables may carry hash tags (tests turn them off to exercise both layouts).
    tag_slots: bool,
    /// Tests: treat every new node's address as too high for a tag, as a 57-bit address space
    /// or a tagged heap pointer would be.
    #[cfg(test)]
    addresses_above_tags: bool,
}

impl Writer {
    fn allocate(&mut self, bytes: usize) -> NonNull<u8> {
        debug_assert!(bytes.is_multiple_of(8));
        if bytes > LARGE_NODE_BYTES {
            return self.allocate_fresh(bytes);
        }
        if bytes > self.remaining {
            let chunk = self.allocate_chunk();
            self.cursor = chunk.as_ptr();
            self.remaining = CHUNK_BYTES;
        }
        let at = self.cursor;
        // SAFETY: `bytes <= remaining`, so `at + bytes` stays within (or one past the end of)
        // the current chunk.
        self.cursor = unsafe { at.add(bytes) };
        self.remaining -= bytes;
        // `at` points into a live allocation, so it is not null.
        NonNull::new(at).unwrap_or_else(|| self.allocate_fresh(bytes))
    }

    /// A new chunk of [`CHUNK_BYTES`]: an anonymous map that asks for transparent huge pages
    /// (`MADV_HUGEPAGE`), so that a search's random walk over a 64 MiB memtable misses the
    /// TLB far less often than over 4 KiB pages; heap memory if the map cannot be made.
    fn allocate_chunk(&mut self) -> NonNull<u8> {
        let spare = SPARE_CHUNKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match spare.map_or_else(map_chunk, Ok) {
            Ok(mut chunk) => {
                let at = NonNull::new(chunk.as_mut_ptr());
                self.chunks.push(chunk);
                at.unwrap_or_else(|| self.allocate_fresh(CHUNK_BYTES))
            }
            Err(_) => self.allocate_fresh(CHUNK_BYTES),
        }
    }

    /// A new allocation of `bytes` (a positive multiple of 8), 8-byte aligned.
    fn allocate_fresh(&mut self, bytes: usize) -> NonNull<u8> {
        let layout = match Layout::from_size_align(bytes.max(8), 8) {
            Ok(layout) => layout,
            // Only a size near usize::MAX fails here: treat it as the allocation failure it is.
            Err(_) => alloc::handle_alloc_error(Layout::new::<u64>()),
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(at) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        self.allocations.push((at, layout));
        at
    }

    fn random_height(&mut self) -> usize {
        let mut height = 1;
        while height < MAX_HEIGHT {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            if !self.rng.is_multiple_of(BRANCHING) {
                break;
            }
            height += 1;
        }
        height
    }

    /// A new node with a tower of `height` (all links null, not yet reachable) holding the
    /// encoded key `user_key` + `trailer` and `value`, and the bytes it takes.
    fn build_node(
        &mut self,
        height: usize,
        user_key: &[u8],
        trailer: &[u8; TRAILER_LEN],
        value: &[u8],
    ) -> (*mut Node, usize) {
        let key_len = user_key.len() + TRAILER_LEN;
        let bytes = node_bytes(height, key_len, value.len());
        let node = self.allocate(bytes).cast::<Node>().as_ptr();
        // SAFETY: `node` is a fresh, 8-byte aligned region of `bytes`, large enough for the
        // header, a tower of `height`, the key and the value (see `node_bytes`); nothing else
        // can reach it until the caller links it.
        unsafe {
            node.write(Node {
                prefix: order_prefix(user_key),
                // Keys are bounded far below 4 GiB by the servers' limits.
                key_len: u32::try_from(key_len).unwrap_or(u32::MAX),
                height: height as u16,
                chained: AtomicU16::new(0),
                value_len: value.len() as u64,
                chain: AtomicPtr::new(ptr::null_mut()),
            });
            for level in 0..height {
                tower_slot(node, level).write(AtomicPtr::new(ptr::null_mut()));
            }
            let key_at = node.cast::<u8>().add(HEADER_BYTES + height * POINTER_BYTES);
            ptr::copy_nonoverlapping(user_key.as_ptr(), key_at, user_key.len());
            let trailer_at = key_at.add(user_key.len());
            ptr::copy_nonoverlapping(trailer.as_ptr(), trailer_at, TRAILER_LEN);
            ptr::copy_nonoverlapping(value.as_ptr(), trailer_at.add(TRAILER_LEN), value.len());
        }
        (node, bytes)
    }

    /// The owner of `user_key` in the current index table, null if none.
    fn owner(&self, user_key: &[u8], hash: u64) -> *const Node {
        self.tables
            .last()
            .map_or(ptr::null(), |table| table.find(user_key, hash))
    }
}

/// An ordered set of `(encoded internal key, value)` entries (see the [module docs](self)).
pub struct SkipList {
    /// The head node: a tower of [`MAX_HEIGHT`] and no key; never a result.
    head: NonNull<Node>,
    /// The tallest tower in use; searches start there.
    height: AtomicUsize,
    len: AtomicUsize,
    /// Bytes of all nodes (headers, towers, keys, values), head excluded.
    node_bytes: AtomicUsize,
    /// The current table of the hash index; null while the list is empty.
    index: AtomicPtr<IndexTable>,
    /// Bytes of every index table built.
    index_bytes: AtomicUsize,
    writer: Mutex<Writer>,
}

// SAFETY: the list owns its arena and index tables (freed only in `drop`, which needs
// exclusive access). Nodes are written only by the holder of `writer` before they are
// published with a release store, and never changed afterwards except for their atomics (tower
// pointers, chain link, chain counter); index tables likewise, but for their atomic slots.
// Readers only follow pointers loaded with acquire. The raw pointers in `Writer` are only used
// under its mutex.
unsafe impl Send for SkipList {}
// SAFETY: see `Send`: shared access is reads of published nodes and tables and atomics, plus
// inserts serialised by the `writer` mutex.
unsafe impl Sync for SkipList {}

impl Default for SkipList {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SkipList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkipList")
            .field("len", &self.len())
            .field("node_bytes", &self.node_bytes())
            .field("index_bytes", &self.index_bytes())
            .finish()
    }
}

impl SkipList {
    /// An empty list.
    pub fn new() -> Self {
        Self::with_expected_keys(0)
    }

    /// An empty list whose hash index is sized for `keys` distinct user keys (it grows past
    /// them if need be, and nothing is allocated before the first insert): a memtable that
    /// replaces a full one expects about as many keys, and is spared the index's growth.
    pub fn with_expected_keys(keys: usize) -> Self {
        Self::build(keys, true)
    }

    fn build(keys: usize, tag_slots: bool) -> Self {
        let mut writer = Writer {
            allocations: Vec::new(),
            chunks: Vec::new(),
            cursor: ptr::null_mut(),
            remaining: 0,
            rng: 0x2545_f491_4f6c_dd1d,
            tables: Vec::new(),
            indexed: 0,
            // Two thirds full at `keys`: an eighth more keys still fit before the table grows.
            first_slots: keys.saturating_mul(3).div_ceil(2).max(FIRST_INDEX_SLOTS),
            tag_slots,
            #[cfg(test)]
            addresses_above_tags: false,
        };
        // The head on the heap: an empty memtable maps no chunk.
        let head = writer
            .allocate_fresh(node_bytes(MAX_HEIGHT, 0, 0))
            .cast::<Node>();
        // SAFETY: `head` is a fresh, aligned allocation large enough for a header and a tower
        // of MAX_HEIGHT; it is written before anything can read it.
        unsafe {
            head.as_ptr().write(Node {
                prefix: [0; 2],
                key_len: 0,
                height: MAX_HEIGHT as u16,
                chained: AtomicU16::new(0),
                value_len: 0,
                chain: AtomicPtr::new(ptr::null_mut()),
            });
            for level in 0..MAX_HEIGHT {
                tower_slot(head.as_ptr(), level).write(AtomicPtr::new(ptr::null_mut()));
            }
        }
        SkipList {
            head,
            height: AtomicUsize::new(1),
            len: AtomicUsize::new(0),
            node_bytes: AtomicUsize::new(0),
            index: AtomicPtr::new(ptr::null_mut()),
            index_bytes: AtomicUsize::new(0),
            writer: Mutex::new(writer),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len.load(AtomicOrdering::Acquire)
    }

    /// Whether the list has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the entries' nodes: the memory the list costs, but for the unused tail of
    /// its current chunk and the hash index ([`SkipList::index_bytes`]).
    pub fn node_bytes(&self) -> usize {
        self.node_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Whether the current index table tags its slots.
    #[cfg(test)]
    fn index_tagged(&self) -> bool {
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer.tables.last().is_some_and(|t| t.tagged)
    }

    /// Bytes held by the hash index: every table built, the replaced ones included.
    pub fn index_bytes(&self) -> usize {
        self.index_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Number of distinct user keys.
    pub fn keys(&self) -> usize {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .indexed
    }

    /// Inserts the entry whose encoded internal key is `user_key` followed by `trailer`, with
    /// `value`, and returns the bytes its node takes. An entry whose key equals one already
    /// present goes before it, so a search finds the newer insert first.
    ///
    /// A version older than the key's owner, or newer than all when the owner's chain is full,
    /// is linked into the list by a search from the top, unless the search ends at a node of
    /// the same user key whose chain must hold it (versions inserted out of order); any other
    /// version of a present key goes into the owner's chain without a search.
    pub fn insert(&self, user_key: &[u8], trailer: &[u8; TRAILER_LEN], value: &[u8]) -> usize {
        self.insert_from(None, user_key, trailer, value)
    }

    /// [`SkipList::insert`] of the `i`-th key `plan` was made for: a key new to the list is
    /// linked by a search that starts at each level where the plan's walk stepped down, not
    /// from the top. A plan of another list, or a key the plan did not walk for, gets the
    /// search from the top.
    pub fn insert_planned(
        &self,
        plan: &InsertPlan<'_>,
        i: usize,
        user_key: &[u8],
        trailer: &[u8; TRAILER_LEN],
        value: &[u8],
    ) -> usize {
        let spot = ptr::eq(plan.list, self)
            .then(|| plan.spot_of.get(i).copied().flatten())
            .flatten()
            .and_then(|s| plan.spots.get(s));
        self.insert_from(spot, user_key, trailer, value)
    }

    /// [`SkipList::insert`], a search for a key new to the list starting from `spot` if given
    /// (see [`SkipList::search_from`]).
    fn insert_from(
        &self,
        spot: Option<&[*const Node; MAX_HEIGHT]>,
        user_key: &[u8],
        trailer: &[u8; TRAILER_LEN],
        value: &[u8],
    ) -> usize {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let hash = index_hash(user_key);
        let owner = writer.owner(user_key, hash);
        let version = u64::from_le_bytes(*trailer);
        // SAFETY: the index holds published nodes of this list.
        let owner_version = (!owner.is_null()).then(|| unsafe { node_trailer(owner) });
        if let Some(owner_version) = owner_version {
            // SAFETY: as above.
            let first = unsafe { (*owner).chain.load(AtomicOrdering::Acquire) };
            // SAFETY: `first` is null or a published chained version.
            let newest = first.is_null() || version > unsafe { node_trailer(first) };
            // SAFETY: as above.
            let full = unsafe { (*owner).chained.load(AtomicOrdering::Relaxed) } >= MAX_CHAIN;
            if version >= owner_version && !(newest && full) {
                let (node, bytes) = writer.build_node(0, user_key, trailer, value);
                // SAFETY: `owner` is a published node of the list; `node` is fully written and
                // its version sorts before the owner's.
                unsafe { self.chain_into(owner, node, newest) };
                return self.count(bytes);
            }
        }

        let height = writer.random_height();
        let (node, bytes) = writer.build_node(height, user_key, trailer, value);
        // SAFETY: `node` is fully written above and stays alive as long as `self`.
        let probe = unsafe { probe_of(node) };
        let mut prev = [self.head.as_ptr().cast_const(); MAX_HEIGHT];
        // SAFETY: a spot comes from a plan of this list (see `insert_planned`): the head or
        // published nodes, each reached at its level.
        let next = match spot.filter(|spot| unsafe { self.spot_is_below(spot, &probe) }) {
            // SAFETY: as above, and the spot is below `probe` (checked).
            Some(spot) => {
                #[cfg(test)]
                SEARCHES_FROM_SPOTS.with(|n| n.set(n.get() + 1));
                unsafe { self.search_from(spot, &probe, &mut prev) }
            }
            None => {
                self.search(|n| n.cmp_probe(&probe) == Ordering::Less, &mut prev)
                    .1
            }
        };
        if !next.is_null() {
            // SAFETY: `next` is a published node of the list.
            let first = unsafe { (*next).chain.load(AtomicOrdering::Acquire) };
            // SAFETY: `first` is a published chained version and `node` is fully written.
            if !first.is_null() && unsafe { cmp_node(node, &probe_of(first)) } == Ordering::Greater
            {
                // Out of order: an older version of `next`'s key than some of its chain; it
                // belongs in that chain (its tower stays unused).
                // SAFETY: `next` is a published node and `node` is fully written; its key
                // sorts after `first` and not after `next`'s own.
                unsafe { self.chain_into(next, node, false) };
                return self.count(bytes);
            }
        }
        if height > self.height.load(AtomicOrdering::Relaxed) {
            // Readers that see the new height find null head links up there and step down.
            self.height.store(height, AtomicOrdering::Release);
        }
        for (level, &before) in prev.iter().enumerate().take(height) {
            // SAFETY: `before` is the head or a published node with a tower taller than
            // `level` (the search recorded it at that level); `node` has `height > level`.
            unsafe {
                let next = (*tower(before, level)).load(AtomicOrdering::Acquire);
                (*tower(node, level)).store(next, AtomicOrdering::Relaxed);
                // Publishes the node (fully written) at this level.
                (*tower(before, level)).store(node, AtomicOrdering::Release);
            }
        }
        match owner_version {
            // A key new to the list.
            None => self.set_owner(&mut writer, user_key, hash, node, true),
            // The chain was full: the new node, linked just before the owner, owns the key now.
            Some(owner_version) if version > owner_version => {
                self.set_owner(&mut writer, user_key, hash, node, false);
            }
            Some(_) => {}
        }
        self.count(bytes)
    }

    fn count(&self, bytes: usize) -> usize {
        self.node_bytes.fetch_add(bytes, AtomicOrdering::Relaxed);
        self.len.fetch_add(1, AtomicOrdering::Release);
        bytes
    }

    /// Links `node` into `owner`'s chain at its sorted place, before the versions whose keys
    /// are not below its own.
    ///
    /// # Safety
    /// Only the writer calls this. `owner` must be a published node of the list and `node` a
    /// fully written, unpublished node of the same user key whose key sorts after the owner's
    /// predecessor and not after the owner.
    unsafe fn chain_into(&self, owner: *const Node, node: *mut Node, at_front: bool) {
        let version = node_trailer(node);
        // SAFETY: forwarded to the caller; every link leads to a published chained version.
        unsafe {
            let mut link: *const AtomicPtr<Node> = &raw const (*owner).chain;
            loop {
                let at = (*link).load(AtomicOrdering::Acquire);
                if at.is_null() || node_trailer(at) <= version {
                    (*node).chain.store(at, AtomicOrdering::Relaxed);
                    // Publishes the version (fully written).
                    (*link).store(node, AtomicOrdering::Release);
                    break;
                }
                link = &raw const (*at).chain;
            }
            if at_front {
                (*owner).chained.fetch_add(1, AtomicOrdering::Relaxed);
            }
        }
    }

    /// Makes `node` (published, of `user_key`) the key's owner in the hash index: an entry of
    /// its own for a key `new` to the list, else in place of the key's previous owner.
    fn set_owner(
        &self,
        writer: &mut Writer,
        user_key: &[u8],
        hash: u64,
        node: *const Node,
        new: bool,
    ) {
        let owners = writer.indexed + usize::from(new);
        self.make_room(writer, node, owners);
        if let Some(table) = writer.tables.last() {
            // The key's slot, or the free one where it goes.
            let (slot, _) = table.probe(user_key, hash);
            slot.store(table.encode(node, hash), AtomicOrdering::Release);
            writer.indexed = owners;
        }
    }

    /// Makes the current index table one that can take `node`'s address and hold `owners`
    /// owners: replaces it by a copy of twice its slots when it would be 3/4 full, or by an
    /// untagged copy when the address does not fit below the tag (and builds the first one).
    fn make_room(&self, writer: &mut Writer, node: *const Node, owners: usize) {
        let fits = node.addr() as u64 >> ADDRESS_BITS == 0;
        #[cfg(test)]
        let fits = fits && !writer.addresses_above_tags;
        let (slots, tagged, replace) = match writer.tables.last() {
            None => (writer.first_slots, writer.tag_slots && fits, true),
            Some(table) => {
                let full = table.is_full(owners);
                let slots = table.slots.len() * if full { 2 } else { 1 };
                (slots, table.tagged && fits, full || (table.tagged && !fits))
            }
        };
        if !replace {
            return;
        }
        let table = IndexTable::new(slots, tagged);
        if let Some(old) = writer.tables.last() {
            for slot in old.slots.iter() {
                let value = slot.load(AtomicOrdering::Relaxed);
                if value != 0 {
                    let owner = old.decode(value);
                    // SAFETY: a slot holds a published node of this list.
                    let key = unsafe { user_key_of(owner) };
                    let hash = index_hash(key);
                    let (free, _) = table.probe(key, hash);
                    free.store(table.encode(owner, hash), AtomicOrdering::Relaxed);
                }
            }
        }
        self.index_bytes
            .fetch_add(table.bytes(), AtomicOrdering::Relaxed);
        writer.tables.push(Box::new(table));
        if let Some(table) = writer.tables.last() {
            // Publishes the table, filled and in its final place: a reader that loads it sees
            // every slot stored above.
            self.index
                .store(ptr::from_ref(&**table).cast_mut(), AtomicOrdering::Release);
        }
    }

    /// The first entry of `user_key`, its newest version in the list; `None` if the list holds
    /// no version of it. Found through the hash index, without a search.
    pub fn first_of_user_key(&self, user_key: &[u8]) -> Option<Cursor<'_>> {
        self.group_of(self.published_index()?, user_key, index_hash(user_key))
    }

    /// The index table readers use now; `None` while the list is empty.
    fn published_index(&self) -> Option<&IndexTable> {
        let table = self.index.load(AtomicOrdering::Acquire);
        // SAFETY: a published table stays allocated as long as the list.
        (!table.is_null()).then(|| unsafe { &*table })
    }

    /// A cursor on the first entry of `user_key`'s group (its newest version) found through
    /// `table`, one of this list's index tables; `None` if the list holds no version of it.
    fn group_of(&self, table: &IndexTable, user_key: &[u8], hash: u64) -> Option<Cursor<'_>> {
        let owner = table.find(user_key, hash);
        // SAFETY: the index holds published nodes of this list.
        (!owner.is_null()).then(|| unsafe { group_start(owner) })
    }

    /// Finds where inserts of `user_keys` will go, for all of them at once, so that their
    /// cache misses overlap instead of coming one after another under the writer lock: a key
    /// the hash index holds needs no search (its home slot and owner are prefetched); for each
    /// other key, a walk down the list records the node where it steps down at each level.
    /// The walks go step by step together, each step prefetching the node the next one
    /// compares. It changes nothing: [`SkipList::insert_planned`] uses what it found as a
    /// starting point that inserts made since can only move right.
    pub fn plan_inserts(&self, user_keys: &[&[u8]]) -> InsertPlan<'_> {
        let mut plan = InsertPlan {
            list: self,
            spot_of: vec![None; user_keys.len()],
            spots: Vec::new(),
        };
        // An empty list has no index yet, and nothing to search.
        let Some(table) = self.published_index() else {
            return plan;
        };
        let hashes: Vec<u64> = user_keys.iter().map(|key| index_hash(key)).collect();
        table.prefetch_probes(&hashes);
        let head = self.head.as_ptr().cast_const();
        let top = self.levels() - 1;
        let mut walks = Vec::new();
        for (i, (key, &hash)) in user_keys.iter().zip(&hashes).enumerate() {
            let owner = table.find(key, hash);
            if !owner.is_null() {
                // The insert of a newer version compares it with the chain's first version.
                // SAFETY: the index holds published nodes of this list.
                prefetch(
                    unsafe { (*owner).chain.load(AtomicOrdering::Acquire) },
                    true,
                );
            } else {
                plan.spot_of[i] = Some(walks.len());
                walks.push(Walk {
                    user_key: key,
                    prefix: order_prefix(key),
                    at: head,
                    // SAFETY: the head's tower has MAX_HEIGHT levels.
                    next: unsafe { (*tower(head, top)).load(AtomicOrdering::Acquire) },
                    level: top,
                    spot: [head; MAX_HEIGHT],
                });
            }
        }
        // One step of every walk still going per round, until all have stepped off level 0.
        let mut walking: Vec<usize> = (0..walks.len()).collect();
        while !walking.is_empty() {
            walking.retain(|&w| {
                // SAFETY: the walk holds the head or published nodes of this list.
                walks.get_mut(w).is_some_and(|walk| !unsafe { walk.step() })
            });
        }
        plan.spots = walks.into_iter().map(|w| w.spot).collect();
        plan
    }

    /// [`SkipList::first_of_user_key`] for each of `user_keys`, in order, with their cache
    /// misses overlapped: the lookups go step by step together (home slots, candidate nodes,
    /// first versions), each step prefetching what the next one reads, where one lookup alone
    /// waits for three misses one after another.
    pub fn first_of_user_keys(&self, user_keys: &[&[u8]]) -> Vec<Option<Cursor<'_>>> {
        let Some(table) = self.published_index() else {
            return vec![None; user_keys.len()];
        };
        let hashes: Vec<u64> = user_keys.iter().map(|key| index_hash(key)).collect();
        table.prefetch_probes(&hashes);
        let firsts: Vec<Option<Cursor<'_>>> = user_keys
            .iter()
            .zip(&hashes)
            .map(|(key, &hash)| self.group_of(table, key, hash))
            .collect();
        for first in firsts.iter().flatten() {
            prefetch(first.node, true);
        }
        firsts
    }

    /// How many levels searches walk: the tallest tower in use, at least one.
    fn levels(&self) -> usize {
        self.height
            .load(AtomicOrdering::Acquire)
            .clamp(1, MAX_HEIGHT)
    }

    /// Walks down the list from the top: at each level, moves right while `advance(next)`
    /// holds (`next` a node of the list, handed over as a [`Cursor`]), and records in `prev`
    /// the node where it stepped down. Returns the level-0 node it stopped at (the head, or
    /// the last node for which `advance` held) and the node of the list after it (null at the
    /// end). `advance` must hold for a prefix of the list (monotone). Chains are not visited.
    fn search(
        &self,
        advance: impl Fn(Cursor<'_>) -> bool,
        prev: &mut [*const Node; MAX_HEIGHT],
    ) -> (*const Node, *const Node) {
        let mut at = self.head.as_ptr().cast_const();
        let mut level = self.levels() - 1;
        loop {
            // SAFETY: `at` is the head (tower MAX_HEIGHT) or a node reached at `level`, whose
            // tower is taller than `level`.
            let next = unsafe { (*tower(at, level)).load(AtomicOrdering::Acquire) }.cast_const();
            // A non-null link leads to a published node of this list.
            if !next.is_null() && advance(Cursor::listed(next)) {
                at = next;
                continue;
            }
            if let Some(slot) = prev.get_mut(level) {
                *slot = at;
            }
            if level == 0 {
                return (at, next);
            }
            level -= 1;
        }
    }

    /// Whether every node of `spot` sorts below `probe`: the walk that recorded it only ever
    /// moved right, so its level-0 node is the last of them.
    ///
    /// # Safety
    /// `spot` must come from [`Walk`]s of this list: the head or published nodes.
    unsafe fn spot_is_below(&self, spot: &[*const Node; MAX_HEIGHT], probe: &Probe<'_>) -> bool {
        let last = spot[0];
        // SAFETY: forwarded to the caller.
        last == self.head.as_ptr().cast_const()
            || unsafe { cmp_node(last, probe) } == Ordering::Less
    }

    /// [`SkipList::search`] for the last entries below `probe`, starting at each level from
    /// `spot`'s node there or from where the level above stopped, whichever is further along:
    /// a spot found a moment ago is usually a few inserts behind, but a batch of many sorted
    /// keys planned together between the same two nodes shares one spot, and walking level 0
    /// from it past the batch's earlier inserts would make the batch quadratic. Returns the
    /// level-0 successor (null at the end).
    ///
    /// # Safety
    /// Each `spot[level]` must be the head or a published node of this list reached at `level`
    /// (so its tower is taller than `level`), and sort below `probe`.
    unsafe fn search_from(
        &self,
        spot: &[*const Node; MAX_HEIGHT],
        probe: &Probe<'_>,
        prev: &mut [*const Node; MAX_HEIGHT],
    ) -> *const Node {
        let head = self.head.as_ptr().cast_const();
        let mut next = ptr::null();
        let top = self.levels() - 1;
        for level in (0..self.levels()).rev() {
            let mut at = spot[level];
            if level < top {
                let above = prev[level + 1];
                // SAFETY: `above` is the head or a published node below `probe` whose tower
                // is taller than `level + 1` (the level above stopped there), and `at` is the
                // head or a published node (see above).
                if above != at
                    && above != head
                    && (at == head
                        || unsafe { cmp_node(above, &probe_of(at)) } == Ordering::Greater)
                {
                    at = above;
                }
            }
            loop {
                // SAFETY: `at` is the spot's node at `level` (see above) or a node reached
                // from it at `level`; a non-null link leads to a published node.
                next = unsafe { (*tower(at, level)).load(AtomicOrdering::Acquire) }.cast_const();
                if next.is_null() || unsafe { cmp_node(next, probe) } != Ordering::Less {
                    break;
                }
                at = next;
                #[cfg(test)]
                SPOT_STEPS.with(|n| n.set(n.get() + 1));
            }
            prev[level] = at;
        }
        next
    }

    fn listed(&self, node: *const Node) -> Option<Cursor<'_>> {
        (!node.is_null() && node != self.head.as_ptr().cast_const()).then(|| Cursor::listed(node))
    }

    /// The first entry `>= probe`.
    pub fn seek_ge(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (_, next) = self.search(|n| n.cmp_probe(probe) == Ordering::Less, &mut prev);
        // The first chained version of `next` not below `probe`, else `next` itself.
        self.first_in_chain(next, |c| c.cmp_probe(probe) != Ordering::Less)
    }

    /// The first entry `> probe`.
    pub fn seek_gt(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (_, next) = self.search(|n| n.cmp_probe(probe) != Ordering::Greater, &mut prev);
        self.first_in_chain(next, |c| c.cmp_probe(probe) == Ordering::Greater)
    }

    /// The last entry `< probe`.
    pub fn seek_lt(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (at, next) = self.search(|n| n.cmp_probe(probe) == Ordering::Less, &mut prev);
        self.last_in_chain(next, |c| c.cmp_probe(probe) == Ordering::Less)
            .or_else(|| self.listed(at))
    }

    /// The last entry `<= probe`.
    pub fn seek_le(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (at, next) = self.search(|n| n.cmp_probe(probe) != Ordering::Greater, &mut prev);
        self.last_in_chain(next, |c| c.cmp_probe(probe) != Ordering::Greater)
            .or_else(|| self.listed(at))
    }

    /// The first entry of `next`'s group (its chain, then itself) for which `wanted` holds,
    /// `wanted` being monotone over the group; `None` if `next` is null.
    fn first_in_chain(
        &self,
        next: *const Node,
        wanted: impl Fn(Cursor<'_>) -> bool,
    ) -> Option<Cursor<'_>> {
        let listed = self.listed(next)?;
        let mut at = listed.chain_start();
        loop {
            if at == listed || wanted(at) {
                return Some(at);
            }
            at = at.next()?;
        }
    }

    /// The last chained version of `next` for which `wanted` holds (a prefix of the chain);
    /// `None` if none or `next` is null.
    fn last_in_chain(
        &self,
        next: *const Node,
        wanted: impl Fn(Cursor<'_>) -> bool,
    ) -> Option<Cursor<'_>> {
        let listed = self.listed(next)?;
        let mut found = None;
        let mut at = listed.chain_start();
        while at != listed && wanted(at) {
            found = Some(at);
            at = at.next()?;
        }
        found
    }

    /// The first entry.
    pub fn first(&self) -> Option<Cursor<'_>> {
        // SAFETY: the head's tower has MAX_HEIGHT levels.
        let next = unsafe { (*tower(self.head.as_ptr(), 0)).load(AtomicOrdering::Acquire) };
        self.listed(next).map(|c| c.chain_start())
    }

    /// The last entry.
    pub fn last(&self) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (at, _) = self.search(|_| true, &mut prev);
        self.listed(at)
    }

    /// The entry before `cursor`.
    pub fn prev(&self, cursor: Cursor<'_>) -> Option<Cursor<'_>> {
        // SAFETY: a cursor points at a published node of this list.
        let probe = unsafe { probe_of(cursor.node) };
        self.seek_lt(&probe)
    }
}

impl Drop for SkipList {
    fn drop(&mut self) {
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (at, layout) in writer.allocations.drain(..) {
            // SAFETY: each pair was returned by `alloc::alloc` with that layout and is freed
            // once; nothing can read the nodes any more (`drop` has exclusive access and
            // cursors borrow the list).
            unsafe { alloc::dealloc(at.as_ptr(), layout) };
        }
        // Nothing reads the chunks any more either; the next list overwrites what it uses.
        let mut spare = SPARE_CHUNKS.lock().unwrap_or_else(PoisonError::into_inner);
        let room = MAX_SPARE_CHUNKS.saturating_sub(spare.len());
        let keep = writer.chunks.len().min(room);
        spare.extend(writer.chunks.drain(..keep));
    }
}

/// A position on an entry of a [`SkipList`], valid as long as the list is borrowed.
#[derive(Clone, Copy)]
pub struct Cursor<'a> {
    /// The entry: a node of the list or a version chained to one.
    node: *const Node,
    /// The node of the list whose group the entry belongs to (`node` itself if it is listed).
    owner: *const Node,
    _list: PhantomData<&'a SkipList>,
}

impl PartialEq for Cursor<'_> {
    fn eq(&self, other: &Self) -> bool {
        ptr::eq(self.node, other.node)
    }
}

impl Eq for Cursor<'_> {}

impl fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("key", &self.key().escape_ascii().to_string())
            .finish()
    }
}

impl<'a> Cursor<'a> {
    /// A cursor on `node`, a published node of the list.
    fn listed(node: *const Node) -> Self {
        Cursor {
            node,
            owner: node,
            _list: PhantomData,
        }
    }

    /// The first entry of this cursor's group: the first chained version, else the owner.
    fn chain_start(self) -> Self {
        // SAFETY: `owner` is a published node of a borrowed list.
        unsafe { group_start(self.owner) }
    }

    /// The encoded internal key.
    pub fn key(&self) -> &'a [u8] {
        // SAFETY: a cursor points at a published node, alive while the list is borrowed for
        // 'a; its key bytes were written before it was published and never change.
        unsafe { key_of(self.node) }
    }

    /// The value.
    pub fn value(&self) -> &'a [u8] {
        // SAFETY: as for `key`; the value follows the key.
        unsafe {
            let key = key_of(self.node);
            let len = (*self.node).value_len as usize;
            std::slice::from_raw_parts(key.as_ptr().add(key.len()), len)
        }
    }

    /// The entry after this one.
    pub fn next(&self) -> Option<Cursor<'a>> {
        if self.node != self.owner {
            // SAFETY: a chained version is published and alive while the list is borrowed.
            let later = unsafe { (*self.node).chain.load(AtomicOrdering::Acquire) };
            return Some(if later.is_null() {
                Cursor::listed(self.owner)
            } else {
                Cursor {
                    node: later,
                    owner: self.owner,
                    _list: PhantomData,
                }
            });
        }
        self.group_after()
    }

    /// The first entry of the group after this entry's group: the versions of this group
    /// after this entry are passed over without being read. (A user key with more versions
    /// than one chain holds has several groups, one after another.) Starts loading that
    /// group's first entry and the node after it.
    pub fn next_group(&self) -> Option<Cursor<'a>> {
        let group = self.group_after()?;
        prefetch(group.node, true);
        Some(group)
    }

    /// The first entry of the group after the owner's, `None` at the end of the list.
    fn group_after(&self) -> Option<Cursor<'a>> {
        // SAFETY: the owner is a node of the list, with a tower of at least one level.
        let next = unsafe { (*tower(self.owner, 0)).load(AtomicOrdering::Acquire) };
        if next.is_null() {
            return None;
        }
        // Start loading the node after `next` as well, so that a walk over the list (a scan, a
        // flush) overlaps each node's cache miss with the work on the one before.
        // SAFETY: `next` is a published node of the list, with a tower of at least one level.
        prefetch(
            unsafe { (*tower(next, 0)).load(AtomicOrdering::Acquire) },
            true,
        );
        // SAFETY: as above.
        Some(unsafe { group_start(next) })
    }

    /// The order of this entry against `other`'s.
    pub fn cmp_entry(&self, other: &Cursor<'_>) -> Ordering {
        // SAFETY: `other` points at a published node of a borrowed list.
        let probe = unsafe { probe_of(other.node) };
        self.cmp_probe(&probe)
    }

    /// The order of this entry against `probe`.
    fn cmp_probe(&self, probe: &Probe<'_>) -> Ordering {
        // SAFETY: a cursor points at a published node, alive while the list is borrowed.
        unsafe { cmp_node(self.node, probe) }
    }
}

/// A cursor on the first entry of `owner`'s group: its first chained version, else `owner`.
///
/// # Safety
/// `owner` must be a published node of a list borrowed for `'a`.
unsafe fn group_start<'a>(owner: *const Node) -> Cursor<'a> {
    // SAFETY: forwarded to the caller.
    let first = unsafe { (*owner).chain.load(AtomicOrdering::Acquire) };
    Cursor {
        node: if first.is_null() { owner } else { first },
        owner,
        _list: PhantomData,
    }
}

/// Where level `level` of `node`'s tower is stored.
///
/// # Safety
/// `node` must point into an allocation holding a node header and a tower taller than `level`.
unsafe fn tower_slot(node: *mut Node, level: usize) -> *mut AtomicPtr<Node> {
    // SAFETY: the caller guarantees the tower slot lies within the node's allocation.
    unsafe {
        node.cast::<u8>()
            .add(HEADER_BYTES + level * POINTER_BYTES)
            .cast::<AtomicPtr<Node>>()
    }
}

/// Level `level` of `node`'s tower.
///
/// # Safety
/// `node` must be the head or a written node whose tower is taller than `level`.
unsafe fn tower(node: *const Node, level: usize) -> *const AtomicPtr<Node> {
    // SAFETY: forwarded to the caller.
    unsafe { tower_slot(node.cast_mut(), level) }
}

/// The encoded key of `node`.
///
/// # Safety
/// `node` must be a fully written node, alive for `'a`.
unsafe fn key_of<'a>(node: *const Node) -> &'a [u8] {
    // SAFETY: forwarded to the caller; the key follows the header and the tower.
    unsafe {
        let height = usize::from((*node).height);
        let at = node.cast::<u8>().add(HEADER_BYTES + height * POINTER_BYTES);
        std::slice::from_raw_parts(at, (*node).key_len as usize)
    }
}

/// The user key of `node`.
///
/// # Safety
/// As for [`key_of`].
unsafe fn user_key_of<'a>(node: *const Node) -> &'a [u8] {
    // SAFETY: forwarded to the caller.
    user_key(unsafe { key_of(node) })
}

/// The trailer (sequence number and kind) of `node`'s key: of two versions of one user key,
/// the larger trailer sorts first.
///
/// # Safety
/// As for [`key_of`].
unsafe fn node_trailer(node: *const Node) -> u64 {
    // SAFETY: forwarded to the caller.
    trailer(unsafe { key_of(node) })
}

/// The order of `node`'s entry against `probe`: by the prefixes first, then the keys.
///
/// # Safety
/// As for [`key_of`].
unsafe fn cmp_node(node: *const Node, probe: &Probe<'_>) -> Ordering {
    // SAFETY: forwarded to the caller; a node's header never changes after it is written.
    unsafe {
        (*node)
            .prefix
            .cmp(&probe.prefix)
            .then_with(|| compare_encoded(key_of(node), probe.encoded))
    }
}

/// Whether `node`'s user key sorts before `user_key`, whose order prefix is `prefix`.
///
/// # Safety
/// As for [`key_of`].
unsafe fn user_key_below(node: *const Node, prefix: &[u64; 2], user_key: &[u8]) -> bool {
    // SAFETY: forwarded to the caller.
    unsafe {
        (*node)
            .prefix
            .cmp(prefix)
            .then_with(|| user_key_of(node).cmp(user_key))
            == Ordering::Less
    }
}

/// A probe for `node`'s own key.
///
/// # Safety
/// `node` must be a fully written node, alive for `'a`.
unsafe fn probe_of<'a>(node: *const Node) -> Probe<'a> {
    // SAFETY: forwarded to the caller.
    unsafe {
        Probe {
            prefix: (*node).prefix,
            encoded: key_of(node),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use proptest::prelude::*;
    use xxhash_rust::xxh3::xxh3_64;

    use super::*;
    use crate::lsm::key::{encode, pack_trailer, ValueKind};

    fn trailer(seqno: u64) -> [u8; TRAILER_LEN] {
        pack_trailer(seqno, ValueKind::Put).to_le_bytes()
    }

    fn ordered(keys: &BTreeSet<(Vec<u8>, u64)>) -> Vec<Vec<u8>> {
        let mut encoded: Vec<Vec<u8>> = keys
            .iter()
            .map(|(k, s)| encode(k, *s, ValueKind::Put))
            .collect();
        encoded.sort_by(|a, b| compare_encoded(a, b));
        encoded
    }

    /// Every entry from the first, with `Cursor::next`.
    fn entries(list: &SkipList) -> impl Iterator<Item = Cursor<'_>> {
        std::iter::successors(list.first(), Cursor::next)
    }

    fn forward(list: &SkipList) -> Vec<Vec<u8>> {
        entries(list).map(|c| c.key().to_vec()).collect()
    }

    fn backward(list: &SkipList) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = std::iter::successors(list.last(), |c| list.prev(*c))
            .map(|c| c.key().to_vec())
            .collect();
        out.reverse();
        out
    }

    /// The four seeks for `(key, seqno)` land where `want` (the list's entries in order)
    /// says, and the index finds `key`'s first entry.
    fn check_seeks(
        list: &SkipList,
        want: &[Vec<u8>],
        key: &[u8],
        seqno: u64,
    ) -> Result<(), TestCaseError> {
        let encoded = encode(key, seqno, ValueKind::Put);
        let probe = Probe::new(&encoded);
        let ge = want
            .iter()
            .find(|w| compare_encoded(w, &encoded) != Ordering::Less);
        let gt = want
            .iter()
            .find(|w| compare_encoded(w, &encoded) == Ordering::Greater);
        let lt = want
            .iter()
            .rev()
            .find(|w| compare_encoded(w, &encoded) == Ordering::Less);
        let le = want
            .iter()
            .rev()
            .find(|w| compare_encoded(w, &encoded) != Ordering::Greater);
        prop_assert_eq!(list.seek_ge(&probe).map(|c| c.key()), ge.map(Vec::as_slice));
        prop_assert_eq!(list.seek_gt(&probe).map(|c| c.key()), gt.map(Vec::as_slice));
        prop_assert_eq!(list.seek_lt(&probe).map(|c| c.key()), lt.map(Vec::as_slice));
        prop_assert_eq!(list.seek_le(&probe).map(|c| c.key()), le.map(Vec::as_slice));
        let first = want.iter().find(|w| user_key(w) == key);
        prop_assert_eq!(
            list.first_of_user_key(key).map(|c| c.key()),
            first.map(Vec::as_slice)
        );
        Ok(())
    }

    proptest! {
        /// Inserts in any order give the compare_encoded order both ways, and each seek lands
        /// where a sorted vector says; values stay with their keys; the index finds each user
        /// key's first entry. Keys share long prefixes and include zero bytes, to exercise the
        /// prefix shortcut; up to 40 versions a key, inserted newest-last or shuffled, fill
        /// chains past MAX_CHAIN and put versions out of order into them. Both index layouts.
        #[test]
        fn order_and_seeks_match_a_sorted_model(
            keys in proptest::collection::btree_set(
                (proptest::collection::vec(0u8..3, 0..20), 0u64..40), 0..300),
            probes in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..20), 0u64..41), 1..40),
            in_order in any::<bool>(),
            seed in any::<u64>(),
            tagged in any::<bool>(),
        ) {
            let list = SkipList::build(0, tagged);
            let mut shuffled: Vec<_> = keys.iter().cloned().collect();
            if in_order {
                // Each key's versions oldest first, as the engine inserts them.
                shuffled.sort_by_key(|(_, s)| *s);
            } else {
                shuffled.sort_by_key(|(k, s)| xxh3_64(&[&seed.to_le_bytes()[..], k, &s.to_le_bytes()].concat()));
            }
            for (k, s) in &shuffled {
                let value = [k.as_slice(), &s.to_le_bytes()].concat();
                list.insert(k, &trailer(*s), &value);
            }
            let want = ordered(&keys);
            prop_assert_eq!(list.len(), want.len());
            prop_assert_eq!(&forward(&list), &want);
            prop_assert_eq!(&backward(&list), &want);
            for c in entries(&list) {
                let uk = user_key(c.key());
                let seqno = trailer_of(c.key()) >> 8;
                let want = [uk, &seqno.to_le_bytes()].concat();
                prop_assert_eq!(c.value(), want.as_slice());
            }
            for (k, s) in probes {
                check_seeks(&list, &want, &k, s)?;
            }
            let distinct: BTreeSet<&Vec<u8>> = keys.iter().map(|(k, _)| k).collect();
            prop_assert_eq!(list.keys(), distinct.len());
        }
    }

    /// A shard holds only keys whose placement hash (the unseeded `xxh3_64`) falls in the arcs
    /// it owns; the index hashes them differently, so its probes stay short.
    #[test]
    fn keys_of_one_hash_arc_do_not_cluster_in_the_index() {
        let list = SkipList::new();
        let keys: Vec<Vec<u8>> = (0u32..)
            .map(|i| format!("key:{i:012}").into_bytes())
            .filter(|k| xxh3_64(k) >> 62 == 0)
            .take(50_000)
            .collect();
        PROBE_STEPS.with(|n| n.set(0));
        for (i, key) in keys.iter().enumerate() {
            list.insert(key, &trailer(1 + i as u64), b"v");
        }
        let steps = PROBE_STEPS.with(|n| n.get());
        assert!(
            steps < 10 * keys.len(),
            "{steps} probe steps for {} keys of one quarter of the hash space",
            keys.len()
        );
        assert_eq!(list.len(), keys.len());
    }

    /// A batch of many sorted keys planned together between the same two nodes (a move's page
    /// of keys arriving at a shard) shares one spot; each search starts from where the level
    /// above stopped when that is further, so the batch costs a few steps per key, not a walk
    /// past all the keys inserted before it.
    #[test]
    fn a_large_sorted_batch_planned_at_once_is_not_quadratic() {
        let list = SkipList::new();
        list.insert(b"a", &trailer(1), b"low");
        list.insert(b"z", &trailer(2), b"high");
        let keys: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| format!("m{i:08}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let plan = list.plan_inserts(&refs);
        SPOT_STEPS.with(|n| n.set(0));
        SEARCHES_FROM_SPOTS.with(|n| n.set(0));
        for (i, key) in keys.iter().enumerate() {
            list.insert_planned(&plan, i, key, &trailer(3 + i as u64), b"v");
        }
        assert_eq!(
            SEARCHES_FROM_SPOTS.with(|n| n.get()),
            keys.len(),
            "every insert used its spot"
        );
        let steps = SPOT_STEPS.with(|n| n.get());
        assert!(
            steps < 40 * keys.len(),
            "{steps} steps for {} keys: the searches walked past the batch's earlier inserts",
            keys.len()
        );
        assert_eq!(list.len(), keys.len() + 2);
        assert_eq!(forward(&list).len(), keys.len() + 2);
    }

    proptest! {
        /// Inserts through plans give the same list as inserts one by one: batches of keys
        /// (new and present, repeated within a batch, unsorted) planned together, with other
        /// inserts landing between a plan and its use, the plan's keys inserted in any order,
        /// some under the wrong index, and plans made on another list.
        #[test]
        fn planned_inserts_match_a_sorted_model(
            batches in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(0u8..4, 0..20), 0..20),
                0..30),
            between in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..20), 0..30),
            seed in any::<u64>(),
        ) {
            let list = SkipList::new();
            let other = SkipList::new();
            other.insert(&[1, 1], &trailer(1), b"other");
            SEARCHES_FROM_SPOTS.with(|n| n.set(0));
            // Keys inserted through their own plan while new to a non-empty list: each of
            // those searches starts from its spot.
            let mut planned_new = 0usize;
            let mut model = BTreeSet::new();
            let mut seqno = 1u64;
            let mut between = between.into_iter();
            for (b, keys) in batches.iter().enumerate() {
                let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let plan = list.plan_inserts(&refs);
                let foreign = other.plan_inserts(&refs);
                if let Some(k) = between.next() {
                    list.insert(&k, &trailer(seqno), &seqno.to_le_bytes());
                    model.insert((k, seqno));
                    seqno += 1;
                }
                let mut order: Vec<usize> = (0..keys.len()).collect();
                order.sort_by_key(|i| xxh3_64(&[seed, b as u64, *i as u64].map(u64::to_le_bytes).concat()));
                for i in order {
                    let key = &keys[i];
                    let value = seqno.to_le_bytes();
                    let walked = plan.spot_of.get(i).copied().flatten().is_some();
                    let new_now = list.first_of_user_key(key).is_none();
                    match (seed ^ seqno) % 4 {
                        0 => list.insert_planned(&foreign, i, key, &trailer(seqno), &value),
                        1 => list.insert_planned(&plan, (i + 1) % keys.len(), key, &trailer(seqno), &value),
                        _ => {
                            planned_new += usize::from(walked && new_now);
                            list.insert_planned(&plan, i, key, &trailer(seqno), &value)
                        }
                    };
                    model.insert((key.clone(), seqno));
                    seqno += 1;
                }
            }
            let want = ordered(&model);
            prop_assert_eq!(list.len(), want.len());
            prop_assert_eq!(&forward(&list), &want);
            prop_assert_eq!(&backward(&list), &want);
            for c in entries(&list) {
                let want = (trailer_of(c.key()) >> 8).to_le_bytes();
                prop_assert_eq!(c.value(), want.as_slice());
            }
            for key in between.chain(batches.into_iter().flatten()).take(50) {
                check_seeks(&list, &want, &key, seqno / 2)?;
            }
            prop_assert_eq!(other.len(), 1);
            prop_assert!(SEARCHES_FROM_SPOTS.with(|n| n.get()) >= planned_new);
        }
    }

    proptest! {
        /// Two keys with up to 120 versions each, inserted in a jittered order: chains fill, their
        /// next newest versions become nodes of the list, and versions arriving late land in
        /// chains that are no longer the owner's. Order, seeks and the index match the model.
        #[test]
        fn long_histories_in_any_order_match_a_sorted_model(
            keys in proptest::collection::btree_set(
                (proptest::collection::vec(0u8..2, 1..2), 0u64..120), 0..300),
            seed in any::<u64>(),
            lateness in 1u64..60,
        ) {
            let list = SkipList::new();
            let mut shuffled: Vec<_> = keys.iter().cloned().collect();
            // Mostly oldest first, as the engine inserts, but each version up to `lateness`
            // places late, so that chains fill and late versions find them full.
            shuffled.sort_by_key(|(k, s)| {
                s + xxh3_64(&[&seed.to_le_bytes()[..], k, &s.to_le_bytes()].concat()) % lateness
            });
            for (k, s) in &shuffled {
                list.insert(k, &trailer(*s), &s.to_le_bytes());
            }
            let want = ordered(&keys);
            prop_assert_eq!(&forward(&list), &want);
            prop_assert_eq!(&backward(&list), &want);
            // Each present version: seek_ge and seek_le land on it exactly.
            for (k, s) in &keys {
                check_seeks(&list, &want, k, *s)?;
            }
        }
    }

    /// 1000 versions of one key, newest last, between two other keys: they fill chains of
    /// MAX_CHAIN, each chain's next newest version a node of the list, and everything stays in
    /// order; the index leads to the newest version; every version is found by a seek.
    #[test]
    fn long_histories_are_chains_of_bounded_length() {
        let list = SkipList::new();
        list.insert(b"a", &trailer(1), b"a");
        list.insert(b"c", &trailer(1), b"c");
        for s in 1..=1000u64 {
            list.insert(b"b", &trailer(s), &s.to_le_bytes());
        }
        assert_eq!((list.len(), list.keys()), (1002, 3));
        let all = forward(&list);
        assert_eq!(all, backward(&list));
        assert_eq!(all.len(), 1002);
        let mut keys: BTreeSet<(Vec<u8>, u64)> = (1..=1000).map(|s| (b"b".to_vec(), s)).collect();
        keys.insert((b"a".to_vec(), 1));
        keys.insert((b"c".to_vec(), 1));
        assert_eq!(all, ordered(&keys));
        let newest = list.first_of_user_key(b"b");
        assert_eq!(newest.map(|c| c.value()), Some(&1000u64.to_le_bytes()[..]));
        for s in 1..=1000u64 {
            let key = encode(b"b", s, ValueKind::Put);
            let found = list.seek_ge(&Probe::new(&key));
            assert_eq!(found.map(|c| c.value()), Some(&s.to_le_bytes()[..]), "{s}");
        }
        // Nodes of the list: one every MAX_CHAIN + 1 versions (the others hang in chains).
        let listed = entries(&list).filter(|c| c.node == c.owner).count();
        assert_eq!(listed, 2 + 1000usize.div_ceil(usize::from(MAX_CHAIN) + 1));
    }

    /// 20k distinct keys grow the index from its first table through five doublings; every
    /// key stays reachable, absent keys are absent, and every table built is counted. A list
    /// made for 20k keys builds one table and never grows it.
    #[test]
    fn the_index_grows_and_every_table_is_counted() {
        let grown = SkipList::new();
        let sized = SkipList::with_expected_keys(20_000);
        for i in 0..20_000u32 {
            grown.insert(&scramble(i).to_be_bytes(), &trailer(1), &i.to_le_bytes());
            sized.insert(&scramble(i).to_be_bytes(), &trailer(1), &i.to_le_bytes());
        }
        for list in [&grown, &sized] {
            for i in 0..20_000u32 {
                let found = list.first_of_user_key(&scramble(i).to_be_bytes());
                assert_eq!(found.map(|c| c.value()), Some(&i.to_le_bytes()[..]));
            }
            for i in 20_000..21_000u32 {
                assert!(list.first_of_user_key(&scramble(i).to_be_bytes()).is_none());
            }
        }
        // 1024, 2048, ..., 32768 slots of 8 bytes: 20k keys fill 32768 slots to 61%.
        assert_eq!(
            grown.index_bytes(),
            (1024 + 2048 + 4096 + 8192 + 16384 + 32768) * 8
        );
        assert_eq!(sized.index_bytes(), 30_000 * 8);
        assert_eq!(SkipList::new().index_bytes(), 0);
    }

    #[test]
    fn large_entries_get_their_own_allocation_and_bytes_are_counted() {
        let list = SkipList::new();
        assert!(list.is_empty());
        let big = vec![7u8; LARGE_NODE_BYTES * 3];
        let key = encode(b"big", 1, ValueKind::Put);
        let bytes = list.insert(b"big", &trailer(1), &big);
        assert!(bytes >= big.len() + key.len() + HEADER_BYTES + POINTER_BYTES);
        assert!(bytes.is_multiple_of(8));
        // Enough small entries to fill several chunks.
        let mut total = bytes;
        for i in 0..30_000u32 {
            total += list.insert(&i.to_be_bytes(), &trailer(2), &[1u8; 100]);
        }
        assert_eq!(list.node_bytes(), total);
        assert_eq!(list.len(), 30_001);
        let found = list.seek_ge(&Probe::new(&key));
        assert_eq!(found.map(|c| c.value().len()), Some(big.len()));
        assert!(found.is_some_and(|c| c.value().iter().all(|&b| b == 7)));
        assert_eq!(forward(&list).len(), 30_001);
    }

    #[test]
    fn an_equal_key_inserted_again_is_found_first() {
        let list = SkipList::new();
        let key = encode(b"k", 5, ValueKind::Put);
        list.insert(b"k", &trailer(5), b"old");
        list.insert(b"k", &trailer(5), b"new");
        assert_eq!(
            list.seek_ge(&Probe::new(&key)).map(|c| c.value()),
            Some(&b"new"[..])
        );
        assert_eq!(list.len(), 2);
        // The same inside a chain: version 6 is chained to the node of version 5.
        let key = encode(b"k", 6, ValueKind::Put);
        list.insert(b"k", &trailer(6), b"old6");
        list.insert(b"k", &trailer(6), b"new6");
        assert_eq!(
            list.seek_ge(&Probe::new(&key)).map(|c| c.value()),
            Some(&b"new6"[..])
        );
        let values: Vec<&[u8]> = entries(&list).map(|c| c.value()).collect();
        assert_eq!(values, [&b"new6"[..], b"old6", b"new", b"old"]);
    }

    /// Readers walk and seek while a writer inserts: every reader sees a sorted list and
    /// finds every key that was inserted before its search began.
    #[test]
    fn readers_see_a_sorted_list_while_a_writer_inserts() {
        const KEYS: u32 = 40_000;
        let list = Arc::new(SkipList::new());
        let published = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let list = Arc::clone(&list);
                let published = Arc::clone(&published);
                std::thread::spawn(move || {
                    let mut checks = 0u64;
                    loop {
                        let done = published.load(AtomicOrdering::Acquire);
                        // A key inserted before `done` was stored must be found.
                        if done > 0 {
                            let i = (done - 1) as u32;
                            let key = encode(&scramble(i).to_be_bytes(), 1, ValueKind::Put);
                            let found = list.seek_ge(&Probe::new(&key)).map(|c| c.key());
                            assert_eq!(found, Some(key.as_slice()), "key {i} lost");
                        }
                        let walked: Vec<Cursor<'_>> = entries(&list).take(2_002).collect();
                        for pair in walked.windows(2) {
                            assert_eq!(pair[0].cmp_entry(&pair[1]), Ordering::Less, "out of order");
                        }
                        checks += 1;
                        if done == KEYS as usize {
                            return checks;
                        }
                    }
                })
            })
            .collect();
        for i in 0..KEYS {
            list.insert(&scramble(i).to_be_bytes(), &trailer(1), &i.to_le_bytes());
            published.store(i as usize + 1, AtomicOrdering::Release);
        }
        for r in readers {
            assert!(r.join().is_ok_and(|checks| checks > 0), "a reader failed");
        }
        assert_eq!(forward(&list).len(), KEYS as usize);
    }

    /// Readers look keys up through the index while a writer adds versions of 300 keys (and
    /// grows the index): a reader always finds a version at least as new as the last one
    /// published before its lookup, and each key's entries in order behind it.
    #[test]
    fn readers_find_the_newest_versions_while_a_writer_chains_them() {
        // 3000 keys: the index is replaced twice (at 768 and 1536 owners) while readers probe.
        const KEYS: u32 = 3000;
        const ROUNDS: u64 = 8;
        let list = Arc::new(SkipList::build(0, false));
        let published = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let list = Arc::clone(&list);
                let published = Arc::clone(&published);
                std::thread::spawn(move || {
                    let mut i = r as u32;
                    loop {
                        let done = published.load(AtomicOrdering::Acquire) as u64;
                        let key = scramble(i % KEYS).to_be_bytes();
                        // Writes are numbered 0.. in round-robin over the keys; seqno = round + 1.
                        let written = done / u64::from(KEYS)
                            + u64::from(done % u64::from(KEYS) > u64::from(i % KEYS));
                        let first = list.first_of_user_key(&key);
                        if written > 0 {
                            let c = first.unwrap_or_else(|| panic!("key {i} lost"));
                            let seqno = trailer_of(c.key()) >> 8;
                            assert!(
                                seqno >= written,
                                "key {}: saw {seqno}, want >= {written}",
                                i % KEYS
                            );
                            let mut at = Some(c);
                            let mut expect = seqno;
                            while let Some(c) = at.filter(|c| user_key(c.key()) == key) {
                                assert_eq!(trailer_of(c.key()) >> 8, expect);
                                expect -= 1;
                                at = c.next();
                            }
                            assert_eq!(expect, 0, "key {}: versions missing", i % KEYS);
                        }
                        if done == u64::from(KEYS) * ROUNDS {
                            return i;
                        }
                        i = i.wrapping_add(7);
                    }
                })
            })
            .collect();
        let mut n = 0;
        for round in 0..ROUNDS {
            for k in 0..KEYS {
                list.insert(&scramble(k).to_be_bytes(), &trailer(round + 1), &[0u8; 8]);
                n += 1;
                published.store(n, AtomicOrdering::Release);
            }
        }
        for r in readers {
            assert!(r.join().is_ok(), "a reader failed");
        }
        assert_eq!(forward(&list), backward(&list));
    }

    fn trailer_of(encoded: &[u8]) -> u64 {
        crate::lsm::key::trailer(encoded)
    }

    /// Dropping lists never leaves more spare chunks than the bound, and a list built after
    /// them (whose chunks are likely reused ones holding an old list's bytes; other tests share
    /// the spare list, so which chunks it gets is not certain) reads back what it stores.
    #[test]
    fn spare_chunks_are_bounded_and_reused_intact() {
        let fill = |list: &SkipList, tag: u8| {
            // 40 entries of 100 KiB: two chunks.
            for i in 0..40u32 {
                list.insert(&i.to_be_bytes(), &trailer(1), &vec![tag; 100 << 10]);
            }
        };
        let lists: Vec<SkipList> = (0..20).map(|_| SkipList::new()).collect();
        for list in &lists {
            fill(list, 1);
        }
        drop(lists);
        let spare = SPARE_CHUNKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(spare <= MAX_SPARE_CHUNKS, "{spare} spare chunks");
        let list = SkipList::new();
        fill(&list, 2);
        let values: Vec<&[u8]> = entries(&list).map(|c| c.value()).collect();
        assert!(values.iter().all(|v| v.iter().all(|&b| b == 2)));
        assert_eq!(values.len(), 40);
    }

    /// A tagged index that meets an address too high for a tag is rebuilt untagged, both when
    /// a new key is added and when a full chain's newest version becomes the owner; every key
    /// stays reachable, at its newest version.
    #[test]
    fn an_address_above_the_tag_turns_the_index_untagged() {
        let setup = || {
            let list = SkipList::new();
            for i in 0..100u32 {
                list.insert(&i.to_be_bytes(), &trailer(1), &[1]);
            }
            // A chain of MAX_CHAIN versions on key 0.
            for s in 2..2 + u64::from(MAX_CHAIN) {
                list.insert(&0u32.to_be_bytes(), &trailer(s), &[2]);
            }
            assert!(list.index_tagged());
            list.writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .addresses_above_tags = true;
            list
        };
        let newest = 2 + u64::from(MAX_CHAIN);
        let check = |list: &SkipList, extra: &[(u32, u64)]| {
            assert!(!list.index_tagged());
            for i in 0..100u32 {
                let want = extra.iter().find(|(k, _)| *k == i).map_or(1, |(_, s)| *s);
                let want = if i == 0 { want.max(newest - 1) } else { want };
                let found = list.first_of_user_key(&i.to_be_bytes());
                assert_eq!(
                    found.map(|c| trailer_of(c.key()) >> 8),
                    Some(want),
                    "key {i}"
                );
            }
        };
        // A new key.
        let list = setup();
        list.insert(&1000u32.to_be_bytes(), &trailer(1), &[3]);
        check(&list, &[]);
        assert!(list.first_of_user_key(&1000u32.to_be_bytes()).is_some());
        // The full chain's next newest version becomes the owner.
        let list = setup();
        list.insert(&0u32.to_be_bytes(), &trailer(newest), &[4]);
        check(&list, &[(0, newest)]);
        assert_eq!(forward(&list), backward(&list));
    }

    /// A bijection on u32, so the inserts arrive in no particular order.
    fn scramble(i: u32) -> u32 {
        i.wrapping_mul(0x9e37_79b9).rotate_left(7) ^ 0x5bd1_e995
    }
}
