//! Access control on a RESP connection, answered as Redis answers it: which permission a command
//! needs, the commands a client may send before it authenticates, and `AUTH`, the `AUTH` option
//! of `HELLO`, and `ACL WHOAMI` / `ACL USERS`. The users themselves are [`crate::auth`]'s.

use std::sync::Arc;

use bytes::Bytes;
use limedb_resp::Value;

use super::table::Spec;
use super::{Fail, Reply};
use crate::auth::{AuthError, Identity, Permission, Users, DEFAULT_USER};

/// A command sent before `AUTH` when credentials are asked for.
pub const NOAUTH: &str = "NOAUTH Authentication required.";

/// `HELLO` without its `AUTH` option before the client authenticated.
pub const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

/// Wrong credentials (a missing user and a wrong password are not told apart).
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// `AUTH password` on a node that asks for no password.
const NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";

/// Whether a client may send command `name` before it authenticates.
pub fn runs_unauthenticated(name: &str) -> bool {
    matches!(name, "auth" | "hello" | "quit")
}

/// The permission a call (`args`, the command's name first) needs.
pub fn needed(spec: &Spec, args: &[Bytes]) -> Permission {
    let sub = |name: &[u8]| args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(name));
    match spec.name {
        "flushall" | "flushdb" => Permission::Admin,
        "config" if !sub(b"GET") => Permission::Admin,
        "acl" if sub(b"USERS") => Permission::Admin,
        _ if spec.is_write() => Permission::ReadWrite,
        _ => Permission::Read,
    }
}

/// Whether `identity` may make call `args` of `spec`.
pub fn allowed(identity: Option<&Identity>, spec: &Spec, args: &[Bytes]) -> bool {
    identity.is_some_and(|i| i.permission >= needed(spec, args))
}

/// The refusal of a call beyond the user's permission.
pub fn no_permission(spec: &Spec) -> Fail {
    Fail::new(format!(
        "NOPERM this user has no permissions to run the '{}' command",
        spec.name
    ))
}

/// `AUTH password` or `AUTH user password`: the identity proved, or `None` when nothing
/// changes (the default user's password on a node that asks for none, as Redis's `nopass`).
pub async fn auth(users: &Arc<Users>, args: &[Bytes]) -> Result<Option<Identity>, Fail> {
    let (user, password) = match args {
        [_, password] => (DEFAULT_USER.as_bytes(), password),
        [_, user, password] => (&user[..], password),
        _ => return Err(Fail::new("ERR syntax error")),
    };
    check(users, user, password, args.len() == 2).await
}

/// The `AUTH user password` option of `HELLO`.
pub async fn hello_auth(
    users: &Arc<Users>,
    user: &Bytes,
    password: &Bytes,
) -> Result<Option<Identity>, Fail> {
    check(users, user, password, false).await
}

async fn check(
    users: &Arc<Users>,
    user: &[u8],
    password: &[u8],
    password_only: bool,
) -> Result<Option<Identity>, Fail> {
    let Ok(user) = std::str::from_utf8(user) else {
        return Err(Fail::new(WRONGPASS));
    };
    match users.authenticate(user, password).await {
        Ok(identity) => Ok(Some(identity)),
        Err(AuthError::NoPasswordConfigured) if password_only => Err(Fail::new(NO_PASSWORD)),
        Err(AuthError::NoPasswordConfigured) => Ok(None),
        Err(_) => Err(Fail::new(WRONGPASS)),
    }
}

/// `ACL WHOAMI` and `ACL USERS`.
pub fn acl(users: &Users, identity: Option<&Identity>, args: &[Bytes]) -> Reply {
    match &args[1].to_ascii_uppercase()[..] {
        b"WHOAMI" if args.len() == 2 => Ok(Value::bulk(
            identity.map_or(DEFAULT_USER, |i| &*i.user).to_string(),
        )),
        b"USERS" if args.len() == 2 => {
            let mut names = users.names();
            if names.is_empty() {
                names.push(DEFAULT_USER.to_string());
            }
            Ok(Value::Array(names.into_iter().map(Value::bulk).collect()))
        }
        b"WHOAMI" | b"USERS" => Err(super::arity_error(&format!(
            "acl|{}",
            String::from_utf8_lossy(&args[1]).to_lowercase()
        ))),
        _ => Err(Fail::new(format!(
            "ERR unknown subcommand '{}'. Try ACL HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::table::lookup;

    fn call(args: &[&str]) -> (&'static Spec, Vec<Bytes>) {
        let spec = lookup(args[0].as_bytes()).expect("known command");
        let args = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        (spec, args)
    }

    #[test]
    fn each_command_needs_the_permission_of_what_it_does() {
        for (args, permission) in [
            (&["get", "k"][..], Permission::Read),
            (&["mget", "a", "b"], Permission::Read),
            (&["scan", "0"], Permission::Read),
            (&["set", "k", "v"], Permission::ReadWrite),
            (&["del", "k"], Permission::ReadWrite),
            (&["incr", "k"], Permission::ReadWrite),
            (&["flushall"], Permission::Admin),
            (&["config", "set", "maxmemory", "1"], Permission::Admin),
            (&["config", "get", "maxmemory"], Permission::Read),
            (&["acl", "whoami"], Permission::Read),
            (&["acl", "users"], Permission::Admin),
        ] {
            let (spec, args) = call(args);
            assert_eq!(needed(spec, &args), permission, "{args:?}");
        }
        let reader = Identity {
            user: Arc::from("r"),
            permission: Permission::Read,
        };
        let (set, args) = call(&["set", "k", "v"]);
        assert!(!allowed(Some(&reader), set, &args));
        assert!(!allowed(None, set, &args));
        let (get, args) = call(&["get", "k"]);
        assert!(allowed(Some(&reader), get, &args));
    }
}
