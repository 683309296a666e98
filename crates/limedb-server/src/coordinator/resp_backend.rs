//! The coordinator as a RESP [`Backend`]: every Redis command is executed by the shards, over
//! the internal protocol's `Command` and `Transaction` requests (see `docs/resp.md` for what is
//! atomic):
//!
//! - a single-key command goes to the shard that owns the key on the ring;
//! - `MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS` and `MSETNX` are split by shard, sent to the
//!   shards concurrently and their answers merged (MGET in the client's key order); there is no
//!   CROSSSLOT error. When every key is on one shard the whole command goes there unchanged and
//!   is atomic like on a shard. A part whose keys moved (the shard answered `WrongShard` and did
//!   nothing) is grouped again by the newer map and sent again, so a move shows as a pause;
//! - `RENAME`, `RENAMENX` and `COPY` across two shards read the source with its expiry and write
//!   version (`LIMEDB.DUMP`), write the destination, then (RENAME) delete the source only if its
//!   version did not move meanwhile;
//! - `DBSIZE`, `FLUSHDB`, `FLUSHALL` and `RANDOMKEY` ask every shard; `SCAN` and `KEYS` ask
//!   every shard at once and keep each key from the shard that owns it, so that they stay
//!   correct while ranges move (see [`super::listing`]); a `SCAN` cursor (kept in a
//!   [`Cursors`] table) is a position in key order across the cluster;
//! - `WATCH` takes versions from the owning shards; `EXEC` sends the whole block to the one shard
//!   that owns every key it names, where it runs atomically, and refuses with a clear error
//!   (executing nothing) when the keys span shards.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use limedb_proto::{Request, Response};
use limedb_resp::{decode_value, Value, ValueLimits};
use tokio::task::JoinSet;

use std::time::Instant;

use super::group::ShardGroup;
use super::CoordinatorNode;
use crate::resp::cursor::parse_scan;
use crate::resp::keys::random_below;
use crate::resp::table::{lookup, Route};
use crate::resp::{arity_error, unknown_command, Backend, Fail};

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(n) => Some(*n),
        _ => None,
    }
}

/// A shard's RESP reply, decoded.
fn decode_reply(link: &ShardGroup, bytes: &[u8]) -> Value {
    let mut buf = BytesMut::from(bytes);
    match decode_value(&mut buf, &ValueLimits::default()) {
        Ok(Some(v)) if buf.is_empty() => v,
        _ => Value::error(format!("ERR shard {} sent a malformed reply", link.id())),
    }
}

/// Whether `reply` is [`try_again`]'s: the shard did nothing because the keys moved.
pub(super) fn is_moved(reply: &Value) -> bool {
    matches!(reply, Value::Error(e) if e.starts_with(TRY_AGAIN))
}

/// How [`try_again`]'s answer starts (Redis Cluster's error for keys being moved).
const TRY_AGAIN: &str = "TRYAGAIN ";

/// The answer to a request whose keys moved while it was routed (nothing was done).
fn try_again(link: &ShardGroup, ring_epoch: u64) -> Value {
    Value::error(format!(
        "{TRY_AGAIN}shard {} no longer owns these keys (ring epoch {ring_epoch}); the cluster is moving them, retry",
        link.id()
    ))
}

fn bad_reply(what: &str) -> Value {
    Value::error(format!("ERR unexpected reply from a shard to {what}"))
}

impl CoordinatorNode {
    /// The shard index (position in the routes' groups, stable) owning `key`.
    fn shard_index(&self, key: &[u8]) -> Option<usize> {
        let routes = &self.inner.routes;
        routes.index_of(routes.owner(key))
    }

    /// Sends one request to shard `index` and decodes its reply. A `WrongShard` answer (keys
    /// moved) makes the coordinator follow the cluster map; a `Pipeline` of single-key
    /// commands is then routed again command by command, anything else is answered
    /// `TRYAGAIN` (nothing was done), as Redis Cluster answers during resharding.
    async fn on_shard(&self, index: usize, request: Request) -> Value {
        let Some(link) = self.inner.routes.group(index) else {
            return Value::error("ERR internal error: no such shard");
        };
        let retry = match &request {
            Request::Pipeline { commands } => Some(commands.clone()),
            _ => None,
        };
        match Self::forward(&link, request).await {
            Ok(Response::Reply(bytes)) => decode_reply(&link, &bytes),
            Ok(Response::WrongShard { ring_epoch }) => {
                let deadline = Instant::now() + self.inner.shard_timeout;
                let followed = self.inner.routes.follow(ring_epoch, deadline).await;
                match retry {
                    Some(commands) if followed => {
                        let mut replies = Vec::with_capacity(commands.len());
                        for args in commands {
                            replies.push(self.one_key_command(args, deadline).await);
                        }
                        Value::Array(replies)
                    }
                    _ => try_again(&link, ring_epoch),
                }
            }
            Ok(_) => Value::error(format!("ERR shard {} sent an unexpected answer", link.id())),
            Err(e) => Value::error(format!("ERR {e}")),
        }
    }

    /// A command on one key: sent to the key's shard, and routed again after a `WrongShard`
    /// until `deadline`.
    async fn one_key_command(&self, args: Vec<Bytes>, deadline: Instant) -> Value {
        loop {
            let Some(index) = args.get(1).and_then(|k| self.shard_index(k)) else {
                return Value::error("ERR internal error: no shard owns the key");
            };
            let Some(link) = self.inner.routes.group(index) else {
                return Value::error("ERR internal error: no such shard");
            };
            let request = Request::Command { args: args.clone() };
            match Self::forward(&link, request).await {
                Ok(Response::Reply(bytes)) => return decode_reply(&link, &bytes),
                Ok(Response::WrongShard { ring_epoch }) => {
                    if !self.inner.routes.follow(ring_epoch, deadline).await {
                        return try_again(&link, ring_epoch);
                    }
                }
                Ok(_) => {
                    return Value::error(format!(
                        "ERR shard {} sent an unexpected answer",
                        link.id()
                    ))
                }
                Err(e) => return Value::error(format!("ERR {e}")),
            }
        }
    }

    async fn command_on(&self, index: usize, args: Vec<Bytes>) -> Value {
        self.on_shard(index, Request::Command { args }).await
    }

    /// Runs one command per shard concurrently; answers in the order given.
    pub(super) async fn fan_out(&self, calls: Vec<(usize, Vec<Bytes>)>) -> Vec<Value> {
        let mut tasks = JoinSet::new();
        for (i, (shard, args)) in calls.into_iter().enumerate() {
            let node = self.clone();
            tasks.spawn(async move { (i, node.command_on(shard, args).await) });
        }
        let mut out: Vec<Option<Value>> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, v)) = joined {
                if out.len() <= i {
                    out.resize(i + 1, None);
                }
                out[i] = Some(v);
            }
        }
        out.into_iter()
            .map(|v| v.unwrap_or_else(|| Value::error("ERR internal error: a shard call failed")))
            .collect()
    }

    /// The indices of the shards of the routing (not of a group retired by a removal).
    fn ring_indices(&self) -> Vec<usize> {
        let routes = &self.inner.routes;
        routes
            .state()
            .routing
            .shards()
            .into_iter()
            .filter_map(|shard| routes.index_of(shard))
            .collect()
    }

    /// Every shard of the routing, the same command; answers in [`Self::ring_indices`] order.
    async fn all_shards(&self, indices: &[usize], args: &[Bytes]) -> Result<Vec<Value>, Value> {
        let calls = indices.iter().map(|&i| (i, args.to_vec())).collect();
        let replies = self.fan_out(calls).await;
        if let Some(e) = replies.iter().find(|v| v.is_error()) {
            return Err(e.clone());
        }
        Ok(replies)
    }

    async fn route(&self, args: Vec<Bytes>) -> Value {
        let Some(name) = args.first() else {
            return Value::error("ERR empty command");
        };
        let Some(spec) = lookup(name) else {
            return Value::error(unknown_command(&args).0);
        };
        if !spec.arity_ok(args.len()) {
            return Value::error(arity_error(spec.name).0);
        }
        match spec.route {
            Route::OneKey => {
                let deadline = Instant::now() + self.inner.shard_timeout;
                self.one_key_command(args, deadline).await
            }
            Route::ManyKeys => self.many_keys(spec.name, args).await,
            Route::Keyspace => self.keyspace(spec.name, args).await,
            Route::Connection => {
                Value::error(format!("ERR '{}' is a connection command", spec.name))
            }
        }
    }

    /// Groups the keys at `positions` of `args` by shard.
    fn group(
        &self,
        args: &[Bytes],
        positions: impl IntoIterator<Item = usize>,
    ) -> Result<BTreeMap<usize, Vec<usize>>, Value> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for pos in positions {
            let shard = self
                .shard_index(&args[pos])
                .ok_or_else(|| Value::error("ERR internal error: no shard owns the key"))?;
            groups.entry(shard).or_default().push(pos);
        }
        Ok(groups)
    }

    async fn many_keys(&self, name: &str, args: Vec<Bytes>) -> Value {
        let width = if matches!(name, "mset" | "msetnx") {
            2
        } else {
            1
        };
        if width == 2 && args.len() % 2 != 1 {
            return Value::error(arity_error(name).0);
        }
        if matches!(name, "rename" | "renamenx" | "copy") {
            return self.two_keys(name, args).await;
        }
        let positions = (1..args.len()).step_by(width);
        if name == "msetnx" {
            return match self.group(&args, positions) {
                // One shard: the command as is (atomic there).
                Ok(groups) if groups.len() == 1 => {
                    self.one_key_command(args, self.deadline()).await
                }
                Ok(groups) => self.msetnx(&args, &groups).await,
                Err(e) => e,
            };
        }
        let answers = match self.per_shard(&args, positions.collect(), width).await {
            Ok(answers) => answers,
            Err(e) => return e,
        };
        match name {
            "mget" => {
                let mut out = vec![Value::Null; args.len() - 1];
                for (positions, reply) in answers {
                    let Value::Array(values) = reply else {
                        return bad_reply("MGET");
                    };
                    for (p, v) in positions.into_iter().zip(values) {
                        out[p - 1] = v;
                    }
                }
                Value::Array(out)
            }
            "mset" => Value::ok(),
            _ => {
                let mut total = 0;
                for (_, reply) in &answers {
                    match int(reply) {
                        Some(n) => total += n,
                        None => return bad_reply(name),
                    }
                }
                Value::Integer(total)
            }
        }
    }

    /// Runs command `args[0]` on the keys at `positions` (each with its `width` arguments),
    /// one sub-command per shard, concurrently: keys on one shard are one command there (the
    /// whole command, atomic, when every key is). A shard that answers `WrongShard` did
    /// nothing, so its keys are grouped again by the map it made the coordinator follow and
    /// sent again, until the shard timeout: clients see a pause during a move's cut-over, not
    /// an error. Returns each sub-command's positions with its reply, or the first error.
    async fn per_shard(
        &self,
        args: &[Bytes],
        mut pending: Vec<usize>,
        width: usize,
    ) -> Result<Vec<(Vec<usize>, Value)>, Value> {
        let deadline = self.deadline();
        let mut answers = Vec::new();
        while !pending.is_empty() {
            let groups = self.group(args, pending.drain(..))?;
            let calls: Vec<(usize, Vec<Bytes>)> = groups
                .iter()
                .map(|(&shard, positions)| {
                    let mut sub = vec![args[0].clone()];
                    for &p in positions {
                        sub.extend(args[p..p + width].iter().cloned());
                    }
                    (shard, sub)
                })
                .collect();
            let replies = self.fan_out(calls).await;
            for ((_, positions), reply) in groups.into_iter().zip(replies) {
                if is_moved(&reply) && Instant::now() < deadline {
                    pending.extend(positions);
                } else if reply.is_error() {
                    return Err(reply);
                } else {
                    answers.push((positions, reply));
                }
            }
            pending.sort_unstable();
        }
        Ok(answers)
    }

    /// When a request routed now must be answered by.
    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.shard_timeout
    }

    /// MSETNX over several shards: refuse if any key exists, otherwise set every group. Not
    /// atomic across shards (see `docs/resp.md`).
    async fn msetnx(&self, args: &[Bytes], groups: &BTreeMap<usize, Vec<usize>>) -> Value {
        let checks = groups
            .iter()
            .map(|(&shard, positions)| {
                let mut sub = vec![Bytes::from_static(b"EXISTS")];
                sub.extend(positions.iter().map(|&p| args[p].clone()));
                (shard, sub)
            })
            .collect();
        for reply in self.fan_out(checks).await {
            match int(&reply) {
                Some(0) => {}
                Some(_) => return Value::Integer(0),
                None if reply.is_error() => return reply,
                None => return bad_reply("EXISTS"),
            }
        }
        let sets = groups
            .iter()
            .map(|(&shard, positions)| {
                let mut sub = vec![Bytes::from_static(b"MSETNX")];
                for &p in positions {
                    sub.extend(args[p..p + 2].iter().cloned());
                }
                (shard, sub)
            })
            .collect();
        let mut all = 1;
        for reply in self.fan_out(sets).await {
            match int(&reply) {
                Some(1) => {}
                Some(_) => all = 0,
                None if reply.is_error() => return reply,
                None => return bad_reply("MSETNX"),
            }
        }
        Value::Integer(all)
    }

    /// RENAME, RENAMENX and COPY.
    async fn two_keys(&self, name: &str, args: Vec<Bytes>) -> Value {
        let (src, dst) = (args[1].clone(), args[2].clone());
        let (Some(from), Some(to)) = (self.shard_index(&src), self.shard_index(&dst)) else {
            return Value::error("ERR internal error: no shard owns the key");
        };
        if from == to {
            return self.command_on(from, args).await;
        }
        let mut replace = name == "rename";
        if name == "copy" {
            let mut i = 3;
            while let Some(opt) = args.get(i) {
                match &opt.to_ascii_uppercase()[..] {
                    b"REPLACE" => replace = true,
                    b"DB" if args.get(i + 1).is_some() => {
                        i += 1;
                        if args[i].as_ref() != b"0" {
                            return Value::error("ERR DB index is out of range");
                        }
                    }
                    _ => return Value::error("ERR syntax error"),
                }
                i += 1;
            }
        }
        let dump = self
            .command_on(from, vec![Bytes::from_static(b"LIMEDB.DUMP"), src.clone()])
            .await;
        let (data, expires_at, version) = match dump {
            Value::Array(items) => match &items[..] {
                [Value::Null, _, _] => {
                    return if name == "copy" {
                        Value::Integer(0)
                    } else {
                        Value::error("ERR no such key")
                    }
                }
                [Value::Bulk(data), Value::Integer(at), Value::Integer(v)] => {
                    (data.clone(), *at, *v as u64)
                }
                _ => return bad_reply("LIMEDB.DUMP"),
            },
            e if e.is_error() => return e,
            _ => return bad_reply("LIMEDB.DUMP"),
        };
        let mut set = vec![Bytes::from_static(b"SET"), dst, data];
        if expires_at >= 0 {
            set.push(Bytes::from_static(b"PXAT"));
            set.push(Bytes::from(expires_at.max(1).to_string()));
        }
        if !replace {
            set.push(Bytes::from_static(b"NX"));
        }
        match self.command_on(to, set).await {
            Value::Null => return Value::Integer(0),
            e if e.is_error() => return e,
            _ => {}
        }
        if name == "copy" {
            return Value::Integer(1);
        }
        let delete = Request::Transaction {
            commands: vec![vec![Bytes::from_static(b"DEL"), src]],
            watched: vec![(args[1].clone(), version)],
        };
        match self.on_shard(from, delete).await {
            Value::Array(_) => {
                if name == "rename" {
                    Value::ok()
                } else {
                    Value::Integer(1)
                }
            }
            Value::NullArray | Value::Null => Value::error(
                "ERR the source key changed during a cross-shard rename: the destination was written and the source kept",
            ),
            e => e,
        }
    }

    async fn keyspace(&self, name: &str, args: Vec<Bytes>) -> Value {
        match name {
            "scan" => self
                .scan(&args)
                .await
                .unwrap_or_else(|Fail(t)| Value::error(t)),
            "keys" => match args.get(1) {
                Some(pattern) => match self.keys_everywhere(pattern.clone()).await {
                    Ok(keys) => Value::Array(keys.into_iter().map(Value::Bulk).collect()),
                    Err(Fail(e)) => Value::error(e),
                },
                None => Value::error(arity_error("keys").0),
            },
            "randomkey" => {
                let indices = self.ring_indices();
                let dbsize = [Bytes::from_static(b"DBSIZE")];
                let sizes = match self.all_shards(&indices, &dbsize).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                let sizes: Vec<u64> = sizes
                    .iter()
                    .map(|v| int(v).unwrap_or(0).max(0) as u64)
                    .collect();
                let total: u64 = sizes.iter().sum();
                if total == 0 {
                    return Value::Null;
                }
                let mut pick = random_below(total);
                for (&i, size) in indices.iter().zip(&sizes) {
                    if pick < *size {
                        return self.command_on(i, args).await;
                    }
                    pick -= size;
                }
                Value::Null
            }
            _ => {
                let replies = match self.all_shards(&self.ring_indices(), &args).await {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                match name {
                    "dbsize" => Value::Integer(replies.iter().filter_map(int).sum()),
                    _ => Value::ok(),
                }
            }
        }
    }

    async fn scan(&self, args: &[Bytes]) -> Result<Value, Fail> {
        let scan = parse_scan(args)?;
        let start = self.inner.cursors.start(&scan)?;
        let (keys, next) = self
            .scan_step(start, scan.count, scan.pattern.clone())
            .await?;
        Ok(self.inner.cursors.reply(&scan, keys, next))
    }
}

impl CoordinatorNode {
    /// Sends each shard its part of a stretch of single-key commands, concurrently: one
    /// `Command` for a lone command, else one `Pipeline`, which the shard runs in order. Commands of different shards touch different keys, so their relative order does
    /// not matter; replies come back in the stretch's order.
    async fn run_single_key_stretch(&self, stretch: Vec<(usize, Vec<Bytes>)>) -> Vec<Value> {
        let n = stretch.len();
        let mut per_shard: BTreeMap<usize, (Vec<usize>, Vec<Vec<Bytes>>)> = BTreeMap::new();
        for (i, (shard, args)) in stretch.into_iter().enumerate() {
            let entry = per_shard.entry(shard).or_default();
            entry.0.push(i);
            entry.1.push(args);
        }
        let mut tasks = JoinSet::new();
        for (shard, (positions, mut commands)) in per_shard {
            let node = self.clone();
            tasks.spawn(async move {
                let replies = if commands.len() == 1 {
                    let args = commands.pop().unwrap_or_default();
                    vec![node.command_on(shard, args).await]
                } else {
                    let count = commands.len();
                    let request = Request::Pipeline { commands };
                    match node.on_shard(shard, request).await {
                        Value::Array(replies) if replies.len() == count => replies,
                        e if e.is_error() => vec![e; count],
                        _ => vec![bad_reply("a pipeline"); count],
                    }
                };
                (positions, replies)
            });
        }
        let mut out: Vec<Value> = vec![Value::error("ERR internal error: a shard call failed"); n];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((positions, replies)) = joined {
                for (p, reply) in positions.into_iter().zip(replies) {
                    if let Some(slot) = out.get_mut(p) {
                        *slot = reply;
                    }
                }
            }
        }
        out
    }
}

impl Backend for CoordinatorNode {
    async fn execute(&self, args: Vec<Bytes>) -> Value {
        self.route(args).await
    }

    async fn execute_many(&self, commands: Vec<Vec<Bytes>>) -> Vec<Value> {
        let mut out = Vec::with_capacity(commands.len());
        let mut stretch: Vec<(usize, Vec<Bytes>)> = Vec::new();
        for args in commands {
            let one_key = args
                .first()
                .and_then(|n| lookup(n))
                .is_some_and(|s| s.route == Route::OneKey && s.arity_ok(args.len()));
            let shard = if one_key {
                args.get(1).and_then(|k| self.shard_index(k))
            } else {
                None
            };
            match shard {
                Some(shard) => stretch.push((shard, args)),
                None => {
                    // Anything else is a barrier: what came before it finishes first.
                    if !stretch.is_empty() {
                        out.extend(
                            self.run_single_key_stretch(std::mem::take(&mut stretch))
                                .await,
                        );
                    }
                    out.push(self.route(args).await);
                }
            }
        }
        if !stretch.is_empty() {
            out.extend(self.run_single_key_stretch(stretch).await);
        }
        out
    }

    async fn watch(&self, keys: Vec<Bytes>) -> Result<Vec<u64>, Fail> {
        let mut versions = vec![0u64; keys.len()];
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let shard = self
                .shard_index(key)
                .ok_or_else(|| Fail::new("ERR internal error: no shard owns the key"))?;
            groups.entry(shard).or_default().push(i);
        }
        for (shard, positions) in groups {
            let mut call = vec![Bytes::from_static(b"LIMEDB.WATCH")];
            call.extend(positions.iter().map(|&i| keys[i].clone()));
            match self.command_on(shard, call).await {
                Value::Array(found) if found.len() == positions.len() => {
                    for (&i, v) in positions.iter().zip(found) {
                        versions[i] = int(&v).unwrap_or(-1) as u64;
                    }
                }
                Value::Error(e) => return Err(Fail(e)),
                _ => return Err(Fail::new("ERR unexpected reply from a shard to WATCH")),
            }
        }
        Ok(versions)
    }

    async fn transaction(&self, commands: Vec<Vec<Bytes>>, watched: Vec<(Bytes, u64)>) -> Value {
        let mut shards = std::collections::BTreeSet::new();
        for (key, _) in &watched {
            shards.extend(self.shard_index(key));
        }
        for args in &commands {
            let Some(spec) = args.first().and_then(|n| lookup(n)) else {
                continue;
            };
            if spec.route == Route::Keyspace && self.inner.routes.members().len() > 1 {
                return Value::error(format!(
                    "ERR {} inside MULTI needs every shard; LimeDB runs a transaction on one shard only, so nothing was executed",
                    spec.name.to_uppercase()
                ));
            }
            for i in spec.key_positions(args.len()) {
                if let Some(key) = args.get(i) {
                    shards.extend(self.shard_index(key));
                }
            }
        }
        let shards: Vec<usize> = shards.into_iter().collect();
        match shards[..] {
            // No keys (PING, ECHO, an empty block): any shard will do.
            [] => {
                self.on_shard(0, Request::Transaction { commands, watched })
                    .await
            }
            [one] => {
                self.on_shard(one, Request::Transaction { commands, watched })
                    .await
            }
            _ => {
                let ids: Vec<String> = shards
                    .iter()
                    .filter_map(|&i| self.inner.routes.group(i))
                    .map(|l| l.id().to_string())
                    .collect();
                Value::error(format!(
                    "ERR this transaction's keys live on shards {}; LimeDB runs MULTI/EXEC atomically only when every key is on one shard, so nothing was executed",
                    ids.join(", ")
                ))
            }
        }
    }

    fn role(&self) -> &'static str {
        "coordinator"
    }

    async fn replication_info(&self) -> String {
        // A coordinator holds no data: it is a master with no replicas of its own; each shard's
        // group follows, as `limedb_shardN` fields.
        let mut out = String::from("role:master\r\nconnected_slaves:0\r\n");
        for group in self.inner.routes.members() {
            let view = group.view();
            let leader = view
                .members
                .iter()
                .find(|(id, _, _)| Some(*id) == view.leader)
                .map_or("none".to_string(), |(_, url, _)| url.clone());
            out.push_str(&format!(
                "limedb_shard{}:leader={leader},replicas={},replicas_up={},healthy={}\r\n",
                group.id(),
                view.members.len(),
                view.members.iter().filter(|(_, _, s)| s.up).count(),
                u8::from(group.healthy()),
            ));
        }
        out
    }
}
