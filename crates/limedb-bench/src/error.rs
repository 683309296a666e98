//! [`BenchError`]: everything that can stop a benchmark run or reject its options.
//!
//! Individual failed requests are *not* errors of the run: they are counted in
//! [`BenchReport::errors`](crate::BenchReport::errors). A run only fails when it
//! cannot start (bad URL, nothing listening) or when failures pile up past the
//! abort threshold, so a broken server never makes `limedb bench` hang or
//! report a meaningless throughput.

use std::net::SocketAddr;

/// Why a benchmark run could not start or was aborted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The base URL does not parse or has parts the client cannot honour.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The base URL is not plain `http://` (TLS is not supported).
    #[error("unsupported URL scheme {scheme:?} in {url:?}: only http:// is supported")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// The scheme found.
        scheme: String,
    },

    /// A benchmark option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// A workload name did not parse (see [`Workload`](crate::Workload)).
    #[error("unknown workload {0:?}: expected set, get, mixed or mixed:<read percent 0..=100>")]
    UnknownWorkload(String),

    /// A target API name did not parse (see [`Api`](crate::Api)).
    #[error("unknown target {0:?}: expected limedb or etcd")]
    UnknownTarget(String),

    /// A key-pattern name did not parse (see [`KeyPattern`](crate::KeyPattern)).
    #[error("unknown key pattern {0:?}: expected sequential or random")]
    UnknownKeyPattern(String),

    /// A value-kind name did not parse (see [`ValueKind`](crate::ValueKind)).
    #[error("unknown value kind {0:?}: expected repeating or random")]
    UnknownValueKind(String),

    /// The host name of the URL did not resolve.
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        /// `host:port` that was looked up.
        host: String,
        /// The resolver error.
        #[source]
        source: std::io::Error,
    },

    /// No connection could be opened to the server before the run started.
    #[error("cannot connect to {addr}: {source} (is the server running at this address?)")]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },

    /// Connecting took longer than the per-request timeout.
    #[error("connecting to {addr} timed out after {timeout_ms} ms (is the server running and reachable?)")]
    ConnectTimeout {
        /// The address tried.
        addr: SocketAddr,
        /// The timeout that elapsed.
        timeout_ms: u64,
    },

    /// Failed requests exceeded the abort threshold (1 % of the phase, at least 10).
    #[error("aborted {phase} phase: {errors} failed requests out of {attempted} attempted; last error: {last_error}")]
    TooManyErrors {
        /// `prefill`, `warmup` or `bench`.
        phase: &'static str,
        /// Failed requests so far.
        errors: u64,
        /// Requests attempted so far.
        attempted: u64,
        /// Description of the most recent failure.
        last_error: String,
    },

    /// Every request of a phase failed.
    #[error(
        "every request of the {phase} phase failed ({errors} errors); last error: {last_error}"
    )]
    AllRequestsFailed {
        /// `prefill`, `warmup` or `bench`.
        phase: &'static str,
        /// Failed requests.
        errors: u64,
        /// Description of the most recent failure.
        last_error: String,
    },

    /// A worker task panicked or was cancelled (a bug in the client).
    #[error("benchmark worker failed: {0}")]
    Worker(String),
}
