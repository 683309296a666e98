//! Replaying a log of checksummed records, shared by the write-ahead log and the manifest.
//!
//! Both files hold records `u32 payload_len | u32 crc32c(payload) | payload` after a header, and
//! both recover in the mode *tolerate a torn tail*. Torn (the caller truncates it) are:
//!
//! - a last record cut short by a crash (it runs past end of file);
//! - a final record that fails its checksum, *final* meaning that only zero bytes, if any,
//!   follow it: a file written ahead of its size (the WAL extends its segments before writing
//!   into them) ends in zeros instead of at the record;
//! - a tail of zero bytes;
//! - with [`Tolerate::LostPages`] (the WAL, whose segments are written ahead of their size and
//!   fsynced only as the sync policy says): the trace of a page write lost in a power failure,
//!   after which later pages of the file may still have reached the disk. That is a record
//!   that fails its checksum (no shorter prefix matching it) and overlaps a whole
//!   [`PAGE_BYTES`]-aligned page of zero bytes, or a record whose header is zero bytes up to
//!   the end of its page (a page whose last write was lost, so it holds only what an earlier
//!   write put there). Only records written after the last fsync can be lost that way, and
//!   the sync policy allows losing those. The manifest, fsynced after every edit, does not
//!   tolerate it.
//!
//! Anything else that is damaged is corruption. A length field that runs past end of file, or
//! a final record, while a shorter prefix matches the stored checksum is a damaged length,
//! not a torn write, so it is corruption too; so is a record whose checksum holds but whose
//! payload the caller rejects.

use std::ops::Range;

/// Bytes of `payload_len` and `crc32c` before each payload.
pub(crate) const RECORD_HEADER_LEN: usize = 8;

/// The unit in which a power failure may lose writes: a page of the page cache.
pub(crate) const PAGE_BYTES: usize = 4096;

/// Which damage beyond a cut-short tail a replay takes for a torn write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tolerate {
    /// Only a tail cut short (or ending in zeros): files fsynced after every record.
    TornTail,
    /// Also pages lost from an unsynced tail (see the module docs).
    LostPages,
}

/// What a replay found.
#[derive(Debug)]
pub(crate) struct Walked {
    /// Bytes of header and good records: the file is valid up to here.
    pub good_len: usize,
    /// Why the tail after `good_len` was torn, if it was.
    pub torn: Option<String>,
}

/// Walks the records of `data` from `start`, handing each payload whose checksum holds to
/// `apply` (as the range of its bytes in `data`); `apply` answers `Err(reason)` for a payload it
/// cannot use. Payloads shorter than `min_payload` are damaged. `what` names the file kind in
/// torn-tail reasons. A corrupt record is returned as `Err((offset, reason))`.
pub(crate) fn walk(
    data: &[u8],
    start: usize,
    min_payload: usize,
    what: &str,
    tolerate: Tolerate,
    mut apply: impl FnMut(Range<usize>) -> Result<(), String>,
) -> Result<Walked, (usize, String)> {
    let mut offset = start;
    let mut torn = None;
    while offset < data.len() {
        let rest = data.get(offset..).unwrap_or_default();
        let Some((head, body)) = rest.split_at_checked(RECORD_HEADER_LEN) else {
            torn = Some(format!(
                "record header needs {RECORD_HEADER_LEN} bytes, {} remain",
                rest.len()
            ));
            break;
        };
        let [l0, l1, l2, l3, c0, c1, c2, c3] =
            <[u8; RECORD_HEADER_LEN]>::try_from(head).unwrap_or_default();
        let payload_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let stored_crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let record_len = RECORD_HEADER_LEN + payload_len;
        if tolerate == Tolerate::LostPages && head.iter().all(|&b| b == 0) {
            let page_end = (offset / PAGE_BYTES + 1) * PAGE_BYTES;
            let to_page_end = data
                .get(offset..page_end.min(data.len()))
                .unwrap_or_default();
            if to_page_end.iter().all(|&b| b == 0) {
                torn = Some(format!(
                    "no record header at offset {offset}, only zero bytes to the end of its \
                     page (a page write lost in a crash)"
                ));
                break;
            }
        }
        if payload_len > body.len() {
            // Either a torn write or a damaged length field; in the second case the stored
            // checksum still matches the real (shorter) payload.
            if let Some(real) = checksum_matching_prefix(body, stored_crc, min_payload) {
                return Err((
                    offset,
                    format!(
                        "damaged length field: claims a {payload_len}-byte payload running past \
                         end of file, but the checksum matches the first {real} bytes"
                    ),
                ));
            }
            torn = Some(format!(
                "record of {record_len} bytes runs past end of file ({} remain)",
                rest.len()
            ));
            break;
        }
        let payload_range = offset + RECORD_HEADER_LEN..offset + record_len;
        let payload = body.get(..payload_len).unwrap_or_default();
        // Whether the record failed its checksum with no shorter prefix matching it.
        let mut unexplained_checksum = false;
        let problem = if payload_len < min_payload {
            Some(format!(
                "payload length {payload_len} is below the minimum of {min_payload}"
            ))
        } else {
            let actual_crc = crc32c::crc32c(payload);
            if actual_crc != stored_crc {
                let last = rest.get(record_len..).unwrap_or_default();
                let is_final = last.iter().all(|&b| b == 0);
                unexplained_checksum =
                    checksum_matching_prefix(payload, stored_crc, min_payload).is_none();
                if is_final && unexplained_checksum {
                    torn = Some(format!(
                        "final record fails its checksum (stored {stored_crc:#010x}, computed \
                         {actual_crc:#010x})"
                    ));
                    break;
                }
                Some(format!(
                    "checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
                ))
            } else {
                apply(payload_range).err()
            }
        };
        if let Some(reason) = problem {
            if rest.iter().all(|&b| b == 0) {
                torn = Some(format!("{reason}; the rest of the {what} is zero bytes"));
                break;
            }
            let lost_page = (tolerate == Tolerate::LostPages && unexplained_checksum)
                .then(|| zero_page_within(data, offset..offset + record_len))
                .flatten();
            if let Some(page) = lost_page {
                torn = Some(format!(
                    "{reason}; the record overlaps a page of zero bytes at offset {page} (a page \
                     write lost in a crash)"
                ));
                break;
            }
            return Err((offset, reason));
        }
        offset += record_len;
    }
    Ok(Walked {
        good_len: offset,
        torn,
    })
}

/// The offset of the first whole [`PAGE_BYTES`]-aligned page of `data` that overlaps `record`
/// and holds nothing but zero bytes, if any.
fn zero_page_within(data: &[u8], record: Range<usize>) -> Option<usize> {
    let end = record.end.min(data.len());
    let mut page = record.start - record.start % PAGE_BYTES;
    while page < end {
        let bytes = data.get(page..page + PAGE_BYTES)?;
        if bytes.iter().all(|&b| b == 0) {
            return Some(page);
        }
        page += PAGE_BYTES;
    }
    None
}

/// The length of the shortest plausible prefix of `bytes` whose CRC32C is `stored`, if any.
fn checksum_matching_prefix(bytes: &[u8], stored: u32, min_payload: usize) -> Option<usize> {
    let mut crc = 0u32;
    for (i, byte) in bytes.iter().enumerate() {
        crc = crc32c::crc32c_append(crc, std::slice::from_ref(byte));
        if i + 1 >= min_payload && crc == stored {
            return Some(i + 1);
        }
    }
    None
}
