//! The per-table bloom filter over **user keys**, and [`hash64`], the key hash it uses.
//!
//! # Layout (the filter block, stored uncompressed)
//!
//! ```text
//!  +-------------------------------------------+-----------------+
//!  | bit array (num_bits / 8 bytes)            | num_probes u8   |
//!  +-------------------------------------------+-----------------+
//!    bit i is bit (i % 8) of byte (i / 8)
//! ```
//!
//! With `b` bits per key (10 by default) the writer sizes the array to `max(64, n * b)` bits
//! rounded up to whole bytes, `n` being the number of distinct user keys, and uses
//! `num_probes = round(b * ln 2)` (7 for 10 bits), for about 1% false positives.
//!
//! # Probes
//!
//! `h = hash64(user_key)`; `delta = fmix64(h ^ 0x9E37_79B9_7F4A_7C15) | 1`; probe `i` (for
//! `i` in `0..num_probes`) sets/tests bit `fastrange(h + i * delta, num_bits)` with
//! wrapping arithmetic, where `fastrange(x, m) = (x * m) >> 64` computed in 128 bits (double
//! hashing after Kirsch and Mitzenmacher).
//!
//! # The hash
//!
//! [`hash64`] is our own 64-bit hash (xxhash-rust is not a storage dependency), part of the
//! on-disk format and pinned by a golden-value test: the state starts at
//! `0x1656_67B1_9E37_79F9 ^ len * 0x9E37_79B9_7F4A_7C15`; each 8-byte little-endian word `w`
//! (the last one zero-padded) is folded in as
//! `h = rotl(h ^ rotl(w * K2, 31) * K1, 27) * K1 + K3`, and the result goes through
//! MurmurHash3's `fmix64` finalizer. `K1 = 0x9E37_79B9_7F4A_7C15`, `K2 = 0xC2B2_AE3D_27D4_EB4F`,
//! `K3 = 0x1656_67B1_9E37_79F9`; all arithmetic wraps.

use bytes::Bytes;

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const K3: u64 = 0x1656_67B1_9E37_79F9;

/// Smallest bit array a filter gets.
const MIN_BITS: u64 = 64;

/// Largest number of probes a reader accepts.
pub const MAX_PROBES: u8 = 30;

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn fold(h: u64, word: u64) -> u64 {
    (h ^ word.wrapping_mul(K2).rotate_left(31).wrapping_mul(K1))
        .rotate_left(27)
        .wrapping_mul(K1)
        .wrapping_add(K3)
}

/// The 64-bit hash of `data` used by the bloom filter (stable: part of the on-disk format).
///
/// ```
/// use limedb_storage::lsm::sstable::hash64;
/// assert_eq!(hash64(b"lime"), hash64(b"lime"));
/// assert_ne!(hash64(b"lime"), hash64(b"lime\0"));
/// ```
pub fn hash64(data: &[u8]) -> u64 {
    let mut h = K3 ^ (data.len() as u64).wrapping_mul(K1);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = fold(h, u64::from_le_bytes(word));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = fold(h, u64::from_le_bytes(word));
    }
    fmix64(h)
}

fn bit_positions(hash: u64, num_probes: u8, num_bits: u64) -> impl Iterator<Item = u64> {
    let delta = fmix64(hash ^ K1) | 1;
    (0..u64::from(num_probes)).map(move |i| {
        let x = hash.wrapping_add(i.wrapping_mul(delta));
        ((u128::from(x) * u128::from(num_bits)) >> 64) as u64
    })
}

/// Number of probes for `bits_per_key`: `round(bits_per_key * ln 2)`, in `1..=MAX_PROBES`.
pub(crate) fn probes_for(bits_per_key: u32) -> u8 {
    let k = (f64::from(bits_per_key) * std::f64::consts::LN_2).round();
    (k as u8).clamp(1, MAX_PROBES)
}

/// Builds the encoded filter block for the given user-key hashes.
pub(crate) fn build(hashes: &[u64], bits_per_key: u32) -> Vec<u8> {
    let num_bits = (hashes.len() as u64)
        .saturating_mul(u64::from(bits_per_key))
        .max(MIN_BITS)
        .div_ceil(8)
        * 8;
    let num_probes = probes_for(bits_per_key);
    let mut out = vec![0u8; (num_bits / 8) as usize + 1];
    for &hash in hashes {
        for bit in bit_positions(hash, num_probes, num_bits) {
            if let Some(byte) = out.get_mut((bit / 8) as usize) {
                *byte |= 1 << (bit % 8);
            }
        }
    }
    if let Some(last) = out.last_mut() {
        *last = num_probes;
    }
    out
}

/// A decoded bloom filter.
#[derive(Clone, Debug)]
pub(crate) struct BloomFilter {
    bits: Bytes,
    num_bits: u64,
    num_probes: u8,
}

impl BloomFilter {
    /// Checks and wraps an encoded filter block.
    pub(crate) fn decode(block: Bytes) -> Result<BloomFilter, String> {
        let Some((&num_probes, bits)) = block.split_last() else {
            return Err("filter block is empty".to_string());
        };
        if num_probes == 0 || num_probes > MAX_PROBES {
            return Err(format!(
                "filter has {num_probes} probes, expected 1..={MAX_PROBES}"
            ));
        }
        let num_bits = bits.len() as u64 * 8;
        if num_bits < MIN_BITS {
            return Err(format!("filter has {num_bits} bits, fewer than {MIN_BITS}"));
        }
        let bits = block.slice(..bits.len());
        Ok(BloomFilter {
            bits,
            num_bits,
            num_probes,
        })
    }

    /// Whether `user_key` may be in the table (`false`: certainly not).
    pub(crate) fn may_contain(&self, user_key: &[u8]) -> bool {
        self.may_contain_hash(hash64(user_key))
    }

    /// [`BloomFilter::may_contain`] for a precomputed [`hash64`].
    pub(crate) fn may_contain_hash(&self, hash: u64) -> bool {
        bit_positions(hash, self.num_probes, self.num_bits).all(|bit| {
            self.bits
                .get((bit / 8) as usize)
                .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // Golden values: changing the hash breaks every filter on disk.
        assert_eq!(hash64(b""), 0xf490_368a_ba8b_feac);
        assert_eq!(hash64(b"lime"), 0x2a81_f19e_01b4_9e17);
        assert_eq!(hash64(b"0123456789abcdef!"), 0xe0ba_ab8a_3416_ff73);
    }

    #[test]
    fn ten_bits_per_key_means_seven_probes() {
        assert_eq!(probes_for(10), 7);
        assert_eq!(probes_for(1), 1);
        assert_eq!(probes_for(1000), MAX_PROBES);
    }

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let keys: Vec<Vec<u8>> = (0..100_000u32)
            .map(|i| format!("user-key-{i}").into_bytes())
            .collect();
        let hashes: Vec<u64> = keys.iter().map(|k| hash64(k)).collect();
        let filter = BloomFilter::decode(Bytes::from(build(&hashes, 10))).expect("valid");
        assert!(keys.iter().all(|k| filter.may_contain(k)));
        let false_positives = (0..100_000u32)
            .filter(|i| filter.may_contain(format!("absent-key-{i}").as_bytes()))
            .count();
        let rate = false_positives as f64 / 100_000.0;
        assert!(rate < 0.02, "false positive rate {rate}");
        assert!(rate > 0.002, "suspiciously low false positive rate {rate}");
    }

    #[test]
    fn empty_filter_rejects_everything_and_bad_blocks_are_errors() {
        let filter = BloomFilter::decode(Bytes::from(build(&[], 10))).expect("valid");
        assert!(!filter.may_contain(b"anything"));
        assert!(BloomFilter::decode(Bytes::new()).is_err());
        assert!(BloomFilter::decode(Bytes::from(vec![0u8; 9])).is_err());
        assert!(BloomFilter::decode(Bytes::from(vec![0u8, 7])).is_err());
    }
}
