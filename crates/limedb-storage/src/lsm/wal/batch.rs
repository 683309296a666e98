//! [`WriteBatch`] and the pure codec of one WAL record (see the [format](super#format)).

use bytes::Bytes;

use crate::lsm::key::{ValueKind, MAX_SEQNO};
use crate::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Bytes of a record header: `payload_len u32 | crc32c u32`.
pub(crate) const RECORD_HEADER_LEN: usize = 8;

/// Bytes of the batch header that opens every payload: `first_seqno u64 | count u32`.
pub(crate) const BATCH_HEADER_LEN: usize = 12;

/// Smallest encoded operation: a delete of the empty key (`kind u8 | key_len u32`).
const MIN_OP_LEN: usize = 5;

/// Smallest valid payload: a batch of one delete of the empty key.
pub(crate) const MIN_PAYLOAD_LEN: usize = BATCH_HEADER_LEN + MIN_OP_LEN;

/// Largest payload a record can frame (its length field is a `u32`).
pub const MAX_PAYLOAD_BYTES: u64 = u32::MAX as u64;

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The user key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Delete `key` (write a tombstone).
    Delete {
        /// The user key.
        key: Bytes,
    },
}

impl BatchOp {
    /// The user key.
    pub fn key(&self) -> &Bytes {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }

    /// The value of a put; `None` for a delete.
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            BatchOp::Put { value, .. } => Some(value),
            BatchOp::Delete { .. } => None,
        }
    }

    /// The bytes a memtable stores for this operation: a put's value, nothing for a delete.
    pub fn stored_value(&self) -> &[u8] {
        self.value().map_or(&[], |v| v)
    }

    /// Put or tombstone.
    pub fn kind(&self) -> ValueKind {
        match self {
            BatchOp::Put { .. } => ValueKind::Put,
            BatchOp::Delete { .. } => ValueKind::Delete,
        }
    }

    /// Bytes this operation takes in a record payload.
    fn encoded_len(&self) -> u64 {
        match self {
            BatchOp::Put { key, value } => 1 + 4 + key.len() as u64 + 4 + value.len() as u64,
            BatchOp::Delete { key } => 1 + 4 + key.len() as u64,
        }
    }
}

/// An ordered list of puts and deletes that the WAL logs as one record and so applies
/// atomically: after a crash either all of it is replayed or none. Each operation gets its own
/// sequence number, in order, so a later operation on the same key wins.
///
/// ```
/// use limedb_storage::lsm::wal::WriteBatch;
///
/// let mut batch = WriteBatch::new();
/// batch.put("lime", "green").delete("lemon");
/// assert_eq!(batch.len(), 2);
/// // kind + key_len + key + value_len + value, then kind + key_len + key
/// assert_eq!(batch.size_bytes(), (1 + 4 + 4 + 4 + 5) + (1 + 4 + 5));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    size_bytes: u64,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a put of `key` = `value`.
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> &mut Self {
        self.push(BatchOp::Put {
            key: key.into(),
            value: value.into(),
        })
    }

    /// Appends a delete of `key`.
    pub fn delete(&mut self, key: impl Into<Bytes>) -> &mut Self {
        self.push(BatchOp::Delete { key: key.into() })
    }

    /// Appends an operation.
    pub fn push(&mut self, op: BatchOp) -> &mut Self {
        self.size_bytes += op.encoded_len();
        self.ops.push(op);
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes the operations take in a WAL record, excluding the 20 bytes of record and batch
    /// headers: per operation 5 bytes plus the key, and for a put 4 more plus the value.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The operations in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Removes every operation.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.size_bytes = 0;
    }

    /// Appends the framed record (header and payload) of this batch with sequence numbers
    /// `first_seqno..first_seqno + len` to `out`. The caller has checked [`check_batch`].
    pub(crate) fn encode_record(&self, first_seqno: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(RECORD_HEADER_LEN + BATCH_HEADER_LEN + self.size_bytes as usize);
        out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        out.extend_from_slice(&first_seqno.to_le_bytes());
        out.extend_from_slice(&len_u32(self.ops.len()).to_le_bytes());
        for op in &self.ops {
            out.push(op.kind() as u8);
            out.extend_from_slice(&len_u32(op.key().len()).to_le_bytes());
            out.extend_from_slice(op.key());
            if let BatchOp::Put { value, .. } = op {
                out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
                out.extend_from_slice(value);
            }
        }
        let payload = out.get(start + RECORD_HEADER_LEN..).unwrap_or_default();
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[..4].copy_from_slice(&len_u32(payload.len()).to_le_bytes());
        header[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        if let Some(slot) = out.get_mut(start..start + RECORD_HEADER_LEN) {
            slot.copy_from_slice(&header);
        }
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Why a batch cannot be logged: the error [`super::Wal::append`] returns.
pub(crate) fn check_batch(batch: &WriteBatch) -> crate::Result<()> {
    for op in batch.ops() {
        if op.key().len() > MAX_KEY_BYTES {
            return Err(crate::StorageError::KeyTooLarge {
                len: op.key().len(),
                max: MAX_KEY_BYTES,
            });
        }
        if let Some(value) = op.value() {
            if value.len() > MAX_VALUE_BYTES {
                return Err(crate::StorageError::ValueTooLarge {
                    len: value.len(),
                    max: MAX_VALUE_BYTES,
                });
            }
        }
    }
    let payload = BATCH_HEADER_LEN as u64 + batch.size_bytes();
    if payload > MAX_PAYLOAD_BYTES {
        // No better variant: the batch as a whole is the "value" that does not fit a record.
        return Err(crate::StorageError::ValueTooLarge {
            len: usize::try_from(payload).unwrap_or(usize::MAX),
            max: MAX_PAYLOAD_BYTES as usize,
        });
    }
    Ok(())
}

/// A write batch read back from the WAL on open, with the sequence number of its first
/// operation (operation `i` has `first_seqno + i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredBatch {
    /// Sequence number of the first operation.
    pub first_seqno: u64,
    /// The operations; keys and values share the buffer the segment was read into.
    pub batch: WriteBatch,
}

impl RecoveredBatch {
    /// Sequence number of the last operation.
    pub fn last_seqno(&self) -> u64 {
        self.first_seqno + (self.batch.len() as u64).saturating_sub(1)
    }

    /// The operations with their sequence numbers.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &BatchOp)> + '_ {
        (self.first_seqno..).zip(self.batch.ops())
    }
}

/// A bounds-checked reader over a payload that hands out zero-copy slices.
struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} needs {n} bytes but only {} remain in the payload",
                self.remaining()
            ));
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let b = self.take(N, what)?;
        <[u8; N]>::try_from(b.as_ref()).map_err(|_| format!("{what} is truncated"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
}

/// Decodes a record payload whose CRC has been checked. Pure: never panics; checks every
/// count and length against the bytes present (and the format limits) before allocating.
pub(crate) fn decode_payload(payload: &Bytes) -> Result<RecoveredBatch, String> {
    let mut r = Cursor {
        buf: payload,
        pos: 0,
    };
    let first_seqno = u64::from_le_bytes(r.array("first seqno")?);
    let count = r.u32("operation count")? as usize;
    if count == 0 {
        return Err("batch has no operations".into());
    }
    if count > r.remaining() / MIN_OP_LEN {
        return Err(format!(
            "operation count {count} cannot fit in the {} bytes that remain",
            r.remaining()
        ));
    }
    let last = first_seqno.checked_add(count as u64 - 1);
    if first_seqno == 0 || last.is_none_or(|last| last > MAX_SEQNO) {
        return Err(format!(
            "sequence numbers {first_seqno}+{count} are outside 1..={MAX_SEQNO}"
        ));
    }
    let mut batch = WriteBatch {
        ops: Vec::with_capacity(count),
        size_bytes: 0,
    };
    for i in 0..count {
        let [kind] = r.array::<1>("operation kind")?;
        let key_len = r.u32("key length")? as usize;
        if key_len > MAX_KEY_BYTES {
            return Err(format!(
                "operation {i}: key length {key_len} exceeds the limit of {MAX_KEY_BYTES}"
            ));
        }
        let key = r.take(key_len, "key")?;
        let op = match ValueKind::from_u8(kind) {
            Some(ValueKind::Put) => {
                let value_len = r.u32("value length")? as usize;
                if value_len > MAX_VALUE_BYTES {
                    return Err(format!(
                        "operation {i}: value length {value_len} exceeds the limit of \
                         {MAX_VALUE_BYTES}"
                    ));
                }
                BatchOp::Put {
                    key,
                    value: r.take(value_len, "value")?,
                }
            }
            Some(ValueKind::Delete) => BatchOp::Delete { key },
            None => return Err(format!("operation {i}: unknown kind {kind}")),
        };
        batch.push(op);
    }
    if r.remaining() != 0 {
        return Err(format!(
            "{} trailing bytes after the last operation",
            r.remaining()
        ));
    }
    Ok(RecoveredBatch { first_seqno, batch })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(batch: &WriteBatch, first_seqno: u64) -> Bytes {
        let mut buf = Vec::new();
        batch.encode_record(first_seqno, &mut buf);
        Bytes::from(buf).slice(RECORD_HEADER_LEN..)
    }

    #[test]
    fn round_trips_and_frames() -> Result<(), String> {
        let mut batch = WriteBatch::new();
        batch
            .put("k", "value")
            .delete("gone")
            .put("", "")
            .put("k", "again");
        let mut buf = Vec::new();
        batch.encode_record(42, &mut buf);
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        assert_eq!(len, buf.len() - RECORD_HEADER_LEN);
        assert_eq!(len as u64, BATCH_HEADER_LEN as u64 + batch.size_bytes());
        assert_eq!(crc, crc32c::crc32c(&buf[RECORD_HEADER_LEN..]));
        let back = decode_payload(&payload_of(&batch, 42))?;
        assert_eq!(back.first_seqno, 42);
        assert_eq!(back.last_seqno(), 45);
        assert_eq!(back.batch, batch);
        let seqnos: Vec<u64> = back.iter().map(|(s, _)| s).collect();
        assert_eq!(seqnos, vec![42, 43, 44, 45]);
        Ok(())
    }

    #[test]
    fn rejects_malformed_payloads_without_panicking() {
        let mut one = WriteBatch::new();
        one.put("k", "v");
        let good = payload_of(&one, 1).to_vec();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "first seqno"),
            (good[..BATCH_HEADER_LEN].to_vec(), "cannot fit"),
            (good[..good.len() - 1].to_vec(), "value needs"),
            ([&good[..], b"x"].concat(), "trailing"),
        ];
        let mut zero_count = good.clone();
        zero_count[8..12].copy_from_slice(&0u32.to_le_bytes());
        cases.push((zero_count, "no operations"));
        let mut huge_count = good.clone();
        huge_count[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push((huge_count, "cannot fit"));
        let mut seqno_zero = good.clone();
        seqno_zero[..8].copy_from_slice(&0u64.to_le_bytes());
        cases.push((seqno_zero, "outside"));
        let mut seqno_huge = good.clone();
        seqno_huge[..8].copy_from_slice(&(MAX_SEQNO + 1).to_le_bytes());
        cases.push((seqno_huge, "outside"));
        let mut bad_kind = good.clone();
        bad_kind[12] = 7;
        cases.push((bad_kind, "unknown kind"));
        let mut huge_key = good.clone();
        huge_key[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push((huge_key, "exceeds the limit"));
        let mut long_key = good;
        long_key[13..17].copy_from_slice(&100u32.to_le_bytes());
        cases.push((long_key, "key needs"));
        for (case, want) in cases {
            let err = decode_payload(&Bytes::from(case.clone())).err();
            assert!(
                err.as_deref().is_some_and(|e| e.contains(want)),
                "{case:?}: {err:?} should mention {want:?}"
            );
        }
    }

    #[test]
    fn check_batch_enforces_the_limits() {
        let mut big_key = WriteBatch::new();
        big_key.delete(vec![0u8; MAX_KEY_BYTES + 1]);
        assert!(matches!(
            check_batch(&big_key),
            Err(crate::StorageError::KeyTooLarge { .. })
        ));
        let mut ok = WriteBatch::new();
        ok.put(vec![0u8; 16], vec![0u8; 16]);
        assert!(check_batch(&ok).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let _ = decode_payload(&Bytes::from(bytes));
        }

        #[test]
        fn arbitrary_batches_round_trip(
            ops in proptest::collection::vec(
                (proptest::bool::ANY,
                 proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                 proptest::collection::vec(proptest::num::u8::ANY, 0..12)),
                1..20),
            first in 1u64..1_000_000,
        ) {
            let mut batch = WriteBatch::new();
            for (put, k, v) in ops {
                if put { batch.put(k, v); } else { batch.delete(k); }
            }
            let back = decode_payload(&payload_of(&batch, first));
            proptest::prop_assert_eq!(back, Ok(RecoveredBatch { first_seqno: first, batch }));
        }
    }
}
