//! The data commands as a shard executes them against its [`Storage`], with Redis's semantics
//! and error texts. Strings are the only type, so every value is a string.
//!
//! Every command that writes takes the stripe locks of all its keys ([`Storage::lock`]) for the
//! whole read-modify-write unless the caller already holds them (a `MULTI`/`EXEC` block passes
//! its locks in), which makes `INCR`, `APPEND`, `SET NX`, `RENAME`, `MSETNX` and the rest atomic
//! against every other write on the shard, whichever API it came from. Reads take no lock.
//!
//! Besides Redis's commands a shard understands a few internal ones that only a coordinator
//! sends (names starting `limedb.`): `LIMEDB.SCAN start count [pattern]` lists keys from a key
//! on, `LIMEDB.WATCH key...` returns the write versions that `WATCH` remembers, and
//! `LIMEDB.DUMP key` returns a key's value, absolute expiry (ms, -1 for none) and write version
//! together (a cross-shard `RENAME`/`COPY` reads its source with it).

use bytes::{Bytes, BytesMut};
use limedb_resp::{string_to_i64, Value};
use limedb_storage::now_ms;

use super::glob::glob_match;
use super::table::{lookup, Route};
use super::{arity_error, unknown_command, Fail, Reply};
use crate::config::Limits;
use crate::error::ApiError;
use crate::shard::storage::{KeyLocks, Storage};

/// Redis's `proto-max-bulk-len`: the largest string `APPEND` and `SETRANGE` may build.
const MAX_STRING_BYTES: usize = 512 << 20;
/// Keys read per engine call while walking the keyspace (KEYS, FLUSHDB).
const WALK_CHUNK: usize = 1024;

/// What a shard needs to execute data commands.
pub struct Keyspace<'a> {
    /// The shard's storage.
    pub storage: &'a Storage,
    /// Key and value size limits.
    pub limits: Limits,
}

fn not_integer() -> Fail {
    Fail::new("ERR value is not an integer or out of range")
}

fn syntax() -> Fail {
    Fail::new("ERR syntax error")
}

fn int_arg(arg: &[u8]) -> Result<i64, Fail> {
    string_to_i64(arg).ok_or_else(not_integer)
}

fn float_arg(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty()
        || text.starts_with(char::is_whitespace)
        || text.ends_with(char::is_whitespace)
    {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("nan") {
        return None;
    }
    text.parse().ok()
}

fn upper(arg: &[u8]) -> Vec<u8> {
    arg.to_ascii_uppercase()
}

/// An expiry option's absolute time in ms; `cmd` names the command in the error.
fn expire_at(unit: &[u8], arg: &[u8], cmd: &str, now: u64) -> Result<u64, Fail> {
    let n = int_arg(arg)?;
    let invalid = || Fail::new(format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let ms = match unit {
        b"EX" | b"EXAT" => n.checked_mul(1000).ok_or_else(invalid)?,
        _ => n,
    };
    let at = match unit {
        b"EX" | b"PX" => (now as i64).checked_add(ms).ok_or_else(invalid)?,
        _ => ms,
    };
    Ok(at as u64)
}

fn bulk_or_null(v: Option<limedb_storage::Value>) -> Value {
    v.map_or(Value::Null, |v| Value::Bulk(v.data))
}

impl Keyspace<'_> {
    /// The longest string APPEND and SETRANGE may build: Redis's 512 MiB, or the node's value
    /// limit if that is smaller.
    fn max_string_bytes(&self) -> usize {
        MAX_STRING_BYTES.min(self.limits.max_value_bytes)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Fail> {
        if key.len() > self.limits.max_key_bytes {
            return Err(Fail::new(format!(
                "ERR key is {} bytes, over the limit of {} bytes",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    fn check_value(&self, len: usize) -> Result<(), Fail> {
        if len > self.limits.max_value_bytes {
            return Err(Fail::new(format!(
                "ERR value is {len} bytes, over the limit of {} bytes",
                self.limits.max_value_bytes
            )));
        }
        Ok(())
    }

    async fn get(&self, key: &Bytes) -> Result<Option<limedb_storage::Value>, Fail> {
        Ok(self.storage.get(key.clone()).await?)
    }

    async fn put(
        &self,
        locks: &KeyLocks<'_>,
        key: &Bytes,
        data: Bytes,
        expires_at_ms: Option<u64>,
    ) -> Result<(), Fail> {
        self.check_key(key)?;
        self.check_value(data.len())?;
        if key.is_empty() {
            // The engine has no empty key; Redis allows it, we refuse it clearly.
            return Err(Fail::new("ERR empty keys are not supported by LimeDB"));
        }
        Ok(self
            .storage
            .put_locked(locks, key.clone(), data, expires_at_ms)
            .await?)
    }

    async fn del(&self, locks: &KeyLocks<'_>, key: &Bytes) -> Result<bool, Fail> {
        if key.is_empty() {
            return Ok(false);
        }
        Ok(self.storage.delete_locked(locks, key.clone()).await?)
    }

    /// Executes `commands` in order, as [`Keyspace::execute`] would one by one, but runs each
    /// stretch of plain `GET k` with one storage hand-off and each stretch of plain `SET k v`
    /// as one locked batch of writes (one writer-thread round and one log append): how a
    /// pipeline or a transaction of simple commands stays cheap. `held` as for `execute`.
    pub async fn execute_many(
        &self,
        commands: &[Vec<Bytes>],
        held: Option<&KeyLocks<'_>>,
    ) -> Vec<Value> {
        let mut out = Vec::with_capacity(commands.len());
        let mut i = 0;
        while i < commands.len() {
            let gets = commands[i..]
                .iter()
                .take_while(|c| is_plain(c, b"get", 2))
                .count();
            if gets > 1 {
                let keys: Vec<Bytes> = commands[i..i + gets].iter().map(|c| c[1].clone()).collect();
                match self.storage.get_many(keys).await {
                    Ok(values) => out.extend(values.into_iter().map(bulk_or_null)),
                    Err(e) => out.extend((0..gets).map(|_| Value::error(Fail::from(e.clone()).0))),
                }
                i += gets;
                continue;
            }
            let sets = commands[i..]
                .iter()
                .take_while(|c| {
                    is_plain(c, b"set", 3)
                        && !c[1].is_empty()
                        && self.check_key(&c[1]).is_ok()
                        && self.check_value(c[2].len()).is_ok()
                })
                .count();
            if sets > 1 {
                let run = &commands[i..i + sets];
                let own;
                let locks = match held {
                    Some(l) => l,
                    None => {
                        let keys: Vec<&Bytes> = run.iter().map(|c| &c[1]).collect();
                        own = self.storage.lock(&keys).await;
                        &own
                    }
                };
                let items = run
                    .iter()
                    .map(|c| (c[1].clone(), c[2].clone(), None))
                    .collect();
                match self.storage.put_many_locked(locks, items).await {
                    Ok(()) => out.extend((0..sets).map(|_| Value::ok())),
                    Err(e) => out.extend((0..sets).map(|_| Value::error(Fail::from(e.clone()).0))),
                }
                i += sets;
                continue;
            }
            out.push(self.execute(&commands[i], held).await);
            i += 1;
        }
        out
    }

    /// Executes one data command; `held` are locks a transaction already holds (covering every
    /// key the command writes).
    pub async fn execute(&self, args: &[Bytes], held: Option<&KeyLocks<'_>>) -> Value {
        match self.run(args, held).await {
            Ok(v) => v,
            Err(Fail(text)) => Value::error(text),
        }
    }

    async fn run(&self, args: &[Bytes], held: Option<&KeyLocks<'_>>) -> Reply {
        let Some(name) = args.first() else {
            return Ok(Value::error("ERR empty command"));
        };
        if name.len() > 7 && name[..7].eq_ignore_ascii_case(b"LIMEDB.") {
            if held.is_some() {
                // DUMP takes a key lock itself: under a transaction's locks it could wait on
                // one this task holds.
                return Err(Fail::new(
                    "ERR LimeDB internal commands cannot run in a transaction",
                ));
            }
            return self.internal(&upper(name), args).await;
        }
        let Some(spec) = lookup(name) else {
            return Err(unknown_command(args));
        };
        if !spec.arity_ok(args.len()) {
            return Err(arity_error(spec.name));
        }
        match spec.name {
            // Harmless inside a forwarded transaction.
            "ping" if args.len() == 1 => return Ok(Value::Simple("PONG".into())),
            "ping" | "echo" if args.len() == 2 => return Ok(Value::Bulk(args[1].clone())),
            _ => {}
        }
        if spec.route == Route::Connection {
            return Err(Fail::new(format!(
                "ERR '{}' is a connection command, not a data command",
                spec.name
            )));
        }
        // Lock every key of a write, unless a transaction holds the locks already.
        let own;
        let locks: Option<&KeyLocks<'_>> = match held {
            Some(l) => Some(l),
            None if spec.is_write() && spec.route != Route::Keyspace => {
                let keys: Vec<&Bytes> = spec
                    .key_positions(args.len())
                    .into_iter()
                    .filter_map(|i| args.get(i))
                    .collect();
                own = self.storage.lock(&keys).await;
                Some(&own)
            }
            None => None,
        };
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        let key = arg(1);
        let locked = || locks.ok_or_else(|| Fail::new("ERR internal error: write without locks"));
        let now = now_ms();
        match spec.name {
            "get" => Ok(bulk_or_null(self.get(&key).await?)),
            "set" => self.set(locked()?, args, now).await,
            "setnx" => {
                let locks = locked()?;
                if self.get(&key).await?.is_some() {
                    return Ok(Value::Integer(0));
                }
                self.put(locks, &key, arg(2), None).await?;
                Ok(Value::Integer(1))
            }
            "setex" | "psetex" => {
                let unit: &[u8] = if spec.name == "setex" { b"EX" } else { b"PX" };
                let at = expire_at(unit, &arg(2), spec.name, now)?;
                self.put(locked()?, &key, arg(3), Some(at)).await?;
                Ok(Value::ok())
            }
            "getset" => {
                let old = self.get(&key).await?;
                self.put(locked()?, &key, arg(2), None).await?;
                Ok(bulk_or_null(old))
            }
            "getdel" => {
                let old = self.get(&key).await?;
                if old.is_some() {
                    self.del(locked()?, &key).await?;
                }
                Ok(bulk_or_null(old))
            }
            "getex" => self.getex(locked()?, args, now).await,
            "mget" => {
                let values = self.storage.get_many(args[1..].to_vec()).await?;
                Ok(Value::Array(values.into_iter().map(bulk_or_null).collect()))
            }
            "mset" | "msetnx" => {
                if args.len() % 2 != 1 {
                    return Err(arity_error(spec.name));
                }
                let locks = locked()?;
                if spec.name == "msetnx" {
                    for pair in args[1..].chunks(2) {
                        if self.get(&pair[0]).await?.is_some() {
                            return Ok(Value::Integer(0));
                        }
                    }
                }
                for pair in args[1..].chunks(2) {
                    self.check_key(&pair[0])?;
                    self.check_value(pair[1].len())?;
                }
                for pair in args[1..].chunks(2) {
                    self.put(locks, &pair[0], pair[1].clone(), None).await?;
                }
                Ok(if spec.name == "mset" {
                    Value::ok()
                } else {
                    Value::Integer(1)
                })
            }
            "del" | "unlink" => {
                let locks = locked()?;
                let mut n = 0;
                for k in &args[1..] {
                    n += i64::from(self.del(locks, k).await?);
                }
                Ok(Value::Integer(n))
            }
            "exists" => {
                let values = self.storage.get_many(args[1..].to_vec()).await?;
                Ok(Value::Integer(values.iter().flatten().count() as i64))
            }
            "type" => Ok(Value::Simple(
                if self.get(&key).await?.is_some() {
                    "string"
                } else {
                    "none"
                }
                .into(),
            )),
            "expire" | "pexpire" | "expireat" | "pexpireat" => {
                self.expire(locked()?, spec.name, args, now).await
            }
            "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
                let Some(v) = self.get(&key).await? else {
                    return Ok(Value::Integer(-2));
                };
                let Some(at) = v.expires_at_ms else {
                    return Ok(Value::Integer(-1));
                };
                let left = at.saturating_sub(now) as i64;
                Ok(Value::Integer(match spec.name {
                    "ttl" => (left + 500) / 1000,
                    "pttl" => left,
                    "expiretime" => (at / 1000) as i64,
                    _ => at as i64,
                }))
            }
            "persist" => {
                let locks = locked()?;
                match self.get(&key).await? {
                    Some(v) if v.expires_at_ms.is_some() => {
                        self.put(locks, &key, v.data, None).await?;
                        Ok(Value::Integer(1))
                    }
                    _ => Ok(Value::Integer(0)),
                }
            }
            "incr" | "decr" | "incrby" | "decrby" => {
                let by = match spec.name {
                    "incr" => 1,
                    "decr" => -1,
                    "incrby" => int_arg(&arg(2))?,
                    _ => {
                        let n = int_arg(&arg(2))?;
                        n.checked_neg()
                            .ok_or_else(|| Fail::new("ERR decrement would overflow"))?
                    }
                };
                let locks = locked()?;
                let old = self.get(&key).await?;
                let (current, ttl) = match &old {
                    Some(v) => (
                        (v.data.len() <= 20)
                            .then(|| string_to_i64(&v.data))
                            .flatten()
                            .ok_or_else(not_integer)?,
                        v.expires_at_ms,
                    ),
                    None => (0, None),
                };
                let new = current
                    .checked_add(by)
                    .ok_or_else(|| Fail::new("ERR increment or decrement would overflow"))?;
                self.put(locks, &key, Bytes::from(new.to_string()), ttl)
                    .await?;
                Ok(Value::Integer(new))
            }
            "incrbyfloat" => {
                let by = float_arg(&arg(2))
                    .ok_or_else(|| Fail::new("ERR value is not a valid float"))?;
                let locks = locked()?;
                let old = self.get(&key).await?;
                let (current, ttl) = match &old {
                    Some(v) => (
                        float_arg(&v.data)
                            .ok_or_else(|| Fail::new("ERR value is not a valid float"))?,
                        v.expires_at_ms,
                    ),
                    None => (0.0, None),
                };
                let new = current + by;
                if !new.is_finite() {
                    return Err(Fail::new("ERR increment would produce NaN or Infinity"));
                }
                let text = Bytes::from(format_float(new));
                self.put(locks, &key, text.clone(), ttl).await?;
                Ok(Value::Bulk(text))
            }
            "append" => {
                let locks = locked()?;
                let old = self.get(&key).await?;
                let add = arg(2);
                let (mut data, ttl) = match old {
                    Some(v) => (BytesMut::from(&v.data[..]), v.expires_at_ms),
                    None => (BytesMut::new(), None),
                };
                if data.len() + add.len() > self.max_string_bytes() {
                    return Err(Fail::new(
                        "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                    ));
                }
                data.extend_from_slice(&add);
                let len = data.len();
                self.put(locks, &key, data.freeze(), ttl).await?;
                Ok(Value::Integer(len as i64))
            }
            "strlen" => Ok(Value::Integer(
                self.get(&key).await?.map_or(0, |v| v.data.len() as i64),
            )),
            "getrange" => {
                let (start, end) = (int_arg(&arg(2))?, int_arg(&arg(3))?);
                let data = self.get(&key).await?.map(|v| v.data).unwrap_or_default();
                Ok(Value::Bulk(range(&data, start, end)))
            }
            "setrange" => {
                let offset = int_arg(&arg(2))?;
                if offset < 0 {
                    return Err(Fail::new("ERR offset is out of range"));
                }
                let offset = offset as usize;
                let add = arg(3);
                let locks = locked()?;
                let old = self.get(&key).await?;
                if add.is_empty() {
                    return Ok(Value::Integer(old.map_or(0, |v| v.data.len() as i64)));
                }
                // Checked before the string is grown, so a far offset cannot allocate much.
                if offset.saturating_add(add.len()) > self.max_string_bytes() {
                    return Err(Fail::new(
                        "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                    ));
                }
                let (mut data, ttl) = match old {
                    Some(v) => (BytesMut::from(&v.data[..]), v.expires_at_ms),
                    None => (BytesMut::new(), None),
                };
                if data.len() < offset + add.len() {
                    data.resize(offset + add.len(), 0);
                }
                data[offset..offset + add.len()].copy_from_slice(&add);
                let len = data.len();
                self.put(locks, &key, data.freeze(), ttl).await?;
                Ok(Value::Integer(len as i64))
            }
            "rename" | "renamenx" => {
                let locks = locked()?;
                let dst = arg(2);
                let Some(v) = self.get(&key).await? else {
                    return Err(Fail::new("ERR no such key"));
                };
                if key == dst {
                    return Ok(if spec.name == "rename" {
                        Value::ok()
                    } else {
                        Value::Integer(0)
                    });
                }
                if spec.name == "renamenx" && self.get(&dst).await?.is_some() {
                    return Ok(Value::Integer(0));
                }
                self.put(locks, &dst, v.data, v.expires_at_ms).await?;
                self.del(locks, &key).await?;
                Ok(if spec.name == "rename" {
                    Value::ok()
                } else {
                    Value::Integer(1)
                })
            }
            "copy" => {
                let dst = arg(2);
                let mut replace = false;
                let mut i = 3;
                while let Some(opt) = args.get(i) {
                    match &upper(opt)[..] {
                        b"REPLACE" => replace = true,
                        b"DB" if args.get(i + 1).is_some() => {
                            i += 1;
                            if int_arg(&arg(i))? != 0 {
                                return Err(Fail::new("ERR DB index is out of range"));
                            }
                        }
                        _ => return Err(syntax()),
                    }
                    i += 1;
                }
                if key == dst {
                    return Err(Fail::new("ERR source and destination objects are the same"));
                }
                let locks = locked()?;
                let Some(v) = self.get(&key).await? else {
                    return Ok(Value::Integer(0));
                };
                if !replace && self.get(&dst).await?.is_some() {
                    return Ok(Value::Integer(0));
                }
                self.put(locks, &dst, v.data, v.expires_at_ms).await?;
                Ok(Value::Integer(1))
            }
            "dbsize" => Ok(Value::Integer(self.storage.key_count().await? as i64)),
            "keys" => {
                let mut out = Vec::new();
                let mut start: Option<Bytes> = None;
                loop {
                    let (keys, next) = self.scan_from(start, WALK_CHUNK, Some(&key)).await?;
                    out.extend(keys.into_iter().map(Value::Bulk));
                    match next {
                        Some(n) => start = Some(n),
                        None => break,
                    }
                }
                Ok(Value::Array(out))
            }
            "flushdb" | "flushall" => {
                if held.is_some() {
                    // Each delete takes its key's lock, which this transaction may hold.
                    return Err(Fail::new(format!(
                        "ERR {} inside MULTI is not supported by LimeDB",
                        spec.name.to_uppercase()
                    )));
                }
                match args.get(1).map(|a| upper(a)) {
                    None => {}
                    Some(a) if a == b"ASYNC" || a == b"SYNC" => {}
                    Some(_) => return Err(syntax()),
                }
                self.flush().await?;
                Ok(Value::ok())
            }
            "randomkey" => {
                let total = self.storage.key_count().await?;
                if total == 0 {
                    return Ok(Value::Null);
                }
                let page = self.storage.page(random_below(total), 1).await?;
                Ok(page
                    .entries
                    .into_iter()
                    .next()
                    .map_or(Value::Null, |(k, _)| Value::Bulk(k)))
            }
            other => Err(Fail::new(format!(
                "ERR '{other}' cannot be executed by a shard directly"
            ))),
        }
    }

    /// Deletes every key (taking each key's lock for its delete).
    async fn flush(&self) -> Result<(), Fail> {
        loop {
            let (keys, _) = self.scan_from(None, WALK_CHUNK, None).await?;
            if keys.is_empty() {
                return Ok(());
            }
            for k in keys {
                self.storage.delete(k).await?;
            }
        }
    }

    /// Up to `count` live keys `>= start` matching `pattern`, and where the next call starts
    /// (`None`: the end was reached).
    pub async fn scan_from(
        &self,
        start: Option<Bytes>,
        count: usize,
        pattern: Option<&[u8]>,
    ) -> Result<(Vec<Bytes>, Option<Bytes>), Fail> {
        let count = count.clamp(1, 100_000);
        let entries = self.storage.scan(start, count + 1).await?;
        let next = entries.get(count).map(|(k, _)| k.clone());
        let keys = entries
            .into_iter()
            .take(count)
            .map(|(k, _)| k)
            .filter(|k| pattern.is_none_or(|p| glob_match(p, k)))
            .collect();
        Ok((keys, next))
    }

    async fn internal(&self, cmd: &[u8], args: &[Bytes]) -> Reply {
        match cmd {
            b"LIMEDB.SCAN" if args.len() >= 3 => {
                let start = args.get(1).filter(|s| !s.is_empty()).cloned();
                let count = int_arg(&args[2])?.max(1) as usize;
                let pattern = args.get(3).map(|p| &p[..]);
                let (keys, next) = self.scan_from(start, count, pattern).await?;
                Ok(Value::Array(vec![
                    next.map_or(Value::Null, Value::Bulk),
                    Value::Array(keys.into_iter().map(Value::Bulk).collect()),
                ]))
            }
            b"LIMEDB.DUMP" if args.len() == 2 => {
                // Value, absolute expiry and write version, read together under the key's lock.
                let key = &args[1];
                let _locks = self.storage.lock(&[key]).await;
                let version = self.storage.stripe_version(key) as i64;
                Ok(match self.get(key).await? {
                    None => Value::Array(vec![
                        Value::Null,
                        Value::Integer(-1),
                        Value::Integer(version),
                    ]),
                    Some(v) => Value::Array(vec![
                        Value::Bulk(v.data),
                        Value::Integer(v.expires_at_ms.map_or(-1, |t| t as i64)),
                        Value::Integer(version),
                    ]),
                })
            }
            b"LIMEDB.WATCH" => Ok(Value::Array(
                args[1..]
                    .iter()
                    .map(|k| Value::Integer(self.storage.stripe_version(k) as i64))
                    .collect(),
            )),
            _ => Err(unknown_command(args)),
        }
    }

    async fn set(&self, locks: &KeyLocks<'_>, args: &[Bytes], now: u64) -> Reply {
        let key = &args[1];
        let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
        let mut expiry: Option<u64> = None;
        let mut i = 3;
        while let Some(opt) = args.get(i) {
            let opt = upper(opt);
            match &opt[..] {
                b"NX" if !xx => nx = true,
                b"XX" if !nx => xx = true,
                b"GET" => get = true,
                b"KEEPTTL" if expiry.is_none() => keepttl = true,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if !keepttl && expiry.is_none() => {
                    let Some(value) = args.get(i + 1) else {
                        return Err(syntax());
                    };
                    expiry = Some(expire_at(&opt, value, "set", now)?);
                    i += 1;
                }
                _ => return Err(syntax()),
            }
            i += 1;
        }
        // Only NX, XX, GET and KEEPTTL need the old value; a plain SET does not read.
        let old = if nx || xx || get || keepttl {
            self.get(key).await?
        } else {
            None
        };
        let reply_old = || {
            if get {
                bulk_or_null(old.clone())
            } else {
                Value::Null
            }
        };
        if (nx && old.is_some()) || (xx && old.is_none()) {
            return Ok(reply_old());
        }
        let ttl = if keepttl {
            old.as_ref().and_then(|v| v.expires_at_ms)
        } else {
            expiry
        };
        self.put(locks, key, args[2].clone(), ttl).await?;
        Ok(if get { reply_old() } else { Value::ok() })
    }

    async fn getex(&self, locks: &KeyLocks<'_>, args: &[Bytes], now: u64) -> Reply {
        let key = &args[1];
        let mut change: Option<Option<u64>> = None;
        let mut i = 2;
        while let Some(opt) = args.get(i) {
            let opt = upper(opt);
            match &opt[..] {
                b"PERSIST" if change.is_none() => change = Some(None),
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if change.is_none() => {
                    let Some(value) = args.get(i + 1) else {
                        return Err(syntax());
                    };
                    change = Some(Some(expire_at(&opt, value, "getex", now)?));
                    i += 1;
                }
                _ => return Err(syntax()),
            }
            i += 1;
        }
        let Some(v) = self.get(key).await? else {
            return Ok(Value::Null);
        };
        match change {
            None => {}
            Some(Some(at)) if at <= now => {
                self.del(locks, key).await?;
            }
            Some(ttl) if ttl != v.expires_at_ms => {
                self.put(locks, key, v.data.clone(), ttl).await?;
            }
            Some(_) => {}
        }
        Ok(Value::Bulk(v.data))
    }

    async fn expire(&self, locks: &KeyLocks<'_>, cmd: &str, args: &[Bytes], now: u64) -> Reply {
        let key = &args[1];
        let n = int_arg(&args[2])?;
        let invalid = || Fail::new(format!("ERR invalid expire time in '{cmd}' command"));
        let ms = match cmd {
            "expire" | "expireat" => n.checked_mul(1000).ok_or_else(invalid)?,
            _ => n,
        };
        let at = match cmd {
            "expire" | "pexpire" => ms.checked_add(now as i64).ok_or_else(invalid)?,
            _ => ms,
        };
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for opt in &args[3..] {
            match &upper(opt)[..] {
                b"NX" => nx = true,
                b"XX" => xx = true,
                b"GT" => gt = true,
                b"LT" => lt = true,
                _ => {
                    return Err(Fail::new(format!(
                        "ERR Unsupported option {}",
                        String::from_utf8_lossy(opt)
                    )))
                }
            }
        }
        if nx && (xx || gt || lt) {
            return Err(Fail::new(
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if gt && lt {
            return Err(Fail::new(
                "ERR GT and LT options at the same time are not compatible",
            ));
        }
        let Some(v) = self.get(key).await? else {
            return Ok(Value::Integer(0));
        };
        let current = v.expires_at_ms;
        let applies = match current {
            None => !(xx || gt),
            Some(c) => !nx && (!gt || at > c as i64) && (!lt || at < c as i64),
        };
        if !applies {
            return Ok(Value::Integer(0));
        }
        if at <= now as i64 {
            self.del(locks, key).await?;
        } else {
            self.put(locks, key, v.data, Some(at as u64)).await?;
        }
        Ok(Value::Integer(1))
    }
}

/// Whether `args` is command `name` (lower case) with exactly `argc` arguments.
fn is_plain(args: &[Bytes], name: &[u8], argc: usize) -> bool {
    args.len() == argc && args.first().is_some_and(|n| n.eq_ignore_ascii_case(name))
}

/// Formats an `INCRBYFLOAT` result as Redis does: plain decimal notation, no exponent, no
/// trailing zeros.
fn format_float(f: f64) -> String {
    let text = format!("{f}");
    if text.contains('e') {
        format!("{f:.17}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        text
    }
}

/// `GETRANGE`'s inclusive range with negative indexes counted from the end.
fn range(data: &Bytes, start: i64, end: i64) -> Bytes {
    let len = data.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (fix(start), fix(end).min(len - 1));
    if start > end || start >= len {
        return Bytes::new();
    }
    data.slice(start as usize..=end as usize)
}

/// A number in `0..n` (n > 0), random enough to pick a key.
pub fn random_below(n: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = nanos ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    limedb_cluster::key_hash(&seed.to_le_bytes()) % n.max(1)
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Fail(format!("ERR {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_matches_redis_examples() {
        let s = Bytes::from_static(b"This is a string");
        assert_eq!(range(&s, 0, 3), Bytes::from_static(b"This"));
        assert_eq!(range(&s, -3, -1), Bytes::from_static(b"ing"));
        assert_eq!(range(&s, 0, -1), s);
        assert_eq!(range(&s, 10, 100), Bytes::from_static(b"string"));
        assert_eq!(range(&s, 5, 3), Bytes::new());
        assert_eq!(range(&Bytes::new(), 0, -1), Bytes::new());
    }

    #[test]
    fn floats_print_like_redis() {
        assert_eq!(format_float(10.6), "10.6");
        assert_eq!(format_float(5000.0), "5000");
        assert_eq!(format_float(-0.5), "-0.5");
        assert!(float_arg(b" 1").is_none());
        assert!(float_arg(b"nan").is_none());
        assert_eq!(float_arg(b"5.0e3"), Some(5000.0));
    }

    #[test]
    fn expiry_options_reject_bad_times() {
        assert!(expire_at(b"EX", b"0", "set", 1000).is_err());
        assert!(expire_at(b"EX", b"x", "set", 1000).is_err());
        assert!(expire_at(b"EX", b"9223372036854775807", "set", 1000).is_err());
        assert_eq!(expire_at(b"PX", b"5", "set", 1000).ok(), Some(1005));
        assert_eq!(expire_at(b"EXAT", b"5", "set", 1000).ok(), Some(5000));
    }
}
