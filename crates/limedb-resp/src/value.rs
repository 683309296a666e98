//! [`Value`]: one RESP value, and its encoding for RESP2 or RESP3.
//!
//! Wire forms (every line ends with `\r\n`):
//!
//! | value | RESP3 | RESP2 |
//! |---|---|---|
//! | `Simple("OK")` | `+OK` | same |
//! | `Error("ERR x")` | `-ERR x` | same |
//! | `Integer(5)` | `:5` | same |
//! | `Bulk(b"ab")` | `$2` `ab` | same |
//! | `Null` | `_` | `$-1` (the nil bulk string) |
//! | `NullArray` | `_` | `*-1` |
//! | `Array([..])` | `*n` then n values | same |
//! | `Map([(k, v)..])` | `%n` then 2n values | `*2n` then 2n values |
//! | `Set([..])` | `~n` then n values | `*n` then n values |
//! | `Double(1.5)` | `,1.5` | `$3` `1.5` |
//! | `Boolean(true)` | `#t` | `:1` |
//! | `Verbatim("txt", b"x")` | `=5` `txt:x` | `$1` `x` |

use bytes::{BufMut, Bytes, BytesMut};

/// Which protocol version a connection speaks; `HELLO 3` switches to [`Protocol::Resp3`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, the default of every new connection.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

/// One RESP value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A simple string (`+`): no `\r` or `\n` inside.
    Simple(String),
    /// An error (`-`): the text after the dash, e.g. `ERR syntax error`.
    Error(String),
    /// A signed 64-bit integer (`:`).
    Integer(i64),
    /// A binary-safe bulk string (`$`).
    Bulk(Bytes),
    /// The null value (RESP3 `_`; RESP2's nil bulk string `$-1`).
    Null,
    /// A null array (RESP3 `_`; RESP2 `*-1`), e.g. an aborted `EXEC`.
    NullArray,
    /// An array (`*`).
    Array(Vec<Value>),
    /// A map (RESP3 `%`; a flat array of keys and values in RESP2).
    Map(Vec<(Value, Value)>),
    /// A set (RESP3 `~`; an array in RESP2).
    Set(Vec<Value>),
    /// A double (RESP3 `,`; a bulk string in RESP2).
    Double(f64),
    /// A boolean (RESP3 `#`; the integer 1 or 0 in RESP2).
    Boolean(bool),
    /// A verbatim string with its three-letter format (RESP3 `=`; a bulk string in RESP2).
    Verbatim(String, Bytes),
}

impl Value {
    /// `+OK`.
    pub fn ok() -> Value {
        Value::Simple("OK".into())
    }

    /// A bulk string from anything byte-like.
    pub fn bulk(data: impl Into<Bytes>) -> Value {
        Value::Bulk(data.into())
    }

    /// An error reply; `text` is what follows the dash (it starts with an error code such as
    /// `ERR`). Line breaks are replaced by spaces, as Redis does, so the reply stays one line.
    pub fn error(text: impl Into<String>) -> Value {
        let mut text: String = text.into();
        if text.contains(['\r', '\n']) {
            text = text.replace(['\r', '\n'], " ");
        }
        Value::Error(text)
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Appends the wire form of `self` for `protocol` to `out`.
    ///
    /// ```
    /// use limedb_resp::{Protocol, Value};
    /// let mut out = bytes::BytesMut::new();
    /// Value::Null.encode(Protocol::Resp2, &mut out);
    /// Value::Null.encode(Protocol::Resp3, &mut out);
    /// assert_eq!(&out[..], b"$-1\r\n_\r\n");
    /// ```
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            Value::Error(s) => line(out, b'-', s.as_bytes()),
            Value::Integer(n) => {
                out.put_u8(b':');
                put_i64(out, *n);
                out.put_slice(b"\r\n");
            }
            Value::Bulk(data) => bulk(out, data),
            Value::Null if resp3 => out.put_slice(b"_\r\n"),
            Value::Null => out.put_slice(b"$-1\r\n"),
            Value::NullArray if resp3 => out.put_slice(b"_\r\n"),
            Value::NullArray => out.put_slice(b"*-1\r\n"),
            Value::Array(items) => {
                header(out, b'*', items.len());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Value::Set(items) => {
                header(out, if resp3 { b'~' } else { b'*' }, items.len());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Value::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len());
                } else {
                    header(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
            Value::Double(d) => {
                let text = format_double(*d);
                if resp3 {
                    line(out, b',', text.as_bytes());
                } else {
                    bulk(out, text.as_bytes());
                }
            }
            Value::Boolean(b) if resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Value::Boolean(b) => out.put_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
            Value::Verbatim(format, data) if resp3 => {
                header(out, b'=', format.len() + 1 + data.len());
                out.put_slice(format.as_bytes());
                out.put_u8(b':');
                out.put_slice(data);
                out.put_slice(b"\r\n");
            }
            Value::Verbatim(_, data) => bulk(out, data),
        }
    }

    /// The wire form of `self` as a fresh buffer.
    pub fn to_bytes(&self, protocol: Protocol) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(protocol, &mut out);
        out.freeze()
    }
}

/// Formats a double as Redis does in RESP3: `inf`, `-inf`, `nan`, otherwise the shortest
/// text that reads back as the same number.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{d}")
    }
}

fn line(out: &mut BytesMut, tag: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(tag);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, tag: u8, len: usize) {
    out.put_u8(tag);
    put_i64(out, i64::try_from(len).unwrap_or(i64::MAX));
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 16);
    header(out, b'$', data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends `n` in decimal.
fn put_i64(out: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}
