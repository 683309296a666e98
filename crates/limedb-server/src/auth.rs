//! Who may talk to a node, and what they may do: the users it knows, how their passwords are
//! checked, and the permission each has (see ARCHITECTURE.md, *Security and backups*).
//!
//! A node knows the **default** user when started with `--requirepass`, and the users of the
//! configuration file's `[[users]]` tables. Only salted argon2 hashes are kept (PHC strings:
//! `--requirepass` is hashed at start, the file holds hashes made by `limedb hash-password`);
//! no password is kept or logged. With neither, no credentials are asked for and every client
//! acts as the default user with every permission, as Redis does without `requirepass`.
//!
//! Checking a password costs an argon2 run (tens of milliseconds, on purpose). A success is
//! remembered under an HMAC-SHA256 of the user and password keyed by a random per-process key,
//! so that a client authenticating on every request (HTTP basic auth, a pool of RESP
//! connections) pays it once per process; the set of remembered successes is bounded. The
//! checks themselves (argon2's comparison, the lookup by keyed digest) take the same time
//! whatever part of a wrong password matches, and an unknown user's password is checked against
//! a decoy hash, so timing does not tell which user names exist. At most two argon2 runs go at
//! once: a flood of wrong passwords waits its turn instead of taking every core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The user `--requirepass` sets the password of, and the one `AUTH password` names.
pub const DEFAULT_USER: &str = "default";

/// Successes remembered at most; beyond, the set starts afresh.
const REMEMBERED: usize = 4096;

/// What a user may do, each level including the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Reads: GET, MGET, EXISTS, SCAN, key listings, cluster state, metrics.
    Read,
    /// Reads and writes of keys.
    ReadWrite,
    /// Everything: adding and removing shards and replicas, FLUSHALL, CONFIG SET.
    Admin,
}

impl Permission {
    /// The name used in the configuration file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::ReadWrite => "read-write",
            Permission::Admin => "admin",
        }
    }
}

/// One `[[users]]` table of the configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name.
    pub name: String,
    /// The argon2 hash of the password, as `limedb hash-password` prints it.
    pub password_hash: String,
    /// `read`, `read-write` or `admin`.
    pub permission: Permission,
}

/// A client that proved who it is (or the default user, when no credentials are asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user's name.
    pub user: Arc<str>,
    /// What the user may do.
    pub permission: Permission,
}

/// Why credentials are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No such user, or the password does not match (not told apart, on purpose).
    #[error("invalid username-password pair or user is disabled")]
    WrongPassword,
    /// `AUTH password` on a node that asks for no password.
    #[error("no password is configured for the default user")]
    NoPasswordConfigured,
    /// The configuration names a user twice, or holds a hash that is not an argon2 PHC string.
    #[error("{0}")]
    Config(String),
}

/// The users a node knows.
pub struct Users {
    /// Argon2 PHC strings and permissions, by name; empty when no credentials are asked for.
    users: HashMap<String, (String, Permission)>,
    /// Keyed digests of credentials that passed, with the identity they proved.
    remembered: Mutex<HashMap<[u8; 32], Identity>>,
    /// The per-process key of those digests.
    key: [u8; 32],
    /// Credentials refused since start.
    failures: AtomicU64,
    /// The hash an unknown user's password is checked against (of a random password).
    decoy: String,
    /// Argon2 runs at once ([`CONCURRENT_CHECKS`]).
    checking: tokio::sync::Semaphore,
    /// Argon2 runs since start.
    runs: AtomicU64,
}

/// Passwords checked by argon2 at once; more wait (each run takes tens of milliseconds of CPU
/// on purpose, so unbounded they would crowd out every request).
const CONCURRENT_CHECKS: usize = 2;

impl Users {
    /// A node that asks for no credentials.
    pub fn open() -> Users {
        Users::with(HashMap::new())
    }

    /// The users of `--requirepass` (the default user, with every permission) and `configured`.
    pub fn new(requirepass: Option<&str>, configured: &[UserConfig]) -> Result<Users, AuthError> {
        let mut users = HashMap::new();
        if let Some(password) = requirepass {
            if password.is_empty() {
                return Err(AuthError::Config("--requirepass is empty".into()));
            }
            users.insert(
                DEFAULT_USER.to_string(),
                (hash_password(password)?, Permission::Admin),
            );
        }
        for user in configured {
            if user.name.is_empty() || user.name.chars().any(char::is_whitespace) {
                return Err(AuthError::Config(format!(
                    "user name {:?} is empty or holds whitespace",
                    user.name
                )));
            }
            PasswordHash::new(&user.password_hash).map_err(|e| {
                AuthError::Config(format!(
                    "user {}: password_hash is not an argon2 hash (make one with `limedb hash-password`): {e}",
                    user.name
                ))
            })?;
            let entry = (user.password_hash.clone(), user.permission);
            if users.insert(user.name.clone(), entry).is_some() {
                return Err(AuthError::Config(format!(
                    "user {} is configured twice (or is the default user of --requirepass)",
                    user.name
                )));
            }
        }
        Ok(Users::with(users))
    }

    fn with(users: HashMap<String, (String, Permission)>) -> Users {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        // Made only where passwords are checked (an argon2 run costs start-up time).
        let decoy = if users.is_empty() {
            String::new()
        } else {
            let mut random = [0u8; 16];
            OsRng.fill_bytes(&mut random);
            SaltString::encode_b64(&random)
                .ok()
                .and_then(|salt| hash_with(salt.as_str().as_bytes(), &salt).ok())
                .unwrap_or_default()
        };
        Users {
            users,
            remembered: Mutex::new(HashMap::new()),
            key,
            failures: AtomicU64::new(0),
            decoy,
            checking: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
            runs: AtomicU64::new(0),
        }
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// The identity of a client that has not authenticated: the default user with every
    /// permission when no credentials are asked for, else none.
    pub fn anonymous(&self) -> Option<Identity> {
        (!self.required()).then(|| Identity {
            user: Arc::from(DEFAULT_USER),
            permission: Permission::Admin,
        })
    }

    /// Checks `password` for `user` (argon2 on a thread of its own the first time, remembered
    /// afterwards). A refusal is counted.
    pub async fn authenticate(
        self: &Arc<Self>,
        user: &str,
        password: &[u8],
    ) -> Result<Identity, AuthError> {
        if !self.required() {
            return if user == DEFAULT_USER {
                Err(AuthError::NoPasswordConfigured)
            } else {
                self.refused()
            };
        }
        let digest = self.digest(user, password);
        if let Some(identity) = self.lock().get(&digest) {
            return Ok(identity.clone());
        }
        // An unknown user costs the same argon2 run as a known one, so timing does not tell
        // which names exist.
        let (hash, permission, known) = match self.users.get(user) {
            Some((hash, permission)) => (hash.clone(), *permission, true),
            None => (self.decoy.clone(), Permission::Read, false),
        };
        let password = password.to_vec();
        // A flood of wrong passwords queues here instead of taking every core.
        let Ok(_permit) = self.checking.acquire().await else {
            return self.refused();
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let checked = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(&password, &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !(checked && known) {
            return self.refused();
        }
        let identity = Identity {
            user: Arc::from(user),
            permission,
        };
        let mut remembered = self.lock();
        if remembered.len() >= REMEMBERED {
            remembered.clear();
        }
        remembered.insert(digest, identity.clone());
        Ok(identity)
    }

    /// Passwords checked by argon2 since start (remembered successes are not).
    pub fn argon2_runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Credentials refused since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The names of the users, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.users.keys().cloned().collect();
        names.sort();
        names
    }

    fn refused(&self) -> Result<Identity, AuthError> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        Err(AuthError::WrongPassword)
    }

    fn digest(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(&(user.len() as u64).to_le_bytes());
        mac.update(user.as_bytes());
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Identity>> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Names only: neither hashes nor the digest key belong in logs.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

/// A salted argon2 hash of `password`, as a PHC string (what `limedb hash-password` prints and
/// `[[users]]` tables hold).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    hash_with(password.as_bytes(), &SaltString::generate(&mut OsRng))
}

fn hash_with(password: &[u8], salt: &SaltString) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password, salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Config(format!("cannot hash the password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, permission: Permission) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_hash: hash_password(password).expect("hash"),
            permission,
        }
    }

    #[tokio::test]
    async fn passwords_are_checked_and_permissions_kept() {
        let users = Arc::new(
            Users::new(
                Some("s3cret"),
                &[user("reader", "r-pass", Permission::Read)],
            )
            .expect("users"),
        );
        assert!(users.required());
        assert_eq!(users.anonymous(), None);
        let me = users
            .authenticate(DEFAULT_USER, b"s3cret")
            .await
            .expect("default user");
        assert_eq!(me.permission, Permission::Admin);
        let reader = users
            .authenticate("reader", b"r-pass")
            .await
            .expect("reader");
        assert_eq!(
            (&*reader.user, reader.permission),
            ("reader", Permission::Read)
        );
        // Remembered: the same answer again, and a wrong password still refused.
        assert_eq!(users.authenticate("reader", b"r-pass").await, Ok(reader));
        for (name, password) in [
            ("reader", &b"r-pas"[..]),
            ("reader", b"s3cret"),
            ("nobody", b"r-pass"),
            (DEFAULT_USER, b""),
        ] {
            assert_eq!(
                users.authenticate(name, password).await,
                Err(AuthError::WrongPassword),
                "{name}"
            );
        }
        assert_eq!(users.failures(), 4);
        // An unknown user costs an argon2 run, as a wrong password does; a remembered success
        // costs none.
        let runs = users.argon2_runs();
        let _ = users.authenticate("nobody-else", b"guess").await;
        assert_eq!(users.argon2_runs(), runs + 1, "an unknown user");
        let _ = users.authenticate("reader", b"guess").await;
        assert_eq!(users.argon2_runs(), runs + 2, "a wrong password");
        let _ = users.authenticate("reader", b"r-pass").await;
        assert_eq!(users.argon2_runs(), runs + 2, "remembered");
        assert_eq!(users.names(), ["default", "reader"]);
    }

    #[tokio::test]
    async fn without_users_every_client_is_the_default_user() {
        let users = Arc::new(Users::open());
        assert!(!users.required());
        assert_eq!(
            users.anonymous().map(|i| i.permission),
            Some(Permission::Admin)
        );
        assert_eq!(
            users.authenticate(DEFAULT_USER, b"x").await,
            Err(AuthError::NoPasswordConfigured)
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let bad_hash = UserConfig {
            name: "app".into(),
            password_hash: "plain-text".into(),
            permission: Permission::Read,
        };
        let e = Users::new(None, &[bad_hash]).expect_err("not a hash");
        assert!(e.to_string().contains("limedb hash-password"), "{e}");
        let twice = [
            user("app", "a", Permission::Read),
            user("app", "b", Permission::Admin),
        ];
        assert!(Users::new(None, &twice).is_err());
        assert!(Users::new(Some(""), &[]).is_err());
        let default_again = [user(DEFAULT_USER, "a", Permission::Read)];
        assert!(Users::new(Some("x"), &default_again).is_err());
    }

    #[test]
    fn hashes_are_salted_phc_strings() {
        let (a, b) = (
            hash_password("pw").expect("a"),
            hash_password("pw").expect("b"),
        );
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(!a.contains("pw$"));
    }
}
