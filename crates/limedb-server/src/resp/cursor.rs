//! `SCAN` cursors. A cursor is a number the client hands back; LimeDB keeps what it stands for
//! (the key to continue from: on a shard, in its keys; on a coordinator, in key order across
//! the cluster) in a bounded table, so that a scan walks keys in
//! order and returns every key that exists for the whole scan, even if others are added or
//! removed meanwhile. The table holds at most [`MAX_CURSORS`] cursors; the oldest are
//! forgotten first, and a forgotten or made-up cursor is answered `ERR invalid cursor`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use limedb_resp::Value;

/// Cursors remembered at once.
pub const MAX_CURSORS: usize = 65_536;

/// The table of live cursors.
#[derive(Debug, Default)]
pub struct Cursors {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    live: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

impl Cursors {
    /// Remembers `position` (the first key not yet returned) and returns its cursor (never 0).
    pub fn save(&self, position: Bytes) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Cursor numbers start high and random-looking so that a client's made-up small number
        // is unlikely to hit a live cursor.
        inner.next = inner.next.wrapping_add(1);
        let cursor = limedb_cluster::key_hash(&inner.next.to_le_bytes()) | 1 << 62;
        inner.live.insert(cursor, position);
        inner.order.push_back(cursor);
        while inner.order.len() > MAX_CURSORS {
            if let Some(old) = inner.order.pop_front() {
                inner.live.remove(&old);
            }
        }
        cursor
    }

    /// The position of `cursor` (`Some(None)` for 0, the start); `None` if unknown.
    pub fn find(&self, cursor: u64) -> Option<Option<Bytes>> {
        if cursor == 0 {
            return Some(None);
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.live.get(&cursor).cloned().map(Some)
    }

    /// Where the scan of `scan.cursor` starts; `ERR invalid cursor` for one not known.
    pub fn start(&self, scan: &ScanArgs) -> Result<Option<Bytes>, super::Fail> {
        self.find(scan.cursor)
            .ok_or_else(|| super::Fail::new("ERR invalid cursor"))
    }

    /// `SCAN`'s reply to `scan`: the cursor to continue from `next` (0 at the end) and `keys`
    /// (none when `TYPE` names another type than string).
    pub fn reply(&self, scan: &ScanArgs, keys: Vec<Bytes>, next: Option<Bytes>) -> Value {
        let cursor = next.map_or(0, |key| self.save(key));
        let keys = if scan.type_matches { keys } else { Vec::new() };
        Value::Array(vec![
            Value::bulk(cursor.to_string()),
            Value::Array(keys.into_iter().map(Value::Bulk).collect()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_remembered_and_the_oldest_forgotten() {
        let cursors = Cursors::default();
        let first = cursors.save(Bytes::from_static(b"k"));
        assert_ne!(first, 0);
        assert_eq!(
            cursors.find(first).flatten(),
            Some(Bytes::from_static(b"k"))
        );
        assert_eq!(cursors.find(0), Some(None));
        assert_eq!(cursors.find(12345), None);
        for _ in 0..MAX_CURSORS {
            cursors.save(Bytes::new());
        }
        assert_eq!(cursors.find(first), None);
    }
}

/// A parsed `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanArgs {
    /// The cursor.
    pub cursor: u64,
    /// The `MATCH` pattern.
    pub pattern: Option<Bytes>,
    /// The `COUNT` hint (10 by default).
    pub count: usize,
    /// `false` when `TYPE` names a type other than `string` (nothing can match).
    pub type_matches: bool,
}

/// Parses `SCAN`'s arguments with Redis's errors.
pub fn parse_scan(args: &[Bytes]) -> Result<ScanArgs, super::Fail> {
    use super::Fail;
    let cursor = args
        .get(1)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| Fail::new("ERR invalid cursor"))?;
    let mut scan = ScanArgs {
        cursor,
        pattern: None,
        count: 10,
        type_matches: true,
    };
    let mut i = 2;
    while let Some(opt) = args.get(i) {
        let value = args
            .get(i + 1)
            .ok_or_else(|| Fail::new("ERR syntax error"))?;
        match &opt.to_ascii_uppercase()[..] {
            b"MATCH" => scan.pattern = Some(value.clone()),
            b"COUNT" => {
                let n = limedb_resp::string_to_i64(value)
                    .ok_or_else(|| Fail::new("ERR value is not an integer or out of range"))?;
                if n < 1 {
                    return Err(Fail::new("ERR syntax error"));
                }
                scan.count = n as usize;
            }
            b"TYPE" => scan.type_matches = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(Fail::new("ERR syntax error")),
        }
        i += 2;
    }
    Ok(scan)
}
