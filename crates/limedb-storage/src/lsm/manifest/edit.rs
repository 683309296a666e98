//! [`VersionEdit`] and the pure codec of its record payload (see the
//! [format](super#format)).

use bytes::Bytes;

use crate::lsm::key::TRAILER_LEN;
use crate::lsm::version::{TableHandle, NUM_LEVELS};
use crate::MAX_KEY_BYTES;

const TAG_LAST_SEQNO: u8 = 1;
const TAG_NEXT_FILE_NUMBER: u8 = 2;
const TAG_LOG_NUMBER: u8 = 3;
const TAG_DELETED_TABLE: u8 = 4;
const TAG_NEW_TABLE: u8 = 5;
const TAG_COMPACT_CURSOR: u8 = 6;

/// Smallest valid payload: one tag with a `u64` (e.g. a last seqno).
pub(crate) const MIN_PAYLOAD_LEN: usize = 9;

/// A table added to a level by a [`VersionEdit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTable {
    /// The level it goes to.
    pub level: usize,
    /// The table.
    pub table: TableHandle,
}

/// A table removed from a level by a [`VersionEdit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeletedTable {
    /// The level it is in.
    pub level: usize,
    /// Its file number.
    pub file_number: u64,
}

/// A change from one [`Version`](crate::lsm::version::Version) to the next: what a flush or a
/// compaction did. The manifest logs edits; [`Version::apply`](crate::lsm::version::Version::apply)
/// checks and applies them. Fields left `None` keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// Tables added, with their level. Applied after [`VersionEdit::deleted_tables`].
    pub new_tables: Vec<NewTable>,
    /// Tables removed, by level and file number.
    pub deleted_tables: Vec<DeletedTable>,
    /// The new last sequence number.
    pub last_seqno: Option<u64>,
    /// The new next file number.
    pub next_file_number: Option<u64>,
    /// The new log number: WAL segments below it are obsolete.
    pub log_number: Option<u64>,
    /// New compaction cursors: `(level, user key where the last compaction out of it ended)`.
    pub compact_cursors: Vec<(usize, Bytes)>,
}

impl VersionEdit {
    /// Adds `table` to `level`.
    pub fn add_table(&mut self, level: usize, table: TableHandle) -> &mut Self {
        self.new_tables.push(NewTable { level, table });
        self
    }

    /// Removes table `file_number` from `level`.
    pub fn delete_table(&mut self, level: usize, file_number: u64) -> &mut Self {
        self.deleted_tables
            .push(DeletedTable { level, file_number });
        self
    }

    /// Sets the last sequence number.
    pub fn set_last_seqno(&mut self, seqno: u64) -> &mut Self {
        self.last_seqno = Some(seqno);
        self
    }

    /// Sets the next file number.
    pub fn set_next_file_number(&mut self, number: u64) -> &mut Self {
        self.next_file_number = Some(number);
        self
    }

    /// Sets the log number.
    pub fn set_log_number(&mut self, number: u64) -> &mut Self {
        self.log_number = Some(number);
        self
    }

    /// Sets the compaction cursor of `level`.
    pub fn set_compact_cursor(&mut self, level: usize, user_key: Bytes) -> &mut Self {
        self.compact_cursors.push((level, user_key));
        self
    }

    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.new_tables.is_empty()
            && self.deleted_tables.is_empty()
            && self.last_seqno.is_none()
            && self.next_file_number.is_none()
            && self.log_number.is_none()
            && self.compact_cursors.is_empty()
    }

    /// Appends the payload encoding to `dst`. Returns `None` (leaving `dst` in an unspecified
    /// state) if a level does not fit a byte or a key is longer than [`MAX_KEY_BYTES`] plus a
    /// trailer.
    pub(crate) fn encode_into(&self, dst: &mut Vec<u8>) -> Option<()> {
        let level_byte = |level: usize| {
            u8::try_from(level)
                .ok()
                .filter(|&l| (l as usize) < NUM_LEVELS)
        };
        let key_len = |key: &[u8]| {
            u32::try_from(key.len())
                .ok()
                .filter(|&len| len as usize <= MAX_KEY_BYTES + TRAILER_LEN)
        };
        for (tag, value) in [
            (TAG_LAST_SEQNO, self.last_seqno),
            (TAG_NEXT_FILE_NUMBER, self.next_file_number),
            (TAG_LOG_NUMBER, self.log_number),
        ] {
            if let Some(value) = value {
                dst.push(tag);
                dst.extend_from_slice(&value.to_le_bytes());
            }
        }
        for d in &self.deleted_tables {
            dst.push(TAG_DELETED_TABLE);
            dst.push(level_byte(d.level)?);
            dst.extend_from_slice(&d.file_number.to_le_bytes());
        }
        for NewTable { level, table: t } in &self.new_tables {
            dst.push(TAG_NEW_TABLE);
            dst.push(level_byte(*level)?);
            for n in [
                t.file_number,
                t.file_size_bytes,
                t.entry_count,
                t.min_seqno,
                t.max_seqno,
            ] {
                dst.extend_from_slice(&n.to_le_bytes());
            }
            for key in [&t.smallest_key, &t.largest_key] {
                dst.extend_from_slice(&key_len(key)?.to_le_bytes());
                dst.extend_from_slice(key);
            }
        }
        for (level, key) in &self.compact_cursors {
            dst.push(TAG_COMPACT_CURSOR);
            dst.push(level_byte(*level)?);
            dst.extend_from_slice(&key_len(key)?.to_le_bytes());
            dst.extend_from_slice(key);
        }
        Some(())
    }

    /// Decodes a record payload. Pure: never panics, allocates only for bytes present.
    pub(crate) fn decode(payload: &[u8]) -> Result<VersionEdit, String> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let mut edit = VersionEdit::default();
        if payload.is_empty() {
            return Err("empty edit".into());
        }
        while r.pos < payload.len() {
            let at = r.pos;
            let tag = r.u8()?;
            match tag {
                TAG_LAST_SEQNO | TAG_NEXT_FILE_NUMBER | TAG_LOG_NUMBER => {
                    let value = r.u64()?;
                    let slot = match tag {
                        TAG_LAST_SEQNO => &mut edit.last_seqno,
                        TAG_NEXT_FILE_NUMBER => &mut edit.next_file_number,
                        _ => &mut edit.log_number,
                    };
                    if slot.replace(value).is_some() {
                        return Err(format!("field tag {tag} repeated at payload byte {at}"));
                    }
                }
                TAG_DELETED_TABLE => {
                    let level = r.level()?;
                    let file_number = r.u64()?;
                    edit.delete_table(level, file_number);
                }
                TAG_NEW_TABLE => {
                    let level = r.level()?;
                    let file_number = r.u64()?;
                    let file_size_bytes = r.u64()?;
                    let entry_count = r.u64()?;
                    let min_seqno = r.u64()?;
                    let max_seqno = r.u64()?;
                    let smallest_key = r.key()?;
                    let largest_key = r.key()?;
                    edit.add_table(
                        level,
                        TableHandle {
                            file_number,
                            file_size_bytes,
                            smallest_key,
                            largest_key,
                            min_seqno,
                            max_seqno,
                            entry_count,
                        },
                    );
                }
                TAG_COMPACT_CURSOR => {
                    let level = r.level()?;
                    let key = r.key()?;
                    edit.set_compact_cursor(level, key);
                }
                other => return Err(format!("unknown field tag {other} at payload byte {at}")),
            }
        }
        Ok(edit)
    }
}

/// A bounds-checked cursor over a payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at payload byte {} runs past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    fn level(&mut self) -> Result<usize, String> {
        let at = self.pos;
        let level = self.u8()? as usize;
        if level >= NUM_LEVELS {
            return Err(format!("level {level} at payload byte {at} does not exist"));
        }
        Ok(level)
    }

    fn key(&mut self) -> Result<Bytes, String> {
        let at = self.pos;
        let len = self.u32()? as usize;
        if len > MAX_KEY_BYTES + TRAILER_LEN {
            return Err(format!(
                "key length {len} at payload byte {at} exceeds the limit"
            ));
        }
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::key::{encode, ValueKind};
    use proptest::prelude::*;

    fn sample() -> VersionEdit {
        let mut e = VersionEdit::default();
        e.set_last_seqno(77)
            .set_next_file_number(12)
            .set_log_number(40)
            .delete_table(0, 3)
            .delete_table(6, 4)
            .add_table(
                2,
                TableHandle {
                    file_number: 11,
                    file_size_bytes: 1 << 40,
                    smallest_key: encode(b"apple", 9, ValueKind::Put).into(),
                    largest_key: encode(b"lime", 2, ValueKind::Delete).into(),
                    min_seqno: 2,
                    max_seqno: 9,
                    entry_count: 1234,
                },
            )
            .set_compact_cursor(1, Bytes::from_static(b"kiwi"));
        e
    }

    #[test]
    fn round_trip_and_layout() {
        let e = sample();
        let mut buf = Vec::new();
        e.encode_into(&mut buf).expect("encodes");
        assert_eq!(VersionEdit::decode(&buf), Ok(e.clone()));
        // The first field: tag 1, last seqno 77.
        assert_eq!(&buf[..9], &[1, 77, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(VersionEdit::decode(&[]), Err("empty edit".into()));
        assert!(VersionEdit::default().is_empty());
        assert!(!e.is_empty());
        // Every strict prefix but the empty one fails or decodes to less.
        for cut in 1..buf.len() {
            if let Ok(shorter) = VersionEdit::decode(&buf[..cut]) {
                assert_ne!(shorter, sample(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn rejects_unknown_tags_bad_levels_and_repeats() {
        assert!(VersionEdit::decode(&[9, 0, 0]).is_err());
        assert!(VersionEdit::decode(&[TAG_DELETED_TABLE, 7, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut twice = vec![TAG_LOG_NUMBER, 1, 0, 0, 0, 0, 0, 0, 0];
        twice.extend_from_within(..);
        assert!(VersionEdit::decode(&twice).is_err());
        let mut e = VersionEdit::default();
        e.delete_table(NUM_LEVELS, 1);
        assert_eq!(e.encode_into(&mut Vec::new()), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = VersionEdit::decode(&bytes);
        }
    }
}
