//! Stored blocks: how a block sits in the file (payload, compression type, checksum), the
//! [`BlockHandle`] that points at one, and the [`Compression`] codecs.
//!
//! # Layout
//!
//! ```text
//!  stored block                                     trailer (5 bytes)
//!  +---------------------------------------------+-------------------+------------------+
//!  | payload (BlockHandle.size bytes)            | compression u8    | crc32c u32       |
//!  +---------------------------------------------+-------------------+------------------+
//!                                                  crc32c covers payload ++ compression byte
//!
//!  payload by compression type
//!    0 none  | block bytes                                              |
//!    1 lz4   | uncompressed_len u32 | lz4 block (lz4_flex block format) |
//!    2 zstd  | uncompressed_len u32 | one zstd frame                    |
//!
//!  block handle (12 bytes)
//!  +------------+----------+
//!  | offset u64 | size u32 |   size = payload bytes, without the 5-byte trailer
//!  +------------+----------+
//! ```
//!
//! The writer keeps a compressed payload only if it is at most 7/8 of the uncompressed block;
//! otherwise it stores the block uncompressed (type 0). The reader checks the checksum before
//! looking at the type byte or decompressing, and checks `uncompressed_len` against
//! [`MAX_BLOCK_BYTES`] before allocating.

use bytes::Bytes;

use super::block::{read_u32_le, read_u64_le};
use crate::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Bytes after every stored block's payload: compression type and CRC32C.
pub const BLOCK_TRAILER_LEN: usize = 5;

/// Largest uncompressed block a reader accepts: one maximal entry plus the largest allowed
/// block target and the restart array.
pub const MAX_BLOCK_BYTES: usize = MAX_KEY_BYTES + MAX_VALUE_BYTES + (64 << 20);

const TYPE_NONE: u8 = 0;
const TYPE_LZ4: u8 = 1;
const TYPE_ZSTD: u8 = 2;

/// How the writer compresses each block. Chosen per table; recorded per block, so a reader
/// needs no option to read any table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Store blocks as they are.
    None,
    /// LZ4 (the `lz4_flex` block format): fast, the default.
    #[default]
    Lz4,
    /// Zstandard at `level`; levels 1 to 3 are the intended fast settings, up to 22 is
    /// accepted.
    Zstd {
        /// The zstd compression level, 1..=22.
        level: i32,
    },
}

/// Where a stored block sits in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHandle {
    /// Byte offset of the block's payload in the file.
    pub offset: u64,
    /// Payload length in bytes, without the [`BLOCK_TRAILER_LEN`]-byte trailer.
    pub size: u32,
}

impl BlockHandle {
    /// Encoded length: offset u64 + size u32.
    pub const ENCODED_LEN: usize = 12;

    /// Appends the 12-byte encoding.
    pub fn encode_into(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(&self.offset.to_le_bytes());
        dst.extend_from_slice(&self.size.to_le_bytes());
    }

    /// Decodes a handle from exactly [`BlockHandle::ENCODED_LEN`] bytes.
    pub fn decode(src: &[u8]) -> Option<BlockHandle> {
        if src.len() != Self::ENCODED_LEN {
            return None;
        }
        Some(BlockHandle {
            offset: read_u64_le(src, 0)?,
            size: read_u32_le(src, 8)?,
        })
    }

    /// Offset just past this block's trailer, if it does not overflow.
    pub fn end_offset(&self) -> Option<u64> {
        self.offset
            .checked_add(u64::from(self.size))?
            .checked_add(BLOCK_TRAILER_LEN as u64)
    }
}

/// Compresses `raw` into `scratch` and returns its type byte, or `None` if the block should be
/// stored uncompressed (no compression chosen, or it would not save at least 1/8).
pub(crate) fn compress(
    raw: &[u8],
    compression: Compression,
    scratch: &mut Vec<u8>,
) -> Result<Option<u8>, String> {
    let Ok(raw_len) = u32::try_from(raw.len()) else {
        return Ok(None);
    };
    scratch.clear();
    scratch.extend_from_slice(&raw_len.to_le_bytes());
    let kind = match compression {
        Compression::None => return Ok(None),
        Compression::Lz4 => {
            scratch.resize(4 + lz4_flex::block::get_maximum_output_size(raw.len()), 0);
            let out = scratch.get_mut(4..).unwrap_or_default();
            let written = lz4_flex::block::compress_into(raw, out)
                .map_err(|e| format!("lz4 compression failed: {e}"))?;
            scratch.truncate(4 + written);
            TYPE_LZ4
        }
        Compression::Zstd { level } => {
            let compressed = zstd::bulk::compress(raw, level)
                .map_err(|e| format!("zstd compression failed: {e}"))?;
            scratch.extend_from_slice(&compressed);
            TYPE_ZSTD
        }
    };
    let worthwhile = scratch.len() <= raw.len() - raw.len() / 8;
    Ok(worthwhile.then_some(kind))
}

/// The trailer for `payload` stored with compression type `kind`.
pub(crate) fn trailer(payload: &[u8], kind: u8) -> [u8; BLOCK_TRAILER_LEN] {
    let crc = crc32c::crc32c_append(crc32c::crc32c(payload), &[kind]);
    let mut out = [0u8; BLOCK_TRAILER_LEN];
    out[0] = kind;
    out[1..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The type byte for uncompressed blocks.
pub(crate) const fn type_none() -> u8 {
    TYPE_NONE
}

/// Checks a stored block (payload + trailer) and returns the uncompressed block. Uncompressed
/// blocks share `stored`'s buffer.
pub(crate) fn decode_stored(stored: Bytes) -> Result<Bytes, String> {
    let payload_len = stored
        .len()
        .checked_sub(BLOCK_TRAILER_LEN)
        .ok_or_else(|| format!("stored block of {} bytes has no trailer", stored.len()))?;
    let (payload, trailer) = stored.split_at(payload_len);
    let kind = trailer.first().copied().unwrap_or(u8::MAX);
    let stored_crc = read_u32_le(trailer, 1).unwrap_or(0);
    let actual_crc = crc32c::crc32c_append(crc32c::crc32c(payload), &[kind]);
    if stored_crc != actual_crc {
        return Err(format!(
            "block checksum mismatch: stored {stored_crc:#010x}, computed {actual_crc:#010x}"
        ));
    }
    match kind {
        TYPE_NONE => Ok(stored.slice(..payload_len)),
        TYPE_LZ4 | TYPE_ZSTD => {
            let raw_len = read_u32_le(payload, 0)
                .ok_or("compressed block has no uncompressed length")?
                as usize;
            if raw_len > MAX_BLOCK_BYTES {
                return Err(format!(
                    "compressed block claims {raw_len} bytes, more than the limit {MAX_BLOCK_BYTES}"
                ));
            }
            let body = payload.get(4..).unwrap_or_default();
            let raw = if kind == TYPE_LZ4 {
                let mut out = vec![0u8; raw_len];
                let written = lz4_flex::block::decompress_into(body, &mut out)
                    .map_err(|e| format!("lz4 decompression failed: {e}"))?;
                out.truncate(written);
                out
            } else {
                zstd::bulk::decompress(body, raw_len)
                    .map_err(|e| format!("zstd decompression failed: {e}"))?
            };
            if raw.len() != raw_len {
                return Err(format!(
                    "block decompressed to {} bytes, expected {raw_len}",
                    raw.len()
                ));
            }
            Ok(Bytes::from(raw))
        }
        other => Err(format!("unknown block compression type {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(raw: &[u8], compression: Compression) -> (u8, Vec<u8>) {
        let mut scratch = Vec::new();
        let kind = compress(raw, compression, &mut scratch).expect("compresses");
        let (kind, mut stored) = match kind {
            Some(kind) => (kind, scratch),
            None => (TYPE_NONE, raw.to_vec()),
        };
        let t = trailer(&stored, kind);
        stored.extend_from_slice(&t);
        (kind, stored)
    }

    #[test]
    fn round_trip_each_codec_and_fallback() {
        let compressible = b"lime ".repeat(200);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..1000)
            .map(|_| {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        for compression in [
            Compression::None,
            Compression::Lz4,
            Compression::Zstd { level: 1 },
            Compression::Zstd { level: 3 },
        ] {
            let (kind, stored) = store(&compressible, compression);
            let expected_kind = match compression {
                Compression::None => TYPE_NONE,
                Compression::Lz4 => TYPE_LZ4,
                Compression::Zstd { .. } => TYPE_ZSTD,
            };
            assert_eq!(kind, expected_kind);
            assert_eq!(
                decode_stored(Bytes::from(stored)).expect("valid"),
                &compressible[..]
            );
            // Incompressible data is stored as it is.
            let (kind, stored) = store(&random, compression);
            assert_eq!(kind, TYPE_NONE);
            assert_eq!(stored.len(), random.len() + BLOCK_TRAILER_LEN);
            assert_eq!(
                decode_stored(Bytes::from(stored)).expect("valid"),
                &random[..]
            );
        }
    }

    #[test]
    fn damaged_blocks_are_errors() {
        let (_, stored) = store(&b"lime ".repeat(200), Compression::Lz4);
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x10;
            assert!(decode_stored(Bytes::from(bad)).is_err(), "flip at {i}");
        }
        assert!(decode_stored(Bytes::from_static(b"abc")).is_err());
        // A valid checksum over an unknown type byte.
        let mut unknown = b"data".to_vec();
        unknown.extend_from_slice(&trailer(b"data", 9));
        let err = decode_stored(Bytes::from(unknown)).expect_err("unknown type");
        assert!(err.contains("unknown block compression type 9"), "{err}");
        // A valid checksum over a huge claimed length.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"xx");
        let t = trailer(&huge, TYPE_LZ4);
        huge.extend_from_slice(&t);
        assert!(decode_stored(Bytes::from(huge)).is_err());
    }

    #[test]
    fn handle_round_trip() {
        let handle = BlockHandle {
            offset: 0x0102_0304_0506_0708,
            size: 0x0a0b_0c0d,
        };
        let mut buf = Vec::new();
        handle.encode_into(&mut buf);
        assert_eq!(buf.len(), BlockHandle::ENCODED_LEN);
        assert_eq!(BlockHandle::decode(&buf), Some(handle));
        assert_eq!(BlockHandle::decode(&buf[..11]), None);
    }
}
