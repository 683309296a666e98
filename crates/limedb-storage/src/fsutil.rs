//! File-system helpers shared by every on-disk structure of this crate.

use std::fs::File;
use std::path::Path;

use crate::error::StorageError;
use crate::Result;

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StorageError::io("failed to fsync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
