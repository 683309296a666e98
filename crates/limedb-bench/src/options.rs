//! What to run: [`BenchOptions`], the [`Api`], [`Workload`], [`KeyPattern`]
//! and [`ValueKind`] enums, and [`Target`], the base URL checked and split into the parts the
//! client needs.
//!
//! Everything here is pure: parsing and validation never touch the network
//! (resolving the host happens in [`run`](crate::run())).

use std::fmt;
use std::str::FromStr;

use hyper::http::uri::{Authority, Uri};

use crate::BenchError;

/// Read share of [`Workload::Mixed`] when written as plain `mixed`.
pub const DEFAULT_READ_PERCENT: u8 = 90;

/// The HTTP API the server at the URL speaks (`limedb bench --target`).
///
/// Parses from `limedb` or `etcd`; [`Display`](fmt::Display) writes the same.
///
/// ```
/// use limedb_bench::Api;
/// assert_eq!("etcd".parse::<Api>().unwrap(), Api::Etcd);
/// assert_eq!(Api::default().to_string(), "limedb");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// LimeDB: `POST /api/v1/set`, `GET /api/v1/get/{key}` (404: not found).
    #[default]
    LimeDb,
    /// etcd v3's HTTP/JSON gateway on an etcd client URL (as served by etcd
    /// 3.4): `POST /v3/kv/put` and linearizable `POST /v3/kv/range`, keys and
    /// values in base64 (see [`etcd`](crate::etcd)).
    Etcd,
}

impl FromStr for Api {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "limedb" => Ok(Api::LimeDb),
            "etcd" => Ok(Api::Etcd),
            _ => Err(BenchError::UnknownTarget(s.to_owned())),
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Api::LimeDb => "limedb",
            Api::Etcd => "etcd",
        })
    }
}

/// The operation mix of a run.
///
/// Parses from `set`, `get`, `mixed` (90 % reads) or `mixed:<read percent>`;
/// [`Display`](fmt::Display) writes the same form back.
///
/// ```
/// use limedb_bench::Workload;
/// assert_eq!("mixed".parse::<Workload>().unwrap(), Workload::Mixed { read_percent: 90 });
/// assert_eq!("mixed:50".parse::<Workload>().unwrap().to_string(), "mixed:50");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Only `POST /api/v1/set` (etcd: `POST /v3/kv/put`).
    Set,
    /// Only `GET /api/v1/get/{key}` (etcd: `POST /v3/kv/range`).
    Get,
    /// GETs with probability `read_percent` %, SETs otherwise.
    Mixed {
        /// Share of GETs, 0..=100.
        read_percent: u8,
    },
}

impl Workload {
    /// Whether the run issues any GET (and so benefits from a prefill).
    pub fn reads(&self) -> bool {
        match self {
            Workload::Set => false,
            Workload::Get => true,
            Workload::Mixed { read_percent } => *read_percent > 0,
        }
    }

    /// GET share in percent (0 for `set`, 100 for `get`).
    pub fn read_percent(&self) -> u8 {
        match self {
            Workload::Set => 0,
            Workload::Get => 100,
            Workload::Mixed { read_percent } => *read_percent,
        }
    }
}

impl FromStr for Workload {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "set" => Ok(Workload::Set),
            "get" => Ok(Workload::Get),
            "mixed" => Ok(Workload::Mixed {
                read_percent: DEFAULT_READ_PERCENT,
            }),
            other => {
                let percent = other
                    .strip_prefix("mixed:")
                    .and_then(|p| p.trim_end_matches('%').parse::<u8>().ok())
                    .filter(|p| *p <= 100);
                match percent {
                    Some(read_percent) => Ok(Workload::Mixed { read_percent }),
                    None => Err(BenchError::UnknownWorkload(s.to_owned())),
                }
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Set => f.write_str("set"),
            Workload::Get => f.write_str("get"),
            Workload::Mixed {
                read_percent: DEFAULT_READ_PERCENT,
            } => f.write_str("mixed"),
            Workload::Mixed { read_percent } => write!(f, "mixed:{read_percent}"),
        }
    }
}

/// How each connection picks the key of its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPattern {
    /// Connection `i` of `C` walks its own contiguous share of the keyspace in
    /// order, wrapping around.
    Sequential,
    /// Uniformly random keys from a per-connection seeded PRNG (reproducible).
    #[default]
    Random,
}

impl FromStr for KeyPattern {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sequential" | "seq" => Ok(KeyPattern::Sequential),
            "random" | "rand" => Ok(KeyPattern::Random),
            _ => Err(BenchError::UnknownKeyPattern(s.to_owned())),
        }
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPattern::Sequential => "sequential",
            KeyPattern::Random => "random",
        })
    }
}

/// What the value bytes look like (`limedb bench --values`); see
/// [`ValuePool`](crate::keys::ValuePool).
///
/// Both kinds are alphanumeric (no JSON escaping, nothing to percent-encode)
/// and deterministic per key index.
///
/// Parses from `repeating` or `random`; [`Display`](fmt::Display) writes the
/// same.
///
/// ```
/// use limedb_bench::ValueKind;
/// assert_eq!("random".parse::<ValueKind>().unwrap(), ValueKind::Random);
/// assert_eq!(ValueKind::default().to_string(), "repeating");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueKind {
    /// 61 overlapping windows into one small alphanumeric buffer: every value
    /// is one of 61 strings, so a store's compressor shrinks them to almost
    /// nothing. Cheap and the historical behaviour.
    #[default]
    Repeating,
    /// Windows at hashed offsets into a buffer of at least 32 MiB of random
    /// alphanumeric bytes: nearly every value is distinct and a block
    /// compressor cannot do much better than ~6 bits per byte (log2 62 ≈ 5.95),
    /// so loading N bytes of values makes the store hold about N bytes.
    Random,
}

impl FromStr for ValueKind {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "repeating" => Ok(ValueKind::Repeating),
            "random" => Ok(ValueKind::Random),
            _ => Err(BenchError::UnknownValueKind(s.to_owned())),
        }
    }
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueKind::Repeating => "repeating",
            ValueKind::Random => "random",
        })
    }
}

/// Everything a run needs. Start from [`Default`] and override fields.
///
/// ```
/// use limedb_bench::{BenchOptions, Workload};
/// let options = BenchOptions {
///     url: "http://127.0.0.1:8080".into(),
///     workload: Workload::Get,
///     requests: 10_000,
///     ..BenchOptions::default()
/// };
/// assert_eq!(options.connections, 64);
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Base URL such as `http://127.0.0.1:8080` (http only; an optional path
    /// prefix is kept, a query is rejected).
    pub url: String,
    /// The API the server speaks: LimeDB's (the default) or etcd's gateway.
    pub api: Api,
    /// Concurrent keep-alive connections, each driven by its own task with one
    /// request in flight (closed loop).
    pub connections: usize,
    /// Measured requests across all connections.
    pub requests: u64,
    /// Operation mix.
    pub workload: Workload,
    /// Keys are `key:{0..keyspace}`, zero-padded to 12 digits.
    pub keyspace: u64,
    /// Bytes per value (alphanumeric ASCII, deterministic per key).
    pub value_size: usize,
    /// What the value bytes look like: compressible (the default) or not.
    pub value_kind: ValueKind,
    /// How keys are chosen.
    pub key_pattern: KeyPattern,
    /// Before a run with GETs, SET every key once (not measured) so GETs hit.
    /// Ignored for [`Workload::Set`].
    pub prefill: bool,
    /// Requests of the workload issued (not measured) before the measured ones.
    pub warmup_requests: u64,
    /// Per-request (and per-connect) timeout.
    pub timeout_ms: u64,
    /// Draw a progress bar on stderr (the binary sets this when stderr is a terminal).
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            url: "http://127.0.0.1:8080".to_owned(),
            api: Api::LimeDb,
            connections: 64,
            requests: 100_000,
            workload: Workload::Set,
            keyspace: 100_000,
            value_size: 100,
            value_kind: ValueKind::Repeating,
            key_pattern: KeyPattern::Random,
            prefill: true,
            warmup_requests: 0,
            timeout_ms: 5_000,
            progress: false,
        }
    }
}

/// Largest `connections` accepted (each one is a socket and a task).
pub const MAX_CONNECTIONS: usize = 10_000;

/// Largest `value_size` accepted.
pub const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;

impl BenchOptions {
    /// Checks ranges and the URL without touching the network.
    pub fn validate(&self) -> Result<Target, BenchError> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(BenchError::InvalidOption(format!(
                "connections must be in 1..={MAX_CONNECTIONS}, got {}",
                self.connections
            )));
        }
        if self.keyspace == 0 {
            return Err(BenchError::InvalidOption(
                "keyspace must be at least 1".into(),
            ));
        }
        if self.value_size > MAX_VALUE_SIZE {
            return Err(BenchError::InvalidOption(format!(
                "value size must be at most {MAX_VALUE_SIZE} bytes, got {}",
                self.value_size
            )));
        }
        if self.timeout_ms == 0 {
            return Err(BenchError::InvalidOption(
                "timeout_ms must be at least 1".into(),
            ));
        }
        if self.workload.read_percent() > 100 {
            return Err(BenchError::InvalidOption(format!(
                "read percent must be in 0..=100, got {}",
                self.workload.read_percent()
            )));
        }
        Target::parse(&self.url)
    }
}

/// The base URL, checked and split.
///
/// ```
/// use limedb_bench::Target;
/// let target = Target::parse("http://localhost:7000/db/").unwrap();
/// assert_eq!(target.host(), "localhost");
/// assert_eq!(target.port(), 7000);
/// assert_eq!(target.path_prefix(), "/db");
/// assert!(Target::parse("https://localhost").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    authority: Authority,
    host: String,
    port: u16,
    path_prefix: String,
    credentials: Option<Credentials>,
}

/// The `Authorization` header a URL's user info stands for (`http://user:password@host`: basic
/// auth; `http://:password@host`: the default user's bearer password). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials(String);

impl Credentials {
    fn from_userinfo(userinfo: &str) -> Option<Credentials> {
        use base64::Engine as _;
        let (user, password) = userinfo.split_once(':')?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        };
        let (user, password) = (decode(user)?, decode(password)?);
        Some(Credentials(if user.is_empty() {
            format!("Bearer {password}")
        } else {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        }))
    }

    /// The `Authorization` header's value.
    pub fn header_value(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<hidden>)")
    }
}

/// `url` with the password of its user info (if any) replaced by `***`, for reports and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

impl Target {
    /// Parses a base URL: `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Target, BenchError> {
        let invalid = |reason: &str| BenchError::InvalidUrl {
            url: redacted(url),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| BenchError::InvalidUrl {
                url: redacted(url),
                reason: e.to_string(),
            })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(BenchError::UnsupportedScheme {
                    url: redacted(url),
                    scheme: other.to_owned(),
                })
            }
            None => return Err(invalid("missing scheme; write it as http://host:port")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("missing host"))?;
        let (credentials, authority) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, rest)) => {
                let credentials = Credentials::from_userinfo(userinfo).ok_or_else(|| {
                    invalid("user info must be user:password (or :password for the default user)")
                })?;
                let rest: Authority = rest.parse().map_err(|_| invalid("missing host"))?;
                (Some(credentials), rest)
            }
            None => (None, authority),
        };
        if uri.query().is_some() {
            return Err(invalid("a query string is not supported in the base URL"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let path_prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Target {
            authority,
            host,
            port,
            path_prefix,
            credentials,
        })
    }

    /// The credentials of the URL's user info, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// `host[:port]` as written, used for the `Host` header.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// Host name or IP literal (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port, 80 when absent.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path prefix without a trailing slash (empty for a bare host).
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
