//! Parsing client *requests* the way Redis does: multibulk arrays of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) and inline commands (`GET k\r\n`, as typed into telnet).
//!
//! [`RequestParser`] is fed a connection's read buffer and takes complete requests off its
//! front. It keeps its place inside a partly received multibulk request (how many arguments
//! are left, the length of the bulk being received), so a huge request that arrives in many
//! reads is scanned once, not again on every read. The rules and error texts are Redis 7's
//! (`networking.c`):
//!
//! - A buffer starting with `*` is a multibulk request, anything else an inline one.
//! - `*<n>`: `n` must be a number no larger than [`RequestLimits::max_args`], else
//!   `invalid multibulk length`; `n <= 0` is an empty request and is skipped.
//! - Each argument is `$<len>\r\n<len bytes>\r\n`; a line not starting with `$` is
//!   `expected '$', got 'x'`; a length that is not a number, negative or over
//!   [`RequestLimits::max_bulk_bytes`] is `invalid bulk length`. As in Redis, the two bytes after
//!   the data are skipped without being looked at.
//! - A `*`/`$` line or an inline line still unfinished after [`RequestLimits::max_inline_bytes`]
//!   is `too big mbulk count string` / `too big bulk count string` / `too big inline request`.
//! - An inline line is split like `sdssplitargs`: spaces separate arguments, `"..."` supports
//!   `\n \r \t \b \a \\ \" \xHH` escapes, `'...'` supports `\'`; a quote never closed, or a
//!   closing quote followed by something other than a space, is `unbalanced quotes in request`.
//!   An empty line is skipped.
//!
//! Every error leaves the stream out of step: reply with its text and close the connection.

use bytes::{Buf, Bytes, BytesMut};

use crate::RespError;

/// Redis's `PROTO_INLINE_MAX_SIZE`: the longest inline line or length line.
pub const DEFAULT_MAX_INLINE_BYTES: usize = 64 * 1024;

/// Arguments up to this size are copied out of the read buffer; larger ones share it.
const COPY_ARG_MAX_BYTES: usize = 4096;

/// Bounds on one request; they bound a connection's memory too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest single argument (Redis's `proto-max-bulk-len`).
    pub max_bulk_bytes: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line, or `*`/`$` line.
    pub max_inline_bytes: usize,
    /// Most argument bytes in one request, all arguments together.
    pub max_request_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_bulk_bytes: 512 << 20,
            max_args: 1 << 20,
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
            max_request_bytes: 1 << 30,
        }
    }
}

/// Where the parser is inside a multibulk request.
#[derive(Debug)]
struct Partial {
    /// Arguments still to come.
    remaining: usize,
    /// Arguments received so far.
    args: Vec<Bytes>,
    /// Their bytes so far.
    bytes: usize,
    /// The length of the argument being received, once its `$` line was read.
    bulk_len: Option<usize>,
}

/// Takes requests off the front of a read buffer; see the [module docs](crate::request).
#[derive(Debug)]
pub struct RequestParser {
    limits: RequestLimits,
    partial: Option<Partial>,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: RequestLimits) -> Self {
        RequestParser {
            limits,
            partial: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// Whether the parser is in the middle of a multibulk request.
    pub fn is_mid_request(&self) -> bool {
        self.partial.is_some()
    }

    /// How many more bytes the argument being received needs before the parser can make
    /// progress (0 when unknown); lets the caller reserve buffer room once.
    pub fn bytes_wanted(&self, buf: &BytesMut) -> usize {
        match &self.partial {
            Some(Partial {
                bulk_len: Some(n), ..
            }) => (n + 2).saturating_sub(buf.len()),
            _ => 0,
        }
    }

    /// The next complete request (its arguments, never empty), consuming its bytes from `buf`;
    /// `Ok(None)` when `buf` holds no complete request yet (what was consumed of a partial one
    /// is remembered).
    ///
    /// ```
    /// use limedb_resp::{RequestLimits, RequestParser};
    /// let mut parser = RequestParser::new(RequestLimits::default());
    /// let mut buf = bytes::BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n"[..]);
    /// assert_eq!(parser.next(&mut buf).unwrap().unwrap(), vec!["GET", "k"]);
    /// assert_eq!(parser.next(&mut buf).unwrap().unwrap(), vec!["PING"]);
    /// assert_eq!(parser.next(&mut buf).unwrap(), None);
    /// ```
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
        loop {
            if let Some(partial) = self.partial.as_mut() {
                return match fill(partial, buf, &self.limits)? {
                    true => Ok(self.partial.take().map(|p| p.args)),
                    false => Ok(None),
                };
            }
            match buf.first() {
                None => return Ok(None),
                Some(b'*') => {
                    let Some(line) = length_line(buf, &self.limits)? else {
                        if buf.len() > self.limits.max_inline_bytes {
                            return Err(RespError::TooBigMultibulkCount);
                        }
                        return Ok(None);
                    };
                    let count = string_to_i64(&buf[1..line])
                        .filter(|&n| n <= self.limits.max_args as i64)
                        .ok_or(RespError::InvalidMultibulkLength)?;
                    buf.advance(line + 2);
                    if count > 0 {
                        let count = count as usize;
                        self.partial = Some(Partial {
                            remaining: count,
                            // Grow as arguments arrive: a claimed count costs nothing up front.
                            args: Vec::with_capacity(count.min(64)),
                            bytes: 0,
                            bulk_len: None,
                        });
                    }
                }
                Some(_) => {
                    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > self.limits.max_inline_bytes {
                            return Err(RespError::TooBigInlineRequest);
                        }
                        return Ok(None);
                    };
                    let line = buf.split_to(newline + 1);
                    let mut text = &line[..newline];
                    if let Some(stripped) = text.strip_suffix(b"\r") {
                        text = stripped;
                    }
                    let args = split_args(text)?;
                    if args.len() > self.limits.max_args {
                        return Err(RespError::InvalidMultibulkLength);
                    }
                    if !args.is_empty() {
                        return Ok(Some(args));
                    }
                }
            }
        }
    }
}

/// The index of the `\r` ending the length line at the front of `buf`, once the byte after it
/// is there too.
fn length_line(buf: &BytesMut, limits: &RequestLimits) -> Result<Option<usize>, RespError> {
    let window = &buf[..buf.len().min(limits.max_inline_bytes + 2)];
    match window.iter().position(|&b| b == b'\r') {
        Some(cr) if cr + 2 <= buf.len() => Ok(Some(cr)),
        _ => Ok(None),
    }
}

/// Receives arguments of `partial` from `buf`; `true` once all are in.
fn fill(
    partial: &mut Partial,
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<bool, RespError> {
    while partial.remaining > 0 {
        let len = match partial.bulk_len {
            Some(len) => len,
            None => {
                let Some(line) = length_line(buf, limits)? else {
                    if buf.len() > limits.max_inline_bytes {
                        return Err(RespError::TooBigBulkCount);
                    }
                    return Ok(false);
                };
                match buf.first() {
                    Some(b'$') => {}
                    Some(&other) => return Err(RespError::ExpectedDollar(other as char)),
                    None => return Ok(false),
                }
                let len = string_to_i64(&buf[1..line])
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n <= limits.max_bulk_bytes)
                    .ok_or(RespError::InvalidBulkLength)?;
                if partial.bytes.saturating_add(len) > limits.max_request_bytes {
                    return Err(RespError::RequestTooBig {
                        max: limits.max_request_bytes,
                    });
                }
                buf.advance(line + 2);
                partial.bulk_len = Some(len);
                len
            }
        };
        if buf.len() < len + 2 {
            return Ok(false);
        }
        // Small arguments are copied out, so the read buffer stays the sole owner of its memory
        // and is reused for the next read instead of being reallocated; large ones are split off
        // without a copy.
        let arg = if len <= COPY_ARG_MAX_BYTES {
            let arg = Bytes::copy_from_slice(&buf[..len]);
            buf.advance(len);
            arg
        } else {
            buf.split_to(len).freeze()
        };
        buf.advance(2);
        partial.args.push(arg);
        partial.bytes += len;
        partial.bulk_len = None;
        partial.remaining -= 1;
    }
    Ok(true)
}

/// Redis's `string2ll`: an optional `-`, then digits without leading zeros (except `0`
/// itself), fitting an `i64`; nothing else (no `+`, no spaces).
pub fn string_to_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        value = if negative {
            value.checked_mul(10)?.checked_sub(digit)?
        } else {
            value.checked_mul(10)?.checked_add(digit)?
        };
    }
    Some(value)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline command line into arguments like Redis's `sdssplitargs`.
///
/// ```
/// use limedb_resp::split_args;
/// let args = split_args(br#"SET "a b" 'it\'s' "\x41\n""#).unwrap();
/// assert_eq!(args, vec!["SET", "a b", "it's", "A\n"]);
/// assert!(split_args(br#"GET "open"#).is_err());
/// ```
pub fn split_args(line: &[u8]) -> Result<Vec<Bytes>, RespError> {
    // Redis splits a C string: a NUL byte ends the line.
    let line = line.split(|&b| b == 0).next().unwrap_or_default();
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while line.get(p).is_some_and(|&b| is_space(b)) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = line.get(p).copied();
            let next = line.get(p + 1).copied();
            if in_double {
                let Some(c) = c else {
                    return Err(RespError::UnbalancedQuotes);
                };
                let hex = (
                    next,
                    line.get(p + 2).copied().and_then(hex_value),
                    line.get(p + 3).copied().and_then(hex_value),
                );
                if let (b'\\', (Some(b'x'), Some(hi), Some(lo))) = (c, hex) {
                    current.push(hi * 16 + lo);
                    p += 3;
                } else if let (b'\\', Some(escaped)) = (c, next) {
                    p += 1;
                    current.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if next.is_some_and(|n| !is_space(n)) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else {
                    current.push(c);
                }
            } else if in_single {
                let Some(c) = c else {
                    return Err(RespError::UnbalancedQuotes);
                };
                if c == b'\\' && next == Some(b'\'') {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if next.is_some_and(|n| !is_space(n)) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(c) => current.push(c),
                }
            }
            p += 1;
        }
        args.push(Bytes::from(current));
    }
}
