//! Internal keys: what the LSM tree sorts by.
//!
//! Every version of a user key is stored under an *internal key*: the user key, the sequence
//! number of the write that produced it, and its kind (a put or a deletion tombstone). Internal
//! keys sort by user key ascending, then by sequence number **descending**, so that for one user
//! key the newest version comes first and a read at snapshot `s` takes the first version with
//! `seqno <= s`.
//!
//! # Encoding
//!
//! ```text
//! +---------------------+--------------------------------------------+
//! | user key (n bytes)  | trailer: u64 little-endian                  |
//! |                     |   = (seqno << 8) | kind                     |
//! +---------------------+--------------------------------------------+
//! ```
//!
//! `seqno` has 56 bits ([`MAX_SEQNO`]); `kind` is one byte ([`ValueKind`]). Encoded keys must
//! be compared with [`compare_encoded`], not byte-wise: a user key that is a prefix of another
//! would otherwise compare by its trailer.

use std::cmp::Ordering;

/// Largest sequence number: 56 bits.
pub const MAX_SEQNO: u64 = (1 << 56) - 1;

/// Bytes of the trailer after the user key.
pub const TRAILER_LEN: usize = 8;

/// What an internal key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ValueKind {
    /// A deletion tombstone: the user key is absent from this sequence number on.
    Delete = 0,
    /// A value.
    Put = 1,
}

impl ValueKind {
    /// The kind encoded as `byte`, if it is one.
    pub fn from_u8(byte: u8) -> Option<ValueKind> {
        match byte {
            0 => Some(ValueKind::Delete),
            1 => Some(ValueKind::Put),
            _ => None,
        }
    }
}

/// Packs a sequence number and a kind into a trailer. `seqno` is masked to 56 bits.
pub fn pack_trailer(seqno: u64, kind: ValueKind) -> u64 {
    ((seqno & MAX_SEQNO) << 8) | kind as u64
}

/// An internal key borrowed from an encoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InternalKeyRef<'a> {
    /// The user key.
    pub user_key: &'a [u8],
    /// Sequence number of the write.
    pub seqno: u64,
    /// Put or tombstone.
    pub kind: ValueKind,
}

impl<'a> InternalKeyRef<'a> {
    /// Splits an encoded internal key; `None` if it is shorter than a trailer or its kind byte
    /// is unknown (corruption).
    pub fn decode(encoded: &'a [u8]) -> Option<InternalKeyRef<'a>> {
        let split = encoded.len().checked_sub(TRAILER_LEN)?;
        let (user_key, trailer) = encoded.split_at(split);
        let trailer = u64::from_le_bytes(trailer.try_into().ok()?);
        Some(InternalKeyRef {
            user_key,
            seqno: trailer >> 8,
            kind: ValueKind::from_u8((trailer & 0xff) as u8)?,
        })
    }

    /// Appends the encoding to `dst`.
    pub fn encode_into(&self, dst: &mut Vec<u8>) {
        encode_into(dst, self.user_key, self.seqno, self.kind);
    }
}

/// Appends the internal key `(user_key, seqno, kind)` to `dst`.
pub fn encode_into(dst: &mut Vec<u8>, user_key: &[u8], seqno: u64, kind: ValueKind) {
    dst.reserve(user_key.len() + TRAILER_LEN);
    dst.extend_from_slice(user_key);
    dst.extend_from_slice(&pack_trailer(seqno, kind).to_le_bytes());
}

/// The encoded internal key `(user_key, seqno, kind)`.
pub fn encode(user_key: &[u8], seqno: u64, kind: ValueKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    encode_into(&mut out, user_key, seqno, kind);
    out
}

/// The user key of an encoded internal key (all of it if it is too short to have a trailer).
pub fn user_key(encoded: &[u8]) -> &[u8] {
    &encoded[..encoded.len().saturating_sub(TRAILER_LEN)]
}

/// The 8-byte trailer (sequence number and kind) of an encoded internal key, read as if
/// zero-padded when the key is too short to have one.
pub(crate) fn trailer(encoded: &[u8]) -> u64 {
    let start = encoded.len().saturating_sub(TRAILER_LEN);
    let mut bytes = [0u8; TRAILER_LEN];
    let tail = &encoded[start..];
    bytes[..tail.len()].copy_from_slice(tail);
    u64::from_le_bytes(bytes)
}

/// The order prefix of a user key: its first 16 bytes, zero-padded, as a big-endian pair of
/// words. Comparing two prefixes settles most key comparisons without touching the keys'
/// bytes (the memtable's skiplist and the tables' in-memory indexes keep one beside each
/// key): when the prefixes differ, the first differing byte among the first 16 decides the
/// byte-wise order of the keys too (a key that ends early pads with 0, which is never above
/// the other key's byte there); when they are equal, the whole keys must be compared.
pub fn order_prefix(user_key: &[u8]) -> [u64; 2] {
    let mut bytes = [0u8; 16];
    let n = user_key.len().min(16);
    if let (Some(dst), Some(src)) = (bytes.get_mut(..n), user_key.get(..n)) {
        dst.copy_from_slice(src);
    }
    let (hi, lo) = bytes.split_at(8);
    let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    [word(hi), word(lo)]
}

/// The order of encoded internal keys: user key ascending, then trailer (sequence number, then
/// kind) descending.
pub fn compare_encoded(a: &[u8], b: &[u8]) -> Ordering {
    user_key(a)
        .cmp(user_key(b))
        .then_with(|| trailer(b).cmp(&trailer(a)))
}

/// The smallest encoded internal key of `user_key` visible at snapshot `seqno`: seeking to it
/// lands on the newest version with a sequence number `<= seqno`.
pub fn seek_key(user_key: &[u8], seqno: u64) -> Vec<u8> {
    // Put (1) sorts before Delete (0) at the same seqno, so use the largest kind.
    encode(user_key, seqno.min(MAX_SEQNO), ValueKind::Put)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The prefix never contradicts the byte-wise order: short keys, zero bytes and keys
        /// that share their first 16 bytes included.
        #[test]
        fn order_prefix_agrees_with_the_key_order(
            a in proptest::collection::vec(0u8..3, 0..20),
            b in proptest::collection::vec(0u8..3, 0..20),
        ) {
            let by_prefix = order_prefix(&a).cmp(&order_prefix(&b));
            prop_assert!(by_prefix == Ordering::Equal || by_prefix == a.cmp(&b));
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let k = encode(b"lime", 0x01_0203, ValueKind::Put);
        assert_eq!(&k[..4], b"lime");
        assert_eq!(&k[4..], &((0x01_0203u64 << 8) | 1).to_le_bytes());
        let r = InternalKeyRef::decode(&k).expect("decodes");
        assert_eq!(
            (r.user_key, r.seqno, r.kind),
            (&b"lime"[..], 0x01_0203, ValueKind::Put)
        );
        assert_eq!(InternalKeyRef::decode(b"short"), None);
        let mut bad = encode(b"k", 1, ValueKind::Put);
        let last = bad.len() - TRAILER_LEN;
        bad[last] = 7; // unknown kind
        assert_eq!(InternalKeyRef::decode(&bad), None);
    }

    #[test]
    fn newest_version_first_and_prefixes_sort_by_user_key() {
        let mut keys = [
            encode(b"ab", 1, ValueKind::Put),
            encode(b"a", 1, ValueKind::Put),
            encode(b"a", 9, ValueKind::Delete),
            encode(b"a", 5, ValueKind::Put),
            encode(b"", 3, ValueKind::Put),
        ];
        keys.sort_by(|a, b| compare_encoded(a, b));
        let decoded: Vec<(Vec<u8>, u64)> = keys
            .iter()
            .map(|k| {
                let r = InternalKeyRef::decode(k).expect("valid");
                (r.user_key.to_vec(), r.seqno)
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                (b"".to_vec(), 3),
                (b"a".to_vec(), 9),
                (b"a".to_vec(), 5),
                (b"a".to_vec(), 1),
                (b"ab".to_vec(), 1),
            ]
        );
    }

    #[test]
    fn seek_key_finds_the_newest_visible_version() {
        let seek = seek_key(b"a", 5);
        assert_eq!(
            compare_encoded(&seek, &encode(b"a", 5, ValueKind::Put)),
            Ordering::Equal
        );
        assert_eq!(
            compare_encoded(&seek, &encode(b"a", 5, ValueKind::Delete)),
            Ordering::Less
        );
        assert_eq!(
            compare_encoded(&seek, &encode(b"a", 6, ValueKind::Put)),
            Ordering::Greater
        );
        assert_eq!(
            compare_encoded(&seek, &encode(b"a", 4, ValueKind::Put)),
            Ordering::Less
        );
    }

    proptest! {
        #[test]
        fn order_matches_the_tuple_order(
            a in (proptest::collection::vec(any::<u8>(), 0..6), 0..=MAX_SEQNO, any::<bool>()),
            b in (proptest::collection::vec(any::<u8>(), 0..6), 0..=MAX_SEQNO, any::<bool>()),
        ) {
            let kind = |put: bool| if put { ValueKind::Put } else { ValueKind::Delete };
            let ea = encode(&a.0, a.1, kind(a.2));
            let eb = encode(&b.0, b.1, kind(b.2));
            let expected = a.0.cmp(&b.0)
                .then_with(|| b.1.cmp(&a.1))
                .then_with(|| (kind(b.2) as u8).cmp(&(kind(a.2) as u8)));
            prop_assert_eq!(compare_encoded(&ea, &eb), expected);
        }
    }
}
