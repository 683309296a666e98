//! Key names, value bytes and the per-connection key choice: pure and cheap,
//! so they can be unit-tested and called on the hot path.
//!
//! * Keys are `key:` followed by the index zero-padded to [`KEY_DIGITS`]
//!   digits (`key:000000000042`), the naming of the seed prototype's
//!   `bulk_set.py`. They need no JSON escaping and no percent-encoding.
//! * Values come from a [`ValuePool`]: one alphanumeric buffer generated once
//!   when the run starts; the value of key `i` is a `value_size`-byte window
//!   into it, so values are deterministic per key (same index, same bytes),
//!   need no JSON escaping, and cost nothing per request. Where the window
//!   starts depends on the [`ValueKind`]:
//!   * [`ValueKind::Repeating`] (the default): at `i % 61` in a buffer of
//!     `value_size + 61` bytes. Neighbouring keys differ, but there are only 61
//!     distinct values, all overlapping, so a storage engine compresses them
//!     to almost nothing: 1 GiB loaded is far less than 1 GiB on disk.
//!   * [`ValueKind::Random`]: at an offset given by the [`SplitMix64`] hash
//!     of `i` in a buffer of [`random_pool_len`] (at least
//!     [`RANDOM_POOL_MIN_BYTES`]) random alphanumeric bytes. Nearly every
//!     value is distinct and windows rarely overlap, so a block compressor
//!     finds nothing to share; alphanumeric bytes still carry only log2 62 ≈
//!     5.95 bits each, so expect at best ~6/8 of the loaded size on disk.
//! * [`SplitMix64`] is the PRNG (no `rand` dependency); [`KeyChooser`] turns a
//!   [`KeyPattern`] into indices for one connection.

use crate::{KeyPattern, ValueKind};

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

/// Number of distinct value windows of [`ValueKind::Repeating`].
const VALUE_WINDOWS: usize = 61;

/// Smallest buffer behind [`ValueKind::Random`] values.
pub const RANDOM_POOL_MIN_BYTES: usize = 32 << 20;

/// Largest buffer behind [`ValueKind::Random`] values (reached with values of
/// 64 KiB), so that huge values do not make the client allocate gigabytes.
pub const RANDOM_POOL_MAX_BYTES: usize = 256 << 20;

/// A [`ValueKind::Random`] buffer holds this many values side by side (when
/// that stays within [`RANDOM_POOL_MIN_BYTES`]..=[`RANDOM_POOL_MAX_BYTES`]),
/// so two windows seldom overlap.
pub const RANDOM_POOL_VALUES: usize = 4096;

/// Seed of the [`ValueKind::Repeating`] buffer (unchanged since the first version).
const REPEATING_SEED: u64 = 0x11AE_DB00_5EED;

/// Seed of the [`ValueKind::Random`] buffer.
const RANDOM_BUFFER_SEED: u64 = 0x5EED_5A1D_B0FF_0002;

/// Mixed into the key index before hashing it to a [`ValueKind::Random`] offset.
const RANDOM_OFFSET_SEED: u64 = 0x0FF5_E7ED_4B1D_CAFE;

/// Bytes of the buffer behind [`ValueKind::Random`] values of `value_size`
/// bytes: `value_size * 4096` within 32 MiB..=256 MiB, and never less than
/// `value_size`.
///
/// ```
/// use limedb_bench::keys::random_pool_len;
/// assert_eq!(random_pool_len(100), 32 << 20);
/// assert_eq!(random_pool_len(16 << 10), 64 << 20);
/// assert_eq!(random_pool_len(1 << 20), 256 << 20);
/// ```
pub fn random_pool_len(value_size: usize) -> usize {
    value_size
        .saturating_mul(RANDOM_POOL_VALUES)
        .clamp(RANDOM_POOL_MIN_BYTES, RANDOM_POOL_MAX_BYTES)
        .max(value_size)
}

/// `len` uniformly random alphanumeric bytes: each 64-bit output of the
/// generator gives ten 6-bit digits, and digits 62 and 63 are dropped, so every
/// byte is one of the 62 symbols with equal probability, independently.
fn random_alphanumeric(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut bits = rng.next_u64();
        for _ in 0..10 {
            if let Some(&c) = ALPHABET.get((bits & 63) as usize) {
                out.push(c);
            }
            bits >>= 6;
        }
    }
    out.truncate(len);
    out
}

/// Pre-generated value bytes; see the module docs.
#[derive(Debug, Clone)]
pub struct ValuePool {
    bytes: Vec<u8>,
    value_size: usize,
    kind: ValueKind,
}

impl ValuePool {
    /// Builds the pool for values of `value_size` bytes of kind `kind`.
    ///
    /// All the work happens here: [`ValueKind::Random`] generates
    /// [`random_pool_len`]`(value_size)` bytes (32 MiB for small values), which
    /// takes a few tens of milliseconds in a release build.
    pub fn new(value_size: usize, kind: ValueKind) -> ValuePool {
        let bytes = match kind {
            ValueKind::Repeating => {
                let mut rng = SplitMix64::new(REPEATING_SEED);
                (0..value_size + VALUE_WINDOWS)
                    .map(|_| {
                        let i = rng.below(ALPHABET.len() as u64) as usize;
                        ALPHABET.get(i).copied().unwrap_or(b'x')
                    })
                    .collect()
            }
            ValueKind::Random => {
                random_alphanumeric(RANDOM_BUFFER_SEED, random_pool_len(value_size))
            }
        };
        ValuePool {
            bytes,
            value_size,
            kind,
        }
    }

    /// The kind of values this pool hands out.
    pub fn kind(&self) -> ValueKind {
        self.kind
    }

    /// The value written for key `index`: `value_size` printable ASCII bytes,
    /// alphanumeric only (no JSON escaping needed), the same for the same
    /// index.
    pub fn value(&self, index: u64) -> &[u8] {
        let start = match self.kind {
            ValueKind::Repeating => (index % VALUE_WINDOWS as u64) as usize,
            ValueKind::Random => {
                let starts = (self.bytes.len().saturating_sub(self.value_size) + 1) as u64;
                SplitMix64::new(index ^ RANDOM_OFFSET_SEED).below(starts) as usize
            }
        };
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
