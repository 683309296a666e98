//! One benchmark connection: a hyper HTTP/1.1 client connection over a
//! `TCP_NODELAY` tokio `TcpStream`, driven *inside the task that uses it*.
//!
//! hyper's usual pattern spawns the connection future on its own task and
//! talks to it through a channel, which costs two task wake-ups per request.
//! Here [`Client::request`] polls the connection future and the request future
//! together (one `select!`), so each request wakes one task — it matters on a
//! small machine where the load generator shares the CPU with the server.
//!
//! Requests are built from pre-built parts: the `Host` and `Content-Type`
//! header values and the POST URIs are created once, GET paths are written
//! into a reused buffer, and SET bodies (`{"key":"…","value":"…"}`) into one
//! reused `BytesMut` whose storage is reclaimed once hyper has sent the
//! previous body. Every response body is drained to the end so the connection
//! stays usable.
//!
//! With [`Api::Etcd`] both operations are POSTs whose bodies ([`etcd`]'s
//! base64 JSON) go to the same reused `BytesMut`, and the answer body — which
//! says whether a range found its key — is copied into a reused buffer and
//! read by [`etcd::outcome`]. LimeDB answers are drained without a copy.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{percent_encode, AsciiSet, CONTROLS};
use tokio::net::TcpStream;

use crate::etcd;
use crate::keys::{write_key, ValuePool};
use crate::options::{Api, Target, ValueKind};

/// Bytes escaped in a key placed in a URL path segment.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The operation of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET {prefix}/api/v1/get/{key}` (etcd: `POST {prefix}/v3/kv/range`).
    Get,
    /// `POST {prefix}/api/v1/set` with a JSON body (etcd: `POST {prefix}/v3/kv/put`).
    Set,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx (etcd: and an answer that is no error).
    Ok,
    /// 404 on a GET (etcd: a range answer without `kvs`): the key is absent
    /// (expected, not an error).
    NotFound,
    /// Anything else; the text says what. The connection must be replaced.
    Failed(String),
}

/// Immutable request parts shared by all connections of a run.
#[derive(Debug)]
pub struct RequestParts {
    api: Api,
    host: HeaderValue,
    /// From the URL's user info (see [`crate::options::Credentials`]).
    authorization: Option<HeaderValue>,
    json: HeaderValue,
    /// LimeDB GETs: the path up to the key.
    get_prefix: Vec<u8>,
    /// LimeDB: `{prefix}/api/v1/set`; etcd: `{prefix}/v3/kv/put`.
    set_uri: Uri,
    /// etcd: `{prefix}/v3/kv/range` (unused for LimeDB).
    range_uri: Uri,
    values: ValuePool,
    timeout: Duration,
}

impl RequestParts {
    /// Parts for a server speaking `api` at `target`, values of `value_size`
    /// bytes of kind `value_kind` (the [`ValuePool`] is generated here, once),
    /// and a per-request timeout.
    pub fn new(
        api: Api,
        target: &Target,
        value_size: usize,
        value_kind: ValueKind,
        timeout: Duration,
    ) -> Arc<RequestParts> {
        let host = HeaderValue::from_str(target.authority())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let uri = |path: &'static str| {
            Uri::try_from(format!("{}{path}", target.path_prefix()))
                .unwrap_or_else(|_| Uri::from_static(path))
        };
        let set_uri = match api {
            Api::LimeDb => uri("/api/v1/set"),
            Api::Etcd => uri(etcd::PUT_PATH),
        };
        let authorization = target
            .credentials()
            .and_then(|c| HeaderValue::from_str(c.header_value()).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Arc::new(RequestParts {
            api,
            host,
            authorization,
            json: HeaderValue::from_static("application/json"),
            get_prefix: format!("{}/api/v1/get/", target.path_prefix()).into_bytes(),
            set_uri,
            range_uri: uri(etcd::RANGE_PATH),
            values: ValuePool::new(value_size, value_kind),
            timeout,
        })
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

type ConnFuture = Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One keep-alive connection with one request in flight at a time.
pub struct Client {
    parts: Arc<RequestParts>,
    sender: http1::SendRequest<Full<Bytes>>,
    conn: ConnFuture,
    conn_done: bool,
    key: Vec<u8>,
    path: Vec<u8>,
    body: BytesMut,
    /// The last answer body (etcd only; LimeDB answers are not kept).
    answer: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("conn_done", &self.conn_done)
            .finish_non_exhaustive()
    }
}

/// Opens a TCP connection with `TCP_NODELAY`, bounded by `timeout`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {} ms", timeout.as_millis()),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Client {
    /// Connects to `addr` and performs the HTTP/1 handshake.
    pub async fn connect(addr: SocketAddr, parts: Arc<RequestParts>) -> std::io::Result<Client> {
        let stream = connect_tcp(addr, parts.timeout).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        Ok(Client {
            parts,
            sender,
            conn: Box::pin(conn),
            conn_done: false,
            key: Vec::with_capacity(32),
            path: Vec::with_capacity(64),
            body: BytesMut::new(),
            answer: Vec::new(),
        })
    }

    /// Whether the server closed the connection (a new one is needed; this
    /// is not an error of any request).
    pub fn is_closed(&self) -> bool {
        self.conn_done || self.sender.is_closed()
    }

    /// Sends one request for key `index`, waits for the whole response, and
    /// returns the outcome with the latency (send to last body byte).
    pub async fn request(&mut self, op: Op, index: u64) -> (Outcome, Duration) {
        let request = self.build(op, index);
        let timeout = self.parts.timeout;
        let keep_answer = self.parts.api == Api::Etcd;
        let Client {
            sender,
            conn,
            conn_done,
            answer,
            ..
        } = self;
        answer.clear();
        let started = Instant::now();
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = response.status();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading response body failed: {e}"))?;
                if keep_answer {
                    if let Some(data) = frame.data_ref() {
                        answer.extend_from_slice(data);
                    }
                }
            }
            Ok::<StatusCode, String>(status)
        };
        let result = {
            // Scoped: the exchange borrows `answer` until it is dropped.
            let exchange = tokio::time::timeout(timeout, exchange);
            tokio::pin!(exchange);
            loop {
                tokio::select! {
                    biased;
                    _ = conn.as_mut(), if !*conn_done => {
                        // The connection ended; the exchange now fails (or has
                        // already finished) and will say so.
                        *conn_done = true;
                    }
                    result = &mut exchange => break result,
                }
            }
        };
        let latency = started.elapsed();
        let outcome = match result {
            Err(_) => Outcome::Failed(format!("timed out after {} ms", timeout.as_millis())),
            Ok(Err(message)) => Outcome::Failed(message),
            Ok(Ok(status)) if self.parts.api == Api::Etcd => {
                etcd::outcome(op, status, &self.answer)
            }
            Ok(Ok(status)) if status.is_success() => Outcome::Ok,
            Ok(Ok(StatusCode::NOT_FOUND)) if op == Op::Get => Outcome::NotFound,
            Ok(Ok(status)) => Outcome::Failed(format!("HTTP {status}")),
        };
        if matches!(outcome, Outcome::Failed(_)) {
            // A timed-out or failed exchange leaves the connection in an
            // unknown state: never reuse it.
            self.conn_done = true;
        }
        (outcome, latency)
    }

    fn build(&mut self, op: Op, index: u64) -> Request<Full<Bytes>> {
        self.key.clear();
        write_key(&mut self.key, index);
        let mut request = match (self.parts.api, op) {
            (Api::Etcd, op) => {
                match op {
                    Op::Get => etcd::write_range_body(&mut self.body, &self.key),
                    Op::Set => {
                        let value = self.parts.values.value(index);
                        etcd::write_put_body(&mut self.body, &self.key, value);
                    }
                }
                let body = self.body.split().freeze();
                let mut request = Request::new(Full::new(body));
                *request.method_mut() = Method::POST;
                *request.uri_mut() = match op {
                    Op::Get => self.parts.range_uri.clone(),
                    Op::Set => self.parts.set_uri.clone(),
                };
                request
                    .headers_mut()
                    .insert(CONTENT_TYPE, self.parts.json.clone());
                request
            }
            (Api::LimeDb, Op::Get) => {
                self.path.clear();
                self.path.extend_from_slice(&self.parts.get_prefix);
                for chunk in percent_encode(&self.key, PATH_SEGMENT) {
                    self.path.extend_from_slice(chunk.as_bytes());
                }
                let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(&self.path))
                    .unwrap_or_else(|_| Uri::from_static("/"));
                let mut request = Request::new(Full::new(Bytes::new()));
                *request.uri_mut() = uri;
                request
            }
            (Api::LimeDb, Op::Set) => {
                let value = self.parts.values.value(index);
                // Keys and values are alphanumeric plus ':' and need no JSON escaping.
                self.body.reserve(self.key.len() + value.len() + 24);
                self.body.extend_from_slice(b"{\"key\":\"");
                self.body.extend_from_slice(&self.key);
                self.body.extend_from_slice(b"\",\"value\":\"");
                self.body.extend_from_slice(value);
                self.body.extend_from_slice(b"\"}");
                let body = self.body.split().freeze();
                let mut request = Request::new(Full::new(body));
                *request.method_mut() = Method::POST;
                *request.uri_mut() = self.parts.set_uri.clone();
                request
                    .headers_mut()
                    .insert(CONTENT_TYPE, self.parts.json.clone());
                request
            }
        };
        request.headers_mut().insert(HOST, self.parts.host.clone());
        if let Some(authorization) = &self.parts.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn client_for(url: &str) -> Option<Client> {
        client_with(Api::LimeDb, url).await
    }

    async fn client_with(api: Api, url: &str) -> Option<Client> {
        client_with_values(api, url, ValueKind::Repeating).await
    }

    async fn client_with_values(api: Api, url: &str, kind: ValueKind) -> Option<Client> {
        // A listener that accepts but never answers is enough to build requests.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        tokio::spawn(async move {
            let _keep = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let target = Target::parse(url).ok()?;
        let parts = RequestParts::new(api, &target, 8, kind, Duration::from_millis(200));
        Client::connect(addr, parts).await.ok()
    }

    #[tokio::test]
    async fn builds_get_and_set_requests() -> Result<(), Box<dyn std::error::Error>> {
        let mut client = client_for("http://db.example:8080/pre")
            .await
            .ok_or("no client")?;
        let get = client.build(Op::Get, 42);
        assert_eq!(get.method(), Method::GET);
        assert_eq!(get.uri(), "/pre/api/v1/get/key:000000000042");
        assert_eq!(get.headers()[HOST], "db.example:8080");

        let set = client.build(Op::Set, 3);
        assert_eq!(set.method(), Method::POST);
        assert_eq!(set.uri(), "/pre/api/v1/set");
        assert_eq!(set.headers()[CONTENT_TYPE], "application/json");
        let body = set.into_body().collect().await?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(json["key"], "key:000000000003");
        assert_eq!(json["value"].as_str().map(str::len), Some(8));
        Ok(())
    }

    #[tokio::test]
    async fn builds_etcd_put_and_range_requests() -> Result<(), Box<dyn std::error::Error>> {
        let mut client = client_with(Api::Etcd, "http://etcd.example:2379")
            .await
            .ok_or("no client")?;
        let value = client.parts.values.value(42).to_vec();
        let put = client.build(Op::Set, 42);
        assert_eq!(put.method(), Method::POST);
        assert_eq!(put.uri(), "/v3/kv/put");
        assert_eq!(put.headers()[HOST], "etcd.example:2379");
        assert_eq!(put.headers()[CONTENT_TYPE], "application/json");
        let body = put.into_body().collect().await?.to_bytes();
        let mut expected = BytesMut::new();
        etcd::write_base64(&mut expected, &value);
        let expected = format!(
            r#"{{"key":"a2V5OjAwMDAwMDAwMDA0Mg==","value":"{}"}}"#,
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(body, expected.as_bytes());

        let range = client.build(Op::Get, 7);
        assert_eq!(range.method(), Method::POST);
        assert_eq!(range.uri(), "/v3/kv/range");
        assert_eq!(range.headers()[CONTENT_TYPE], "application/json");
        let body = range.into_body().collect().await?.to_bytes();
        assert_eq!(body, &br#"{"key":"a2V5OjAwMDAwMDAwMDAwNw=="}"#[..]);

        // A path prefix is kept, as for LimeDB.
        let mut client = client_with(Api::Etcd, "http://127.0.0.1:2379/gw/")
            .await
            .ok_or("no client")?;
        assert_eq!(client.build(Op::Get, 0).uri(), "/gw/v3/kv/range");
        assert_eq!(client.build(Op::Set, 0).uri(), "/gw/v3/kv/put");
        Ok(())
    }

    #[tokio::test]
    async fn set_bodies_carry_random_values_for_both_apis() -> Result<(), Box<dyn std::error::Error>>
    {
        let mut client =
            client_with_values(Api::LimeDb, "http://127.0.0.1:8080", ValueKind::Random)
                .await
                .ok_or("no client")?;
        assert_eq!(client.parts.values.kind(), ValueKind::Random);
        for index in [0, 1, 42] {
            let value = client.parts.values.value(index).to_vec();
            assert_eq!(value.len(), 8);
            let body = client.build(Op::Set, index).into_body().collect().await?;
            let json: serde_json::Value = serde_json::from_slice(&body.to_bytes())?;
            assert_eq!(json["value"].as_str(), std::str::from_utf8(&value).ok());
        }
        assert_ne!(client.parts.values.value(0), client.parts.values.value(1));

        let mut client = client_with_values(Api::Etcd, "http://127.0.0.1:2379", ValueKind::Random)
            .await
            .ok_or("no client")?;
        let value = client.parts.values.value(42).to_vec();
        let body = client.build(Op::Set, 42).into_body().collect().await?;
        let json: serde_json::Value = serde_json::from_slice(&body.to_bytes())?;
        let mut expected = BytesMut::new();
        etcd::write_base64(&mut expected, &value);
        assert_eq!(json["value"].as_str(), std::str::from_utf8(&expected).ok());
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_server_times_out() -> Result<(), Box<dyn std::error::Error>> {
        let mut client = client_for("http://127.0.0.1:1").await.ok_or("no client")?;
        let (outcome, latency) = client.request(Op::Get, 1).await;
        assert!(matches!(outcome, Outcome::Failed(ref m) if m.contains("timed out")));
        assert!(latency >= Duration::from_millis(200));
        assert!(client.is_closed());
        Ok(())
    }
}
