//! [`Table`]: an open SSTable (footer checked, index and filter in memory), point reads, and
//! [`TableIter`], a cursor over its entries.

use std::cmp::Ordering;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::block::{Block, BlockIter};
use super::bloom::BloomFilter;
use super::codec::{self, BlockHandle};
use super::footer::{Footer, FooterError, Properties, FOOTER_LEN};
use super::TableMeta;
use crate::error::StorageError;
use crate::lsm::cache::{BlockCache, BlockKey, ENTRY_OVERHEAD_BYTES};
use crate::lsm::key::{
    compare_encoded, order_prefix, seek_key, user_key, InternalKeyRef, ValueKind,
};
use crate::Result;

/// How a [`Table`] reads its blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Map the file into memory once; blocks are slices of the map (uncompressed blocks are
    /// not copied at all). The default.
    #[default]
    Mmap,
    /// Read each block with `pread(2)` into its own buffer.
    Pread,
}

/// One data block in the in-memory index.
#[derive(Debug)]
struct IndexEntry {
    /// The block's last internal key: every key in the block is `<=` it.
    last_key: Box<[u8]>,
    handle: BlockHandle,
}

#[derive(Debug)]
enum Source {
    /// The whole file, mapped (owned by a [`SharedMap`], whose map the block cache may
    /// release pages of), and the file itself for the point reads that copy their block
    /// (see [`TableInner::read_block_copied`]).
    Mmap {
        map: Bytes,
        file: File,
    },
    Pread(File),
}

/// How a block is read from a mapped table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// A slice of the map when the block is stored uncompressed (no copy).
    Map,
    /// Copied out of the file with `pread`, whatever the mode.
    Copy,
}

/// What one read through a memory map is charged to the block cache's budget (see
/// [`BlockCache::charge_mapped`]): Linux's default fault-around, the most one page fault maps
/// (the kernel's `fault_around_bytes`).
const FAULT_AROUND_BYTES: u64 = 64 << 10;

/// Lets a shared map own the memory behind a [`Bytes`].
struct SharedMap(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug)]
struct TableInner {
    meta: TableMeta,
    source: Source,
    /// Where the footer starts: every block ends at or before it.
    footer_offset: u64,
    index: Vec<IndexEntry>,
    /// [`order_prefix`] of each index entry's user key, in a dense array of their own: a
    /// point read's binary search runs on these, 4 to a cache line, and follows the pointer
    /// to a key only among entries whose prefixes tie.
    index_prefixes: Vec<[u64; 2]>,
    /// Every [`INDEX_SAMPLE_STRIDE`]-th of `index_prefixes` (a few KiB per table, so it stays
    /// in the CPU cache): the search narrows to one stride of `index_prefixes` with it first,
    /// so a lookup misses the cache a few times instead of once per halving.
    index_samples: Vec<[u64; 2]>,
    filter: BloomFilter,
    /// The shared block cache for data blocks, if any.
    cache: Option<Arc<BlockCache>>,
    /// This table's id in `cache`.
    table_id: u64,
}

/// An open, immutable SSTable. Cheap to clone (the clones share the file, index and filter).
///
/// See [`super::TableWriter`] for an example.
#[derive(Clone, Debug)]
pub struct Table {
    inner: Arc<TableInner>,
}

/// Maps a file into memory.
#[expect(unsafe_code, reason = "memmap2::Mmap::map is unsafe")]
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: SSTables are immutable once `TableWriter::finish` returns: the engine never
    // writes to, truncates or replaces a table file while it is open (a new table always gets
    // a new file name). The mapping is read-only and shared with no writer, so the bytes behind
    // it do not change for as long as the map lives. A third party modifying the file behind
    // our back is outside this contract (as with any mmap-based engine). Covered by every
    // `ReadMode::Mmap` test in `sstable/tests.rs`.
    unsafe { memmap2::Mmap::map(file) }
}

/// Drops `map`'s pages from the process's page tables (`MADV_DONTNEED`); the kernel keeps
/// them in its page cache, and the next read of one faults it back in with the same bytes.
/// Used by [`BlockCache::charge_mapped`] to keep mapped table pages within the cache budget.
#[expect(
    unsafe_code,
    reason = "madvise(MADV_DONTNEED) is an unchecked advice in memmap2"
)]
pub(crate) fn release_mapped_pages(map: &memmap2::Mmap) -> std::io::Result<()> {
    // SAFETY: `map` is a read-only, shared (MAP_SHARED) map of an SSTable, which nothing
    // writes while it is open (see `map_file`). For such a map MADV_DONTNEED only unmaps the
    // pages from this process: the virtual range stays mapped to the same file, and a later
    // access faults in the file's bytes again, from the page cache or the disk. So every
    // `Bytes` view of the map, and every reference into it held by a reader right now, keeps
    // reading exactly the bytes it read before; no memory is freed or changed under them
    // (unlike a private or anonymous map, where the advice discards data). Tested by
    // `released_map_pages_read_back_the_same_bytes` in `sstable/tests.rs`.
    unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
}

impl Table {
    /// Opens the table at `path`: checks the footer (length, magic, version, checksum), then
    /// loads and checks the properties, filter and index blocks. Data blocks are read lazily,
    /// without a block cache; see [`Table::open_with`].
    pub fn open(path: impl AsRef<Path>, mode: ReadMode) -> Result<Table> {
        Table::open_with(path, mode, None, 0)
    }

    /// As [`Table::open`], and reads data blocks through `cache` (if given) under
    /// `table_id`, which must be unique among the tables open on that cache (the table's file
    /// number, say) and must not be reused for different contents without first calling
    /// [`BlockCache::remove_table`]. Call that when the table's file is deleted, too.
    ///
    /// What is cached is a data block's checked, decompressed bytes. Index, filter and
    /// properties stay pinned in the `Table`, outside the cache. A point read ([`Table::get`])
    /// that misses the cache copies its block out of the file with `pread` and caches it, in
    /// either mode (see `TableInner::read_block_copied`). In [`ReadMode::Mmap`], cursors
    /// (scans, compactions) read blocks stored uncompressed straight from the mapping and
    /// never cache them (as LevelDB does): they cost no copy and no decompression, and
    /// caching them would keep the mapping of a deleted file alive.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use limedb_storage::lsm::cache::BlockCache;
    /// use limedb_storage::lsm::key::{encode, ValueKind};
    /// use limedb_storage::lsm::sstable::{ReadMode, Table, TableOptions, TableWriter};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("000007.sst");
    /// let mut writer = TableWriter::create(&path, TableOptions::default())?;
    /// writer.add(&encode(b"lime", 1, ValueKind::Put), b"green")?;
    /// writer.finish()?;
    ///
    /// let cache = Arc::new(BlockCache::new(8 << 20));
    /// let table = Table::open_with(&path, ReadMode::Pread, Some(Arc::clone(&cache)), 7)?;
    /// for _ in 0..2 {
    ///     assert!(table.get(b"lime", 1)?.is_some());
    /// }
    /// let stats = cache.stats();
    /// assert_eq!((stats.misses, stats.hits), (1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with(
        path: impl AsRef<Path>,
        mode: ReadMode,
        cache: Option<Arc<BlockCache>>,
        table_id: u64,
    ) -> Result<Table> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(StorageError::io("failed to open SSTable", &path))?;
        let file_size = file
            .metadata()
            .map_err(StorageError::io("failed to stat SSTable", &path))?
            .len();
        let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let Some(footer_offset) = file_size.checked_sub(FOOTER_LEN as u64) else {
            return Err(corrupt(
                0,
                format!("file of {file_size} bytes is shorter than the {FOOTER_LEN}-byte footer"),
            ));
        };
        let source = match mode {
            ReadMode::Mmap => {
                let map = Arc::new(
                    map_file(&file).map_err(StorageError::io("failed to mmap SSTable", &path))?,
                );
                if let Some(cache) = &cache {
                    cache.register_map(&map);
                }

                Source::Mmap {
                    map: Bytes::from_owner(SharedMap(map)),
                    file,
                }
            }
            ReadMode::Pread => Source::Pread(file),
        };
        let footer_bytes = read_range(&source, Via::Map, &path, footer_offset, FOOTER_LEN)?;
        let footer = match Footer::decode(&footer_bytes) {
            Ok(footer) => footer,
            Err(FooterError::Version(found)) => {
                return Err(match u8::try_from(found) {
                    Ok(found) => StorageError::UnsupportedVersion {
                        path,
                        found,
                        supported: super::footer::FORMAT_VERSION as u8,
                    },
                    Err(_) => corrupt(
                        footer_offset,
                        format!("footer holds format version {found}, this build reads 1"),
                    ),
                })
            }
            Err(FooterError::Corrupt(reason)) => return Err(corrupt(footer_offset, reason)),
        };
        if footer.entry_count == 0 {
            return Err(corrupt(
                footer_offset,
                "footer says the table is empty".into(),
            ));
        }
        // Copied, not sliced from a map: these blocks stay in memory as long as the table is
        // open, and a slice would fault back in after every release of the map's pages.
        let read = |handle| read_block(&source, Via::Copy, &path, footer_offset, handle);

        let properties = read(footer.properties)?;
        let properties = Properties::decode(&properties)
            .map_err(|reason| corrupt(footer.properties.offset, reason))?;
        for key in [&properties.smallest_key, &properties.largest_key] {
            if InternalKeyRef::decode(key).is_none() {
                return Err(corrupt(
                    footer.properties.offset,
                    "a boundary key is not an internal key".into(),
                ));
            }
        }
        if compare_encoded(&properties.smallest_key, &properties.largest_key) == Ordering::Greater {
            return Err(corrupt(
                footer.properties.offset,
                "smallest key is greater than largest key".into(),
            ));
        }

        let filter = BloomFilter::decode(read(footer.filter)?)
            .map_err(|reason| corrupt(footer.filter.offset, reason))?;

        let index = decode_index(read(footer.index)?, footer_offset)
            .map_err(|reason| corrupt(footer.index.offset, reason))?;
        if index.len() as u64 != properties.data_block_count {
            return Err(corrupt(
                footer.index.offset,
                format!(
                    "index lists {} data blocks, properties say {}",
                    index.len(),
                    properties.data_block_count
                ),
            ));
        }
        if index.last().map(|e| &e.last_key[..]) != Some(&properties.largest_key[..]) {
            return Err(corrupt(
                footer.index.offset,
                "the last index key is not the table's largest key".into(),
            ));
        }

        let index_prefixes: Vec<[u64; 2]> = index
            .iter()
            .map(|entry| order_prefix(user_key(&entry.last_key)))
            .collect();
        let table = TableInner {
            meta: TableMeta {
                path: path.clone(),
                file_size_bytes: file_size,
                entry_count: footer.entry_count,
                smallest_key: Bytes::from(properties.smallest_key),
                largest_key: Bytes::from(properties.largest_key),
                min_seqno: properties.min_seqno,
                max_seqno: footer.max_seqno,
                tombstone_count: properties.tombstone_count,
                data_block_count: properties.data_block_count,
            },
            source,
            footer_offset,
            index_samples: index_prefixes
                .iter()
                .step_by(INDEX_SAMPLE_STRIDE)
                .copied()
                .collect(),
            index_prefixes,
            index,
            filter,
            cache,
            table_id,
        };
        Ok(Table {
            inner: Arc::new(table),
        })
    }

    /// What the table holds: path, size, entry count, key range, sequence numbers.
    pub fn meta(&self) -> &TableMeta {
        &self.inner.meta
    }

    /// The table's file.
    pub fn path(&self) -> &Path {
        &self.inner.meta.path
    }

    /// The id this table's blocks are cached under (see [`Table::open_with`]; 0 after
    /// [`Table::open`]).
    pub fn table_id(&self) -> u64 {
        self.inner.table_id
    }

    /// Whether the bloom filter admits `user_key` (`false`: it is certainly not in the
    /// table).
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        self.inner.filter.may_contain(user_key)
    }

    /// The newest version of `user_key` with a sequence number `<= snapshot_seqno`: `Put` with
    /// its value, `Delete` with an empty value (so the caller stops looking in older tables),
    /// or `None` if this table has no such version.
    pub fn get(&self, user_key: &[u8], snapshot_seqno: u64) -> Result<Option<(ValueKind, Bytes)>> {
        let Some((handle, target)) = self.locate(user_key, snapshot_seqno) else {
            return Ok(None);
        };
        let block = self.inner.read_block_copied(handle)?;
        self.inner.find_in_block(handle, block, user_key, &target)
    }

    /// As [`Table::get`] when that needs no I/O: the bloom filter or the index rule the key
    /// out, or its data block is in the block cache. `None` when the block would have to be
    /// read (from the file, or from a mapping whose pages may not be resident).
    pub fn get_if_cached(
        &self,
        user_key: &[u8],
        snapshot_seqno: u64,
    ) -> Option<Result<Option<(ValueKind, Bytes)>>> {
        let Some((handle, target)) = self.locate(user_key, snapshot_seqno) else {
            return Some(Ok(None));
        };
        let block = self.inner.cached_block(handle)?;
        Some(self.inner.find_in_block(handle, block, user_key, &target))
    }

    /// Reads data blocks into the block cache in file order while their charges to the cache
    /// (decompressed size plus [`ENTRY_OVERHEAD_BYTES`]) stay within `budget_bytes`, and
    /// returns how many it cached. Each is read, checked and decompressed as a point read does
    /// it (`pread`), so a table that does not read back fails here; the cache counts inserts,
    /// not misses. Without a block cache it reads nothing.
    pub fn warm_cache(&self, budget_bytes: usize) -> Result<usize> {
        let Some(cache) = &self.inner.cache else {
            return Ok(0);
        };
        let mut spent = 0usize;
        let mut cached = 0;
        for entry in &self.inner.index {
            let handle = entry.handle;
            let block = self.inner.read_uncached(Via::Copy, handle)?;
            spent += block.len() + ENTRY_OVERHEAD_BYTES;
            if spent > budget_bytes {
                break;
            }
            cache.insert(BlockKey::new(self.inner.table_id, handle.offset), block);
            cached += 1;
        }
        Ok(cached)
    }

    /// The data block that may hold `user_key` at `snapshot_seqno`, and the internal key to
    /// seek there; `None` when the filter or the index rule the key out.
    fn locate(&self, user_key: &[u8], snapshot_seqno: u64) -> Option<(BlockHandle, Vec<u8>)> {
        if !self.inner.filter.may_contain(user_key) {
            return None;
        }
        let target = seek_key(user_key, snapshot_seqno);
        let prefix = order_prefix(user_key);
        let prefixes = &self.inner.index_prefixes;
        let index = &self.inner.index;
        // Entries with a smaller prefix come before the target, those with a larger one
        // after it; only ties need their keys compared.
        let lo = first_not_below(prefixes, &self.inner.index_samples, &prefix);
        let ties = prefixes
            .get(lo..)
            .unwrap_or_default()
            .partition_point(|p| *p == prefix);
        let position = lo
            + index
                .get(lo..lo + ties)
                .unwrap_or_default()
                .partition_point(|entry| {
                    compare_encoded(&entry.last_key, &target) == Ordering::Less
                });
        let entry = index.get(position)?;
        Some((entry.handle, target))
    }

    /// A cursor over the table, not yet positioned: call [`TableIter::seek_to_first`],
    /// [`TableIter::seek`] or [`TableIter::seek_to_last`].
    pub fn iter(&self) -> TableIter {
        TableIter {
            table: self.clone(),
            block_index: 0,
            block: None,
        }
    }

    /// All entries in order, as a standard iterator of `(internal key, value)`. Stops after
    /// the first error.
    pub fn entries(&self) -> Entries {
        Entries {
            iter: self.iter(),
            started: false,
            done: false,
        }
    }

    /// Reads, checks and decompresses one data block, through the block cache if the table
    /// has one (see [`Table::open_with`]). Every data block read goes through here. `handle`
    /// must come from this table's index: the cache knows a block by its offset alone.
    pub fn read_block(&self, handle: BlockHandle) -> Result<Bytes> {
        self.inner.read_block(handle)
    }
}

impl TableInner {
    fn corrupt(&self, offset: u64, reason: String) -> StorageError {
        StorageError::Corrupt {
            path: self.meta.path.clone(),
            offset,
            reason,
        }
    }

    fn read_block(&self, handle: BlockHandle) -> Result<Bytes> {
        let Some(cache) = &self.cache else {
            return self.read_uncached(Via::Map, handle);
        };
        let read = || {
            if matches!(self.source, Source::Mmap { .. }) {
                // A page fault maps up to `FAULT_AROUND_BYTES` of neighbouring cached pages
                // at once, so that is what a read may add to resident memory.
                cache.charge_mapped(u64::from(handle.size).max(FAULT_AROUND_BYTES));
            }
            self.read_uncached(Via::Map, handle)
        };
        if self.is_zero_copy(handle) {
            return read();
        }
        self.through_cache(cache, handle, read)
    }

    /// The block at `handle` for a point read: from the block cache, or else copied out of the
    /// file with `pread` (in either mode) and cached. A point read touches one block of a
    /// table that may be far larger than the cache; faulting its pages into a map and then
    /// releasing them to stay within the budget costs more than the copy (measured on the
    /// storage benchmark's readrandom: 88k against 150k reads/s), and a copied block stays hot
    /// in the cache where a mapped one would be released with the rest of the map.
    fn read_block_copied(&self, handle: BlockHandle) -> Result<Bytes> {
        let read = || self.read_uncached(Via::Copy, handle);
        match &self.cache {
            Some(cache) => self.through_cache(cache, handle, read),
            None => read(),
        }
    }

    /// The block at `handle` from `cache`, or else `read()` and cached.
    fn through_cache(
        &self,
        cache: &BlockCache,
        handle: BlockHandle,
        read: impl FnOnce() -> Result<Bytes>,
    ) -> Result<Bytes> {
        let key = BlockKey::new(self.table_id, handle.offset);
        if let Some(block) = cache.get(key) {
            return Ok(block);
        }
        let block = read()?;
        cache.insert(key, block.clone());
        Ok(block)
    }

    /// Reads, checks and decompresses the block at `handle`, bypassing the cache.
    fn read_uncached(&self, via: Via, handle: BlockHandle) -> Result<Bytes> {
        read_block(
            &self.source,
            via,
            &self.meta.path,
            self.footer_offset,
            handle,
        )
    }

    /// Whether the block at `handle` is read as a slice of the memory map: mapped and stored
    /// uncompressed. Only a hint (the type byte is not yet checksummed); `read_block` checks
    /// the block either way.
    fn is_zero_copy(&self, handle: BlockHandle) -> bool {
        let Source::Mmap { map, .. } = &self.source else {
            return false;
        };
        let type_byte = handle
            .offset
            .checked_add(u64::from(handle.size))
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| map.get(at));
        type_byte == Some(&codec::type_none())
    }

    /// The block at `handle` if the block cache holds it (see [`Table::get_if_cached`]).
    fn cached_block(&self, handle: BlockHandle) -> Option<Bytes> {
        let cache = self.cache.as_ref()?;
        cache.probe(BlockKey::new(self.table_id, handle.offset))
    }

    /// Seeks `target` (the internal key for `user_key`) in `data`, the block at `handle`:
    /// the answer of [`Table::get`].
    fn find_in_block(
        &self,
        handle: BlockHandle,
        data: Bytes,
        user_key: &[u8],
        target: &[u8],
    ) -> Result<Option<(ValueKind, Bytes)>> {
        let mut block = Block::new(data)
            .map(Block::iter)
            .map_err(|reason| self.corrupt(handle.offset, reason))?;
        block
            .seek(target)
            .map_err(|reason| self.corrupt(handle.offset, reason))?;
        if !block.valid() {
            return Err(self.corrupt(
                handle.offset,
                "block holds no key up to its index separator".into(),
            ));
        }
        let Some(found) = InternalKeyRef::decode(block.key()) else {
            return Err(self.corrupt(handle.offset, "block holds a malformed internal key".into()));
        };
        if found.user_key != user_key {
            return Ok(None);
        }
        Ok(Some(match found.kind {
            ValueKind::Put => (ValueKind::Put, block.value()),
            ValueKind::Delete => (ValueKind::Delete, Bytes::new()),
        }))
    }

    fn load_block(&self, handle: BlockHandle) -> Result<BlockIter> {
        let data = self.read_block(handle)?;
        Block::new(data)
            .map(Block::iter)
            .map_err(|reason| self.corrupt(handle.offset, reason))
    }
}

/// See [`TableInner::index_samples`].
const INDEX_SAMPLE_STRIDE: usize = 64;

/// The first position in `prefixes` (ascending) whose prefix is `>= target`, `prefixes.len()`
/// if none; `samples` holds every [`INDEX_SAMPLE_STRIDE`]-th of `prefixes`, from the first.
fn first_not_below(prefixes: &[[u64; 2]], samples: &[[u64; 2]], target: &[u64; 2]) -> usize {
    // Samples below the target: `prefixes[(below - 1) * STRIDE]` is below it and
    // `prefixes[below * STRIDE]` (if any) is not, so the answer lies in between.
    let below = samples.partition_point(|p| p < target);
    let start = below.saturating_sub(1) * INDEX_SAMPLE_STRIDE;
    let end = (below * INDEX_SAMPLE_STRIDE).min(prefixes.len());
    start
        + prefixes
            .get(start..end)
            .unwrap_or_default()
            .partition_point(|p| p < target)
}

/// Reads, checks and decompresses the block at `handle`, which must end before the footer.
fn read_block(
    source: &Source,
    via: Via,
    path: &Path,
    footer_offset: u64,
    handle: BlockHandle,
) -> Result<Bytes> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: handle.offset,
        reason,
    };
    let end = handle
        .end_offset()
        .filter(|&end| end <= footer_offset)
        .ok_or_else(|| {
            corrupt(format!(
                "block of {} bytes runs past the data (which ends at {footer_offset})",
                handle.size
            ))
        })?;
    let stored = read_range(
        source,
        via,
        path,
        handle.offset,
        (end - handle.offset) as usize,
    )?;
    codec::decode_stored(stored).map_err(corrupt)
}

/// Reads `len` bytes at `offset`, which the caller has checked lie inside the file.
fn read_range(source: &Source, via: Via, path: &Path, offset: u64, len: usize) -> Result<Bytes> {
    match source {
        Source::Mmap { map, .. } if via == Via::Map => {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(len);
            if end > map.len() {
                return Err(StorageError::Corrupt {
                    path: path.to_path_buf(),
                    offset,
                    reason: format!("{len} bytes at {offset} run past the end of the file"),
                });
            }
            Ok(map.slice(start..end))
        }
        Source::Mmap { file, .. } | Source::Pread(file) => {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(StorageError::io("failed to read SSTable", path))?;
            Ok(Bytes::from(buf))
        }
    }
}

/// Decodes the index block and checks its handles and order.
fn decode_index(block: Bytes, data_end: u64) -> std::result::Result<Vec<IndexEntry>, String> {
    let mut iter = Block::new(block)?.iter();
    iter.seek_to_first()?;
    let mut entries: Vec<IndexEntry> = Vec::new();
    let mut next_offset = 0u64;
    while iter.valid() {
        let handle = BlockHandle::decode(&iter.value())
            .ok_or_else(|| format!("index entry {} holds a malformed handle", entries.len()))?;
        if handle.offset != next_offset || handle.end_offset().is_none_or(|end| end > data_end) {
            return Err(format!(
                "index entry {} points at {handle:?}, expected a block at {next_offset}",
                entries.len()
            ));
        }
        next_offset = handle.end_offset().unwrap_or(u64::MAX);
        if InternalKeyRef::decode(iter.key()).is_none() {
            return Err(format!("index entry {} has a malformed key", entries.len()));
        }
        if let Some(previous) = entries.last() {
            if compare_encoded(&previous.last_key, iter.key()) != Ordering::Less {
                return Err(format!("index entry {} is out of order", entries.len()));
            }
        }
        entries.push(IndexEntry {
            last_key: iter.key().into(),
            handle,
        });
        iter.next()?;
    }
    if entries.is_empty() {
        return Err("index lists no data blocks".to_string());
    }
    Ok(entries)
}

/// A cursor over a [`Table`]'s entries in [`compare_encoded`] order, forward and backward.
///
/// It owns a clone of the table. After an `Err` it is no longer positioned
/// ([`TableIter::valid`] is `false`) until the next seek.
///
/// ```
/// use limedb_storage::lsm::key::{encode, seek_key, ValueKind};
/// use limedb_storage::lsm::sstable::{ReadMode, Table, TableOptions, TableWriter};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("1.sst");
/// let mut writer = TableWriter::create(&path, TableOptions::default())?;
/// for user_key in [&b"a"[..], b"b", b"c"] {
///     writer.add(&encode(user_key, 1, ValueKind::Put), user_key)?;
/// }
/// writer.finish()?;
///
/// let table = Table::open(&path, ReadMode::default())?;
/// let mut iter = table.iter();
/// iter.seek(&seek_key(b"b", u64::MAX))?;
/// assert_eq!(iter.value().as_deref(), Some(&b"b"[..]));
/// iter.next()?;
/// assert_eq!(iter.value().as_deref(), Some(&b"c"[..]));
/// iter.next()?;
/// assert!(!iter.valid());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TableIter {
    table: Table,
    /// Index of the data block `block` was loaded from.
    block_index: usize,
    block: Option<BlockIter>,
}

impl TableIter {
    /// Whether the cursor is on an entry.
    pub fn valid(&self) -> bool {
        self.block.as_ref().is_some_and(BlockIter::valid)
    }

    /// The current internal key, if positioned.
    pub fn key(&self) -> Option<&[u8]> {
        self.block
            .as_ref()
            .filter(|b| b.valid())
            .map(BlockIter::key)
    }

    /// The current value (sharing the block's buffer), if positioned.
    pub fn value(&self) -> Option<Bytes> {
        self.block
            .as_ref()
            .filter(|b| b.valid())
            .map(BlockIter::value)
    }

    /// Runs `step` on the current block, turning a block error into `Corrupt` and unpositioning
    /// the cursor on any error.
    fn on_block(
        &mut self,
        step: impl FnOnce(&mut BlockIter) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let Some(block) = self.block.as_mut() else {
            return Ok(());
        };
        if let Err(reason) = step(block) {
            self.block = None;
            let offset = self
                .table
                .inner
                .index
                .get(self.block_index)
                .map_or(0, |e| e.handle.offset);
            return Err(self.table.inner.corrupt(offset, reason));
        }
        Ok(())
    }

    fn load(&mut self, block_index: usize) -> Result<bool> {
        self.block = None;
        let Some(entry) = self.table.inner.index.get(block_index) else {
            return Ok(false);
        };
        self.block = Some(self.table.inner.load_block(entry.handle)?);
        self.block_index = block_index;
        Ok(true)
    }

    /// Moves forward from an exhausted block to the first entry of the next non-empty one.
    fn skip_forward(&mut self) -> Result<()> {
        while self.block.is_some() && !self.valid() {
            let next = self.block_index + 1;
            if !self.load(next)? {
                return Ok(());
            }
            self.on_block(BlockIter::seek_to_first)?;
        }
        Ok(())
    }

    /// Moves backward from an exhausted block to the last entry of the previous one.
    fn skip_backward(&mut self) -> Result<()> {
        while self.block.is_some() && !self.valid() {
            let Some(previous) = self.block_index.checked_sub(1) else {
                self.block = None;
                return Ok(());
            };
            self.load(previous)?;
            self.on_block(BlockIter::seek_to_last)?;
        }
        Ok(())
    }

    /// Positions on the first entry.
    pub fn seek_to_first(&mut self) -> Result<()> {
        if self.load(0)? {
            self.on_block(BlockIter::seek_to_first)?;
            self.skip_forward()?;
        }
        Ok(())
    }

    /// Positions on the last entry.
    pub fn seek_to_last(&mut self) -> Result<()> {
        let count = self.table.inner.index.len();
        if count > 0 && self.load(count - 1)? {
            self.on_block(BlockIter::seek_to_last)?;
            self.skip_backward()?;
        }
        Ok(())
    }

    /// Positions on the first entry whose internal key is `>= internal_key` in
    /// [`compare_encoded`] order; not valid if there is none. To read `user_key` as of
    /// snapshot `s`, seek to [`seek_key`]`(user_key, s)`.
    pub fn seek(&mut self, internal_key: &[u8]) -> Result<()> {
        let position = self.table.inner.index.partition_point(|entry| {
            compare_encoded(&entry.last_key, internal_key) == Ordering::Less
        });
        if self.load(position)? {
            self.on_block(|block| block.seek(internal_key))?;
            self.skip_forward()?;
        }
        Ok(())
    }

    /// Moves to the next entry; past the last one the cursor is no longer valid.
    #[expect(
        clippy::should_implement_trait,
        reason = "a fallible cursor step paired with `prev`; `Entries` is the std iterator"
    )]
    pub fn next(&mut self) -> Result<()> {
        if !self.valid() {
            return Ok(());
        }
        self.on_block(BlockIter::next)?;
        self.skip_forward()
    }

    /// Moves to the previous entry; before the first one the cursor is no longer valid.
    pub fn prev(&mut self) -> Result<()> {
        if !self.valid() {
            return Ok(());
        }
        self.on_block(BlockIter::prev)?;
        self.skip_backward()
    }
}

/// The entries of a [`Table`] as a standard iterator; see [`Table::entries`].
#[derive(Debug)]
pub struct Entries {
    iter: TableIter,
    started: bool,
    done: bool,
}

impl Iterator for Entries {
    /// `(internal key, value)`.
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = if self.started {
            self.iter.next()
        } else {
            self.started = true;
            self.iter.seek_to_first()
        };
        if let Err(err) = step {
            self.done = true;
            return Some(Err(err));
        }
        match (self.iter.key(), self.iter.value()) {
            (Some(key), Some(value)) => Some(Ok((Bytes::copy_from_slice(key), value))),
            _ => {
                self.done = true;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The sampled search finds what a plain binary search finds, ties and ends included.
        #[test]
        fn the_sampled_search_matches_a_binary_search(
            mut words in proptest::collection::vec(0u64..40, 0..400),
            target in 0u64..42,
        ) {
            words.sort_unstable();
            let prefixes: Vec<[u64; 2]> = words.iter().map(|&w| [w / 4, w % 4]).collect();
            let samples: Vec<[u64; 2]> =
                prefixes.iter().step_by(INDEX_SAMPLE_STRIDE).copied().collect();
            let target = [target / 4, target % 4];
            prop_assert_eq!(
                first_not_below(&prefixes, &samples, &target),
                prefixes.partition_point(|p| *p < target)
            );
        }
    }
}
