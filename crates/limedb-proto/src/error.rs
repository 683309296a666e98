//! The one error type of this crate: every way a byte stream can fail to be a frame.
//!
//! All variants are fatal for the connection they came from. After [`crate::decode`] returns an
//! error the stream is out of step (we no longer know where the next frame starts), so the reader
//! must close the connection; in-flight requests on it fail with a transport error. Redirect-style
//! replies (`NotLeader`, `WrongShard`, reserved for later) will be *messages*, never `ProtoError`s.

/// Why a byte stream could not be decoded into a [`crate::Frame`].
///
/// Kinds are shown in hex (`0x83`) so they can be matched against `docs/protocol.md`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The `frame_len` prefix announces more bytes than the decoder accepts. Raised as soon as
    /// the 4 length bytes are visible, before any of the body is buffered.
    #[error("frame length {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced `frame_len` (bytes after the length field).
        len: usize,
        /// The decoder's limit (`max_frame_bytes`).
        max: usize,
    },

    /// The `frame_len` prefix is smaller than the fixed header that must follow it.
    #[error(
        "frame length {len} bytes is shorter than the {min}-byte header after the length field"
    )]
    FrameTooShort {
        /// The announced `frame_len`.
        len: usize,
        /// The smallest legal `frame_len` (`HEADER_LEN - 4`).
        min: usize,
    },

    /// The header's version byte is not [`crate::PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0} (this peer speaks version {v})", v = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u8),

    /// The header's kind byte names no message this version knows (includes reserved kinds).
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),

    /// The header's flags are not zero and not a request's ring epoch (`0x0001`), the only
    /// flag version 1 defines.
    #[error("header flags {0:#06x} are not allowed (version 1 defines only 0x0001, a request's ring epoch)")]
    NonZeroFlags(u16),

    /// The body ended in the middle of a field. The frame was complete (its `frame_len` was
    /// satisfied), so this is malformed input, not "need more bytes".
    #[error("frame body truncated while reading {what}")]
    Truncated {
        /// The field being read, e.g. `"key"` or `"ttl_ms"`.
        what: &'static str,
    },

    /// The body of a message was fully decoded but bytes were left before the end of the frame.
    #[error("{extra} trailing bytes after the body of message kind {kind:#04x}")]
    TrailingBytes {
        /// The message kind.
        kind: u8,
        /// How many bytes were left over.
        extra: usize,
    },

    /// A string field (server name, error message) is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field, e.g. `"server"` or `"message"`.
        what: &'static str,
    },

    /// A presence tag or boolean byte is neither 0 nor 1.
    #[error("invalid tag {tag} for {what} (expected 0 or 1)")]
    InvalidTag {
        /// The field, e.g. `"ttl_ms"` or `"deleted"`.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },

    /// An element count is larger than the rest of the body could possibly hold, given the
    /// smallest encoding of one element. Checked before anything is allocated.
    #[error("{what} count {count} cannot fit in the remaining {remaining} body bytes")]
    CountTooLarge {
        /// The counted field, e.g. `"entries"`.
        what: &'static str,
        /// The announced count.
        count: u32,
        /// Body bytes left after the count.
        remaining: usize,
    },
}
