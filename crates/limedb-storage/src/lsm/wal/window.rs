//! The active segment's *append window*: the space the file was extended by, allocated on disk
//! and mapped for writing, so that an append is a copy into memory rather than a `pwrite(2)`.
//!
//! An append through `pwrite` costs a system call and, for each new page of the file, the
//! kernel's allocation of a page-cache page for it: under a stream of small appends (a SET per
//! request) that was the larger part of the log's cost. The window is prepared once per
//! extension of the file ([`EXTEND_BYTES`](super::EXTEND_BYTES), 1 MiB):
//!
//! 1. [`allocate`] writes zeros over the extension, so that the file system reserves its blocks
//!    (a full disk is an error from that write, never a `SIGBUS` from a store into a mapped
//!    page of a hole) and its pages are in the page cache;
//! 2. [`AppendWindow::map`] maps the file from the append offset to its end (`MAP_SHARED`) and
//!    asks the kernel to fault every page in writable at once (`MADV_POPULATE_WRITE`, Linux
//!    5.14; without it pages fault in on first write).
//!
//! A store into a shared file mapping is in the page cache when it completes, exactly as a
//! `pwrite` is: it survives the process being killed, and `fdatasync(2)` on the file writes
//! it back with the rest (see the module docs of the log). Populating marks the whole window
//! dirty, so the first writeback after an extension also writes its zeros (at most 1 MiB).
//!
//! Windows are used only on file systems that overwrite allocated blocks in place (ext2/3/4,
//! XFS, tmpfs; [`file_system_allows`]): on a copy-on-write file system (btrfs, ZFS) a store
//! into a page already written back needs new space, and a full disk would then be a
//! `SIGBUS` instead of an error. Elsewhere, and where the file system cannot allocate, the
//! extension is a sparse one and appends use `pwrite`. A store into a window can still fault
//! if the disk fails to read back a page evicted in the meantime; where `pwrite` would return
//! `EIO`, the process then dies, with every acknowledged write in the log.

#![expect(
    unsafe_code,
    reason = "a shared, writable memory map of the active WAL segment"
)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Whether `file` lies on a file system whose allocated blocks are overwritten in place (see
/// the module docs): ext2/3/4, XFS or tmpfs.
#[cfg(target_os = "linux")]
pub(super) fn file_system_allows(file: &File) -> bool {
    const EXT: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const TMPFS: i64 = 0x0102_1994;
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fstatfs` writes one `statfs` into the buffer we own; the descriptor is open for
    // as long as `file` is borrowed.
    if unsafe { libc::fstatfs(file.as_raw_fd(), stats.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: `fstatfs` succeeded, so it filled the buffer.
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is an i64 on x86-64 but narrower on other targets"
    )]
    let kind = i64::from(unsafe { stats.assume_init() }.f_type);
    matches!(kind, EXT | XFS | TMPFS)
}

/// No windows off Linux.
#[cfg(not(target_os = "linux"))]
pub(super) fn file_system_allows(_file: &File) -> bool {
    false
}

/// Allocates bytes `from..to` of `file` (extending it to `to` if it is shorter) by writing
/// zeros over them: the file system reserves their blocks as it takes the write, so that a
/// full disk is an error here, and the zeros stay in the page cache for the window to map.
///
/// Zeros written are cheaper to map than space `fallocate(2)` reserves: the kernel then has to
/// read each page of the unwritten extent in (as zeros) and prepare its blocks for writing one
/// page at a time, while written pages are already there. With a C probe on ext4, preparing a
/// 1 MiB window and filling it with 2 KiB records took 0.5–0.65 ms of CPU time this way
/// against 1.3–1.5 ms after `fallocate`.
pub(super) fn allocate(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 256 << 10] = [0; 256 << 10];
    let mut at = from;
    while at < to {
        let len = usize::try_from(to - at).map_or(ZEROS.len(), |left| left.min(ZEROS.len()));
        file.write_all_at(&ZEROS[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

/// Bytes `start..end` of the active segment, mapped for writing.
#[derive(Debug)]
pub(super) struct AppendWindow {
    /// The file offset of `map[0]`.
    start: u64,
    map: memmap2::MmapMut,
}

impl AppendWindow {
    /// Maps bytes `start..end` of `file`, which must be allocated (see [`allocate`]) and lie
    /// within the file.
    pub(super) fn map(file: &File, start: u64, end: u64) -> io::Result<AppendWindow> {
        let len = usize::try_from(end.saturating_sub(start))
            .map_err(|_| io::Error::other("WAL append window too large"))?;
        // SAFETY: the mapping is of the active segment of this process's log, which only its
        // writer (holding the log's writer lock, as the caller does) writes, and which nothing
        // shortens while the window exists: the log drops the window before it trims the file
        // (`Wal::trim_locked`) and never deletes the active segment. (This assumes, as the
        // whole engine does, that no other process opens the same directory: one that did
        // could trim the file under the map, and a store past its end would be a `SIGBUS`.)
        // The bytes are only copied into (`write`), never borrowed out, so a change made
        // through another mapping or descriptor cannot break a reference of ours.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(len)
                .map_mut(file)?
        };
        #[cfg(target_os = "linux")]
        if let Err(error) = map.advise(memmap2::Advice::PopulateWrite) {
            // Kernels before 5.14 do not know the advice: the pages fault in on first write.
            // Any other failure (a page that cannot be faulted in) means a store would fault:
            // no window.
            if error.raw_os_error() != Some(libc::EINVAL) {
                return Err(error);
            }
        }
        Ok(AppendWindow { start, map })
    }

    /// Copies `bytes` to file offset `at`; `false` (and nothing written) if they do not lie
    /// within the window.
    pub(super) fn write(&mut self, at: u64, bytes: &[u8]) -> bool {
        let Some(offset) = at
            .checked_sub(self.start)
            .and_then(|o| usize::try_from(o).ok())
        else {
            return false;
        };
        match offset
            .checked_add(bytes.len())
            .and_then(|end| self.map.get_mut(offset..end))
        {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Bytes copied into a window are the file's bytes, read back through the descriptor (the
    /// page cache is one); writes outside the window are refused and change nothing.
    #[test]
    fn writes_through_a_window_are_the_files_bytes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("segment");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::io::Write::write_all(&mut &file, b"header")?;
        allocate(&file, 6, 6 + 10_000)?;
        assert_eq!(file.metadata()?.len(), 10_006);
        // A window starting off a page boundary, as after a record.
        let mut window = AppendWindow::map(&file, 6, 10_006)?;
        assert!(window.write(6, b"first"));
        assert!(window.write(9_000, b"last bytes"));
        assert!(!window.write(10_000, b"past the end"));
        assert!(!window.write(5, b"before"));
        assert!(!window.write(u64::MAX, b"x"));
        drop(window);
        let mut read = Vec::new();
        std::fs::File::open(&path)?.read_to_end(&mut read)?;
        assert_eq!(read.len(), 10_006);
        assert_eq!(&read[..11], b"headerfirst");
        assert_eq!(&read[9_000..9_010], b"last bytes");
        assert!(read[11..9_000].iter().all(|&b| b == 0));
        assert!(read[9_010..].iter().all(|&b| b == 0));
        Ok(())
    }
}
