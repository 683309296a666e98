//! [`ReplicaError`], the one error type of this crate, and the conversion of our I/O and codec
//! failures into openraft's `StorageError` at the storage seams.

use crate::codec::CodecError;
use crate::types::ReplicaId;

/// Why a replica could not do what was asked.
///
/// Redirects ([`ReplicaError::NotLeader`]) and an unknown outcome are kept apart from failures:
/// a caller may retry a request refused with `NotLeader` (nothing was proposed), never one whose
/// outcome is unknown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// This replica does not lead its group; nothing was proposed. `leader` is the leader's id
    /// and URL when known (absent during an election).
    #[error("not the leader{}", match .leader { Some((id, url)) => format!("; replica {id} at {url} leads"), None => "; no leader is known".into() })]
    NotLeader {
        /// The current leader, if known.
        leader: Option<(ReplicaId, String)>,
    },
    /// The write was proposed but its fate is unknown (leadership changed before it was
    /// committed): it may or may not be applied. Never retried automatically.
    #[error("the outcome is unknown: {0}")]
    OutcomeUnknown(String),
    /// The group cannot serve right now (no quorum reachable, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] limedb_storage::StorageError),
    /// A message or file did not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The replica's configuration or files contradict each other (a `--peers` list that
    /// disagrees with the stored membership, another shard's data directory, ...).
    #[error("{0}")]
    Config(String),
    /// openraft refused or failed (a fatal error of the Raft core, an invalid membership
    /// change).
    #[error("raft: {0}")]
    Raft(String),
}

impl ReplicaError {
    /// An [`ReplicaError::Io`] for `context` at `path`.
    pub fn io(
        context: &str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> ReplicaError {
        let context = format!("{context} {}", path.display());
        move |source| ReplicaError::Io { context, source }
    }
}

/// The crate's result type.
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;
