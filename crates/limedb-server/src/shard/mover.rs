//! The move driver: on the leader of the map group, carries the move in progress through its
//! transfers' phases (see ARCHITECTURE.md, *Elasticity*), one step per tick, recording each
//! finished phase in the map (a compare-and-set) before starting the next. Every step can run
//! again without harm, so a new leader of the map group, or this one after an error, resumes
//! from the phase the map records. Phases follow each other without pause; the driver waits a
//! tick only when there is nothing to do or a step failed.
//!
//! This version hands a transfer's ranges over **before** copying them: the source is fenced
//! (its ownership record gives the ranges away), then the keys are copied, then the
//! destination takes them. Clients of the moving ranges wait (coordinators retry until
//! `--shard-timeout-ms`) while one transfer is copied; the planned copy-then-catch-up keeps that
//! pause to the cut-over itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use limedb_cluster::{ClusterMap, Group, Phase, Routing, ShardId, TransferState};

use super::transfer::{decode_page, encode_entries, hex_encode, PAGE_BYTES};
use super::ShardNode;
use crate::coordinator::map_client::{answer_error, MapClient};
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
    /// Keys and bytes copied so far by the transfer being copied, and since when.
    copying: Option<(ShardId, ShardId, u64, u64, Instant)>,
    /// The longest copy of a transfer, in ms (its ranges are fenced during the copy).
    longest_pause_ms: u64,
}

impl MoverStatus {
    fn set_error(&self, e: Option<String>) {
        self.lock().last_error = e;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver's report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let s = self.lock();
        let copying = s.copying.map(|(from, to, keys, bytes, since)| {
            let secs = since.elapsed().as_secs_f64().max(1e-3);
            serde_json::json!({
                "from": from.0, "to": to.0, "keys": keys, "bytes": bytes,
                "keysPerSec": keys as f64 / secs,
                "mibPerSec": bytes as f64 / secs / 1_048_576.0,
            })
        });
        serde_json::json!({
            "lastError": s.last_error,
            "copying": copying,
            "longestPauseMs": s.longest_pause_ms,
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

/// One step of the move in progress, if any; whether a phase ended.
async fn step(node: &ShardNode) -> Result<bool, String> {
    let Some(map) = node.read_map().await.map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let Some(current) = map.moving().cloned() else {
        return Ok(false);
    };
    let Some(transfer) = current.transfers.iter().find(|t| t.phase != Phase::Done) else {
        return finish(node, &map, current.id).await.map(|()| true);
    };
    let mut next = map.clone();
    let (from, to) = (transfer.from, transfer.to);
    let group = |id: ShardId| {
        map.groups()
            .get(&id)
            .map(client)
            .ok_or_else(|| format!("shard {id} of the transfer is not in the map"))
    };
    let (source, destination) = (group(from)?, group(to)?);
    match transfer.phase {
        Phase::Prepare => {
            set_record(&source, map.routing()).await?;
            set_record(&destination, map.routing()).await?;
            // Leftovers of an abandoned attempt must not come back.
            let cleared = delete_keys(&destination, from, to).await?;
            tracing::info!(%from, %to, cleared, "transfer prepared");
        }
        Phase::Copy => {
            set_record(&source, &handed_over(map.routing(), transfer)?).await?;
            let fenced_at = Instant::now();
            let (keys, bytes) = copy(node, &source, &destination, from, to).await?;
            next.record_progress(current.id, from, to, keys, bytes)
                .map_err(|e| e.to_string())?;
            tracing::info!(%from, %to, keys, bytes, ms = fenced_at.elapsed().as_millis() as u64, "transfer copied");
        }
        Phase::CatchUp => {}
        Phase::CutOver => {
            set_record(&destination, &handed_over(map.routing(), transfer)?).await?;
        }
        Phase::CleanUp => {
            let deleted = delete_keys(&source, from, to).await?;
            tracing::info!(%from, %to, deleted, "transfer cleaned up");
        }
        Phase::Done => return Ok(false),
    }
    next.advance(current.id, from, to, transfer.phase)
        .map_err(|e| e.to_string())?;
    node.compare_and_set_map(Some(map.version()), &next)
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
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

async fn delete_keys(group: &MapClient, from: ShardId, to: ShardId) -> Result<u64, String> {
    let answer = call(
        group,
        Method::POST,
        &format!("/api/v1/admin/transfer/delete?from={from}&to={to}"),
        None,
    )
    .await?;
    let doc: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    Ok(doc["deleted"].as_u64().unwrap_or(0))
}

/// Copies every key of the transfer, page by page; returns keys and bytes copied.
async fn copy(
    node: &ShardNode,
    source: &MapClient,
    destination: &MapClient,
    from: ShardId,
    to: ShardId,
) -> Result<(u64, u64), String> {
    let started = Instant::now();
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut after: Option<Bytes> = None;
    loop {
        let path = format!(
            "/api/v1/admin/transfer/export?from={from}&to={to}&maxBytes={PAGE_BYTES}{}",
            after
                .as_ref()
                .map(|a| format!("&after={}", hex_encode(a)))
                .unwrap_or_default()
        );
        let page = decode_page(call(source, Method::POST, &path, None).await?)?;
        if !page.entries.is_empty() {
            keys += page.entries.len() as u64;
            bytes += page
                .entries
                .iter()
                .map(|e| (e.key.len() + e.value.len()) as u64)
                .sum::<u64>();
            let body = encode_entries(&page.entries);
            call(
                destination,
                Method::POST,
                &format!("/api/v1/admin/transfer/import?from={from}&to={to}"),
                Some(body),
            )
            .await?;
            node.inner.mover.lock().copying = Some((from, to, keys, bytes, started));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut status = node.inner.mover.lock();
    status.copying = None;
    let ms = started.elapsed().as_millis() as u64;
    status.longest_pause_ms = status.longest_pause_ms.max(ms);
    Ok((keys, bytes))
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
