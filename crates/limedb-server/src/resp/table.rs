//! The command table: every command LimeDB's RESP listeners know, with Redis's arity, flags and
//! key positions (as `COMMAND INFO` reports them), and how a coordinator routes it.

/// How a command is executed, and by whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answered by the connection itself (PING, HELLO, CLIENT, MULTI, ...).
    Connection,
    /// Touches the one key at argument 1: run on the shard that owns it.
    OneKey,
    /// Touches several keys (positions from `first`, `last`, `step`): split across shards.
    ManyKeys,
    /// Concerns the whole keyspace (DBSIZE, KEYS, SCAN, FLUSHDB, RANDOMKEY): every shard.
    Keyspace,
}

/// One command.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: `n > 0` exactly n arguments (name included), `n < 0` at least `-n`.
    pub arity: i32,
    /// `COMMAND INFO` flags.
    pub flags: &'static [&'static str],
    /// First key position (0: no keys).
    pub first: i32,
    /// Last key position (-1: the last argument).
    pub last: i32,
    /// Step between keys.
    pub step: i32,
    /// How it is executed.
    pub route: Route,
}

const W: &[&str] = &["write"];
const WD: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const F: &[&str] = &["fast"];
const L: &[&str] = &["loading", "stale", "fast"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $route:ident) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first: $first,
            last: $last,
            step: $step,
            route: Route::$route,
        }
    };
}

/// Every command, sorted by name.
pub const COMMANDS: &[Spec] = &[
    spec!(
        "acl",
        -2,
        &["admin", "noscript", "loading", "stale"],
        0,
        0,
        0,
        Connection
    ),
    spec!("append", 3, WD, 1, 1, 1, OneKey),
    spec!(
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
        Connection
    ),
    spec!("client", -2, L, 0, 0, 0, Connection),
    spec!("command", -1, L, 0, 0, 0, Connection),
    spec!("config", -2, L, 0, 0, 0, Connection),
    spec!("copy", -3, WD, 1, 2, 1, ManyKeys),
    spec!("dbsize", 1, R, 0, 0, 0, Keyspace),
    spec!("decr", 2, WD, 1, 1, 1, OneKey),
    spec!("decrby", 3, WD, 1, 1, 1, OneKey),
    spec!("del", -2, W, 1, -1, 1, ManyKeys),
    spec!("discard", 1, F, 0, 0, 0, Connection),
    spec!("echo", 2, F, 0, 0, 0, Connection),
    spec!(
        "exec",
        1,
        &["noscript", "loading", "stale"],
        0,
        0,
        0,
        Connection
    ),
    spec!("exists", -2, R, 1, -1, 1, ManyKeys),
    spec!("expire", -3, W, 1, 1, 1, OneKey),
    spec!("expireat", -3, W, 1, 1, 1, OneKey),
    spec!("expiretime", 2, R, 1, 1, 1, OneKey),
    spec!("flushall", -1, W, 0, 0, 0, Keyspace),
    spec!("flushdb", -1, W, 0, 0, 0, Keyspace),
    spec!("get", 2, R, 1, 1, 1, OneKey),
    spec!("getdel", 2, W, 1, 1, 1, OneKey),
    spec!("getex", -2, W, 1, 1, 1, OneKey),
    spec!("getrange", 4, &["readonly"], 1, 1, 1, OneKey),
    spec!("getset", 3, WD, 1, 1, 1, OneKey),
    spec!("hello", -1, L, 0, 0, 0, Connection),
    spec!("incr", 2, WD, 1, 1, 1, OneKey),
    spec!("incrby", 3, WD, 1, 1, 1, OneKey),
    spec!("incrbyfloat", 3, WD, 1, 1, 1, OneKey),
    spec!("info", -1, L, 0, 0, 0, Connection),
    spec!("keys", 2, &["readonly"], 0, 0, 0, Keyspace),
    spec!("mget", -2, R, 1, -1, 1, ManyKeys),
    spec!("mset", -3, WD, 1, -1, 2, ManyKeys),
    spec!("msetnx", -3, WD, 1, -1, 2, ManyKeys),
    spec!("multi", 1, F, 0, 0, 0, Connection),
    spec!("persist", 2, &["write", "fast"], 1, 1, 1, OneKey),
    spec!("pexpire", -3, W, 1, 1, 1, OneKey),
    spec!("pexpireat", -3, W, 1, 1, 1, OneKey),
    spec!("pexpiretime", 2, R, 1, 1, 1, OneKey),
    spec!("ping", -1, F, 0, 0, 0, Connection),
    spec!("psetex", 4, WD, 1, 1, 1, OneKey),
    spec!("pttl", 2, R, 1, 1, 1, OneKey),
    spec!("quit", -1, F, 0, 0, 0, Connection),
    spec!("randomkey", 1, &["readonly"], 0, 0, 0, Keyspace),
    spec!("rename", 3, W, 1, 2, 1, ManyKeys),
    spec!("renamenx", 3, &["write", "fast"], 1, 2, 1, ManyKeys),
    spec!("scan", -2, &["readonly"], 0, 0, 0, Keyspace),
    spec!("select", 2, L, 0, 0, 0, Connection),
    spec!("set", -3, WD, 1, 1, 1, OneKey),
    spec!("setex", 4, WD, 1, 1, 1, OneKey),
    spec!("setnx", 3, &["write", "denyoom", "fast"], 1, 1, 1, OneKey),
    spec!("setrange", 4, WD, 1, 1, 1, OneKey),
    spec!("strlen", 2, R, 1, 1, 1, OneKey),
    spec!("ttl", 2, R, 1, 1, 1, OneKey),
    spec!("type", 2, R, 1, 1, 1, OneKey),
    spec!("unlink", -2, &["write", "fast"], 1, -1, 1, ManyKeys),
    spec!("unwatch", 1, F, 0, 0, 0, Connection),
    spec!("watch", -2, F, 1, -1, 1, Connection),
];

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .binary_search_by(|s| {
            s.name
                .bytes()
                .cmp(name.iter().map(|b| b.to_ascii_lowercase()))
        })
        .ok()
        .and_then(|i| COMMANDS.get(i))
}

impl Spec {
    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// Whether the command writes.
    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }

    /// Positions of the keys in a call with `argc` arguments.
    pub fn key_positions(&self, argc: usize) -> Vec<usize> {
        if self.first <= 0 {
            return Vec::new();
        }
        let first = self.first as usize;
        let last = if self.last < 0 {
            (argc as i64 + i64::from(self.last)).max(0) as usize
        } else {
            (self.last as usize).min(argc.saturating_sub(1))
        };
        let step = self.step.max(1) as usize;
        (first..=last).step_by(step).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_so_lookup_finds_every_command() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for s in COMMANDS {
            assert_eq!(
                lookup(s.name.to_uppercase().as_bytes()).map(|x| x.name),
                Some(s.name)
            );
        }
        assert!(lookup(b"nosuch").is_none());
    }

    #[test]
    fn key_positions_follow_first_last_step() {
        let mset = lookup(b"mset").expect("mset");
        assert_eq!(mset.key_positions(5), vec![1, 3]);
        let rename = lookup(b"rename").expect("rename");
        assert_eq!(rename.key_positions(3), vec![1, 2]);
        let copy = lookup(b"copy").expect("copy");
        assert_eq!(copy.key_positions(5), vec![1, 2]);
        assert!(lookup(b"ping").expect("ping").key_positions(2).is_empty());
    }
}
