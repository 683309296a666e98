//! The shard's side of a transfer (keys of some hash ranges going from shard `from` to shard
//! `to`; see ARCHITECTURE.md, *Elasticity*): following the changes to them at a source replica
//! ([`super::capture`]), exporting them and draining their changes there, importing them at the
//! destination, clearing what a destination holds of them from an abandoned attempt, and
//! cleaning them up at the source once handed over.
//!
//! Each operation checks the shard's ownership record: the transfer must belong to the move in
//! progress, and the operation must fit where the record says it stands (a destination imports
//! only until the ranges are handed to it, so a stale driver cannot overwrite newer writes; a
//! source cleans up only after handing them over). Export and drain name a capture and read
//! that replica's own engine, leader or not. Entries travel in a small binary format:
//! `key_len u32 | key | value_len u32 | value | expires_at_ms u64 (0: never)`, little-endian;
//! a batch of changes puts deleted keys first: `count u32 | (key_len u32 | key)* | entries`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use limedb_cluster::{key_hash, Routing, ShardId};
use limedb_raft::ReplicatedWrite;

use super::capture::CaptureError;
use super::ShardNode;
use crate::error::ApiError;

/// Entries scanned per engine call while looking for a transfer's keys.
const SCAN_STEP: usize = 4096;

/// Keys per replicated batch when deleting (clear, clean-up). Client writes to the shard's
/// other keys queue behind each batch in its Raft log: larger batches made the clean-up no
/// faster and clients' p99 during a move twice as long (`bench/rebalance.sh`, 8192 against
/// 256 to 1024).
const DELETE_BATCH: usize = 512;

/// Keys one clear or clean-up request scans at most (so that each is short).
pub const DELETE_SCAN_KEYS: usize = 64 * SCAN_STEP;

/// One key with its value and absolute expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Absolute expiry in ms since the Unix epoch; `None` never expires.
    pub expires_at_ms: Option<u64>,
}

/// A page of an export: entries in key order, and where the next page starts (`None`: the
/// source has no more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPage {
    /// The entries.
    pub entries: Vec<Entry>,
    /// The key after which the next page starts.
    pub next: Option<Bytes>,
}

/// Waits for the batch being deleted in `committing`, if any: how many keys it deleted.
async fn committed(
    committing: &mut Option<tokio::task::JoinHandle<Result<u64, ApiError>>>,
) -> Result<u64, ApiError> {
    match committing.take() {
        Some(task) => task
            .await
            .map_err(|e| ApiError::Internal(format!("a deleting task failed: {e}")))?,
        None => Ok(0),
    }
}

/// Encodes an export page: `next_len u32 (u32::MAX: no more) | next | entries`.
pub fn encode_page(page: &ExportPage) -> Bytes {
    let mut out = BytesMut::new();
    match &page.next {
        Some(next) => {
            out.put_u32_le(wire_len(next.len()));
            out.put_slice(next);
        }
        None => out.put_u32_le(u32::MAX),
    }
    out.extend_from_slice(&encode_entries(&page.entries));
    out.freeze()
}

/// Decodes what [`encode_page`] wrote.
pub fn decode_page(mut body: Bytes) -> Result<ExportPage, String> {
    if body.remaining() < 4 {
        return Err("an export page ends before its header".into());
    }
    let next = match body.get_u32_le() {
        u32::MAX => None,
        len if body.remaining() >= len as usize => Some(body.split_to(len as usize)),
        len => {
            return Err(format!(
                "an export page's next key of {len} bytes is cut short"
            ))
        }
    };
    Ok(ExportPage {
        entries: decode_entries(body)?,
        next,
    })
}

/// Changes for a destination: keys to store and keys to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys deleted at the source (or expired there).
    pub deletes: Vec<Bytes>,
    /// Keys with their current values.
    pub puts: Vec<Entry>,
}

impl Changes {
    /// How many keys the batch touches.
    pub fn len(&self) -> usize {
        self.deletes.len() + self.puts.len()
    }

    /// Whether the batch touches no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key and value bytes in the batch.
    pub fn bytes(&self) -> u64 {
        let deleted: usize = self.deletes.iter().map(Bytes::len).sum();
        let put: usize = self.puts.iter().map(|e| e.key.len() + e.value.len()).sum();
        (deleted + put) as u64
    }
}

/// Encodes a batch of changes: `count u32 | (key_len u32 | key)* | entries`.
pub fn encode_changes(changes: &Changes) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32_le(wire_len(changes.deletes.len()));
    for key in &changes.deletes {
        out.put_u32_le(wire_len(key.len()));
        out.put_slice(key);
    }
    out.extend_from_slice(&encode_entries(&changes.puts));
    out.freeze()
}

/// Decodes what [`encode_changes`] wrote; a truncated or malformed body is an error.
pub fn decode_changes(mut body: Bytes) -> Result<Changes, String> {
    if body.remaining() < 4 {
        return Err("a batch of changes ends before its header".into());
    }
    let count = body.get_u32_le() as usize;
    let mut deletes = Vec::with_capacity(count.min(body.remaining() / 4));
    for _ in 0..count {
        deletes.push(take_bytes(&mut body, "deleted key")?);
    }
    Ok(Changes {
        deletes,
        puts: decode_entries(body)?,
    })
}

/// What a drain answers: the take's generation (to acknowledge), whether the replica had
/// applied the fence before the take, the keys left, and the changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Acknowledge it with the next drain.
    pub generation: u64,
    /// The replica had applied the record handing the ranges over.
    pub fenced: bool,
    /// Keys left to drain.
    pub remaining: u64,
    /// The changes.
    pub changes: Changes,
}

/// Encodes a drain's answer: `generation u64 | fenced u8 | remaining u64 | changes`.
pub fn encode_drained(d: &Drained) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u64_le(d.generation);
    out.put_u8(u8::from(d.fenced));
    out.put_u64_le(d.remaining);
    out.extend_from_slice(&encode_changes(&d.changes));
    out.freeze()
}

/// Decodes what [`encode_drained`] wrote.
pub fn decode_drained(mut body: Bytes) -> Result<Drained, String> {
    if body.remaining() < 17 {
        return Err("a drain's answer ends before its header".into());
    }
    let generation = body.get_u64_le();
    let fenced = match body.get_u8() {
        0 => false,
        1 => true,
        other => return Err(format!("a drain's answer has fenced flag {other}")),
    };
    let remaining = body.get_u64_le();
    Ok(Drained {
        generation,
        fenced,
        remaining,
        changes: decode_changes(body)?,
    })
}

/// Encodes `entries`.
pub fn encode_entries(entries: &[Entry]) -> Bytes {
    let mut out = BytesMut::with_capacity(
        entries
            .iter()
            .map(|e| 16 + e.key.len() + e.value.len())
            .sum(),
    );
    for e in entries {
        out.put_u32_le(wire_len(e.key.len()));
        out.put_slice(&e.key);
        out.put_u32_le(wire_len(e.value.len()));
        out.put_slice(&e.value);
        out.put_u64_le(e.expires_at_ms.unwrap_or(0));
    }
    out.freeze()
}

fn wire_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes what [`encode_entries`] wrote; a truncated or malformed body is an error.
pub fn decode_entries(mut body: Bytes) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    while body.has_remaining() {
        let key = take_bytes(&mut body, "key")?;
        let value = take_bytes(&mut body, "value")?;
        if body.remaining() < 8 {
            return Err("an entry ends before its expiry".into());
        }
        let at = body.get_u64_le();
        entries.push(Entry {
            key,
            value,
            expires_at_ms: (at != 0).then_some(at),
        });
    }
    Ok(entries)
}

fn take_bytes(body: &mut Bytes, what: &str) -> Result<Bytes, String> {
    if body.remaining() < 4 {
        return Err(format!("an entry ends before its {what} length"));
    }
    let len = body.get_u32_le() as usize;
    if body.remaining() < len {
        return Err(format!(
            "an entry's {what} of {len} bytes is cut short at {}",
            body.remaining()
        ));
    }
    Ok(body.split_to(len))
}

/// Largest import body: a driver sends pages of about [`PAGE_BYTES`], which may end with one
/// value of up to the largest value a shard accepts.
const MAX_IMPORT_BYTES: usize = crate::config::MAX_VALUE_BYTES_CAP + (64 << 20);

/// What a driver asks of an export page by default.
pub const PAGE_BYTES: usize = 1 << 20;

/// Keys a drain hands out at most.
pub const DRAIN_KEYS: usize = 8192;

/// The HTTP routes of a transfer, on every shard:
///
/// | request | answer |
/// |---|---|
/// | `POST /api/v1/admin/transfer/capture?from=S&to=D` (S's leader) | `{"capture": id, "replica": r}`: replica r follows the changes |
/// | `POST /api/v1/admin/transfer/export?from=S&to=D&capture=ID[&after=HEX][&maxBytes=N]` (that replica) | a page ([`encode_page`]): the key the next page starts after, and entries |
/// | `POST /api/v1/admin/transfer/drain?from=S&to=D&capture=ID[&ack=G][&maxKeys=N]` (that replica) | changes since the copy began ([`encode_drained`]) |
/// | `POST /api/v1/admin/transfer/import?from=S&to=D`, changes ([`encode_changes`]) as the body | `{"imported": n}` |
/// | `POST /api/v1/admin/transfer/delete?from=S&to=D[&after=HEX]` | `{"deleted": n, "next": HEX or null}`: clear (at D) or clean up (at S), a bounded stretch of keys per request; `next` is where the next one starts |
///
/// A capture that this replica does not have, or lost, is answered 410 Gone: the copy must
/// start over.
pub fn routes(node: ShardNode) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route("/api/v1/admin/transfer/capture", post(capture_route))
        .route("/api/v1/admin/transfer/drain", post(drain_route))
        .route("/api/v1/admin/transfer/export", post(export_route))
        .route("/api/v1/admin/transfer/import", post(import_route))
        .route("/api/v1/admin/transfer/delete", post(delete_route))
        .with_state(node)
}

/// The transfer a route is about: its `from` and `to` query parameters.
fn transfer_ends(uri: &axum::http::Uri) -> Result<(ShardId, ShardId), ApiError> {
    Ok((shard_param(uri, "from")?, shard_param(uri, "to")?))
}

fn shard_param(uri: &axum::http::Uri, name: &str) -> Result<ShardId, ApiError> {
    let raw = crate::http::api::query_param(uri, name)?
        .ok_or_else(|| ApiError::BadRequest(format!("missing query parameter {name}")))?;
    raw.parse()
        .map(ShardId)
        .map_err(|_| ApiError::BadRequest(format!("{name}={raw} is not a shard id")))
}

fn respond(result: Result<axum::response::Response, ApiError>) -> axum::response::Response {
    use axum::response::IntoResponse;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Query parameter `name` as a number (`None` when absent).
fn number_param(uri: &axum::http::Uri, name: &str) -> Result<Option<u64>, ApiError> {
    crate::http::api::query_param(uri, name)?
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::BadRequest(format!("{name}={v} is not a number")))
        })
        .transpose()
}

fn capture_param(uri: &axum::http::Uri) -> Result<u64, ApiError> {
    number_param(uri, "capture")?
        .ok_or_else(|| ApiError::BadRequest("missing query parameter capture".into()))
}

fn capture_error(e: CaptureError) -> ApiError {
    ApiError::Gone(e.to_string())
}

async fn capture_route(
    axum::extract::State(node): axum::extract::State<ShardNode>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    respond(
        async {
            let (from, to) = transfer_ends(&uri)?;
            let (id, estimated_keys) = node.start_capture(from, to).await?;
            let answer = serde_json::json!({
                "capture": id,
                "replica": node.replica_id(),
                "estimatedKeys": estimated_keys,
            });
            Ok(axum::Json(answer).into_response())
        }
        .await,
    )
}

async fn drain_route(
    axum::extract::State(node): axum::extract::State<ShardNode>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    respond(
        async {
            let (from, to) = transfer_ends(&uri)?;
            let capture = capture_param(&uri)?;
            let ack = number_param(&uri, "ack")?;
            let max = number_param(&uri, "maxKeys")?
                .map_or(DRAIN_KEYS, |n| usize::try_from(n).unwrap_or(DRAIN_KEYS))
                .clamp(1, DRAIN_KEYS);
            let drained = node.drain(from, to, capture, ack, max).await?;
            Ok(encode_drained(&drained).into_response())
        }
        .await,
    )
}

async fn export_route(
    axum::extract::State(node): axum::extract::State<ShardNode>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    respond(
        async {
            let (from, to) = transfer_ends(&uri)?;
            let capture = capture_param(&uri)?;
            let after = crate::http::api::query_param(&uri, "after")?
                .map(|h| hex_decode(&h))
                .transpose()?;
            let max = number_param(&uri, "maxBytes")?
                .map_or(PAGE_BYTES, |n| usize::try_from(n).unwrap_or(PAGE_BYTES));
            let page = node.export(from, to, capture, after, max).await?;
            Ok(encode_page(&page).into_response())
        }
        .await,
    )
}

async fn import_route(
    axum::extract::State(node): axum::extract::State<ShardNode>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = request.uri().clone();
    respond(
        async {
            let (from, to) = transfer_ends(&uri)?;
            let body =
                crate::http::api::read_body(request.into_body(), None, MAX_IMPORT_BYTES).await?;
            let changes = decode_changes(body).map_err(ApiError::BadRequest)?;
            let n = node.import(from, to, changes).await?;
            Ok(axum::Json(serde_json::json!({ "imported": n })).into_response())
        }
        .await,
    )
}

async fn delete_route(
    axum::extract::State(node): axum::extract::State<ShardNode>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    respond(
        async {
            let (from, to) = transfer_ends(&uri)?;
            let after = crate::http::api::query_param(&uri, "after")?
                .map(|h| hex_decode(&h))
                .transpose()?;
            let (n, next) = node.delete_transfer_keys(from, to, after).await?;
            Ok(axum::Json(serde_json::json!({
                "deleted": n,
                "next": next.map(|k| hex_encode(&k)),
            }))
            .into_response())
        }
        .await,
    )
}

/// The share of shard `from`'s hashes that transfer `from` → `to` moves, measured on evenly
/// spaced sample hashes (keys hash uniformly, so it estimates the share of its keys).
fn transfer_share(routing: &Routing, from: ShardId, to: ShardId) -> f64 {
    const SAMPLES: u64 = 1 << 14;
    let step = u64::MAX / SAMPLES;
    let (mut moving, mut owned) = (0u64, 0u64);
    for hash in (0..SAMPLES).map(|i| i * step) {
        moving += u64::from(routing.in_transfer(from, to, hash));
        owned += u64::from(routing.base().shard_for_hash(hash) == from);
    }
    if owned == 0 {
        return 0.0;
    }
    moving as f64 / owned as f64
}

/// Lowercase hex of `bytes` (keys in headers and query strings).
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string.
pub fn hex_decode(hex: &str) -> Result<Bytes, ApiError> {
    if !hex.is_ascii() || !hex.len().is_multiple_of(2) {
        return Err(ApiError::BadRequest(format!("{hex:?} is not hex")));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map(Bytes::from)
        .map_err(|_| ApiError::BadRequest(format!("{hex:?} is not hex")))
}

impl ShardNode {
    /// The ownership record, read at the leader after a read barrier, which must list
    /// transfer `from` → `to`.
    async fn transfer_routing(&self, from: ShardId, to: ShardId) -> Result<Routing, ApiError> {
        let routing = self.routing().await?;
        self.listing_transfer(routing, from, to)
    }

    /// The ownership record as this replica last applied it (no read barrier: a capture's
    /// replica need not lead), which must list transfer `from` → `to`.
    fn applied_transfer_routing(&self, from: ShardId, to: ShardId) -> Result<Routing, ApiError> {
        let replica = self.record_keeper()?;
        let routing = self.inner.ownership.routing(replica.record())?;
        self.listing_transfer(routing.map(|r| (*r).clone()), from, to)
    }

    /// `routing` if it is a record with transfer `from` → `to`; 409 otherwise.
    fn listing_transfer(
        &self,
        routing: Option<Routing>,
        from: ShardId,
        to: ShardId,
    ) -> Result<Routing, ApiError> {
        match routing {
            Some(r) if r.transfers().iter().any(|t| t.from == from && t.to == to) => Ok(r),
            other => Err(ApiError::Conflict {
                message: format!(
                    "shard {} replica {} has no ownership record with a transfer from shard {from} to shard {to}",
                    self.id(),
                    self.replica_id()
                ),
                current: other.and_then(|r| serde_json::to_value(&r).ok()),
            }),
        }
    }

    fn check_source(&self, from: ShardId) -> Result<(), ApiError> {
        if from != self.id() {
            return Err(ApiError::BadRequest(format!(
                "shard {} is not the source of a transfer from shard {from}",
                self.id()
            )));
        }
        Ok(())
    }

    /// Starts following the changes to transfer `from` → `to`'s ranges on this replica, which
    /// must lead (so it has applied every write acknowledged so far); the capture's id and an
    /// estimate of the keys the transfer moves.
    pub async fn start_capture(&self, from: ShardId, to: ShardId) -> Result<(u64, u64), ApiError> {
        self.check_source(from)?;
        self.record_keeper()?.check_leader()?;
        let routing = self.transfer_routing(from, to).await?;
        let keys = self.inner.storage.engine().stats().keys;
        let estimated = (keys as f64 * transfer_share(&routing, from, to)) as u64;
        let id = self
            .inner
            .captures
            .start(from, to, std::sync::Arc::new(routing));
        tracing::info!(%from, %to, capture = id, estimated, "following the changes to a transfer's ranges");
        Ok((id, estimated))
    }

    /// Hands out the changes capture `capture` holds (see [`super::capture::Captures::take`]),
    /// with their values as this replica holds them.
    pub async fn drain(
        &self,
        from: ShardId,
        to: ShardId,
        capture: u64,
        ack: Option<u64>,
        max_keys: usize,
    ) -> Result<Drained, ApiError> {
        self.check_source(from)?;
        // Whether the fence was applied is read before the take: every write applied before
        // the fence is in the set by then.
        let fenced = self
            .applied_transfer_routing(from, to)?
            .is_handed_over(from, to);
        let taken = self
            .inner
            .captures
            .take(capture, (from, to), ack, max_keys, fenced)
            .map_err(capture_error)?;
        let values = self
            .inner
            .storage
            .get_local_many(taken.keys.clone())
            .await?;
        let mut changes = Changes::default();
        for (key, value) in taken.keys.into_iter().zip(values) {
            match value {
                Some(v) => changes.puts.push(Entry {
                    key,
                    value: v.data,
                    expires_at_ms: v.expires_at_ms,
                }),
                None => changes.deletes.push(key),
            }
        }
        Ok(Drained {
            generation: taken.generation,
            fenced,
            remaining: taken.remaining as u64,
            changes,
        })
    }

    /// Up to about `max_bytes` of the keys of transfer `from` → `to` (this shard being `from`)
    /// after `after`, in key order, from this replica's engine, which follows the changes as
    /// capture `capture`.
    pub async fn export(
        &self,
        from: ShardId,
        to: ShardId,
        capture: u64,
        after: Option<Bytes>,
        max_bytes: usize,
    ) -> Result<ExportPage, ApiError> {
        self.check_source(from)?;
        self.inner
            .captures
            .check(capture, from, to)
            .map_err(capture_error)?;
        let routing = self.applied_transfer_routing(from, to)?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = after;
        loop {
            let (found, next, exhausted) =
                self.transfer_step(&routing, from, to, cursor, true).await?;
            for (key, value) in found {
                bytes += key.len() + value.data.len() + 16;
                entries.push(Entry {
                    key,
                    value: value.data,
                    expires_at_ms: value.expires_at_ms,
                });
                if bytes >= max_bytes {
                    // The rest of this step is scanned again by the next page.
                    let next = entries.last().map(|e| e.key.clone());
                    return Ok(ExportPage { entries, next });
                }
            }
            if exhausted {
                return Ok(ExportPage {
                    entries,
                    next: None,
                });
            }
            cursor = next;
        }
    }

    /// One engine scan step after `cursor` (exclusive): the entries of transfer `from` → `to`
    /// among them, the last key scanned, and whether the shard has no keys after it.
    async fn transfer_step(
        &self,
        routing: &Routing,
        from: ShardId,
        to: ShardId,
        cursor: Option<Bytes>,
        local: bool,
    ) -> Result<(Vec<(Bytes, limedb_storage::Value)>, Option<Bytes>, bool), ApiError> {
        // `scan` starts at its key inclusive: skip the one the last step ended on.
        let storage = &self.inner.storage;
        let batch = if local {
            storage.scan_local(cursor.clone(), SCAN_STEP).await?
        } else {
            storage.scan(cursor.clone(), SCAN_STEP).await?
        };
        let exhausted = batch.len() < SCAN_STEP;
        let mut last = cursor.clone();
        let mut found = Vec::new();
        for (key, value) in batch {
            if cursor.as_ref() == Some(&key) {
                continue;
            }
            last = Some(key.clone());
            if routing.in_transfer(from, to, key_hash(&key)) {
                found.push((key, value));
            }
        }
        Ok((found, last, exhausted))
    }

    /// Applies `changes` of transfer `from` → `to` (this shard being `to`), while the ranges
    /// are not yet handed to it. Returns how many keys they touched.
    pub async fn import(
        &self,
        from: ShardId,
        to: ShardId,
        changes: Changes,
    ) -> Result<u64, ApiError> {
        if to != self.id() {
            return Err(ApiError::BadRequest(format!(
                "shard {} cannot import keys meant for shard {to}",
                self.id()
            )));
        }
        let _gate = self.inner.ownership.enter().await;
        let routing = self.transfer_routing(from, to).await?;
        if routing.is_handed_over(from, to) {
            return Err(ApiError::Conflict {
                message: format!(
                    "shard {to} already owns the ranges of shard {from}: an import now could overwrite newer writes"
                ),
                current: serde_json::to_value(&routing).ok(),
            });
        }
        if let Some(key) = changes
            .deletes
            .iter()
            .chain(changes.puts.iter().map(|e| &e.key))
            .find(|k| !routing.in_transfer(from, to, key_hash(k)))
        {
            return Err(ApiError::BadRequest(format!(
                "key {:?} is not in the transfer from shard {from} to shard {to}",
                String::from_utf8_lossy(key)
            )));
        }
        let n = changes.len() as u64;
        let writes = changes
            .deletes
            .into_iter()
            .map(|key| ReplicatedWrite::Delete { key })
            .chain(changes.puts.into_iter().map(|e| ReplicatedWrite::Put {
                key: e.key,
                value: e.value,
                expires_at_ms: e.expires_at_ms,
            }))
            .collect();
        self.inner.storage.write_unserved(writes).await?;
        Ok(n)
    }

    /// Deletes what this shard holds of transfer `from` → `to`'s ranges after key `after`: at
    /// the destination before a copy (leftovers of an abandoned attempt, which must not come
    /// back), or at the source once the ranges are handed over (clean-up). Scans at most
    /// [`DELETE_SCAN_KEYS`] keys; returns how many it deleted and the key to go on after
    /// (`None`: done).
    pub async fn delete_transfer_keys(
        &self,
        from: ShardId,
        to: ShardId,
        after: Option<Bytes>,
    ) -> Result<(u64, Option<Bytes>), ApiError> {
        let me = self.id();
        let routing = self.transfer_routing(from, to).await?;
        let handed = routing.is_handed_over(from, to);
        match (me == from, me == to) {
            (true, _) if !handed => {
                return Err(ApiError::Conflict {
                    message: format!(
                        "shard {me} still owns these ranges; it cleans them up only after handing them to shard {to}"
                    ),
                    current: None,
                })
            }
            (_, true) if handed => {
                return Err(ApiError::Conflict {
                    message: format!(
                        "shard {me} owns these ranges now; clearing them would lose writes"
                    ),
                    current: None,
                })
            }
            (false, false) => {
                return Err(ApiError::BadRequest(format!(
                    "shard {me} is neither end of the transfer from {from} to {to}"
                )))
            }
            _ => {}
        }
        if me == from {
            self.inner.captures.end(from, to);
        }
        // The scan goes on while the last batch commits (one batch in flight).
        let mut deleted = 0u64;
        let mut committing: Option<tokio::task::JoinHandle<Result<u64, ApiError>>> = None;
        let mut doomed: Vec<Bytes> = Vec::new();
        let mut scanned = 0usize;
        let mut cursor = after;
        loop {
            let step = self.transfer_step(&routing, from, to, cursor, false).await;
            let (found, next, exhausted) = match step {
                Ok(step) => step,
                Err(e) => {
                    // The batch committing finishes before the answer, so the next request
                    // counts what it finds.
                    let _ = committed(&mut committing).await;
                    return Err(e);
                }
            };
            doomed.extend(found.into_iter().map(|(key, _)| key));
            scanned += SCAN_STEP;
            let done = exhausted || scanned >= DELETE_SCAN_KEYS;
            if done || doomed.len() >= DELETE_BATCH {
                deleted += committed(&mut committing).await?;
                let node = self.clone();
                let batch = std::mem::take(&mut doomed);
                committing = Some(tokio::spawn(async move { node.delete_batch(batch).await }));
            }
            if done {
                deleted += committed(&mut committing).await?;
                return Ok((deleted, if exhausted { None } else { next }));
            }
            cursor = next;
        }
    }

    /// Deletes `keys` (of ranges no client reaches here) in one replicated batch; how many.
    async fn delete_batch(&self, keys: Vec<Bytes>) -> Result<u64, ApiError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let n = keys.len() as u64;
        let writes = keys
            .into_iter()
            .map(|key| ReplicatedWrite::Delete { key })
            .collect();
        self.inner.storage.write_unserved(writes).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::option::of(1u64..u64::MAX),
        )
            .prop_map(|(k, v, at)| Entry {
                key: k.into(),
                value: v.into(),
                expires_at_ms: at,
            })
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let raw = Bytes::from_static(b"\x00\xffkey/\x10");
        assert_eq!(hex_decode(&hex_encode(&raw)).expect("hex"), raw);
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
        assert!(hex_decode("é1").is_err());
        assert!(hex_decode("aéb").is_err(), "not cut inside a character");
    }

    proptest! {
        #[test]
        fn entries_round_trip(entries in proptest::collection::vec(arb_entry(), 0..20)) {
            let bytes = encode_entries(&entries);
            prop_assert_eq!(decode_entries(bytes).expect("decodes"), entries.clone());
            for next in [None, Some(Bytes::from_static(b"k\x00")), Some(Bytes::new())] {
                let page = ExportPage { entries: entries.clone(), next };
                prop_assert_eq!(decode_page(encode_page(&page)).expect("page"), page);
            }
        }

        #[test]
        fn truncated_or_garbage_bodies_are_errors_not_panics(
            entries in proptest::collection::vec(arb_entry(), 1..5),
            cut in any::<prop::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let bytes = encode_entries(&entries);
            let cut = cut.index(bytes.len());
            if cut > 0 {
                // Some prefix lengths happen to end on an entry boundary; the rest must fail.
                let decoded = decode_entries(bytes.slice(..cut));
                if let Ok(found) = decoded {
                    prop_assert!(found.len() < entries.len());
                }
            }
            let _ = decode_entries(Bytes::from(garbage));
        }
    }
}
