//! Data blocks: sorted (internal key, value) entries with key prefix compression and restart
//! points, their builder and a cursor over them. The index block uses the same format.
//!
//! # Layout (uncompressed)
//!
//! ```text
//!  +---------+---------+-----+-------------+-------------+-----+------------------+
//!  | entry 0 | entry 1 | ... | restart[0]  | restart[1]  | ... | num_restarts u32 |
//!  +---------+---------+-----+-------------+-------------+-----+------------------+
//!                              u32 offsets of restart entries within the block
//!
//!  entry
//!  +----------------+------------------+-------------------+--------------------+-------+
//!  | shared varint  | unshared varint  | value_len varint  | key suffix         | value |
//!  +----------------+------------------+-------------------+--------------------+-------+
//!    bytes shared with   bytes of key      bytes of value    (unshared bytes)
//!    the previous key    after those
//! ```
//!
//! Varints are LEB128 (7 bits per byte, low bits first, high bit = "more follows"), at most 5
//! bytes for a `u32`. Every `restart_interval`-th entry (16 by default) is a *restart point*: it
//! stores its whole key (`shared = 0`) and its offset is listed in the restart array, so a
//! reader binary-searches the restart keys and then scans at most `restart_interval` entries.
//! `restart[0]` is always 0 and a block has at least one entry.
//!
//! Decoding is pure and checks every length against the bytes present; a malformed block is an
//! `Err(reason)` that the table reader turns into [`crate::StorageError::Corrupt`].

use std::cmp::Ordering;

use bytes::Bytes;

use crate::lsm::key::compare_encoded;

/// Appends `value` as a LEB128 varint.
pub(crate) fn put_varint32(dst: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        dst.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    dst.push(value as u8);
}

/// Decodes a LEB128 varint at `*pos`, advancing `*pos` past it.
#[inline]
pub(crate) fn get_varint32(src: &[u8], pos: &mut usize) -> Result<u32, String> {
    // Lengths below 128, one byte, are by far the most common.
    if let Some(&byte) = src.get(*pos) {
        if byte < 0x80 {
            *pos += 1;
            return Ok(u32::from(byte));
        }
    }
    get_varint32_long(src, pos)
}

/// [`get_varint32`] for a varint of more than one byte (or none at all).
#[inline(never)]
fn get_varint32_long(src: &[u8], pos: &mut usize) -> Result<u32, String> {
    let mut result: u32 = 0;
    for shift in [0u32, 7, 14, 21, 28] {
        let Some(&byte) = src.get(*pos) else {
            return Err(format!("varint at block offset {} runs past the end", *pos));
        };
        *pos += 1;
        if shift == 28 && byte > 0x0f {
            return Err(format!(
                "varint ending at block offset {} overflows u32",
                *pos
            ));
        }
        result |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(result);
        }
    }
    Err(format!(
        "varint ending at block offset {} is too long",
        *pos
    ))
}

/// Reads a little-endian `u32` at `pos`, if the bytes are there.
pub(crate) fn read_u32_le(src: &[u8], pos: usize) -> Option<u32> {
    let bytes = src.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads a little-endian `u64` at `pos`, if the bytes are there.
pub(crate) fn read_u64_le(src: &[u8], pos: usize) -> Option<u64> {
    let bytes = src.get(pos..pos.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Builds one block: entries are added in increasing order, then [`BlockBuilder::finish`]
/// appends the restart array.
#[derive(Debug)]
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    restart_interval: usize,
    /// Entries added since the last restart point.
    since_restart: usize,
    last_key: Vec<u8>,
    entry_count: usize,
}

impl BlockBuilder {
    /// An empty builder that starts a restart point every `restart_interval` entries (at
    /// least 1).
    pub(crate) fn new(restart_interval: usize) -> BlockBuilder {
        BlockBuilder {
            buf: Vec::new(),
            restarts: Vec::new(),
            restart_interval: restart_interval.max(1),
            since_restart: 0,
            last_key: Vec::new(),
            entry_count: 0,
        }
    }

    /// Appends an entry. The caller adds keys in increasing order; lengths that do not fit the
    /// `u32` fields of the format are an error.
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let too_large = |what: &str| format!("{what} does not fit a u32 length in a block");
        let shared = if self.entry_count == 0 || self.since_restart >= self.restart_interval {
            let offset = u32::try_from(self.buf.len()).map_err(|_| too_large("block"))?;
            self.restarts.push(offset);
            self.since_restart = 0;
            0
        } else {
            self.last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let unshared_bytes = key.get(shared..).unwrap_or_default();
        let shared_len = u32::try_from(shared).map_err(|_| too_large("key"))?;
        let unshared_len = u32::try_from(unshared_bytes.len()).map_err(|_| too_large("key"))?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_large("value"))?;
        // The next restart offset and every entry end must stay addressable by a u32.
        let new_len = self.buf.len() + 15 + unshared_bytes.len() + value.len();
        u32::try_from(new_len).map_err(|_| too_large("block"))?;
        put_varint32(&mut self.buf, shared_len);
        put_varint32(&mut self.buf, unshared_len);
        put_varint32(&mut self.buf, value_len);
        self.buf.extend_from_slice(unshared_bytes);
        self.buf.extend_from_slice(value);
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(unshared_bytes);
        self.since_restart += 1;
        self.entry_count += 1;
        Ok(())
    }

    /// Size of the block if it were finished now.
    pub(crate) fn estimated_size_bytes(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    /// Number of entries added since the last reset.
    pub(crate) fn entry_count(&self) -> usize {
        self.entry_count
    }

    /// The last key added.
    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Appends the restart array and returns the finished block; call [`BlockBuilder::reset`]
    /// before adding again.
    pub(crate) fn finish(&mut self) -> &[u8] {
        for restart in &self.restarts {
            self.buf.extend_from_slice(&restart.to_le_bytes());
        }
        // At most one restart per entry, and entries are at least 3 bytes, so this fits.
        let count = u32::try_from(self.restarts.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&count.to_le_bytes());
        &self.buf
    }

    /// Empties the builder, keeping its allocations.
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.restarts.clear();
        self.since_restart = 0;
        self.last_key.clear();
        self.entry_count = 0;
    }
}

/// A decoded block whose restart array has been located (entries are decoded lazily).
#[derive(Clone, Debug)]
pub(crate) struct Block {
    data: Bytes,
    /// Where the restart array starts: the end of the entries.
    restarts_offset: usize,
    num_restarts: usize,
}

/// One entry's position inside a block.
#[derive(Clone, Copy, Debug)]
struct EntryPos {
    shared: usize,
    key_suffix: (usize, usize),
    value: (usize, usize),
    /// Offset of the following entry.
    next: usize,
}

impl Block {
    /// Checks the restart array of `data` and wraps it.
    pub(crate) fn new(data: Bytes) -> Result<Block, String> {
        let len = data.len();
        let count_at = len
            .checked_sub(4)
            .ok_or_else(|| format!("block of {len} bytes is too short for a restart count"))?;
        let num_restarts = read_u32_le(&data, count_at).unwrap_or(0) as usize;
        if num_restarts == 0 {
            return Err("block has no restart points".to_string());
        }
        let restarts_offset = num_restarts
            .checked_mul(4)
            .and_then(|bytes| count_at.checked_sub(bytes))
            .ok_or_else(|| {
                format!("block of {len} bytes cannot hold {num_restarts} restart points")
            })?;
        Ok(Block {
            data,
            restarts_offset,
            num_restarts,
        })
    }

    /// A cursor over this block, not yet positioned.
    pub(crate) fn iter(self) -> BlockIter {
        let end = self.restarts_offset;
        BlockIter {
            block: self,
            current: end,
            next: end,
            restart_index: 0,
            key: Vec::new(),
            value: (0, 0),
        }
    }

    fn restart_point(&self, index: usize) -> Result<usize, String> {
        let offset = index
            .checked_mul(4)
            .and_then(|rel| self.restarts_offset.checked_add(rel))
            .and_then(|pos| read_u32_le(&self.data, pos))
            .ok_or_else(|| format!("restart point {index} is missing"))?
            as usize;
        if offset >= self.restarts_offset {
            return Err(format!(
                "restart point {index} at {offset} is past the entries (which end at {})",
                self.restarts_offset
            ));
        }
        Ok(offset)
    }

    fn decode_entry(&self, offset: usize) -> Result<EntryPos, String> {
        let entries = self
            .data
            .get(..self.restarts_offset)
            .ok_or("entries region is missing")?;
        let mut pos = offset;
        let (shared, unshared, value_len) = match entries.get(pos..pos.saturating_add(3)) {
            // All three lengths below 128: one byte each, as in most entries.
            Some(&[a, b, c]) if (a | b | c) < 0x80 => {
                pos += 3;
                (usize::from(a), usize::from(b), usize::from(c))
            }
            _ => (
                get_varint32(entries, &mut pos)? as usize,
                get_varint32(entries, &mut pos)? as usize,
                get_varint32(entries, &mut pos)? as usize,
            ),
        };
        let key_end = pos
            .checked_add(unshared)
            .filter(|&end| end <= entries.len())
            .ok_or_else(|| {
                format!("key of entry at block offset {offset} runs past the entries")
            })?;
        let value_end = key_end
            .checked_add(value_len)
            .filter(|&end| end <= entries.len())
            .ok_or_else(|| {
                format!("value of entry at block offset {offset} runs past the entries")
            })?;
        Ok(EntryPos {
            shared,
            key_suffix: (pos, key_end),
            value: (key_end, value_end),
            next: value_end,
        })
    }

    /// The full key stored at restart point `index`.
    fn restart_key(&self, index: usize) -> Result<&[u8], String> {
        let offset = self.restart_point(index)?;
        let entry = self.decode_entry(offset)?;
        if entry.shared != 0 {
            return Err(format!(
                "restart entry at block offset {offset} shares {} bytes with a previous key",
                entry.shared
            ));
        }
        self.data
            .get(entry.key_suffix.0..entry.key_suffix.1)
            .ok_or_else(|| format!("key of entry at block offset {offset} is missing"))
    }
}

/// A cursor over the entries of one [`Block`], in order, both directions.
///
/// After an `Err` the cursor's position is unspecified; callers stop using it.
#[derive(Debug)]
pub(crate) struct BlockIter {
    block: Block,
    /// Offset of the current entry; `block.restarts_offset` when not positioned on one.
    current: usize,
    /// Offset of the entry after the current one.
    next: usize,
    /// Index of the restart point at or before `current`.
    restart_index: usize,
    key: Vec<u8>,
    value: (usize, usize),
}

impl BlockIter {
    /// Whether the cursor is on an entry.
    pub(crate) fn valid(&self) -> bool {
        self.current < self.block.restarts_offset
    }

    /// The current key (empty when not valid).
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current value, sharing the block's buffer (empty when not valid).
    pub(crate) fn value(&self) -> Bytes {
        if self.valid() {
            self.block.data.slice(self.value.0..self.value.1)
        } else {
            Bytes::new()
        }
    }

    fn invalidate(&mut self) {
        self.current = self.block.restarts_offset;
        self.next = self.block.restarts_offset;
        self.key.clear();
    }

    fn seek_to_restart(&mut self, index: usize) -> Result<(), String> {
        self.key.clear();
        self.restart_index = index;
        self.next = self.block.restart_point(index)?;
        self.current = self.block.restarts_offset;
        Ok(())
    }

    /// Decodes the entry at `self.next` and makes it current; invalidates at the end.
    fn parse_next(&mut self) -> Result<(), String> {
        if self.next >= self.block.restarts_offset {
            self.invalidate();
            return Ok(());
        }
        let offset = self.next;
        let entry = self.block.decode_entry(offset)?;
        if entry.shared > self.key.len() {
            return Err(format!(
                "entry at block offset {offset} shares {} bytes with a key of {} bytes",
                entry.shared,
                self.key.len()
            ));
        }
        let suffix = self
            .block
            .data
            .get(entry.key_suffix.0..entry.key_suffix.1)
            .ok_or_else(|| format!("key of entry at block offset {offset} is missing"))?;
        self.key.truncate(entry.shared);
        self.key.extend_from_slice(suffix);
        self.value = entry.value;
        self.current = offset;
        self.next = entry.next;
        while self.restart_index + 1 < self.block.num_restarts
            && self.block.restart_point(self.restart_index + 1)? <= self.current
        {
            self.restart_index += 1;
        }
        Ok(())
    }

    /// Positions on the first entry.
    pub(crate) fn seek_to_first(&mut self) -> Result<(), String> {
        self.seek_to_restart(0)?;
        self.parse_next()
    }

    /// Positions on the last entry.
    pub(crate) fn seek_to_last(&mut self) -> Result<(), String> {
        self.seek_to_restart(self.block.num_restarts - 1)?;
        self.parse_next()?;
        while self.valid() && self.next < self.block.restarts_offset {
            self.parse_next()?;
        }
        Ok(())
    }

    /// Moves to the next entry (invalid past the last one).
    pub(crate) fn next(&mut self) -> Result<(), String> {
        if self.valid() {
            self.parse_next()
        } else {
            Ok(())
        }
    }

    /// Moves to the previous entry (invalid before the first one).
    pub(crate) fn prev(&mut self) -> Result<(), String> {
        if !self.valid() {
            return Ok(());
        }
        let original = self.current;
        while self.block.restart_point(self.restart_index)? >= original {
            if self.restart_index == 0 {
                self.invalidate();
                return Ok(());
            }
            self.restart_index -= 1;
        }
        self.seek_to_restart(self.restart_index)?;
        loop {
            self.parse_next()?;
            if !self.valid() || self.next > original {
                return Err(format!(
                    "entries do not lead back to the entry at block offset {original}"
                ));
            }
            if self.next == original {
                return Ok(());
            }
        }
    }

    /// Positions on the first entry whose key is `>= target` in
    /// [`compare_encoded`] order (invalid if there is none).
    pub(crate) fn seek(&mut self, target: &[u8]) -> Result<(), String> {
        // The last restart point whose key is < target (or the first one).
        let mut left = 0;
        let mut right = self.block.num_restarts - 1;
        while left < right {
            let mid = left + (right - left).div_ceil(2);
            if compare_encoded(self.block.restart_key(mid)?, target) == Ordering::Less {
                left = mid;
            } else {
                right = mid - 1;
            }
        }
        self.seek_to_restart(left)?;
        loop {
            self.parse_next()?;
            if !self.valid() || compare_encoded(&self.key, target) != Ordering::Less {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::key::{encode, ValueKind};
    use proptest::prelude::*;

    fn build(entries: &[(Vec<u8>, Vec<u8>)], interval: usize) -> Block {
        let mut builder = BlockBuilder::new(interval);
        for (k, v) in entries {
            builder.add(k, v).expect("fits");
        }
        Block::new(Bytes::copy_from_slice(builder.finish())).expect("valid block")
    }

    fn sample(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                (
                    encode(format!("key{i:05}").as_bytes(), 7, ValueKind::Put),
                    format!("value{i}").into_bytes(),
                )
            })
            .collect()
    }

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0u32, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut buf = Vec::new();
            put_varint32(&mut buf, v);
            let mut pos = 0;
            assert_eq!(get_varint32(&buf, &mut pos), Ok(v));
            assert_eq!(pos, buf.len());
        }
        let mut pos = 0;
        assert!(get_varint32(&[0xff, 0xff, 0xff, 0xff, 0x1f], &mut pos).is_err());
        let mut pos = 0;
        assert!(get_varint32(&[0x80, 0x80], &mut pos).is_err());
    }

    #[test]
    fn layout_of_a_small_block() {
        let mut builder = BlockBuilder::new(2);
        builder.add(b"apple", b"1").expect("fits");
        builder.add(b"apricot", b"22").expect("fits");
        builder.add(b"banana", b"").expect("fits");
        let block = builder.finish().to_vec();
        let mut expected = Vec::new();
        expected.extend_from_slice(&[0, 5, 1]);
        expected.extend_from_slice(b"apple1");
        expected.extend_from_slice(&[2, 5, 2]);
        expected.extend_from_slice(b"ricot22");
        expected.extend_from_slice(&[0, 6, 0]);
        expected.extend_from_slice(b"banana");
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(&19u32.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        assert_eq!(block, expected);
    }

    #[test]
    fn forward_backward_and_seek() {
        let entries = sample(100);
        for interval in [1, 3, 16, 1000] {
            let mut it = build(&entries, interval).iter();
            it.seek_to_first().expect("ok");
            let mut seen = Vec::new();
            while it.valid() {
                seen.push((it.key().to_vec(), it.value().to_vec()));
                it.next().expect("ok");
            }
            assert_eq!(seen, entries);

            it.seek_to_last().expect("ok");
            let mut back = Vec::new();
            while it.valid() {
                back.push((it.key().to_vec(), it.value().to_vec()));
                it.prev().expect("ok");
            }
            back.reverse();
            assert_eq!(back, entries);

            for (i, (k, _)) in entries.iter().enumerate() {
                it.seek(k).expect("ok");
                assert_eq!(it.key(), &k[..], "interval {interval}");
                // A key just after entry i's user key lands on entry i + 1.
                let mut between = k[..k.len() - 8].to_vec();
                between.push(0);
                it.seek(&encode(&between, 0, ValueKind::Put)).expect("ok");
                match entries.get(i + 1) {
                    Some((next, _)) => assert_eq!(it.key(), &next[..]),
                    None => assert!(!it.valid()),
                }
            }
            it.seek(&encode(b"a", 0, ValueKind::Put)).expect("ok");
            assert_eq!(it.key(), &entries[0].0[..]);
        }
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(Block::new(Bytes::from_static(b"ab")).is_err());
        assert!(Block::new(Bytes::from_static(&[0, 0, 0, 0])).is_err());
        assert!(Block::new(Bytes::from_static(&[1, 0, 0, 0])).is_err());
        // A restart pointing past the entries.
        let block = Block::new(Bytes::from_static(&[0, 1, 0, b'k', 9, 0, 0, 0, 1, 0, 0, 0]))
            .expect("restart array fits");
        assert!(block.iter().seek_to_first().is_err());
        // An entry whose value runs past the entries.
        let block = Block::new(Bytes::from_static(&[0, 1, 9, b'k', 0, 0, 0, 0, 1, 0, 0, 0]))
            .expect("restart array fits");
        assert!(block.iter().seek_to_first().is_err());
    }

    proptest! {
        /// Arbitrary bytes never make the decoder panic or loop forever.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(block) = Block::new(Bytes::from(data)) {
                let mut it = block.clone().iter();
                let mut steps = 0;
                if it.seek_to_first().is_ok() {
                    while it.valid() && steps < 1000 && it.next().is_ok() {
                        steps += 1;
                    }
                }
                let mut it = block.clone().iter();
                if it.seek_to_last().is_ok() {
                    while it.valid() && steps < 2000 && it.prev().is_ok() {
                        steps += 1;
                    }
                }
                let _ = block.iter().seek(b"key\0\0\0\0\0\0\0\x01");
            }
        }
    }
}
