//! The leader's lease: how long after a quorum last acknowledged it a leader may serve a read
//! from its own state without asking the group again.
//!
//! # Why a lease is safe here
//!
//! When a follower accepts an AppendEntries (a heartbeat included) from the leader, it records
//! the contact, and for the next *lease* (`RaftTiming::lease`, the election timeout) it
//! refuses every pre-vote (`election::answer_pre_vote`) and every vote (`Replica::handle_rpc`;
//! openraft's own `leader_lease` is set to the same length, but it forgets across a restart, so
//! a replica also refuses both for the lease after it starts). A leader refuses both while it
//! holds the lease itself. A new leader needs the votes of a majority, and every majority includes
//! a replica that acknowledged the old leader's last quorum round; so if a quorum acknowledged
//! requests the leader *sent* at time `t`, no other leader can be elected before `t + lease`
//! (each of those replicas received the request after `t`, and counts its lease from then).
//!
//! [`LeaseClock`] records, per peer, the send time of the newest AppendEntries it acknowledged
//! under the leader's current vote (a reply that is not "higher vote" is an acknowledgement);
//! [`LeaseClock::quorum_acked_at`] takes the time a majority of voters has acknowledged (the
//! leader itself counting as acknowledging now). The replica serves a read locally while
//! `now < quorum_acked_at + RaftTiming::read_lease()`, a quarter shorter than the lease.
//!
//! # The clock assumption
//!
//! Only durations are compared, each measured on one machine's monotonic clock, never
//! timestamps across machines. The assumption is that no replica's clock runs more than a
//! quarter slower than the leader's over one lease (a few hundred milliseconds): real clock
//! drift is below 0.1 %. A machine that is suspended stops its monotonic clock, which only
//! makes a follower's lease last longer (safe); a leader that is suspended finds its lease
//! expired on waking and falls back to a read-index round.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use crate::types::{ReplicaId, Vote};

/// Per peer, the newest acknowledged send time and the vote it was sent under.
#[derive(Debug, Default)]
pub struct LeaseClock {
    acks: Mutex<HashMap<ReplicaId, (Vote, Instant)>>,
}

impl LeaseClock {
    /// Records that `peer` acknowledged a request sent at `sent_at` under `vote`.
    pub fn record_ack(&self, peer: ReplicaId, vote: Vote, sent_at: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = acks.entry(peer).or_insert((vote, sent_at));
        if entry.0 != vote || entry.1 < sent_at {
            *entry = (vote, sent_at);
        }
    }

    /// The latest send time a majority of `voters` has acknowledged under `vote`, `me` (the
    /// leader) counting as acknowledging `now`; `None` if no majority has under this vote.
    pub fn quorum_acked_at(
        &self,
        vote: &Vote,
        voters: &BTreeSet<ReplicaId>,
        me: ReplicaId,
        now: Instant,
    ) -> Option<Instant> {
        if voters.is_empty() {
            return None;
        }
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut times: Vec<Instant> = voters
            .iter()
            .filter_map(|id| {
                if *id == me {
                    return Some(now);
                }
                acks.get(id)
                    .filter(|(acked_vote, _)| acked_vote == vote)
                    .map(|(_, at)| *at)
            })
            .collect();
        let majority = voters.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[majority - 1])
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn vote(term: u64, leader: ReplicaId) -> Vote {
        let mut v = Vote::new(term, leader);
        v.commit();
        v
    }

    #[test]
    fn a_majority_takes_the_slowest_of_its_fastest_members() {
        let clock = LeaseClock::default();
        let v = vote(3, 1);
        let t0 = Instant::now();
        let voters = BTreeSet::from([1, 2, 3, 4, 5]);
        let now = t0 + Duration::from_millis(100);
        assert_eq!(clock.quorum_acked_at(&v, &voters, 1, now), None);
        clock.record_ack(2, v, t0 + Duration::from_millis(50));
        assert_eq!(clock.quorum_acked_at(&v, &voters, 1, now), None);
        clock.record_ack(3, v, t0 + Duration::from_millis(20));
        // Majority of 5 is 3: me (now), 2 (50), 3 (20): the third newest is 20.
        assert_eq!(
            clock.quorum_acked_at(&v, &voters, 1, now),
            Some(t0 + Duration::from_millis(20))
        );
        clock.record_ack(4, v, t0 + Duration::from_millis(70));
        assert_eq!(
            clock.quorum_acked_at(&v, &voters, 1, now),
            Some(t0 + Duration::from_millis(50))
        );
    }

    #[test]
    fn acknowledgements_under_another_vote_do_not_count() {
        let clock = LeaseClock::default();
        let old = vote(3, 1);
        let new = vote(5, 1);
        let t0 = Instant::now();
        let voters = BTreeSet::from([1, 2, 3]);
        clock.record_ack(2, old, t0);
        assert_eq!(clock.quorum_acked_at(&new, &voters, 1, t0), None);
        assert_eq!(clock.quorum_acked_at(&old, &voters, 1, t0), Some(t0));
        clock.record_ack(2, new, t0);
        assert_eq!(clock.quorum_acked_at(&old, &voters, 1, t0), None);
    }

    #[test]
    fn an_older_acknowledgement_never_moves_the_time_back() {
        let clock = LeaseClock::default();
        let v = vote(2, 1);
        let t0 = Instant::now();
        let voters = BTreeSet::from([1, 2]);
        clock.record_ack(2, v, t0 + Duration::from_millis(30));
        clock.record_ack(2, v, t0 + Duration::from_millis(10));
        assert_eq!(
            clock.quorum_acked_at(&v, &voters, 1, t0 + Duration::from_millis(40)),
            Some(t0 + Duration::from_millis(30))
        );
    }

    #[test]
    fn a_non_voter_leader_is_not_counted() {
        let clock = LeaseClock::default();
        let v = vote(2, 9);
        let t0 = Instant::now();
        let voters = BTreeSet::from([1, 2, 3]);
        clock.record_ack(1, v, t0);
        assert_eq!(clock.quorum_acked_at(&v, &voters, 9, t0), None);
        clock.record_ack(2, v, t0);
        assert_eq!(clock.quorum_acked_at(&v, &voters, 9, t0), Some(t0));
    }
}
