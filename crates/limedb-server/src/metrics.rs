//! Prometheus metrics of a node, exposed as text on `GET /metrics`.
//!
//! Every node counts requests and errors per API and operation and keeps their latency
//! histograms; a coordinator adds per-shard forwarding latency, errors and up/down state; a shard
//! adds its storage figures. Handles for the hot path are resolved once at start-up, so recording
//! a request is a few atomic operations and no label lookup.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The API a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// The HTTP/JSON API.
    Http = 0,
    /// The internal binary protocol (coordinator to shard).
    Internal = 1,
}

/// A client-visible operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read one key.
    Get = 0,
    /// Write one key.
    Set = 1,
    /// Delete one key.
    Delete = 2,
    /// List a page of keys.
    Keys = 3,
    /// A Redis command or transaction forwarded by a coordinator's RESP listener.
    Command = 4,
}

const APIS: [(Api, &str); 2] = [(Api::Http, "http"), (Api::Internal, "internal")];
const OPS: [(Op, &str); 5] = [
    (Op::Get, "get"),
    (Op::Set, "set"),
    (Op::Delete, "del"),
    (Op::Keys, "keys"),
    (Op::Command, "command"),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    api: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabels {
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone)]
struct OpHandles {
    requests: Counter,
    errors: Counter,
    latency: Histogram,
}

/// Per-shard handles on the coordinator.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    /// Latency of requests forwarded to this shard.
    pub forward_latency: Histogram,
    /// Forwarded requests that failed (unreachable, timeout, shard-side error).
    pub forward_errors: Counter,
    /// 1 while the shard is reachable, 0 while it is down.
    pub up: Gauge,
}

impl ShardMetrics {
    /// Handles registered nowhere (for links whose figures are reported elsewhere).
    pub fn unregistered() -> ShardMetrics {
        ShardMetrics {
            forward_latency: latency_histogram(),
            forward_errors: Counter::default(),
            up: Gauge::default(),
        }
    }
}

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    ops: Vec<OpHandles>,
    forward_latency: Family<ShardLabels, Histogram, fn() -> Histogram>,
    forward_errors: Family<ShardLabels, Counter>,
    shard_up: Family<ShardLabels, Gauge>,
    connections: Family<ListenerLabels, Gauge>,
    /// Live keys in this shard's storage (shards only).
    pub storage_keys: Gauge,
    /// Bytes of live keys and values (shards only).
    pub storage_live_bytes: Gauge,
    /// Bytes of the storage log on disk (shards only).
    pub storage_log_bytes: Gauge,
    storage_engine: EngineGauges,
    /// Replication figures (replicated shards; zero elsewhere).
    pub raft: RaftGauges,
    /// The move in progress (coordinators with `--meta` and map-group replicas; zero elsewhere).
    moves: MoveGauges,
    /// Credentials refused by the client listeners since start (set before each scrape).
    pub auth_failures: Gauge,
}

/// A move's figures as `/metrics` shows them (see [`MoveGauges`]); a node leaves at 0 what it
/// does not know.
#[derive(Clone, Copy, Debug, Default)]
pub struct MoveFigures {
    /// 1 while a move is in progress.
    pub in_progress: u64,
    /// Transfers of that move.
    pub transfers: u64,
    /// Of those, the ones finished.
    pub transfers_done: u64,
    /// Keys the map records as copied (coordinator).
    pub keys_copied: u64,
    /// Keys copied so far by the copies in progress (driver).
    pub copy_keys: u64,
    /// The sources' estimate of the keys those copies move (driver).
    pub copy_keys_estimated: u64,
    /// The longest cut-over, in ms (driver).
    pub longest_cut_over_ms: u64,
    /// Keys forwarded by catch-ups (driver).
    pub catch_up_keys: u64,
    /// Copies started over (driver).
    pub copies_restarted: u64,
    /// The ring epoch routed by (coordinator).
    pub ring_epoch: u64,
}

/// A move's progress, set at each scrape: on a coordinator from the cluster map it routes by,
/// on the map group's leader from its move driver.
#[derive(Default)]
pub struct MoveGauges {
    /// 1 while a move is in progress.
    pub in_progress: Gauge,
    /// Transfers of the move in progress.
    pub transfers: Gauge,
    /// Of those, the ones finished.
    pub transfers_done: Gauge,
    /// Keys the map records as copied by the move's transfers (coordinator).
    pub keys_copied: Gauge,
    /// Keys copied so far by the copies in progress (driver).
    pub copy_keys: Gauge,
    /// The sources' estimate of the keys those copies move (driver).
    pub copy_keys_estimated: Gauge,
    /// The longest cut-over since the replica started, in ms (driver).
    pub longest_cut_over_ms: Gauge,
    /// Keys forwarded by catch-ups since the replica started (driver).
    pub catch_up_keys: Gauge,
    /// Copies started over because their capture was lost (driver).
    pub copies_restarted: Gauge,
    /// The ring epoch (coordinator).
    pub ring_epoch: Gauge,
}

/// A replica's figures, set at each scrape, plus the commit latency its writes see.
pub struct RaftGauges {
    /// The current term.
    pub term: Gauge,
    /// 1 while this replica leads its group.
    pub leader: Gauge,
    /// Leader changes seen since start.
    pub leader_changes: Gauge,
    /// Index of the last log entry.
    pub last_log_index: Gauge,
    /// Index of the last committed entry.
    pub commit_index: Gauge,
    /// Index of the last applied entry.
    pub applied_index: Gauge,
    /// On the leader: entries each follower is behind.
    pub replication_lag: Family<ReplicaLabels, Gauge>,
    /// Snapshots sent to followers.
    pub snapshots_sent: Gauge,
    /// Bytes of snapshots sent.
    pub snapshot_bytes_sent: Gauge,
    /// Snapshots received and installed.
    pub snapshots_received: Gauge,
    /// Bytes of the Raft log on disk.
    pub log_bytes: Gauge,
    /// Entries proposed as leader.
    pub proposals: Gauge,
    /// Writes those entries carried.
    pub proposed_writes: Gauge,
    /// Reads served under the leader's lease.
    pub lease_reads: Gauge,
    /// Read rounds run (reads that could not use the lease).
    pub read_rounds: Gauge,
    /// Time from handing a write to the group to its commit and apply on the leader.
    pub commit_latency: Histogram,
}

/// Labels of a per-replica metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// The replica id.
    pub replica: String,
}

/// Figures copied from the storage engine's stats at each scrape.
#[derive(Default)]
struct EngineGauges {
    level_tables: Family<LevelLabels, Gauge>,
    level_bytes: Family<LevelLabels, Gauge>,
    cache_hits: Gauge,
    cache_misses: Gauge,
    kept_memtable_bytes: Gauge,
    flushes: Gauge,
    compactions: Gauge,
    table_bytes_written: Gauge,
    user_bytes_written: Gauge,
    write_slowdowns: Gauge,
    write_stalls: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 20 µs .. ~21 s in powers of two.
    Histogram::new(exponential_buckets(0.000_02, 2.0, 21))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OpLabels, Counter>::default();
        let errors = Family::<OpLabels, Counter>::default();
        let latency = Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "limedb_requests",
            "Requests received, by API and operation",
            requests.clone(),
        );
        registry.register(
            "limedb_request_errors",
            "Requests answered with an error (any 4xx/5xx or error frame), by API and operation",
            errors.clone(),
        );
        registry.register(
            "limedb_request_duration_seconds",
            "Time to answer a request, by API and operation",
            latency.clone(),
        );
        let mut ops = Vec::with_capacity(APIS.len() * OPS.len());
        for (_, api) in APIS {
            for (_, op) in OPS {
                let labels = OpLabels { api, op };
                ops.push(OpHandles {
                    requests: requests.get_or_create(&labels).clone(),
                    errors: errors.get_or_create(&labels).clone(),
                    latency: latency.get_or_create(&labels).clone(),
                });
            }
        }
        let forward_latency =
            Family::<ShardLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let forward_errors = Family::<ShardLabels, Counter>::default();
        let shard_up = Family::<ShardLabels, Gauge>::default();
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "limedb_shard_forward_duration_seconds",
            "Coordinator: round-trip time of requests forwarded to each shard",
            forward_latency.clone(),
        );
        registry.register(
            "limedb_shard_forward_errors",
            "Coordinator: forwarded requests that failed, by shard",
            forward_errors.clone(),
        );
        registry.register(
            "limedb_shard_up",
            "Coordinator: 1 while the shard is reachable, 0 while it is down",
            shard_up.clone(),
        );
        registry.register(
            "limedb_open_connections",
            "Client connections currently open, by listener",
            connections.clone(),
        );
        let auth_failures = Gauge::default();
        registry.register(
            "limedb_auth_failures",
            "Credentials refused by the HTTP and RESP listeners (wrong user or password) since start",
            auth_failures.clone(),
        );
        let storage_keys = Gauge::default();
        let storage_live_bytes = Gauge::default();
        let storage_log_bytes = Gauge::default();
        registry.register(
            "limedb_storage_keys",
            "Shard: live keys in storage",
            storage_keys.clone(),
        );
        registry.register(
            "limedb_storage_live_bytes",
            "Shard: bytes of live keys and values",
            storage_live_bytes.clone(),
        );
        registry.register(
            "limedb_storage_log_bytes",
            "Shard: bytes of the storage log on disk",
            storage_log_bytes.clone(),
        );
        let storage_engine = EngineGauges::default();
        for (name, help, gauge) in [
            (
                "limedb_storage_cache_hits",
                "Shard: block cache hits since the engine opened",
                &storage_engine.cache_hits,
            ),
            (
                "limedb_storage_cache_misses",
                "Shard: block cache misses since the engine opened",
                &storage_engine.cache_misses,
            ),
            (
                "limedb_storage_kept_memtable_bytes",
                "Shard: bytes of the memtable the last flush kept for point reads, lent from the block cache",
                &storage_engine.kept_memtable_bytes,
            ),
            (
                "limedb_storage_flushes",
                "Shard: memtables flushed to tables since the engine opened",
                &storage_engine.flushes,
            ),
            (
                "limedb_storage_compactions",
                "Shard: compactions since the engine opened",
                &storage_engine.compactions,
            ),
            (
                "limedb_storage_table_bytes_written",
                "Shard: bytes written to tables by flushes and compactions since the engine opened",
                &storage_engine.table_bytes_written,
            ),
            (
                "limedb_storage_user_bytes_written",
                "Shard: key and value bytes written by users since the engine opened",
                &storage_engine.user_bytes_written,
            ),
            (
                "limedb_storage_write_slowdowns",
                "Shard: write batches paused because L0 held too many tables, since the engine opened",
                &storage_engine.write_slowdowns,
            ),
            (
                "limedb_storage_write_stalls",
                "Shard: write batches that waited for compaction because L0 was full, since the engine opened",
                &storage_engine.write_stalls,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "limedb_storage_level_tables",
            "Shard: LSM tables per level",
            storage_engine.level_tables.clone(),
        );
        registry.register(
            "limedb_storage_level_bytes",
            "Shard: bytes of LSM tables per level",
            storage_engine.level_bytes.clone(),
        );
        let raft = RaftGauges {
            term: Gauge::default(),
            leader: Gauge::default(),
            leader_changes: Gauge::default(),
            last_log_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            replication_lag: Family::default(),
            snapshots_sent: Gauge::default(),
            snapshot_bytes_sent: Gauge::default(),
            snapshots_received: Gauge::default(),
            log_bytes: Gauge::default(),
            proposals: Gauge::default(),
            proposed_writes: Gauge::default(),
            lease_reads: Gauge::default(),
            read_rounds: Gauge::default(),
            commit_latency: latency_histogram(),
        };
        for (name, help, gauge) in [
            (
                "limedb_raft_term",
                "Replica: the current Raft term",
                &raft.term,
            ),
            (
                "limedb_raft_leader",
                "Replica: 1 while this replica leads its group",
                &raft.leader,
            ),
            (
                "limedb_raft_leader_changes",
                "Replica: leader changes seen since start",
                &raft.leader_changes,
            ),
            (
                "limedb_raft_last_log_index",
                "Replica: index of the last log entry",
                &raft.last_log_index,
            ),
            (
                "limedb_raft_commit_index",
                "Replica: index of the last committed entry",
                &raft.commit_index,
            ),
            (
                "limedb_raft_applied_index",
                "Replica: index of the last applied entry",
                &raft.applied_index,
            ),
            (
                "limedb_raft_snapshots_sent",
                "Replica: snapshots sent to followers since start",
                &raft.snapshots_sent,
            ),
            (
                "limedb_raft_snapshot_bytes_sent",
                "Replica: bytes of snapshots sent since start",
                &raft.snapshot_bytes_sent,
            ),
            (
                "limedb_raft_snapshots_received",
                "Replica: snapshots received and installed since start",
                &raft.snapshots_received,
            ),
            (
                "limedb_raft_log_bytes",
                "Replica: bytes of the Raft log on disk",
                &raft.log_bytes,
            ),
            (
                "limedb_raft_proposals",
                "Replica: log entries proposed as leader since start (each a batch of writes)",
                &raft.proposals,
            ),
            (
                "limedb_raft_proposed_writes",
                "Replica: writes carried by those entries",
                &raft.proposed_writes,
            ),
            (
                "limedb_raft_lease_reads",
                "Replica: reads served as leader under its lease, without a round to its peers",
                &raft.lease_reads,
            ),
            (
                "limedb_raft_read_rounds",
                "Replica: read-index rounds run for reads that could not use the lease",
                &raft.read_rounds,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "limedb_raft_replication_lag",
            "Replica (leader): entries each follower is behind",
            raft.replication_lag.clone(),
        );
        registry.register(
            "limedb_raft_commit_duration_seconds",
            "Replica (leader): time from handing a write to the group to its commit and apply",
            raft.commit_latency.clone(),
        );
        let moves = MoveGauges::default();
        for (name, help, gauge) in [
            ("limedb_move_in_progress", "1 while a move of ranges between shards is in progress", &moves.in_progress),
            ("limedb_move_transfers", "Transfers (source, destination) of the move in progress", &moves.transfers),
            ("limedb_move_transfers_done", "Transfers of the move in progress that are finished", &moves.transfers_done),
            ("limedb_move_keys_copied", "Coordinator: keys the cluster map records as copied by the move in progress", &moves.keys_copied),
            ("limedb_move_copy_keys", "Move driver: keys copied so far by the transfers being copied", &moves.copy_keys),
            ("limedb_move_copy_keys_estimated", "Move driver: the sources' estimate of the keys those transfers move", &moves.copy_keys_estimated),
            ("limedb_move_longest_cut_over_ms", "Move driver: the longest cut-over (a transfer's ranges fenced) since start, in ms", &moves.longest_cut_over_ms),
            ("limedb_move_catch_up_keys", "Move driver: keys forwarded by catch-ups since start", &moves.catch_up_keys),
            ("limedb_move_copies_restarted", "Move driver: copies started over since start because their change capture was lost", &moves.copies_restarted),
            ("limedb_cluster_ring_epoch", "Coordinator: the ring epoch it routes by", &moves.ring_epoch),
        ] {
            registry.register(name, help, gauge.clone());
        }
        Metrics {
            auth_failures,
            moves,
            raft,
            storage_engine,
            registry,
            ops,
            forward_latency,
            forward_errors,
            shard_up,
            connections,
            storage_keys,
            storage_live_bytes,
            storage_log_bytes,
        }
    }

    fn op(&self, api: Api, op: Op) -> Option<&OpHandles> {
        self.ops.get(api as usize * OPS.len() + op as usize)
    }

    /// Records one finished request that started at `started`.
    pub fn record(&self, api: Api, op: Op, started: Instant, ok: bool) {
        if let Some(h) = self.op(api, op) {
            h.requests.inc();
            if !ok {
                h.errors.inc();
            }
            h.latency.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Handles for one shard, as seen from the coordinator.
    pub fn shard(&self, shard: &str) -> ShardMetrics {
        let labels = ShardLabels {
            shard: shard.to_string(),
        };
        ShardMetrics {
            forward_latency: self.forward_latency.get_or_create(&labels).clone(),
            forward_errors: self.forward_errors.get_or_create(&labels).clone(),
            up: self.shard_up.get_or_create(&labels).clone(),
        }
    }

    /// The open-connections gauge of one listener ("http", "internal").
    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// Copies a replica's figures into the Raft gauges (before each scrape).
    pub fn set_raft(&self, replica: &limedb_raft::Replica, commit_index: Option<u64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let status = replica.status();
        let r = &self.raft;
        r.term.set(g(status.term));
        r.leader
            .set(i64::from(status.role == limedb_raft::Role::Leader));
        r.leader_changes
            .set(g(replica.counters().leader_changes.load(Relaxed)));
        r.last_log_index.set(g(status.last_log_index.unwrap_or(0)));
        r.commit_index.set(g(commit_index.unwrap_or(0)));
        r.applied_index.set(g(status.applied_index.unwrap_or(0)));
        r.snapshots_sent
            .set(g(replica.network_counters().snapshots_sent.load(Relaxed)));
        r.snapshot_bytes_sent.set(g(replica
            .network_counters()
            .snapshot_bytes_sent
            .load(Relaxed)));
        r.snapshots_received
            .set(g(replica.counters().snapshots_received.load(Relaxed)));
        r.log_bytes.set(g(replica.log_bytes()));
        let counters = replica.counters();
        r.proposals.set(g(counters.proposals.load(Relaxed)));
        r.proposed_writes
            .set(g(counters.proposed_writes.load(Relaxed)));
        r.lease_reads.set(g(counters.lease_reads.load(Relaxed)));
        r.read_rounds.set(g(counters.read_rounds.load(Relaxed)));
        let last = status.last_log_index.unwrap_or(0);
        r.replication_lag.clear();
        if status.role == limedb_raft::Role::Leader {
            for m in status.members.iter().filter(|m| m.id != status.id) {
                let lag = m.matched.map_or(last, |i| last.saturating_sub(i));
                r.replication_lag
                    .get_or_create(&ReplicaLabels {
                        replica: m.id.to_string(),
                    })
                    .set(g(lag));
            }
        }
    }

    /// Copies a move's figures into the gauges (before each scrape).
    pub fn set_moves(&self, f: &MoveFigures) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let m = &self.moves;
        m.in_progress.set(g(f.in_progress));
        m.transfers.set(g(f.transfers));
        m.transfers_done.set(g(f.transfers_done));
        m.keys_copied.set(g(f.keys_copied));
        m.copy_keys.set(g(f.copy_keys));
        m.copy_keys_estimated.set(g(f.copy_keys_estimated));
        m.longest_cut_over_ms.set(g(f.longest_cut_over_ms));
        m.catch_up_keys.set(g(f.catch_up_keys));
        m.copies_restarted.set(g(f.copies_restarted));
        m.ring_epoch.set(g(f.ring_epoch));
    }

    /// Copies a storage engine's figures into the gauges (shards, before each scrape).
    pub fn set_storage(&self, stats: &limedb_storage::EngineStats) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.storage_keys.set(g(stats.keys));
        self.storage_live_bytes.set(g(stats.live_bytes));
        self.storage_log_bytes.set(g(stats.log_bytes));
        let e = &self.storage_engine;
        e.cache_hits.set(g(stats.cache_hits));
        e.cache_misses.set(g(stats.cache_misses));
        e.kept_memtable_bytes.set(g(stats.kept_memtable_bytes));
        e.flushes.set(g(stats.flushes));
        e.compactions.set(g(stats.compactions));
        e.table_bytes_written.set(g(stats.table_bytes_written));
        e.user_bytes_written.set(g(stats.user_bytes_written));
        e.write_slowdowns.set(g(stats.write_slowdowns));
        e.write_stalls.set(g(stats.write_stalls));
        for (level, figures) in stats.levels.iter().enumerate() {
            let labels = LevelLabels {
                level: level.to_string(),
            };
            e.level_tables.get_or_create(&labels).set(g(figures.tables));
            e.level_bytes.get_or_create(&labels).set(g(figures.bytes));
        }
    }

    /// The whole registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_appear_in_the_exposition() {
        let m = Metrics::new();
        m.record(Api::Http, Op::Get, Instant::now(), true);
        m.record(Api::Http, Op::Get, Instant::now(), false);
        let s = m.shard("1");
        s.up.set(1);
        m.connections("http").inc();
        let text = m.render();
        assert!(
            text.contains(r#"limedb_requests_total{api="http",op="get"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"limedb_request_errors_total{api="http",op="get"} 1"#));
        assert!(text.contains(r#"limedb_shard_up{shard="1"} 1"#));
        assert!(text.contains(r#"limedb_open_connections{listener="http"} 1"#));
        assert!(text.contains("limedb_request_duration_seconds_bucket"));
    }
}
