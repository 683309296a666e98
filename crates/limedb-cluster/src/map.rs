//! The cluster map: which shard groups exist, who their replicas are, and who owns each hash,
//! at which epoch. Pure data with pure transitions; the map group replicates it and the
//! coordinators and shards act on it (see ARCHITECTURE.md, *Elasticity*).
//!
//! Ownership is a [`Routing`]: a **base** ring (the shard set before a move), the **target**
//! ring of the move in progress, if any, and the (source, destination) transfers already handed
//! over. A hash belongs to its target owner once its transfer is handed over, to its base owner
//! until then. Both rings are canonical ([`Ring::new`] of a shard set), so any two nodes that
//! hold the same routing route identically, and a finished move leaves exactly the ring a fresh
//! cluster of the new shard set would have.
//!
//! A [`ClusterMap`] adds the groups' replicas and the progress of the one move that may be in
//! progress. Every transition checks its preconditions and either applies whole or returns a
//! [`ClusterError`], leaving the map unchanged; every change of ownership bumps the epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::plan::{self, Transfer};
use crate::{key_hash, ClusterError, Ring, ShardId};

/// Who owns each hash, at which epoch. See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RoutingRepr", into = "RoutingRepr")]
pub struct Routing {
    epoch: u64,
    base: Ring,
    target: Option<Ring>,
    /// (from, to) pairs of the move in progress whose ranges belong to `to` already.
    handed_over: BTreeSet<(ShardId, ShardId)>,
}

/// The serialized form of a [`Routing`]: shard sets, not points.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoutingRepr {
    epoch: u64,
    vnodes_per_shard: u32,
    base: Vec<ShardId>,
    target: Option<Vec<ShardId>>,
    handed_over: Vec<(ShardId, ShardId)>,
}

impl TryFrom<RoutingRepr> for Routing {
    type Error = ClusterError;

    fn try_from(r: RoutingRepr) -> Result<Routing, ClusterError> {
        let base = Ring::new(&r.base, r.vnodes_per_shard)?;
        let target = match r.target {
            Some(shards) => Some(Ring::new(&shards, r.vnodes_per_shard)?),
            None => None,
        };
        let routing = Routing {
            epoch: r.epoch,
            base,
            target,
            handed_over: r.handed_over.into_iter().collect(),
        };
        let pending: BTreeSet<_> = routing.transfers().iter().map(|t| (t.from, t.to)).collect();
        if let Some(&(from, to)) = routing.handed_over.iter().find(|p| !pending.contains(p)) {
            return Err(ClusterError::NoSuchTransfer { from, to });
        }
        Ok(routing)
    }
}

impl From<Routing> for RoutingRepr {
    fn from(r: Routing) -> RoutingRepr {
        RoutingRepr {
            epoch: r.epoch,
            vnodes_per_shard: r.base.vnodes_per_shard(),
            base: r.base.shards().to_vec(),
            target: r.target.map(|t| t.shards().to_vec()),
            handed_over: r.handed_over.into_iter().collect(),
        }
    }
}

impl Routing {
    /// Epoch 1: `shards` own the hash space by their ring, no move in progress.
    ///
    /// # Errors
    ///
    /// Those of [`Ring::new`].
    pub fn new(shards: &[ShardId], vnodes_per_shard: u32) -> Result<Routing, ClusterError> {
        Ok(Routing {
            epoch: 1,
            base: Ring::new(shards, vnodes_per_shard)?,
            target: None,
            handed_over: BTreeSet::new(),
        })
    }

    /// The ring epoch: grows with every change of ownership.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ring before the move in progress (or the only ring when none is).
    #[must_use]
    pub fn base(&self) -> &Ring {
        &self.base
    }

    /// The ring the move in progress leads to.
    #[must_use]
    pub fn target(&self) -> Option<&Ring> {
        self.target.as_ref()
    }

    /// Every shard that owns part of the hash space now or will when the move in progress
    /// ends (the base ring's and the target ring's shards), sorted.
    #[must_use]
    pub fn shards(&self) -> Vec<ShardId> {
        let mut shards: BTreeSet<ShardId> = self.base.shards().iter().copied().collect();
        if let Some(target) = &self.target {
            shards.extend(target.shards().iter().copied());
        }
        shards.into_iter().collect()
    }

    /// The shards that own part of the hash space now: the base ring's, and the destinations
    /// of transfers handed over. Sorted.
    #[must_use]
    pub fn owners(&self) -> Vec<ShardId> {
        let mut shards: BTreeSet<ShardId> = self.base.shards().iter().copied().collect();
        shards.extend(self.handed_over.iter().map(|(_, to)| *to));
        shards.into_iter().collect()
    }

    /// The shard that owns `hash` now.
    ///
    /// ```
    /// use limedb_cluster::{key_hash, Routing, ShardId};
    ///
    /// let mut routing = Routing::new(&[ShardId(1), ShardId(2)], 64)?;
    /// let transfers = routing.begin(&[ShardId(1), ShardId(2), ShardId(3)])?;
    /// let hash = key_hash(b"user:42");
    /// let before = routing.owner(hash);
    /// for t in &transfers {
    ///     routing.hand_over(t.from, t.to)?;
    /// }
    /// assert_eq!(routing.owner(hash), routing.target().unwrap().shard_for_hash(hash));
    /// # let _ = before;
    /// # Ok::<(), limedb_cluster::ClusterError>(())
    /// ```
    #[must_use]
    pub fn owner(&self, hash: u64) -> ShardId {
        let base = self.base.shard_for_hash(hash);
        match &self.target {
            Some(target) => {
                let to = target.shard_for_hash(hash);
                if to != base && self.handed_over.contains(&(base, to)) {
                    to
                } else {
                    base
                }
            }
            None => base,
        }
    }

    /// The shard that owns `key` now.
    #[must_use]
    pub fn owner_of_key(&self, key: &[u8]) -> ShardId {
        self.owner(key_hash(key))
    }

    /// Whether `hash` is one that transfer `from` → `to` of the move in progress moves.
    #[must_use]
    pub fn in_transfer(&self, from: ShardId, to: ShardId, hash: u64) -> bool {
        match &self.target {
            Some(target) => {
                self.base.shard_for_hash(hash) == from && target.shard_for_hash(hash) == to
            }
            None => false,
        }
    }

    /// The transfers of the move in progress, handed over or not; empty when none is.
    #[must_use]
    pub fn transfers(&self) -> Vec<Transfer> {
        match &self.target {
            Some(target) => plan::transfers(&self.base, target),
            None => Vec::new(),
        }
    }

    /// Whether transfer `from` → `to` has been handed over.
    #[must_use]
    pub fn is_handed_over(&self, from: ShardId, to: ShardId) -> bool {
        self.handed_over.contains(&(from, to))
    }

    /// Starts a move to the ring of `shards`; returns its transfers. Bumps the epoch (ownership
    /// does not change yet).
    ///
    /// # Errors
    ///
    /// [`ClusterError::MoveInProgress`] if a move is already under way, [`ClusterError::NothingToMove`]
    /// if `shards` is the current shard set, and those of [`Ring::new`].
    pub fn begin(&mut self, shards: &[ShardId]) -> Result<Vec<Transfer>, ClusterError> {
        if let Some(target) = &self.target {
            return Err(ClusterError::MoveInProgress(format!(
                "from shards {} to {}",
                list(self.base.shards()),
                list(target.shards())
            )));
        }
        let target = Ring::new(shards, self.base.vnodes_per_shard())?;
        if target.shards() == self.base.shards() {
            return Err(ClusterError::NothingToMove);
        }
        let transfers = plan::transfers(&self.base, &target);
        self.target = Some(target);
        self.epoch += 1;
        Ok(transfers)
    }

    /// Gives the ranges of transfer `from` → `to` to `to`. Bumps the epoch and returns `true`;
    /// returns `false` and changes nothing if that transfer was handed over already (so a
    /// repeated cut-over is harmless).
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoMove`] without a move in progress, [`ClusterError::NoSuchTransfer`] if
    /// the move has no such transfer.
    pub fn hand_over(&mut self, from: ShardId, to: ShardId) -> Result<bool, ClusterError> {
        if self.target.is_none() {
            return Err(ClusterError::NoMove);
        }
        if !self
            .transfers()
            .iter()
            .any(|t| t.from == from && t.to == to)
        {
            return Err(ClusterError::NoSuchTransfer { from, to });
        }
        if !self.handed_over.insert((from, to)) {
            return Ok(false);
        }
        self.epoch += 1;
        Ok(true)
    }

    /// Whether the move in progress (`move_id`) can still be cancelled: none of its transfers
    /// was handed over.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoMove`] without a move in progress, [`ClusterError::HandedOver`] when a
    /// transfer was handed over.
    pub fn check_cancellable(&self, move_id: u64) -> Result<(), ClusterError> {
        if self.target.is_none() {
            return Err(ClusterError::NoMove);
        }
        if !self.handed_over.is_empty() {
            let transfers = self
                .handed_over
                .iter()
                .map(|(from, to)| format!("{from} → {to}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ClusterError::HandedOver { move_id, transfers });
        }
        Ok(())
    }

    /// Abandons the move in progress (`move_id`), none of whose transfers was handed over: the
    /// base ring stays the ring. Bumps the epoch by two: past the epoch of any fence a source
    /// may hold (a fence is this routing with one more hand-over, one epoch up), so the record
    /// that lifts it is newer.
    ///
    /// # Errors
    ///
    /// As [`Routing::check_cancellable`].
    pub fn cancel(&mut self, move_id: u64) -> Result<(), ClusterError> {
        self.check_cancellable(move_id)?;
        self.target = None;
        self.epoch += 2;
        Ok(())
    }

    /// Ends the move: the target ring becomes the base. Bumps the epoch; ownership is what it
    /// already was.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoMove`] without a move in progress, [`ClusterError::TransfersPending`]
    /// while a transfer has not been handed over.
    pub fn finish(&mut self) -> Result<(), ClusterError> {
        let pending = self
            .transfers()
            .iter()
            .filter(|t| !self.handed_over.contains(&(t.from, t.to)))
            .count();
        let Some(target) = self.target.take_if(|_| pending == 0) else {
            return Err(if self.target.is_none() {
                ClusterError::NoMove
            } else {
                ClusterError::TransfersPending(pending)
            });
        };
        self.base = target;
        self.handed_over.clear();
        self.epoch += 1;
        Ok(())
    }
}

/// One shard group as the map knows it: its replicas' ids and HTTP URLs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Replica id → HTTP URL, as given to `--peers`.
    pub replicas: BTreeMap<u64, String>,
}

/// What a move does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MoveKind {
    /// A new group takes its share of the ring.
    AddShard(ShardId),
    /// A group gives all its ranges away, then leaves the map.
    RemoveShard(ShardId),
}

/// The phase a transfer is in: the step being carried out (see ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// The destination marks the ranges as receiving and clears leftovers.
    Prepare,
    /// The source streams a consistent copy of the ranges.
    Copy,
    /// The source forwards the writes made since its copy began.
    CatchUp,
    /// Fence at the source, last writes forwarded, ownership to the destination.
    CutOver,
    /// The source deletes what it gave away.
    CleanUp,
    /// Nothing left to do.
    Done,
}

impl Phase {
    /// The phase after this one (`Done` stays `Done`).
    #[must_use]
    pub fn next(self) -> Phase {
        match self {
            Phase::Prepare => Phase::Copy,
            Phase::Copy => Phase::CatchUp,
            Phase::CatchUp => Phase::CutOver,
            Phase::CutOver => Phase::CleanUp,
            Phase::CleanUp | Phase::Done => Phase::Done,
        }
    }

    /// Lowercase name, as in JSON and `limedb admin status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Copy => "copy",
            Phase::CatchUp => "catchUp",
            Phase::CutOver => "cutOver",
            Phase::CleanUp => "cleanUp",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One transfer of the move in progress and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferState {
    /// Source shard.
    pub from: ShardId,
    /// Destination shard.
    pub to: ShardId,
    /// The step being carried out.
    pub phase: Phase,
    /// Keys copied so far (copy and catch-up).
    pub keys_copied: u64,
    /// Key and value bytes copied so far.
    pub bytes_copied: u64,
    /// The source replica following the changes to the ranges since the copy began (set when
    /// the copy ends; the catch-up drains it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureRef>,
}

/// Where the changes to a transfer's ranges are followed: a capture on one replica of the
/// source group, known by an id that replica chose (a restarted process knows none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureRef {
    /// The source replica that follows the changes.
    pub replica: u64,
    /// The capture's id on that replica.
    pub id: u64,
}

/// The move in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    /// Unique within the map, growing.
    pub id: u64,
    /// What it does.
    pub kind: MoveKind,
    /// One per (source, destination) pair, sorted.
    pub transfers: Vec<TransferState>,
    /// An operator asked to cancel it: its transfers change no more, and the driver gives the
    /// sources their ranges back and drops the move.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelling: bool,
}

/// The cluster map (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMap {
    /// Grows with every change of the map (the ring epoch only with changes of ownership): what
    /// a compare-and-set of the map compares.
    #[serde(default)]
    version: u64,
    routing: Routing,
    groups: BTreeMap<ShardId, Group>,
    moving: Option<Move>,
    next_move_id: u64,
}

impl ClusterMap {
    /// The map of a new cluster: `groups` share the ring, epoch 1.
    ///
    /// # Errors
    ///
    /// [`ClusterError::EmptyGroup`] for a group without replicas, and those of [`Ring::new`].
    pub fn bootstrap(
        groups: BTreeMap<ShardId, Group>,
        vnodes_per_shard: u32,
    ) -> Result<ClusterMap, ClusterError> {
        if let Some((&id, _)) = groups.iter().find(|(_, g)| g.replicas.is_empty()) {
            return Err(ClusterError::EmptyGroup(id));
        }
        let shards: Vec<ShardId> = groups.keys().copied().collect();
        Ok(ClusterMap {
            version: 1,
            routing: Routing::new(&shards, vnodes_per_shard)?,
            groups,
            moving: None,
            next_move_id: 1,
        })
    }

    /// The ring epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.routing.epoch()
    }

    /// The map's version: grows with every change (see [`ClusterMap`]'s fields).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Who owns each hash.
    #[must_use]
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// Every group the map knows, including one joining or leaving.
    #[must_use]
    pub fn groups(&self) -> &BTreeMap<ShardId, Group> {
        &self.groups
    }

    /// The move in progress.
    #[must_use]
    pub fn moving(&self) -> Option<&Move> {
        self.moving.as_ref()
    }

    /// Starts adding group `id` with `group`'s replicas; returns the move's id.
    ///
    /// # Errors
    ///
    /// [`ClusterError::ShardExists`], [`ClusterError::EmptyGroup`],
    /// [`ClusterError::MoveInProgress`].
    pub fn add_shard(&mut self, id: ShardId, group: Group) -> Result<u64, ClusterError> {
        if self.groups.contains_key(&id) {
            return Err(ClusterError::ShardExists(id));
        }
        if group.replicas.is_empty() {
            return Err(ClusterError::EmptyGroup(id));
        }
        let mut shards = self.routing.base().shards().to_vec();
        shards.push(id);
        let move_id = self.begin(MoveKind::AddShard(id), &shards)?;
        self.groups.insert(id, group);
        Ok(move_id)
    }

    /// Starts removing group `id`: its ranges go to the others; returns the move's id.
    ///
    /// # Errors
    ///
    /// [`ClusterError::UnknownShard`], [`ClusterError::LastShard`],
    /// [`ClusterError::MoveInProgress`].
    pub fn remove_shard(&mut self, id: ShardId) -> Result<u64, ClusterError> {
        if !self.groups.contains_key(&id) {
            return Err(ClusterError::UnknownShard(id));
        }
        let shards: Vec<ShardId> = self
            .routing
            .base()
            .shards()
            .iter()
            .copied()
            .filter(|&s| s != id)
            .collect();
        if shards.is_empty() {
            return Err(ClusterError::LastShard(id));
        }
        self.begin(MoveKind::RemoveShard(id), &shards)
    }

    fn begin(&mut self, kind: MoveKind, shards: &[ShardId]) -> Result<u64, ClusterError> {
        if let Some(m) = &self.moving {
            return Err(ClusterError::MoveInProgress(format!(
                "move {} ({:?})",
                m.id, m.kind
            )));
        }
        let mut routing = self.routing.clone();
        let transfers = routing.begin(shards)?;
        let id = self.next_move_id;
        self.routing = routing;
        self.version += 1;
        self.next_move_id += 1;
        self.moving = Some(Move {
            id,
            kind,
            transfers: transfers
                .into_iter()
                .map(|t| TransferState {
                    from: t.from,
                    to: t.to,
                    phase: Phase::Prepare,
                    keys_copied: 0,
                    bytes_copied: 0,
                    capture: None,
                })
                .collect(),
            cancelling: false,
        });
        Ok(id)
    }

    /// Moves transfer `from` → `to` of move `move_id` from phase `at` to the next. Leaving
    /// [`Phase::CutOver`] hands its ranges to `to` (the epoch grows). Returns the new phase.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchMove`], [`ClusterError::NoSuchTransfer`], and
    /// [`ClusterError::WrongPhase`] when the transfer is not at `at` (another driver moved it
    /// on, or the caller's view is stale).
    pub fn advance(
        &mut self,
        move_id: u64,
        from: ShardId,
        to: ShardId,
        at: Phase,
    ) -> Result<Phase, ClusterError> {
        let transfer = self.transfer_mut(move_id, from, to)?;
        if transfer.phase != at {
            return Err(ClusterError::WrongPhase {
                expected: at,
                actual: transfer.phase,
            });
        }
        if at == Phase::Done {
            return Ok(Phase::Done);
        }
        let next = at.next();
        if at == Phase::CutOver {
            self.routing.hand_over(from, to)?;
        }
        self.transfer_mut(move_id, from, to)?.phase = next;
        self.version += 1;
        Ok(next)
    }

    /// Records the copy of transfer `from` → `to`, which is in [`Phase::Copy`]: what it copied
    /// (a copy starts over, so the counters are replaced) and the capture its catch-up drains.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchMove`], [`ClusterError::NoSuchTransfer`],
    /// [`ClusterError::WrongPhase`].
    pub fn record_copy(
        &mut self,
        move_id: u64,
        (from, to): (ShardId, ShardId),
        capture: CaptureRef,
        keys: u64,
        bytes: u64,
    ) -> Result<(), ClusterError> {
        let t = self.transfer_mut(move_id, from, to)?;
        if t.phase != Phase::Copy {
            return Err(ClusterError::WrongPhase {
                expected: Phase::Copy,
                actual: t.phase,
            });
        }
        t.keys_copied = keys;
        t.bytes_copied = bytes;
        t.capture = Some(capture);
        self.version += 1;
        Ok(())
    }

    /// Sends transfer `from` → `to` from [`Phase::CatchUp`] back to [`Phase::Copy`]: its
    /// capture was lost (the source replica restarted, or fell behind and took a snapshot), so
    /// the changes since the copy are unknown and the copy starts over.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchMove`], [`ClusterError::NoSuchTransfer`],
    /// [`ClusterError::WrongPhase`].
    pub fn restart_copy(
        &mut self,
        move_id: u64,
        from: ShardId,
        to: ShardId,
    ) -> Result<(), ClusterError> {
        let t = self.transfer_mut(move_id, from, to)?;
        if t.phase != Phase::CatchUp {
            return Err(ClusterError::WrongPhase {
                expected: Phase::CatchUp,
                actual: t.phase,
            });
        }
        t.phase = Phase::Copy;
        t.capture = None;
        self.version += 1;
        Ok(())
    }

    /// Adds copied keys and bytes to transfer `from` → `to`'s counters.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchMove`], [`ClusterError::NoSuchTransfer`].
    pub fn record_progress(
        &mut self,
        move_id: u64,
        from: ShardId,
        to: ShardId,
        keys: u64,
        bytes: u64,
    ) -> Result<(), ClusterError> {
        let t = self.transfer_mut(move_id, from, to)?;
        t.keys_copied = t.keys_copied.saturating_add(keys);
        t.bytes_copied = t.bytes_copied.saturating_add(bytes);
        self.version += 1;
        Ok(())
    }

    /// Ends move `move_id` once every transfer is done: the target ring becomes the ring, and a
    /// removed group leaves the map.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchMove`], [`ClusterError::TransfersPending`].
    pub fn finish_move(&mut self, move_id: u64) -> Result<(), ClusterError> {
        let m = self.move_mut(move_id)?;
        let pending = m
            .transfers
            .iter()
            .filter(|t| t.phase != Phase::Done)
            .count();
        if pending > 0 {
            return Err(ClusterError::TransfersPending(pending));
        }
        let kind = m.kind;
        self.routing.finish()?;
        self.moving = None;
        if let MoveKind::RemoveShard(id) = kind {
            self.groups.remove(&id);
        }
        self.version += 1;
        Ok(())
    }

    /// Asks to cancel move `move_id`, which has handed nothing over: from now on its transfers
    /// change no more (see [`ClusterMap::cancel_move`]). Asking twice is asking once.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchMove`], [`ClusterError::HandedOver`].
    pub fn request_cancel(&mut self, move_id: u64) -> Result<(), ClusterError> {
        self.move_mut(move_id)?;
        self.routing.check_cancellable(move_id)?;
        if let Some(m) = self.moving.as_mut() {
            if !m.cancelling {
                m.cancelling = true;
                self.version += 1;
            }
        }
        Ok(())
    }

    /// Drops move `move_id`, whose cancellation was asked: the base ring stays the ring (the
    /// epoch grows by two, see [`Routing::cancel`]) and a group being added leaves the map.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchMove`] (also for a move whose cancellation was not asked),
    /// [`ClusterError::HandedOver`].
    pub fn cancel_move(&mut self, move_id: u64) -> Result<(), ClusterError> {
        let m = self.move_mut(move_id)?;
        if !m.cancelling {
            return Err(ClusterError::NoSuchMove(move_id));
        }
        let kind = m.kind;
        self.routing.cancel(move_id)?;
        self.moving = None;
        if let MoveKind::AddShard(id) = kind {
            self.groups.remove(&id);
        }
        self.version += 1;
        Ok(())
    }

    /// What differs between this map and a coordinator's `--shards` list (shard id → URL):
    /// shards missing on either side, and shards whose URL is not one of the group's replicas.
    /// Empty when they agree. A joining group counts as part of the map.
    #[must_use]
    pub fn differences(&self, shards: &BTreeMap<ShardId, String>) -> Vec<String> {
        let mut out = Vec::new();
        for (id, url) in shards {
            match self.groups.get(id) {
                None => out.push(format!("shard {id} ({url}) is not in the cluster map")),
                Some(g) if !g.replicas.values().any(|u| same_url(u, url)) => out.push(format!(
                    "shard {id} is {url} on the command line but its replicas are {} in the cluster map",
                    g.replicas.values().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(_) => {}
            }
        }
        for id in self.groups.keys().filter(|id| !shards.contains_key(id)) {
            out.push(format!(
                "shard {id} is in the cluster map but not on the command line"
            ));
        }
        out
    }

    fn move_mut(&mut self, move_id: u64) -> Result<&mut Move, ClusterError> {
        self.moving
            .as_mut()
            .filter(|m| m.id == move_id)
            .ok_or(ClusterError::NoSuchMove(move_id))
    }

    fn transfer_mut(
        &mut self,
        move_id: u64,
        from: ShardId,
        to: ShardId,
    ) -> Result<&mut TransferState, ClusterError> {
        let m = self.move_mut(move_id)?;
        if m.cancelling {
            return Err(ClusterError::Cancelling(move_id));
        }
        m.transfers
            .iter_mut()
            .find(|t| t.from == from && t.to == to)
            .ok_or(ClusterError::NoSuchTransfer { from, to })
    }
}

/// URLs compared without a trailing slash.
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn list(shards: &[ShardId]) -> String {
    shards
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
