//! [`RangeIter`]: a bounded iterator over the live entries of the engine, forward and
//! backward, at one point in time.
//!
//! The iterator owns an `Arc` of the [`SuperVersion`] it was created from, and reads at a
//! fixed sequence number and clock (`now_ms` at creation): every step sees the same point in
//! time whatever writes, flushes and compactions happen meanwhile (files a compaction deletes
//! stay readable through the open tables of the pinned super version). Rather than holding
//! merge cursors that borrow the super version, it reads in chunks: each refill merges the
//! sources again from where the last chunk ended (a seek per source), so the iterator is a
//! plain owned value (`Send`, no lifetime) at the cost of one seek per [`CHUNK`] entries.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::iter::{LiveIter, LiveRevIter, MergeIter};
use super::{Inner, SuperVersion};
use crate::engine::Value;
use crate::Result;

/// Live entries read per refill.
const CHUNK: usize = 128;

/// The live entries of a key range in key order, as of one point in time; see
/// [`super::LsmEngine::range`]. Implements [`DoubleEndedIterator`]: `.rev()` iterates from the
/// end, and both ends may be consumed alternately (they meet without overlap).
///
/// Items are `Result`s: after an error (a damaged table) the iterator ends.
pub struct RangeIter {
    inner: Arc<Inner>,
    sv: Arc<SuperVersion>,
    seqno: u64,
    now_ms: u64,
    /// Keys not yet read lie within `(lower, upper)`.
    lower: Bound<Bytes>,
    upper: Bound<Bytes>,
    /// Read from the front, ascending.
    front: VecDeque<(Bytes, Value)>,
    /// Read from the back, descending.
    back: VecDeque<(Bytes, Value)>,
    /// Nothing is left between `lower` and `upper`.
    exhausted: bool,
}

impl fmt::Debug for RangeIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeIter")
            .field("seqno", &self.seqno)
            .field("lower", &self.lower)
            .field("upper", &self.upper)
            .finish_non_exhaustive()
    }
}

fn as_ref(b: &Bound<Bytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_ref()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn owned(b: Bound<&[u8]>) -> Bound<Bytes> {
    match b {
        Bound::Included(k) => Bound::Included(Bytes::copy_from_slice(k)),
        Bound::Excluded(k) => Bound::Excluded(Bytes::copy_from_slice(k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether `key` is at or above `lower`.
fn above(lower: Bound<&[u8]>, key: &[u8]) -> bool {
    match lower {
        Bound::Included(k) => key >= k,
        Bound::Excluded(k) => key > k,
        Bound::Unbounded => true,
    }
}

/// Whether `key` is at or below `upper`.
fn below(upper: Bound<&[u8]>, key: &[u8]) -> bool {
    match upper {
        Bound::Included(k) => key <= k,
        Bound::Excluded(k) => key < k,
        Bound::Unbounded => true,
    }
}

impl RangeIter {
    pub(super) fn new(
        inner: Arc<Inner>,
        sv: Arc<SuperVersion>,
        seqno: u64,
        now_ms: u64,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> RangeIter {
        RangeIter {
            inner,
            sv,
            seqno,
            now_ms,
            lower: owned(lower),
            upper: owned(upper),
            front: VecDeque::new(),
            back: VecDeque::new(),
            exhausted: false,
        }
    }

    /// The sequence number the iterator reads at.
    pub fn seqno(&self) -> u64 {
        self.seqno
    }

    /// Reads up to [`CHUNK`] live entries from the front (or the back, if `reverse`) of the
    /// remaining range, and narrows the range past them.
    fn refill(&mut self, reverse: bool) -> Result<()> {
        let sv = Arc::clone(&self.sv);
        let (lower, upper) = (as_ref(&self.lower), as_ref(&self.upper));
        let sources = sv.range_sources(lower, upper, reverse)?;
        let merge = MergeIter::with_direction(sources, reverse)?;
        let mut chunk = Vec::new();
        if reverse {
            for entry in LiveRevIter::new(merge, self.now_ms, self.seqno, &self.inner.dir) {
                let (k, v) = entry?;
                if !below(upper, &k) {
                    continue;
                }
                if !above(lower, &k) {
                    break;
                }
                chunk.push((k, v));
                if chunk.len() >= CHUNK {
                    break;
                }
            }
        } else {
            for entry in LiveIter::new(merge, self.now_ms, self.seqno, &self.inner.dir) {
                let (k, v) = entry?;
                if !above(lower, &k) {
                    continue;
                }
                if !below(upper, &k) {
                    break;
                }
                chunk.push((k, v));
                if chunk.len() >= CHUNK {
                    break;
                }
            }
        }
        match chunk.last() {
            None => self.exhausted = true,
            Some((k, _)) if reverse => self.upper = Bound::Excluded(k.clone()),
            Some((k, _)) => self.lower = Bound::Excluded(k.clone()),
        }
        if reverse {
            self.back.extend(chunk);
        } else {
            self.front.extend(chunk);
        }
        Ok(())
    }

    fn step(&mut self, reverse: bool) -> Option<Result<(Bytes, Value)>> {
        loop {
            let own = if reverse {
                self.back.pop_front()
            } else {
                self.front.pop_front()
            };
            if let Some(entry) = own {
                return Some(Ok(entry));
            }
            if self.exhausted {
                // What the other end buffered is all that is left.
                let other = if reverse {
                    self.front.pop_back()
                } else {
                    self.back.pop_back()
                };
                return other.map(Ok);
            }
            if let Err(e) = self.refill(reverse) {
                self.exhausted = true;
                self.front.clear();
                self.back.clear();
                return Some(Err(e));
            }
        }
    }
}

impl Iterator for RangeIter {
    type Item = Result<(Bytes, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

impl DoubleEndedIterator for RangeIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}
