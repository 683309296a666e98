//! A minimal HTTP/1.1 client for what nodes ask each other over HTTP: health documents
//! (discovery) and forwarded admin requests. One connection per request; bodies are bounded.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest answer body read.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// `host:port` of a normalized `http://host:port` base URL.
pub fn authority(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

/// Sends `method url+path` with an optional JSON `body` and returns the status and body, all
/// within `timeout`. Errors are one-line descriptions naming the URL.
pub async fn request(
    method: hyper::Method,
    url: &str,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<(hyper::StatusCode, Bytes), String> {
    request_limited(method, url, path, body, timeout, MAX_ANSWER_BYTES).await
}

/// [`request`] accepting an answer of up to `max_answer` bytes (pages of keys moving between
/// shards are larger than admin answers).
pub async fn request_limited(
    method: hyper::Method,
    url: &str,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
    max_answer: usize,
) -> Result<(hyper::StatusCode, Bytes), String> {
    request_as(method, url, path, body, timeout, max_answer, None).await
}

/// [`request_limited`] with an `Authorization` header (`limedb admin` against a node that asks
/// for credentials).
pub async fn request_as(
    method: hyper::Method,
    url: &str,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
    max_answer: usize,
    authorization: Option<&str>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let sent = send(method.clone(), url, path, body, max_answer, authorization);
    tokio::time::timeout(timeout, sent).await.map_err(|_| {
        format!(
            "{method} {url}{path}: no answer within {} ms",
            timeout.as_millis()
        )
    })?
}

async fn send(
    method: hyper::Method,
    url: &str,
    path: &str,
    body: Option<Bytes>,
    max_answer: usize,
    authorization: Option<&str>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let authority = authority(url);
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {url} failed: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = hyper::Request::builder()
        .method(method.clone())
        .uri(path)
        .header(HOST, authority);
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    if let Some(authorization) = authorization {
        builder = builder.header(hyper::header::AUTHORIZATION, authorization);
    }
    let request = builder
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| format!("cannot build a request for {url}{path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{method} {url}{path} failed: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| format!("cannot read the answer of {url}{path}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// How long an added replica may take to catch up before it is made a voter; a forwarded
/// admin request waits as long.
pub const ADD_REPLICA_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends a replica change to the replica at `url` (which does it, or forwards it to its
/// leader) and returns its answer, or its error as an [`crate::error::ApiError`].
pub async fn forward_replica_change(
    url: &str,
    change: &crate::node::ReplicaChange,
) -> Result<serde_json::Value, crate::error::ApiError> {
    use crate::error::ApiError;
    use crate::node::ReplicaChange;
    let (method, path, body) = match change {
        ReplicaChange::List => (
            hyper::Method::GET,
            "/api/v1/admin/replicas".to_string(),
            None,
        ),
        ReplicaChange::Add { replica_id, url } => (
            hyper::Method::POST,
            "/api/v1/admin/replicas".to_string(),
            Some(Bytes::from(
                serde_json::json!({ "replicaId": replica_id, "url": url }).to_string(),
            )),
        ),
        ReplicaChange::Remove { replica_id } => (
            hyper::Method::DELETE,
            format!("/api/v1/admin/replicas/{replica_id}"),
            None,
        ),
    };
    let timeout = ADD_REPLICA_TIMEOUT + Duration::from_secs(30);
    let (status, answer) = request(method, url, &path, body, timeout)
        .await
        .map_err(ApiError::GroupUnavailable)?;
    let doc: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| {
        ApiError::Internal(format!("{url}{path} answered {status} with no JSON: {e}"))
    })?;
    if status.is_success() {
        return Ok(doc);
    }
    let message = doc["message"].as_str().unwrap_or("no message").to_string();
    Err(match status.as_u16() {
        400..=499 => ApiError::BadRequest(message),
        503 => ApiError::GroupUnavailable(message),
        _ => ApiError::Internal(message),
    })
}
