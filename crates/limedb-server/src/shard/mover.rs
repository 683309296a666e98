//! The move driver: on the leader of the map group, carries the move in progress through its
//! transfers' phases (see ARCHITECTURE.md, *Elasticity*), recording each finished phase in the
//! map (a compare-and-set) before starting the next. Every step can run again without harm, so
//! a new leader of the map group, or this one after an error, resumes from the phase the map
//! records. Phases follow each other without pause; the driver waits a tick only when there is
//! nothing to do or a step failed. Transfers from different sources are copied at the same
//! time, those from one source one after the other; ownership records change (a transfer's
//! preparation, catch-up and cut-over) one transfer at a time; clean-ups run beside the rest.
//!
//! A transfer's ranges stay served by the source while they are copied: the copy reads a source
//! replica that follows the changes to them ([`super::capture`]), the catch-up forwards those
//! changes round after round, and only when few are left does the source's record fence the
//! ranges; the last changes are forwarded and the destination's record takes them. Clients of
//! the ranges wait (coordinators retry on `WrongShard`) only from that fence to the map that
//! records the hand-over: the **cut-over**, whose longest pause the driver reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::{Method, StatusCode};
use limedb_cluster::{CaptureRef, ClusterMap, Group, Phase, Routing, ShardId, TransferState};

use super::transfer::{
    decode_drained, decode_page, encode_changes, hex_encode, Changes, PAGE_BYTES,
};
use super::ShardNode;
use crate::coordinator::map_client::{answer_error, MapClient};
use crate::metrics::MoveFigures;
use crate::shutdown::Shutdown;

/// Pause between steps.
const TICK: Duration = Duration::from_millis(100);

/// Bound on one request to a shard group.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the driver reports (`GET /api/v1/admin/moves` on the map group).
#[derive(Debug, Default)]
pub struct MoverStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    last_error: Option<String>,
    /// The copies in progress, by transfer.
    copying: BTreeMap<(ShardId, ShardId), CopyProgress>,
    /// The move being driven: its id, transfers done and in all.
    moving: Option<(u64, usize, usize)>,
    /// The longest cut-over (fence to the map recording the hand-over), in ms.
    longest_cut_over_ms: u64,
    /// The last cut-over's length, in ms.
    last_cut_over_ms: Option<u64>,
    /// Catch-up rounds and keys forwarded by them, since this replica started.
    catch_up_rounds: u64,
    catch_up_keys: u64,
    /// Copies started over because their capture was lost.
    copies_restarted: u64,
}

/// How far the copy of one transfer got.
#[derive(Clone, Copy, Debug)]
struct CopyProgress {
    from: ShardId,
    to: ShardId,
    keys: u64,
    bytes: u64,
    /// The source's estimate of the keys to copy.
    estimated_keys: u64,
    since: Instant,
}

impl CopyProgress {
    fn json(&self) -> serde_json::Value {
        let secs = self.since.elapsed().as_secs_f64().max(1e-3);
        let rate = self.keys as f64 / secs;
        let left = self.estimated_keys.saturating_sub(self.keys) as f64;
        serde_json::json!({
            "from": self.from.0, "to": self.to.0, "keys": self.keys, "bytes": self.bytes,
            "estimatedKeys": self.estimated_keys,
            "keysPerSec": rate,
            "mibPerSec": self.bytes as f64 / secs / 1_048_576.0,
            "etaSecs": (rate > 0.0).then(|| left / rate),
        })
    }
}

impl MoverStatus {
    /// The figures `/metrics` shows.
    pub fn figures(&self) -> MoveFigures {
        let s = self.lock();
        let (moving, done, all) = s.moving.map_or((0, 0, 0), |(_, d, a)| (1, d, a));
        MoveFigures {
            in_progress: moving,
            transfers_done: done as u64,
            transfers: all as u64,
            copy_keys: s.copying.values().map(|c| c.keys).sum(),
            copy_keys_estimated: s.copying.values().map(|c| c.estimated_keys).sum(),
            longest_cut_over_ms: s.longest_cut_over_ms,
            catch_up_keys: s.catch_up_keys,
            copies_restarted: s.copies_restarted,
            ..MoveFigures::default()
        }
    }

    fn set_error(&self, e: Option<String>) {
        self.lock().last_error = e;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver's report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let s = self.lock();
        let copying: Vec<_> = s.copying.values().map(CopyProgress::json).collect();
        serde_json::json!({
            "lastError": s.last_error,
            "copying": copying,
            "transfersDone": s.moving.map(|(_, done, _)| done),
            "transfers": s.moving.map(|(_, _, all)| all),
            "longestCutOverMs": s.longest_cut_over_ms,
            "lastCutOverMs": s.last_cut_over_ms,
            "catchUpRounds": s.catch_up_rounds,
            "catchUpKeys": s.catch_up_keys,
            "copiesRestarted": s.copies_restarted,
        })
    }
}

/// Runs the driver until `shutdown` (on every map-group replica; it acts only while leading).
pub async fn run(node: ShardNode, mut shutdown: Shutdown) {
    let mut pause = TICK;
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = TICK;
        let leads = node
            .inner
            .storage
            .replica()
            .is_some_and(|r| r.check_leader().is_ok());
        if !leads {
            continue;
        }
        match step(&node).await {
            Ok(advanced) => {
                node.inner.mover.set_error(None);
                // A phase just ended: start the next one at once (a transfer's ranges are
                // fenced from its copy to its cut-over).
                if advanced {
                    pause = Duration::ZERO;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the move driver's step failed; it will try again");
                node.inner.mover.set_error(Some(e));
            }
        }
    }
}

/// One step of the move in progress, if any: every unfinished transfer is driven to its end
/// (see [`drive`]), or the move is finished once they all are; whether anything changed.
async fn step(node: &ShardNode) -> Result<bool, String> {
    let Some(map) = node.read_map().await.map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let Some(current) = map.moving().cloned() else {
        node.inner.mover.lock().moving = None;
        return Ok(false);
    };
    if current.cancelling {
        return cancel(node, &map, current.id).await.map(|()| true);
    }
    // Furthest along first: a driver that takes over resumes the transfer it interrupted
    // before starting another one's copy from the same source.
    let mut unfinished: Vec<&TransferState> = current
        .transfers
        .iter()
        .filter(|t| t.phase != Phase::Done)
        .collect();
    unfinished.sort_by_key(|t| std::cmp::Reverse(t.phase));
    let pending: Vec<(ShardId, ShardId)> = unfinished.iter().map(|t| (t.from, t.to)).collect();
    node.inner.mover.lock().moving = Some((
        current.id,
        current.transfers.len() - pending.len(),
        current.transfers.len(),
    ));
    if pending.is_empty() {
        return finish(node, &map, current.id).await.map(|()| true);
    }
    let locks = TransferLocks::default();
    let mut drives = tokio::task::JoinSet::new();
    for t in unfinished {
        // The furthest along of a source's transfers between copy and cut-over starts holding
        // the source's lock, so that no other one overtakes it.
        let source = locks.source(t.from);
        let between = |first, last| (first..=last).contains(&t.phase);
        let held = Held {
            source: between(Phase::Copy, Phase::CutOver)
                .then(|| source.try_lock_owned().ok())
                .flatten(),
            // The (one) transfer between catch-up and cut-over may have fenced its source:
            // it goes on before any other record changes.
            records: between(Phase::CatchUp, Phase::CutOver)
                .then(|| Arc::clone(&locks.records).try_lock_owned().ok())
                .flatten(),
        };
        drives.spawn(drive(
            node.clone(),
            current.id,
            (t.from, t.to),
            locks.clone(),
            held,
        ));
    }
    let mut first_error = None;
    let mut watch = tokio::time::interval(CANCEL_CHECK);
    loop {
        tokio::select! {
            done = drives.join_next() => {
                let Some(done) = done else { break };
                let outcome =
                    done.unwrap_or_else(|e| Err(format!("a transfer's driver failed: {e}")));
                if let Err(e) = outcome {
                    first_error.get_or_insert(e);
                }
            }
            _ = watch.tick() => {
                // A cancellation stops the transfers where they are (every phase can be run
                // again, so stopping one half-way is like a driver dying); the next step
                // cancels.
                let cancelling = node.read_map().await.ok().flatten().is_some_and(|m| {
                    m.moving().is_some_and(|m| m.id == current.id && m.cancelling)
                });
                if cancelling {
                    drives.abort_all();
                    return Ok(true);
                }
            }
        }
    }
    first_error.map_or(Ok(true), Err)
}

/// How often a running move's driver checks whether the move is being cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(500);

/// Cancels move `move_id` (its cancellation asked): every shard of the base ring gets the
/// map's routing without the move as its ownership record, so a source that had fenced its
/// ranges for a cut-over serves them again; then the move leaves the map (and a group being
/// added with it). A group being added is not told: no coordinator routes to it any more, and
/// a later attempt to add it clears what it holds first.
async fn cancel(node: &ShardNode, map: &ClusterMap, move_id: u64) -> Result<(), String> {
    let mut cancelled = map.clone();
    cancelled
        .cancel_move(move_id)
        .map_err(|e| format!("cannot cancel move {move_id}: {e}"))?;
    // A destination that stays in the cluster (a removal's) drops its partial copies while
    // its record still lists them as received (best effort: a later move clears them anyway).
    let copied = map
        .moving()
        .into_iter()
        .flat_map(|m| m.transfers.iter())
        .filter(|t| t.phase >= Phase::Copy)
        .filter_map(|t| Some((t, client(cancelled.groups().get(&t.to)?))));
    for (t, destination) in copied {
        if let Err(e) = delete_keys(&destination, t.from, t.to).await {
            tracing::warn!(from = %t.from, to = %t.to, error = %e, "a cancelled transfer's copy stays at its destination");
        }
    }
    // Every shard is tried even when one fails, so a fenced source that answers serves again
    // as soon as it can; the move leaves the map only once they all have the record.
    let mut failed = Vec::new();
    for shard in cancelled.routing().shards() {
        let Some(group) = cancelled.groups().get(&shard) else {
            failed.push(format!("shard {shard} of the ring is not in the map"));
            continue;
        };
        if let Err(e) = set_record(&client(group), cancelled.routing()).await {
            failed.push(format!("shard {shard}: {e}"));
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "cancelling move {move_id}: {}; trying again",
            failed.join("; ")
        ));
    }
    update(node, |m| m.cancel_move(move_id)).await?;
    tracing::info!(move_id, "move cancelled");
    let mut status = node.inner.mover.lock();
    status.copying.clear();
    status.moving = None;
    Ok(())
}

/// The locks that order a move's transfers (see [`drive`]).
#[derive(Clone, Default)]
struct TransferLocks {
    /// Per source: held from a transfer's copy to its cut-over, as a source replica follows
    /// the changes of one transfer at a time (one capture per replica).
    sources: Arc<Mutex<BTreeMap<ShardId, Arc<tokio::sync::Mutex<()>>>>>,
    /// Held while ownership records change (a transfer's preparation, catch-up and cut-over),
    /// so that each fence and hand-over is computed from a map that records every earlier one.
    records: Arc<tokio::sync::Mutex<()>>,
}

impl TransferLocks {
    /// The lock of source `shard`.
    fn source(&self, shard: ShardId) -> Arc<tokio::sync::Mutex<()>> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(sources.entry(shard).or_default())
    }
}

/// The [`TransferLocks`] one transfer's driver holds.
#[derive(Default)]
struct Held {
    source: Option<tokio::sync::OwnedMutexGuard<()>>,
    records: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Held {
    /// Holds exactly the locks `phase` needs ([`locks_needed`]) of transfer from `from`,
    /// taking a source's lock before the records' (never waiting for a source while holding
    /// the records); whether it waited for one.
    async fn settle(&mut self, phase: Phase, locks: &TransferLocks, from: ShardId) -> bool {
        let (source, records) = locks_needed(phase);
        if !source {
            self.source = None;
        }
        if !records {
            self.records = None;
        }
        let mut waited = false;
        if source && self.source.is_none() {
            self.records = None;
            self.source = Some(locks.source(from).lock_owned().await);
            waited = true;
        }
        if records && self.records.is_none() {
            self.records = Some(Arc::clone(&locks.records).lock_owned().await);
            waited = true;
        }
        waited
    }
}

/// Which locks `phase` needs: (its source's, the records').
fn locks_needed(phase: Phase) -> (bool, bool) {
    match phase {
        Phase::Prepare => (false, true),
        Phase::Copy => (true, false),
        Phase::CatchUp | Phase::CutOver => (true, true),
        Phase::CleanUp | Phase::Done => (false, false),
    }
}

/// Carries transfer `from` → `to` of move `move_id` through its phases until it is done,
/// holding the locks each phase needs ([`locks_needed`]): copies from different sources run at
/// once, a source's transfers are copied and cut over one after the other, and records change
/// for one transfer at a time. A source's lock is always taken before the records' one.
async fn drive(
    node: ShardNode,
    move_id: u64,
    (from, to): (ShardId, ShardId),
    locks: TransferLocks,
    mut held: Held,
) -> Result<(), String> {
    loop {
        let Some(map) = node.read_map().await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let Some(transfer) = map
            .moving()
            .filter(|m| m.id == move_id)
            .and_then(|m| m.transfers.iter().find(|t| t.from == from && t.to == to))
            .cloned()
        else {
            return Ok(());
        };
        if transfer.phase == Phase::Done {
            return Ok(());
        }
        if held.settle(transfer.phase, &locks, from).await {
            // Read the map again: it may have changed while this transfer waited.
            continue;
        }
        run_phase(&node, &map, move_id, &transfer, (&locks, &mut held)).await?;
    }
}

/// Carries out `transfer`'s current phase and records the next one in the map, with the locks
/// the transfer's driver holds (a copy takes the records' lock to record its end).
async fn run_phase(
    node: &ShardNode,
    map: &ClusterMap,
    move_id: u64,
    transfer: &TransferState,
    (locks, held): (&TransferLocks, &mut Held),
) -> Result<(), String> {
    let (from, to) = (transfer.from, transfer.to);
    let group = |id: ShardId| {
        map.groups()
            .get(&id)
            .map(client)
            .ok_or_else(|| format!("shard {id} of the transfer is not in the map"))
    };
    let (source, destination) = (group(from)?, group(to)?);
    let phase = transfer.phase;
    match phase {
        Phase::Prepare => {
            set_record(&source, map.routing()).await?;
            set_record(&destination, map.routing()).await?;
            tracing::info!(%from, %to, "transfer prepared");
        }
        Phase::Copy => {
            let copied = copy(node, map, &source, &destination, (from, to)).await;
            if copied.is_err() {
                // The report shows no copy until the retry starts one.
                node.inner.mover.lock().copying.remove(&(from, to));
            }
            let (capture, keys, bytes) = copied?;
            // Entering the catch-up takes the records' lock, held until the cut-over is
            // recorded: at most one transfer is ever between catch-up and cut-over in the map,
            // so a driver that takes over knows which one may have fenced its source.
            if held.records.is_none() {
                held.records = Some(Arc::clone(&locks.records).lock_owned().await);
            }
            return update(node, |m| {
                m.record_copy(move_id, (from, to), capture, keys, bytes)?;
                m.advance(move_id, from, to, Phase::Copy).map(drop)
            })
            .await;
        }
        Phase::CatchUp => {
            let (keys, bytes, fenced_at) = match catch_up(
                node,
                map,
                &source,
                &destination,
                transfer,
            )
            .await?
            {
                CatchUp::Restart(why) => {
                    tracing::warn!(%from, %to, why = %why, "the copy starts over: its capture is lost");
                    node.inner.mover.lock().copies_restarted += 1;
                    return update(node, |m| m.restart_copy(move_id, from, to)).await;
                }
                CatchUp::Forwarded {
                    keys,
                    bytes,
                    fenced_at,
                } => (keys, bytes, fenced_at),
            };
            // The destination took the ranges: record both phases at once, so that routing
            // changes with this compare-and-set.
            update(node, |m| {
                m.record_progress(move_id, from, to, keys, bytes)?;
                m.advance(move_id, from, to, Phase::CatchUp)?;
                m.advance(move_id, from, to, Phase::CutOver).map(drop)
            })
            .await?;
            if let Some(at) = fenced_at {
                let ms = at.elapsed().as_millis() as u64;
                let mut status = node.inner.mover.lock();
                status.longest_cut_over_ms = status.longest_cut_over_ms.max(ms);
                status.last_cut_over_ms = Some(ms);
                tracing::info!(%from, %to, ms, "transfer cut over");
            }
            return Ok(());
        }
        Phase::CutOver => {
            set_record(&destination, &handed_over(map.routing(), transfer)?).await?;
        }
        Phase::CleanUp => {
            let started = Instant::now();
            let deleted = delete_keys(&source, from, to).await?;
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(%from, %to, deleted, ms, "transfer cleaned up");
        }
        Phase::Done => return Ok(()),
    }
    update(node, |m| m.advance(move_id, from, to, phase).map(drop)).await
}

/// Applies `change` to the stored map by compare-and-set, reading it again and reapplying the
/// change when another transfer's driver stored a newer version meanwhile.
async fn update(
    node: &ShardNode,
    change: impl Fn(&mut ClusterMap) -> Result<(), limedb_cluster::ClusterError>,
) -> Result<(), String> {
    const ATTEMPTS: usize = 20;
    for _ in 0..ATTEMPTS {
        let map = node
            .read_map()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the cluster map is gone")?;
        let mut next = map.clone();
        change(&mut next).map_err(|e| e.to_string())?;
        match node.compare_and_set_map(Some(map.version()), &next).await {
            Ok(()) => return Ok(()),
            Err(crate::error::ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "the cluster map kept changing: {ATTEMPTS} compare-and-sets in a row found a newer version"
    ))
}

/// Ends move `id`: the target ring becomes the ring; every group remaining gets the final record.
async fn finish(node: &ShardNode, map: &ClusterMap, id: u64) -> Result<(), String> {
    let mut next = map.clone();
    next.finish_move(id).map_err(|e| e.to_string())?;
    for group in next.groups().values() {
        set_record(&client(group), next.routing()).await?;
    }
    node.compare_and_set_map(Some(map.version()), &next)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(move_id = id, epoch = next.epoch(), "move finished");
    Ok(())
}

/// `routing` with `transfer` handed over.
fn handed_over(routing: &Routing, transfer: &TransferState) -> Result<Routing, String> {
    let mut fenced = routing.clone();
    fenced
        .hand_over(transfer.from, transfer.to)
        .map_err(|e| e.to_string())?;
    Ok(fenced)
}

/// A client of `group`'s leader (one per step, so that it remembers who leads).
fn client(group: &Group) -> MapClient {
    MapClient::for_group(group.replicas.values().cloned().collect())
}

/// Sends one request to the group's leader; anything but 200 is an error.
async fn call(
    group: &MapClient,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<Bytes, String> {
    let what = format!("{method} {path}");
    let (status, answer) = group.call(method, path, body, CALL_TIMEOUT).await?;
    if status != StatusCode::OK {
        return Err(answer_error(&what, status, &answer));
    }
    Ok(answer)
}

/// Gives `group` the ownership record `routing` (a newer one it holds is an error).
async fn set_record(group: &MapClient, routing: &Routing) -> Result<(), String> {
    let body = serde_json::to_vec(routing).map_err(|e| e.to_string())?;
    call(
        group,
        Method::PUT,
        "/api/v1/admin/ownership",
        Some(Bytes::from(body)),
    )
    .await
    .map(drop)
}

/// Deletes what `group` holds of transfer `from` → `to`'s ranges (clear at the destination,
/// clean-up at the source), one bounded stretch of keys per request; how many it deleted.
async fn delete_keys(group: &MapClient, from: ShardId, to: ShardId) -> Result<u64, String> {
    let mut deleted = 0;
    let mut after: Option<String> = None;
    loop {
        let path = format!(
            "/api/v1/admin/transfer/delete?from={from}&to={to}{}",
            after
                .as_ref()
                .map(|a| format!("&after={a}"))
                .unwrap_or_default()
        );
        let answer = call(group, Method::POST, &path, None).await?;
        let doc: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        deleted += doc["deleted"].as_u64().unwrap_or(0);
        match doc["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(deleted),
        }
    }
}

/// A client of replica `replica` of group `shard` alone (the one that follows a transfer's
/// changes), if the map still lists it.
fn replica_client(map: &ClusterMap, shard: ShardId, replica: u64) -> Option<MapClient> {
    let url = map.groups().get(&shard)?.replicas.get(&replica)?;
    Some(MapClient::for_group(vec![url.clone()]))
}

/// Bound on one exchange with the replica that follows a transfer's changes: one that does not
/// answer in this long is taken as gone, and the copy starts over elsewhere.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The catch-up fences the source once a round leaves at most this many changed keys (or after
/// [`MAX_ROUNDS_BEFORE_FENCE`] rounds, if writes keep up with it).
const FENCE_BELOW: u64 = 1000;
const MAX_ROUNDS_BEFORE_FENCE: u32 = 50;

/// How long the replica following the changes may take to apply the fence.
const FENCE_APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pages of a copy being stored at the destination at once: the source reads the next page
/// while they commit, and the destination's Raft log takes them in one write when it can.
const IMPORTS_IN_FLIGHT: usize = 2;

/// Starts following the changes to transfer `from` → `to` at the source's leader, clears what
/// the destination holds of the ranges (leftovers of an abandoned attempt, which must not come
/// back), then copies every key from the replica that follows the changes, page by page: the
/// source reads pages one after the other, up to [`IMPORTS_IN_FLIGHT`] are stored at once (they
/// hold different keys, and the catch-up starts only once all are stored). Returns the
/// capture, keys and bytes copied.
async fn copy(
    node: &ShardNode,
    map: &ClusterMap,
    source: &MapClient,
    destination: &MapClient,
    (from, to): (ShardId, ShardId),
) -> Result<(CaptureRef, u64, u64), String> {
    let answer = call(
        source,
        Method::POST,
        &format!("/api/v1/admin/transfer/capture?from={from}&to={to}"),
        None,
    )
    .await?;
    let doc: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    let (Some(replica), Some(id)) = (doc["replica"].as_u64(), doc["capture"].as_u64()) else {
        return Err(format!(
            "shard {from} answered a capture without its ids: {doc}"
        ));
    };
    let estimated_keys = doc["estimatedKeys"].as_u64().unwrap_or(0);
    let capture = CaptureRef { replica, id };
    let follower = replica_client(map, from, replica)
        .ok_or_else(|| format!("replica {replica} of shard {from} is not in the map"))?;
    let cleared = delete_keys(destination, from, to).await?;
    let started = Instant::now();
    let (mut keys, mut bytes) = (0u64, 0u64);
    let export = |after: Option<Bytes>| {
        let path = format!(
            "/api/v1/admin/transfer/export?from={from}&to={to}&capture={id}&maxBytes={PAGE_BYTES}{}",
            after
                .as_ref()
                .map(|a| format!("&after={}", hex_encode(a)))
                .unwrap_or_default()
        );
        let follower = &follower;
        Box::pin(timed(async move {
            decode_page(call(follower, Method::POST, &path, None).await?)
        }))
    };
    // Time spent reading pages and storing them (they overlap).
    let mut times = (Duration::ZERO, Duration::ZERO);
    let mut reading = Some(export(None));
    // A page read and waiting for room among the imports in flight.
    let mut read: Option<Changes> = None;
    let mut storing = FuturesUnordered::new();
    loop {
        if storing.len() < IMPORTS_IN_FLIGHT {
            if let Some(changes) = read.take() {
                keys += changes.puts.len() as u64;
                bytes += changes.bytes();
                storing.push(timed(import(destination, (from, to), changes)));
                node.inner.mover.lock().copying.insert(
                    (from, to),
                    CopyProgress {
                        from,
                        to,
                        keys,
                        bytes,
                        estimated_keys,
                        since: started,
                    },
                );
            }
        }
        let want_page = reading.is_some() && read.is_none();
        if !want_page && storing.is_empty() {
            break;
        }
        let failed = tokio::select! {
            Some((stored, import_time)) = storing.next(), if !storing.is_empty() => {
                times.1 += import_time;
                stored.err()
            }
            (page, export_time) = next_of(&mut reading), if want_page => {
                times.0 += export_time;
                match page {
                    Ok(mut page) => {
                        reading = page.next.take().map(|after| export(Some(after)));
                        read = Some(Changes {
                            deletes: Vec::new(),
                            puts: page.entries,
                        });
                        None
                    }
                    Err(e) => Some(e),
                }
            }
        };
        if let Some(e) = failed {
            // Imports still in flight finish first: none may land after a retry's clear.
            while storing.next().await.is_some() {}
            return Err(e);
        }
    }
    node.inner.mover.lock().copying.remove(&(from, to));
    tracing::info!(
        %from, %to, keys, bytes, cleared, capture = id, replica,
        ms = started.elapsed().as_millis() as u64,
        export_ms = times.0.as_millis() as u64,
        import_ms = times.1.as_millis() as u64,
        "transfer copied"
    );
    Ok((capture, keys, bytes))
}

/// The output of the future in `slot` (which the caller checked is there), emptying it.
async fn next_of<F: std::future::Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot.as_mut() {
        Some(future) => {
            let out = future.await;
            *slot = None;
            out
        }
        None => std::future::pending().await,
    }
}

/// `future`'s output and how long it took.
async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = future.await;
    (out, started.elapsed())
}

/// Stores `changes` at the destination (nothing to do when empty).
async fn import(
    destination: &MapClient,
    (from, to): (ShardId, ShardId),
    changes: Changes,
) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    call(
        destination,
        Method::POST,
        &format!("/api/v1/admin/transfer/import?from={from}&to={to}"),
        Some(encode_changes(&changes)),
    )
    .await
    .map(drop)
}

/// What a catch-up came to.
enum CatchUp {
    /// The destination owns the ranges; the catch-up forwarded this much.
    Forwarded {
        keys: u64,
        bytes: u64,
        /// When this catch-up fenced the source (`None`: an earlier driver did).
        fenced_at: Option<Instant>,
    },
    /// The capture is lost: the copy must start over.
    Restart(String),
}

/// Forwards the changes since the copy, round after round; fences the source once few are
/// left, forwards the last ones, and gives the destination the ranges.
async fn catch_up(
    node: &ShardNode,
    map: &ClusterMap,
    source: &MapClient,
    destination: &MapClient,
    transfer: &TransferState,
) -> Result<CatchUp, String> {
    let (from, to) = (transfer.from, transfer.to);
    let Some(capture) = transfer.capture else {
        return Ok(CatchUp::Restart("the map records no capture".into()));
    };
    let Some(follower) = replica_client(map, from, capture.replica) else {
        return Ok(CatchUp::Restart(format!(
            "replica {} of shard {from} left the map",
            capture.replica
        )));
    };
    let fenced = handed_over(map.routing(), transfer)?;
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut ack: Option<u64> = None;
    let mut rounds = 0u32;
    let mut fence_sent: Option<Instant> = None;
    loop {
        let path = format!(
            "/api/v1/admin/transfer/drain?from={from}&to={to}&capture={}{}",
            capture.id,
            ack.map(|g| format!("&ack={g}")).unwrap_or_default()
        );
        let drained = match follower
            .call(Method::POST, &path, None, CAPTURE_TIMEOUT)
            .await
        {
            Ok((StatusCode::OK, body)) => decode_drained(body)?,
            Ok((StatusCode::GONE, body)) => {
                return Ok(CatchUp::Restart(answer_error(
                    "drain",
                    StatusCode::GONE,
                    &body,
                )))
            }
            Ok((status, body)) => return Err(answer_error("drain", status, &body)),
            Err(e) => return Ok(CatchUp::Restart(e)),
        };
        let n = drained.changes.len() as u64;
        bytes += drained.changes.bytes();
        import(destination, (from, to), drained.changes).await?;
        keys += n;
        ack = Some(drained.generation);
        {
            let mut status = node.inner.mover.lock();
            status.catch_up_rounds += 1;
            status.catch_up_keys += n;
        }
        if drained.fenced {
            if n == 0 && drained.remaining == 0 {
                break;
            }
            continue;
        }
        rounds += 1;
        match fence_sent {
            None if n + drained.remaining <= FENCE_BELOW || rounds >= MAX_ROUNDS_BEFORE_FENCE => {
                set_record(source, &fenced).await?;
                fence_sent = Some(Instant::now());
            }
            Some(at) if at.elapsed() > FENCE_APPLY_TIMEOUT => {
                return Ok(CatchUp::Restart(format!(
                    "replica {} of shard {from} did not apply the fence within {} s",
                    capture.replica,
                    FENCE_APPLY_TIMEOUT.as_secs()
                )));
            }
            // The fence is written; the replica has not applied it yet.
            Some(_) if n == 0 => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => {}
        }
    }
    set_record(destination, &fenced).await?;
    Ok(CatchUp::Forwarded {
        keys,
        bytes,
        fenced_at: fence_sent,
    })
}

/// The move in progress with the driver's report, for `GET /api/v1/admin/moves`.
pub fn moves_json(map: Option<&ClusterMap>, status: &MoverStatus) -> serde_json::Value {
    serde_json::json!({
        "version": map.map(ClusterMap::version),
        "epoch": map.map(ClusterMap::epoch),
        "moving": map.and_then(ClusterMap::moving),
        "driver": status.json(),
    })
}
