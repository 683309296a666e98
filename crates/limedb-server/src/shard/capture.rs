//! Change capture: how a source replica follows the writes to the ranges it is giving away
//! while they are copied, so that the copy runs with the ranges still served and only a short
//! cut-over fences them (see ARCHITECTURE.md, *Elasticity*).
//!
//! A capture lives in one replica's memory. It is told about every write the replica applies
//! (an [`ApplyObserver`] on its state machine, so in log order, leader or follower) and keeps
//! the set of keys in the transfer's ranges written since it began. The copy scans the same
//! replica's engine after the capture began, so a key written after the scan passed it is in
//! the set; the catch-up **takes** keys from the set, reads their values on that replica and
//! sends them (or their deletion) to the destination, round after round. Once the source's
//! record hands the ranges over (the fence), no write to them is applied any more, and a take
//! that starts after the replica applied the fence and leaves the set empty ends the catch-up.
//!
//! Keys taken stay **given** until the next take acknowledges their generation: a driver that
//! died between a take and its import (or a new driver) gets them again. A capture is **lost**
//! when its replica installs a snapshot (its state was replaced without writes to observe) or
//! its set outgrows [`MAX_DIRTY_BYTES`]; a restarted process knows no capture at all. Either
//! way the driver starts the copy over. A capture no driver used for [`IDLE_LIMIT`] (an orphan
//! of a copy started over elsewhere) is forgotten.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use limedb_cluster::{key_hash, Routing, ShardId};
use limedb_raft::{ApplyObserver, ReplicatedWrite};

/// Bound on the key bytes a capture remembers (each key is held once however often written);
/// beyond it the capture is lost and the copy starts over.
pub const MAX_DIRTY_BYTES: usize = 256 << 20;

/// Memory counted for a key besides its bytes (the set's entry).
const KEY_OVERHEAD: usize = 48;

/// The captures of one replica (at most one at a time: one transfer is copied at a time).
#[derive(Debug)]
pub struct Captures {
    /// Whether a capture is running (so applies without one cost one load).
    active: AtomicBool,
    state: Mutex<Option<Capture>>,
    /// Ids differ across captures and across restarts of the process.
    next_id: AtomicU64,
    /// Bound on a capture's key bytes ([`MAX_DIRTY_BYTES`]).
    max_bytes: usize,
    /// A capture nobody drained for this long is dropped ([`IDLE_LIMIT`]).
    idle_limit: Duration,
}

/// A capture that no driver started, checked or drained for this long is forgotten (its driver
/// started the copy over elsewhere, or the move ended without cleaning up here), so that an
/// orphan does not keep collecting keys.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Capture {
    id: u64,
    from: ShardId,
    to: ShardId,
    routing: Arc<Routing>,
    dirty: HashSet<Bytes>,
    /// Keys handed out by the last take and not yet acknowledged.
    given: HashSet<Bytes>,
    generation: u64,
    bytes: usize,
    lost: Option<String>,
    /// A take saw the fence applied: no write to the ranges is applied any more (but the
    /// source's clean-up), so nothing more is kept.
    sealed: bool,
    /// When a driver last started, checked or drained it.
    used: Instant,
}

/// Why a capture cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureError {
    /// This replica has no capture with that id for that transfer (it restarted, or another
    /// capture replaced it).
    Unknown(String),
    /// The capture missed changes.
    Lost(String),
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Unknown(m) | CaptureError::Lost(m) => f.write_str(m),
        }
    }
}

/// What one take hands out.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    /// Acknowledge it with the next take.
    pub generation: u64,
    /// Keys whose current state the destination needs (the unacknowledged ones included).
    pub keys: Vec<Bytes>,
    /// Keys left in the set.
    pub remaining: usize,
}

impl Default for Captures {
    fn default() -> Self {
        // Ids start from the clock so that a restarted process never reuses one.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64)
            .max(1);
        Captures {
            active: AtomicBool::new(false),
            state: Mutex::new(None),
            next_id: AtomicU64::new(seed),
            max_bytes: MAX_DIRTY_BYTES,
            idle_limit: IDLE_LIMIT,
        }
    }
}

impl Captures {
    fn lock(&self) -> MutexGuard<'_, Option<Capture>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following transfer `from` → `to` of `routing` (replacing any capture); its id.
    pub fn start(&self, from: ShardId, to: ShardId, routing: Arc<Routing>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *self.lock() = Some(Capture {
            id,
            from,
            to,
            routing,
            dirty: HashSet::new(),
            given: HashSet::new(),
            generation: 0,
            bytes: 0,
            lost: None,
            sealed: false,
            used: Instant::now(),
        });
        self.active.store(true, Ordering::Release);
        id
    }

    /// `Ok` if capture `id` of transfer `from` → `to` is here and whole.
    pub fn check(&self, id: u64, from: ShardId, to: ShardId) -> Result<(), CaptureError> {
        Self::used(&mut self.lock(), id, from, to).map(drop)
    }

    /// Capture `id` of transfer `from` → `to`, if it is here and whole, marked as used now.
    fn used(
        state: &mut Option<Capture>,
        id: u64,
        from: ShardId,
        to: ShardId,
    ) -> Result<&mut Capture, CaptureError> {
        match state {
            Some(c) if c.id == id && c.from == from && c.to == to => {
                if let Some(why) = &c.lost {
                    return Err(CaptureError::Lost(format!("capture {id} was lost: {why}")));
                }
                c.used = Instant::now();
                Ok(c)
            }
            _ => Err(CaptureError::Unknown(format!(
                "this replica has no capture {id} of the transfer from shard {from} to shard {to} (it restarted, or a newer copy replaced it)"
            ))),
        }
    }

    /// Takes up to `max_keys` keys from capture `id`'s set. `ack`, the generation of the last
    /// take whose keys reached the destination, lets those go; unacknowledged keys are handed
    /// out again. `fenced`: the caller saw this replica apply the record that hands the ranges
    /// over, so the set is complete and the capture stops following writes.
    pub fn take(
        &self,
        id: u64,
        (from, to): (ShardId, ShardId),
        ack: Option<u64>,
        max_keys: usize,
        fenced: bool,
    ) -> Result<Taken, CaptureError> {
        let mut state = self.lock();
        let c = Self::used(&mut state, id, from, to)?;
        c.sealed |= fenced;
        if ack == Some(c.generation) {
            for key in c.given.drain() {
                c.bytes = c.bytes.saturating_sub(key.len() + KEY_OVERHEAD);
            }
        }
        let room = max_keys.saturating_sub(c.given.len());
        let moved: Vec<Bytes> = c.dirty.iter().take(room).cloned().collect();
        for key in moved {
            c.dirty.remove(&key);
            let len = key.len();
            if !c.given.insert(key) {
                // Given and written again: counted once already.
                c.bytes = c.bytes.saturating_sub(len + KEY_OVERHEAD);
            }
        }
        c.generation += 1;
        Ok(Taken {
            generation: c.generation,
            keys: c.given.iter().cloned().collect(),
            remaining: c.dirty.len(),
        })
    }

    /// Forgets the capture of transfer `from` → `to`, if this replica has it (the transfer is
    /// over).
    pub fn end(&self, from: ShardId, to: ShardId) {
        let mut state = self.lock();
        if state.as_ref().is_some_and(|c| c.from == from && c.to == to) {
            *state = None;
            self.active.store(false, Ordering::Release);
        }
    }

    fn lose(c: &mut Capture, why: String) {
        c.dirty = HashSet::new();
        c.given = HashSet::new();
        c.bytes = 0;
        c.lost = Some(why);
    }
}

impl ApplyObserver for Captures {
    fn applied(&self, writes: &[ReplicatedWrite]) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if state
            .as_ref()
            .is_some_and(|c| c.used.elapsed() > self.idle_limit)
        {
            // An orphan: its driver went elsewhere.
            *state = None;
            self.active.store(false, Ordering::Release);
            return;
        }
        let Some(c) = state.as_mut().filter(|c| c.lost.is_none() && !c.sealed) else {
            return;
        };
        for w in writes {
            let key = w.key();
            if !c.routing.in_transfer(c.from, c.to, key_hash(key)) || c.dirty.contains(key) {
                continue;
            }
            c.bytes += key.len() + KEY_OVERHEAD;
            c.dirty.insert(key.clone());
            if c.bytes > self.max_bytes {
                let why = format!(
                    "more than {} MiB of keys changed during the copy",
                    self.max_bytes >> 20
                );
                Self::lose(c, why);
                return;
            }
        }
    }

    fn replaced(&self) {
        if let Some(c) = self.lock().as_mut() {
            Self::lose(c, "a snapshot replaced this replica's state".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Arc<Routing> {
        let mut r = Routing::new(&[ShardId(1), ShardId(2)], 16).expect("routing");
        r.begin(&[ShardId(1), ShardId(2), ShardId(3)])
            .expect("begin");
        Arc::new(r)
    }

    fn keys_of(routing: &Routing, moving: bool, n: usize) -> Vec<Bytes> {
        (0..)
            .map(|i| Bytes::from(format!("key-{i}")))
            .filter(|k| routing.in_transfer(ShardId(1), ShardId(3), key_hash(k)) == moving)
            .take(n)
            .collect()
    }

    fn put(key: &Bytes) -> ReplicatedWrite {
        ReplicatedWrite::Put {
            key: key.clone(),
            value: Bytes::from_static(b"v"),
            expires_at_ms: None,
        }
    }

    const T: (ShardId, ShardId) = (ShardId(1), ShardId(3));

    #[test]
    fn only_writes_to_the_moving_ranges_are_kept_and_given_until_acknowledged() {
        let routing = routing();
        let captures = Captures::default();
        let moving = keys_of(&routing, true, 5);
        let staying = keys_of(&routing, false, 5);
        captures.applied(&moving.iter().map(put).collect::<Vec<_>>());
        let id = captures.start(T.0, T.1, Arc::clone(&routing));
        captures.applied(&staying.iter().map(put).collect::<Vec<_>>());
        assert_eq!(
            captures.take(id, T, None, 100, false).expect("take").keys,
            Vec::<Bytes>::new(),
            "writes before the capture and outside its ranges are not kept"
        );
        let mut writes: Vec<_> = moving.iter().map(put).collect();
        writes.push(ReplicatedWrite::Delete {
            key: moving[0].clone(),
        });
        captures.applied(&writes);
        let first = captures.take(id, T, None, 3, false).expect("take");
        assert_eq!((first.keys.len(), first.remaining), (3, 2));
        // Not acknowledged: the same keys come again, with room for the rest.
        let again = captures.take(id, T, None, 5, false).expect("take");
        assert_eq!(again.keys.len(), 5);
        assert!(first.keys.iter().all(|k| again.keys.contains(k)));
        // A key written again after it was given is handed out once more after the ack.
        captures.applied(&[put(&again.keys[0])]);
        let acked = captures
            .take(id, T, Some(again.generation), 5, false)
            .expect("take");
        assert_eq!(acked.keys, vec![again.keys[0].clone()]);
        let done = captures
            .take(id, T, Some(acked.generation), 5, false)
            .expect("take");
        assert!(done.keys.is_empty() && done.remaining == 0);
        // Once a take saw the fence, writes (the source's clean-up) are no longer kept.
        captures
            .take(id, T, Some(done.generation), 5, true)
            .expect("take");
        captures.applied(&[put(&moving[1])]);
        assert!(captures
            .take(id, T, None, 5, true)
            .expect("take")
            .keys
            .is_empty());
    }

    #[test]
    fn a_snapshot_or_an_unknown_id_is_an_error_and_end_forgets() {
        let routing = routing();
        let captures = Captures::default();
        let id = captures.start(T.0, T.1, Arc::clone(&routing));
        assert!(matches!(
            captures.take(id + 1, T, None, 10, false),
            Err(CaptureError::Unknown(_))
        ));
        assert!(matches!(
            captures.take(id, (ShardId(2), ShardId(3)), None, 10, false),
            Err(CaptureError::Unknown(_))
        ));
        captures.replaced();
        assert!(matches!(
            captures.check(id, T.0, T.1),
            Err(CaptureError::Lost(_))
        ));
        let newer = captures.start(T.0, T.1, routing);
        assert!(newer > id, "ids grow");
        assert!(captures.check(newer, T.0, T.1).is_ok());
        captures.end(T.0, T.1);
        assert!(matches!(
            captures.check(newer, T.0, T.1),
            Err(CaptureError::Unknown(_))
        ));
    }

    #[test]
    fn an_orphaned_capture_is_forgotten_once_idle() {
        let routing = routing();
        let captures = Captures {
            idle_limit: Duration::ZERO,
            ..Captures::default()
        };
        let id = captures.start(T.0, T.1, Arc::clone(&routing));
        // Nobody drained it within the limit: the next applied write drops it.
        captures.applied(&[put(&keys_of(&routing, true, 1)[0])]);
        assert!(matches!(
            captures.check(id, T.0, T.1),
            Err(CaptureError::Unknown(_))
        ));
        assert!(captures.lock().is_none());
    }

    #[test]
    fn a_capture_that_outgrows_its_bound_is_lost_not_unbounded() {
        let routing = routing();
        let captures = Captures {
            max_bytes: 1 << 20,
            ..Captures::default()
        };
        let id = captures.start(T.0, T.1, Arc::clone(&routing));
        let keys = keys_of(&routing, true, 20_000);
        let writes: Vec<ReplicatedWrite> = keys.iter().map(put).collect();
        captures.applied(&writes[..1000]);
        assert!(captures.check(id, T.0, T.1).is_ok());
        captures.applied(&writes);
        assert!(matches!(
            captures.check(id, T.0, T.1),
            Err(CaptureError::Lost(_))
        ));
        // What it held is let go.
        let state = captures.lock();
        let c = state.as_ref().expect("capture");
        assert!(c.dirty.is_empty() && c.bytes == 0);
    }
}
