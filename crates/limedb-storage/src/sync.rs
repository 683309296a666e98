//! [`SyncPolicy`]: when acknowledged writes are fsynced to stable storage.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How eagerly an engine fsyncs its log.
///
/// Every policy hands each record to the operating system (`write(2)`, `pwrite(2)`, or a store
/// into a shared mapping of the log file) before
/// acknowledging it, so acknowledged writes survive a process crash; the policy only decides
/// how much may be lost on power loss.
///
/// Parsed from and displayed as `always`, `interval` (one second), `interval:<ms>ms` or `never`:
///
/// ```
/// use limedb_storage::SyncPolicy;
/// use std::time::Duration;
///
/// assert_eq!("always".parse::<SyncPolicy>()?, SyncPolicy::Always);
/// assert_eq!("interval".parse::<SyncPolicy>()?, SyncPolicy::Interval(Duration::from_secs(1)));
/// assert_eq!("interval:250ms".parse::<SyncPolicy>()?, SyncPolicy::Interval(Duration::from_millis(250)));
/// assert_eq!(SyncPolicy::Never.to_string(), "never");
/// assert!("sometimes".parse::<SyncPolicy>().is_err());
/// # Ok::<(), limedb_storage::ParseSyncPolicyError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// fsync before every write returns; concurrent writers share one fsync (group commit).
    Always,
    /// fsync in the background at this period whenever there are unsynced writes.
    Interval(Duration),
    /// Never fsync on its own; only [`crate::Engine::sync`] and [`crate::Engine::close`] do.
    Never,
}

impl SyncPolicy {
    /// The period of `interval` when none is given: one second.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Interval(Self::DEFAULT_INTERVAL)
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Interval(d) if *d == Self::DEFAULT_INTERVAL => f.write_str("interval"),
            SyncPolicy::Interval(d) => write!(f, "interval:{}ms", d.as_millis()),
            SyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// The text given for a [`SyncPolicy`] is not one of the accepted spellings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid sync policy {input:?}: expected \"always\", \"interval\" (every 1 s), \
     \"interval:<ms>ms\" or \"never\""
)]
pub struct ParseSyncPolicyError {
    /// The rejected text.
    pub input: String,
}

impl FromStr for SyncPolicy {
    type Err = ParseSyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSyncPolicyError {
            input: s.to_owned(),
        };
        let text = s.trim().to_ascii_lowercase();
        match text.as_str() {
            "always" => Ok(SyncPolicy::Always),
            "interval" => Ok(SyncPolicy::default()),
            "never" => Ok(SyncPolicy::Never),
            other => {
                let ms = other
                    .strip_prefix("interval:")
                    .map(|rest| rest.trim().trim_end_matches("ms"))
                    .ok_or_else(err)?;
                match ms.parse::<u64>() {
                    Ok(ms) if ms > 0 => Ok(SyncPolicy::Interval(Duration::from_millis(ms))),
                    _ => Err(err()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() -> Result<(), ParseSyncPolicyError> {
        for p in [
            SyncPolicy::Always,
            SyncPolicy::Never,
            SyncPolicy::default(),
            SyncPolicy::Interval(Duration::from_millis(20)),
        ] {
            assert_eq!(p.to_string().parse::<SyncPolicy>()?, p);
        }
        assert_eq!(" Always ".parse::<SyncPolicy>()?, SyncPolicy::Always);
        Ok(())
    }

    #[test]
    fn rejects_unknown_spellings() {
        for bad in [
            "",
            "sometimes",
            "interval:",
            "interval:0ms",
            "interval:-1",
            "interval:xms",
        ] {
            let e = bad.parse::<SyncPolicy>().err();
            assert!(e.is_some(), "{bad:?} should be rejected");
            assert!(e
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("always"));
        }
    }
}
