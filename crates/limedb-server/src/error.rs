//! Errors of the server crate, and the one place where errors become HTTP statuses.
//!
//! [`ApiError`] is what a request can fail with, on a shard or on the coordinator; its
//! [`IntoResponse`] impl turns it into the JSON body `{"error": "<code>", "message": "..."}` with
//! the status documented in the README. [`ServerError`] is what starting or running a node can
//! fail with (binding a port, opening storage); the binary prints it and exits non-zero.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use limedb_cluster::ShardId;
use limedb_proto::ErrorCode;

/// A request that failed. Client mistakes are 4xx, an unreachable shard is 503, and only a
/// genuine server fault is a 500.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed JSON, a missing or mistyped field, a bad query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// The node asks for credentials and the request brought none, or wrong ones (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The request's user lacks the permission the route needs (403).
    #[error("{0}")]
    Forbidden(String),
    /// The key is over the configured limit.
    #[error("key is {len} bytes, over the limit of {max} bytes")]
    KeyTooLarge {
        /// Size of the rejected key.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value (or the whole request body) is over the configured limit.
    #[error("{what} is {len} bytes, over the limit of {max} bytes")]
    ValueTooLarge {
        /// What was too large ("value", "request body").
        what: &'static str,
        /// Size of the rejected value, when known.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// The client did not send the whole request body in time.
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    /// The key does not exist (or has expired).
    #[error("key not found")]
    NotFound,
    /// The shard that owns the key cannot be reached (down, timed out, shutting down).
    #[error("shard {shard} ({url}) is unavailable: {reason}")]
    ShardUnavailable {
        /// The shard that owns the key.
        shard: ShardId,
        /// Its HTTP address as configured on the coordinator.
        url: String,
        /// Why it is unavailable.
        reason: String,
    },
    /// This node is shutting down and no longer takes requests.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The database the shard keeps its data in (PostgreSQL) is down, restarting or
    /// unreachable; nothing was written. 503: retry once it is back.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The storage engine failed (I/O error, poisoned after a failed fsync, ...).
    #[error("storage error: {0}")]
    Storage(String),
    /// The shard refused the request; `code` is its internal-protocol error code.
    #[error("shard {shard} refused the request: {message}")]
    ShardRejected {
        /// The shard that answered.
        shard: ShardId,
        /// Its error code.
        code: ErrorCode,
        /// Its error message.
        message: String,
    },
    /// A fault in LimeDB itself, such as an unexpected answer from a shard.
    #[error("internal error: {0}")]
    Internal(String),
    /// This replica does not lead its shard's group, so it did nothing; the leader, if known,
    /// is named. 503: retry at the leader (a coordinator does that by itself).
    #[error("this replica is not the leader of its group{}", match .leader { Some((id, url)) => format!("; replica {id} at {url} is"), None => "; no leader is elected right now".into() })]
    NotLeader {
        /// The leader's replica id and HTTP URL, when known.
        leader: Option<(u64, String)>,
    },
    /// A write reached the replica group but its fate is unknown: it may or may not have been
    /// applied (leadership changed before it was committed, or the answer was lost). 503, never
    /// retried automatically.
    #[error("the outcome of the write is unknown (it may or may not have been applied): {0}")]
    OutcomeUnknown(String),
    /// The shard's replica group cannot serve right now (no quorum reachable, no leader within
    /// the time allowed). 503: retry later.
    #[error("{0}")]
    GroupUnavailable(String),
    /// A compare-and-set found another state than the caller expected (409); `current` is
    /// that state, when there is one.
    #[error("{message}")]
    Conflict {
        /// What differs.
        message: String,
        /// The state found, as JSON.
        current: Option<serde_json::Value>,
    },
    /// The node has no such thing to offer (404 with its own message, unlike a missing key).
    #[error("{0}")]
    NoSuchResource(String),
    /// What the request names is gone for good (410): a move's capture that this replica lost
    /// or never had; the copy starts over.
    #[error("{0}")]
    Gone(String),
    /// This shard does not own the key at its ring epoch; nothing was done (421). A coordinator
    /// refreshes its cluster map and routes again.
    #[error("shard {shard} does not own this key at ring epoch {epoch}; shard {owner} does")]
    WrongShard {
        /// The shard's ring epoch.
        epoch: u64,
        /// This shard.
        shard: ShardId,
        /// The owner by this shard's record.
        owner: ShardId,
    },
}

impl ApiError {
    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::KeyTooLarge { .. } | ApiError::ValueTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::NotFound | ApiError::NoSuchResource(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::WrongShard { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::ShardUnavailable { .. }
            | ApiError::ShuttingDown
            | ApiError::StorageUnavailable(_)
            | ApiError::NotLeader { .. }
            | ApiError::OutcomeUnknown(_)
            | ApiError::GroupUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ShardRejected { code, .. } => match code {
                ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
                ErrorCode::KeyTooLarge | ErrorCode::ValueTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::Unavailable | ErrorCode::ShuttingDown | ErrorCode::OutcomeUnknown => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// Stable machine-readable code, the `"error"` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::KeyTooLarge { .. } => "key_too_large",
            ApiError::ValueTooLarge { .. } => "value_too_large",
            ApiError::NotFound | ApiError::NoSuchResource(_) => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::Gone(_) => "gone",
            ApiError::WrongShard { .. } => "wrong_shard",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::ShardUnavailable { .. } => "shard_unavailable",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::StorageUnavailable(_) => "storage_unavailable",
            ApiError::Storage(_) => "storage_error",
            ApiError::Internal(_) => "internal_error",
            ApiError::NotLeader { .. } => "not_leader",
            ApiError::OutcomeUnknown(_) => "outcome_unknown",
            ApiError::GroupUnavailable(_) => "shard_unavailable",
            ApiError::ShardRejected { code, .. } => match code {
                ErrorCode::BadRequest => "bad_request",
                ErrorCode::KeyTooLarge => "key_too_large",
                ErrorCode::ValueTooLarge => "value_too_large",
                ErrorCode::Unavailable => "shard_unavailable",
                ErrorCode::ShuttingDown => "shutting_down",
                ErrorCode::Storage => "storage_error",
                ErrorCode::OutcomeUnknown => "outcome_unknown",
                _ => "internal_error",
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        if let ApiError::NotLeader { leader } = &self {
            body["leader"] = leader
                .as_ref()
                .map_or(serde_json::Value::Null, |(_, url)| url.clone().into());
        }
        if let ApiError::Conflict {
            current: Some(current),
            ..
        } = &self
        {
            body["current"] = current.clone();
        }
        if let ApiError::WrongShard { epoch, owner, .. } = &self {
            body["ringEpoch"] = (*epoch).into();
            body["owner"] = owner.0.into();
        }
        (self.status(), axum::Json(body)).into_response()
    }
}

impl From<limedb_storage::StorageError> for ApiError {
    fn from(e: limedb_storage::StorageError) -> Self {
        match e {
            limedb_storage::StorageError::Unavailable { .. } => {
                ApiError::StorageUnavailable(e.to_string())
            }
            e => ApiError::Storage(e.to_string()),
        }
    }
}

impl From<limedb_raft::ReplicaError> for ApiError {
    fn from(e: limedb_raft::ReplicaError) -> Self {
        use limedb_raft::ReplicaError;
        match e {
            ReplicaError::NotLeader { leader } => ApiError::NotLeader { leader },
            ReplicaError::OutcomeUnknown(why) => ApiError::OutcomeUnknown(why),
            ReplicaError::Unavailable(why) => ApiError::GroupUnavailable(why),
            ReplicaError::Storage(e) => ApiError::from(e),
            ReplicaError::Config(why) => ApiError::BadRequest(why),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Starting or running a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The storage engine could not be opened or closed cleanly.
    #[error("storage: {0}")]
    Storage(#[from] limedb_storage::StorageError),
    /// The configuration is invalid (the message says which option and why).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A background task of the node failed (panicked or was cancelled).
    #[error("{0}")]
    Task(String),
    /// The replica could not start (its files, its group, its configuration).
    #[error("replication: {0}")]
    Replica(#[from] limedb_raft::ReplicaError),
    /// Some other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}
