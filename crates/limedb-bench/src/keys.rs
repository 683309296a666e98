//! Key names, value bytes and the per-connection key choice: pure and cheap,
//! so they can be unit-tested and called on the hot path.
//!
//! * Keys are `key:` followed by the index zero-padded to [`KEY_DIGITS`]
//!   digits (`key:000000000042`), the naming of the seed prototype's
//!   `bulk_set.py`. They need no JSON escaping and no percent-encoding.
//! * Values come from a [`ValuePool`]: one alphanumeric buffer generated once;
//!   the value of key `i` is a window into it starting at `i % 61`, so values
//!   are deterministic, differ between neighbouring keys, and cost nothing to
//!   produce.
//! * [`SplitMix64`] is the PRNG (no `rand` dependency); [`KeyChooser`] turns a
//!   [`KeyPattern`] into indices for one connection.

use crate::KeyPattern;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "key:";

/// Minimum digits of the key index (zero-padded).
pub const KEY_DIGITS: usize = 12;

/// Appends the key with index `index` to `out` without allocating a `String`.
///
/// ```
/// let mut out = Vec::new();
/// limedb_bench::keys::write_key(&mut out, 42);
/// assert_eq!(out, b"key:000000000042");
/// ```
pub fn write_key(out: &mut Vec<u8>, index: u64) {
    out.extend_from_slice(KEY_PREFIX.as_bytes());
    let mut digits = [0u8; 20];
    let mut n = index;
    let mut len = 0;
    loop {
        // Filled from the right; `len < 20` always holds for a u64.
        let slot = digits.len() - 1 - len;
        if let Some(d) = digits.get_mut(slot) {
            *d = b'0' + (n % 10) as u8;
        }
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in len..KEY_DIGITS {
        out.push(b'0');
    }
    if let Some(tail) = digits.get(digits.len() - len..) {
        out.extend_from_slice(tail);
    }
}

/// The key with index `index` as a `String` (for tests and tools).
pub fn key_string(index: u64) -> String {
    let mut out = Vec::with_capacity(KEY_PREFIX.len() + KEY_DIGITS);
    write_key(&mut out, index);
    String::from_utf8_lossy(&out).into_owned()
}

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Number of distinct value windows.
const VALUE_WINDOWS: usize = 61;

/// Pre-generated value bytes; see the module docs.
#[derive(Debug, Clone)]
pub struct ValuePool {
    bytes: Vec<u8>,
    value_size: usize,
}

impl ValuePool {
    /// Builds the pool for values of `value_size` bytes.
    pub fn new(value_size: usize) -> ValuePool {
        let mut rng = SplitMix64::new(0x11AE_DB00_5EED);
        let bytes = (0..value_size + VALUE_WINDOWS)
            .map(|_| {
                let i = rng.below(ALPHABET.len() as u64) as usize;
                ALPHABET.get(i).copied().unwrap_or(b'x')
            })
            .collect();
        ValuePool { bytes, value_size }
    }

    /// The value written for key `index`: `value_size` printable ASCII bytes,
    /// alphanumeric only (no JSON escaping needed).
    pub fn value(&self, index: u64) -> &[u8] {
        let start = (index % VALUE_WINDOWS as u64) as usize;
        self.bytes
            .get(start..start + self.value_size)
            .unwrap_or_default()
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, good enough for key choice.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `0..n` (Lemire's multiply-shift; `n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Picks key indices for one connection.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Walk `start..start + len` in order, wrapping.
    Sequential {
        /// First index of this connection's share.
        start: u64,
        /// Size of the share (at least 1).
        len: u64,
        /// Offset of the next key within the share.
        next: u64,
    },
    /// Uniform over `0..keyspace`.
    Random {
        /// Seeded per connection.
        rng: SplitMix64,
        /// Number of keys.
        keyspace: u64,
    },
}

impl KeyChooser {
    /// The chooser of connection `connection` out of `connections`.
    ///
    /// Sequential shares split the keyspace into contiguous, nearly equal
    /// ranges; when there are more connections than keys they overlap.
    pub fn new(
        pattern: KeyPattern,
        keyspace: u64,
        connection: usize,
        connections: usize,
        seed: u64,
    ) -> KeyChooser {
        let keyspace = keyspace.max(1);
        let (i, c) = (connection as u128, connections.max(1) as u128);
        match pattern {
            KeyPattern::Sequential => {
                let lo = (i * u128::from(keyspace) / c) as u64;
                let hi = ((i + 1) * u128::from(keyspace) / c) as u64;
                KeyChooser::Sequential {
                    start: lo % keyspace,
                    len: hi.saturating_sub(lo).max(1),
                    next: 0,
                }
            }
            KeyPattern::Random => KeyChooser::Random {
                rng: SplitMix64::new(
                    seed ^ (connection as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                ),
                keyspace,
            },
        }
    }

    /// Next key index.
    pub fn next_index(&mut self) -> u64 {
        match self {
            KeyChooser::Sequential { start, len, next } => {
                let index = *start + *next;
                *next = (*next + 1) % *len;
                index
            }
            KeyChooser::Random { rng, keyspace } => rng.below(*keyspace),
        }
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
