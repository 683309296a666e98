//! Every SQL statement [`crate::PgEngine`] runs, and the creation of a shard's database and
//! table.
//!
//! Statements that take data are prepared once per pooled connection (deadpool's statement
//! cache) and run with binary parameters. "Live" means `expires_at_ms IS NULL OR
//! expires_at_ms > $now`, with `$now` the shard's clock ([`limedb_storage::now_ms`]) so that
//! expiry means the same on every backend; expired rows read as absent until the maintenance
//! task deletes them.

use std::time::Duration;

use limedb_storage::StorageError;
use tokio_postgres::{Config, NoTls};

use crate::errors::{from_pg, sqlstate, timed_out};
use crate::BACKEND;

/// The table of every shard database.
pub const TABLE: &str = "limedb_kv";

/// Creates the table and the partial index the expiry sweep uses.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS limedb_kv (
    key bytea PRIMARY KEY,
    value bytea NOT NULL,
    expires_at_ms bigint NULL
);
CREATE INDEX IF NOT EXISTS limedb_kv_expires_at_ms ON limedb_kv (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;";

/// `$1` key, `$2` now: the live value.
pub const GET: &str = "SELECT value, expires_at_ms FROM limedb_kv
    WHERE key = $1 AND (expires_at_ms IS NULL OR expires_at_ms > $2)";

/// `$1` key, `$2` value, `$3` expiry: an upsert.
pub const PUT: &str = "INSERT INTO limedb_kv (key, value, expires_at_ms) VALUES ($1, $2, $3)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at_ms = EXCLUDED.expires_at_ms";

/// `$1` key, `$2` now: deletes the row and says whether it was live (an expired row is deleted
/// too, and reported as absent).
pub const DELETE: &str = "DELETE FROM limedb_kv WHERE key = $1
    RETURNING (expires_at_ms IS NULL OR expires_at_ms > $2)";

/// `$1` now, `$2` offset, `$3` limit: a page of live entries in key order.
pub const PAGE: &str = "SELECT key, value, expires_at_ms FROM limedb_kv
    WHERE expires_at_ms IS NULL OR expires_at_ms > $1
    ORDER BY key OFFSET $2 LIMIT $3";

/// `$1` start key, `$2` now, `$3` limit: live entries from a key on, in key order.
pub const SCAN: &str = "SELECT key, value, expires_at_ms FROM limedb_kv
    WHERE key >= $1 AND (expires_at_ms IS NULL OR expires_at_ms > $2)
    ORDER BY key LIMIT $3";

/// `$1` now: the number of live keys.
pub const COUNT: &str =
    "SELECT count(*) FROM limedb_kv WHERE expires_at_ms IS NULL OR expires_at_ms > $1";

/// `$1` now: live keys and their key plus value bytes, for stats.
pub const FIGURES: &str =
    "SELECT count(*), coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint
    FROM limedb_kv WHERE expires_at_ms IS NULL OR expires_at_ms > $1";

/// `$1` now, `$2` most rows: deletes a bounded batch of expired rows. The outer condition is
/// checked again on each row as it is locked, so a key rewritten meanwhile without expiry
/// survives.
pub const RECLAIM: &str = "DELETE FROM limedb_kv WHERE key IN (
        SELECT key FROM limedb_kv WHERE expires_at_ms <= $1 LIMIT $2
    ) AND expires_at_ms <= $1";

/// Where `config` points, for messages: `user@host:port/database`, never the password.
pub fn describe(config: &Config, database: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(path) => {
                    format!("{}:{port}", path.display())
                }
            }
        })
        .collect();
    let user = config.get_user().unwrap_or("(default user)");
    format!("{user}@{}/{database}", hosts.join(","))
}

/// Connects once (outside the pool), within `timeout`, spawning the connection's task.
async fn connect_once(
    config: &Config,
    timeout: Duration,
    what: &str,
) -> Result<tokio_postgres::Client, StorageError> {
    let connecting = tokio::time::timeout(timeout, config.connect(NoTls));
    let (client, connection) = match connecting.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(from_pg(&format!("cannot connect to {what}"), &e)),
        Err(_) => return Err(timed_out(&format!("cannot connect to {what}"), timeout)),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL setup connection ended");
        }
    });
    Ok(client)
}

/// Creates `database` unless it exists, through the URL's own database (`postgres` if it names
/// none). Two shards creating theirs at once, or a database created between our check and our
/// `CREATE DATABASE`, are both fine.
pub async fn ensure_database(
    base: &Config,
    database: &str,
    timeout: Duration,
) -> Result<(), StorageError> {
    let mut maintenance = base.clone();
    let maintenance_db = base.get_dbname().unwrap_or("postgres").to_string();
    maintenance.dbname(&maintenance_db);
    let what = describe(&maintenance, &maintenance_db);
    let client = connect_once(&maintenance, timeout, &what).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(|e| from_pg(&format!("cannot list the databases of {what}"), &e))?
        .is_some();
    if exists {
        return Ok(());
    }
    // The name was validated by `options::database_name`: letters, digits, '_' and '-' only.
    let create = format!("CREATE DATABASE \"{database}\"");
    match client.batch_execute(&create).await {
        Ok(()) => {
            tracing::info!(database, server = %what, "created the PostgreSQL database");
            Ok(())
        }
        // duplicate_database, or the unique index of pg_database in a close race.
        Err(e) if matches!(sqlstate(&e), Some("42P04" | "23505")) => Ok(()),
        Err(e) if sqlstate(&e) == Some("42501") => Err(StorageError::Backend {
            backend: BACKEND,
            reason: format!(
                "database {database:?} does not exist and {what} does not allow creating it: create it yourself (CREATE DATABASE \"{database}\") or grant the role CREATEDB"
            ),
        }),
        Err(e) => Err(from_pg(
            &format!("cannot create database {database:?} on {what}"),
            &e,
        )),
    }
}

/// Creates the table and index in the shard's database unless they exist.
pub async fn ensure_table(client: &tokio_postgres::Client, what: &str) -> Result<(), StorageError> {
    let mut attempts = 0;
    loop {
        match client.batch_execute(CREATE_TABLE).await {
            Ok(()) => return Ok(()),
            // Two processes creating the same table at once: `IF NOT EXISTS` does not cover a
            // creation in flight, so the loser sees the catalog's unique violation (23505), a
            // duplicate row type (42710) or relation (42P07). It exists now: try again.
            Err(e) if attempts < 3 && matches!(sqlstate(&e), Some("23505" | "42710" | "42P07")) => {
                attempts += 1;
            }
            Err(e) => {
                return Err(from_pg(
                    &format!("cannot create table {TABLE} in {what}"),
                    &e,
                ))
            }
        }
    }
}
