//! How the coordinator learns about a shard it was given only by HTTP URL: it asks the shard's
//! `GET /api/v1/health`, which names the shard's id and its internal-protocol port.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use limedb_cluster::ShardId;
use tokio::net::TcpStream;

/// Largest health document accepted from a shard.
const MAX_HEALTH_BYTES: usize = 1024 * 1024;

/// What a shard says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIdentity {
    /// The id the shard was started with.
    pub id: ShardId,
    /// The port of its internal protocol listener.
    pub internal_port: u16,
}

/// `host:port` of a normalized `http://host:port` base URL.
pub fn authority(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

/// The host part of a `host:port` authority (IPv6 brackets kept).
pub fn host(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i + 1..].contains(']') => &authority[..i],
        _ => authority,
    }
}

/// Fetches `GET {url}/api/v1/health` within `timeout` and reads the shard's identity from it.
pub async fn identify(url: &str, timeout: Duration) -> Result<ShardIdentity, String> {
    let body = tokio::time::timeout(timeout, get(url, "/api/v1/health"))
        .await
        .map_err(|_| format!("no answer from {url} within {} ms", timeout.as_millis()))??;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{url}/api/v1/health is not JSON: {e}"))?;
    if doc["type"] != "shard" {
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
    })
}

async fn get(url: &str, path: &str) -> Result<Bytes, String> {
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
    let request = hyper::Request::get(path)
        .header(HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build a request for {url}{path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {url}{path} failed: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_HEALTH_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read {url}{path}: {e}"))?
        .to_bytes();
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
