//! The one error type of this crate: every way bytes can fail to be a RESP request or value.
//!
//! A [`RespError`] means the stream is out of step: Redis answers with the error's text and
//! closes the connection, and so do LimeDB's listeners. Its `Display` form is exactly the text
//! Redis sends after `-`, e.g. `ERR Protocol error: invalid bulk length`.

/// Why bytes could not be parsed as RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// A multibulk count that is not a number, or over the argument limit.
    #[error("ERR Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A bulk length that is not a number, negative, or over the bulk limit.
    #[error("ERR Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A multibulk request whose next argument does not start with `$`.
    #[error("ERR Protocol error: expected '$', got '{0}'")]
    ExpectedDollar(char),
    /// An inline command line longer than the inline limit without a newline.
    #[error("ERR Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// A `*<count>` line longer than the inline limit without `\r`.
    #[error("ERR Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$<len>` line longer than the inline limit without `\r`.
    #[error("ERR Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// An inline command with a quote that is never closed (or not followed by a space).
    #[error("ERR Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// One request's arguments together exceed the per-request byte limit.
    #[error("ERR Protocol error: request of more than {max} bytes")]
    RequestTooBig {
        /// The limit.
        max: usize,
    },
    /// A reply value (not a request) that is malformed; `what` says how.
    #[error("ERR Protocol error: {0}")]
    Malformed(&'static str),
}
