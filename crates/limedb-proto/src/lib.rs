//! LimeDB's coordinator↔shard wire protocol: pure codecs from bytes to frames and back.
//!
//! The coordinator keeps persistent TCP connections to every shard and pipelines many requests on
//! each; a shard may answer them in any order, and the coordinator matches answers to requests by
//! the `request_id` in every frame header. This crate does no I/O and knows nothing of tokio: the
//! server crate reads sockets into a `BytesMut`, calls [`decode`] until it returns `Ok(None)`, and
//! writes with [`Frame::encode`]. The full specification, with a worked hex example, is
//! `docs/protocol.md` at the repository root.
//!
//! # Tour
//!
//! - [`frame`]: the 16-byte header, [`Frame`], [`Frame::encode`] and the incremental [`decode`].
//! - [`message`]: [`Request`], [`Response`], [`ErrorCode`], kind numbers ([`kind`]) and body
//!   layouts.
//! - [`error`]: [`ProtoError`], every way bytes fail to be a frame (always fatal for the
//!   connection).
//!
//! # Layout
//!
//! ```text
//!  +-----------+---------+------+-----------+---------------+------------------+
//!  | frame_len | version | kind |   flags   |  request_id   |  body            |
//!  |  u32 LE   |   u8    |  u8  |  u16 LE   |    u64 LE     |  kind-specific   |
//!  +-----------+---------+------+-----------+---------------+------------------+
//!   frame_len counts every byte after itself: 12 header bytes + the body.
//! ```
//!
//! Byte strings are `u32 LE length + bytes`; optional fields are a `u8` presence tag (0/1)
//! followed by the value when present.
//!
//! # Limits
//!
//! - A decoder refuses any `frame_len` above its `max_frame_bytes` before buffering the body.
//!   [`DEFAULT_MAX_FRAME_BYTES`] (64 MiB + 64 KiB + 1 KiB) admits one 64 MiB value with a 64 KiB
//!   key; key and value size policy itself belongs to the server, which answers
//!   [`ErrorCode::KeyTooLarge`] / [`ErrorCode::ValueTooLarge`].
//! - Element counts (`KeysPage` entries) are checked against the bytes left in the frame before
//!   anything is allocated.
//! - A single field can never exceed `u32::MAX` bytes.
//!
//! # Example
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use limedb_proto::{decode, Frame, Message, Request, Response, DEFAULT_MAX_FRAME_BYTES};
//!
//! let mut wire = BytesMut::new();
//! Frame::request(1, Request::Ping).encode(&mut wire);
//! Frame::request(2, Request::Get { key: Bytes::from_static(b"k") }).encode(&mut wire);
//!
//! let mut seen = Vec::new();
//! while let Some(frame) = decode(&mut wire, DEFAULT_MAX_FRAME_BYTES)? {
//!     if let Message::Request(r) = &frame.message {
//!         seen.push((frame.request_id, r.kind_name()));
//!     }
//! }
//! assert_eq!(seen, [(1, "ping"), (2, "get")]);
//!
//! // A shard answers request 2 (out of order is fine).
//! let reply = Frame::response(2, Response::Value(Some(Bytes::from_static(b"v"))));
//! assert_eq!(reply.encoded_len(), 16 + 1 + 4 + 1);
//! # Ok::<(), limedb_proto::ProtoError>(())
//! ```

mod coding;
pub mod error;
pub mod frame;
pub mod message;

#[cfg(test)]
mod tests;

pub use error::ProtoError;
pub use frame::{decode, Frame, DEFAULT_MAX_FRAME_BYTES, HEADER_LEN, PROTOCOL_VERSION};
pub use message::{kind, ErrorCode, KeyEntry, Message, Request, Response};
