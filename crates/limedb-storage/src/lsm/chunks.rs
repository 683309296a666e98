//! The memory memtables are carved from: 2 MiB *chunks* (anonymous maps that ask for
//! transparent huge pages), and the process-wide pool of chunks that are already faulted in.
//!
//! A fresh chunk costs its first writer a page fault and the kernel's zeroing of a huge page,
//! and more on a virtual machine whose host backs guest memory only when it is first touched
//! (on our 2-core test VM, 4.5 ms for a fresh 2 MiB huge page against 0.18 ms for one the
//! process had used before). Under a stream of SETs into a fresh shard that was a quarter of
//! the CPU time, spent by writers holding the engine's writer lock. Two things keep it off
//! the write path:
//!
//! - **Spare chunks.** A dropped memtable gives its chunks back ([`give_back`]), and the next
//!   memtable reuses them: a memtable is dropped after its flush while a fresh one fills at the
//!   same pace.
//! - **The prefault thread** (`limedb-prefault`, one per process, started with the first
//!   memtable) keeps at least [`AHEAD_CHUNKS`] in the pool, faulting fresh ones in when the
//!   pool runs low. It does the same work a writer would, but at any moment a core is free
//!   (between bursts of requests, while a writer waits for its client), not while others
//!   queue on the writer lock. [`take`] wakes it when the pool runs low.
//!
//! The pool is bounded: at most [`MAX_POOLED_CHUNKS`] (80 MiB, one memtable of the default
//! budget and what the thread keeps ahead). A chunk given back beyond that is unmapped.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;

use memmap2::MmapMut;

/// Size of a chunk: one transparent huge page on x86-64 Linux.
pub(crate) const CHUNK_BYTES: usize = 2 << 20;

/// Chunks the prefault thread keeps in the pool (16 MiB): what a shard taking 500k SETs a
/// second fills in about a fifth of a second.
pub(crate) const AHEAD_CHUNKS: usize = 8;

/// Most chunks the pool holds: a memtable of the default budget (64 MiB), which the next one
/// reuses whole, plus what the prefault thread keeps ahead, so that a dropped memtable's
/// chunks do not push out the ones faulted in ahead.
pub(crate) const MAX_POOLED_CHUNKS: usize = 32 + AHEAD_CHUNKS;

/// Chunks faulted in and free, for the next lists to take: given back by dropped lists or
/// faulted in by the prefault thread. Kept for the whole process.
static POOL: Mutex<Vec<MmapMut>> = Mutex::new(Vec::new());

/// The prefault thread, once started (`None` if it could not be).
static PREFAULTER: OnceLock<Option<Thread>> = OnceLock::new();

fn pool() -> std::sync::MutexGuard<'static, Vec<MmapMut>> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A chunk for a list to carve nodes from: a pooled one (already faulted in) if there is one,
/// else a fresh map. Wakes the prefault thread when the pool runs low.
pub(crate) fn take() -> std::io::Result<MmapMut> {
    let (chunk, left) = {
        let mut pool = pool();
        let chunk = pool.pop();
        (chunk, pool.len())
    };
    if left < AHEAD_CHUNKS {
        wake_prefaulter();
    }
    chunk.map_or_else(map_fresh, Ok)
}

/// Returns a dropped list's chunks to the pool, up to its bound; the others are unmapped.
/// Their bytes are left as they are: the next list overwrites what it uses.
pub(crate) fn give_back(chunks: &mut Vec<MmapMut>) {
    let mut pool = pool();
    let room = MAX_POOLED_CHUNKS.saturating_sub(pool.len());
    let keep = chunks.len().min(room);
    pool.extend(chunks.drain(..keep));
}

/// Starts the prefault thread if it is not running, and asks it to top the pool up to
/// [`AHEAD_CHUNKS`]. Lists call it when they are made, so that the first chunks of a new
/// memtable are ready before its first insert.
pub(crate) fn wake_prefaulter() {
    let thread = PREFAULTER.get_or_init(|| {
        std::thread::Builder::new()
            .name("limedb-prefault".into())
            .spawn(prefault_forever)
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot start the memtable prefault thread");
            })
            .ok()
            .map(|handle| handle.thread().clone())
    });
    if let Some(thread) = thread {
        thread.unpark();
    }
}

/// How many chunks the pool holds now.
pub(crate) fn pooled() -> usize {
    pool().len()
}

/// The prefault thread's body: top the pool up, then sleep until woken. (`park` returns at
/// once if an `unpark` came meanwhile, so no request is missed.)
fn prefault_forever() {
    loop {
        top_up();
        std::thread::park();
    }
}

/// Faults fresh chunks in, outside the pool's lock, until the pool holds [`AHEAD_CHUNKS`].
fn top_up() {
    while pooled() < AHEAD_CHUNKS {
        let Ok(mut chunk) = map_fresh() else {
            // Out of address space or memory: writers will meet (and report) it themselves.
            return;
        };
        fault_in(&mut chunk);
        let mut pool = pool();
        if pool.len() >= MAX_POOLED_CHUNKS {
            return;
        }
        pool.push(chunk);
    }
}

/// Makes the kernel back every page of `chunk` now (`MADV_POPULATE_WRITE`, Linux 5.14), or
/// writes a zero into each 4 KiB page where that advice is unknown.
fn fault_in(chunk: &mut MmapMut) {
    #[cfg(target_os = "linux")]
    if chunk.advise(memmap2::Advice::PopulateWrite).is_ok() {
        return;
    }
    for page in chunk.chunks_mut(4096) {
        page[0] = 0;
    }
}

/// A fresh chunk: an anonymous map of [`CHUNK_BYTES`] that asks for transparent huge pages,
/// so that a search's random walk over a 64 MiB memtable misses the TLB far less often than
/// over 4 KiB pages.
fn map_fresh() -> std::io::Result<MmapMut> {
    let chunk = MmapMut::map_anon(CHUNK_BYTES)?;
    #[cfg(target_os = "linux")]
    if let Err(error) = chunk.advise(memmap2::Advice::HugePage) {
        tracing::debug!(%error, "madvise(MADV_HUGEPAGE) on a memtable chunk failed");
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits (up to a minute) for `ready`, checked every millisecond.
    fn eventually(what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The prefault thread refills a drained pool by itself, chunks handed out are whole and
    /// writable, and giving back more than the bound keeps the bound. (Other tests of this
    /// process share the pool, so the test owns it only while it holds its lock.)
    #[test]
    fn the_prefault_thread_refills_the_pool_and_the_pool_stays_bounded() {
        // Drain the pool while holding its lock, then wake the thread: it must refill it.
        let drained: Vec<MmapMut> = pool().drain(..).collect();
        drop(drained);
        wake_prefaulter();
        eventually("the pool is topped up", || pooled() >= AHEAD_CHUNKS);

        let mut taken = Vec::new();
        for tag in 0..AHEAD_CHUNKS as u8 {
            let mut chunk = take().expect("a chunk");
            assert_eq!(chunk.len(), CHUNK_BYTES);
            chunk[0] = tag;
            chunk[CHUNK_BYTES - 1] = tag;
            taken.push(chunk);
        }
        // Taking them ran the pool low: the thread tops it up again.
        eventually("the pool is topped up again", || pooled() >= AHEAD_CHUNKS);
        assert!(taken
            .iter()
            .enumerate()
            .all(|(tag, c)| c[0] == tag as u8 && c[CHUNK_BYTES - 1] == tag as u8));

        let mut many: Vec<MmapMut> = (0..MAX_POOLED_CHUNKS)
            .map(|_| map_fresh().expect("a chunk"))
            .collect();
        give_back(&mut many);
        give_back(&mut taken);
        assert!(pooled() <= MAX_POOLED_CHUNKS, "{} pooled", pooled());
    }
}
