//! The `limedb` binary: parses the command line and configuration, sets up logging and the
//! runtime, and starts a shard, a coordinator, a local cluster or the load generator.

mod admin;
mod cli;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use limedb_cluster::{ShardId, DEFAULT_VNODES_PER_SHARD};
use limedb_server::config::{
    parse_peers, parse_shard_list, CoordinatorConfig, Limits, LsmTuning, PgSettings,
    ReplicationConfig, ShardConfig, StorageKind, DEFAULT_CONNECTIONS_PER_SHARD,
    DEFAULT_HEALTH_INTERVAL, DEFAULT_KEEP_LOGS, DEFAULT_MAX_CONNECTIONS, DEFAULT_SHARD_TIMEOUT,
    DEFAULT_SNAPSHOT_LOGS, MAX_KEY_BYTES_CAP, MAX_VALUE_BYTES_CAP, SEED_SHARD_URLS,
};
use limedb_server::coordinator::CoordinatorServer;
use limedb_server::dev::{default_internal_port, DevCluster, DevConfig};
use limedb_server::shard::ShardServer;
use limedb_server::shutdown;
use limedb_storage::lsm::sstable::ReadMode;
use limedb_storage::SyncPolicy;

use cli::{
    BenchArgs, Cli, Command, CoordinatorArgs, DevArgs, FileConfig, LimitArgs, MetaArgs, PgArgs,
    ShardArgs,
};

/// The process's allocator. A shard allocates per request (arguments, replies, buffers);
/// with mimalloc instead of glibc's allocator, `redis-benchmark -P 16` against one shard ran
/// SETs 20% and GETs 6% faster (medians of three alternating rounds, docs/benchmarks.md).
/// Built without transparent huge pages (`no_thp`): mimalloc gives freed memory back to the
/// kernel and takes it again, and with huge pages every refault zeroed 2 MiB; while a shard was
/// added, that zeroing took 28% of the busy CPU and the move ran 1.4x slower
/// (`bench/rebalance.sh --no-load`); `redis-benchmark -P 16` SETs against one shard ran 15-20%
/// faster without them, the rest within the noise (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv = cli::translate_seed_args(std::env::args().collect());
    let cli = Cli::parse_from(argv);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    init_logging(cli.log_level.as_deref(), file.log_level.as_deref())?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    match cli.worker_threads.or(file.worker_threads) {
        Some(0) => return Err("--worker-threads must be at least 1".into()),
        Some(n) => {
            builder.worker_threads(n);
        }
        None => {}
    }
    let runtime = builder
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    match cli.command {
        Command::Shard(args) => {
            let config = shard_config(cli::overlay(&args, &file.shard)?, &file.users)?;
            runtime.block_on(run_shard(config))
        }
        Command::Coordinator(args) => {
            let config = coordinator_config(cli::overlay(&args, &file.coordinator)?, &file.users)?;
            runtime.block_on(run_coordinator(config))
        }
        Command::Meta(args) => {
            let config = meta_config(cli::overlay(&args, &file.meta)?)?;
            runtime.block_on(run_shard(config))
        }
        Command::Dev(args) => {
            let config = dev_config(cli::overlay(&args, &file.dev)?, &file.users)?;
            runtime.block_on(run_dev(config))
        }
        Command::Bench(args) => runtime.block_on(run_bench(args)),
        Command::Admin(args) => runtime.block_on(admin::run(args)),
        Command::HashPassword => hash_password(),
    }
}

/// `limedb hash-password`: one line of standard input to its argon2 hash.
fn hash_password() -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("no password on standard input (give it as one line)".into());
    }
    let hash = limedb_server::auth::hash_password(password).map_err(|e| e.to_string())?;
    println!("{hash}");
    Ok(())
}

/// Protected mode: a coordinator that would listen on `host`, not a loopback address, while
/// asking clients for no credentials refuses to start unless `--insecure` accepts the risk.
fn protected_coordinator(
    host: IpAddr,
    asks_credentials: bool,
    protection: &cli::ProtectionArgs,
) -> Result<(), String> {
    if host.is_loopback() || asks_credentials || protection.insecure == Some(true) {
        return Ok(());
    }
    Err(format!(
        "protected mode: refusing to listen on {host}, which is not a loopback address, while asking clients for no password: anyone who can reach it could read and change every key. Set a password (--requirepass, LIMEDB_REQUIREPASS, or [[users]] in the config file), listen on 127.0.0.1, or pass --insecure to accept the risk on a network you trust"
    ))
}

/// Protected mode for nodes that hold data (a shard, `limedb dev`'s shards, a map-group
/// replica): beyond loopback they need `--insecure`, password or not, until the cluster secret
/// guards their internal listener and the routes cluster members call on them.
fn protected_data_node(
    host: IpAddr,
    protection: &cli::ProtectionArgs,
    what: &str,
) -> Result<(), String> {
    if host.is_loopback() || protection.insecure == Some(true) {
        return Ok(());
    }
    Err(format!(
        "protected mode: refusing to listen on {host}, which is not a loopback address: {what} internal protocol and the routes cluster members call on it (/api/v1/admin/transfer/*, /api/v1/admin/ownership, /api/v1/admin/replicas, /api/v1/meta/map on the map group) accept anyone who can reach them, whatever --requirepass says, until the cluster secret that will guard them is built. Listen on 127.0.0.1, or pass --insecure to accept the risk on a network you trust"
    ))
}

/// The users a node asks for: `--requirepass` (the default user) and the file's `[[users]]`.
fn users(
    args: &cli::AuthArgs,
    configured: &[limedb_server::auth::UserConfig],
) -> Result<std::sync::Arc<limedb_server::auth::Users>, String> {
    limedb_server::auth::Users::new(args.requirepass.as_deref(), configured)
        .map(std::sync::Arc::new)
        .map_err(|e| e.to_string())
}

/// `--log-level` (or LIMEDB_LOG_LEVEL) wins, then RUST_LOG, then the file's `log_level`, then
/// info: flags over the environment over the file, as for every option.
fn init_logging(flag: Option<&str>, file: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (source, spec) = match (flag, env, file) {
        (Some(l), _, _) => ("--log-level", l.to_string()),
        (None, Some(env), _) => ("RUST_LOG", env),
        (None, None, Some(l)) => ("log_level in the config file", l.to_string()),
        (None, None, None) => ("default", "info,openraft=warn".to_string()),
    };
    let filter =
        EnvFilter::try_new(&spec).map_err(|e| format!("invalid {source} {spec:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// Prints the machine-readable readiness line that scripts and tests wait for.
fn announce(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Triggers shutdown on Ctrl-C or SIGTERM. Call it before announcing readiness: the handlers
/// are registered when it returns.
fn shutdown_on_signal() -> Result<shutdown::Shutdown, String> {
    let signals =
        shutdown::os_signals().map_err(|e| format!("cannot listen for Ctrl-C and SIGTERM: {e}"))?;
    let (trigger, handle) = shutdown::channel();
    tokio::spawn(async move {
        signals.await;
        trigger.trigger();
    });
    Ok(handle)
}

fn parse_host(host: Option<String>) -> Result<IpAddr, String> {
    match host.as_deref() {
        None | Some("localhost") => Ok(IpAddr::from([127, 0, 0, 1])),
        Some(h) => h
            .parse()
            .map_err(|_| format!("--host {h:?} is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)")),
    }
}

fn limits(args: &LimitArgs) -> Result<Limits, String> {
    let defaults = Limits::default();
    let limits = Limits {
        max_key_bytes: args.max_key_bytes.unwrap_or(defaults.max_key_bytes),
        max_value_bytes: args.max_value_bytes.unwrap_or(defaults.max_value_bytes),
    };
    if limits.max_key_bytes == 0 {
        return Err("--max-key-bytes must be at least 1".into());
    }
    // The internal protocol carries u32 lengths; keep a key and value well inside one frame.
    if limits.max_value_bytes > MAX_VALUE_BYTES_CAP || limits.max_key_bytes > MAX_KEY_BYTES_CAP {
        return Err(
            "--max-value-bytes may be at most 1 GiB and --max-key-bytes at most 16 MiB".into(),
        );
    }
    Ok(limits)
}

fn max_connections(args: &LimitArgs) -> usize {
    args.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
}

fn sync_policy(policy: Option<&str>, interval_ms: Option<u64>) -> Result<SyncPolicy, String> {
    let policy: SyncPolicy = match policy {
        Some(p) => p.parse().map_err(|e| format!("--wal-sync: {e}"))?,
        None => SyncPolicy::default(),
    };
    match (policy, interval_ms) {
        (SyncPolicy::Interval(_), Some(0)) => {
            Err("--wal-sync-interval-ms must be at least 1".into())
        }
        (SyncPolicy::Interval(_), Some(ms)) => Ok(SyncPolicy::Interval(Duration::from_millis(ms))),
        (p, _) => Ok(p),
    }
}

fn storage_kind(storage: Option<&str>) -> Result<StorageKind, String> {
    storage
        .unwrap_or("lsm")
        .parse()
        .map_err(|e| format!("--storage: {e}"))
}

fn lsm_tuning(args: &ShardArgs) -> Result<LsmTuning, String> {
    let defaults = LsmTuning::default();
    let mib = |v: Option<u64>, name: &str, default: u64| match v {
        None => Ok(default),
        Some(0) => Err(format!("--{name} must be at least 1")),
        Some(m) if m > 1 << 20 => Err(format!("--{name} {m} is more than 1 TiB")),
        Some(m) => Ok(m << 20),
    };
    let block_cache_bytes = mib(
        args.block_cache_mb,
        "block-cache-mb",
        defaults.block_cache_bytes as u64,
    )?;
    Ok(LsmTuning {
        memtable_bytes: mib(args.memtable_mb, "memtable-mb", defaults.memtable_bytes)?,
        block_cache_bytes: usize::try_from(block_cache_bytes)
            .map_err(|_| "--block-cache-mb is too large for this machine".to_string())?,
        read_mode: match args.table_reads.as_deref() {
            None => defaults.read_mode,
            Some("mmap") => ReadMode::Mmap,
            Some("pread") => ReadMode::Pread,
            Some(other) => {
                return Err(format!(
                    "--table-reads: unknown mode {other:?}; use \"mmap\" or \"pread\""
                ))
            }
        },
    })
}

/// The PostgreSQL settings, required (and only allowed to matter) with `--storage postgres`.
fn pg_settings(storage: StorageKind, args: &PgArgs) -> Result<Option<PgSettings>, String> {
    if storage != StorageKind::Postgres {
        return Ok(None);
    }
    let url = args.pg_url.clone().ok_or(
        "--storage postgres needs --pg-url postgres://USER[:PASSWORD]@HOST[:PORT]/ (or pg_url in the config file, or LIMEDB_PG_URL)",
    )?;
    let mut settings = PgSettings::new(url);
    if let Some(template) = &args.pg_database {
        limedb_postgres::database_name(template, 1).map_err(|e| format!("--pg-database: {e}"))?;
        settings.database_template = template.clone();
    }
    match args.pg_pool_size {
        Some(0) => return Err("--pg-pool-size must be at least 1".into()),
        Some(n) => settings.pool_size = n,
        None => {}
    }
    match args.pg_timeout_ms {
        Some(0) => return Err("--pg-timeout-ms must be at least 1".into()),
        Some(ms) => settings.timeout = Duration::from_millis(ms),
        None => {}
    }
    Ok(Some(settings))
}

fn shard_config(
    args: ShardArgs,
    configured: &[limedb_server::auth::UserConfig],
) -> Result<ShardConfig, String> {
    let id = args.id.unwrap_or(1);
    if id == 0 {
        return Err("--id: shard ids start at 1".into());
    }
    let lsm = lsm_tuning(&args)?;
    let host = parse_host(args.host)?;
    let users = users(&args.auth, configured)?;
    protected_data_node(host, &args.auth.protection, "a shard's")?;
    let port = match args.port {
        Some(p) => p,
        None => u16::try_from(7000 + u64::from(id))
            .map_err(|_| format!("shard id {id} has no default port; give --port"))?,
    };
    let internal_port = args.internal_port.unwrap_or(default_internal_port(port));
    let storage = storage_kind(args.storage.as_deref())?;
    if port != 0 && port == internal_port {
        return Err(format!("--port and --internal-port are both {port}"));
    }
    let replication = replication_config(&args.replication)?;
    let default_dir = match &replication {
        None => format!("shard-{id}"),
        Some(r) => format!("shard-{id}-replica-{}", r.replica_id),
    };
    let wal_sync = match (&replication, args.wal_sync.as_deref()) {
        (Some(_), None) => SyncPolicy::Always,
        (_, given) => sync_policy(given, args.wal_sync_interval_ms)?,
    };
    let replication = replication.map(|r| ReplicationConfig {
        log_sync: wal_sync,
        ..r
    });
    Ok(ShardConfig {
        id: ShardId(id),
        http_addr: SocketAddr::new(host, port),
        internal_addr: SocketAddr::new(host, internal_port),
        data_dir: args
            .data_dir
            .unwrap_or_else(|| PathBuf::from("limedb-data").join(default_dir)),
        storage,
        wal_sync,
        lsm,
        postgres: pg_settings(storage, &args.postgres)?,
        limits: limits(&args.limits)?,
        max_connections: max_connections(&args.limits),
        resp_addr: args.resp.resp_port.map(|p| SocketAddr::new(host, p)),
        resp_idle_timeout: resp_idle_timeout(&args.resp),
        replication,
        users,
    })
}

/// A replica of the cluster-map group: a replicated shard with the reserved id 0, small
/// memory budgets (it holds one key), fsync on every write, no RESP listener.
fn meta_config(args: MetaArgs) -> Result<ShardConfig, String> {
    let replication = replication_config(&args.replication)?.ok_or(
        "limedb meta needs --peers: every replica of the cluster-map group as ID=URL,... (this one included), e.g. 1=http://127.0.0.1:7901,2=http://127.0.0.1:7902,3=http://127.0.0.1:7903",
    )?;
    let replica = replication.replica_id;
    let host = parse_host(args.host)?;
    protected_data_node(host, &args.protection, "a map-group replica's")?;
    let port = match args.port {
        Some(p) => p,
        None => u16::try_from(7900 + replica)
            .map_err(|_| format!("replica id {replica} has no default port; give --port"))?,
    };
    let internal_port = args.internal_port.unwrap_or(default_internal_port(port));
    if port != 0 && port == internal_port {
        return Err(format!("--port and --internal-port are both {port}"));
    }
    Ok(ShardConfig::map_group_replica(
        SocketAddr::new(host, port),
        SocketAddr::new(host, internal_port),
        args.data_dir.unwrap_or_else(|| {
            PathBuf::from("limedb-data").join(format!("meta-replica-{replica}"))
        }),
        replication,
        DEFAULT_MAX_CONNECTIONS,
    ))
}

/// `--replica`, `--peers` and the Raft tuning of a shard; `None` without `--peers`.
fn replication_config(r: &cli::ReplicationArgs) -> Result<Option<ReplicationConfig>, String> {
    let Some(peers) = &r.peers else {
        if r.replica.is_some() {
            return Err("--replica needs --peers (every replica of the group, ID=URL,...)".into());
        }
        return Ok(None);
    };
    let peers = parse_peers(peers).map_err(|e| format!("--peers: {e}"))?;
    let replica_id = r.replica.unwrap_or(1);
    if replica_id == 0 {
        return Err("--replica: replica ids start at 1".into());
    }
    if !peers.contains_key(&replica_id) {
        return Err(format!(
            "--peers has no entry for this replica, --replica {replica_id}: list every replica of the group, this one included"
        ));
    }
    let defaults = limedb_raft::RaftTiming::default();
    let heartbeat_ms = r.raft_heartbeat_ms.unwrap_or(defaults.heartbeat_ms);
    let election_ms = r.raft_election_ms.unwrap_or(defaults.election_ms);
    if heartbeat_ms == 0 || election_ms < 3 * heartbeat_ms {
        return Err(format!(
            "--raft-election-ms ({election_ms}) must be at least 3 × --raft-heartbeat-ms ({heartbeat_ms}), and the heartbeat positive"
        ));
    }
    Ok(Some(ReplicationConfig {
        replica_id,
        peers,
        log_sync: SyncPolicy::Always,
        timing: limedb_raft::RaftTiming {
            heartbeat_ms,
            election_ms,
        },
        snapshot_logs: r
            .raft_snapshot_entries
            .unwrap_or(DEFAULT_SNAPSHOT_LOGS)
            .max(1),
        keep_logs: r.raft_keep_entries.unwrap_or(DEFAULT_KEEP_LOGS),
    }))
}

/// `--resp-idle-timeout-ms`; 0 or unset is no timeout.
fn resp_idle_timeout(args: &cli::RespArgs) -> Option<Duration> {
    args.resp_idle_timeout_ms
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

fn coordinator_config(
    args: CoordinatorArgs,
    configured: &[limedb_server::auth::UserConfig],
) -> Result<CoordinatorConfig, String> {
    let meta: Vec<String> = args
        .meta
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .map(|u| {
            if u.contains("://") {
                u
            } else {
                format!("http://{u}")
            }
        })
        .collect();
    // With --meta and no --shards, the stored map says where the shards are.
    let shard_urls = match (args.shards, meta.is_empty()) {
        (Some(shards), _) => shards,
        (None, false) => Vec::new(),
        (None, true) => SEED_SHARD_URLS.iter().map(|s| s.to_string()).collect(),
    };
    let millis = |v: Option<u64>, default: Duration, name: &str| match v {
        Some(0) => Err(format!("--{name} must be at least 1")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let host = parse_host(args.host)?;
    let users = users(&args.auth, configured)?;
    protected_coordinator(host, users.required(), &args.auth.protection)?;
    Ok(CoordinatorConfig {
        http_addr: SocketAddr::new(host, args.port.unwrap_or(8080)),
        shards: if shard_urls.is_empty() {
            Vec::new()
        } else {
            parse_shard_list(&shard_urls).map_err(|e| format!("--shards: {e}"))?
        },
        vnodes_per_shard: args.vnodes.unwrap_or(DEFAULT_VNODES_PER_SHARD),
        shard_timeout: millis(
            args.shard_timeout_ms,
            DEFAULT_SHARD_TIMEOUT,
            "shard-timeout-ms",
        )?,
        health_interval: millis(
            args.health_interval_ms,
            DEFAULT_HEALTH_INTERVAL,
            "health-interval-ms",
        )?,
        connections_per_shard: args
            .connections_per_shard
            .unwrap_or(DEFAULT_CONNECTIONS_PER_SHARD)
            .max(1),
        limits: limits(&args.limits)?,
        max_connections: max_connections(&args.limits),
        resp_addr: args.resp.resp_port.map(|p| SocketAddr::new(host, p)),
        resp_idle_timeout: resp_idle_timeout(&args.resp),
        meta,
        users,
    })
}

fn dev_config(
    args: DevArgs,
    configured: &[limedb_server::auth::UserConfig],
) -> Result<DevConfig, String> {
    let defaults = DevConfig::default();
    let storage = storage_kind(args.storage.as_deref())?;
    let host = parse_host(args.host)?;
    let users = users(&args.auth, configured)?;
    protected_data_node(host, &args.auth.protection, "each shard's")?;
    Ok(DevConfig {
        host,
        coordinator_port: args.coordinator_port.unwrap_or(defaults.coordinator_port),
        shard_ports: args.shard_ports.unwrap_or(defaults.shard_ports),
        data_dir: args.data_dir.unwrap_or(defaults.data_dir),
        storage,
        wal_sync: args
            .wal_sync
            .as_deref()
            .map(|p| sync_policy(Some(p), None))
            .transpose()?,
        replicas: args.replicas.unwrap_or(match storage {
            StorageKind::Lsm => defaults.replicas,
            _ => 1,
        }),
        postgres: pg_settings(storage, &args.postgres)?,
        vnodes_per_shard: args.vnodes.unwrap_or(defaults.vnodes_per_shard),
        limits: limits(&args.limits)?,
        shard_timeout: defaults.shard_timeout,
        max_connections: max_connections(&args.limits),
        resp_port: args.resp_port.unwrap_or(defaults.resp_port),
        meta_port: args.meta_port.unwrap_or(defaults.meta_port),
        users,
    })
}

/// ` resp=ADDR` for a readiness line, when there is a RESP listener.
fn resp_field(addr: Option<SocketAddr>) -> String {
    addr.map(|a| format!(" resp={a}")).unwrap_or_default()
}

async fn run_shard(config: ShardConfig) -> Result<(), String> {
    let id = config.id;
    let shutdown = shutdown_on_signal()?;
    let server = ShardServer::bind(config).await.map_err(|e| e.to_string())?;
    let role = if id == limedb_server::shard::map_group::MAP_GROUP_ID {
        "meta"
    } else {
        "shard"
    };
    announce(format!(
        "LIMEDB_READY role={role} id={id} http={} internal={}{}",
        server.http_addr(),
        server.internal_addr(),
        resp_field(server.resp_addr())
    ));
    server.run(shutdown).await.map_err(|e| e.to_string())
}

async fn run_coordinator(config: CoordinatorConfig) -> Result<(), String> {
    let shutdown = shutdown_on_signal()?;
    let server = CoordinatorServer::bind(config)
        .await
        .map_err(|e| e.to_string())?;
    announce(format!(
        "LIMEDB_READY role=coordinator http={}{}",
        server.http_addr(),
        resp_field(server.resp_addr())
    ));
    server.run(shutdown).await.map_err(|e| e.to_string())
}

async fn run_dev(config: DevConfig) -> Result<(), String> {
    let shutdown = shutdown_on_signal()?;
    let data_dir = config.data_dir.clone();
    let pg_template = config
        .postgres
        .as_ref()
        .map(|pg| pg.database_template.clone());
    let asks_credentials = config.users.required();
    let cluster = DevCluster::bind(config).await.map_err(|e| e.to_string())?;
    let endpoints = cluster.endpoints();
    let c = endpoints.coordinator;
    let mut banner = String::new();
    banner.push_str("LimeDB local cluster is running.\n\n");
    banner.push_str(&format!("  coordinator  http://{c}\n"));
    if let Some(r) = endpoints.resp {
        banner.push_str(&format!(
            "  redis        {r}  (RESP: redis-cli -h {} -p {})\n",
            r.ip(),
            r.port()
        ));
    }
    let replicated = endpoints
        .shards
        .iter()
        .any(|(_, replica, _, _)| *replica > 1);
    for (id, replica, http, internal) in &endpoints.shards {
        let data = match &pg_template {
            Some(template) => format!(
                "PostgreSQL database {}",
                template.replace("{id}", &id.to_string())
            ),
            None if replicated => format!(
                "data {}",
                data_dir
                    .join(format!("shard-{id}-replica-{replica}"))
                    .display()
            ),
            None => format!("data {}", data_dir.join(format!("shard-{id}")).display()),
        };
        let name = if replicated {
            format!("shard {id} replica {replica}")
        } else {
            format!("shard {id}")
        };
        banner.push_str(&format!(
            "  {name:<18} http://{http}  (internal protocol {internal}, {data})\n"
        ));
    }
    for (replica, http) in &endpoints.meta {
        let name = format!("map replica {replica}");
        banner.push_str(&format!(
            "  {name:<18} http://{http}  (cluster map, data {})\n",
            data_dir.join(format!("meta-replica-{replica}")).display()
        ));
    }
    if replicated {
        banner.push_str(
            "\nEach shard is a Raft group: writes are acknowledged once a majority of its replicas has them on disk,\nand a new leader takes over within about a second when one stops. `limedb admin status` shows the roles.\nThe cluster map lives in its own Raft group: add a shard online with `limedb admin add-shard --id 4 --peers 1=URL`\n(start it first: `limedb shard --id 4 --replica 1 --peers 1=URL --port PORT`), remove one with `limedb admin remove-shard ID`.\n",
        );
    }
    if asks_credentials {
        banner.push_str(
            "\nClients must authenticate (--requirepass, [[users]]): redis-cli -a PASSWORD, curl -H 'Authorization: Bearer PASSWORD' or curl -u USER:PASSWORD.\n",
        );
    }
    banner.push_str(&format!(
        "\nTry:\n  curl -X POST http://{c}/api/v1/set -H 'content-type: application/json' -d '{{\"key\":\"hello\",\"value\":\"world\"}}'\n  curl http://{c}/api/v1/get/hello\n  curl -X DELETE http://{c}/api/v1/del/hello\n  curl http://{c}/api/v1/health\n  curl 'http://{c}/api/v1/keys?page=1&pageSize=20'\n  limedb bench --url http://{c} -c 64 -n 100000 -w mixed\n\nPress Ctrl-C to stop.\n"
    ));
    announce(format!(
        "LIMEDB_READY role=dev http={c}{}",
        resp_field(endpoints.resp)
    ));
    println!("{banner}");
    cluster.run(shutdown).await.map_err(|e| e.to_string())
}

async fn run_bench(args: BenchArgs) -> Result<(), String> {
    let options = limedb_bench::BenchOptions {
        url: args.url,
        api: args.target.parse().map_err(|e| format!("--target: {e}"))?,
        connections: args.connections,
        requests: args.requests,
        workload: args
            .workload
            .parse()
            .map_err(|e| format!("--workload: {e}"))?,
        keyspace: args.keyspace,
        value_size: args.value_size,
        value_kind: args.values.parse().map_err(|e| format!("--values: {e}"))?,
        key_pattern: args
            .key_pattern
            .parse()
            .map_err(|e| format!("--key-pattern: {e}"))?,
        prefill: !args.no_prefill,
        warmup_requests: args.warmup,
        timeout_ms: args.timeout_ms,
        progress: !args.json && std::io::stderr().is_terminal(),
    };
    let report = limedb_bench::run(&options)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        announce(line);
    } else {
        println!("{}", report.to_table());
    }
    Ok(())
}
