//! LimeDB's RESP codec: the Redis serialization protocol as pure code, with no I/O.
//!
//! Tour:
//! - [`Value`] is one RESP2/RESP3 value; [`Value::encode`] writes it for a [`Protocol`]
//!   (RESP3-only types are downgraded for RESP2 clients the way Redis does).
//! - [`RequestParser`] takes client requests (multibulk or inline) off a read buffer, with
//!   Redis's rules, limits and error texts ([`RequestLimits`]).
//! - [`decode_value`] reads any value back (what a client does); LimeDB's coordinator uses it
//!   for shard replies.
//! - [`RespError`] is the crate's one error type; its text is the exact Redis error reply.
//!
//! ```text
//!  socket bytes ──▶ BytesMut ──RequestParser::next──▶ Vec<Bytes> (a command)
//!                                                          │ executed by limedb-server
//!  socket bytes ◀── BytesMut ◀──Value::encode(protocol)────┘
//! ```
//!
//! Limits by default: an argument at most 512 MiB, at most 2^20 arguments, inline lines at most
//! 64 KiB, all arguments of one request at most 1 GiB; servers configure tighter ones.

mod decode;
mod error;
pub mod request;
mod value;

pub use decode::{decode_value, ValueLimits};
pub use error::RespError;
pub use request::{
    split_args, string_to_i64, RequestLimits, RequestParser, DEFAULT_MAX_INLINE_BYTES,
};
pub use value::{format_double, Protocol, Value};

#[cfg(test)]
mod tests;
