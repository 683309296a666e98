//! [`StorageError`], the one error type every engine in this crate returns.

use std::path::PathBuf;

/// Everything that can go wrong in a storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An operating-system I/O call failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
        /// What the engine was doing, e.g. "failed to append to log".
        context: &'static str,
    },
    /// A file on disk is damaged in a way that recovery must not paper over.
    #[error("corrupt file {} at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record (or header) within the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The file was written by a format version this build does not understand.
    #[error(
        "{} has format version {found}, this build reads version {supported}",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version byte found in its header.
        found: u8,
        /// The version this build writes and reads.
        supported: u8,
    },
    /// A caller broke an API contract on a file, e.g. added keys to an SSTable out of order
    /// or finished a table with no entries. Nothing on disk is damaged.
    #[error("invalid input for {}: {reason}", path.display())]
    InvalidInput {
        /// The file being built.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A key is longer than [`crate::MAX_KEY_BYTES`].
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is longer than [`crate::MAX_VALUE_BYTES`].
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier write or fsync failed, so durability can no longer be promised; writes are
    /// refused until the engine is reopened. Reads still work.
    #[error("storage engine is poisoned by an earlier write or fsync failure; writes are refused")]
    Poisoned,
    /// The server an engine keeps its data in (PostgreSQL) cannot be reached or refuses to
    /// serve right now: down, restarting, unreachable, timing out, or refusing our
    /// credentials. Nothing was acknowledged; the same request may succeed once it is back.
    #[error("{backend} is unavailable: {reason}")]
    Unavailable {
        /// The server, e.g. "PostgreSQL".
        backend: &'static str,
        /// Why, including the server's own message.
        reason: String,
    },
    /// The server an engine keeps its data in answered a request with an error that is not
    /// about its availability (a bug in our SQL, a full disk on the server, ...).
    #[error("{backend} error: {reason}")]
    Backend {
        /// The server, e.g. "PostgreSQL".
        backend: &'static str,
        /// Its error message.
        reason: String,
    },
    /// The engine's settings are invalid (a malformed connection URL, a bad database name).
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// The engine was closed.
    #[error("storage engine is closed")]
    Closed,
    /// The engine does not offer this operation (e.g. a checkpoint of the memory engine).
    #[error("the {backend} storage engine does not support {operation}")]
    Unsupported {
        /// The engine, e.g. "memory".
        backend: &'static str,
        /// What was asked, e.g. "checkpoints".
        operation: &'static str,
    },
}

impl StorageError {
    /// Builds an [`StorageError::Io`].
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io {
            path,
            source,
            context,
        }
    }
}
