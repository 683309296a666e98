//! The frame: a length-prefixed header plus one message body. Owns the header layout,
//! [`Frame::encode`] and the incremental [`decode`].
//!
//! Every frame on a coordinator↔shard connection looks like this (all integers little-endian):
//!
//! ```text
//!  0       4   5   6       8                      16
//!  +-------+---+---+-------+-----------------------+--------------------------+
//!  |  len  |ver|knd| flags |      request_id       |  body (kind-specific)    |
//!  |  u32  |u8 |u8 |  u16  |          u64          |  len - 12 bytes          |
//!  +-------+---+---+-------+-----------------------+--------------------------+
//!          |<-------------------------- len bytes -------------------------->|
//! ```
//!
//! - `len` (`frame_len`): bytes after the length field, so at least `HEADER_LEN - 4` = 12. It is
//!   checked against the decoder's `max_frame_bytes` as soon as the 4 bytes are visible, before
//!   any body is awaited or allocated.
//! - `ver`: [`PROTOCOL_VERSION`] (1). Any other value is rejected.
//! - `knd`: the message kind ([`crate::kind`]); requests `0x01..=0x7F`, responses `0x80..=0xFF`.
//! - `flags`: [`FLAG_RING_EPOCH`] (`0x0001`) on a request says a `u64` ring epoch follows the
//!   header, before the body: the epoch of the cluster map the coordinator routed the request
//!   with (a shard that no longer owns the key answers `WrongShard`). Every other bit is
//!   reserved (`0x0002`: a transaction id, later) and rejected, as is the flag on a response.
//! - `request_id`: chosen by the requester, echoed in the response; responses may arrive in any
//!   order and are matched by it.
//!
//! Decoding is a cheap check of the header followed by a parse of the body, in the spirit of
//! mini-redis `src/frame.rs`: "not enough bytes yet" is `Ok(None)`, distinct from a malformed
//! frame (`Err`). No I/O happens here; the connection owns the socket and the buffer.

use bytes::{Buf, BufMut, BytesMut};

use crate::coding::{to_usize, wire_len};
use crate::message::{kind, Message, Request, Response};
use crate::ProtoError;

/// The protocol version this crate speaks, carried in every frame header.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of the fixed header, including the 4-byte length: `4 + 1 + 1 + 2 + 8`.
pub const HEADER_LEN: usize = 16;

/// Smallest legal `frame_len`: the header minus its length field.
const MIN_FRAME_LEN: usize = HEADER_LEN - 4;

/// Header flag: a `u64` ring epoch follows the header (requests only).
pub const FLAG_RING_EPOCH: u16 = 0x0001;

/// Default limit on `frame_len`: one 64 MiB value plus a 64 KiB key plus 1 KiB for the header and
/// field lengths.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024 + 64 * 1024 + 1024;

/// One unit on the wire: a request id and the message it carries.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use limedb_proto::{decode, Frame, Request, DEFAULT_MAX_FRAME_BYTES};
///
/// let frame = Frame::request(7, Request::Get { key: Bytes::from_static(b"a") });
/// let mut buf = BytesMut::new();
/// frame.encode(&mut buf);
/// assert_eq!(buf.len(), frame.encoded_len());
///
/// let decoded = decode(&mut buf, DEFAULT_MAX_FRAME_BYTES)?;
/// assert_eq!(decoded, Some(frame));
/// assert!(buf.is_empty());
/// # Ok::<(), limedb_proto::ProtoError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Chosen by the requester, echoed in the response. Requesters number from 1: id 0 is
    /// reserved for a shard's last-words `Error` before it closes a connection over a
    /// malformed frame.
    pub request_id: u64,
    /// The ring epoch the request was routed with ([`FLAG_RING_EPOCH`]); `None` on responses
    /// and on requests from a coordinator without a cluster map.
    pub ring_epoch: Option<u64>,
    /// What the frame carries.
    pub message: Message,
}

impl Frame {
    /// A frame carrying a request.
    pub fn request(request_id: u64, r: Request) -> Frame {
        Frame {
            request_id,
            ring_epoch: None,
            message: Message::Request(r),
        }
    }

    /// A frame carrying a request routed with ring epoch `ring_epoch`.
    pub fn routed(request_id: u64, ring_epoch: u64, r: Request) -> Frame {
        Frame {
            request_id,
            ring_epoch: Some(ring_epoch),
            message: Message::Request(r),
        }
    }

    /// A frame carrying a response.
    pub fn response(request_id: u64, r: Response) -> Frame {
        Frame {
            request_id,
            ring_epoch: None,
            message: Message::Response(r),
        }
    }

    /// Bytes between the header and the body: the ring epoch when present.
    fn extension_len(&self) -> usize {
        self.ring_epoch.map_or(0, |_| 8)
    }

    /// Appends this frame's bytes to `dst` (reserving the space first).
    ///
    /// The encoder does not apply a frame limit: a sender that may build large frames (a big
    /// value, a `KeysPage` reply) should compare [`Frame::encoded_len`] with the peer's limit
    /// first, because an oversized frame makes the peer close the connection.
    ///
    /// # Panics
    /// If a single byte string or the whole frame is longer than `u32::MAX` bytes, which the
    /// wire format cannot express. Key and value limits are far below that. In debug builds,
    /// if a response carries a ring epoch (the decoder would refuse it).
    pub fn encode(&self, dst: &mut BytesMut) {
        debug_assert!(
            self.ring_epoch.is_none() || matches!(self.message, Message::Request(_)),
            "a ring epoch travels on requests only"
        );
        let frame_len = MIN_FRAME_LEN + self.extension_len() + self.message.body_len();
        dst.reserve(4 + frame_len);
        let start = dst.len();
        dst.put_u32_le(wire_len(frame_len));
        dst.put_u8(PROTOCOL_VERSION);
        dst.put_u8(self.message.kind());
        dst.put_u16_le(if self.ring_epoch.is_some() {
            FLAG_RING_EPOCH
        } else {
            0
        });
        dst.put_u64_le(self.request_id);
        if let Some(epoch) = self.ring_epoch {
            dst.put_u64_le(epoch);
        }
        self.message.encode_body(dst);
        debug_assert_eq!(
            dst.len() - start,
            4 + frame_len,
            "body_len disagrees with encode_body"
        );
    }

    /// Exact number of bytes [`Frame::encode`] appends (`HEADER_LEN` + ring epoch + body).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.extension_len() + self.message.body_len()
    }
}

/// Decodes one frame from the front of `src`.
///
/// - `Ok(None)`: `src` does not yet hold a whole frame. Nothing is consumed; read more bytes and
///   call again. The connection may use the length prefix to `reserve` ahead.
/// - `Ok(Some(frame))`: exactly that frame's bytes were consumed; keys and values in it share
///   `src`'s allocation (no copy).
/// - `Err(_)`: the input is malformed. The connection must be closed: `src` may have been
///   partly consumed and the stream cannot be resynchronised.
///
/// Header checks fail fast: a `frame_len` above `max_frame_bytes` or below the header size is
/// rejected as soon as the 4 length bytes are present, and version, kind and flags as soon as the
/// 16 header bytes are, without waiting for the body.
pub fn decode(src: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, ProtoError> {
    let Some(&[l0, l1, l2, l3]) = src.get(..4) else {
        return Ok(None);
    };
    let frame_len = to_usize(u32::from_le_bytes([l0, l1, l2, l3]));
    if frame_len > max_frame_bytes {
        return Err(ProtoError::FrameTooLarge {
            len: frame_len,
            max: max_frame_bytes,
        });
    }
    if frame_len < MIN_FRAME_LEN {
        return Err(ProtoError::FrameTooShort {
            len: frame_len,
            min: MIN_FRAME_LEN,
        });
    }

    let Some(mut header) = src.get(4..HEADER_LEN) else {
        return Ok(None);
    };
    let version = header.get_u8();
    let kind = header.get_u8();
    let flags = header.get_u16_le();
    let request_id = header.get_u64_le();
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    if !kind::is_known(kind) {
        return Err(ProtoError::UnknownKind(kind));
    }
    let has_epoch = flags == FLAG_RING_EPOCH && kind::is_request(kind);
    if flags != 0 && !has_epoch {
        return Err(ProtoError::NonZeroFlags(flags));
    }
    if has_epoch && frame_len < MIN_FRAME_LEN + 8 {
        return Err(ProtoError::FrameTooShort {
            len: frame_len,
            min: MIN_FRAME_LEN + 8,
        });
    }

    let total = frame_len.saturating_add(4);
    if src.len() < total {
        return Ok(None);
    }
    let mut body = src.split_to(total);
    body.advance(HEADER_LEN);
    let ring_epoch = has_epoch.then(|| body.get_u64_le());
    let message = Message::decode_body(kind, body)?;
    Ok(Some(Frame {
        request_id,
        ring_epoch,
        message,
    }))
}
