//! The shard's side of a transfer (keys of some hash ranges going from shard `from` to shard
//! `to`; see ARCHITECTURE.md, *Elasticity*): exporting them at the source, importing them at the
//! destination, clearing what a destination holds of them from an abandoned attempt, and
//! cleaning them up at the source once handed over.
//!
//! Each operation checks the shard's ownership record: the transfer must belong to the move in
//! progress, and the operation must fit where the record says it stands (a destination imports
//! only until the ranges are handed to it, so a stale driver cannot overwrite newer writes; a
//! source cleans up only after handing them over). Entries travel in a small binary format:
//! `key_len u32 | key | value_len u32 | value | expires_at_ms u64 (0: never)`, little-endian.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use limedb_cluster::{key_hash, Routing, ShardId};
use limedb_raft::ReplicatedWrite;

use super::ShardNode;
use crate::error::ApiError;

/// Entries scanned per engine call while looking for a transfer's keys.
const SCAN_STEP: usize = 4096;

/// Entries per replicated batch when deleting (clear, clean-up).
const DELETE_BATCH: usize = 4096;

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
pub const PAGE_BYTES: usize = 4 << 20;

/// The HTTP routes of a transfer, on every shard:
///
/// | request | answer |
/// |---|---|
/// | `POST /api/v1/admin/transfer/export?from=S&to=D[&after=HEX][&maxBytes=N]` | a page ([`encode_page`]): the key the next page starts after, and entries |
/// | `POST /api/v1/admin/transfer/import?from=S&to=D`, entries as the body | `{"imported": n}` |
/// | `POST /api/v1/admin/transfer/delete?from=S&to=D` | `{"deleted": n}`: clear (at D) or clean up (at S) |
pub fn routes(node: ShardNode) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
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

async fn export_route(
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
            let max = match crate::http::api::query_param(&uri, "maxBytes")? {
                Some(v) => v
                    .parse()
                    .map_err(|_| ApiError::BadRequest(format!("maxBytes={v} is not a number")))?,
                None => PAGE_BYTES,
            };
            let page = node.export(from, to, after, max).await?;
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
            let entries = decode_entries(body).map_err(ApiError::BadRequest)?;
            let n = node.import(from, to, entries).await?;
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
            let n = node.delete_transfer_keys(from, to).await?;
            Ok(axum::Json(serde_json::json!({ "deleted": n })).into_response())
        }
        .await,
    )
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
    /// The ownership record, which must have a move in progress with transfer `from` → `to`.
    async fn transfer_routing(&self, from: ShardId, to: ShardId) -> Result<Routing, ApiError> {
        let routing = self.routing().await?.ok_or_else(|| ApiError::Conflict {
            message: format!("shard {} has no ownership record, so no move", self.id()),
            current: None,
        })?;
        if !routing
            .transfers()
            .iter()
            .any(|t| t.from == from && t.to == to)
        {
            return Err(ApiError::Conflict {
                message: format!(
                    "shard {}'s ownership record (epoch {}) has no transfer from shard {from} to shard {to}",
                    self.id(),
                    routing.epoch()
                ),
                current: serde_json::to_value(&routing).ok(),
            });
        }
        Ok(routing)
    }

    /// Up to about `max_bytes` of the keys of transfer `from` → `to` (this shard being `from`)
    /// after `after`, in key order.
    pub async fn export(
        &self,
        from: ShardId,
        to: ShardId,
        after: Option<Bytes>,
        max_bytes: usize,
    ) -> Result<ExportPage, ApiError> {
        if from != self.id() {
            return Err(ApiError::BadRequest(format!(
                "shard {} cannot export the keys of shard {from}",
                self.id()
            )));
        }
        let routing = self.transfer_routing(from, to).await?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = after;
        loop {
            let (found, next, exhausted) = self.transfer_step(&routing, from, to, cursor).await?;
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
    ) -> Result<(Vec<(Bytes, limedb_storage::Value)>, Option<Bytes>, bool), ApiError> {
        // `scan` starts at its key inclusive: skip the one the last step ended on.
        let batch = self.inner.storage.scan(cursor.clone(), SCAN_STEP).await?;
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

    /// Stores `entries` of transfer `from` → `to` (this shard being `to`), while the ranges
    /// are not yet handed to it. Returns how many were stored.
    pub async fn import(
        &self,
        from: ShardId,
        to: ShardId,
        entries: Vec<Entry>,
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
        if let Some(e) = entries
            .iter()
            .find(|e| !routing.in_transfer(from, to, key_hash(&e.key)))
        {
            return Err(ApiError::BadRequest(format!(
                "key {:?} is not in the transfer from shard {from} to shard {to}",
                String::from_utf8_lossy(&e.key)
            )));
        }
        let n = entries.len() as u64;
        let keys: Vec<Bytes> = entries.iter().map(|e| e.key.clone()).collect();
        let writes = entries
            .into_iter()
            .map(|e| ReplicatedWrite::Put {
                key: e.key,
                value: e.value,
                expires_at_ms: e.expires_at_ms,
            })
            .collect();
        let storage = &self.inner.storage;
        let locks = storage.lock(&keys).await;
        storage.write_effects(&locks, writes).await?;
        Ok(n)
    }

    /// Deletes what this shard holds of transfer `from` → `to`'s ranges: at the destination
    /// before a copy (leftovers of an abandoned attempt, which must not come back), or at the
    /// source once the ranges are handed over (clean-up). Returns how many keys it deleted.
    pub async fn delete_transfer_keys(&self, from: ShardId, to: ShardId) -> Result<u64, ApiError> {
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
        let storage = &self.inner.storage;
        let mut deleted = 0u64;
        let mut cursor: Option<Bytes> = None;
        loop {
            let (found, next, exhausted) = self.transfer_step(&routing, from, to, cursor).await?;
            let doomed: Vec<Bytes> = found.into_iter().map(|(key, _)| key).collect();
            for chunk in doomed.chunks(DELETE_BATCH) {
                let locks = storage.lock(chunk).await;
                let writes = chunk
                    .iter()
                    .map(|key| ReplicatedWrite::Delete { key: key.clone() })
                    .collect();
                storage.write_effects(&locks, writes).await?;
                deleted += chunk.len() as u64;
            }
            if exhausted {
                return Ok(deleted);
            }
            cursor = next;
        }
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
