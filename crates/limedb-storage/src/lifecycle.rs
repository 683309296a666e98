//! [`Lifecycle`]: the two one-way flags every engine keeps, *closed* (by `close`) and
//! *poisoned* (by a failed write or fsync, after which the engine refuses writes until it is
//! reopened), and the errors they turn into.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::StorageError;
use crate::Result;

/// Closed and poisoned flags of an engine; both only ever go from `false` to `true`.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    closed: AtomicBool,
    poisoned: AtomicBool,
}

impl Lifecycle {
    /// [`StorageError::Closed`] once closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// As [`Lifecycle::check_open`], and [`StorageError::Poisoned`] once poisoned.
    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        if self.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Poisons; `true` only for the call that did (the caller logs the cause once).
    pub(crate) fn poison(&self) -> bool {
        !self.poisoned.swap(true, Ordering::SeqCst)
    }

    /// Closes; `false` if it was closed already.
    pub(crate) fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_go_one_way_and_become_errors() {
        let l = Lifecycle::default();
        assert!(l.check_writable().is_ok());
        assert!(l.poison());
        assert!(!l.poison(), "only the first poison reports it");
        assert!(l.check_open().is_ok());
        assert!(matches!(l.check_writable(), Err(StorageError::Poisoned)));
        assert!(l.close());
        assert!(!l.close());
        assert!(matches!(l.check_open(), Err(StorageError::Closed)));
        assert!(matches!(l.check_writable(), Err(StorageError::Closed)));
    }
}
