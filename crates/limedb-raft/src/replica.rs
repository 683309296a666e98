//! [`Replica`]: one replica of a shard's Raft group, as the shard uses it. Starts openraft over
//! our log store, state machine and network, and offers what a shard needs: [`Replica::write`]
//! (through the proposer), [`Replica::read_barrier`] (lease, else batched ReadIndex), status, membership
//! changes, and the entry point for RPCs from peers ([`Replica::handle_rpc`]).
//!
//! # The proposer: batching writes into entries
//!
//! openraft 0.9 appends each proposal on its own and waits for that append's fsync before it
//! takes the next, so one proposal per client write would cost an fsync each. Instead every
//! write goes to the proposer task, which waits until fewer than [`MAX_PROPOSALS_IN_FLIGHT`]
//! of its entries are unapplied, then takes *every* write queued meanwhile (up to
//! [`MAX_BATCH_WRITES`] / [`MAX_BATCH_BYTES`]) into one entry. The more writers wait, the more
//! each entry (and each fsync on each replica) carries: group commit across the group. A write
//! is answered once its entry is committed and applied on this replica.
//!
//! # The read barrier
//!
//! A read must not be served by a leader that has been deposed without knowing it. Before
//! reading, a caller awaits [`Replica::read_barrier`]. While the leader holds its lease
//! ([`crate::lease`]) and has applied an entry of its own term, that returns at once. Otherwise
//! the barrier task runs openraft's `ensure_linearizable` (a heartbeat round to a quorum, then a
//! wait until this replica has applied everything committed), one round at a time, and answers
//! every read that arrived before the round started. Concurrent reads therefore share rounds,
//! and a read is never answered by a round that began before it arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use limedb_storage::{Engine, SyncPolicy};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::VoteResponse;
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::codec::{from_bytes, to_bytes};
use crate::election::{answer_pre_vote, run_elections, LeaderContact};
use crate::error::{ReplicaError, Result};
use crate::lease::LeaseClock;
use crate::log_store::{LogOptions, LogStore};
use crate::network::{
    safe_relative_path, Network, NetworkCounters, RaftTransport, RpcKind, SnapshotBegin,
    SnapshotChunk, SnapshotFinish,
};
use crate::state_machine::{EngineFactory, SnapshotFiles, StateMachineStore};
use crate::types::{
    Command, LogId, Membership, Raft, ReplicaId, ReplicaNode, ReplicatedWrite, SnapshotMeta, Vote,
};

/// Entries proposed but not yet committed and applied, at most. One: while an entry commits,
/// the next batch forms behind it. On the 2-core benchmark machine two in flight halved the
/// writes per entry and cost a third of the throughput (every entry costs each replica an
/// RPC, a wakeup of its log writer and an fsync, whatever it carries).
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 1;
/// Most writes in one entry.
pub const MAX_BATCH_WRITES: usize = 4096;
/// An entry stops growing once its keys and values reach this many bytes.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Writes waiting for the proposer before callers wait for room.
const PROPOSAL_QUEUE_DEPTH: usize = 16_384;
/// A read barrier round that has not finished after this long fails its readers.
const READ_ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the applied position is made durable.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// A write not committed this long after it was proposed is answered "outcome unknown" (its
/// entry may still commit later): a leader cut off from its peers never hangs a client.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// While a write waits for its commit, this often the leader checks it still hears from a
/// majority; after two leases of silence the write is answered `OutcomeUnknown` at once.
const COMMIT_PROGRESS_CHECK: Duration = Duration::from_millis(100);

/// Raft timing, in milliseconds.
///
/// A follower that hears no leader for the *lease* `E` ([`RaftTiming::election_ms`]) stops
/// defending it (it would vote for another candidate); it stands for election itself after
/// `E` plus its slot offset ([`RaftTiming::stand_after`]). The slots are staggered by replica id
/// and rotate with the term, so after a leader dies the survivors stand one after another, E/4
/// apart, instead of splitting the vote (openraft 0.9 has no pre-vote; LimeDB adds one, see
/// `election`), and over successive elections every replica gets to be first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    /// The leader sends a heartbeat this often.
    pub heartbeat_ms: u64,
    /// The lease and base election timeout `E`.
    pub election_ms: u64,
}

impl Default for RaftTiming {
    /// Heartbeats every 50 ms; E = 400 ms: a new leader stands 0.4-0.75 s after the old one
    /// last sent a heartbeat.
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 50,
            election_ms: 400,
        }
    }
}

impl RaftTiming {
    /// The lease: how long a follower defends a silent leader (refuses to vote for another).
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.election_ms.max(3 * self.heartbeat_ms).max(30))
    }

    /// How long after a quorum acknowledged it a leader serves reads from its own state: the
    /// lease less a quarter, the margin for clocks running at different rates
    /// ([`crate::lease`]).
    pub fn read_lease(&self) -> Duration {
        self.lease() - self.lease() / 4
    }

    /// When replica `id`, in `term`, stands for election after hearing no leader: the lease
    /// and a margin of `E/8` (its peers heard the last heartbeat a moment later than it did,
    /// and grant a pre-vote only once their own lease has run out), then slot
    /// `k = (id + term) mod 4` at `k·E/4`, plus up to `jitter` (a fraction from 0 to 1) of
    /// `E/8`.
    pub fn stand_after(&self, id: ReplicaId, term: u64, jitter: f64) -> Duration {
        let lease = self.lease();
        let e = lease.as_millis() as u64;
        let slot = id.wrapping_add(term) % 4;
        let spread = (e / 8) as f64 * jitter.clamp(0.0, 1.0);
        lease + Duration::from_millis(e / 8 + slot * e / 4 + spread as u64)
    }
}

/// Everything a replica needs to start.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// The shard this group serves (for logs and the cluster name).
    pub shard_id: u32,
    /// This replica's id.
    pub replica_id: ReplicaId,
    /// Where the replica keeps `raft/` (log), `sm/` (engine) and `snapshots/`.
    pub dir: PathBuf,
    /// When Raft log appends reach the disk.
    pub log_sync: SyncPolicy,
    /// Heartbeat and election timing.
    pub timing: RaftTiming,
    /// A snapshot is built every this many entries; the log is purged up to it.
    pub snapshot_logs: u64,
    /// Entries kept in the log below the last snapshot, for followers a little behind.
    pub keep_logs: u64,
    /// Opens the engine the state machine applies to.
    pub engine_factory: EngineFactory,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("shard_id", &self.shard_id)
            .field("replica_id", &self.replica_id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A replica's role, as health reports show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leads the group: serves reads and writes.
    Leader,
    /// A voter following a leader.
    Follower,
    /// Standing for election.
    Candidate,
    /// A member that receives the log but does not vote (joining, or not yet part of a group).
    Learner,
    /// Stopped.
    Shutdown,
}

impl Role {
    /// Lower-case name: "leader", "follower", ...
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// A member of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its replica id.
    pub id: ReplicaId,
    /// Its HTTP URL.
    pub url: String,
    /// Whether it votes (false: a learner).
    pub voter: bool,
    /// On the leader: the index up to which its log matches the leader's (`None`: unknown).
    pub matched: Option<u64>,
}

/// What a replica knows about itself and its group.
#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    /// This replica's id.
    pub id: ReplicaId,
    /// Its role.
    pub role: Role,
    /// The leader, if known: id and URL.
    pub leader: Option<(ReplicaId, String)>,
    /// The current term.
    pub term: u64,
    /// Index of the last entry in the log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the engine.
    pub applied_index: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot_index: Option<u64>,
    /// Members of the effective membership.
    pub members: Vec<Member>,
    /// On the leader: how long since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct ReplicaCounters {
    /// Times this replica saw the leader change.
    pub leader_changes: AtomicU64,
    /// Snapshots received and installed.
    pub snapshots_received: AtomicU64,
    /// Entries this replica proposed as leader.
    pub proposals: AtomicU64,
    /// Writes those entries carried.
    pub proposed_writes: AtomicU64,
    /// Sum of the time from proposing an entry to its commit and apply, in microseconds.
    pub commit_micros_sum: AtomicU64,
    /// Read barrier rounds run (reads that could not use the lease).
    pub read_rounds: AtomicU64,
    /// Reads served under the leader's lease, without a round.
    pub lease_reads: AtomicU64,
}

struct Proposal {
    writes: Vec<ReplicatedWrite>,
    /// A new group record: such a proposal gets an entry of its own (never merged with another
    /// proposal), so that the writes queued before it are in entries before it.
    record: Option<Bytes>,
    reply: oneshot::Sender<Result<Vec<bool>>>,
}

/// A snapshot being received from the leader.
struct Incoming {
    begin: SnapshotBegin,
    dir: PathBuf,
    /// Bytes received of each file.
    received: Vec<u64>,
}

struct Inner {
    config: ReplicaConfig,
    raft: Raft,
    /// When a leader was last heard from (for elections).
    contact: Arc<LeaderContact>,
    /// Which peers acknowledged this leader when (for lease reads).
    lease: Arc<LeaseClock>,
    sm: StateMachineStore,
    log: LogStore,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::UnboundedSender<oneshot::Sender<Result<()>>>,
    incoming: tokio::sync::Mutex<Option<Incoming>>,
    counters: Arc<ReplicaCounters>,
    network_counters: Arc<NetworkCounters>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Why openraft's core stopped, once it has without [`Replica::shutdown`].
    stopped: tokio::sync::watch::Receiver<Option<String>>,
}

/// One replica of a shard's group; cheap to clone.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("shard", &self.inner.config.shard_id)
            .field("replica", &self.inner.config.replica_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn raft_err(e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Raft(e.to_string())
}

impl Replica {
    /// Opens the replica's storage under `config.dir` and starts openraft. The replica is not
    /// part of a group until [`Replica::initialize`] forms one or a leader adds it.
    pub async fn open(config: ReplicaConfig, transport: Arc<dyn RaftTransport>) -> Result<Replica> {
        let dir = config.dir.clone();
        let log_options = LogOptions {
            sync: config.log_sync,
            ..LogOptions::default()
        };
        let factory = Arc::clone(&config.engine_factory);
        let (log, sm) =
            tokio::task::spawn_blocking(move || -> Result<(LogStore, StateMachineStore)> {
                let log = LogStore::open(&dir.join("raft"), log_options)?;
                let sm = StateMachineStore::open(&dir.join("sm"), &dir.join("snapshots"), factory)?;
                Ok((log, sm))
            })
            .await
            .map_err(raft_err)??;
        // Before openraft writes anything: a replica that never acknowledged a leader has no
        // lease to defend (see `LeaderContact`).
        let log_pristine = log.is_pristine();
        let lease = config.timing.lease().as_millis() as u64;
        let raft_config = Config {
            cluster_name: format!("limedb-shard-{}", config.shard_id),
            heartbeat_interval: config.timing.heartbeat_ms,
            // openraft's own election timer is off; its leader lease (a follower refuses to
            // vote for another candidate this long after it heard the leader) is `max`.
            election_timeout_min: lease.saturating_sub(1).max(1),
            election_timeout_max: lease,
            // A heartbeat round for a read must finish well inside an election timeout.
            install_snapshot_timeout: 10_000,
            max_payload_entries: 64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: config.keep_logs,
            purge_batch_size: 256,
            // Elections are LimeDB's, with a pre-vote (see `election`).
            enable_elect: false,
            ..Config::default()
        }
        .validate()
        .map_err(raft_err)?;
        let network_counters = Arc::new(NetworkCounters::default());
        let lease_clock = Arc::new(LeaseClock::default());
        let network = Network::new(
            config.replica_id,
            Arc::clone(&transport),
            Arc::clone(&network_counters),
            Arc::clone(&lease_clock),
        );
        let raft = Raft::new(
            config.replica_id,
            Arc::new(raft_config),
            network,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(raft_err)?;
        let (proposals, proposal_rx) = mpsc::channel(PROPOSAL_QUEUE_DEPTH);
        let (reads, read_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(ReplicaCounters::default());
        let (stopped_tx, stopped) = tokio::sync::watch::channel(None);
        let contact = Arc::new(if log_pristine {
            LeaderContact::never()
        } else {
            LeaderContact::default()
        });
        let replica = Replica {
            inner: Arc::new(Inner {
                config,
                raft: raft.clone(),
                contact: Arc::clone(&contact),
                lease: lease_clock,
                sm: sm.clone(),
                log,
                proposals,
                reads,
                incoming: tokio::sync::Mutex::new(None),
                counters: Arc::clone(&counters),
                network_counters,
                tasks: Mutex::new(Vec::new()),
                stopped,
            }),
        };
        let me = replica.inner.config.replica_id;
        let tasks = vec![
            tokio::spawn(run_elections(
                raft.clone(),
                me,
                replica.inner.config.timing,
                contact,
                replica.inner.log.clone(),
                transport,
            )),
            tokio::spawn(run_proposer(
                raft.clone(),
                me,
                proposal_rx,
                Arc::clone(&counters),
            )),
            tokio::spawn(run_read_barrier(
                raft.clone(),
                read_rx,
                Arc::clone(&counters),
            )),
            tokio::spawn(watch_core(raft.clone(), Arc::clone(&counters), stopped_tx)),
            tokio::spawn(persist_applied(sm)),
        ];
        lock(&replica.inner.tasks).extend(tasks);
        Ok(replica)
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.inner.config.replica_id
    }

    /// Whether this replica has never belonged to a group: nothing in its log, no vote, an
    /// engine that applied nothing. Only such a replica may [`Replica::initialize`].
    pub fn is_pristine(&self) -> bool {
        self.inner.log.is_pristine() && self.inner.sm.applied().0.is_none()
    }

    /// The membership this replica holds (from its log or state machine).
    pub fn membership(&self) -> Membership {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// The membership this replica holds, once openraft has loaded its state (the newest
    /// membership entry of its log, or its state machine's).
    pub async fn stored_membership(&self) -> Result<Membership> {
        self.inner
            .raft
            .with_raft_state(|st| st.membership_state.effective().membership().clone())
            .await
            .map_err(raft_err)
    }

    /// Forms a new group of `peers` (this replica among them). Every first-starting replica of
    /// a group may call this with the same peers: Raft accepts the identical first entry from
    /// each. A replica that already belongs to a group refuses.
    pub async fn initialize(&self, peers: BTreeMap<ReplicaId, ReplicaNode>) -> Result<()> {
        match self.inner.raft.initialize(peers).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(raft_err(e)),
        }
    }

    /// The engine writes are applied to (replaced when a snapshot is installed).
    pub fn engine(&self) -> Arc<dyn Engine> {
        self.inner.sm.engine()
    }

    /// Counters for /metrics.
    pub fn counters(&self) -> &ReplicaCounters {
        &self.inner.counters
    }

    /// Snapshot counters of the network side.
    pub fn network_counters(&self) -> &NetworkCounters {
        &self.inner.network_counters
    }

    /// Bytes of the Raft log on disk.
    pub fn log_bytes(&self) -> u64 {
        self.inner.log.size_bytes()
    }

    /// Role, leader, term, indexes and members, from openraft's metrics.
    pub fn status(&self) -> ReplicaStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<ReplicaId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                url: node.url.clone(),
                voter: voters.contains(id),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .and_then(|l| l.map(|l| l.index))
                    .or_else(|| (*id == m.id).then_some(m.last_log_index).flatten()),
            })
            .collect();
        let leader = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| (id, n.url.clone())));
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        ReplicaStatus {
            id: m.id,
            role,
            leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            members,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    /// The committed index, as the Raft core knows it.
    pub async fn committed_index(&self) -> Option<u64> {
        self.inner
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .ok()
            .flatten()
    }

    /// The leader, if this replica knows one: id and URL.
    pub fn leader(&self) -> Option<(ReplicaId, String)> {
        self.status().leader
    }

    /// `Ok` when this replica leads its group (as far as it knows), else
    /// [`ReplicaError::NotLeader`] with the leader it knows.
    pub fn check_leader(&self) -> Result<()> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        if m.state == ServerState::Leader && m.current_leader == Some(m.id) {
            return Ok(());
        }
        let leader = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| (id, n.url.clone()))
        });
        Err(ReplicaError::NotLeader { leader })
    }

    /// Whether this replica leads under a vote a majority of voters acknowledged less than
    /// `window` ago (see [`crate::lease`]). `false` while the membership is changing.
    fn holds_lease(
        &self,
        m: &openraft::RaftMetrics<ReplicaId, ReplicaNode>,
        window: Duration,
    ) -> bool {
        let me = self.inner.config.replica_id;
        if m.state != ServerState::Leader || m.current_leader != Some(me) {
            return false;
        }
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() != 1 {
            return false;
        }
        let voters: BTreeSet<ReplicaId> = membership.voter_ids().collect();
        let now = Instant::now();
        self.inner
            .lease
            .quorum_acked_at(&m.vote, &voters, me, now)
            .is_some_and(|acked| now < acked + window)
    }

    /// Whether a read may be served from this replica's state now without a round: it holds the
    /// read lease ([`RaftTiming::read_lease`]) and has applied an entry of its own term (its
    /// first, blank entry), hence everything earlier leaders committed. Everything it
    /// acknowledged itself was applied before it was acknowledged.
    fn may_read_under_lease(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        applied_own_term(&m) && self.holds_lease(&m, self.inner.config.timing.read_lease())
    }

    /// Whether this replica leads and has applied an entry of its own term, hence every entry
    /// earlier leaders committed (group records included). A leader that has not yet must not
    /// act on its applied state: [`Replica::read_barrier`] waits for it.
    pub fn has_applied_own_term(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && applied_own_term(&m)
    }

    /// The current term (part of WATCH versions: a new leader has a new term).
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// Replicates `writes` (one batch, in order, applied atomically with the entry it joins)
    /// and answers once they are committed and applied here: for each write, whether it removed
    /// a live key. Fails with `NotLeader` (nothing proposed: not the leader, or a leader that has
    /// not heard from a majority for two leases, so most likely deposed) or `OutcomeUnknown`
    /// (also once it has not heard from a majority for two leases while the write waited, or
    /// after [`COMMIT_TIMEOUT`] without a commit).
    pub async fn write(&self, writes: Vec<ReplicatedWrite>) -> Result<Vec<bool>> {
        self.propose(writes, None).await
    }

    /// Like [`Replica::write`], and the entry also replaces the group record with `record`
    /// (see [`crate::types::Command`]). Writes handed to this replica before this call are in
    /// earlier entries, writes handed after it in later ones.
    pub async fn write_record(
        &self,
        writes: Vec<ReplicatedWrite>,
        record: Bytes,
    ) -> Result<Vec<bool>> {
        self.propose(writes, Some(record)).await
    }

    /// Sets (or, with `None`, removes) the observer told about every write this replica
    /// applies (see [`crate::state_machine::ApplyObserver`]).
    pub fn set_apply_observer(
        &self,
        observer: Option<Arc<dyn crate::state_machine::ApplyObserver>>,
    ) {
        self.inner.sm.set_observer(observer);
    }

    /// The group record as of the last entry this replica applied (`None`: never set). On the
    /// leader, after [`Replica::read_barrier`], it is the committed one.
    pub fn record(&self) -> Option<Bytes> {
        self.inner.sm.record()
    }

    async fn propose(
        &self,
        writes: Vec<ReplicatedWrite>,
        record: Option<Bytes>,
    ) -> Result<Vec<bool>> {
        self.check_leader()?;
        if self
            .since_quorum_ack()
            .is_some_and(|d| d > 2 * self.inner.config.timing.lease())
        {
            return Err(ReplicaError::NotLeader { leader: None });
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .proposals
            .send(Proposal {
                writes,
                record,
                reply,
            })
            .await
            .map_err(|_| ReplicaError::Unavailable("the replica is shutting down".into()))?;
        let started = Instant::now();
        let mut answer = answer;
        loop {
            match tokio::time::timeout(COMMIT_PROGRESS_CHECK, &mut answer).await {
                Ok(answer) => {
                    return answer.map_err(|_| {
                        ReplicaError::OutcomeUnknown(
                            "the proposer stopped before the write was answered".into(),
                        )
                    })?
                }
                Err(_) => {
                    let silent = self.since_quorum_ack();
                    if silent.is_some_and(|d| d > 2 * self.inner.config.timing.lease()) {
                        return Err(ReplicaError::OutcomeUnknown(format!(
                            "no majority of the group has acknowledged this leader for {} ms; it is cut off or deposed",
                            silent.unwrap_or_default().as_millis()
                        )));
                    }
                    if started.elapsed() >= COMMIT_TIMEOUT {
                        return Err(ReplicaError::OutcomeUnknown(format!(
                            "not committed within {} s: no majority of the group reachable from this leader",
                            COMMIT_TIMEOUT.as_secs()
                        )));
                    }
                }
            }
        }
    }

    /// How long ago a majority of voters last acknowledged this replica as leader (under its
    /// current vote), by the lease clock; `None` if it does not lead or never was. During a
    /// membership change the voters of both configurations count as one set: an estimate, used
    /// only to stop waiting for a commit early.
    fn since_quorum_ack(&self) -> Option<Duration> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader {
            return None;
        }
        let voters: BTreeSet<ReplicaId> = m.membership_config.membership().voter_ids().collect();
        let now = Instant::now();
        self.inner
            .lease
            .quorum_acked_at(&m.vote, &voters, self.inner.config.replica_id, now)
            .map(|acked| now.saturating_duration_since(acked))
    }

    /// Waits until a read on this replica's engine is linearizable (see the module docs): at
    /// once under the leader's lease, else after a round that confirms leadership with a quorum
    /// and waits until everything committed before is applied. Fails with `NotLeader` otherwise.
    pub async fn read_barrier(&self) -> Result<()> {
        self.check_leader()?;
        if self.may_read_under_lease() {
            self.inner
                .counters
                .lease_reads
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .reads
            .send(reply)
            .map_err(|_| ReplicaError::Unavailable("the replica is shutting down".into()))?;
        answer
            .await
            .map_err(|_| ReplicaError::Unavailable("the read barrier stopped".into()))?
    }

    /// Adds replica `id` at `url`: as a learner first, then, once its log has caught up (within
    /// `catch_up_timeout`), as a voter. Runs on the leader only.
    pub async fn add_replica(
        &self,
        id: ReplicaId,
        url: String,
        catch_up_timeout: Duration,
    ) -> Result<()> {
        self.check_leader()?;
        let raft = &self.inner.raft;
        raft.add_learner(id, ReplicaNode { url }, false)
            .await
            .map_err(client_write_error)?;
        let deadline = Instant::now() + catch_up_timeout;
        loop {
            let (caught_up, lag) = {
                let m = raft.metrics().borrow().clone();
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned())
                    .flatten()
                    .map(|l| l.index);
                (
                    matched.is_some_and(|i| last.saturating_sub(i) <= 64),
                    matched.map(|i| last.saturating_sub(i)),
                )
            };
            if caught_up {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ReplicaError::Unavailable(format!(
                    "replica {id} was added as a learner but did not catch up within {} s (lag: {}); it stays a learner — is it running?",
                    catch_up_timeout.as_secs(),
                    lag.map_or("unknown".into(), |l| format!("{l} entries"))
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(client_write_error)?;
        Ok(())
    }

    /// Removes replica `id` from the group (voter or learner). Runs on the leader only.
    pub async fn remove_replica(&self, id: ReplicaId) -> Result<()> {
        self.check_leader()?;
        let membership = self.membership();
        let raft = &self.inner.raft;
        if membership.voter_ids().any(|v| v == id) {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(client_write_error)?;
        } else if membership.get_node(&id).is_some() {
            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(client_write_error)?;
        } else {
            return Err(ReplicaError::Config(format!(
                "replica {id} is not a member of this group"
            )));
        }
        Ok(())
    }

    /// Handles one RPC from a peer (the server calls this for every Raft frame it receives).
    pub async fn handle_rpc(&self, kind: RpcKind, payload: Bytes) -> Result<Bytes> {
        let raft = &self.inner.raft;
        match kind {
            RpcKind::Append => {
                let rpc = from_bytes(payload)?;
                let resp = raft.append_entries(rpc).await.map_err(raft_err)?;
                if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                    self.inner.contact.touch();
                }
                Ok(to_bytes(&resp))
            }
            RpcKind::PreVote => {
                let ask = from_bytes(payload)?;
                let yes = answer_pre_vote(
                    raft,
                    self.inner.config.replica_id,
                    &self.inner.config.timing,
                    &self.inner.contact,
                    &self.inner.log,
                    &ask,
                );
                Ok(Bytes::from_static(if yes { &[1] } else { &[0] }))
            }
            RpcKind::Vote => {
                let rpc = from_bytes(payload)?;
                // Nobody votes while it defends a leader's lease (see `crate::lease`): a
                // leader while a quorum acknowledged it within the lease, anyone else for the
                // lease after it last heard from a leader or after it started (openraft's own
                // lease check forgets across restarts; this one does not).
                let refusal = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    let lease = self.inner.config.timing.lease();
                    let defending = if m.state == ServerState::Leader {
                        self.holds_lease(&m, lease)
                    } else {
                        self.inner.contact.since() < lease
                    };
                    defending.then(|| VoteResponse {
                        vote: m.vote,
                        vote_granted: false,
                        last_log_id: self.inner.log.last_log_id(),
                    })
                };
                let resp = match refusal {
                    Some(refusal) => refusal,
                    None => raft.vote(rpc).await.map_err(raft_err)?,
                };
                Ok(to_bytes(&resp))
            }
            RpcKind::SnapshotBegin => {
                self.inner.contact.touch();
                self.begin_snapshot(from_bytes(payload)?).await?;
                Ok(Bytes::new())
            }
            RpcKind::SnapshotChunk => {
                self.inner.contact.touch();
                self.receive_chunk(from_bytes(payload)?).await?;
                Ok(Bytes::new())
            }
            RpcKind::SnapshotFinish => {
                let vote = self.finish_snapshot(from_bytes(payload)?).await?;
                Ok(to_bytes(&vote))
            }
        }
    }

    async fn begin_snapshot(&self, begin: SnapshotBegin) -> Result<()> {
        for (path, _) in &begin.files {
            if safe_relative_path(path).is_none() {
                return Err(ReplicaError::Config(format!(
                    "a snapshot names the file {path:?}, which is not a plain relative path"
                )));
            }
        }
        let dir = self.inner.sm.incoming_dir(&begin.meta.snapshot_id);
        let mut incoming = self.inner.incoming.lock().await;
        if let Some(old) = incoming.take() {
            remove_dir_blocking(old.dir).await?;
        }
        let engine_dir = dir.join("engine");
        let files = begin.files.clone();
        let record = begin.record.clone();
        let prepare_dir = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            crate::fsutil::remove_dir(&prepare_dir)?;
            crate::fsutil::create_dir(&engine_dir)?;
            crate::state_machine::write_record_file(&prepare_dir, record.as_ref())?;
            for (path, _) in &files {
                let target = engine_dir.join(path);
                if let Some(parent) = target.parent() {
                    crate::fsutil::create_dir(parent)?;
                }
                std::fs::File::create(&target)
                    .map_err(ReplicaError::io("cannot create", &target))?;
            }
            Ok(())
        })
        .await
        .map_err(raft_err)??;
        tracing::info!(
            snapshot = %begin.meta.snapshot_id,
            files = begin.files.len(),
            bytes = begin.files.iter().map(|(_, s)| s).sum::<u64>(),
            "receiving a snapshot"
        );
        *incoming = Some(Incoming {
            received: vec![0; begin.files.len()],
            begin,
            dir,
        });
        Ok(())
    }

    async fn receive_chunk(&self, chunk: SnapshotChunk) -> Result<()> {
        let mut guard = self.inner.incoming.lock().await;
        let incoming = guard
            .as_mut()
            .filter(|i| i.begin.meta.snapshot_id == chunk.snapshot_id)
            .ok_or_else(|| {
                ReplicaError::Config(format!(
                    "no snapshot {} is being received",
                    chunk.snapshot_id
                ))
            })?;
        let file = chunk.file as usize;
        let (Some((path, size)), Some(received)) = (
            incoming.begin.files.get(file),
            incoming.received.get(file).copied(),
        ) else {
            return Err(ReplicaError::Config(format!(
                "snapshot chunk for file {file}, which was not announced"
            )));
        };
        if chunk.offset != received || received + chunk.data.len() as u64 > *size {
            return Err(ReplicaError::Config(format!(
                "snapshot chunk for {path} at offset {} with {} bytes does not follow the {received} bytes received (file size {size})",
                chunk.offset,
                chunk.data.len()
            )));
        }
        if crc32c::crc32c(&chunk.data) != chunk.crc {
            return Err(ReplicaError::Config(format!(
                "snapshot chunk for {path} at offset {} fails its checksum",
                chunk.offset
            )));
        }
        let target = incoming.dir.join("engine").join(path);
        let data = chunk.data;
        let offset = chunk.offset;
        let len = data.len() as u64;
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .map_err(ReplicaError::io("cannot open", &target))?;
            f.write_all_at(&data, offset)
                .map_err(ReplicaError::io("cannot write", &target))
        })
        .await
        .map_err(raft_err)??;
        if let Some(r) = incoming.received.get_mut(file) {
            *r += len;
        }
        Ok(())
    }

    async fn finish_snapshot(&self, finish: SnapshotFinish) -> Result<Vote> {
        let incoming = {
            let mut guard = self.inner.incoming.lock().await;
            match guard.take() {
                Some(i) if i.begin.meta.snapshot_id == finish.snapshot_id => i,
                other => {
                    *guard = other;
                    return Err(ReplicaError::Config(format!(
                        "no snapshot {} is being received",
                        finish.snapshot_id
                    )));
                }
            }
        };
        for ((path, size), got) in incoming.begin.files.iter().zip(&incoming.received) {
            if got != size {
                remove_dir_blocking(incoming.dir).await?;
                return Err(ReplicaError::Config(format!(
                    "snapshot {} is incomplete: {path} has {got} of {size} bytes",
                    finish.snapshot_id
                )));
            }
        }
        let dir = incoming.dir.clone();
        tokio::task::spawn_blocking(move || sync_tree(&dir))
            .await
            .map_err(raft_err)??;
        let meta: SnapshotMeta = incoming.begin.meta.clone();
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: Box::new(SnapshotFiles::at(incoming.dir)),
        };
        let resp = self
            .inner
            .raft
            .install_full_snapshot(finish.vote, snapshot)
            .await
            .map_err(raft_err)?;
        self.inner
            .counters
            .snapshots_received
            .fetch_add(1, Ordering::Relaxed);
        Ok(resp.vote)
    }

    /// Resolves, with the reason, if openraft's core stops while the replica is not being shut
    /// down: the replica can neither replicate nor serve any more, and the process should stop
    /// (to be restarted) rather than keep answering health checks.
    pub async fn stopped(&self) -> String {
        let mut stopped = self.inner.stopped.clone();
        loop {
            if let Some(why) = stopped.borrow_and_update().clone() {
                return why;
            }
            if stopped.changed().await.is_err() {
                // The watcher was aborted by `shutdown`: never resolves.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops openraft, makes the applied position durable and closes the engine.
    pub async fn shutdown(&self) -> Result<()> {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let sm = self.inner.sm.clone();
        tokio::task::spawn_blocking(move || sm.close())
            .await
            .map_err(raft_err)?
    }
}

/// Whether the applied position is an entry of the current, committed vote's term.
fn applied_own_term(m: &openraft::RaftMetrics<ReplicaId, ReplicaNode>) -> bool {
    m.last_applied.is_some_and(|applied| {
        m.vote.is_committed() && applied.leader_id.term == m.vote.leader_id().term
    })
}

async fn remove_dir_blocking(dir: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || crate::fsutil::remove_dir(&dir))
        .await
        .map_err(raft_err)?
}

/// fsyncs every file and directory under `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(ReplicaError::io("cannot list", dir))? {
        let entry = entry.map_err(ReplicaError::io("cannot list", dir))?;
        let path = entry.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(ReplicaError::io("cannot fsync", &path))?;
        }
    }
    crate::fsutil::sync_dir(dir)
}

fn client_write_error(
    e: RaftError<ReplicaId, ClientWriteError<ReplicaId, ReplicaNode>>,
) -> ReplicaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ReplicaError::NotLeader {
            leader: f.leader_id.zip(f.leader_node.map(|n| n.url)),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ReplicaError::Config(e.to_string())
        }
        RaftError::Fatal(e) => ReplicaError::Unavailable(format!("the replica stopped: {e}")),
    }
}

/// The proposer task (see the module docs).
async fn run_proposer(
    raft: Raft,
    me: ReplicaId,
    mut proposals: mpsc::Receiver<Proposal>,
    counters: Arc<ReplicaCounters>,
) {
    let permits = Arc::new(Semaphore::new(MAX_PROPOSALS_IN_FLIGHT));
    // A proposal carrying a group record that arrived while a batch was being cut: it starts
    // the next entry.
    let mut held: Option<Proposal> = None;
    loop {
        let first = match held.take() {
            Some(p) => p,
            None => match proposals.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let record = first.record.clone();
        let mut batch = vec![first];
        let mut writes = batch[0].writes.len();
        let mut bytes: usize = batch[0]
            .writes
            .iter()
            .map(ReplicatedWrite::size_bytes)
            .sum();
        while record.is_none() && writes < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            match proposals.try_recv() {
                Ok(p) if p.record.is_some() => {
                    held = Some(p);
                    break;
                }
                Ok(p) => {
                    writes += p.writes.len();
                    bytes += p
                        .writes
                        .iter()
                        .map(ReplicatedWrite::size_bytes)
                        .sum::<usize>();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let leader = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader && m.current_leader == Some(me))
                .then_some(())
                .ok_or_else(|| {
                    m.current_leader.and_then(|id| {
                        m.membership_config
                            .membership()
                            .get_node(&id)
                            .map(|n| (id, n.url.clone()))
                    })
                })
        };
        if let Err(leader) = leader {
            for p in batch {
                let _ = p.reply.send(Err(ReplicaError::NotLeader {
                    leader: leader.clone(),
                }));
            }
            continue;
        }
        let mut sizes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut all = Vec::with_capacity(writes);
        for p in batch {
            sizes.push(p.writes.len());
            all.extend(p.writes);
            replies.push(p.reply);
        }
        let started = Instant::now();
        let receiver = match raft
            .client_write_ff(Command {
                writes: all,
                record,
            })
            .await
        {
            Ok(r) => r,
            Err(fatal) => {
                for reply in replies {
                    let _ = reply.send(Err(ReplicaError::Unavailable(format!(
                        "the replica stopped: {fatal}"
                    ))));
                }
                continue;
            }
        };
        counters.proposals.fetch_add(1, Ordering::Relaxed);
        counters
            .proposed_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let outcome = receiver.await;
            drop(permit);
            counters
                .commit_micros_sum
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            match outcome {
                Ok(Ok(resp)) => {
                    let mut flags = resp.data.removed.into_iter();
                    for (reply, n) in replies.into_iter().zip(sizes) {
                        let _ = reply.send(Ok(flags.by_ref().take(n).collect()));
                    }
                }
                Ok(Err(e)) => {
                    let why = match e {
                        ClientWriteError::ForwardToLeader(_) => {
                            "leadership changed before the write was committed; it may or may not be applied".to_string()
                        }
                        other => other.to_string(),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(ReplicaError::OutcomeUnknown(why.clone())));
                    }
                }
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(ReplicaError::OutcomeUnknown(
                            "the replica stopped before the write was committed".into(),
                        )));
                    }
                }
            }
        });
    }
}

/// The read barrier task (see the module docs).
async fn run_read_barrier(
    raft: Raft,
    mut reads: mpsc::UnboundedReceiver<oneshot::Sender<Result<()>>>,
    counters: Arc<ReplicaCounters>,
) {
    while let Some(first) = reads.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = reads.try_recv() {
            waiting.push(more);
        }
        counters.read_rounds.fetch_add(1, Ordering::Relaxed);
        let outcome =
            match tokio::time::timeout(READ_ROUND_TIMEOUT, raft.ensure_linearizable()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(f.leader_id.zip(f.leader_node.map(|n| n.url)))
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) | Err(_) => {
                    Err(None)
                }
                Ok(Err(RaftError::Fatal(_))) => Err(None),
            };
        for reply in waiting {
            let _ = reply.send(
                outcome
                    .clone()
                    .map_err(|leader| ReplicaError::NotLeader { leader }),
            );
        }
    }
}

/// Counts leader changes, and reports on `stopped` why openraft's core stopped if it does (a
/// fatal storage error, or a panic: its metrics channel closes). [`Replica::shutdown`] aborts
/// this task first, so a clean stop reports nothing.
async fn watch_core(
    raft: Raft,
    counters: Arc<ReplicaCounters>,
    stopped: tokio::sync::watch::Sender<Option<String>>,
) {
    let mut metrics = raft.metrics();
    let mut last = metrics.borrow().current_leader;
    let why = loop {
        if metrics.changed().await.is_err() {
            break "openraft's core task ended (see the log above for a panic)".to_string();
        }
        let m = metrics.borrow();
        if let Err(fatal) = &m.running_state {
            break format!("openraft stopped: {fatal}");
        }
        if m.current_leader != last && m.current_leader.is_some() {
            counters.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        last = m.current_leader;
    };
    tracing::error!(reason = %why, "the replica's Raft core stopped");
    let _ = stopped.send(Some(why));
}

/// Makes the applied position durable every [`PERSIST_INTERVAL`].
async fn persist_applied(sm: StateMachineStore) {
    let mut tick = tokio::time::interval(PERSIST_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sm = sm.clone();
        match tokio::task::spawn_blocking(move || sm.persist_applied()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the applied position"),
            Err(_) => return,
        }
    }
}

/// The log id type, re-exported for callers that show positions.
pub type Position = LogId;

#[cfg(test)]
mod tests;
