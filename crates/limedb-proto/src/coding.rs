//! Primitive field codecs shared by every message body: little-endian integers, `u32`-length
//! byte strings, UTF-8 strings, `0/1` presence tags and element counts.
//!
//! Writers append to a `BytesMut`. [`Reader`] walks one complete frame body that has already been
//! split off the connection buffer, so byte strings come out zero-copy (`split_to` + `freeze`),
//! and running out of bytes is always [`ProtoError::Truncated`], never "need more input".

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtoError;

/// Encoded size of a `u32 len + bytes` field holding `len` bytes.
pub(crate) const fn bytes_field_len(len: usize) -> usize {
    4 + len
}

/// Converts a length to its `u32` wire form.
///
/// # Panics
/// If `len > u32::MAX`: such a field cannot be framed at all. Callers enforce far smaller key and
/// value limits before building a message, so this is a programming error, not an input error.
pub(crate) fn wire_len(len: usize) -> u32 {
    u32::try_from(len).expect("limedb-proto: field or frame longer than u32::MAX bytes")
}

/// `u32` to `usize` without a lossy cast (saturates on 16-bit targets, which we do not support).
pub(crate) fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Appends `u32 len` then the bytes.
pub(crate) fn put_bytes(dst: &mut BytesMut, bytes: &[u8]) {
    dst.put_u32_le(wire_len(bytes.len()));
    dst.put_slice(bytes);
}

/// Appends a `0/1` byte.
pub(crate) fn put_bool(dst: &mut BytesMut, value: bool) {
    dst.put_u8(u8::from(value));
}

/// Cursor over one complete message body.
pub(crate) struct Reader {
    buf: BytesMut,
}

impl Reader {
    pub(crate) fn new(body: BytesMut) -> Self {
        Self { buf: body }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated { what });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16_le())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    /// A `u32 len + bytes` field, returned without copying.
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Bytes, ProtoError> {
        let len = to_usize(self.u32(what)?);
        self.need(len, what)?;
        Ok(self.buf.split_to(len).freeze())
    }

    /// A `u32 len + bytes` field that must be UTF-8.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, ProtoError> {
        let raw = self.bytes(what)?;
        match std::str::from_utf8(&raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(ProtoError::InvalidUtf8 { what }),
        }
    }

    /// A `0/1` byte (presence tag or boolean).
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, ProtoError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(ProtoError::InvalidTag { what, tag }),
        }
    }

    /// A `u32` element count, rejected unless `count * min_element_bytes` fits in what is left,
    /// so callers may allocate `count` elements up front.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        min_element_bytes: usize,
    ) -> Result<usize, ProtoError> {
        let count = self.u32(what)?;
        let remaining = self.buf.len();
        let fits = remaining / min_element_bytes.max(1);
        let n = to_usize(count);
        if n > fits {
            return Err(ProtoError::CountTooLarge {
                what,
                count,
                remaining,
            });
        }
        Ok(n)
    }

    /// Ends the body: every byte must have been read.
    pub(crate) fn finish(self, kind: u8) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                kind,
                extra: self.buf.len(),
            })
        }
    }
}
