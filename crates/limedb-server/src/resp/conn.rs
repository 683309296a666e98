//! One RESP connection's state and the commands it answers itself: PING, ECHO, HELLO, SELECT,
//! QUIT, COMMAND, CLIENT, INFO, CONFIG, AUTH, ACL, and the transaction commands MULTI, EXEC,
//! DISCARD, WATCH and UNWATCH. Every other command goes to the node's [`Backend`], once the
//! client has authenticated (when the node asks for credentials) and only within its user's
//! permission ([`super::access`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use limedb_resp::{string_to_i64, Protocol, Value};

use super::access;
use super::glob::glob_match;
use super::table::{lookup, Route, COMMANDS};
use super::{arity_error, unknown_command, Backend, Fail, Reply, RespStats};
use crate::auth::{Identity, Users};

/// The version LimeDB reports as `redis_version`: the Redis release whose commands and
/// replies it follows.
pub const REDIS_VERSION: &str = "7.0.15";

/// Most pipelined data commands executed as one stretch ([`Backend::execute_many`]).
pub const MAX_STRETCH: usize = 64;

/// A connection's first stretch: the stretch doubles from here up to [`MAX_STRETCH`] while its
/// replies stay small, and shrinks so that they take about [`FLUSH_BYTES`](super::FLUSH_BYTES)
/// when they are large (see [`Session::handle_batch`]).
pub const FIRST_STRETCH: usize = 4;

/// Harmless answers for `CONFIG GET`.
const CONFIG: &[(&str, &str)] = &[
    ("appendonly", "no"),
    ("databases", "1"),
    ("maxmemory", "0"),
    ("maxmemory-policy", "noeviction"),
    ("save", ""),
    ("timeout", "0"),
];

/// A connection's state.
pub struct Session<B> {
    id: u64,
    peer: SocketAddr,
    backend: B,
    stats: Arc<RespStats>,
    protocol: Protocol,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    /// Commands queued since MULTI; `None` outside a transaction.
    queued: Option<Vec<Vec<Bytes>>>,
    /// A command queued since MULTI was refused: EXEC must abort.
    queue_failed: bool,
    /// Keys watched, with their versions when watched.
    watched: Vec<(Bytes, u64)>,
    /// A WATCH could not take a version (an unreachable shard): EXEC must abort.
    watch_failed: bool,
    /// Most commands of the next stretch: see [`FIRST_STRETCH`].
    stretch: usize,
    /// The users of the node, and who this client proved to be (`None`: not yet, and the node
    /// asks for credentials).
    users: Arc<Users>,
    identity: Option<Identity>,
}

impl<B: Backend> Session<B> {
    /// A fresh connection's state.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        backend: B,
        stats: Arc<RespStats>,
        users: Arc<Users>,
    ) -> Self {
        Session {
            identity: users.anonymous(),
            users,
            id,
            peer,
            backend,
            stats,
            protocol: Protocol::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            queued: None,
            queue_failed: false,
            watched: Vec::new(),
            watch_failed: false,
            stretch: FIRST_STRETCH,
        }
    }

    /// The protocol the connection speaks now.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Executes requests from the front of a pipeline, in order, appending their replies to
    /// `out`, until `batch` is empty or `out` holds [`FLUSH_BYTES`](super::FLUSH_BYTES) (the
    /// caller writes it and calls again with the rest); `true` when the connection must close
    /// (QUIT; requests after it are not executed). Consecutive data commands outside MULTI go to
    /// [`Backend::execute_many`] together, a *stretch* at a time. The replies of a stretch are
    /// all held at once before they are written, so its length adapts to their size: it starts
    /// at [`FIRST_STRETCH`] commands, doubles (up to [`MAX_STRETCH`]) after a stretch whose
    /// replies took less than [`FLUSH_BYTES`](super::FLUSH_BYTES), and after one whose replies
    /// took more shrinks to the count that would have fit (at least one). A pipeline of GETs of
    /// large values thus holds about one flush of replies, not [`MAX_STRETCH`] large values.
    pub async fn handle_batch(
        &mut self,
        batch: &mut VecDeque<Vec<Bytes>>,
        out: &mut BytesMut,
    ) -> bool {
        let mut run: Vec<Vec<Bytes>> = Vec::new();
        while out.len() < super::FLUSH_BYTES {
            let Some(args) = batch.pop_front() else {
                break;
            };
            let is_data = self.queued.is_none()
                && args.first().and_then(|n| lookup(n)).is_some_and(|spec| {
                    spec.route != Route::Connection
                        && spec.arity_ok(args.len())
                        && access::allowed(self.identity.as_ref(), spec, &args)
                });
            if is_data {
                run.push(args);
                if run.len() >= self.stretch {
                    self.flush_run(&mut run, out).await;
                }
                continue;
            }
            self.flush_run(&mut run, out).await;
            if self.handle(args, out).await {
                return true;
            }
        }
        self.flush_run(&mut run, out).await;
        false
    }

    async fn flush_run(&mut self, run: &mut Vec<Vec<Bytes>>, out: &mut BytesMut) {
        let (commands, before) = (run.len(), out.len());
        match commands {
            0 => {}
            1 => {
                if let Some(args) = run.pop() {
                    self.backend.execute(args).await.encode(self.protocol, out);
                }
            }
            _ => {
                for reply in self.backend.execute_many(std::mem::take(run)).await {
                    reply.encode(self.protocol, out);
                }
            }
        }
        if commands > 0 {
            self.stretch = next_stretch(self.stretch, commands, out.len() - before);
        }
    }

    /// Executes one request and appends its reply to `out`; `true` when the connection must
    /// close after the reply (QUIT).
    pub async fn handle(&mut self, args: Vec<Bytes>, out: &mut BytesMut) -> bool {
        let quit = args
            .first()
            .is_some_and(|n| n.eq_ignore_ascii_case(b"quit"));
        let reply = match self.dispatch(args).await {
            Ok(v) => v,
            Err(Fail(text)) => Value::error(text),
        };
        reply.encode(self.protocol, out);
        quit
    }

    async fn dispatch(&mut self, args: Vec<Bytes>) -> Reply {
        let Some(name) = args.first() else {
            return Err(Fail::new("ERR empty command"));
        };
        let Some(spec) = lookup(name) else {
            if self.queued.is_some() {
                self.queue_failed = true;
            }
            return Err(unknown_command(&args));
        };
        if !spec.arity_ok(args.len()) {
            if self.queued.is_some() {
                self.queue_failed = true;
            }
            return Err(arity_error(spec.name));
        }
        if !access::runs_unauthenticated(spec.name) {
            let Some(identity) = &self.identity else {
                return Err(Fail::new(access::NOAUTH));
            };
            if !access::allowed(Some(identity), spec, &args) {
                if self.queued.is_some() {
                    self.queue_failed = true;
                }
                return Err(access::no_permission(spec));
            }
        }
        if let Some(queue) = self.queued.as_mut() {
            match spec.name {
                "exec" | "discard" | "multi" | "watch" | "quit" | "reset" => {}
                // Who the connection is changes only outside a transaction.
                "auth" | "hello" | "acl" => {
                    self.queue_failed = true;
                    return Err(Fail::new(format!(
                        "ERR {} inside MULTI is not supported by LimeDB",
                        spec.name.to_uppercase()
                    )));
                }
                _ => {
                    if matches!(spec.route, Route::Keyspace) && spec.is_write() {
                        self.queue_failed = true;
                        return Err(Fail::new(format!(
                            "ERR {} inside MULTI is not supported by LimeDB",
                            spec.name.to_uppercase()
                        )));
                    }
                    queue.push(args);
                    return Ok(Value::Simple("QUEUED".into()));
                }
            }
        }
        match spec.name {
            "ping" => Ok(match args.get(1) {
                None => Value::Simple("PONG".into()),
                Some(msg) if args.len() == 2 => Value::Bulk(msg.clone()),
                Some(_) => return Err(arity_error("ping")),
            }),
            "echo" => Ok(Value::Bulk(args[1].clone())),
            "quit" => Ok(Value::ok()),
            "select" => match string_to_i64(&args[1]) {
                Some(0) => Ok(Value::ok()),
                Some(_) => Err(Fail::new("ERR DB index is out of range")),
                None => Err(Fail::new("ERR value is not an integer or out of range")),
            },
            "hello" => self.hello(&args).await,
            "auth" => {
                if let Some(identity) = access::auth(&self.users, &args).await? {
                    self.identity = Some(identity);
                }
                Ok(Value::ok())
            }
            "acl" => access::acl(&self.users, self.identity.as_ref(), &args),
            "client" => self.client(&args),
            "command" => command(&args),
            "config" => config(&args),
            "info" => self.info(&args).await,
            "multi" => {
                if self.queued.is_some() {
                    return Err(Fail::new("ERR MULTI calls can not be nested"));
                }
                self.queued = Some(Vec::new());
                self.queue_failed = false;
                Ok(Value::ok())
            }
            "discard" => {
                if self.queued.take().is_none() {
                    return Err(Fail::new("ERR DISCARD without MULTI"));
                }
                self.unwatch();
                Ok(Value::ok())
            }
            "exec" => {
                let Some(commands) = self.queued.take() else {
                    return Err(Fail::new("ERR EXEC without MULTI"));
                };
                let failed = std::mem::take(&mut self.queue_failed);
                let watch_failed = self.watch_failed;
                let watched = std::mem::take(&mut self.watched);
                self.unwatch();
                if failed {
                    return Err(Fail::new(
                        "EXECABORT Transaction discarded because of previous errors.",
                    ));
                }
                if watch_failed {
                    return Ok(Value::NullArray);
                }
                Ok(self.backend.transaction(commands, watched).await)
            }
            "watch" => {
                if self.queued.is_some() {
                    return Err(Fail::new("ERR WATCH inside MULTI is not allowed"));
                }
                let keys: Vec<Bytes> = args[1..].to_vec();
                match self.backend.watch(keys.clone()).await {
                    Ok(versions) => {
                        for (key, version) in keys.into_iter().zip(versions) {
                            if !self.watched.iter().any(|(k, _)| *k == key) {
                                self.watched.push((key, version));
                            }
                        }
                        Ok(Value::ok())
                    }
                    Err(e) => {
                        self.watch_failed = true;
                        Err(e)
                    }
                }
            }
            "unwatch" => {
                self.unwatch();
                Ok(Value::ok())
            }
            _ => Ok(self.backend.execute(args).await),
        }
    }

    fn unwatch(&mut self) {
        self.watched.clear();
        self.watch_failed = false;
    }

    async fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut protocol = self.protocol;
        if let Some(version) = args.get(1) {
            protocol = match string_to_i64(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return Err(Fail::new("NOPROTO unsupported protocol version")),
                None => {
                    return Err(Fail::new(
                        "ERR Protocol version is not an integer or out of range",
                    ))
                }
            };
        }
        let mut i = 2;
        let mut name = None;
        let mut credentials = None;
        while let Some(opt) = args.get(i) {
            match &opt.to_ascii_uppercase()[..] {
                b"AUTH" if args.len() > i + 2 => {
                    credentials = Some((&args[i + 1], &args[i + 2]));
                    i += 3;
                }
                b"SETNAME" if args.len() > i + 1 => {
                    name = args.get(i + 1).cloned();
                    i += 2;
                }
                _ => {
                    return Err(Fail::new(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(opt)
                    )))
                }
            }
        }
        match credentials {
            Some((user, password)) => {
                if let Some(identity) = access::hello_auth(&self.users, user, password).await? {
                    self.identity = Some(identity);
                }
            }
            None if self.identity.is_none() => return Err(Fail::new(access::HELLO_NOAUTH)),
            None => {}
        }
        if name.is_some() {
            self.name = name;
        }
        self.protocol = protocol;
        let proto = if protocol == Protocol::Resp3 { 3 } else { 2 };
        Ok(Value::Map(vec![
            (Value::bulk("server"), Value::bulk("redis")),
            (Value::bulk("version"), Value::bulk(REDIS_VERSION)),
            (Value::bulk("proto"), Value::Integer(proto)),
            (Value::bulk("id"), Value::Integer(self.id as i64)),
            (Value::bulk("mode"), Value::bulk("standalone")),
            (Value::bulk("role"), Value::bulk("master")),
            (Value::bulk("modules"), Value::Array(Vec::new())),
        ]))
    }

    fn client_info_line(&self) -> String {
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} addr={} laddr=127.0.0.1:{} fd=0 name={} age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user={} redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.peer,
            self.stats.port,
            text(&self.name),
            self.queued.as_ref().map_or(-1, |q| q.len() as i64),
            self.identity
                .as_ref()
                .map_or(crate::auth::DEFAULT_USER, |i| &*i.user),
            if self.protocol == Protocol::Resp3 { 3 } else { 2 },
            text(&self.lib_name),
            text(&self.lib_ver),
        )
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = args[1].to_ascii_uppercase();
        let wrong = || {
            arity_error(&format!(
                "client|{}",
                String::from_utf8_lossy(&sub).to_lowercase()
            ))
        };
        match &sub[..] {
            b"ID" if args.len() == 2 => Ok(Value::Integer(self.id as i64)),
            b"GETNAME" if args.len() == 2 => Ok(self.name.clone().map_or(Value::Null, Value::Bulk)),
            b"SETNAME" if args.len() == 3 => {
                let name = &args[2];
                if name.iter().any(|&b| b <= b' ' || b > b'~') {
                    return Err(Fail::new(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.name = (!name.is_empty()).then(|| name.clone());
                Ok(Value::ok())
            }
            b"SETINFO" if args.len() == 4 => {
                let value = args[3].clone();
                match &args[2].to_ascii_uppercase()[..] {
                    b"LIB-NAME" => self.lib_name = Some(value),
                    b"LIB-VER" => self.lib_ver = Some(value),
                    _ => {
                        return Err(Fail::new(format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(&args[2])
                        )))
                    }
                }
                Ok(Value::ok())
            }
            b"INFO" if args.len() == 2 => Ok(Value::Verbatim(
                "txt".into(),
                Bytes::from(self.client_info_line()),
            )),
            b"LIST" => Ok(Value::Verbatim(
                "txt".into(),
                Bytes::from(self.client_info_line()),
            )),
            b"ID" | b"GETNAME" | b"SETNAME" | b"SETINFO" | b"INFO" => Err(wrong()),
            _ => Err(Fail::new(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            ))),
        }
    }

    async fn info(&self, args: &[Bytes]) -> Reply {
        let wanted: Vec<String> = args[1..]
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_lowercase())
            .collect();
        let all = wanted.is_empty()
            || wanted
                .iter()
                .any(|w| w == "all" || w == "everything" || w == "default");
        let show = |s: &str| all || wanted.iter().any(|w| w == s);
        let mut text = String::new();
        if show("server") {
            text.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nlimedb_version:{}\r\nlimedb_role:{}\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                crate::SERVER_NAME,
                self.backend.role(),
                std::env::consts::OS,
                std::process::id(),
                self.stats.port,
                self.stats.started.elapsed().as_secs(),
            ));
        }
        if show("clients") {
            text.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\n\r\n",
                self.stats.connected.load(Ordering::Relaxed)
            ));
        }
        if show("stats") {
            text.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n",
                self.stats.accepted.load(Ordering::Relaxed),
                self.stats.commands.load(Ordering::Relaxed),
            ));
        }
        if show("replication") {
            text.push_str("# Replication\r\n");
            text.push_str(&self.backend.replication_info().await);
            text.push_str("\r\n");
        }
        if show("keyspace") {
            text.push_str("# Keyspace\r\n");
            if let Value::Integer(n) = self.backend.execute(vec![Bytes::from("DBSIZE")]).await {
                if n > 0 {
                    text.push_str(&format!("db0:keys={n},expires=0,avg_ttl=0\r\n"));
                }
            }
            text.push_str("\r\n");
        }
        let text = text.trim_end_matches("\r\n").to_string() + "\r\n";
        Ok(Value::Verbatim("txt".into(), Bytes::from(text)))
    }
}

/// The stretch after one of `commands` commands whose replies took `bytes` (see
/// [`Session::handle_batch`]).
fn next_stretch(stretch: usize, commands: usize, bytes: usize) -> usize {
    if bytes > super::FLUSH_BYTES {
        (commands * super::FLUSH_BYTES / bytes).clamp(1, MAX_STRETCH)
    } else if commands >= stretch {
        (stretch * 2).min(MAX_STRETCH)
    } else {
        stretch
    }
}

fn command_info(spec: &super::table::Spec) -> Value {
    Value::Array(vec![
        Value::bulk(spec.name),
        Value::Integer(i64::from(spec.arity)),
        Value::Set(
            spec.flags
                .iter()
                .map(|f| Value::Simple((*f).to_string()))
                .collect(),
        ),
        Value::Integer(i64::from(spec.first)),
        Value::Integer(i64::from(spec.last)),
        Value::Integer(i64::from(spec.step)),
        Value::Set(Vec::new()),
        Value::Set(Vec::new()),
        Value::Array(Vec::new()),
        Value::Array(Vec::new()),
    ])
}

fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Ok(Value::Array(COMMANDS.iter().map(command_info).collect()));
    };
    match &sub.to_ascii_uppercase()[..] {
        b"COUNT" => Ok(Value::Integer(COMMANDS.len() as i64)),
        b"INFO" => Ok(Value::Array(if args.len() == 2 {
            COMMANDS.iter().map(command_info).collect()
        } else {
            args[2..]
                .iter()
                .map(|n| lookup(n).map_or(Value::NullArray, command_info))
                .collect()
        })),
        b"DOCS" => {
            let specs: Vec<_> = if args.len() == 2 {
                COMMANDS.iter().collect()
            } else {
                args[2..].iter().filter_map(|n| lookup(n)).collect()
            };
            Ok(Value::Map(
                specs
                    .into_iter()
                    .map(|s| {
                        (
                            Value::bulk(s.name),
                            Value::Map(vec![
                                (Value::bulk("summary"), Value::bulk("")),
                                (Value::bulk("since"), Value::bulk("1.0.0")),
                                (Value::bulk("group"), Value::bulk("string")),
                            ]),
                        )
                    })
                    .collect(),
            ))
        }
        b"LIST" => Ok(Value::Array(
            COMMANDS.iter().map(|s| Value::bulk(s.name)).collect(),
        )),
        _ => Err(Fail::new(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        ))),
    }
}

fn config(args: &[Bytes]) -> Reply {
    match &args[1].to_ascii_uppercase()[..] {
        b"GET" if args.len() >= 3 => {
            let mut pairs = Vec::new();
            for (name, value) in CONFIG {
                if args[2..]
                    .iter()
                    .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
                {
                    pairs.push((Value::bulk(*name), Value::bulk(*value)));
                }
            }
            Ok(Value::Map(pairs))
        }
        b"SET" if args.len() >= 4 => Ok(Value::ok()),
        b"RESETSTAT" => Ok(Value::ok()),
        b"GET" | b"SET" => Err(arity_error(&format!(
            "config|{}",
            String::from_utf8_lossy(&args[1]).to_lowercase()
        ))),
        _ => Err(Fail::new(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::{next_stretch, FIRST_STRETCH, MAX_STRETCH};
    use crate::resp::FLUSH_BYTES;

    #[test]
    fn stretches_grow_with_small_replies_and_shrink_to_a_flush_of_large_ones() {
        // Small replies: 4, 8, 16, 32, 64, 64.
        let mut stretch = FIRST_STRETCH;
        let mut seen = vec![stretch];
        for _ in 0..5 {
            stretch = next_stretch(stretch, stretch, stretch * 10);
            seen.push(stretch);
        }
        assert_eq!(seen, [4, 8, 16, 32, 64, 64]);
        // A short stretch (the pipeline ended) does not grow it.
        assert_eq!(next_stretch(16, 3, 30), 16);
        // 64 replies of 512 KiB: the next stretch holds one; of 8 KiB: eight, a flush's worth.
        assert_eq!(next_stretch(MAX_STRETCH, 64, 64 * (512 << 10)), 1);
        assert_eq!(
            next_stretch(MAX_STRETCH, 64, 64 * (8 << 10)),
            FLUSH_BYTES / (8 << 10)
        );
        // Never zero, never above the maximum.
        assert_eq!(next_stretch(1, 1, 64 << 20), 1);
        assert_eq!(next_stretch(MAX_STRETCH, 1, FLUSH_BYTES + 1), 1);
    }
}
