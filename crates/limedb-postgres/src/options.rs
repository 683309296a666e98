//! [`PgOptions`]: where the PostgreSQL server is, which database a shard uses, and how long the
//! engine waits for it before failing a request.

use std::time::Duration;

use limedb_storage::StorageError;

/// The database name a shard uses unless told otherwise; `{id}` is replaced by the shard id.
pub const DEFAULT_DATABASE_TEMPLATE: &str = "limedb_shard_{id}";

/// Default number of pooled connections per shard.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Default bound on connecting, waiting for a pooled connection, and each statement.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Settings of a [`crate::PgEngine`].
#[derive(Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// A libpq-style URL, `postgres://user[:password]@host[:port][/maintenance_db][?opts]`. Its
    /// database (default `postgres`) is only used to create the shard's own database.
    pub url: String,
    /// The shard's own database, created if absent (see [`database_name`]).
    pub database: String,
    /// Most connections open at once.
    pub pool_size: usize,
    /// Bound on connecting, on waiting for a pooled connection, and on each statement (also
    /// set as the server's `statement_timeout`): past it a request fails as unavailable.
    pub timeout: Duration,
    /// Period of the health probe (`SELECT 1`).
    pub health_interval: Duration,
    /// Period of the background deletion of expired rows.
    pub reclaim_interval: Duration,
}

impl std::fmt::Debug for PgOptions {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("database", &self.database)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("health_interval", &self.health_interval)
            .field("reclaim_interval", &self.reclaim_interval)
            .finish()
    }
}

impl PgOptions {
    /// Options with the defaults for everything but the URL and database.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            database: database.into(),
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
            health_interval: Duration::from_millis(500),
            reclaim_interval: Duration::from_secs(1),
        }
    }
}

/// The database name for shard `shard_id` from a template such as
/// [`DEFAULT_DATABASE_TEMPLATE`]: `{id}` is replaced by the id. The result must be 1 to 63
/// ASCII letters, digits, `_` or `-` (PostgreSQL's identifier length), so it can be quoted
/// safely and means the same on every server.
///
/// ```
/// use limedb_postgres::{database_name, DEFAULT_DATABASE_TEMPLATE};
/// assert_eq!(database_name(DEFAULT_DATABASE_TEMPLATE, 2).unwrap(), "limedb_shard_2");
/// assert!(database_name("bad name", 1).is_err());
/// ```
pub fn database_name(template: &str, shard_id: u32) -> Result<String, StorageError> {
    let name = template.replace("{id}", &shard_id.to_string());
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(name)
    } else {
        Err(StorageError::Config(format!(
            "PostgreSQL database name {name:?} (from {template:?}) must be 1 to 63 ASCII letters, digits, '_' or '-'"
        )))
    }
}

/// `url` with any password replaced by `***`, for logs and messages.
///
/// ```
/// use limedb_postgres::options::redact_url;
/// assert_eq!(redact_url("postgres://u:secret@h:5432/"), "postgres://u:***@h:5432/");
/// assert_eq!(redact_url("postgres://u@h/"), "postgres://u@h/");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
