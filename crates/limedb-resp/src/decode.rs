//! Parsing RESP2 and RESP3 *values* (what a server replies), as a client reads them.
//!
//! LimeDB's coordinator uses it to read the replies its shards return (see `docs/resp.md`);
//! the property tests use it to check that [`Value::encode`] round-trips. Requests from clients
//! are parsed by [`crate::RequestParser`], which follows Redis's own request rules instead.
//!
//! [`decode_value`] returns `Ok(None)` when the buffer holds only part of a value and leaves the
//! buffer untouched, so the caller reads more and calls again. Every length is checked against
//! [`ValueLimits`] before anything is allocated, and nesting is bounded, so hostile input can
//! neither exhaust memory nor the stack.

use bytes::{Buf, Bytes, BytesMut};

use crate::{RespError, Value};

/// Bounds on what [`decode_value`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueLimits {
    /// Largest bulk, verbatim or simple string, in bytes.
    pub max_bulk_bytes: usize,
    /// Most elements in one array, set or map (a map counts its pairs).
    pub max_elements: usize,
    /// Deepest nesting of aggregates.
    pub max_depth: usize,
}

impl Default for ValueLimits {
    fn default() -> Self {
        ValueLimits {
            max_bulk_bytes: 512 << 20,
            max_elements: 1 << 24,
            max_depth: 64,
        }
    }
}

/// Takes one complete value off the front of `buf`, or returns `Ok(None)` (leaving `buf`
/// as it was) if more bytes are needed.
///
/// ```
/// use limedb_resp::{decode_value, Value, ValueLimits};
/// let mut buf = bytes::BytesMut::from(&b"*2\r\n:1\r\n$1\r\nx\r\n"[..]);
/// let v = decode_value(&mut buf, &ValueLimits::default()).unwrap();
/// assert_eq!(v, Some(Value::Array(vec![Value::Integer(1), Value::bulk("x")])));
/// assert!(buf.is_empty());
/// ```
pub fn decode_value(buf: &mut BytesMut, limits: &ValueLimits) -> Result<Option<Value>, RespError> {
    let mut pos = 0;
    match parse(buf, &mut pos, limits, 0)? {
        Some(value) => {
            buf.advance(pos);
            Ok(Some(value))
        }
        None => Ok(None),
    }
}

/// The line starting at `*pos` (without `\r\n`); advances past it.
fn read_line<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = buf.get(*pos..)?;
    let cr = rest.windows(2).position(|w| w == b"\r\n")?;
    let line = rest.get(..cr)?;
    *pos += cr + 2;
    Some(line)
}

fn parse_int(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn parse_len(line: &[u8], max: usize) -> Result<Option<usize>, RespError> {
    let n = parse_int(line).ok_or(RespError::Malformed("invalid length"))?;
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| RespError::Malformed("negative length"))?;
    if n > max {
        return Err(RespError::Malformed("length over the limit"));
    }
    Ok(Some(n))
}

fn text(line: &[u8]) -> Result<String, RespError> {
    String::from_utf8(line.to_vec()).map_err(|_| RespError::Malformed("string is not UTF-8"))
}

fn parse(
    buf: &[u8],
    pos: &mut usize,
    limits: &ValueLimits,
    depth: usize,
) -> Result<Option<Value>, RespError> {
    if depth > limits.max_depth {
        return Err(RespError::Malformed("nesting too deep"));
    }
    let Some(&tag) = buf.get(*pos) else {
        return Ok(None);
    };
    let mut p = *pos + 1;
    let Some(line) = read_line(buf, &mut p) else {
        // No line end yet: complain early about a line that can never be valid.
        if buf.len() - *pos > limits.max_bulk_bytes.saturating_add(64) {
            return Err(RespError::Malformed("line too long"));
        }
        return Ok(None);
    };
    let value = match tag {
        b'+' => Value::Simple(text(line)?),
        b'-' => Value::Error(text(line)?),
        b':' => Value::Integer(parse_int(line).ok_or(RespError::Malformed("invalid integer"))?),
        b',' => {
            let t = std::str::from_utf8(line).map_err(|_| RespError::Malformed("bad double"))?;
            Value::Double(match t {
                "inf" | "+inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                t => t.parse().map_err(|_| RespError::Malformed("bad double"))?,
            })
        }
        b'#' => match line {
            b"t" => Value::Boolean(true),
            b"f" => Value::Boolean(false),
            _ => return Err(RespError::Malformed("bad boolean")),
        },
        b'_' if line.is_empty() => Value::Null,
        b'$' | b'=' => match parse_len(line, limits.max_bulk_bytes)? {
            None if tag == b'$' => Value::Null,
            None => return Err(RespError::Malformed("null verbatim string")),
            Some(n) => {
                let Some(data) = buf.get(p..p + n + 2) else {
                    return Ok(None);
                };
                if data.get(n..) != Some(b"\r\n") {
                    return Err(RespError::Malformed("bulk string not followed by CRLF"));
                }
                let data = &data[..n];
                p += n + 2;
                if tag == b'$' {
                    Value::Bulk(Bytes::copy_from_slice(data))
                } else {
                    let (format, body) = match (data.get(..3), data.get(3), data.get(4..)) {
                        (Some(f), Some(b':'), Some(body)) => (f, body),
                        _ => return Err(RespError::Malformed("bad verbatim string")),
                    };
                    Value::Verbatim(text(format)?, Bytes::copy_from_slice(body))
                }
            }
        },
        b'*' | b'~' | b'%' => match parse_len(line, limits.max_elements)? {
            None if tag == b'*' => Value::NullArray,
            None => return Err(RespError::Malformed("null aggregate")),
            Some(n) => {
                let count = if tag == b'%' { n * 2 } else { n };
                // Each element takes at least 3 bytes; don't reserve for what cannot be there.
                let mut items = Vec::with_capacity(count.min(buf.len() / 3));
                for _ in 0..count {
                    match parse(buf, &mut p, limits, depth + 1)? {
                        Some(v) => items.push(v),
                        None => return Ok(None),
                    }
                }
                match tag {
                    b'*' => Value::Array(items),
                    b'~' => Value::Set(items),
                    _ => {
                        let mut pairs = Vec::with_capacity(n);
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            pairs.push((k, v));
                        }
                        Value::Map(pairs)
                    }
                }
            }
        },
        _ => return Err(RespError::Malformed("unknown type byte")),
    };
    *pos = p;
    Ok(Some(value))
}
