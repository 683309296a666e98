//! `limedb dev`: a whole local cluster — N shards and a coordinator — in one process.
//!
//! Each shard keeps its data under `<data_dir>/shard-<id>`, exactly where a standalone
//! `limedb shard` started from the same directory would, so the two can be used interchangeably.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use limedb_cluster::ShardId;
use limedb_storage::SyncPolicy;
use tokio::task::JoinSet;

use crate::config::{
    CoordinatorConfig, Limits, LsmTuning, PgSettings, ShardConfig, ShardSpec, StorageKind,
    DEFAULT_CONNECTIONS_PER_SHARD, DEFAULT_HEALTH_INTERVAL, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SHARD_TIMEOUT,
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
    /// Sync policy of every shard.
    pub wal_sync: SyncPolicy,
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
}

/// A bound local cluster.
pub struct DevCluster {
    shards: Vec<ShardServer>,
    coordinator: CoordinatorServer,
}

/// Addresses of a running local cluster.
#[derive(Clone, Debug)]
pub struct DevEndpoints {
    /// Coordinator HTTP address.
    pub coordinator: SocketAddr,
    /// Coordinator RESP address.
    pub resp: Option<SocketAddr>,
    /// `(id, http, internal)` of each shard.
    pub shards: Vec<(ShardId, SocketAddr, SocketAddr)>,
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
    for (i, &port) in config.shard_ports.iter().enumerate() {
        let id = i + 1;
        planned.push((port, format!("shard {id}'s HTTP port")));
        planned.push((
            default_internal_port(port),
            format!("shard {id}'s internal port (its HTTP port + 10000)"),
        ));
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

impl DevCluster {
    /// Opens every shard's storage and binds every listener.
    pub async fn bind(config: DevConfig) -> Result<Self, ServerError> {
        if config.shard_ports.is_empty() {
            return Err(ServerError::Config(
                "a cluster needs at least one shard".into(),
            ));
        }
        check_port_plan(&config)?;
        let mut shards = Vec::with_capacity(config.shard_ports.len());
        for (i, port) in config.shard_ports.iter().enumerate() {
            let id = ShardId(i as u32 + 1);
            let shard = ShardServer::bind(ShardConfig {
                id,
                http_addr: SocketAddr::new(config.host, *port),
                internal_addr: SocketAddr::new(config.host, default_internal_port(*port)),
                data_dir: config.data_dir.join(format!("shard-{id}")),
                storage: config.storage,
                wal_sync: config.wal_sync,
                lsm: LsmTuning::default(),
                postgres: config.postgres.clone(),
                limits: config.limits,
                max_connections: config.max_connections,
                resp_addr: None,
                resp_idle_timeout: None,
            })
            .await?;
            shards.push(shard);
        }
        let specs = shards
            .iter()
            .map(|s| ShardSpec {
                id: s.node().id(),
                url: format!("http://{}", s.http_addr()),
            })
            .collect();
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
        })
        .await?;
        Ok(DevCluster {
            shards,
            coordinator,
        })
    }

    /// Where everything listens.
    pub fn endpoints(&self) -> DevEndpoints {
        DevEndpoints {
            coordinator: self.coordinator.http_addr(),
            resp: self.coordinator.resp_addr(),
            shards: self
                .shards
                .iter()
                .map(|s| (s.node().id(), s.http_addr(), s.internal_addr()))
                .collect(),
        }
    }

    /// Runs until `shutdown`; the coordinator stops first (answering what it has in flight),
    /// then every shard drains and syncs.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServerError> {
        let (stop_shards, shards_shutdown) = crate::shutdown::channel();
        let mut shards = JoinSet::new();
        for shard in self.shards {
            shards.spawn(shard.run(shards_shutdown.clone()));
        }
        let mut result = self.coordinator.run(shutdown).await;
        stop_shards.trigger();
        while let Some(joined) = shards.join_next().await {
            let shard_result = joined.unwrap_or_else(|e| Err(ServerError::Task(e.to_string())));
            if result.is_ok() {
                result = shard_result;
            }
        }
        result
    }
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
            wal_sync: SyncPolicy::default(),
            postgres: None,
            vnodes_per_shard: limedb_cluster::DEFAULT_VNODES_PER_SHARD,
            limits: Limits::default(),
            shard_timeout: DEFAULT_SHARD_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            resp_port: 6379,
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
            ..DevConfig::default()
        }
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
