//! The wall clock that expiry times are compared against.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the system clock.
///
/// A clock set before 1970 reads as 0; one past `u64::MAX` ms saturates.
///
/// ```
/// assert!(limedb_storage::now_ms() > 1_600_000_000_000);
/// ```
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
