//! `limedb dev`: a whole local cluster — N shards, each a Raft group of R replicas (3 × 3 by
//! default), the cluster-map group (3 replicas, when shards are replicated) and a coordinator
//! that routes by the map — in one process. Shards can then be added and removed online with
//! `limedb admin add-shard` / `remove-shard`.
//!
//! Replica `r` of shard `s` serves HTTP on shard `s`'s port + 100 × (r − 1) (7001, 7101, 7201
//! for shard 1 by default) and keeps its data under `<data_dir>/shard-<s>-replica-<r>`; with
//! `--replicas 1` shard `s` keeps it under `<data_dir>/shard-<s>`. Both are exactly where a
//! standalone `limedb shard` started from the same directory would, with the same flags, so the
//! two can be used interchangeably.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use limedb_cluster::ShardId;
use limedb_storage::SyncPolicy;
use tokio::task::JoinSet;

use crate::config::{
    CoordinatorConfig, Limits, LsmTuning, PgSettings, ReplicationConfig, ShardConfig, ShardSpec,
    StorageKind, DEFAULT_CONNECTIONS_PER_SHARD, DEFAULT_HEALTH_INTERVAL, DEFAULT_KEEP_LOGS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_SHARD_TIMEOUT, DEFAULT_SNAPSHOT_LOGS,
};
use crate::coordinator::CoordinatorServer;
use crate::error::ServerError;
use crate::shard::ShardServer;
use crate::shutdown::Shutdown;

/// Settings of a local cluster.
#[derive(Clone, Debug)]
pub struct DevConfig {
    /// Interface every listener binds to.
    pub host: IpAddr,
    /// Coordinator HTTP port.
    pub coordinator_port: u16,
    /// One HTTP port per shard; shard ids are 1, 2, ... in this order.
    pub shard_ports: Vec<u16>,
    /// Parent directory of the shards' data directories.
    pub data_dir: PathBuf,
    /// Storage backend of every shard.
    pub storage: StorageKind,
    /// Sync policy of every shard (of the Raft log, for replicated shards); `None` is the
    /// default: `interval` for single copies, `always` for replicas.
    pub wal_sync: Option<SyncPolicy>,
    /// Replicas per shard (1: single copies, as before replication).
    pub replicas: usize,
    /// Where PostgreSQL is, for `StorageKind::Postgres`.
    pub postgres: Option<PgSettings>,
    /// Virtual nodes per shard.
    pub vnodes_per_shard: u32,
    /// Key and value limits.
    pub limits: Limits,
    /// Coordinator's per-request shard timeout.
    pub shard_timeout: Duration,
    /// Cap on open connections per listener.
    pub max_connections: usize,
    /// The coordinator's RESP (Redis protocol) port; 0 picks a free one (default 6379).
    pub resp_port: u16,
    /// HTTP port of the map group's replica 1 (replica r on this + r − 1); 0 picks free ports.
    /// The map group runs only when shards are replicated.
    pub meta_port: u16,
    /// Who may use the coordinator's and the shards' client listeners.
    pub users: std::sync::Arc<crate::auth::Users>,
}

/// Replicas of the map group in `limedb dev`.
pub const DEV_META_REPLICAS: usize = 3;

/// A bound local cluster: shards and the map group already serving, the coordinator bound.
pub struct DevCluster {
    servers: JoinSet<Result<(), ServerError>>,
    stop_servers: crate::shutdown::ShutdownTrigger,
    endpoints: DevEndpoints,
    coordinator: CoordinatorServer,
}

/// Addresses of a running local cluster.
#[derive(Clone, Debug)]
pub struct DevEndpoints {
    /// Coordinator HTTP address.
    pub coordinator: SocketAddr,
    /// Coordinator RESP address.
    pub resp: Option<SocketAddr>,
    /// `(shard, replica, http, internal)` of every replica (replica 1 of a single copy).
    pub shards: Vec<(ShardId, u64, SocketAddr, SocketAddr)>,
    /// `(replica, http)` of every replica of the map group (none with single-copy shards).
    pub meta: Vec<(u64, SocketAddr)>,
}

/// The internal port a shard uses by default: its HTTP port + 10000, or any free port when the
/// HTTP port is 0 or the sum would not fit.
pub fn default_internal_port(http_port: u16) -> u16 {
    if http_port == 0 {
        0
    } else {
        http_port.checked_add(10_000).unwrap_or(0)
    }
}

/// Refuses a set of fixed ports in which two listeners would share one, before anything binds:
/// a shard's internal port is derived from its HTTP port, so `--shard-ports 7001,17001` would
/// otherwise fail half-way with a bare "address in use". Port 0 (any free port) never clashes.
fn check_port_plan(config: &DevConfig) -> Result<(), ServerError> {
    let mut planned: Vec<(u16, String)> = vec![
        (
            config.coordinator_port,
            "the coordinator's HTTP port".into(),
        ),
        (config.resp_port, "the coordinator's RESP port".into()),
    ];
    if config.replicas > 1 {
        for r in 1..=DEV_META_REPLICAS {
            let port = meta_replica_port(config.meta_port, r);
            planned.push((port, format!("map-group replica {r}'s HTTP port")));
            planned.push((
                default_internal_port(port),
                format!("map-group replica {r}'s internal port (its HTTP port + 10000)"),
            ));
        }
    }
    for (i, &port) in config.shard_ports.iter().enumerate() {
        let id = i + 1;
        for r in 1..=config.replicas.max(1) {
            let port = replica_port(port, r);
            let who = if config.replicas > 1 {
                format!("shard {id} replica {r}'s")
            } else {
                format!("shard {id}'s")
            };
            planned.push((port, format!("{who} HTTP port")));
            planned.push((
                default_internal_port(port),
                format!("{who} internal port (its HTTP port + 10000)"),
            ));
        }
    }
    for (i, (port, role)) in planned.iter().enumerate() {
        if *port == 0 {
            continue;
        }
        if let Some((_, earlier)) = planned[..i].iter().find(|(p, _)| p == port) {
            return Err(ServerError::Config(format!(
                "port {port} would be both {earlier} and {role}; choose other ports (0 picks a free one)"
            )));
        }
    }
    Ok(())
}

/// HTTP port of replica `replica` (from 1) of a shard whose first replica uses `base` (0: any).
pub fn replica_port(base: u16, replica: usize) -> u16 {
    if base == 0 {
        return 0;
    }
    u16::try_from(usize::from(base) + 100 * (replica - 1)).unwrap_or(0)
}

/// HTTP port of map-group replica `replica` (from 1) when replica 1 uses `base` (0: any).
pub fn meta_replica_port(base: u16, replica: usize) -> u16 {
    if base == 0 {
        return 0;
    }
    u16::try_from(usize::from(base) + replica - 1).unwrap_or(0)
}

/// A port nobody listens on right now (for replica URLs that must be known before binding).
fn free_port(host: IpAddr) -> Result<u16, ServerError> {
    std::net::TcpListener::bind(SocketAddr::new(host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| ServerError::Bind {
            addr: format!("{host}:0"),
            source,
        })
}

impl DevCluster {
    /// Opens every shard's storage and binds every listener.
    pub async fn bind(config: DevConfig) -> Result<Self, ServerError> {
        if config.shard_ports.is_empty() {
            return Err(ServerError::Config(
                "a cluster needs at least one shard".into(),
            ));
        }
        if config.replicas == 0 {
            return Err(ServerError::Config("--replicas must be at least 1".into()));
        }
        if config.replicas > 1 && config.storage != StorageKind::Lsm {
            return Err(ServerError::Config(format!(
                "--storage {} runs single-copy shards: add --replicas 1 (replicas are built on the LSM engine's checkpoints; PostgreSQL brings its own replication)",
                config.storage
            )));
        }
        check_port_plan(&config)?;
        let mut shards = Vec::with_capacity(config.shard_ports.len() * config.replicas);
        let mut specs = Vec::with_capacity(config.shard_ports.len());
        for (i, &base) in config.shard_ports.iter().enumerate() {
            let id = ShardId(i as u32 + 1);
            let mut ports = Vec::with_capacity(config.replicas);
            for r in 1..=config.replicas {
                ports.push(match replica_port(base, r) {
                    0 if config.replicas > 1 => free_port(config.host)?,
                    port => port,
                });
            }
            let url = |port: u16| format!("http://{}", SocketAddr::new(config.host, port));
            let peers: std::collections::BTreeMap<u64, String> = ports
                .iter()
                .enumerate()
                .map(|(r, &port)| (r as u64 + 1, url(port)))
                .collect();
            if config.replicas > 1
                && config
                    .data_dir
                    .join(format!("shard-{id}"))
                    .join("CURRENT")
                    .exists()
            {
                tracing::warn!(
                    "{} holds shard {id} of an earlier single-copy cluster (limedb dev --replicas 1); this replicated cluster keeps its data elsewhere and does not use it",
                    config.data_dir.join(format!("shard-{id}")).display()
                );
            }
            for (r, &port) in ports.iter().enumerate() {
                let replica = r as u64 + 1;
                let replicated = config.replicas > 1;
                let shard = ShardServer::bind(ShardConfig {
                    id,
                    http_addr: SocketAddr::new(config.host, port),
                    internal_addr: SocketAddr::new(config.host, default_internal_port(port)),
                    data_dir: config.data_dir.join(if replicated {
                        format!("shard-{id}-replica-{replica}")
                    } else {
                        format!("shard-{id}")
                    }),
                    storage: config.storage,
                    wal_sync: config.wal_sync.unwrap_or(if replicated {
                        SyncPolicy::Always
                    } else {
                        SyncPolicy::default()
                    }),
                    lsm: LsmTuning::default(),
                    postgres: config.postgres.clone(),
                    limits: config.limits,
                    max_connections: config.max_connections,
                    resp_addr: None,
                    resp_idle_timeout: None,
                    users: std::sync::Arc::clone(&config.users),
                    replication: replicated.then(|| ReplicationConfig {
                        replica_id: replica,
                        peers: peers.clone(),
                        log_sync: config.wal_sync.unwrap_or(SyncPolicy::Always),
                        timing: limedb_raft::RaftTiming::default(),
                        snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
                        keep_logs: DEFAULT_KEEP_LOGS,
                    }),
                })
                .await?;
                if replica == 1 {
                    specs.push(ShardSpec {
                        id,
                        url: format!("http://{}", shard.http_addr()),
                    });
                }
                shards.push(shard);
            }
        }
        let meta = if config.replicas > 1 {
            bind_map_group(&config).await?
        } else {
            Vec::new()
        };
        let shard_endpoints = shards
            .iter()
            .map(|s| {
                (
                    s.node().id(),
                    s.node().replica_id(),
                    s.http_addr(),
                    s.internal_addr(),
                )
            })
            .collect();
        let meta_endpoints: Vec<(u64, SocketAddr)> = meta
            .iter()
            .map(|m| (m.node().replica_id(), m.http_addr()))
            .collect();
        // Shards and the map group serve before the coordinator binds: it reads (or creates)
        // the cluster map from them.
        let (stop_servers, servers_shutdown) = crate::shutdown::channel();
        let mut servers = JoinSet::new();
        for server in shards.into_iter().chain(meta) {
            servers.spawn(server.run(servers_shutdown.clone()));
        }
        let coordinator = CoordinatorServer::bind(CoordinatorConfig {
            http_addr: SocketAddr::new(config.host, config.coordinator_port),
            shards: specs,
            vnodes_per_shard: config.vnodes_per_shard,
            shard_timeout: config.shard_timeout,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            connections_per_shard: DEFAULT_CONNECTIONS_PER_SHARD,
            limits: config.limits,
            max_connections: config.max_connections,
            resp_addr: Some(SocketAddr::new(config.host, config.resp_port)),
            resp_idle_timeout: None,
            users: std::sync::Arc::clone(&config.users),
            meta: meta_endpoints
                .iter()
                .map(|(_, addr)| format!("http://{addr}"))
                .collect(),
        })
        .await;
        let coordinator = match coordinator {
            Ok(c) => c,
            Err(e) => {
                stop_servers.trigger();
                while servers.join_next().await.is_some() {}
                return Err(e);
            }
        };
        let endpoints = DevEndpoints {
            coordinator: coordinator.http_addr(),
            resp: coordinator.resp_addr(),
            shards: shard_endpoints,
            meta: meta_endpoints,
        };
        Ok(DevCluster {
            servers,
            stop_servers,
            endpoints,
            coordinator,
        })
    }

    /// Where everything listens.
    pub fn endpoints(&self) -> DevEndpoints {
        self.endpoints.clone()
    }

    /// Runs until `shutdown`; the coordinator stops first (answering what it has in flight),
    /// then every shard and map-group replica drains and syncs.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServerError> {
        let DevCluster {
            mut servers,
            stop_servers,
            coordinator,
            ..
        } = self;
        let mut result = coordinator.run(shutdown).await;
        stop_servers.trigger();
        while let Some(joined) = servers.join_next().await {
            let server_result = joined.unwrap_or_else(|e| Err(ServerError::Task(e.to_string())));
            if result.is_ok() {
                result = server_result;
            }
        }
        result
    }
}

/// Binds the replicas of the map group (data under `<data_dir>/meta-replica-<r>`, as `limedb
/// meta` would keep it).
async fn bind_map_group(config: &DevConfig) -> Result<Vec<ShardServer>, ServerError> {
    let mut ports = Vec::with_capacity(DEV_META_REPLICAS);
    for r in 1..=DEV_META_REPLICAS {
        ports.push(match meta_replica_port(config.meta_port, r) {
            0 => free_port(config.host)?,
            port => port,
        });
    }
    let peers: std::collections::BTreeMap<u64, String> = ports
        .iter()
        .enumerate()
        .map(|(r, &port)| {
            (
                r as u64 + 1,
                format!("http://{}", SocketAddr::new(config.host, port)),
            )
        })
        .collect();
    let mut servers = Vec::with_capacity(ports.len());
    for (r, &port) in ports.iter().enumerate() {
        let replica = r as u64 + 1;
        servers.push(
            ShardServer::bind(ShardConfig::map_group_replica(
                SocketAddr::new(config.host, port),
                SocketAddr::new(config.host, default_internal_port(port)),
                config.data_dir.join(format!("meta-replica-{replica}")),
                ReplicationConfig {
                    replica_id: replica,
                    peers: peers.clone(),
                    log_sync: SyncPolicy::Always,
                    timing: limedb_raft::RaftTiming::default(),
                    snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
                    keep_logs: DEFAULT_KEEP_LOGS,
                },
                config.max_connections,
            ))
            .await?,
        );
    }
    Ok(servers)
}

/// Defaults of `limedb dev`: coordinator on 8080, shards on 7001-7003, data under ./limedb-data.
impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            coordinator_port: 8080,
            shard_ports: vec![7001, 7002, 7003],
            data_dir: PathBuf::from("limedb-data"),
            storage: StorageKind::Lsm,
            wal_sync: None,
            replicas: 3,
            postgres: None,
            vnodes_per_shard: limedb_cluster::DEFAULT_VNODES_PER_SHARD,
            limits: Limits::default(),
            shard_timeout: DEFAULT_SHARD_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            resp_port: 6379,
            meta_port: 7901,
            users: std::sync::Arc::new(crate::auth::Users::open()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(coordinator_port: u16, resp_port: u16, shard_ports: &[u16]) -> DevConfig {
        DevConfig {
            coordinator_port,
            resp_port,
            shard_ports: shard_ports.to_vec(),
            replicas: 1,
            meta_port: 0,
            ..DevConfig::default()
        }
    }

    #[test]
    fn replicas_take_ports_a_hundred_apart_and_clashes_name_the_replica() {
        assert_eq!(replica_port(7001, 1), 7001);
        assert_eq!(replica_port(7001, 3), 7201);
        assert_eq!(replica_port(0, 2), 0);
        // The default 3 x 3 layout is free of clashes.
        assert!(check_port_plan(&DevConfig::default()).is_ok());
        let clash = DevConfig {
            shard_ports: vec![7001, 7101],
            ..DevConfig::default()
        };
        let err = check_port_plan(&clash).expect_err("clash").to_string();
        assert!(err.contains("shard 1 replica 2's HTTP port"), "{err}");
        assert!(err.contains("shard 2 replica 1's HTTP port"), "{err}");
        // The map group's ports are planned too.
        let clash = DevConfig {
            meta_port: 7002,
            ..DevConfig::default()
        };
        let err = check_port_plan(&clash).expect_err("clash").to_string();
        assert!(err.contains("map-group replica 1's HTTP port"), "{err}");
    }

    #[test]
    fn the_default_ports_and_free_ports_pass_the_plan() {
        // The coordinator's RESP listener sits where Redis clients look first.
        assert_eq!(DevConfig::default().resp_port, 6379);
        assert!(check_port_plan(&DevConfig::default()).is_ok());
        assert!(check_port_plan(&plan(0, 0, &[0, 0, 0])).is_ok());
        assert!(check_port_plan(&plan(8080, 0, &[0, 7002, 0])).is_ok());
    }

    #[test]
    fn a_shared_port_is_refused_naming_both_listeners() {
        // Shard 3's internal port (34307 + 10000) is shard 1's HTTP port.
        let err = check_port_plan(&plan(0, 0, &[44307, 40117, 34307]))
            .expect_err("clash")
            .to_string();
        assert!(err.contains("port 44307"), "{err}");
        assert!(err.contains("shard 1's HTTP port"), "{err}");
        assert!(err.contains("shard 3's internal port"), "{err}");
        let err = check_port_plan(&plan(7001, 6379, &[7001]))
            .expect_err("clash")
            .to_string();
        assert!(err.contains("coordinator's HTTP port") && err.contains("shard 1's HTTP port"));
        assert!(check_port_plan(&plan(8080, 8080, &[7001])).is_err());
        assert!(check_port_plan(&plan(8080, 6379, &[7001, 7001])).is_err());
    }
}
