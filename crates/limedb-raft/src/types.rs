//! openraft's type configuration for LimeDB and the data the Raft log carries: [`Command`], a
//! batch of [`ReplicatedWrite`]s, and [`Applied`], the answers the state machine gives back.
//!
//! A log entry carries **effects, never operations**: every write is a blind put (with the
//! absolute expiry the leader chose) or a delete. Applying a window of such entries again, in
//! log order, over a state that already holds them yields the same state, which is what lets
//! the state machine record its applied position lazily (see `state_machine`).

use std::fmt;

use bytes::Bytes;
use limedb_storage::WriteOp;

openraft::declare_raft_types!(
    /// LimeDB's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = ReplicaId,
        Node = ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::state_machine::SnapshotFiles,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica's id within its group: a positive integer the operator chooses (`--replica`).
pub type ReplicaId = u64;

/// A log entry of LimeDB's Raft groups.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (leader term and node, index).
pub type LogId = openraft::LogId<ReplicaId>;
/// A vote (term, candidate, committed).
pub type Vote = openraft::Vote<ReplicaId>;
/// A group's membership: voter sets and every member's [`ReplicaNode`].
pub type Membership = openraft::Membership<ReplicaId, ReplicaNode>;
/// A membership with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<ReplicaId, ReplicaNode>;
/// What a snapshot holds: its last log id, membership and id.
pub type SnapshotMeta = openraft::SnapshotMeta<ReplicaId, ReplicaNode>;
/// The openraft handle of a replica.
pub type Raft = openraft::Raft<TypeConfig>;

/// What a group remembers about each member: the HTTP base URL the operator gave it with
/// `--peers`. The internal-protocol address is learned from that URL when needed, so it may
/// change across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplicaNode {
    /// `http://host:port`.
    pub url: String,
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// One replicated write: the effect the leader decided, applied as is by every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicatedWrite {
    /// Store `value` under `key` with an optional absolute expiry (ms since the Unix epoch).
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Absolute expiry chosen by the leader; `None` lives forever.
        expires_at_ms: Option<u64>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl ReplicatedWrite {
    /// The key written.
    pub fn key(&self) -> &Bytes {
        match self {
            ReplicatedWrite::Put { key, .. } | ReplicatedWrite::Delete { key } => key,
        }
    }

    /// Key and value bytes, for batch limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            ReplicatedWrite::Put { key, value, .. } => key.len() + value.len(),
            ReplicatedWrite::Delete { key } => key.len(),
        }
    }

    /// The engine's borrowed form of this write.
    pub fn as_op(&self) -> WriteOp<'_> {
        match self {
            ReplicatedWrite::Put {
                key,
                value,
                expires_at_ms,
            } => WriteOp::Put {
                key,
                value,
                expires_at_ms: *expires_at_ms,
            },
            ReplicatedWrite::Delete { key } => WriteOp::Delete { key },
        }
    }
}

/// The application data of a log entry: writes applied in order, as one engine batch, and
/// optionally a new **group record**.
///
/// The group record is an opaque document the server keeps replicated with the group, beside
/// the engine rather than in it (LimeDB: which hash ranges the shard owns, at which ring
/// epoch). An entry that carries one replaces it whole, after the entry's writes; replaying it
/// is harmless like replaying a write. It survives restarts in the applied marker and travels
/// with snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// The writes, in the order the leader accepted them.
    pub writes: Vec<ReplicatedWrite>,
    /// A new group record, if this entry sets one.
    pub record: Option<Bytes>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} writes", self.writes.len())?;
        if let Some(record) = &self.record {
            write!(f, " and a group record of {} bytes", record.len())?;
        }
        Ok(())
    }
}

/// The state machine's answer to one entry: for each write of its [`Command`], whether it
/// removed a live key (always `false` for a put), as `Engine::write_many` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// One flag per write.
    pub removed: Vec<bool>,
}
