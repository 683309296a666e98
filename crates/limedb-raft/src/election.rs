//! Elections with a pre-vote: when a replica stands for election, and what its peers answer when
//! asked first.
//!
//! openraft 0.9 has no pre-vote: a follower whose timer fires stands at once with a higher
//! term, even when its log is behind (a replica that just restarted, or came back from a
//! partition). It cannot win, but every attempt raises the term, and the up-to-date replica must
//! outbid it; after a partition heals, its higher term also deposes a healthy leader. Both cost
//! election rounds of unavailability. So LimeDB turns openraft's election timer off and runs its
//! own ([`run_elections`]):
//!
//! - A replica notes when it last heard from a leader ([`LeaderContact`]: every AppendEntries or
//!   snapshot a leader sends, and all the time while it leads itself).
//! - Silent for its lease plus its slot offset ([`RaftTiming::stand_after`]: staggered by
//!   replica id, rotating with the term), it first asks every other voter whether it *would* vote for it
//!   ([`answer_pre_vote`]): a peer says yes only if it has not heard from a leader for its own
//!   lease either and the asker's log is at least as up to date as its own.
//! - With a majority of yeses (itself included) it stands for election for real (openraft's
//!   `trigger().elect()`); otherwise it waits another period (still answering yes to a better
//!   candidate meanwhile). Either way nobody's term moved unless an election could succeed.
//!
//! A group of one voter elects itself at once, as openraft would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::codec::to_bytes;
use crate::log_store::LogStore;
use crate::network::{PreVote, RaftTransport, RpcKind};
use crate::replica::RaftTiming;
use crate::types::{Raft, ReplicaId};

/// When this replica last heard from a leader (or led). A replica that may have acknowledged a
/// leader before it (re)started counts its start as a contact ([`LeaderContact::default`]):
/// it defends that leader's lease as if it had just heard from it. A pristine one, which never
/// acknowledged anyone, starts with no contact ([`LeaderContact::never`]).
#[derive(Debug)]
pub struct LeaderContact {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last contact, plus one; 0 for none.
    last: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            epoch: Instant::now(),
            last: AtomicU64::new(1),
        }
    }
}

impl LeaderContact {
    /// No contact yet.
    pub fn never() -> Self {
        LeaderContact {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Records a contact now.
    pub fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last.fetch_max(now + 1, Ordering::AcqRel);
    }

    /// Time since the last contact (`Duration::MAX` if none).
    pub fn since(&self) -> Duration {
        match self.last.load(Ordering::Acquire) {
            0 => Duration::MAX,
            last => {
                let now = self.epoch.elapsed().as_millis() as u64;
                Duration::from_millis((now + 1).saturating_sub(last))
            }
        }
    }
}

/// Whether this replica would vote for a candidate whose last log id is `request`'s: it has not
/// heard from a leader for its lease and the candidate's log is at least as up to date.
pub fn answer_pre_vote(
    raft: &Raft,
    me: ReplicaId,
    timing: &RaftTiming,
    contact: &LeaderContact,
    log: &LogStore,
    request: &PreVote,
) -> bool {
    if raft.metrics().borrow().state == ServerState::Leader {
        return false;
    }
    let yes = contact.since() >= timing.lease() && request.last_log_id >= log.last_log_id();
    tracing::debug!(replica = me, since = ?contact.since(), theirs = ?request.last_log_id, mine = ?log.last_log_id(), yes, "pre-vote asked");
    yes
}

/// A small xorshift generator: the jitter of election timers needs no more.
struct Jitter(u64);

impl Jitter {
    fn next_in(&mut self, min: u64, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        min + self.0 % (max - min + 1)
    }

    /// A fraction in `[0, 1]`.
    fn fraction(&mut self) -> f64 {
        self.next_in(0, 1000) as f64 / 1000.0
    }
}

/// The election timer (see the module docs); runs until the replica stops.
pub async fn run_elections(
    raft: Raft,
    me: ReplicaId,
    timing: RaftTiming,
    contact: Arc<LeaderContact>,
    log: LogStore,
    transport: Arc<dyn RaftTransport>,
) {
    let tick = Duration::from_millis((timing.heartbeat_ms / 2).clamp(5, 50));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ me.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut jitter = Jitter(seed | 1);
    let term = raft.metrics().borrow().current_term;
    let mut wait = timing.stand_after(me, term, jitter.fraction());
    // After an attempt the next one waits a whole period too, as it does after leading or
    // becoming a voter. None of these is a leader contact: a replica that failed its own
    // pre-vote, or just joined the voters, still says yes to a better candidate.
    let mut next_attempt = Instant::now() + wait;
    loop {
        tokio::time::sleep(tick).await;
        let (state, voters, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            if m.running_state.is_err() {
                return;
            }
            let voters: Vec<ReplicaId> = m.membership_config.membership().voter_ids().collect();
            (m.state, voters, m.current_term)
        };
        if state == ServerState::Leader {
            contact.touch();
        }
        if state == ServerState::Leader || !voters.contains(&me) {
            wait = timing.stand_after(me, term, jitter.fraction());
            next_attempt = Instant::now() + wait;
            continue;
        }
        if voters.len() == 1 {
            let _ = raft.trigger().elect().await;
            contact.touch();
            continue;
        }
        if contact.since() < wait || Instant::now() < next_attempt {
            continue;
        }
        tracing::debug!(replica = me, since = ?contact.since(), ?wait, "no leader heard: asking for a pre-vote");
        let ask = PreVote {
            last_log_id: log.last_log_id(),
        };
        let peers: Vec<(ReplicaId, String)> = {
            let m = raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            voters
                .iter()
                .filter(|id| **id != me)
                .filter_map(|id| membership.get_node(id).map(|n| (*id, n.url.clone())))
                .collect()
        };
        let asked = futures_pre_vote(&transport, &peers, &ask, timing.lease()).await;
        let granted = 1 + asked;
        // The answers took a while: if a leader was heard from, or the term moved (this
        // replica voted for someone), meanwhile, they are stale and standing would only depose
        // a leader just elected.
        let still_leaderless = {
            let m = raft.metrics();
            let m = m.borrow();
            m.current_term == term && contact.since() >= wait
        };
        if !still_leaderless {
            tracing::debug!(
                replica = me,
                "a leader appeared during the pre-vote; not standing"
            );
        } else if granted * 2 > voters.len() {
            tracing::info!(
                replica = me,
                granted,
                voters = voters.len(),
                "pre-vote won; standing for election"
            );
            let _ = raft.trigger().elect().await;
        } else {
            tracing::debug!(
                replica = me,
                granted,
                voters = voters.len(),
                "pre-vote lost; not standing"
            );
        }
        next_attempt = Instant::now() + wait;
        wait = timing.stand_after(me, term + 1, jitter.fraction());
    }
}

/// Asks every peer concurrently; counts the yeses that arrive within `timeout`.
async fn futures_pre_vote(
    transport: &Arc<dyn RaftTransport>,
    peers: &[(ReplicaId, String)],
    ask: &PreVote,
    timeout: Duration,
) -> usize {
    let payload = to_bytes(ask);
    let mut tasks = tokio::task::JoinSet::new();
    for (id, url) in peers {
        let transport = Arc::clone(transport);
        let (id, url, payload) = (*id, url.clone(), payload.clone());
        tasks.spawn(async move {
            let reply = transport
                .call(id, &url, RpcKind::PreVote, payload, timeout)
                .await
                .ok()?;
            Some(reply.as_ref() == [1])
        });
    }
    let mut yes = 0;
    while let Some(answer) = tasks.join_next().await {
        if matches!(answer, Ok(Some(true))) {
            yes += 1;
        }
    }
    yes
}
