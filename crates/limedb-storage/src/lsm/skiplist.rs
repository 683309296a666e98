//! The memtable's index: a skiplist of encoded internal keys whose nodes live in an arena.
//!
//! One node holds everything of one version in one piece of memory: a 32-byte header (the
//! key's 16-byte order prefix, the key and value lengths, the height), the tower of `height`
//! next-pointers, the encoded internal key and the value. Nodes are carved out of 2 MiB chunks
//! (anonymous maps that ask for transparent huge pages) by a bump allocator (an entry above
//! 512 KiB gets an allocation of its own), so an insert costs no call to the allocator most of
//! the time, a search touches one cache line and few TLB entries per node it passes, and the
//! whole memtable is freed at once when it is dropped. Nothing is ever
//! removed from the list, which is what makes the concurrency simple:
//!
//! - **One writer at a time.** Inserts take the list's writer lock (the LSM engine already
//!   serialises its writers, so the lock is never contended there). The writer builds the
//!   node completely, then links it in bottom level first, each link a release store.
//! - **Readers take no lock.** They follow next-pointers with acquire loads, so a node they
//!   reach is fully written. A node linked at level 0 is in the list; upper levels are only
//!   shortcuts, so a reader racing an insert either sees the new node or does not, and finds
//!   the right answer both ways.
//! - Memory is reclaimed only when the whole list is dropped, which the borrow checker ties to
//!   the end of every reader ([`Cursor`] borrows the list).
//!
//! Order: [`compare_encoded`] (user key ascending, then newest version first), decided first
//! by the user key's 16-byte order prefix kept in the header (see [`order_prefix`]).
//!
//! Height: a node is `h` levels high with probability `(1/4)^(h-1)·(3/4)`, at most
//! [`MAX_HEIGHT`] (12): searches stay logarithmic up to tens of millions of entries.
//!
//! This is one of the two places in the engine with `unsafe` code (the other maps SSTables):
//! every block says why it is sound, and the tests below exercise it (a sorted model, entries
//! larger than a chunk, readers racing a writer).
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
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, PoisonError};

use super::key::{compare_encoded, order_prefix, user_key, TRAILER_LEN};

/// The tallest tower.
pub const MAX_HEIGHT: usize = 12;

/// One level in `BRANCHING` continues to the next level up.
const BRANCHING: u64 = 4;

/// Size of an arena chunk: one transparent huge page on x86-64 Linux.
const CHUNK_BYTES: usize = 2 << 20;

/// Nodes larger than this get an allocation of their own rather than the rest of a chunk.
const LARGE_NODE_BYTES: usize = CHUNK_BYTES / 4;

/// The fixed part of a node; the tower, the key and the value follow it in memory.
#[repr(C)]
struct Node {
    /// The first 16 bytes of the user key, zero-padded, big-endian, as two words.
    prefix: [u64; 2],
    /// Length of the encoded internal key.
    key_len: u32,
    /// Number of next-pointers in the tower.
    height: u32,
    /// Length of the value.
    value_len: u64,
}

const HEADER_BYTES: usize = size_of::<Node>();
const POINTER_BYTES: usize = size_of::<AtomicPtr<Node>>();

// The tower right after the header must be aligned for its pointers.
const _: () = assert!(HEADER_BYTES.is_multiple_of(align_of::<AtomicPtr<Node>>()));
const _: () = assert!(align_of::<Node>() == 8);

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

/// The bump allocator behind the nodes, with the state only the writer touches.
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
        match memmap2::MmapMut::map_anon(CHUNK_BYTES) {
            Ok(mut chunk) => {
                #[cfg(target_os = "linux")]
                if let Err(error) = chunk.advise(memmap2::Advice::HugePage) {
                    tracing::debug!(%error, "madvise(MADV_HUGEPAGE) on a memtable chunk failed");
                }
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
    writer: Mutex<Writer>,
}

// SAFETY: the list owns its arena (freed only in `drop`, which needs exclusive access). Nodes
// are written only by the holder of `writer` before they are published with a release store,
// and never changed afterwards except for their tower pointers, which are atomics; readers
// only follow pointers loaded with acquire. The raw pointers in `Writer` are only used under
// its mutex.
unsafe impl Send for SkipList {}
// SAFETY: see `Send`: shared access is reads of published nodes and atomics, plus inserts
// serialised by the `writer` mutex.
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
            .finish()
    }
}

impl SkipList {
    /// An empty list.
    pub fn new() -> Self {
        let mut writer = Writer {
            allocations: Vec::new(),
            chunks: Vec::new(),
            cursor: ptr::null_mut(),
            remaining: 0,
            rng: 0x2545_f491_4f6c_dd1d,
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
                height: MAX_HEIGHT as u32,
                value_len: 0,
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
    /// its current chunk.
    pub fn node_bytes(&self) -> usize {
        self.node_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Inserts the entry whose encoded internal key is `user_key` followed by `trailer`, with
    /// `value`, and returns the bytes its node takes. An entry whose key equals one already
    /// present goes before it, so a search finds the newer insert first.
    pub fn insert(&self, user_key: &[u8], trailer: &[u8; TRAILER_LEN], value: &[u8]) -> usize {
        let key_len = user_key.len() + TRAILER_LEN;
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let height = writer.random_height();
        let bytes = node_bytes(height, key_len, value.len());
        let node = writer.allocate(bytes).cast::<Node>().as_ptr();
        // SAFETY: `node` is a fresh, 8-byte aligned region of `bytes`, large enough for the
        // header, a tower of `height`, the key and the value (see `node_bytes`); nothing else
        // can reach it until it is linked below.
        unsafe {
            node.write(Node {
                prefix: order_prefix(user_key),
                // Keys are bounded far below 4 GiB by the servers' limits.
                key_len: u32::try_from(key_len).unwrap_or(u32::MAX),
                height: height as u32,
                value_len: value.len() as u64,
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
        // SAFETY: `node` is fully written above and stays alive as long as `self`.
        let probe = unsafe { probe_of(node) };

        let mut prev = [self.head.as_ptr().cast_const(); MAX_HEIGHT];
        self.search(|n| n.cmp_probe(&probe) == Ordering::Less, &mut prev);
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
        self.node_bytes.fetch_add(bytes, AtomicOrdering::Relaxed);
        self.len.fetch_add(1, AtomicOrdering::Release);
        bytes
    }

    /// Walks down from the top: at each level, moves right while `advance(next)` holds (`next`
    /// a published node, handed over as a [`Cursor`]), and
    /// records in `prev` the node where it stepped down. Returns the level-0 node it stopped
    /// at (the head, or the last node for which `advance` held) and the node after it (null
    /// at the end). `advance` must hold for a prefix of the list (monotone).
    fn search(
        &self,
        advance: impl Fn(Cursor<'_>) -> bool,
        prev: &mut [*const Node; MAX_HEIGHT],
    ) -> (*const Node, *const Node) {
        let mut at = self.head.as_ptr().cast_const();
        let mut level = self
            .height
            .load(AtomicOrdering::Acquire)
            .clamp(1, MAX_HEIGHT)
            - 1;
        loop {
            // SAFETY: `at` is the head (tower MAX_HEIGHT) or a node reached at `level`, whose
            // tower is taller than `level`.
            let next = unsafe { (*tower(at, level)).load(AtomicOrdering::Acquire) }.cast_const();
            // A non-null link leads to a published node of this list.
            if !next.is_null()
                && advance(Cursor {
                    node: next,
                    _list: PhantomData,
                })
            {
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

    fn cursor(&self, node: *const Node) -> Option<Cursor<'_>> {
        (!node.is_null() && node != self.head.as_ptr().cast_const()).then_some(Cursor {
            node,
            _list: PhantomData,
        })
    }

    /// The first entry `>= probe`.
    pub fn seek_ge(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (_, next) = self.search(|n| n.cmp_probe(probe) == Ordering::Less, &mut prev);
        self.cursor(next)
    }

    /// The first entry `> probe`.
    pub fn seek_gt(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (_, next) = self.search(|n| n.cmp_probe(probe) != Ordering::Greater, &mut prev);
        self.cursor(next)
    }

    /// The last entry `< probe`.
    pub fn seek_lt(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (at, _) = self.search(|n| n.cmp_probe(probe) == Ordering::Less, &mut prev);
        self.cursor(at)
    }

    /// The last entry `<= probe`.
    pub fn seek_le(&self, probe: &Probe<'_>) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (at, _) = self.search(|n| n.cmp_probe(probe) != Ordering::Greater, &mut prev);
        self.cursor(at)
    }

    /// The first entry.
    pub fn first(&self) -> Option<Cursor<'_>> {
        // SAFETY: the head's tower has MAX_HEIGHT levels.
        let next = unsafe { (*tower(self.head.as_ptr(), 0)).load(AtomicOrdering::Acquire) };
        self.cursor(next)
    }

    /// The last entry.
    pub fn last(&self) -> Option<Cursor<'_>> {
        let mut prev = [ptr::null(); MAX_HEIGHT];
        let (at, _) = self.search(|_| true, &mut prev);
        self.cursor(at)
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
    }
}

/// A position on an entry of a [`SkipList`], valid as long as the list is borrowed.
#[derive(Clone, Copy)]
pub struct Cursor<'a> {
    node: *const Node,
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
        // SAFETY: every node has a tower of at least one level.
        let next = unsafe { (*tower(self.node, 0)).load(AtomicOrdering::Acquire) };
        (!next.is_null()).then_some(Cursor {
            node: next,
            _list: PhantomData,
        })
    }

    /// The order of this entry against `other`'s.
    pub fn cmp_entry(&self, other: &Cursor<'_>) -> Ordering {
        // SAFETY: `other` points at a published node of a borrowed list.
        let probe = unsafe { probe_of(other.node) };
        self.cmp_probe(&probe)
    }

    /// The order of this entry against `probe`.
    fn cmp_probe(&self, probe: &Probe<'_>) -> Ordering {
        // SAFETY: a cursor points at a published node, alive while the list is borrowed; its
        // header never changes after publication.
        let prefix = unsafe { (*self.node).prefix };
        prefix
            .cmp(&probe.prefix)
            .then_with(|| compare_encoded(self.key(), probe.encoded))
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
        let height = (*node).height as usize;
        let at = node.cast::<u8>().add(HEADER_BYTES + height * POINTER_BYTES);
        std::slice::from_raw_parts(at, (*node).key_len as usize)
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

    fn forward(list: &SkipList) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = list.first();
        while let Some(c) = at {
            out.push(c.key().to_vec());
            at = c.next();
        }
        out
    }

    fn backward(list: &SkipList) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = list.last();
        while let Some(c) = at {
            out.push(c.key().to_vec());
            at = list.prev(c);
        }
        out.reverse();
        out
    }

    proptest! {
        /// Inserts in any order give the compare_encoded order both ways, and each seek lands
        /// where a sorted vector says; values stay with their keys. Keys share long prefixes
        /// and include zero bytes, to exercise the prefix shortcut.
        #[test]
        fn order_and_seeks_match_a_sorted_model(
            keys in proptest::collection::btree_set(
                (proptest::collection::vec(0u8..3, 0..20), 0u64..4), 0..150),
            probes in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..20), 0u64..5), 1..40),
        ) {
            let list = SkipList::new();
            let mut shuffled: Vec<_> = keys.iter().cloned().collect();
            shuffled.reverse();
            let third = shuffled.len() / 3;
            shuffled.rotate_left(third);
            for (k, s) in &shuffled {
                let value = [k.as_slice(), &s.to_le_bytes()].concat();
                list.insert(k, &trailer(*s), &value);
            }
            let want = ordered(&keys);
            prop_assert_eq!(list.len(), want.len());
            prop_assert_eq!(&forward(&list), &want);
            prop_assert_eq!(&backward(&list), &want);
            let mut at = list.first();
            while let Some(c) = at {
                let uk = user_key(c.key());
                let seqno = u64::from_le_bytes(c.key()[uk.len()..].try_into().unwrap_or([0; 8])) >> 8;
                let want = [uk, &seqno.to_le_bytes()].concat();
                prop_assert_eq!(c.value(), want.as_slice());
                at = c.next();
            }
            for (k, s) in probes {
                let encoded = encode(&k, s, ValueKind::Put);
                let probe = Probe::new(&encoded);
                let ge = want.iter().find(|w| compare_encoded(w, &encoded) != Ordering::Less);
                let gt = want.iter().find(|w| compare_encoded(w, &encoded) == Ordering::Greater);
                let lt = want.iter().rev().find(|w| compare_encoded(w, &encoded) == Ordering::Less);
                let le = want.iter().rev().find(|w| compare_encoded(w, &encoded) != Ordering::Greater);
                prop_assert_eq!(list.seek_ge(&probe).map(|c| c.key()), ge.map(Vec::as_slice));
                prop_assert_eq!(list.seek_gt(&probe).map(|c| c.key()), gt.map(Vec::as_slice));
                prop_assert_eq!(list.seek_lt(&probe).map(|c| c.key()), lt.map(Vec::as_slice));
                prop_assert_eq!(list.seek_le(&probe).map(|c| c.key()), le.map(Vec::as_slice));
            }
        }
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
                        let mut at = list.first();
                        let mut walked = 0usize;
                        while let Some(c) = at {
                            at = c.next();
                            if let Some(n) = at {
                                assert_eq!(c.cmp_entry(&n), Ordering::Less, "out of order");
                            }
                            walked += 1;
                            if walked > 2_000 {
                                break;
                            }
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

    /// A bijection on u32, so the inserts arrive in no particular order.
    fn scramble(i: u32) -> u32 {
        i.wrapping_mul(0x9e37_79b9).rotate_left(7) ^ 0x5bd1_e995
    }
}
