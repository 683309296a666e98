//! Resolved configuration of each kind of node, as plain data.
//!
//! The binary merges flags, `LIMEDB_*` environment variables, the TOML file and defaults into
//! these structs; the server crate never parses command lines itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use limedb_cluster::ShardId;
use limedb_storage::lsm::sstable::ReadMode;
use limedb_storage::{LsmOptions, SyncPolicy};

use crate::error::ApiError;

/// Default largest key: 64 KiB.
pub const DEFAULT_MAX_KEY_BYTES: usize = 64 * 1024;
/// Default largest value: 64 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;
/// Hard cap on `max_key_bytes` (the storage format allows no more).
pub const MAX_KEY_BYTES_CAP: usize = 16 << 20;
/// Hard cap on `max_value_bytes`.
pub const MAX_VALUE_BYTES_CAP: usize = 1 << 30;
/// Largest internal-protocol frame either side accepts: a maximal key and value under the hard
/// caps, plus framing. It does not follow the configured limits, because a coordinator and its
/// shards may be configured differently: a frame within this cap but over a node's own limits
/// is answered with a clean `KeyTooLarge`/`ValueTooLarge` error instead of breaking the
/// connection (and with it every request in flight on it).
pub const MAX_INTERNAL_FRAME_BYTES: usize = MAX_KEY_BYTES_CAP + MAX_VALUE_BYTES_CAP + 64 * 1024;
const _: () = assert!(
    MAX_INTERNAL_FRAME_BYTES < u32::MAX as usize,
    "frame lengths are u32"
);
/// Default cap on concurrently open client connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time the coordinator waits for a shard before answering 503.
pub const DEFAULT_SHARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Default period of the coordinator's shard health checks.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Default number of internal-protocol connections from the coordinator to each shard.
pub const DEFAULT_CONNECTIONS_PER_SHARD: usize = 2;
/// The seed prototype's three shards, used when the coordinator is given no `--shards`.
pub const SEED_SHARD_URLS: [&str; 3] = [
    "http://127.0.0.1:7001",
    "http://127.0.0.1:7002",
    "http://127.0.0.1:7003",
];

/// Size limits applied to every request, on every API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted key, in bytes.
    pub max_key_bytes: usize,
    /// Largest accepted value, in bytes.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl Limits {
    /// Largest HTTP body accepted: a JSON `set` of a maximal key and value, plus 64 KiB of room
    /// for the JSON around them and escapes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_key_bytes
            .saturating_add(self.max_value_bytes)
            .saturating_add(64 * 1024)
    }

    /// Rejects an empty key (400) or one over the limit (413).
    pub fn check_key(&self, key: &[u8]) -> Result<(), ApiError> {
        if key.is_empty() {
            return Err(ApiError::BadRequest("the key must not be empty".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(ApiError::KeyTooLarge {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Rejects a value over the limit (413).
    pub fn check_value(&self, len: usize) -> Result<(), ApiError> {
        if len > self.max_value_bytes {
            return Err(ApiError::ValueTooLarge {
                what: "value",
                len: len as u64,
                max: self.max_value_bytes as u64,
            });
        }
        Ok(())
    }

    /// Rejects a zero time to live (400): "expire now" is a delete.
    pub fn check_ttl(&self, ttl_ms: Option<u64>) -> Result<(), ApiError> {
        if ttl_ms == Some(0) {
            return Err(ApiError::BadRequest(
                "ttl_ms must be a positive number of milliseconds".into(),
            ));
        }
        Ok(())
    }
}

/// Which storage backend a shard uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageKind {
    /// An ordered in-memory map made durable by an append-only log.
    Memory,
    /// LimeDB's LSM-tree engine: write-ahead log, memtables, SSTables, leveled compaction.
    Lsm,
    /// A PostgreSQL database per shard (see [`PgSettings`]).
    Postgres,
}

impl std::str::FromStr for StorageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(StorageKind::Memory),
            "lsm" => Ok(StorageKind::Lsm),
            "postgres" | "postgresql" => Ok(StorageKind::Postgres),
            other => Err(format!(
                "unknown storage backend {other:?}: the available backends are \"memory\", \"lsm\" and \"postgres\""
            )),
        }
    }
}

impl std::fmt::Display for StorageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageKind::Memory => f.write_str("memory"),
            StorageKind::Lsm => f.write_str("lsm"),
            StorageKind::Postgres => f.write_str("postgres"),
        }
    }
}

/// Tuning of the LSM backend (`--storage lsm`); the other backends ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsmTuning {
    /// Bytes a memtable holds before it is frozen and flushed (up to two are in memory: the
    /// active one and one waiting for the flush thread; a third, the last one flushed, may be
    /// kept for point reads, charged to the block cache).
    pub memtable_bytes: u64,
    /// Budget of the block cache of decompressed data blocks, which also lends a memtable
    /// kept for point reads its bytes.
    pub block_cache_bytes: usize,
    /// How tables are read: through a memory map or with `pread(2)`.
    pub read_mode: ReadMode,
}

impl Default for LsmTuning {
    fn default() -> Self {
        let engine = LsmOptions::default();
        LsmTuning {
            memtable_bytes: engine.memtable_bytes,
            block_cache_bytes: engine.block_cache_bytes,
            read_mode: engine.read_mode,
        }
    }
}

impl LsmTuning {
    /// Engine options with this tuning and sync policy `sync`.
    pub fn options(&self, sync: SyncPolicy) -> LsmOptions {
        LsmOptions {
            sync,
            memtable_bytes: self.memtable_bytes,
            block_cache_bytes: self.block_cache_bytes,
            read_mode: self.read_mode,
            ..LsmOptions::default()
        }
    }
}

/// How shards reach PostgreSQL (`--storage postgres`).
#[derive(Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgres://user[:password]@host[:port][/maintenance_db]`.
    pub url: String,
    /// The shard's database name; `{id}` is replaced by the shard id.
    pub database_template: String,
    /// Pooled connections per shard.
    pub pool_size: usize,
    /// Bound on connecting, waiting for a connection and each statement.
    pub timeout: Duration,
}

impl std::fmt::Debug for PgSettings {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &limedb_postgres::options::redact_url(&self.url))
            .field("database_template", &self.database_template)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PgSettings {
    /// Settings with the default database template, pool size and timeout.
    pub fn new(url: impl Into<String>) -> PgSettings {
        PgSettings {
            url: url.into(),
            database_template: limedb_postgres::DEFAULT_DATABASE_TEMPLATE.to_string(),
            pool_size: limedb_postgres::options::DEFAULT_POOL_SIZE,
            timeout: limedb_postgres::options::DEFAULT_TIMEOUT,
        }
    }

    /// The engine options of shard `id`.
    pub fn options(
        &self,
        id: ShardId,
    ) -> Result<limedb_postgres::PgOptions, limedb_storage::StorageError> {
        let database = limedb_postgres::database_name(&self.database_template, id.0)?;
        let mut options = limedb_postgres::PgOptions::new(self.url.clone(), database);
        options.pool_size = self.pool_size;
        options.timeout = self.timeout;
        Ok(options)
    }
}

/// Everything a shard needs to start.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// The shard's id (the seed's `--shard.id`).
    pub id: ShardId,
    /// Address for the HTTP API.
    pub http_addr: SocketAddr,
    /// Address for the internal binary protocol (port 0 picks a free port).
    pub internal_addr: SocketAddr,
    /// Directory holding this shard's data.
    pub data_dir: PathBuf,
    /// Storage backend.
    pub storage: StorageKind,
    /// When writes reach the disk.
    pub wal_sync: SyncPolicy,
    /// Memory budgets and read mode of the LSM backend.
    pub lsm: LsmTuning,
    /// Where PostgreSQL is; required by [`StorageKind::Postgres`], ignored otherwise.
    pub postgres: Option<PgSettings>,
    /// Key and value size limits.
    pub limits: Limits,
    /// Cap on open connections per listener.
    pub max_connections: usize,
    /// Address of the RESP (Redis protocol) listener; `None` runs none.
    pub resp_addr: Option<SocketAddr>,
    /// Close RESP connections idle this long (`None`: never).
    pub resp_idle_timeout: Option<Duration>,
    /// Replication: this shard as one replica of a Raft group (`--replica`, `--peers`); `None`
    /// is a shard on its own, as before replication existed.
    pub replication: Option<ReplicationConfig>,
    /// The users its client listeners (HTTP, RESP) ask for (`--requirepass`, `[[users]]`).
    pub users: std::sync::Arc<crate::auth::Users>,
}

impl ShardConfig {
    /// A replica of the cluster-map group (`limedb meta`, and `limedb dev`'s map group): a
    /// replicated shard with the reserved id 0, on the LSM engine with small memory budgets (it
    /// holds one key), fsync on every write, no RESP listener.
    pub fn map_group_replica(
        http_addr: SocketAddr,
        internal_addr: SocketAddr,
        data_dir: PathBuf,
        replication: ReplicationConfig,
        max_connections: usize,
    ) -> ShardConfig {
        ShardConfig {
            id: crate::shard::map_group::MAP_GROUP_ID,
            http_addr,
            internal_addr,
            data_dir,
            storage: StorageKind::Lsm,
            wal_sync: SyncPolicy::Always,
            lsm: LsmTuning {
                memtable_bytes: 4 << 20,
                block_cache_bytes: 8 << 20,
                ..LsmTuning::default()
            },
            postgres: None,
            limits: Limits::default(),
            max_connections,
            resp_addr: None,
            resp_idle_timeout: None,
            users: std::sync::Arc::new(crate::auth::Users::open()),
            replication: Some(ReplicationConfig {
                log_sync: SyncPolicy::Always,
                ..replication
            }),
        }
    }
}

/// A shard that is one replica of its shard's Raft group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// This replica's id in the group.
    pub replica_id: u64,
    /// Every replica of the group, this one included: id and HTTP base URL.
    pub peers: BTreeMap<u64, String>,
    /// When Raft log appends reach the disk (`--wal-sync` of a replicated shard; default
    /// `always`).
    pub log_sync: SyncPolicy,
    /// Heartbeat and election timing.
    pub timing: limedb_raft::RaftTiming,
    /// A snapshot is taken every this many log entries, and the log purged up to it.
    pub snapshot_logs: u64,
    /// Entries kept below the last snapshot for followers slightly behind.
    pub keep_logs: u64,
}

/// Default of [`ReplicationConfig::snapshot_logs`].
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 10_000;
/// Default of [`ReplicationConfig::keep_logs`].
pub const DEFAULT_KEEP_LOGS: u64 = 1_000;

/// Parses `--peers`: `ID=URL` entries (a URL without a scheme gets `http://`). Ids are
/// positive and unique; so are URLs.
pub fn parse_peers(entries: &[String]) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for raw in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (id, url) = raw.split_once('=').ok_or_else(|| {
            format!("peer {raw:?} must be written ID=URL, e.g. 2=http://10.0.0.2:7001")
        })?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {raw:?}: {id:?} is not a replica id"))?;
        if id == 0 {
            return Err(format!("peer {raw:?}: replica ids start at 1"));
        }
        let url = normalize_url(url.trim()).map_err(|e| format!("peer {raw:?}: {e}"))?;
        if peers.values().any(|u| *u == url) {
            return Err(format!("{url} appears twice in --peers"));
        }
        if peers.insert(id, url).is_some() {
            return Err(format!("replica id {id} appears twice in --peers"));
        }
    }
    if peers.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(peers)
}

/// One shard as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// The id the shard must report about itself.
    pub id: ShardId,
    /// Base URL of the shard's HTTP API, e.g. `http://127.0.0.1:7001`.
    pub url: String,
}

/// Everything a coordinator needs to start.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Address for the HTTP API.
    pub http_addr: SocketAddr,
    /// The shards to route to.
    pub shards: Vec<ShardSpec>,
    /// Virtual nodes per shard on the hash ring.
    pub vnodes_per_shard: u32,
    /// How long to wait for a shard before answering 503.
    pub shard_timeout: Duration,
    /// Period of shard health checks.
    pub health_interval: Duration,
    /// Internal-protocol connections kept open to each shard.
    pub connections_per_shard: usize,
    /// Key and value size limits.
    pub limits: Limits,
    /// Cap on open client connections.
    pub max_connections: usize,
    /// Address of the RESP (Redis protocol) listener; `None` runs none.
    pub resp_addr: Option<SocketAddr>,
    /// Close RESP connections idle this long (`None`: never).
    pub resp_idle_timeout: Option<Duration>,
    /// URLs of members of the cluster-map group (`--meta`); empty routes by `shards` alone, as
    /// before the map existed. With members, `shards` creates the map on an empty cluster and
    /// must agree with it otherwise; empty `shards` routes by the stored map.
    pub meta: Vec<String>,
    /// The users its client listeners (HTTP, RESP) ask for (`--requirepass`, `[[users]]`).
    pub users: std::sync::Arc<crate::auth::Users>,
}

/// Parses a `--shards` entry: `URL` (its 1-based position in the list is its id) or `ID=URL`.
/// A URL without a scheme gets `http://`; a trailing `/` is dropped.
pub fn parse_shard_list(entries: &[String]) -> Result<Vec<ShardSpec>, String> {
    let mut specs = Vec::with_capacity(entries.len());
    for (position, raw) in entries.iter().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let (id, url) = match raw.split_once('=') {
            Some((id, url)) => {
                let id: u32 = id
                    .trim()
                    .parse()
                    .map_err(|_| format!("shard entry {raw:?}: {id:?} is not a shard id"))?;
                (id, url.trim())
            }
            None => (position as u32 + 1, raw),
        };
        if id == 0 {
            return Err(format!("shard entry {raw:?}: shard ids start at 1"));
        }
        let url = normalize_url(url).map_err(|e| format!("shard entry {raw:?}: {e}"))?;
        if specs.iter().any(|s: &ShardSpec| s.id.0 == id) {
            return Err(format!("shard id {id} appears twice in the shard list"));
        }
        specs.push(ShardSpec {
            id: ShardId(id),
            url,
        });
    }
    if specs.is_empty() {
        return Err("the shard list is empty".into());
    }
    Ok(specs)
}

fn normalize_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let rest = with_scheme
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// shard URLs are supported"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!("{url:?} is not a base URL like http://host:port"));
    }
    Ok(with_scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn positions_are_ids_and_explicit_ids_win() {
        let specs = parse_shard_list(&list(&["127.0.0.1:7001/", "http://h:2", "7=http://h:3"]))
            .expect("valid list");
        assert_eq!(
            specs,
            vec![
                ShardSpec {
                    id: ShardId(1),
                    url: "http://127.0.0.1:7001".into()
                },
                ShardSpec {
                    id: ShardId(2),
                    url: "http://h:2".into()
                },
                ShardSpec {
                    id: ShardId(7),
                    url: "http://h:3".into()
                },
            ]
        );
    }

    #[test]
    fn bad_lists_are_rejected_with_reasons() {
        assert!(parse_shard_list(&list(&[])).is_err());
        assert!(parse_shard_list(&list(&["1=http://a:1", "1=http://b:1"]))
            .expect_err("duplicate")
            .contains("twice"));
        assert!(parse_shard_list(&list(&["https://a:1"])).is_err());
        assert!(parse_shard_list(&list(&["x=http://a:1"])).is_err());
        assert!(parse_shard_list(&list(&["0=http://a:1"])).is_err());
        assert!(parse_shard_list(&list(&["http://a:1/api"])).is_err());
    }

    #[test]
    fn peers_parse_with_clear_errors() {
        let peers = parse_peers(&list(&["1=127.0.0.1:7001", "3=http://h:7003/"])).expect("valid");
        assert_eq!(
            peers.get(&1).map(String::as_str),
            Some("http://127.0.0.1:7001")
        );
        assert_eq!(peers.get(&3).map(String::as_str), Some("http://h:7003"));
        for (bad, why) in [
            (vec!["http://a:1"], "ID=URL"),
            (vec!["0=http://a:1"], "start at 1"),
            (vec!["x=http://a:1"], "not a replica id"),
            (vec!["1=http://a:1", "1=http://b:1"], "twice"),
            (vec!["1=http://a:1", "2=http://a:1"], "twice"),
            (vec![], "empty"),
        ] {
            let err = parse_peers(&list(&bad)).expect_err("invalid");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn limits_leave_room_for_framing() {
        let l = Limits::default();
        assert!(l.max_body_bytes() > l.max_key_bytes + l.max_value_bytes);
    }
}
