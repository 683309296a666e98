//! The fixed-size footer at the end of every table, and the properties block it points at.
//!
//! # Footer (68 bytes, the last bytes of the file)
//!
//! ```text
//!  offset  field
//!   0      index handle       offset u64 | size u32
//!  12      filter handle      offset u64 | size u32
//!  24      properties handle  offset u64 | size u32
//!  36      entry_count        u64
//!  44      max_seqno          u64
//!  52      format_version     u32 = 1
//!  56      crc32c             u32   over bytes 0..56
//!  60      magic              u64   the ASCII bytes "LIMEDBST"
//! ```
//!
//! A reader checks, in this order: the file holds at least 68 bytes, the magic, the version,
//! the checksum; then that every handle lies before the footer.
//!
//! # Properties block (stored uncompressed, with the usual block trailer)
//!
//! ```text
//!  +------------------+--------------+-----------------+-------------+
//!  | smallest_len u32 | smallest key | largest_len u32 | largest key |
//!  +------------------+--------------+-----------------+-------------+
//!  | min_seqno u64    | tombstone_count u64 | data_block_count u64   |
//!  +------------------+---------------------+------------------------+
//! ```
//!
//! Keys are internal keys (user key + 8-byte trailer).

use super::block::{read_u32_le, read_u64_le};
use super::codec::BlockHandle;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The magic number closing every table: the ASCII bytes `LIMEDBST` read as a little-endian
/// `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"LIMEDBST");

/// Length of the footer in bytes.
pub const FOOTER_LEN: usize = 68;

const CRC_AT: usize = 56;
const VERSION_AT: usize = 52;
const MAGIC_AT: usize = 60;

/// The decoded footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) index: BlockHandle,
    pub(crate) filter: BlockHandle,
    pub(crate) properties: BlockHandle,
    pub(crate) entry_count: u64,
    pub(crate) max_seqno: u64,
}

/// Why a footer did not decode.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FooterError {
    /// The version field holds another version (the magic matched).
    Version(u32),
    /// Anything else.
    Corrupt(String),
}

impl Footer {
    /// The 68-byte encoding.
    pub(crate) fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut buf = Vec::with_capacity(FOOTER_LEN);
        self.index.encode_into(&mut buf);
        self.filter.encode_into(&mut buf);
        self.properties.encode_into(&mut buf);
        buf.extend_from_slice(&self.entry_count.to_le_bytes());
        buf.extend_from_slice(&self.max_seqno.to_le_bytes());
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        let mut out = [0u8; FOOTER_LEN];
        out.copy_from_slice(&buf);
        out
    }

    /// Decodes the last [`FOOTER_LEN`] bytes of a file.
    pub(crate) fn decode(src: &[u8]) -> Result<Footer, FooterError> {
        let corrupt = |reason: &str| FooterError::Corrupt(reason.to_string());
        if src.len() != FOOTER_LEN {
            return Err(corrupt("footer has the wrong length"));
        }
        let magic = read_u64_le(src, MAGIC_AT).ok_or_else(|| corrupt("no magic"))?;
        if magic != MAGIC {
            return Err(FooterError::Corrupt(format!(
                "bad magic {magic:#018x}, not an SSTable (expected {MAGIC:#018x})"
            )));
        }
        let version = read_u32_le(src, VERSION_AT).ok_or_else(|| corrupt("no version"))?;
        if version != FORMAT_VERSION {
            return Err(FooterError::Version(version));
        }
        let stored_crc = read_u32_le(src, CRC_AT).ok_or_else(|| corrupt("no checksum"))?;
        let actual_crc = crc32c::crc32c(src.get(..CRC_AT).unwrap_or_default());
        if stored_crc != actual_crc {
            return Err(FooterError::Corrupt(format!(
                "footer checksum mismatch: stored {stored_crc:#010x}, computed {actual_crc:#010x}"
            )));
        }
        let handle = |at: usize| {
            src.get(at..at + BlockHandle::ENCODED_LEN)
                .and_then(BlockHandle::decode)
                .ok_or_else(|| corrupt("bad block handle"))
        };
        Ok(Footer {
            index: handle(0)?,
            filter: handle(12)?,
            properties: handle(24)?,
            entry_count: read_u64_le(src, 36).ok_or_else(|| corrupt("no entry count"))?,
            max_seqno: read_u64_le(src, 44).ok_or_else(|| corrupt("no max seqno"))?,
        })
    }
}

/// Table-wide facts kept in the properties block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Properties {
    pub(crate) smallest_key: Vec<u8>,
    pub(crate) largest_key: Vec<u8>,
    pub(crate) min_seqno: u64,
    pub(crate) tombstone_count: u64,
    pub(crate) data_block_count: u64,
}

impl Properties {
    /// The encoded block contents; `None` if a key is too long for its `u32` length.
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.smallest_key.len() + self.largest_key.len() + 8 + 24);
        for key in [&self.smallest_key, &self.largest_key] {
            out.extend_from_slice(&u32::try_from(key.len()).ok()?.to_le_bytes());
            out.extend_from_slice(key);
        }
        out.extend_from_slice(&self.min_seqno.to_le_bytes());
        out.extend_from_slice(&self.tombstone_count.to_le_bytes());
        out.extend_from_slice(&self.data_block_count.to_le_bytes());
        Some(out)
    }

    /// Decodes the block contents, checking every length.
    pub(crate) fn decode(src: &[u8]) -> Result<Properties, String> {
        let mut pos = 0usize;
        let mut key = |what: &str| -> Result<Vec<u8>, String> {
            let len = read_u32_le(src, pos)
                .ok_or_else(|| format!("properties block ends before the {what} key length"))?;
            let start = pos + 4;
            let end = start
                .checked_add(len as usize)
                .filter(|&end| end <= src.len())
                .ok_or_else(|| {
                    format!("{what} key of {len} bytes runs past the properties block")
                })?;
            pos = end;
            Ok(src.get(start..end).unwrap_or_default().to_vec())
        };
        let smallest_key = key("smallest")?;
        let largest_key = key("largest")?;
        let rest = src.get(pos..).unwrap_or_default();
        if rest.len() != 24 {
            return Err(format!(
                "properties block has {} bytes after its keys, expected 24",
                rest.len()
            ));
        }
        Ok(Properties {
            smallest_key,
            largest_key,
            min_seqno: read_u64_le(rest, 0).unwrap_or_default(),
            tombstone_count: read_u64_le(rest, 8).unwrap_or_default(),
            data_block_count: read_u64_le(rest, 16).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> Footer {
        Footer {
            index: BlockHandle {
                offset: 100,
                size: 20,
            },
            filter: BlockHandle {
                offset: 60,
                size: 30,
            },
            properties: BlockHandle {
                offset: 125,
                size: 40,
            },
            entry_count: 12,
            max_seqno: 99,
        }
    }

    #[test]
    fn footer_layout_and_round_trip() {
        let bytes = footer().encode();
        assert_eq!(&bytes[60..], b"LIMEDBST");
        assert_eq!(&bytes[52..56], &1u32.to_le_bytes());
        assert_eq!(&bytes[36..44], &12u64.to_le_bytes());
        assert_eq!(Footer::decode(&bytes), Ok(footer()));
    }

    #[test]
    fn every_damaged_footer_byte_is_an_error() {
        let bytes = footer().encode();
        for i in 0..FOOTER_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x01;
            let err = Footer::decode(&bad).expect_err("damage is detected");
            if (52..56).contains(&i) {
                assert!(matches!(err, FooterError::Version(_)), "byte {i}: {err:?}");
            } else {
                assert!(matches!(err, FooterError::Corrupt(_)), "byte {i}: {err:?}");
            }
        }
        assert!(Footer::decode(&bytes[1..]).is_err());
    }

    #[test]
    fn properties_round_trip_and_reject_bad_lengths() {
        let props = Properties {
            smallest_key: b"a\0\0\0\0\0\0\0\x01".to_vec(),
            largest_key: b"zz\0\0\0\0\0\0\0\x01".to_vec(),
            min_seqno: 3,
            tombstone_count: 1,
            data_block_count: 2,
        };
        let bytes = props.encode().expect("fits");
        assert_eq!(Properties::decode(&bytes), Ok(props));
        for cut in 0..bytes.len() {
            assert!(Properties::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Properties::decode(&huge).is_err());
    }
}
