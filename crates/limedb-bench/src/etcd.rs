//! The wire format of etcd v3's HTTP/JSON gateway (the gRPC gateway etcd 3.4
//! serves on its client port), for `--target etcd`: request paths, the
//! standard base64 the gateway wants for keys and values, request bodies, and
//! the reading of its answers.
//!
//! | LimeDB                      | etcd gateway                                        |
//! |-----------------------------|-----------------------------------------------------|
//! | `POST /api/v1/set`          | `POST /v3/kv/put` `{"key":"<b64>","value":"<b64>"}` |
//! | `GET /api/v1/get/{key}`     | `POST /v3/kv/range` `{"key":"<b64>"}` (linearizable) |
//! | 404 on a GET: not found     | 200 without `"kvs"`: not found                      |
//!
//! Every answer is JSON. A put answers `{"header":{…}}`; a range
//! `{"header":{…},"kvs":[{…}],"count":"1"}`, or just `{"header":{…}}` when the
//! key is absent. Failures are non-2xx with `{"error":"…","message":"…","code":N}`;
//! a 404 there means a wrong path (no such route), never an absent key.
//!
//! Bodies are written straight into the client's reused buffer (no
//! intermediate `String`); answers are checked with serde and
//! [`IgnoredAny`], so a hit allocates nothing.

use bytes::{BufMut, BytesMut};
use hyper::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::client::{Op, Outcome};

/// Path of a put, after the URL's path prefix.
pub const PUT_PATH: &str = "/v3/kv/put";

/// Path of a range (one key), after the URL's path prefix.
pub const RANGE_PATH: &str = "/v3/kv/range";

/// The standard base64 alphabet (RFC 4648 §4), which the gateway decodes.
const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Length of the padded base64 form of `len` bytes.
pub fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// The base64 digit of the low six bits of `bits`.
fn digit(bits: u32) -> u8 {
    BASE64_ALPHABET[(bits & 0x3f) as usize]
}

/// Appends `input` in padded standard base64 to `out`.
///
/// ```
/// let mut out = bytes::BytesMut::new();
/// limedb_bench::etcd::write_base64(&mut out, b"foobar!");
/// assert_eq!(&out[..], b"Zm9vYmFyIQ==");
/// ```
pub fn write_base64(out: &mut BytesMut, input: &[u8]) {
    out.reserve(base64_len(input.len()));
    let mut chunks = input.chunks_exact(3);
    for chunk in &mut chunks {
        if let [a, b, c] = *chunk {
            let n = u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c);
            out.put_slice(&[digit(n >> 18), digit(n >> 12), digit(n >> 6), digit(n)]);
        }
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.put_slice(&[digit(n >> 18), digit(n >> 12), b'=', b'=']);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.put_slice(&[digit(n >> 18), digit(n >> 12), digit(n >> 6), b'=']);
        }
        _ => {}
    }
}

/// Appends the body of a put: `{"key":"<b64 key>","value":"<b64 value>"}`.
pub fn write_put_body(out: &mut BytesMut, key: &[u8], value: &[u8]) {
    out.reserve(base64_len(key.len()) + base64_len(value.len()) + 21);
    out.put_slice(b"{\"key\":\"");
    write_base64(out, key);
    out.put_slice(b"\",\"value\":\"");
    write_base64(out, value);
    out.put_slice(b"\"}");
}

/// Appends the body of a range of one key: `{"key":"<b64 key>"}`.
///
/// Without `"serializable":true` the read is linearizable, etcd's default.
pub fn write_range_body(out: &mut BytesMut, key: &[u8]) {
    out.reserve(base64_len(key.len()) + 10);
    out.put_slice(b"{\"key\":\"");
    write_base64(out, key);
    out.put_slice(b"\"}");
}

/// The fields of an answer that matter; the rest is skipped unread.
#[derive(Debug, Deserialize)]
struct Answer {
    /// Present in every etcd answer (cluster id, member id, revision, term).
    header: Option<IgnoredAny>,
    /// The keys a range found; absent when none (`Vec` of a zero-sized type:
    /// no allocation).
    kvs: Option<Vec<IgnoredAny>>,
    /// Set in error answers.
    error: Option<String>,
    /// Set in error answers (same text as `error` in etcd 3.4).
    message: Option<String>,
}

/// Reads the answer to `op` with status `status` and body `body`.
///
/// 2xx with a `header` and no `error` is a success; a range without `kvs` (or
/// with an empty one) is [`Outcome::NotFound`], as a 404 is for LimeDB. Any
/// other status, an `error` field, or a body that is not an etcd answer is
/// [`Outcome::Failed`].
pub fn outcome(op: Op, status: StatusCode, body: &[u8]) -> Outcome {
    let answer = serde_json::from_slice::<Answer>(body);
    if !status.is_success() {
        let detail = answer
            .ok()
            .and_then(|a| a.message.or(a.error))
            .unwrap_or_else(|| snippet(body));
        return Outcome::Failed(format!("HTTP {status}: {detail}"));
    }
    match answer {
        Err(e) => Outcome::Failed(format!(
            "not an etcd answer ({e}): {} (is --url an etcd client URL?)",
            snippet(body)
        )),
        Ok(Answer {
            error: Some(error), ..
        }) => Outcome::Failed(format!("etcd error: {error}")),
        Ok(Answer { header: None, .. }) => Outcome::Failed(format!(
            "not an etcd answer (no header): {} (is --url an etcd client URL?)",
            snippet(body)
        )),
        Ok(Answer { kvs, .. }) => match op {
            Op::Set => Outcome::Ok,
            Op::Get if kvs.is_some_and(|kvs| !kvs.is_empty()) => Outcome::Ok,
            Op::Get => Outcome::NotFound,
        },
    }
}

/// The start of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body.get(..MAX).unwrap_or(body));
    let text = text.trim();
    if body.len() > MAX {
        format!("{text:?}…")
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
#[path = "etcd_tests.rs"]
mod tests;
