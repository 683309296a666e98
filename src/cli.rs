//! Command-line interface of the `limedb` binary: subcommands, flags, and how flags, `LIMEDB_*`
//! environment variables, the TOML file and defaults combine (in that order of precedence).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

/// LimeDB: a distributed key-value database.
///
/// A coordinator routes every key by consistent hashing to the shard that owns it; shards keep
/// the data. Start a whole local cluster with `limedb dev`.
#[derive(Debug, Parser)]
#[command(
    name = "limedb",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// TOML configuration file. Flags and LIMEDB_* variables override its values.
    #[arg(long, global = true, env = "LIMEDB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace, or a tracing filter such as
    /// "limedb_server=debug". Without it RUST_LOG is used, then "info". Logs go to stderr.
    #[arg(long, global = true, env = "LIMEDB_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Threads that run requests (the async runtime's workers). When several LimeDB processes
    /// share a machine, fewer threads each (even 1) waste less time switching between them.
    /// [default: the number of CPUs]
    #[arg(long, global = true, env = "LIMEDB_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one shard: a storage engine served over HTTP and the internal binary protocol.
    Shard(ShardArgs),
    /// Run a coordinator: the HTTP API that routes every key to the shard that owns it.
    Coordinator(CoordinatorArgs),
    /// Run one replica of the cluster-map group: the small Raft group that keeps the cluster
    /// map (every shard group, its replicas, the ring and its epoch) for the coordinators
    /// started with --meta. Run three (or five) with the same --peers; the map survives the
    /// loss of any minority of them.
    Meta(MetaArgs),
    /// Run a whole local cluster in one process: a coordinator, 3 shards of 3 replicas each and
    /// the cluster-map group by default.
    Dev(DevArgs),
    /// Load generator: concurrent HTTP clients with latency percentiles.
    Bench(BenchArgs),
    /// Administration of a running cluster: the replicas of each shard's group, and adding and
    /// removing shards.
    Admin(AdminArgs),
    /// Read a password from standard input (one line) and print its salted argon2 hash, for
    /// the `password_hash` of a `[[users]]` table in the configuration file.
    HashPassword,
}

/// Options of `limedb admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The node to ask: a coordinator, or any replica of the shard in question.
    #[arg(
        long,
        global = true,
        env = "LIMEDB_COORDINATOR",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub coordinator: String,

    /// Print the answer as JSON (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// The user to authenticate as, when the node asks for credentials (an admin user).
    /// [default: default]
    #[arg(long, global = true, env = "LIMEDB_USER", value_name = "USER")]
    pub user: Option<String>,

    /// The password of --user (of the default user: --requirepass), when the node asks for
    /// credentials. Prefer the environment variable: a flag shows in the process list.
    #[arg(
        long,
        global = true,
        env = "LIMEDB_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The `limedb admin` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Every shard: its leader, term, and each replica's role, state and lag; and the move in
    /// progress, if any (phase of each transfer, keys and bytes copied, rate).
    Status,
    /// The replicas of one shard's group.
    Replicas {
        /// The shard.
        #[arg(long, value_name = "ID")]
        shard: u32,
    },
    /// Add a replica to a shard's group: start it first (`limedb shard --id S --replica N
    /// --peers ...` listing the group and itself, with an empty data directory); it joins as a
    /// learner, catches up from the log or a snapshot, then becomes a voter. Waits for that.
    AddReplica {
        /// The shard.
        #[arg(long, value_name = "ID")]
        shard: u32,
        /// The new replica's id (not used in the group yet).
        #[arg(long, value_name = "N")]
        replica: u64,
        /// The new replica's HTTP URL.
        #[arg(long, value_name = "URL")]
        url: String,
    },
    /// Remove a replica from a shard's group (it may be dead). The group keeps serving as long
    /// as a majority of the remaining replicas is up.
    RemoveReplica {
        /// The shard.
        #[arg(long, value_name = "ID")]
        shard: u32,
        /// The replica to remove.
        #[arg(long, value_name = "N")]
        replica: u64,
    },
    /// Add a shard online (clusters whose coordinators run with --meta): start the new group
    /// first (`limedb shard --id N --replica R --peers ...`, a group of one is `--peers
    /// 1=its-own-URL`); its share of the keys then moves to it while the cluster serves. Waits
    /// for the move unless --no-wait; `limedb admin status` shows its progress.
    AddShard {
        /// The new shard's id (unused in the cluster).
        #[arg(long, value_name = "N")]
        id: u32,
        /// Every replica of the new group, ID=URL,... (as its --peers).
        #[arg(long, value_name = "ID=URL,...", value_delimiter = ',')]
        peers: Vec<String>,
        /// Return once the move is started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove a shard online: its keys move to the other shards, then it leaves the cluster map
    /// (stop its processes afterwards). Waits for the move unless --no-wait.
    RemoveShard {
        /// The shard to remove.
        #[arg(value_name = "ID")]
        id: u32,
        /// Return once the move is started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Cancel the move in progress (or move ID), if it has handed no range over yet (a
    /// shard being added died for good, say): the sources keep their ranges and serve any they
    /// had fenced for a cut-over again, a shard being added leaves the map, and partial copies
    /// are dropped. A move that handed ranges over can only be finished. Waits for the
    /// cancellation unless --no-wait.
    CancelMove {
        /// The move (default: the one in progress).
        #[arg(value_name = "ID")]
        id: Option<u64>,
        /// Return once the cancellation is asked.
        #[arg(long)]
        no_wait: bool,
    },
    /// Replace a replica (typically a dead one) by a new one: add the new one (as add-replica
    /// does), then remove the old one.
    ReplaceReplica {
        /// The shard.
        #[arg(long, value_name = "ID")]
        shard: u32,
        /// The replica to replace.
        #[arg(long, value_name = "N")]
        old: u64,
        /// The new replica's id.
        #[arg(long, value_name = "N")]
        replica: u64,
        /// The new replica's HTTP URL.
        #[arg(long, value_name = "URL")]
        url: String,
    },
}

/// Options of `limedb shard` (also the `[shard]` table of the TOML file).
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ShardArgs {
    /// Shard id, a positive integer; the coordinator's shard list must give it the same id.
    /// [default: 1]
    #[arg(
        long,
        visible_alias = "shard-id",
        env = "LIMEDB_SHARD_ID",
        value_name = "N"
    )]
    pub id: Option<u32>,

    /// Interface to listen on (both listeners). [default: 127.0.0.1]
    #[arg(long, env = "LIMEDB_HOST", value_name = "IP")]
    pub host: Option<String>,

    /// HTTP port; 0 picks a free port. [default: 7000 + id]
    #[arg(long, env = "LIMEDB_PORT", value_name = "PORT")]
    pub port: Option<u16>,

    /// Port of the internal binary protocol (coordinator traffic); 0 picks a free port. The
    /// coordinator learns it from the shard's /api/v1/health. [default: HTTP port + 10000]
    #[arg(long, env = "LIMEDB_INTERNAL_PORT", value_name = "PORT")]
    pub internal_port: Option<u16>,

    /// Data directory. [default: ./limedb-data/shard-ID]
    #[arg(long, env = "LIMEDB_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Storage backend: "lsm" (LimeDB's LSM-tree engine: write-ahead log, memtables,
    /// SSTables, leveled compaction; data larger than memory), "memory" (an in-memory ordered
    /// map made durable by an append-only log; every key and value stays in memory) or
    /// "postgres" (a PostgreSQL database per shard; needs --pg-url). lsm and memory keep
    /// different files: a data directory belongs to the backend that created it; postgres
    /// keeps nothing in it. [default: lsm]
    #[arg(long, env = "LIMEDB_STORAGE", value_name = "BACKEND")]
    pub storage: Option<String>,

    /// LSM: size of a memtable in MiB. Writes go to the active memtable; a full one is frozen
    /// and flushed to disk in the background, and writes stall while a frozen one still waits
    /// for its flush, so memtables hold at most 2× this (plus, after point reads, the last
    /// one flushed, kept until the next flush and charged to the block cache). [default: 64]
    #[arg(long, env = "LIMEDB_MEMTABLE_MB", value_name = "MIB")]
    pub memtable_mb: Option<u64>,

    /// LSM: budget of the block cache (decompressed data blocks) in MiB. When the memtable
    /// size is at most half of it and point reads were served since the previous flush, the
    /// memtable a flush has just written is kept for point reads until the next flush, its
    /// bytes lent from this budget. [default: 128]
    #[arg(long, env = "LIMEDB_BLOCK_CACHE_MB", value_name = "MIB")]
    pub block_cache_mb: Option<u64>,

    /// LSM: how table files are read: "mmap" (scans and compactions read through a memory
    /// map, whose resident pages share the block cache's budget) or "pread" (a read(2) per
    /// block not in the block cache). Point reads that miss the block cache copy their block
    /// with pread in both modes. [default: mmap]
    #[arg(long, env = "LIMEDB_TABLE_READS", value_name = "MODE")]
    pub table_reads: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub postgres: PgArgs,

    /// When acknowledged writes reach the disk: "always" (fsync before every acknowledgement,
    /// concurrent writers share one fsync), "interval" (fsync every --wal-sync-interval-ms) or
    /// "never" (leave it to the OS). Every acknowledged write survives a crash of the process
    /// under all three; the policy decides what survives a crash of the machine. With --peers
    /// it governs the Raft log, the one log a replicated write waits for: "always" (the default
    /// there) fsyncs an entry on a majority of replicas before the write is acknowledged, so it
    /// survives the power loss of any minority; with the others a replica acknowledges entries
    /// from the OS's cache, and a power loss of a majority inside the window can lose them.
    /// [default: interval; always with --peers]
    #[arg(long, env = "LIMEDB_WAL_SYNC", value_name = "POLICY")]
    pub wal_sync: Option<String>,

    /// Period of the "interval" sync policy, in milliseconds. [default: 1000]
    #[arg(long, env = "LIMEDB_WAL_SYNC_INTERVAL_MS", value_name = "MS")]
    pub wal_sync_interval_ms: Option<u64>,

    #[command(flatten)]
    #[serde(flatten)]
    pub replication: ReplicationArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub resp: RespArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub auth: AuthArgs,
}

/// Options of `limedb meta` (also the `[meta]` table of the TOML file).
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct MetaArgs {
    /// Interface to listen on (both listeners). [default: 127.0.0.1]
    #[arg(long, env = "LIMEDB_HOST", value_name = "IP")]
    pub host: Option<String>,

    /// HTTP port; 0 picks a free port. Coordinators reach the map group here (--meta).
    /// [default: 7900 + replica id]
    #[arg(long, env = "LIMEDB_PORT", value_name = "PORT")]
    pub port: Option<u16>,

    /// Port of the internal binary protocol (Raft traffic between the map group's replicas); 0
    /// picks a free port. [default: HTTP port + 10000]
    #[arg(long, env = "LIMEDB_INTERNAL_PORT", value_name = "PORT")]
    pub internal_port: Option<u16>,

    /// Data directory. [default: ./limedb-data/meta-replica-N]
    #[arg(long, env = "LIMEDB_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub replication: ReplicationArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub protection: ProtectionArgs,
}

/// Replication of a shard: this process as one replica of the shard's Raft group.
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationArgs {
    /// This replica's id within the shard's group (a positive integer, unique in the group).
    /// Needs --peers. [default: 1]
    #[arg(long, env = "LIMEDB_REPLICA", value_name = "N")]
    pub replica: Option<u64>,

    /// Every replica of the shard's Raft group, this one included, comma-separated as
    /// ID=URL (the replicas' HTTP URLs), e.g.
    /// 1=http://10.0.0.1:7001,2=http://10.0.0.2:7001,3=http://10.0.0.3:7001. Starting each
    /// replica with the same list forms the group (the first ones wait until a majority is up);
    /// a restarted replica rejoins by itself. Writes are acknowledged once a majority of the
    /// replicas has them on disk; reads and writes are served by the elected leader, and the
    /// others answer "not the leader" naming it. Without --peers the shard is a single copy, as
    /// before. Needs --storage lsm.
    #[arg(
        long,
        env = "LIMEDB_PEERS",
        value_name = "ID=URL,...",
        value_delimiter = ','
    )]
    pub peers: Option<Vec<String>>,

    /// Replicas: the leader's heartbeat period in milliseconds. [default: 50]
    #[arg(long, env = "LIMEDB_RAFT_HEARTBEAT_MS", value_name = "MS")]
    pub raft_heartbeat_ms: Option<u64>,

    /// Replicas: the election timeout E, in milliseconds. A follower that hears no leader for
    /// E stops defending it, and stands for election itself after E plus a slot of E/4 × k
    /// (k from 0 to 3, by replica id and term, so that two replicas rarely stand at once); it
    /// first checks that a majority would vote for it (pre-vote), so a replica whose log is
    /// behind never disrupts the others. With the default a new leader is elected about
    /// 0.4-0.75 s after the old one stops. Lower is faster failover, but a leader stalled that
    /// long (a loaded machine) loses its leadership. At least 3 × --raft-heartbeat-ms.
    /// [default: 400]
    #[arg(long, env = "LIMEDB_RAFT_ELECTION_MS", value_name = "MS")]
    pub raft_election_ms: Option<u64>,

    /// Replicas: a snapshot of the engine is taken every this many Raft log entries, and the
    /// log is purged up to it (each entry carries a batch of writes). [default: 10000]
    #[arg(long, env = "LIMEDB_RAFT_SNAPSHOT_ENTRIES", value_name = "N")]
    pub raft_snapshot_entries: Option<u64>,

    /// Replicas: log entries kept below the last snapshot when the log is purged, so that a
    /// follower a little behind catches up from the log instead of a whole snapshot.
    /// [default: 1000]
    #[arg(long, env = "LIMEDB_RAFT_KEEP_ENTRIES", value_name = "N")]
    pub raft_keep_entries: Option<u64>,
}

/// PostgreSQL settings of `--storage postgres` (shard and dev).
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct PgArgs {
    /// PostgreSQL server for --storage postgres, as postgres://USER:PASSWORD@HOST:PORT/DB
    /// (password, port and DB may be left out). The shard keeps its keys in its own database
    /// (see --pg-database), which it creates with its table if absent through DB (default
    /// "postgres"); the role needs CREATEDB unless the database exists. Durability is
    /// PostgreSQL's: keep synchronous_commit on. TLS is not supported.
    #[arg(long, env = "LIMEDB_PG_URL", value_name = "URL")]
    pub pg_url: Option<String>,

    /// Name of the shard's PostgreSQL database; "{id}" is replaced by the shard id.
    /// [default: limedb_shard_{id}]
    #[arg(long, env = "LIMEDB_PG_DATABASE", value_name = "NAME")]
    pub pg_database: Option<String>,

    /// PostgreSQL connections per shard. [default: 16]
    #[arg(long, env = "LIMEDB_PG_POOL_SIZE", value_name = "N")]
    pub pg_pool_size: Option<usize>,

    /// Bound on connecting to PostgreSQL, waiting for a pooled connection and each statement,
    /// in milliseconds; past it a request fails with 503 and the shard reports itself
    /// unhealthy until PostgreSQL answers again. [default: 1500]
    #[arg(long, env = "LIMEDB_PG_TIMEOUT_MS", value_name = "MS")]
    pub pg_timeout_ms: Option<u64>,
}

/// The RESP (Redis protocol) listener of a shard or coordinator.
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct RespArgs {
    /// Port of the RESP (Redis protocol) listener, for redis-cli and Redis clients; 0 picks a
    /// free port. [default: none; no RESP listener]
    #[arg(long, env = "LIMEDB_RESP_PORT", value_name = "PORT")]
    pub resp_port: Option<u16>,

    /// Close RESP connections that send nothing for this many milliseconds; 0 never closes
    /// them (Redis's `timeout 0`). [default: 0]
    #[arg(long, env = "LIMEDB_RESP_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub resp_idle_timeout_ms: Option<u64>,
}

/// Client authentication of a shard, coordinator or dev cluster (users with their own
/// passwords and permissions go in the configuration file's `[[users]]` tables).
#[derive(Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthArgs {
    /// Password of the `default` user, asked of every client of the HTTP and RESP listeners
    /// (`AUTH password`, redis-cli -a, `Authorization: Bearer <password>` or basic auth as
    /// `default`). Kept only as a salted hash in memory. Prefer the environment variable: a
    /// flag shows in the process list. [default: none; no password asked]
    #[arg(
        long,
        env = "LIMEDB_REQUIREPASS",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub requirepass: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub protection: ProtectionArgs,
}

/// Protected mode, of every node kind.
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ProtectionArgs {
    /// Listen on an address other than loopback although clients are asked for no
    /// credentials (protected mode refuses to start otherwise, as Redis's does). Only on a
    /// network you trust. [default: false]
    #[arg(
        long,
        env = "LIMEDB_INSECURE",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub insecure: Option<bool>,
}

/// Never prints the password.
impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("requirepass", &self.requirepass.as_ref().map(|_| "<set>"))
            .field("protection", &self.protection)
            .finish()
    }
}

/// Size and connection limits shared by every node kind.
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitArgs {
    /// Largest key in bytes; larger keys get 413. [default: 65536]
    #[arg(long, env = "LIMEDB_MAX_KEY_BYTES", value_name = "BYTES")]
    pub max_key_bytes: Option<usize>,

    /// Largest value in bytes; larger values get 413. [default: 67108864]
    #[arg(long, env = "LIMEDB_MAX_VALUE_BYTES", value_name = "BYTES")]
    pub max_value_bytes: Option<usize>,

    /// Most client connections open at once per listener; more wait to be accepted.
    /// [default: 10000]
    #[arg(long, env = "LIMEDB_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
}

/// Options of `limedb coordinator` (also the `[coordinator]` table of the TOML file).
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorArgs {
    /// Interface to listen on. [default: 127.0.0.1]
    #[arg(long, env = "LIMEDB_HOST", value_name = "IP")]
    pub host: Option<String>,

    /// HTTP port; 0 picks a free port. [default: 8080]
    #[arg(long, env = "LIMEDB_PORT", value_name = "PORT")]
    pub port: Option<u16>,

    /// Shards' HTTP base URLs, comma-separated. The n-th URL is shard id n unless written
    /// ID=URL. [default: http://127.0.0.1:7001,http://127.0.0.1:7002,http://127.0.0.1:7003]
    #[arg(
        long,
        env = "LIMEDB_SHARDS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub shards: Option<Vec<String>>,

    /// Virtual nodes per shard on the consistent-hash ring. With --meta it only matters when
    /// this coordinator creates the cluster map; afterwards the map's count is used. [default: 128]
    #[arg(long, env = "LIMEDB_VNODES", value_name = "N")]
    pub vnodes: Option<u32>,

    /// Members of the cluster-map group (`limedb meta` replicas' HTTP URLs, comma-separated;
    /// one is enough, the others are learned from it). The coordinator then routes by the
    /// cluster map: the first one started with --shards on an empty cluster creates the map;
    /// later ones may leave --shards out, and one whose --shards disagrees with the map refuses
    /// to start, naming the differences (instead of routing keys to shards that do not hold
    /// them). Any number of coordinators may serve at once. Without --meta the coordinator
    /// routes by --shards alone, as before.
    #[arg(long, env = "LIMEDB_META", value_name = "URLS", value_delimiter = ',')]
    pub meta: Option<Vec<String>>,

    /// How long to wait for a shard before answering 503, in milliseconds. [default: 2000]
    #[arg(long, env = "LIMEDB_SHARD_TIMEOUT_MS", value_name = "MS")]
    pub shard_timeout_ms: Option<u64>,

    /// Period of shard health checks, in milliseconds. [default: 1000]
    #[arg(long, env = "LIMEDB_HEALTH_INTERVAL_MS", value_name = "MS")]
    pub health_interval_ms: Option<u64>,

    /// Internal-protocol connections to each shard (each carries many requests at once).
    /// [default: 2]
    #[arg(long, env = "LIMEDB_CONNECTIONS_PER_SHARD", value_name = "N")]
    pub connections_per_shard: Option<usize>,

    #[command(flatten)]
    #[serde(flatten)]
    pub resp: RespArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub auth: AuthArgs,
}

/// Options of `limedb dev` (also the `[dev]` table of the TOML file).
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct DevArgs {
    /// Interface to listen on. [default: 127.0.0.1]
    #[arg(long, env = "LIMEDB_HOST", value_name = "IP")]
    pub host: Option<String>,

    /// Coordinator HTTP port. [default: 8080]
    #[arg(long, env = "LIMEDB_COORDINATOR_PORT", value_name = "PORT")]
    pub coordinator_port: Option<u16>,

    /// Shard HTTP ports, comma-separated; one shard per port, ids 1, 2, ... in order.
    /// Each shard's internal port is its HTTP port + 10000; a port of 0 picks free HTTP and
    /// internal ports. [default: 7001,7002,7003]
    #[arg(
        long,
        env = "LIMEDB_SHARD_PORTS",
        value_name = "PORTS",
        value_delimiter = ','
    )]
    pub shard_ports: Option<Vec<u16>>,

    /// Parent data directory; shard N keeps its data in DIR/shard-N.
    /// [default: ./limedb-data]
    #[arg(long, env = "LIMEDB_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Storage backend of every shard (see `limedb shard --help`). [default: lsm]
    #[arg(long, env = "LIMEDB_STORAGE", value_name = "BACKEND")]
    pub storage: Option<String>,

    /// Replicas per shard: each shard is a Raft group of this many replicas (replica r of
    /// shard s on shard s's port + 100 × (r − 1)), with automatic failover; 1 runs single-copy
    /// shards as before replication. [default: 3 with --storage lsm, else 1]
    #[arg(long, env = "LIMEDB_REPLICAS", value_name = "N")]
    pub replicas: Option<usize>,

    #[command(flatten)]
    #[serde(flatten)]
    pub postgres: PgArgs,

    /// Sync policy of every shard (see `limedb shard --help`; with replicas it governs the
    /// Raft log). [default: always with replicas, interval for single copies]
    #[arg(long, env = "LIMEDB_WAL_SYNC", value_name = "POLICY")]
    pub wal_sync: Option<String>,

    /// Virtual nodes per shard. [default: 128]
    #[arg(long, env = "LIMEDB_VNODES", value_name = "N")]
    pub vnodes: Option<u32>,

    /// The coordinator's RESP (Redis protocol) port, for redis-cli and Redis clients; 0 picks
    /// a free port. [default: 6379]
    #[arg(long, env = "LIMEDB_RESP_PORT", value_name = "PORT")]
    pub resp_port: Option<u16>,

    /// HTTP port of the cluster-map group's replica 1 (replica r on this port + r − 1; three
    /// replicas, run when shards are replicated); 0 picks free ports. The coordinator routes by
    /// the map they keep, so shards can be added and removed online (`limedb admin add-shard`).
    /// [default: 7901]
    #[arg(long, env = "LIMEDB_META_PORT", value_name = "PORT")]
    pub meta_port: Option<u16>,

    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub auth: AuthArgs,
}

/// Options of `limedb bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of a coordinator or shard (with --target etcd: an etcd client URL such as
    /// http://127.0.0.1:2379). Credentials go in it: http://user:password@host:port (basic
    /// auth) or http://:password@host:port (the default user).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub url: String,

    /// API of the server at --url: "limedb" (POST /api/v1/set, GET /api/v1/get/KEY) or
    /// "etcd" (etcd v3's HTTP/JSON gateway as served by etcd 3.4: POST /v3/kv/put and a
    /// linearizable POST /v3/kv/range, keys and values in base64), for side-by-side runs with
    /// the same keys, values and workloads. With etcd a range that finds no key counts as "not
    /// found" (like LimeDB's 404); any non-2xx answer, a 404 included, counts as an error.
    #[arg(long, default_value = "limedb", value_name = "API")]
    pub target: String,

    /// Concurrent keep-alive connections, one request in flight on each.
    #[arg(short = 'c', long, default_value_t = 64, value_name = "C")]
    pub connections: usize,

    /// Measured requests in total. SIGINT or SIGTERM during the measured phase ends it early,
    /// and the report covers the requests made until then.
    #[arg(short = 'n', long, default_value_t = 100_000, value_name = "N")]
    pub requests: u64,

    /// "set", "get", "mixed" (90% reads) or "mixed:P" (P% reads).
    #[arg(short = 'w', long, default_value = "set", value_name = "WORKLOAD")]
    pub workload: String,

    /// Number of distinct keys (key:000000000000 ...).
    #[arg(long, default_value_t = 100_000, value_name = "K")]
    pub keyspace: u64,

    /// Bytes per value.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub value_size: usize,

    /// What the values look like; both kinds are alphanumeric and the same for the same key.
    /// "repeating" (the default): every value is one of 61 overlapping windows into one short
    /// buffer, so the server's storage compresses them to almost nothing (cheap, but 1 GiB loaded
    /// is far less than 1 GiB on disk). "random": each value is a window at a hashed offset into
    /// 32 MiB or more of random alphanumeric bytes generated once at start, so nearly every value
    /// is distinct and does not compress beyond the ~6 bits per byte of the alphabet: loading
    /// 1 GiB makes the store hold roughly 0.75-1 GiB.
    #[arg(long, default_value = "repeating", value_name = "KIND")]
    pub values: String,

    /// "random" or "sequential" key order.
    #[arg(long, default_value = "random", value_name = "PATTERN")]
    pub key_pattern: String,

    /// Skip writing every key once before a run with reads.
    #[arg(long)]
    pub no_prefill: bool,

    /// Unmeasured requests before the measured ones.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup: u64,

    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub timeout_ms: u64,

    /// Print the report as one line of JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The TOML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Same as --log-level.
    pub log_level: Option<String>,
    /// Same as --worker-threads.
    pub worker_threads: Option<usize>,
    /// `[shard]`
    pub shard: ShardArgs,
    /// `[coordinator]`
    pub coordinator: CoordinatorArgs,
    /// `[dev]`
    pub dev: DevArgs,
    /// `[meta]`
    pub meta: MetaArgs,
    /// `[[users]]`: users of every node started with this file, each with the argon2 hash of
    /// its password (`limedb hash-password`) and a permission: read, read-write or admin.
    pub users: Vec<limedb_server::auth::UserConfig>,
}

impl FileConfig {
    /// Reads and validates the file: unknown tables and keys are errors, so a typo is never
    /// silently ignored.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses the TOML text of a configuration file.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        for (section, known) in [
            ("shard", known_keys(&ShardArgs::default())),
            ("coordinator", known_keys(&CoordinatorArgs::default())),
            ("dev", known_keys(&DevArgs::default())),
            ("meta", known_keys(&MetaArgs::default())),
        ] {
            if let Some(toml::Value::Table(t)) = table.get(section) {
                if let Some(bad) = t.keys().find(|k| !known.contains(k)) {
                    return Err(format!(
                        "unknown key {bad:?} in [{section}]; known keys: {}",
                        known.join(", ")
                    ));
                }
            }
        }
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Field names of a config section, as they appear in the file.
fn known_keys<T: Serialize>(section: &T) -> Vec<String> {
    serde_json::to_value(section)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default()
}

/// Overlays `flags` (flags and environment, as parsed by clap) on `file`: a value given on the
/// command line or in the environment wins over the file's.
pub fn overlay<T: Serialize + serde::de::DeserializeOwned>(
    flags: &T,
    file: &T,
) -> Result<T, String> {
    let mut base = serde_json::to_value(file).map_err(|e| e.to_string())?;
    let top = serde_json::to_value(flags).map_err(|e| e.to_string())?;
    if let (Some(base), Some(top)) = (base.as_object_mut(), top.as_object()) {
        for (k, v) in top {
            if !v.is_null() {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(base).map_err(|e| e.to_string())
}

/// Rewrites the seed prototype's Spring-style arguments into LimeDB's:
/// `--node.type=shard` becomes the `shard` subcommand, `--server.port` becomes `--port`,
/// `--shard.id` becomes `--id` and `--server.address` becomes `--host`. Other arguments pass
/// through unchanged; both `--a.b=v` and `--a.b v` forms work.
pub fn translate_seed_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut node_type = None;
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    while let Some(arg) = iter.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let renamed = match name.as_str() {
            "--node.type" => {
                node_type = inline.or_else(|| iter.next());
                continue;
            }
            "--server.port" => "--port",
            "--shard.id" => "--id",
            "--server.address" => "--host",
            _ => {
                out.push(arg);
                continue;
            }
        };
        match inline {
            Some(v) => out.push(format!("{renamed}={v}")),
            None => out.push(renamed.to_string()),
        }
    }
    if let Some(kind) = node_type {
        out.insert(1.min(out.len()), kind);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn seed_shard_flags_become_a_shard_command() {
        assert_eq!(
            translate_seed_args(args(
                "limedb --node.type=shard --server.port=7001 --shard.id=1"
            )),
            args("limedb shard --port=7001 --id=1")
        );
        assert_eq!(
            translate_seed_args(args("limedb --node.type coordinator --server.port 8080")),
            args("limedb coordinator --port 8080")
        );
    }

    #[test]
    fn modern_arguments_pass_through() {
        let a = args("limedb shard --id 2 --port 0");
        assert_eq!(translate_seed_args(a.clone()), a);
    }

    #[test]
    fn seed_coordinator_with_shards_parses() {
        let argv = translate_seed_args(args(
            "limedb --node.type=coordinator --server.port=8080 --shards=http://127.0.0.1:7001,http://127.0.0.1:7002",
        ));
        let cli = Cli::try_parse_from(argv).expect("parses");
        match cli.command {
            Command::Coordinator(c) => {
                assert_eq!(c.port, Some(8080));
                assert_eq!(c.shards.map(|s| s.len()), Some(2));
            }
            other => panic!("expected coordinator, got {other:?}"),
        }
    }

    #[test]
    fn flags_override_the_file_and_the_file_fills_the_rest() {
        let file = FileConfig::parse(
            "[shard]\nid = 3\nport = 7100\nwal_sync = \"always\"\nmax_key_bytes = 10\n",
        )
        .expect("valid toml");
        let flags = ShardArgs {
            port: Some(7200),
            ..ShardArgs::default()
        };
        let merged = overlay(&flags, &file.shard).expect("merge");
        assert_eq!(merged.id, Some(3));
        assert_eq!(merged.port, Some(7200));
        assert_eq!(merged.wal_sync.as_deref(), Some("always"));
        assert_eq!(merged.limits.max_key_bytes, Some(10));
    }

    #[test]
    fn postgres_settings_come_from_the_file_and_flags() {
        let file = FileConfig::parse(
            "[shard]\nstorage = \"postgres\"\npg_url = \"postgres://u@h:5432/\"\npg_pool_size = 4\n",
        )
        .expect("valid toml");
        let flags = ShardArgs {
            postgres: PgArgs {
                pg_database: Some("kv_{id}".into()),
                ..PgArgs::default()
            },
            ..ShardArgs::default()
        };
        let merged = overlay(&flags, &file.shard).expect("merge");
        assert_eq!(merged.storage.as_deref(), Some("postgres"));
        assert_eq!(
            merged.postgres.pg_url.as_deref(),
            Some("postgres://u@h:5432/")
        );
        assert_eq!(merged.postgres.pg_pool_size, Some(4));
        assert_eq!(merged.postgres.pg_database.as_deref(), Some("kv_{id}"));
        let cli = Cli::try_parse_from(args(
            "limedb shard --storage postgres --pg-url postgres://x@y/ --pg-timeout-ms 900",
        ))
        .expect("parses");
        match cli.command {
            Command::Shard(s) => {
                assert_eq!(s.postgres.pg_url.as_deref(), Some("postgres://x@y/"));
                assert_eq!(s.postgres.pg_timeout_ms, Some(900));
            }
            other => panic!("expected shard, got {other:?}"),
        }
    }

    #[test]
    fn resp_settings_come_from_the_file_too() {
        let file = FileConfig::parse(
            "[shard]\nresp_port = 6380\nresp_idle_timeout_ms = 5000\n[coordinator]\nresp_port = 6379\n[dev]\nresp_port = 0\n",
        )
        .expect("valid toml");
        let merged = overlay(&ShardArgs::default(), &file.shard).expect("merge");
        assert_eq!(merged.resp.resp_port, Some(6380));
        assert_eq!(merged.resp.resp_idle_timeout_ms, Some(5000));
        assert_eq!(file.coordinator.resp.resp_port, Some(6379));
        assert_eq!(file.dev.resp_port, Some(0));
    }

    #[test]
    fn meta_and_map_settings_come_from_the_file_too() {
        let file = FileConfig::parse(
            "[meta]\nreplica = 2\npeers = [\"1=http://a:7901\", \"2=http://b:7902\"]\nport = 7902\n[coordinator]\nmeta = [\"http://a:7901\"]\n",
        )
        .expect("valid toml");
        let merged = overlay(&MetaArgs::default(), &file.meta).expect("merge");
        assert_eq!(merged.replication.replica, Some(2));
        assert_eq!(merged.replication.peers.map(|p| p.len()), Some(2));
        assert_eq!(merged.port, Some(7902));
        assert_eq!(
            file.coordinator.meta,
            Some(vec!["http://a:7901".to_string()])
        );
        let err = FileConfig::parse("[meta]\nid = 3\n").expect_err("meta has no id");
        assert!(err.contains("\"id\""), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = FileConfig::parse("[shard]\nprot = 1\n").expect_err("typo");
        assert!(err.contains("prot"), "{err}");
        let err = FileConfig::parse("[shards]\nid = 1\n").expect_err("unknown table");
        assert!(err.contains("shards"), "{err}");
    }

    #[test]
    fn help_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
