//! A small HTTP/1.1 client for tests: keep-alive connections over hyper, raw bytes in and out.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response: status, content type and the whole body.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// One keep-alive connection; requests go one at a time.
pub struct HttpConn {
    addr: String,
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<HttpConn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            addr: addr.to_string(),
            sender,
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<HttpResponse, String> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.as_str());
        if let Some(ct) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, ct);
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| format!("bad request {method} {path}: {e}"))?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("{method} {path}: connection not ready: {e}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: reading body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            content_type,
            body,
        })
    }

    /// `POST /api/v1/set` with a JSON body built from `key` and `value`.
    pub async fn set(&mut self, key: &str, value: &str) -> Result<HttpResponse, String> {
        let body = serde_json::json!({ "key": key, "value": value }).to_string();
        self.request(
            "POST",
            "/api/v1/set",
            body.as_bytes(),
            Some("application/json"),
        )
        .await
    }

    /// `POST /api/v1/set` with `body` sent as is (for malformed or hand-written JSON).
    pub async fn post_set(&mut self, body: &str) -> Result<HttpResponse, String> {
        self.request(
            "POST",
            "/api/v1/set",
            body.as_bytes(),
            Some("application/json"),
        )
        .await
    }

    /// `GET /api/v1/get/{key}` with the key percent-encoded.
    pub async fn get(&mut self, key: &str) -> Result<HttpResponse, String> {
        let path = format!("/api/v1/get/{}", encode(key.as_bytes()));
        self.request("GET", &path, &[], None).await
    }

    /// `DELETE /api/v1/del/{key}` with the key percent-encoded.
    pub async fn del(&mut self, key: &str) -> Result<HttpResponse, String> {
        let path = format!("/api/v1/del/{}", encode(key.as_bytes()));
        self.request("DELETE", &path, &[], None).await
    }
}

/// Percent-encodes every byte that is not unreserved in a URL path segment.
pub fn encode(raw: &[u8]) -> String {
    percent_encoding::percent_encode(raw, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// One request on a fresh connection.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<HttpResponse, String> {
    HttpConn::connect(addr)
        .await?
        .request(method, path, body, content_type)
        .await
}
