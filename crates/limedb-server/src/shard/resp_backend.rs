//! The shard as a RESP [`Backend`]: data commands run on its own storage ([`Keyspace`]),
//! `SCAN` walks its keys in order with cursors from its own table, and a transaction takes the
//! locks of every key it names (watched keys included), checks the watched versions and runs
//! its commands while holding them: atomic with respect to every other write on the shard.

use bytes::Bytes;
use limedb_resp::Value;

use super::ShardNode;
use crate::resp::cursor::parse_scan;
use crate::resp::keys::Keyspace;
use crate::resp::table::lookup;
use crate::resp::{Backend, Fail};

impl ShardNode {
    fn keyspace(&self) -> Keyspace<'_> {
        Keyspace {
            storage: &self.inner.storage,
            limits: self.inner.limits,
        }
    }

    /// Executes one data command of the RESP protocol on this shard, if the shard owns its keys
    /// (a RESP error naming the owner otherwise).
    pub async fn execute_command(&self, args: Vec<Bytes>) -> Value {
        let mut keys = Vec::new();
        command_keys(&args, &mut keys);
        match self.admit(&keys).await {
            Ok(_admitted) => self.run_command(args).await,
            Err(e) => refused(&e),
        }
    }

    /// Executes one data command (the caller checked ownership: a coordinator's `Command`
    /// request, or [`ShardNode::execute_command`]).
    pub(crate) async fn run_command(&self, args: Vec<Bytes>) -> Value {
        let is_scan = args
            .first()
            .is_some_and(|n| n.eq_ignore_ascii_case(b"scan"));
        if !is_scan {
            return self.keyspace().execute(&args, None).await;
        }
        match self.scan(&args).await {
            Ok(v) => v,
            Err(Fail(text)) => Value::error(text),
        }
    }

    async fn scan(&self, args: &[Bytes]) -> Result<Value, Fail> {
        let scan = parse_scan(args)?;
        let start = self.inner.cursors.start(&scan)?;
        let (keys, next) = self
            .keyspace()
            .scan_from(start, scan.count, scan.pattern.as_deref())
            .await?;
        Ok(self.inner.cursors.reply(&scan, keys, next))
    }

    /// Executes `commands` in order (a pipeline or a transaction's block), batching stretches of
    /// plain GETs and SETs ([`Keyspace::execute_many`]); SCANs run on their own.
    async fn run_commands(
        &self,
        commands: &[Vec<Bytes>],
        held: Option<&crate::shard::storage::KeyLocks<'_>>,
    ) -> Vec<Value> {
        let is_scan = |c: &Vec<Bytes>| c.first().is_some_and(|n| n.eq_ignore_ascii_case(b"scan"));
        let mut out = Vec::with_capacity(commands.len());
        let mut rest = commands;
        while !rest.is_empty() {
            let plain = rest.iter().take_while(|c| !is_scan(c)).count();
            let (now, later) = rest.split_at(plain);
            out.extend(self.keyspace().execute_many(now, held).await);
            rest = later;
            if let Some((scan, later)) = rest.split_first() {
                out.push(
                    self.scan(scan)
                        .await
                        .unwrap_or_else(|Fail(text)| Value::error(text)),
                );
                rest = later;
            }
        }
        out
    }

    /// Runs a coordinator's `Pipeline` request: the commands in order, not as a unit (the
    /// caller checked ownership).
    pub(crate) async fn run_pipeline(&self, commands: Vec<Vec<Bytes>>) -> Value {
        Value::Array(self.run_commands(&commands, None).await)
    }

    /// Runs a `MULTI`/`EXEC` block atomically (see the module docs), if the shard owns every
    /// key it names.
    pub async fn execute_transaction(
        &self,
        commands: Vec<Vec<Bytes>>,
        watched: Vec<(Bytes, u64)>,
    ) -> Value {
        match self.admit(&transaction_keys(&commands, &watched)).await {
            Ok(_admitted) => self.run_transaction(commands, watched).await,
            Err(e) => refused(&e),
        }
    }

    /// Runs a `MULTI`/`EXEC` block atomically (the caller checked ownership).
    pub(crate) async fn run_transaction(
        &self,
        commands: Vec<Vec<Bytes>>,
        watched: Vec<(Bytes, u64)>,
    ) -> Value {
        let storage = &self.inner.storage;
        let locks = storage.lock(&transaction_keys(&commands, &watched)).await;
        if watched
            .iter()
            .any(|(key, version)| storage.stripe_version(key) != *version)
        {
            return Value::NullArray;
        }
        let keyspace = self.keyspace();
        let mut replies = Vec::with_capacity(commands.len());
        for args in &commands {
            let reply = if args
                .first()
                .is_some_and(|n| n.eq_ignore_ascii_case(b"scan"))
            {
                self.scan(args)
                    .await
                    .unwrap_or_else(|Fail(text)| Value::error(text))
            } else {
                keyspace.execute(args, Some(&locks)).await
            };
            replies.push(reply);
        }
        Value::Array(replies)
    }
}

impl Backend for ShardNode {
    async fn execute(&self, args: Vec<Bytes>) -> Value {
        self.execute_command(args).await
    }

    async fn execute_many(&self, commands: Vec<Vec<Bytes>>) -> Vec<Value> {
        match self.admit(&commands_keys(&commands)).await {
            Ok(_admitted) => self.run_commands(&commands, None).await,
            Err(e) => vec![refused(&e); commands.len()],
        }
    }

    async fn watch(&self, keys: Vec<Bytes>) -> Result<Vec<u64>, Fail> {
        Ok(keys
            .iter()
            .map(|k| self.inner.storage.stripe_version(k))
            .collect())
    }

    async fn transaction(&self, commands: Vec<Vec<Bytes>>, watched: Vec<(Bytes, u64)>) -> Value {
        self.execute_transaction(commands, watched).await
    }

    fn role(&self) -> &'static str {
        "shard"
    }

    async fn replication_info(&self) -> String {
        let Some(replica) = self.inner.storage.replica() else {
            return "role:master\r\nconnected_slaves:0\r\nlimedb_replicated:0\r\n".into();
        };
        replication_lines(&replica.status(), replica.committed_index().await)
    }
}

/// INFO replication in Redis's words: a leader is `master` with its followers as `slaveN`, a
/// follower is `slave` of its leader; LimeDB's own figures follow as `limedb_*` fields.
fn replication_lines(status: &limedb_raft::ReplicaStatus, committed: Option<u64>) -> String {
    use std::fmt::Write;
    let host_port = |url: &str| {
        let authority = url.strip_prefix("http://").unwrap_or(url);
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.to_string()),
            None => (authority.to_string(), "0".to_string()),
        }
    };
    let applied = status.applied_index.unwrap_or(0);
    let last = status.last_log_index.unwrap_or(0);
    let mut out = String::new();
    if status.role == limedb_raft::Role::Leader {
        let followers: Vec<_> = status
            .members
            .iter()
            .filter(|m| m.id != status.id)
            .collect();
        let _ = write!(
            out,
            "role:master\r\nconnected_slaves:{}\r\n",
            followers.len()
        );
        for (i, m) in followers.iter().enumerate() {
            let (ip, port) = host_port(&m.url);
            let offset = m.matched.unwrap_or(0);
            let state = if m.voter { "online" } else { "learner" };
            let _ = write!(
                out,
                "slave{i}:ip={ip},port={port},state={state},offset={offset},lag={}\r\n",
                last.saturating_sub(offset)
            );
        }
    } else {
        out.push_str("role:slave\r\n");
        match &status.leader {
            Some((_, url)) => {
                let (ip, port) = host_port(url);
                let _ = write!(
                    out,
                    "master_host:{ip}\r\nmaster_port:{port}\r\nmaster_link_status:up\r\n"
                );
            }
            None => out.push_str("master_host:\r\nmaster_port:0\r\nmaster_link_status:down\r\n"),
        }
        let _ = write!(out, "slave_repl_offset:{applied}\r\n");
    }
    let _ = write!(
        out,
        "master_repl_offset:{applied}\r\nlimedb_replicated:1\r\nlimedb_replica_id:{}\r\nlimedb_raft_role:{}\r\nlimedb_raft_term:{}\r\nlimedb_raft_commit_index:{}\r\nlimedb_raft_applied_index:{applied}\r\nlimedb_raft_last_log_index:{last}\r\n",
        status.id,
        status.role.as_str(),
        status.term,
        committed.unwrap_or(0),
    );
    out
}

/// Appends the keys `args` names (by the command table) to `out`.
pub(crate) fn command_keys(args: &[Bytes], out: &mut Vec<Bytes>) {
    if let Some(spec) = args.first().and_then(|n| lookup(n)) {
        out.extend(
            spec.key_positions(args.len())
                .into_iter()
                .filter_map(|i| args.get(i).cloned()),
        );
    }
}

/// The keys every command of `commands` names.
pub(crate) fn commands_keys(commands: &[Vec<Bytes>]) -> Vec<Bytes> {
    let mut keys = Vec::new();
    for args in commands {
        command_keys(args, &mut keys);
    }
    keys
}

/// The keys a `MULTI`/`EXEC` block names, watched ones included.
pub(crate) fn transaction_keys(commands: &[Vec<Bytes>], watched: &[(Bytes, u64)]) -> Vec<Bytes> {
    let mut keys: Vec<Bytes> = watched.iter().map(|(k, _)| k.clone()).collect();
    keys.extend(commands_keys(commands));
    keys
}

/// A refused command as a RESP error (`WRONGSHARD` for a key this shard does not own).
fn refused(e: &crate::error::ApiError) -> Value {
    match e {
        crate::error::ApiError::WrongShard { .. } => Value::error(format!("WRONGSHARD {e}")),
        other => Value::error(format!("ERR {other}")),
    }
}
