//! The HTTP/JSON API, the same on the coordinator and on every shard.
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /api/v1/set` `{"key","value","ttl_ms"?}` | 200 `OK` |
//! | `GET /api/v1/get/{key}` | 200 value, 404 when absent |
//! | `DELETE /api/v1/del/{key}` | 200 `1` when it existed, `0` if not |
//! | `PUT /api/v1/kv/{key}[?ttl_ms=N]` raw body | 200 `OK` (binary values) |
//! | `GET /api/v1/kv/{key}` | 200 raw value (`application/octet-stream`), 404 |
//! | `DELETE /api/v1/kv/{key}` | 200 `1` / `0` |
//! | `GET /api/v1/keys?page=&pageSize=` | a page of keys with values (first 1 KiB of each) |
//! | `GET /api/v1/health`, `/api/v1/cluster/state`, `/api/v1/cluster/ring` | JSON |
//! | `GET /metrics` | Prometheus text |
//! | `GET`/`POST /api/v1/admin/replicas`, `DELETE /api/v1/admin/replicas/{id}` | a replica's group: list, add `{"replicaId","url"}`, remove |
//! | `GET`/`POST /api/v1/admin/shards/{shard}/replicas`, `DELETE .../replicas/{id}` | the same for shard `{shard}` (coordinator or replica) |
//! | `GET /api/v1/meta/map` | the cluster map `{"version","epoch","map"}` (map-group replicas: linearizable; coordinators: the map they route by) |
//! | `POST /api/v1/meta/map` `{"expectedVersion": N or null, "map": {...}}` | compare-and-set on the map group's leader: 200 `{"version","epoch"}`, 409 with `"current"` |
//! | `GET /api/v1/admin/moves` | the move in progress and the driver's report (coordinators with `--meta`, map-group replicas) |
//! | `POST /api/v1/admin/shards` `{"shardId", "replicas": {id: url}}` | (coordinator with `--meta`) starts adding the group: 202 `{"moveId", ...}` |
//! | `DELETE /api/v1/admin/shards/{id}` | (coordinator with `--meta`) starts removing shard `{id}`: 202 `{"moveId", ...}` |
//! | `DELETE /api/v1/admin/moves/{id}` | (coordinator with `--meta`) cancels move `{id}` if it has handed no range over: 202; 409 once one was; 404 for another move |
//! | `GET`/`PUT /api/v1/admin/ownership` (replicated shards) | the shard's ownership record `{"epoch","routing"}`; `PUT` a routing replaces it (409 if older) |
//!
//! Keys in paths are percent-decoded bytes; everything after the route prefix is the key, so an
//! unencoded `/` is part of the key too. Errors are `{"error": code, "message": text}` (see
//! [`ApiError`]).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::error::ApiError;
use crate::metrics::{Api, Op};
use crate::node::{KvNode, MapRequest, MoveRequest, ReplicaChange, LISTED_VALUE_PREFIX_BYTES};

/// Default page size of `GET /api/v1/keys`.
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// Largest page size of `GET /api/v1/keys`.
pub const MAX_PAGE_SIZE: u64 = 100;

/// A client gets this long to send a whole request body; a stalled upload is answered 408.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

const TEXT_UTF8: &str = "text/plain; charset=utf-8";
const OCTET_STREAM: &str = "application/octet-stream";

/// Builds the router for `node`.
pub fn router<N: KvNode>(node: N) -> Router {
    Router::new()
        .route("/api/v1/set", post(set_json::<N>))
        .route("/api/v1/get/{*key}", get(get_text::<N>))
        .route("/api/v1/del/{*key}", axum::routing::delete(delete::<N>))
        .route(
            "/api/v1/kv/{*key}",
            get(get_binary::<N>)
                .put(put_binary::<N>)
                .delete(delete::<N>),
        )
        .route("/api/v1/keys", get(keys::<N>))
        .route("/api/v1/health", get(health::<N>))
        .route("/api/v1/cluster/state", get(cluster_state::<N>))
        .route("/api/v1/cluster/ring", get(ring::<N>))
        .route("/metrics", get(metrics::<N>))
        .route(
            "/api/v1/admin/replicas",
            get(list_replicas::<N>).post(add_replica::<N>),
        )
        .route(
            "/api/v1/admin/replicas/{replica}",
            axum::routing::delete(remove_replica::<N>),
        )
        .route(
            "/api/v1/admin/shards/{shard}/replicas",
            get(list_shard_replicas::<N>).post(add_shard_replica::<N>),
        )
        .route(
            "/api/v1/admin/shards/{shard}/replicas/{replica}",
            axum::routing::delete(remove_shard_replica::<N>),
        )
        .route("/api/v1/meta/map", get(get_map::<N>).post(set_map::<N>))
        .route("/api/v1/admin/moves", get(list_moves::<N>))
        .route(
            "/api/v1/admin/moves/{id}",
            axum::routing::delete(cancel_move::<N>),
        )
        .route("/api/v1/admin/shards", post(add_shard::<N>))
        .route(
            "/api/v1/admin/shards/{shard}",
            axum::routing::delete(remove_shard::<N>),
        )
        .route(
            "/api/v1/admin/ownership",
            get(get_ownership::<N>).put(put_ownership::<N>),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            super::access::check::<N>,
        ))
        .with_state(node)
}

#[derive(Deserialize)]
struct SetBody {
    key: String,
    value: String,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT_UTF8)], body).into_response()
}

fn finish(
    node: &impl KvNode,
    op: Op,
    started: Instant,
    result: Result<Response, ApiError>,
) -> Response {
    let ok = match &result {
        Ok(_) | Err(ApiError::NotFound) => true,
        Err(_) => false,
    };
    node.metrics().record(Api::Http, op, started, ok);
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The key of a `/api/v1/<route>/<key>` path: everything after the route prefix, percent-decoded.
fn key_from_path(uri: &Uri, node: &impl KvNode) -> Result<Bytes, ApiError> {
    let path = uri.path();
    let raw = ["/api/v1/get/", "/api/v1/del/", "/api/v1/kv/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))
        .ok_or_else(|| ApiError::BadRequest(format!("no key in path {path:?}")))?;
    let key: Vec<u8> = percent_decode_str(raw).collect();
    node.limits().check_key(&key)?;
    Ok(Bytes::from(key))
}

/// Reads the whole body, refusing more than `max` bytes (413) before buffering them.
pub(crate) async fn read_body(
    body: Body,
    declared_len: Option<u64>,
    max: usize,
) -> Result<Bytes, ApiError> {
    if let Some(len) = declared_len {
        if len > max as u64 {
            return Err(ApiError::ValueTooLarge {
                what: "request body",
                len,
                max: max as u64,
            });
        }
    }
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max).collect())
        .await
        .map_err(|_| ApiError::RequestTimeout(BODY_READ_TIMEOUT.as_secs()))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::ValueTooLarge {
            what: "request body",
            len: declared_len.unwrap_or(max as u64 + 1),
            max: max as u64,
        }),
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

fn content_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn set_json<N: KvNode>(State(node): State<N>, req: Request) -> Response {
    let started = Instant::now();
    let result = async {
        let declared = content_length(&req);
        let body = read_body(req.into_body(), declared, node.limits().max_body_bytes()).await?;
        let parsed: SetBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        let limits = node.limits();
        limits.check_key(parsed.key.as_bytes())?;
        limits.check_value(parsed.value.len())?;
        limits.check_ttl(parsed.ttl_ms)?;
        node.set(
            Bytes::from(parsed.key),
            Bytes::from(parsed.value),
            parsed.ttl_ms,
        )
        .await?;
        Ok(text(StatusCode::OK, "OK"))
    }
    .await;
    finish(&node, Op::Set, started, result)
}

async fn put_binary<N: KvNode>(State(node): State<N>, req: Request) -> Response {
    let started = Instant::now();
    let result = async {
        let key = key_from_path(req.uri(), &node)?;
        let ttl_ms = match query_param(req.uri(), "ttl_ms")? {
            Some(v) => Some(parse_number(&v, "ttl_ms")?),
            None => None,
        };
        node.limits().check_ttl(ttl_ms)?;
        let declared = content_length(&req);
        let max_value = node.limits().max_value_bytes;
        let value = read_body(req.into_body(), declared, max_value).await?;
        node.limits().check_value(value.len())?;
        node.set(key, value, ttl_ms).await?;
        Ok(text(StatusCode::OK, "OK"))
    }
    .await;
    finish(&node, Op::Set, started, result)
}

async fn get_value<N: KvNode>(node: &N, uri: &Uri, binary: bool) -> Result<Response, ApiError> {
    let key = key_from_path(uri, node)?;
    let value = node.get(key).await?.ok_or(ApiError::NotFound)?;
    let content_type = if binary || std::str::from_utf8(&value).is_err() {
        OCTET_STREAM
    } else {
        TEXT_UTF8
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        value,
    )
        .into_response())
}

async fn get_text<N: KvNode>(State(node): State<N>, uri: Uri) -> Response {
    let started = Instant::now();
    let result = get_value(&node, &uri, false).await;
    finish(&node, Op::Get, started, result)
}

async fn get_binary<N: KvNode>(State(node): State<N>, uri: Uri) -> Response {
    let started = Instant::now();
    let result = get_value(&node, &uri, true).await;
    finish(&node, Op::Get, started, result)
}

async fn delete<N: KvNode>(State(node): State<N>, uri: Uri) -> Response {
    let started = Instant::now();
    let result = async {
        let key = key_from_path(&uri, &node)?;
        let existed = node.delete(key).await?;
        Ok(text(StatusCode::OK, if existed { "1" } else { "0" }))
    }
    .await;
    finish(&node, Op::Delete, started, result)
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
pub(crate) fn query_param(uri: &Uri, name: &str) -> Result<Option<String>, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = v.replace('+', " ");
            let decoded = percent_decode_str(&v).decode_utf8().map_err(|_| {
                ApiError::BadRequest(format!("query parameter {name} is not valid UTF-8"))
            })?;
            return Ok(Some(decoded.into_owned()));
        }
    }
    Ok(None)
}

fn parse_number(value: &str, name: &str) -> Result<u64, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "query parameter {name} must be a non-negative integer, got {value:?}"
        ))
    })
}

async fn keys<N: KvNode>(State(node): State<N>, uri: Uri) -> Response {
    let started = Instant::now();
    let result = async {
        let page = match query_param(&uri, "page")? {
            Some(v) => parse_number(&v, "page")?,
            None => 1,
        };
        let page_size = match query_param(&uri, "pageSize")? {
            Some(v) => parse_number(&v, "pageSize")?,
            None => DEFAULT_PAGE_SIZE,
        };
        if page == 0 {
            return Err(ApiError::BadRequest("page starts at 1".into()));
        }
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(ApiError::BadRequest(format!(
                "pageSize must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        let offset = (page - 1).saturating_mul(page_size);
        let listing = node
            .keys_page(offset, page_size as u32, LISTED_VALUE_PREFIX_BYTES)
            .await?;
        let keys: Vec<serde_json::Value> = listing
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "key": String::from_utf8_lossy(&e.key),
                    "value": String::from_utf8_lossy(&e.value),
                    "size": e.value_len,
                    "truncated": (e.value.len() as u64) < e.value_len,
                })
            })
            .collect();
        let total_pages = listing.total.div_ceil(page_size);
        Ok(axum::Json(serde_json::json!({
            "keys": keys,
            "total": listing.total,
            "page": page,
            "pageSize": page_size,
            "totalPages": total_pages,
        }))
        .into_response())
    }
    .await;
    finish(&node, Op::Keys, started, result)
}

async fn health<N: KvNode>(State(node): State<N>) -> Response {
    let report = node.health().await;
    let status = if report.serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report.body)).into_response()
}

async fn cluster_state<N: KvNode>(State(node): State<N>) -> Response {
    axum::Json(node.cluster_state().await).into_response()
}

async fn ring<N: KvNode>(State(node): State<N>) -> Response {
    axum::Json(node.ring().await).into_response()
}

async fn metrics<N: KvNode>(State(node): State<N>) -> Response {
    node.refresh_metrics().await;
    let failures = i64::try_from(node.users().failures()).unwrap_or(i64::MAX);
    node.metrics().auth_failures.set(failures);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics().render(),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddReplicaBody {
    replica_id: u64,
    url: String,
}

/// Largest admin request body.
const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;

/// Largest cluster map accepted (a map names every group's replicas; thousands fit).
const MAX_MAP_BODY_BYTES: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SetMapBody {
    expected_version: Option<u64>,
    map: limedb_cluster::ClusterMap,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddShardBody {
    shard_id: u32,
    replicas: std::collections::BTreeMap<u64, String>,
}

async fn list_moves<N: KvNode>(State(node): State<N>) -> Response {
    match node.moves(MoveRequest::List).await {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn add_shard<N: KvNode>(State(node): State<N>, request: Request) -> Response {
    let result = async {
        let body = read_body(request.into_body(), None, MAX_ADMIN_BODY_BYTES).await?;
        let add: AddShardBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "expected {{\"shardId\": N, \"replicas\": {{\"1\": \"http://host:port\", ...}}}}: {e}"
            ))
        })?;
        if add.shard_id == 0 || add.replicas.is_empty() || add.replicas.contains_key(&0) {
            return Err(ApiError::BadRequest(
                "shard and replica ids start at 1, and a shard needs at least one replica".into(),
            ));
        }
        let replicas = crate::config::parse_peers(
            &add.replicas
                .iter()
                .map(|(id, url)| format!("{id}={url}"))
                .collect::<Vec<_>>(),
        )
        .map_err(ApiError::BadRequest)?;
        node.moves(MoveRequest::AddShard {
            id: limedb_cluster::ShardId(add.shard_id),
            replicas,
        })
        .await
    }
    .await;
    match result {
        Ok(doc) => (StatusCode::ACCEPTED, axum::Json(doc)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove_shard<N: KvNode>(
    State(node): State<N>,
    axum::extract::Path(shard): axum::extract::Path<String>,
) -> Response {
    let result = async {
        let id: u32 = shard
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("{shard:?} is not a shard id")))?;
        node.moves(MoveRequest::RemoveShard {
            id: limedb_cluster::ShardId(id),
        })
        .await
    }
    .await;
    match result {
        Ok(doc) => (StatusCode::ACCEPTED, axum::Json(doc)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel_move<N: KvNode>(
    State(node): State<N>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let result = async {
        let id: u64 = id
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a move id")))?;
        node.moves(MoveRequest::Cancel { id }).await
    }
    .await;
    match result {
        Ok(doc) => (StatusCode::ACCEPTED, axum::Json(doc)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_ownership<N: KvNode>(State(node): State<N>) -> Response {
    match node.ownership(None).await {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn put_ownership<N: KvNode>(State(node): State<N>, request: Request) -> Response {
    let result = async {
        let body = read_body(request.into_body(), None, MAX_MAP_BODY_BYTES).await?;
        let routing: limedb_cluster::Routing = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("expected a routing document: {e}")))?;
        node.ownership(Some(Box::new(routing))).await
    }
    .await;
    match result {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_map<N: KvNode>(State(node): State<N>) -> Response {
    match node.cluster_map(MapRequest::Get).await {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn set_map<N: KvNode>(State(node): State<N>, request: Request) -> Response {
    let result = async {
        let body = read_body(request.into_body(), None, MAX_MAP_BODY_BYTES).await?;
        let set: SetMapBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "expected {{\"expectedVersion\": N or null, \"map\": {{...}}}}: {e}"
            ))
        })?;
        node.cluster_map(MapRequest::CompareAndSet {
            expected_version: set.expected_version,
            map: Box::new(set.map),
        })
        .await
    }
    .await;
    match result {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn replica_change<N: KvNode>(
    node: &N,
    shard: Option<u32>,
    change: ReplicaChange,
) -> Response {
    match node.replicas(shard, change).await {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn add_body(request: Request) -> Result<ReplicaChange, ApiError> {
    let body = read_body(request.into_body(), None, MAX_ADMIN_BODY_BYTES).await?;
    let add: AddReplicaBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"replicaId\": N, \"url\": \"http://host:port\"}}: {e}"
        ))
    })?;
    if add.replica_id == 0 {
        return Err(ApiError::BadRequest("replica ids start at 1".into()));
    }
    let url = crate::config::parse_peers(&[format!("{}={}", add.replica_id, add.url)])
        .map_err(ApiError::BadRequest)?
        .remove(&add.replica_id)
        .unwrap_or(add.url);
    Ok(ReplicaChange::Add {
        replica_id: add.replica_id,
        url,
    })
}

async fn list_replicas<N: KvNode>(State(node): State<N>) -> Response {
    replica_change(&node, None, ReplicaChange::List).await
}

async fn add_replica<N: KvNode>(State(node): State<N>, request: Request) -> Response {
    match add_body(request).await {
        Ok(change) => replica_change(&node, None, change).await,
        Err(e) => e.into_response(),
    }
}

async fn remove_replica<N: KvNode>(
    State(node): State<N>,
    axum::extract::Path(replica): axum::extract::Path<u64>,
) -> Response {
    replica_change(
        &node,
        None,
        ReplicaChange::Remove {
            replica_id: replica,
        },
    )
    .await
}

async fn list_shard_replicas<N: KvNode>(
    State(node): State<N>,
    axum::extract::Path(shard): axum::extract::Path<u32>,
) -> Response {
    replica_change(&node, Some(shard), ReplicaChange::List).await
}

async fn add_shard_replica<N: KvNode>(
    State(node): State<N>,
    axum::extract::Path(shard): axum::extract::Path<u32>,
    request: Request,
) -> Response {
    match add_body(request).await {
        Ok(change) => replica_change(&node, Some(shard), change).await,
        Err(e) => e.into_response(),
    }
}

async fn remove_shard_replica<N: KvNode>(
    State(node): State<N>,
    axum::extract::Path((shard, replica)): axum::extract::Path<(u32, u64)>,
) -> Response {
    replica_change(
        &node,
        Some(shard),
        ReplicaChange::Remove {
            replica_id: replica,
        },
    )
    .await
}

async fn no_route(method: Method, uri: Uri) -> Response {
    let body = serde_json::json!({
        "error": "not_found",
        "message": format!("no route for {method} {}", uri.path()),
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = serde_json::json!({
        "error": "method_not_allowed",
        "message": format!("{method} is not allowed on {}", uri.path()),
    });
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}
