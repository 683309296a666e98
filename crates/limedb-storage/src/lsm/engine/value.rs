//! The encoding of a put's value in the WAL, memtables and SSTables: the user's bytes with
//! their optional expiry.
//!
//! ```text
//!  +----------+------------------------------+-------------------+
//!  | flags u8 | expires_at_ms u64 LE         | data              |
//!  |          | (only if flags bit 0 is set) |                   |
//!  +----------+------------------------------+-------------------+
//!    bit 0: has expiry; bits 1..7: zero (a set bit is corruption)
//! ```
//!
//! Tombstones carry no value at all (kind `Delete`, empty value).

use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};

use crate::engine::Value;
use crate::{Result, StorageError};

const HAS_EXPIRY: u8 = 1;

/// Bytes the encoding adds to the data at most.
pub(crate) const MAX_OVERHEAD_BYTES: usize = 9;

/// Encodes `data` with its expiry.
pub(crate) fn encode(data: &[u8], expires_at_ms: Option<u64>) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + MAX_OVERHEAD_BYTES);
    match expires_at_ms {
        Some(t) => {
            out.put_u8(HAS_EXPIRY);
            out.put_u64_le(t);
        }
        None => out.put_u8(0),
    }
    out.put_slice(data);
    out.freeze()
}

/// Decodes an encoded value, sharing `encoded`'s buffer. Damage is [`StorageError::Corrupt`]
/// naming `dir` (the engine's directory: the value may come from any of its files).
pub(crate) fn decode(encoded: &Bytes, dir: &Path) -> Result<Value> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        path: dir.to_path_buf(),
        offset: 0,
        reason: format!("malformed stored value: {reason}"),
    };
    let Some(&flags) = encoded.first() else {
        return Err(corrupt("empty"));
    };
    match flags {
        0 => Ok(Value {
            data: encoded.slice(1..),
            expires_at_ms: None,
        }),
        HAS_EXPIRY => {
            let Some(t) = encoded.get(1..9) else {
                return Err(corrupt("expiry cut short"));
            };
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(t);
            Ok(Value {
                data: encoded.slice(9..),
                expires_at_ms: Some(u64::from_le_bytes(bytes)),
            })
        }
        _ => Err(corrupt("unknown flag bits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() -> Result<()> {
        let dir = Path::new("/db");
        for expiry in [None, Some(0), Some(u64::MAX)] {
            let v = decode(&encode(b"lime", expiry), dir)?;
            assert_eq!((&v.data[..], v.expires_at_ms), (&b"lime"[..], expiry));
        }
        assert_eq!(encode(b"", None).len(), 1);
        assert!(decode(&Bytes::new(), dir).is_err());
        assert!(decode(&Bytes::from_static(&[1, 0, 0]), dir).is_err());
        assert!(decode(&Bytes::from_static(&[2]), dir).is_err());
        Ok(())
    }
}
