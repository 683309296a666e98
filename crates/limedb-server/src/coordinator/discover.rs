//! How the coordinator learns about a shard it was given only by HTTP URL: it asks the shard's
//! `GET /api/v1/health`, which names the shard's id and its internal-protocol port.

use std::time::Duration;

use bytes::Bytes;
use limedb_cluster::ShardId;

/// What a shard says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIdentity {
    /// The id the shard was started with.
    pub id: ShardId,
    /// The port of its internal protocol listener.
    pub internal_port: u16,
    /// Its replica id within the shard's group (1 for a shard started without `--peers`).
    pub replica_id: u64,
}

pub use crate::http::client::authority;

/// The host part of a `host:port` authority (IPv6 brackets kept).
pub fn host(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i + 1..].contains(']') => &authority[..i],
        _ => authority,
    }
}

/// Fetches `GET {url}/api/v1/health` within `timeout` as JSON.
pub async fn health(url: &str, timeout: Duration) -> Result<serde_json::Value, String> {
    let body = tokio::time::timeout(timeout, get(url, "/api/v1/health"))
        .await
        .map_err(|_| format!("no answer from {url} within {} ms", timeout.as_millis()))??;
    serde_json::from_slice(&body).map_err(|e| format!("{url}/api/v1/health is not JSON: {e}"))
}

/// Fetches `GET {url}/api/v1/health` within `timeout` and reads the shard's identity from it.
pub async fn identify(url: &str, timeout: Duration) -> Result<ShardIdentity, String> {
    let doc = health(url, timeout).await?;
    // A map-group replica ("meta") speaks the same protocol to its peers; a coordinator that
    // was given one as a data shard finds out from its shard id (0).
    if doc["type"] != "shard" && doc["type"] != "meta" {
        return Err(format!(
            "{url} is not a LimeDB shard (its health says type {})",
            doc["type"]
        ));
    }
    let id = doc["shardId"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("{url}/api/v1/health has no valid shardId"))?;
    let internal_port = doc["internalPort"]
        .as_u64()
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| format!("{url}/api/v1/health has no valid internalPort"))?;
    Ok(ShardIdentity {
        id: ShardId(id),
        internal_port,
        replica_id: doc["replicaId"].as_u64().unwrap_or(1),
    })
}

async fn get(url: &str, path: &str) -> Result<Bytes, String> {
    // The caller bounds the time; this bound only keeps a stuck peer from holding a task.
    let (status, body) =
        crate::http::client::request(hyper::Method::GET, url, path, None, Duration::from_secs(60))
            .await?;
    // A shard whose storage is unavailable answers its health with 503 and the same document:
    // its identity is still good, and requests will tell their own errors.
    if !status.is_success() && status != hyper::StatusCode::SERVICE_UNAVAILABLE {
        return Err(format!("GET {url}{path} answered {status}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_authority() {
        assert_eq!(authority("http://127.0.0.1:7001"), "127.0.0.1:7001");
        assert_eq!(host("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host("[::1]:7001"), "[::1]");
        assert_eq!(host("localhost"), "localhost");
    }

    #[tokio::test]
    async fn unreachable_shard_is_a_clear_error() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = identify(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
            .await
            .expect_err("nobody listens");
        assert!(err.contains("cannot connect"), "{err}");
    }
}
