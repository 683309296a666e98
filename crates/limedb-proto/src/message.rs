//! The messages carried in frames: [`Request`], [`Response`], [`ErrorCode`], their kind numbers
//! ([`kind`]) and their body encodings.
//!
//! Body fields, in order (see `docs/protocol.md` for the full table):
//!
//! | kind | message | body |
//! |---|---|---|
//! | `0x01` | `Hello` | empty |
//! | `0x02` | `Ping` | empty |
//! | `0x03` | `Get` | `key: bytes` |
//! | `0x04` | `Set` | `key: bytes, value: bytes, ttl_ms: opt<u64>` |
//! | `0x05` | `Delete` | `key: bytes` |
//! | `0x06` | `KeysPage` | `offset: u64, limit: u32, value_prefix_bytes: u32` |
//! | `0x07` | `Command` | `argc: u32, argc × arg: bytes` |
//! | `0x08` | `Transaction` | `commands: u32, commands × (argc: u32, argc × arg: bytes), watched: u32, watched × (key: bytes, version: u64)` |
//! | `0x09` | `Pipeline` | `commands: u32, commands × (argc: u32, argc × arg: bytes)` |
//! | `0x20` | `Raft` | `shard_id: u32, target: u64, rpc: u8, payload: bytes` |
//! | `0x81` | `HelloOk` | `shard_id: u32, protocol_version: u8, server: string` |
//! | `0x82` | `Pong` | empty |
//! | `0x83` | `Value` | `value: opt<bytes>` |
//! | `0x84` | `Done` | empty |
//! | `0x85` | `Deleted` | `deleted: u8 (0/1)` |
//! | `0x86` | `KeysPage` | `total: u64, count: u32, count × (key: bytes, value: bytes, value_len: u64)` |
//! | `0x87` | `Reply` | `resp3: bytes` (one RESP3-encoded value) |
//! | `0xA0` | `RaftReply` | `payload: bytes` |
//! | `0xFD` | `WrongShard` | `ring_epoch: u64` |
//! | `0xFE` | `NotLeader` | `leader_id: opt<u64>, leader_url: opt<string>` |
//! | `0xFF` | `Error` | `code: u16, message: string` |
//!
//! `bytes` and `string` are `u32 len` + that many bytes (strings UTF-8); `opt<T>` is a `u8`
//! presence tag (0 = absent, 1 = present) followed by `T` when present. All integers are
//! little-endian.

use bytes::{BufMut, Bytes, BytesMut};

use crate::coding::{bytes_field_len, put_bool, put_bytes, Reader};
use crate::ProtoError;

/// Kind numbers: the header byte that says which message a frame carries.
///
/// Requests use `0x01..=0x7F`, responses `0x80..=0xFF`. A normal reply is its request's kind with
/// the high bit set (`GET` `0x03` → `VALUE` `0x83`); `ERROR` is `0xFF` and answers any request.
///
/// Reserved for later versions, not decodable today (a version-1 decoder rejects them with
/// [`ProtoError::UnknownKind`]):
///
/// | kind | reserved for |
/// |---|---|
/// | `0x0A..=0x0F` | more key-value requests (batch, range scan) |
/// | `0x10`, `0x11`, `0x12` | transaction `Prepare`, `Commit`, `Abort` (by txn id) |
/// | `0x21..=0x2F` | more Raft transport requests |
/// | `0x90`, `0x91`, `0x92` | `Prepared`, `Committed`, `Aborted` |
/// | `0xA1..=0xAF` | more Raft transport replies |
pub mod kind {
    /// Request: `Hello` (handshake, must be the first frame a client sends).
    pub const HELLO: u8 = 0x01;
    /// Request: `Ping`.
    pub const PING: u8 = 0x02;
    /// Request: `Get`.
    pub const GET: u8 = 0x03;
    /// Request: `Set`.
    pub const SET: u8 = 0x04;
    /// Request: `Delete`.
    pub const DELETE: u8 = 0x05;
    /// Request: `KeysPage`.
    pub const KEYS_PAGE: u8 = 0x06;
    /// Request: `Command` (a Redis command for the shard to execute).
    pub const COMMAND: u8 = 0x07;
    /// Request: `Transaction` (a MULTI/EXEC block for the shard to execute atomically).
    pub const TRANSACTION: u8 = 0x08;
    /// Request: `Pipeline` (Redis commands for the shard to execute in order, not atomically).
    pub const PIPELINE: u8 = 0x09;
    /// Request: `Raft` (a Raft RPC between replicas of a shard's group).
    pub const RAFT: u8 = 0x20;

    /// Response: `HelloOk`.
    pub const HELLO_OK: u8 = 0x81;
    /// Response: `Pong`.
    pub const PONG: u8 = 0x82;
    /// Response: `Value`.
    pub const VALUE: u8 = 0x83;
    /// Response: `Done`.
    pub const DONE: u8 = 0x84;
    /// Response: `Deleted`.
    pub const DELETED: u8 = 0x85;
    /// Response: `KeysPage`.
    pub const KEYS_PAGE_OK: u8 = 0x86;
    /// Response: `Reply`, the answer to `Command` and `Transaction`.
    pub const REPLY: u8 = 0x87;
    /// Response: `RaftReply`, the answer to `Raft`.
    pub const RAFT_REPLY: u8 = 0xA0;
    /// Response: `WrongShard`: this shard does not own the key at its ring epoch; nothing was
    /// done.
    pub const WRONG_SHARD: u8 = 0xFD;
    /// Response: `NotLeader`: this replica does not lead its group; nothing was done.
    pub const NOT_LEADER: u8 = 0xFE;
    /// Response: `Error`, a valid answer to any request.
    pub const ERROR: u8 = 0xFF;

    // Reserved, see the module docs and docs/protocol.md: 0x0A..=0x0F, 0x10 TxnPrepare,
    // 0x11 TxnCommit, 0x12 TxnAbort, 0x21..=0x2F Raft, 0x90..=0x92 txn replies, 0xA1..=0xAF Raft
    // replies.

    /// Whether `kind` is a request kind (high bit clear, not zero).
    pub const fn is_request(kind: u8) -> bool {
        kind != 0 && kind & 0x80 == 0
    }

    /// Whether this protocol version defines a message for `kind`.
    pub const fn is_known(kind: u8) -> bool {
        matches!(
            kind,
            HELLO
                | PING
                | GET
                | SET
                | DELETE
                | KEYS_PAGE
                | COMMAND
                | TRANSACTION
                | PIPELINE
                | RAFT
                | HELLO_OK
                | PONG
                | VALUE
                | DONE
                | DELETED
                | KEYS_PAGE_OK
                | REPLY
                | RAFT_REPLY
                | NOT_LEADER
                | WRONG_SHARD
                | ERROR
        )
    }
}

/// A request from the coordinator (client) to a shard (server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Handshake, the first frame on a connection. Answered by [`Response::HelloOk`].
    Hello,
    /// Liveness probe. Answered by [`Response::Pong`].
    Ping,
    /// Read one key. Answered by [`Response::Value`].
    Get {
        /// The key.
        key: Bytes,
    },
    /// Write one key, optionally expiring `ttl_ms` milliseconds after the write. Answered by
    /// [`Response::Done`].
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Time to live in milliseconds; `None` means no expiry.
        ttl_ms: Option<u64>,
    },
    /// Remove one key. Answered by [`Response::Deleted`].
    Delete {
        /// The key.
        key: Bytes,
    },
    /// One page of the shard's key-value pairs in key order: skip `offset`, return at most
    /// `limit`. Answered by [`Response::KeysPage`].
    KeysPage {
        /// Pairs to skip.
        offset: u64,
        /// Most pairs to return. The server may return fewer to keep the reply under the frame
        /// limit.
        limit: u32,
        /// Each value is cut to at most this many bytes (a preview); its full length is
        /// reported in [`KeyEntry::value_len`]. Keeps a page of large values small.
        value_prefix_bytes: u32,
    },
    /// Execute one Redis command (name and arguments, as a RESP client sent them) on the shard.
    /// Answered by [`Response::Reply`]; a command the shard refuses is a RESP error *inside* the
    /// reply, not a [`Response::Error`].
    Command {
        /// The command name and its arguments.
        args: Vec<Bytes>,
    },
    /// Execute a `MULTI`/`EXEC` block atomically on the shard, unless one of `watched` changed
    /// since its version was taken. Answered by [`Response::Reply`] carrying the array of
    /// replies, or a null when a watched key changed.
    Transaction {
        /// The queued commands, in order.
        commands: Vec<Vec<Bytes>>,
        /// Watched keys with the write versions the shard reported for them.
        watched: Vec<(Bytes, u64)>,
    },
    /// Execute several Redis commands in order, each as [`Request::Command`] would but not as a
    /// unit (other writes may come between them), so the shard can share work among them.
    /// Answered by [`Response::Reply`] carrying the array of their replies.
    Pipeline {
        /// The commands, in order.
        commands: Vec<Vec<Bytes>>,
    },
    /// A Raft RPC from one replica of a shard's group to another. The payload is opaque here
    /// (encoded by `limedb-raft`); answered by [`Response::RaftReply`].
    Raft {
        /// The shard whose group this is.
        shard_id: u32,
        /// The replica the sender means to reach (checked by the receiver).
        target: u64,
        /// Which RPC (`limedb_raft::RpcKind`).
        rpc: u8,
        /// The encoded RPC.
        payload: Bytes,
    },
}

/// One key of a [`Response::KeysPage`], with (a prefix of) its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key.
    pub key: Bytes,
    /// The value, or its first `value_prefix_bytes` bytes.
    pub value: Bytes,
    /// The full length of the value in bytes.
    pub value_len: u64,
}

impl Request {
    /// Short lowercase name for metrics labels and logs: `"hello"`, `"ping"`, `"get"`, `"set"`,
    /// `"delete"`, `"keys_page"`.
    ///
    /// ```
    /// use limedb_proto::Request;
    /// assert_eq!(Request::Ping.kind_name(), "ping");
    /// ```
    pub fn kind_name(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::Ping => "ping",
            Request::Get { .. } => "get",
            Request::Set { .. } => "set",
            Request::Delete { .. } => "delete",
            Request::KeysPage { .. } => "keys_page",
            Request::Command { .. } => "command",
            Request::Transaction { .. } => "transaction",
            Request::Pipeline { .. } => "pipeline",
            Request::Raft { .. } => "raft",
        }
    }

    /// The wire kind number (see [`kind`]).
    pub fn kind(&self) -> u8 {
        match self {
            Request::Hello => kind::HELLO,
            Request::Ping => kind::PING,
            Request::Get { .. } => kind::GET,
            Request::Set { .. } => kind::SET,
            Request::Delete { .. } => kind::DELETE,
            Request::KeysPage { .. } => kind::KEYS_PAGE,
            Request::Command { .. } => kind::COMMAND,
            Request::Transaction { .. } => kind::TRANSACTION,
            Request::Pipeline { .. } => kind::PIPELINE,
            Request::Raft { .. } => kind::RAFT,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Request::Hello | Request::Ping => 0,
            Request::Get { key } | Request::Delete { key } => bytes_field_len(key.len()),
            Request::Set { key, value, ttl_ms } => {
                bytes_field_len(key.len())
                    + bytes_field_len(value.len())
                    + 1
                    + if ttl_ms.is_some() { 8 } else { 0 }
            }
            Request::KeysPage { .. } => 8 + 4 + 4,
            Request::Command { args } => args_len(args),
            Request::Transaction { commands, watched } => {
                4 + commands.iter().map(|c| args_len(c)).sum::<usize>()
                    + 4
                    + watched
                        .iter()
                        .map(|(k, _)| bytes_field_len(k.len()) + 8)
                        .sum::<usize>()
            }
            Request::Pipeline { commands } => {
                4 + commands.iter().map(|c| args_len(c)).sum::<usize>()
            }
            Request::Raft { payload, .. } => 4 + 8 + 1 + bytes_field_len(payload.len()),
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        match self {
            Request::Hello | Request::Ping => {}
            Request::Get { key } | Request::Delete { key } => put_bytes(dst, key),
            Request::Set { key, value, ttl_ms } => {
                put_bytes(dst, key);
                put_bytes(dst, value);
                put_bool(dst, ttl_ms.is_some());
                if let Some(ttl_ms) = ttl_ms {
                    dst.put_u64_le(*ttl_ms);
                }
            }
            Request::KeysPage {
                offset,
                limit,
                value_prefix_bytes,
            } => {
                dst.put_u64_le(*offset);
                dst.put_u32_le(*limit);
                dst.put_u32_le(*value_prefix_bytes);
            }
            Request::Command { args } => put_args(dst, args),
            Request::Transaction { commands, watched } => {
                dst.put_u32_le(crate::coding::wire_len(commands.len()));
                for command in commands {
                    put_args(dst, command);
                }
                dst.put_u32_le(crate::coding::wire_len(watched.len()));
                for (key, version) in watched {
                    put_bytes(dst, key);
                    dst.put_u64_le(*version);
                }
            }
            Request::Pipeline { commands } => {
                dst.put_u32_le(crate::coding::wire_len(commands.len()));
                for command in commands {
                    put_args(dst, command);
                }
            }
            Request::Raft {
                shard_id,
                target,
                rpc,
                payload,
            } => {
                dst.put_u32_le(*shard_id);
                dst.put_u64_le(*target);
                dst.put_u8(*rpc);
                put_bytes(dst, payload);
            }
        }
    }
}

/// Encoded size of an argument list.
fn args_len(args: &[Bytes]) -> usize {
    4 + args.iter().map(|a| bytes_field_len(a.len())).sum::<usize>()
}

fn put_args(dst: &mut BytesMut, args: &[Bytes]) {
    dst.put_u32_le(crate::coding::wire_len(args.len()));
    for arg in args {
        put_bytes(dst, arg);
    }
}

fn read_args(r: &mut Reader) -> Result<Vec<Bytes>, ProtoError> {
    // Each argument takes at least its 4-byte length.
    let count = r.count("args", 4)?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        args.push(r.bytes("arg")?);
    }
    Ok(args)
}

/// A response from a shard, carrying the request id of the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Handshake accepted.
    HelloOk {
        /// The shard this server is.
        shard_id: u32,
        /// The highest protocol version the server speaks.
        protocol_version: u8,
        /// Free-form server name and version, for logs (e.g. `"limedb 0.1.0"`).
        server: String,
    },
    /// Answer to [`Request::Ping`].
    Pong,
    /// Answer to [`Request::Get`]: the value, or `None` if the key is absent (or expired).
    Value(Option<Bytes>),
    /// Answer to [`Request::Set`]: the write is done.
    Done,
    /// Answer to [`Request::Delete`]: whether the key existed.
    Deleted(bool),
    /// Answer to [`Request::KeysPage`].
    KeysPage {
        /// Total number of pairs on the shard when the page was taken.
        total: u64,
        /// The page's entries, in key order.
        entries: Vec<KeyEntry>,
    },
    /// Answer to [`Request::Command`] and [`Request::Transaction`]: the RESP3 encoding of the
    /// reply value (the coordinator re-encodes it for its client's protocol version).
    Reply(Bytes),
    /// Answer to [`Request::Raft`]: the encoded RPC reply.
    RaftReply(Bytes),
    /// This replica does not lead its shard's group, so it did nothing; retry at the leader.
    /// Valid as the answer to any data request.
    NotLeader {
        /// The leader's replica id, when known (absent during an election).
        leader_id: Option<u64>,
        /// The leader's HTTP URL, when known.
        leader_url: Option<String>,
    },
    /// This shard does not own the request's key at its ring epoch, so it did nothing; refresh
    /// the cluster map to at least `ring_epoch` and route again. Valid as the answer to any data
    /// request.
    WrongShard {
        /// The shard's ring epoch.
        ring_epoch: u64,
    },
    /// The request failed. Valid as the answer to any request.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

impl Response {
    /// Short lowercase name for metrics labels and logs: `"hello_ok"`, `"pong"`, `"value"`,
    /// `"done"`, `"deleted"`, `"keys_page"`, `"error"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Response::HelloOk { .. } => "hello_ok",
            Response::Pong => "pong",
            Response::Value(_) => "value",
            Response::Done => "done",
            Response::Deleted(_) => "deleted",
            Response::KeysPage { .. } => "keys_page",
            Response::Reply(_) => "reply",
            Response::RaftReply(_) => "raft_reply",
            Response::NotLeader { .. } => "not_leader",
            Response::WrongShard { .. } => "wrong_shard",
            Response::Error { .. } => "error",
        }
    }

    /// The wire kind number (see [`kind`]).
    pub fn kind(&self) -> u8 {
        match self {
            Response::HelloOk { .. } => kind::HELLO_OK,
            Response::Pong => kind::PONG,
            Response::Value(_) => kind::VALUE,
            Response::Done => kind::DONE,
            Response::Deleted(_) => kind::DELETED,
            Response::KeysPage { .. } => kind::KEYS_PAGE_OK,
            Response::Reply(_) => kind::REPLY,
            Response::RaftReply(_) => kind::RAFT_REPLY,
            Response::NotLeader { .. } => kind::NOT_LEADER,
            Response::WrongShard { .. } => kind::WRONG_SHARD,
            Response::Error { .. } => kind::ERROR,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Response::HelloOk { server, .. } => 4 + 1 + bytes_field_len(server.len()),
            Response::Pong | Response::Done => 0,
            Response::Value(value) => 1 + value.as_ref().map_or(0, |v| bytes_field_len(v.len())),
            Response::Deleted(_) => 1,
            Response::KeysPage { entries, .. } => {
                8 + 4
                    + entries
                        .iter()
                        .map(|e| bytes_field_len(e.key.len()) + bytes_field_len(e.value.len()) + 8)
                        .sum::<usize>()
            }
            Response::Reply(value) | Response::RaftReply(value) => bytes_field_len(value.len()),
            Response::NotLeader {
                leader_id,
                leader_url,
            } => {
                1 + leader_id.map_or(0, |_| 8)
                    + 1
                    + leader_url.as_ref().map_or(0, |u| bytes_field_len(u.len()))
            }
            Response::WrongShard { .. } => 8,
            Response::Error { message, .. } => 2 + bytes_field_len(message.len()),
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        match self {
            Response::HelloOk {
                shard_id,
                protocol_version,
                server,
            } => {
                dst.put_u32_le(*shard_id);
                dst.put_u8(*protocol_version);
                put_bytes(dst, server.as_bytes());
            }
            Response::Pong | Response::Done => {}
            Response::Value(value) => {
                put_bool(dst, value.is_some());
                if let Some(value) = value {
                    put_bytes(dst, value);
                }
            }
            Response::Deleted(deleted) => put_bool(dst, *deleted),
            Response::KeysPage { total, entries } => {
                dst.put_u64_le(*total);
                dst.put_u32_le(crate::coding::wire_len(entries.len()));
                for entry in entries {
                    put_bytes(dst, &entry.key);
                    put_bytes(dst, &entry.value);
                    dst.put_u64_le(entry.value_len);
                }
            }
            Response::Reply(value) | Response::RaftReply(value) => put_bytes(dst, value),
            Response::NotLeader {
                leader_id,
                leader_url,
            } => {
                put_bool(dst, leader_id.is_some());
                if let Some(id) = leader_id {
                    dst.put_u64_le(*id);
                }
                put_bool(dst, leader_url.is_some());
                if let Some(url) = leader_url {
                    put_bytes(dst, url.as_bytes());
                }
            }
            Response::WrongShard { ring_epoch } => dst.put_u64_le(*ring_epoch),
            Response::Error { code, message } => {
                dst.put_u16_le(code.as_u16());
                put_bytes(dst, message.as_bytes());
            }
        }
    }
}

/// Why a request failed; the `code` of [`Response::Error`], a `u16` on the wire.
///
/// Codes may be added without a protocol version bump, so decoding never rejects a code: one this
/// version does not know becomes [`ErrorCode::Unknown`] carrying the raw number, and the
/// connection stays up. Use [`ErrorCode::as_u16`] / [`ErrorCode::from_u16`] for the wire value
/// (an `as` cast does not compile because of `Unknown`). Code `0` is never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum ErrorCode {
    /// A bug or unexpected condition on the server.
    Internal = 1,
    /// The request is well-formed on the wire but makes no sense (e.g. `Hello` twice).
    BadRequest = 2,
    /// The key exceeds the server's key size limit.
    KeyTooLarge = 3,
    /// The value exceeds the server's value size limit.
    ValueTooLarge = 4,
    /// The storage engine failed (I/O error, poisoned after a failed fsync).
    Storage = 5,
    /// The shard cannot serve right now (starting up, overloaded); retry later.
    Unavailable = 6,
    /// The server is shutting down; retry on a new connection.
    ShuttingDown = 7,
    /// The server does not implement this request.
    Unsupported = 8,
    /// A write was handed to the replica group but its fate is unknown (leadership changed
    /// before it was committed): it may or may not have been applied. Never retried blindly.
    OutcomeUnknown = 9,
    /// A code this version does not know, sent by a newer peer. Never produced for codes `1..=9`.
    Unknown(u16),
}

impl ErrorCode {
    /// The wire value.
    ///
    /// ```
    /// use limedb_proto::ErrorCode;
    /// assert_eq!(ErrorCode::KeyTooLarge.as_u16(), 3);
    /// assert_eq!(ErrorCode::from_u16(3), ErrorCode::KeyTooLarge);
    /// assert_eq!(ErrorCode::from_u16(900), ErrorCode::Unknown(900));
    /// ```
    pub const fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Internal => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::KeyTooLarge => 3,
            ErrorCode::ValueTooLarge => 4,
            ErrorCode::Storage => 5,
            ErrorCode::Unavailable => 6,
            ErrorCode::ShuttingDown => 7,
            ErrorCode::Unsupported => 8,
            ErrorCode::OutcomeUnknown => 9,
            ErrorCode::Unknown(code) => code,
        }
    }

    /// The code for a wire value; unknown values become [`ErrorCode::Unknown`].
    pub const fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Internal,
            2 => ErrorCode::BadRequest,
            3 => ErrorCode::KeyTooLarge,
            4 => ErrorCode::ValueTooLarge,
            5 => ErrorCode::Storage,
            6 => ErrorCode::Unavailable,
            7 => ErrorCode::ShuttingDown,
            8 => ErrorCode::Unsupported,
            9 => ErrorCode::OutcomeUnknown,
            other => ErrorCode::Unknown(other),
        }
    }

    /// Short lowercase name for metrics labels and logs (`"key_too_large"`; `"unknown"` for
    /// [`ErrorCode::Unknown`]).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::KeyTooLarge => "key_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::Storage => "storage",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Unknown(code) => write!(f, "unknown({code})"),
            known => f.write_str(known.name()),
        }
    }
}

/// Either side of the conversation: what one frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request (kinds `0x01..=0x7F`).
    Request(Request),
    /// A response (kinds `0x80..=0xFF`).
    Response(Response),
}

impl Message {
    /// The wire kind number (see [`kind`]).
    pub fn kind(&self) -> u8 {
        match self {
            Message::Request(r) => r.kind(),
            Message::Response(r) => r.kind(),
        }
    }

    /// Short lowercase name for logs, e.g. `"get"` or `"value"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Request(r) => r.kind_name(),
            Message::Response(r) => r.kind_name(),
        }
    }

    /// Encoded size of the body (everything after the 16-byte header).
    pub(crate) fn body_len(&self) -> usize {
        match self {
            Message::Request(r) => r.body_len(),
            Message::Response(r) => r.body_len(),
        }
    }

    /// Appends the body.
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        match self {
            Message::Request(r) => r.encode_body(dst),
            Message::Response(r) => r.encode_body(dst),
        }
    }

    /// Decodes the body of a message of kind `kind` from exactly `body` (one frame's body).
    pub(crate) fn decode_body(kind: u8, body: BytesMut) -> Result<Message, ProtoError> {
        let mut r = Reader::new(body);
        let message = match kind {
            kind::HELLO => Message::Request(Request::Hello),
            kind::PING => Message::Request(Request::Ping),
            kind::GET => Message::Request(Request::Get {
                key: r.bytes("key")?,
            }),
            kind::SET => {
                let key = r.bytes("key")?;
                let value = r.bytes("value")?;
                let ttl_ms = if r.bool("ttl_ms presence tag")? {
                    Some(r.u64("ttl_ms")?)
                } else {
                    None
                };
                Message::Request(Request::Set { key, value, ttl_ms })
            }
            kind::DELETE => Message::Request(Request::Delete {
                key: r.bytes("key")?,
            }),
            kind::KEYS_PAGE => {
                let offset = r.u64("offset")?;
                let limit = r.u32("limit")?;
                let value_prefix_bytes = r.u32("value_prefix_bytes")?;
                Message::Request(Request::KeysPage {
                    offset,
                    limit,
                    value_prefix_bytes,
                })
            }
            kind::COMMAND => Message::Request(Request::Command {
                args: read_args(&mut r)?,
            }),
            kind::TRANSACTION => {
                // A command takes at least its 4-byte count; a watch at least 4 + 8 bytes.
                let count = r.count("commands", 4)?;
                let mut commands = Vec::with_capacity(count);
                for _ in 0..count {
                    commands.push(read_args(&mut r)?);
                }
                let count = r.count("watched", 12)?;
                let mut watched = Vec::with_capacity(count);
                for _ in 0..count {
                    let key = r.bytes("watched key")?;
                    let version = r.u64("watched version")?;
                    watched.push((key, version));
                }
                Message::Request(Request::Transaction { commands, watched })
            }
            kind::PIPELINE => {
                let count = r.count("commands", 4)?;
                let mut commands = Vec::with_capacity(count);
                for _ in 0..count {
                    commands.push(read_args(&mut r)?);
                }
                Message::Request(Request::Pipeline { commands })
            }
            kind::REPLY => Message::Response(Response::Reply(r.bytes("reply")?)),
            kind::RAFT => {
                let shard_id = r.u32("shard_id")?;
                let target = r.u64("target")?;
                let rpc = r.u8("rpc")?;
                let payload = r.bytes("payload")?;
                Message::Request(Request::Raft {
                    shard_id,
                    target,
                    rpc,
                    payload,
                })
            }
            kind::RAFT_REPLY => Message::Response(Response::RaftReply(r.bytes("payload")?)),
            kind::WRONG_SHARD => Message::Response(Response::WrongShard {
                ring_epoch: r.u64("ring_epoch")?,
            }),
            kind::NOT_LEADER => {
                let leader_id = if r.bool("leader_id presence tag")? {
                    Some(r.u64("leader_id")?)
                } else {
                    None
                };
                let leader_url = if r.bool("leader_url presence tag")? {
                    Some(r.string("leader_url")?)
                } else {
                    None
                };
                Message::Response(Response::NotLeader {
                    leader_id,
                    leader_url,
                })
            }
            kind::HELLO_OK => {
                let shard_id = r.u32("shard_id")?;
                let protocol_version = r.u8("protocol_version")?;
                let server = r.string("server")?;
                Message::Response(Response::HelloOk {
                    shard_id,
                    protocol_version,
                    server,
                })
            }
            kind::PONG => Message::Response(Response::Pong),
            kind::VALUE => {
                let value = if r.bool("value presence tag")? {
                    Some(r.bytes("value")?)
                } else {
                    None
                };
                Message::Response(Response::Value(value))
            }
            kind::DONE => Message::Response(Response::Done),
            kind::DELETED => Message::Response(Response::Deleted(r.bool("deleted")?)),
            kind::KEYS_PAGE_OK => {
                let total = r.u64("total")?;
                // Each entry is at least two empty byte strings and a length: 4 + 4 + 8 bytes.
                let count = r.count("entries", 16)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let key = r.bytes("entry key")?;
                    let value = r.bytes("entry value")?;
                    let value_len = r.u64("entry value_len")?;
                    entries.push(KeyEntry {
                        key,
                        value,
                        value_len,
                    });
                }
                Message::Response(Response::KeysPage { total, entries })
            }
            kind::ERROR => {
                let code = ErrorCode::from_u16(r.u16("error code")?);
                let message = r.string("message")?;
                Message::Response(Response::Error { code, message })
            }
            other => return Err(ProtoError::UnknownKind(other)),
        };
        r.finish(kind)?;
        Ok(message)
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Message::Request(r)
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Message::Response(r)
    }
}
