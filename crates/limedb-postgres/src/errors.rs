//! How errors from tokio-postgres and the connection pool become [`StorageError`]s.
//!
//! The line that matters is availability: a shard answers 503 for
//! [`StorageError::Unavailable`] (retry later, nothing was acknowledged) and 500 for
//! [`StorageError::Backend`]. Unavailable covers every error without a server answer (connection
//! refused or reset, a closed connection, a timeout) and these SQLSTATE classes: `08`
//! connection exception, `28` invalid authorization, `3D` invalid catalog name (the database is
//! gone), `53` insufficient resources, `57` operator intervention (shutdown, "the database
//! system is starting up"), `58` system error.

use deadpool_postgres::PoolError;
use limedb_storage::StorageError;

use crate::BACKEND;

/// SQLSTATE classes that mean "the server cannot serve us now".
const UNAVAILABLE_CLASSES: [&str; 6] = ["08", "28", "3D", "53", "57", "58"];

/// Classifies a tokio-postgres error; `context` says what was being done and where.
pub fn from_pg(context: &str, e: &tokio_postgres::Error) -> StorageError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let reason = format!("{context}: {} (SQLSTATE {code})", db.message());
            if UNAVAILABLE_CLASSES.iter().any(|c| code.starts_with(c)) {
                StorageError::Unavailable {
                    backend: BACKEND,
                    reason,
                }
            } else {
                StorageError::Backend {
                    backend: BACKEND,
                    reason,
                }
            }
        }
        None => StorageError::Unavailable {
            backend: BACKEND,
            reason: format!("{context}: {}", with_causes(e)),
        },
    }
}

/// `e` followed by each of its sources: tokio-postgres keeps the useful part ("Connection
/// refused") in the source of a generic "error connecting to server".
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// `.during(what)` on a tokio-postgres result: the error classified by [`from_pg`], with
/// `what()` (built only on failure) saying what was being done and where.
pub trait During<T> {
    /// See the [trait docs](During).
    fn during(self, what: impl FnOnce() -> String) -> Result<T, StorageError>;
}

impl<T> During<T> for Result<T, tokio_postgres::Error> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T, StorageError> {
        self.map_err(|e| from_pg(&what(), &e))
    }
}

/// Classifies a failure to get a pooled connection.
pub fn from_pool(context: &str, e: &PoolError) -> StorageError {
    match e {
        PoolError::Backend(e) => from_pg(context, e),
        PoolError::Closed => StorageError::Closed,
        PoolError::Timeout(kind) => StorageError::Unavailable {
            backend: BACKEND,
            reason: format!("{context}: no connection within the timeout ({kind:?})"),
        },
        other => StorageError::Unavailable {
            backend: BACKEND,
            reason: format!("{context}: {other}"),
        },
    }
}

/// The error for an operation that got no answer within `timeout`.
pub fn timed_out(context: &str, timeout: std::time::Duration) -> StorageError {
    StorageError::Unavailable {
        backend: BACKEND,
        reason: format!("{context}: no answer within {} ms", timeout.as_millis()),
    }
}

/// The SQLSTATE of `e`, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}
