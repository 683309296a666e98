//! The binary codec of everything a Raft group sends or stores: log ids, votes, memberships,
//! entries, the AppendEntries and Vote messages, and snapshot metadata. Pure: no I/O.
//!
//! All integers are little-endian. `bytes` and `string` are `u32 len` + that many bytes (strings
//! UTF-8); `opt<T>` is a `u8` presence tag (0/1) then `T`; `list<T>` is `u32 count` then the
//! elements. Every count is checked against the bytes left before anything is allocated, so a
//! hostile or corrupt message costs at most its own size; decoding never panics and a message
//! must be consumed exactly.
//!
//! | type | layout |
//! |---|---|
//! | `LogId` | `term u64, node u64, index u64` |
//! | `Vote` | `term u64, node u64, committed u8` |
//! | `ReplicaNode` | `url string` |
//! | `Membership` | `list<list<u64>>` (voter sets, one or two in a joint config), `list<(u64, ReplicaNode)>` (every member) |
//! | `StoredMembership` | `opt<LogId>, Membership` |
//! | `ReplicatedWrite` | `0 u8, key bytes, value bytes, opt<u64> expires_at_ms` (put) or `1 u8, key bytes` (delete) |
//! | `Entry` | `LogId, tag u8` then nothing (0 blank), `list<ReplicatedWrite>` (1 normal), `Membership` (2) |
//! | `AppendEntriesRequest` | `Vote, opt<LogId> prev, list<Entry>, opt<LogId> leader_commit` |
//! | `AppendEntriesResponse` | `0 u8` success, `1 u8 opt<LogId>` partial success, `2 u8` conflict, `3 u8 Vote` higher vote |
//! | `VoteRequest` | `Vote, opt<LogId> last_log_id` |
//! | `VoteResponse` | `Vote, granted u8, opt<LogId> last_log_id` |
//! | `SnapshotMeta` | `opt<LogId> last_log_id, StoredMembership, snapshot_id string` |

use bytes::{Buf, BufMut, Bytes, BytesMut};
use limedb_storage::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{CommittedLeaderId, EntryPayload};

use crate::types::{
    Command, Entry, LogId, Membership, ReplicaId, ReplicaNode, ReplicatedWrite, SnapshotMeta,
    StoredMembership, TypeConfig, Vote,
};

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes end inside a field.
    #[error("truncated: {what} needs {need} bytes, {left} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        left: usize,
    },
    /// A field holds a value no encoder writes.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// Bytes remain after the message.
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
}

/// A value with a binary encoding.
pub trait Encode {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut BytesMut);
}

/// A value decodable from its [`Encode`] form.
pub trait Decode: Sized {
    /// Reads one value from `r`.
    fn decode(r: &mut Reader) -> Result<Self, CodecError>;
}

/// `value`'s encoding as one buffer.
pub fn to_bytes<T: Encode + ?Sized>(value: &T) -> Bytes {
    let mut out = BytesMut::new();
    value.encode(&mut out);
    out.freeze()
}

/// Decodes exactly one `T` from `bytes` (nothing may be left over).
pub fn from_bytes<T: Decode>(bytes: Bytes) -> Result<T, CodecError> {
    let mut r = Reader::new(bytes);
    let value = T::decode(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// A bounds-checked cursor over one message; byte strings come out without copying.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, need: usize, what: &'static str) -> Result<(), CodecError> {
        if self.buf.len() < need {
            return Err(CodecError::Truncated {
                what,
                need,
                left: self.buf.len(),
            });
        }
        Ok(())
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    /// A `0`/`1` byte.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(CodecError::Invalid {
                what,
                detail: format!("{other} is not 0 or 1"),
            }),
        }
    }

    /// A `u32 len` + bytes field of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<Bytes, CodecError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(CodecError::Invalid {
                what,
                detail: format!("length {len} exceeds the limit of {max}"),
            });
        }
        self.need(len, what)?;
        Ok(self.buf.split_to(len))
    }

    /// A UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, what: &'static str, max: usize) -> Result<String, CodecError> {
        let bytes = self.bytes(what, max)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| CodecError::Invalid {
            what,
            detail: e.to_string(),
        })
    }

    /// An element count, checked against the bytes left: each element takes at least
    /// `min_element_bytes`.
    pub fn count(
        &mut self,
        what: &'static str,
        min_element_bytes: usize,
    ) -> Result<usize, CodecError> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(min_element_bytes.max(1)) > self.buf.len() {
            return Err(CodecError::Invalid {
                what,
                detail: format!(
                    "{count} elements cannot fit in the {} bytes left",
                    self.buf.len()
                ),
            });
        }
        Ok(count)
    }

    /// Succeeds when every byte was read.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

/// Longest URL a membership may hold.
const MAX_URL_BYTES: usize = 4096;
/// Longest snapshot id.
const MAX_SNAPSHOT_ID_BYTES: usize = 256;
/// Largest group record (the server keeps a small document there; see `types::Command`).
pub const MAX_GROUP_RECORD_BYTES: usize = 16 << 20;

/// Encodes an optional group record (see `types::Command`): a presence byte, then its bytes.
pub(crate) fn put_record(out: &mut BytesMut, record: Option<&Bytes>) {
    match record {
        None => out.put_u8(0),
        Some(record) => {
            out.put_u8(1);
            put_bytes(out, record);
        }
    }
}

/// Decodes what [`put_record`] wrote.
pub(crate) fn read_record(r: &mut Reader) -> Result<Option<Bytes>, CodecError> {
    if r.bool("group record presence")? {
        Ok(Some(r.bytes("group record", MAX_GROUP_RECORD_BYTES)?))
    } else {
        Ok(None)
    }
}

pub(crate) fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn put_count(out: &mut BytesMut, n: usize) {
    out.put_u32_le(u32::try_from(n).unwrap_or(u32::MAX));
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            None => out.put_u8(0),
            Some(v) => {
                out.put_u8(1);
                v.encode(out);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        Ok(if r.bool("presence tag")? {
            Some(T::decode(r)?)
        } else {
            None
        })
    }
}

impl Encode for LogId {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.leader_id.term);
        out.put_u64_le(self.leader_id.node_id);
        out.put_u64_le(self.index);
    }
}

impl Decode for LogId {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let term = r.u64("log id term")?;
        let node = r.u64("log id node")?;
        let index = r.u64("log id index")?;
        Ok(LogId::new(CommittedLeaderId::new(term, node), index))
    }
}

impl Encode for Vote {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.leader_id.term);
        out.put_u64_le(self.leader_id.node_id);
        out.put_u8(u8::from(self.committed));
    }
}

impl Decode for Vote {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let term = r.u64("vote term")?;
        let node = r.u64("vote node")?;
        Ok(if r.bool("vote committed")? {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        })
    }
}

impl Encode for ReplicaNode {
    fn encode(&self, out: &mut BytesMut) {
        put_bytes(out, self.url.as_bytes());
    }
}

impl Decode for ReplicaNode {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        Ok(ReplicaNode {
            url: r.string("replica url", MAX_URL_BYTES)?,
        })
    }
}

impl Encode for Membership {
    fn encode(&self, out: &mut BytesMut) {
        let configs = self.get_joint_config();
        put_count(out, configs.len());
        for voters in configs {
            put_count(out, voters.len());
            for id in voters {
                out.put_u64_le(*id);
            }
        }
        let nodes: Vec<(&ReplicaId, &ReplicaNode)> = self.nodes().collect();
        put_count(out, nodes.len());
        for (id, node) in nodes {
            out.put_u64_le(*id);
            node.encode(out);
        }
    }
}

impl Decode for Membership {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let config_count = r.count("voter sets", 4)?;
        let mut configs = Vec::with_capacity(config_count);
        for _ in 0..config_count {
            let n = r.count("voters", 8)?;
            let mut voters = std::collections::BTreeSet::new();
            for _ in 0..n {
                voters.insert(r.u64("voter id")?);
            }
            configs.push(voters);
        }
        let node_count = r.count("members", 12)?;
        let mut nodes = std::collections::BTreeMap::new();
        for _ in 0..node_count {
            let id = r.u64("member id")?;
            nodes.insert(id, ReplicaNode::decode(r)?);
        }
        // openraft's constructor would quietly add a default node for a voter without one.
        for voters in &configs {
            if let Some(id) = voters.iter().find(|id| !nodes.contains_key(id)) {
                return Err(CodecError::Invalid {
                    what: "membership",
                    detail: format!("voter {id} has no member entry"),
                });
            }
        }
        Ok(Membership::new(configs, nodes))
    }
}

impl Encode for StoredMembership {
    fn encode(&self, out: &mut BytesMut) {
        self.log_id().encode(out);
        self.membership().encode(out);
    }
}

impl Decode for StoredMembership {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let log_id = Option::<LogId>::decode(r)?;
        let membership = Membership::decode(r)?;
        Ok(StoredMembership::new(log_id, membership))
    }
}

impl Encode for ReplicatedWrite {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            ReplicatedWrite::Put {
                key,
                value,
                expires_at_ms,
            } => {
                out.put_u8(0);
                put_bytes(out, key);
                put_bytes(out, value);
                match expires_at_ms {
                    None => out.put_u8(0),
                    Some(at) => {
                        out.put_u8(1);
                        out.put_u64_le(*at);
                    }
                }
            }
            ReplicatedWrite::Delete { key } => {
                out.put_u8(1);
                put_bytes(out, key);
            }
        }
    }
}

impl Decode for ReplicatedWrite {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        match r.u8("write kind")? {
            0 => {
                let key = r.bytes("key", MAX_KEY_BYTES)?;
                let value = r.bytes("value", MAX_VALUE_BYTES)?;
                let expires_at_ms = if r.bool("expiry presence tag")? {
                    Some(r.u64("expires_at_ms")?)
                } else {
                    None
                };
                Ok(ReplicatedWrite::Put {
                    key,
                    value,
                    expires_at_ms,
                })
            }
            1 => Ok(ReplicatedWrite::Delete {
                key: r.bytes("key", MAX_KEY_BYTES)?,
            }),
            other => Err(CodecError::Invalid {
                what: "write kind",
                detail: format!("unknown kind {other}"),
            }),
        }
    }
}

impl Encode for Command {
    fn encode(&self, out: &mut BytesMut) {
        put_count(out, self.writes.len());
        for write in &self.writes {
            write.encode(out);
        }
    }
}

impl Decode for Command {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        // The smallest write is a delete of an empty key: kind + length.
        let n = r.count("writes", 5)?;
        let mut writes = Vec::with_capacity(n);
        for _ in 0..n {
            writes.push(ReplicatedWrite::decode(r)?);
        }
        Ok(Command {
            writes,
            record: None,
        })
    }
}

impl Encode for Entry {
    fn encode(&self, out: &mut BytesMut) {
        self.log_id.encode(out);
        match &self.payload {
            EntryPayload::Blank => out.put_u8(0),
            EntryPayload::Normal(command) => match &command.record {
                // Kind 1 (writes only) is the format entries had before group records.
                None => {
                    out.put_u8(1);
                    command.encode(out);
                }
                Some(record) => {
                    out.put_u8(3);
                    command.encode(out);
                    put_bytes(out, record);
                }
            },
            EntryPayload::Membership(m) => {
                out.put_u8(2);
                m.encode(out);
            }
        }
    }
}

impl Decode for Entry {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let log_id = LogId::decode(r)?;
        let payload = match r.u8("entry payload kind")? {
            0 => EntryPayload::Blank,
            1 => EntryPayload::Normal(Command::decode(r)?),
            3 => {
                let mut command = Command::decode(r)?;
                command.record = Some(r.bytes("group record", MAX_GROUP_RECORD_BYTES)?);
                EntryPayload::Normal(command)
            }
            2 => EntryPayload::Membership(Membership::decode(r)?),
            other => {
                return Err(CodecError::Invalid {
                    what: "entry payload kind",
                    detail: format!("unknown kind {other}"),
                })
            }
        };
        Ok(Entry { log_id, payload })
    }
}

/// Bytes of the smallest entry (a blank one): a log id and a tag.
const MIN_ENTRY_BYTES: usize = 25;

impl Encode for AppendEntriesRequest<TypeConfig> {
    fn encode(&self, out: &mut BytesMut) {
        self.vote.encode(out);
        self.prev_log_id.encode(out);
        put_count(out, self.entries.len());
        for entry in &self.entries {
            entry.encode(out);
        }
        self.leader_commit.encode(out);
    }
}

impl Decode for AppendEntriesRequest<TypeConfig> {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let vote = Vote::decode(r)?;
        let prev_log_id = Option::<LogId>::decode(r)?;
        let n = r.count("entries", MIN_ENTRY_BYTES)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(Entry::decode(r)?);
        }
        let leader_commit = Option::<LogId>::decode(r)?;
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
    }
}

impl Encode for AppendEntriesResponse<ReplicaId> {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            AppendEntriesResponse::Success => out.put_u8(0),
            AppendEntriesResponse::PartialSuccess(matching) => {
                out.put_u8(1);
                matching.encode(out);
            }
            AppendEntriesResponse::Conflict => out.put_u8(2),
            AppendEntriesResponse::HigherVote(vote) => {
                out.put_u8(3);
                vote.encode(out);
            }
        }
    }
}

impl Decode for AppendEntriesResponse<ReplicaId> {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        Ok(match r.u8("append response kind")? {
            0 => AppendEntriesResponse::Success,
            1 => AppendEntriesResponse::PartialSuccess(Option::<LogId>::decode(r)?),
            2 => AppendEntriesResponse::Conflict,
            3 => AppendEntriesResponse::HigherVote(Vote::decode(r)?),
            other => {
                return Err(CodecError::Invalid {
                    what: "append response kind",
                    detail: format!("unknown kind {other}"),
                })
            }
        })
    }
}

impl Encode for VoteRequest<ReplicaId> {
    fn encode(&self, out: &mut BytesMut) {
        self.vote.encode(out);
        self.last_log_id.encode(out);
    }
}

impl Decode for VoteRequest<ReplicaId> {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let vote = Vote::decode(r)?;
        let last_log_id = Option::<LogId>::decode(r)?;
        Ok(VoteRequest { vote, last_log_id })
    }
}

impl Encode for VoteResponse<ReplicaId> {
    fn encode(&self, out: &mut BytesMut) {
        self.vote.encode(out);
        out.put_u8(u8::from(self.vote_granted));
        self.last_log_id.encode(out);
    }
}

impl Decode for VoteResponse<ReplicaId> {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let vote = Vote::decode(r)?;
        let vote_granted = r.bool("vote granted")?;
        let last_log_id = Option::<LogId>::decode(r)?;
        Ok(VoteResponse {
            vote,
            vote_granted,
            last_log_id,
        })
    }
}

impl Encode for SnapshotMeta {
    fn encode(&self, out: &mut BytesMut) {
        self.last_log_id.encode(out);
        self.last_membership.encode(out);
        put_bytes(out, self.snapshot_id.as_bytes());
    }
}

impl Decode for SnapshotMeta {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let last_log_id = Option::<LogId>::decode(r)?;
        let last_membership = StoredMembership::decode(r)?;
        let snapshot_id = r.string("snapshot id", MAX_SNAPSHOT_ID_BYTES)?;
        Ok(SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        })
    }
}

#[cfg(test)]
mod tests;
