use std::collections::{BTreeSet, HashSet};

use super::*;

#[test]
fn keys_are_zero_padded() {
    assert_eq!(key_string(0), "key:000000000000");
    assert_eq!(key_string(42), "key:000000000042");
    assert_eq!(key_string(999_999_999_999), "key:999999999999");
    // Wider indices grow instead of being truncated.
    assert_eq!(key_string(1_000_000_000_000), "key:1000000000000");
    assert_eq!(key_string(u64::MAX), format!("key:{}", u64::MAX));
}

#[test]
fn write_key_appends() {
    let mut out = b"/get/".to_vec();
    write_key(&mut out, 7);
    assert_eq!(out, b"/get/key:000000000007");
}

#[test]
fn values_are_sized_printable_deterministic_and_varied() {
    let pool = ValuePool::new(100, ValueKind::Repeating);
    let again = ValuePool::new(100, ValueKind::Repeating);
    let mut distinct = BTreeSet::new();
    for i in 0..200 {
        let value = pool.value(i);
        assert_eq!(value.len(), 100);
        assert!(value.iter().all(u8::is_ascii_alphanumeric));
        assert_eq!(value, again.value(i));
        distinct.insert(value.to_vec());
    }
    assert_eq!(distinct.len(), 61);
    assert_ne!(pool.value(0), pool.value(1));
    assert!(ValuePool::new(0, ValueKind::Repeating).value(5).is_empty());
}

/// Distinct 8-byte substrings over all substrings of the values of keys
/// `0..count`: close to 1 for data a compressor cannot shorten by reference to
/// earlier bytes, tiny for repeated data.
fn distinct_8_gram_share(pool: &ValuePool, count: u64) -> f64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for i in 0..count {
        for gram in pool.value(i).windows(8) {
            total += 1;
            seen.insert(gram.to_vec());
        }
    }
    seen.len() as f64 / total.max(1) as f64
}

/// Order-0 entropy of `bytes` in bits per byte.
fn bits_per_byte(bytes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in bytes {
        if let Some(n) = counts.get_mut(usize::from(b)) {
            *n += 1;
        }
    }
    let len = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / len;
            -p * p.log2()
        })
        .sum()
}

#[test]
fn random_values_are_deterministic_per_index() {
    let pool = ValuePool::new(100, ValueKind::Random);
    let again = ValuePool::new(100, ValueKind::Random);
    assert_eq!(pool.kind(), ValueKind::Random);
    for i in (0..1_000).chain([u64::MAX / 3, u64::MAX]) {
        assert_eq!(pool.value(i).len(), 100);
        assert_eq!(pool.value(i), again.value(i), "index {i}");
        // Asking twice (or in another order) changes nothing.
        assert_eq!(pool.value(i), pool.value(i));
    }
    assert_ne!(pool.value(0), pool.value(1));
}

#[test]
fn random_values_are_nearly_all_distinct() {
    let distinct = |kind| {
        let pool = ValuePool::new(100, kind);
        (0..1_000)
            .map(|i| pool.value(i).to_vec())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let random = distinct(ValueKind::Random);
    assert!(random >= 990, "only {random} distinct values out of 1000");
    assert_eq!(distinct(ValueKind::Repeating), 61);
}

#[test]
fn random_values_are_alphanumeric_at_every_size() {
    for size in [0, 1, 7, 100, 4_096] {
        let pool = ValuePool::new(size, ValueKind::Random);
        for i in 0..500 {
            let value = pool.value(i);
            assert_eq!(value.len(), size);
            assert!(
                value.iter().all(u8::is_ascii_alphanumeric),
                "size {size}, index {i}: {value:?}"
            );
        }
    }
}

#[test]
fn random_values_do_not_compress() {
    let random = ValuePool::new(100, ValueKind::Random);
    let repeating = ValuePool::new(100, ValueKind::Repeating);

    // 10k values of 100 bytes: 930k 8-grams. Random windows into 32 MiB
    // overlap for a few hundred pairs at most, so nearly all 8-grams are new;
    // repeating values share all but ~150 of them.
    let share = distinct_8_gram_share(&random, 10_000);
    assert!(share > 0.95, "random: distinct 8-gram share {share}");
    let share = distinct_8_gram_share(&repeating, 10_000);
    assert!(share < 0.01, "repeating: distinct 8-gram share {share}");

    // Each byte is one of 62 equally likely symbols: log2 62 ≈ 5.954 bits.
    let bytes: Vec<u8> = (0..10_000).flat_map(|i| random.value(i).to_vec()).collect();
    let bits = bits_per_byte(&bytes);
    assert!(
        bits > 5.9 && bits <= 62f64.log2() + 1e-9,
        "{bits} bits/byte"
    );
}

#[test]
fn random_pool_size_follows_the_value_size() {
    assert_eq!(random_pool_len(0), RANDOM_POOL_MIN_BYTES);
    assert_eq!(random_pool_len(100), 32 << 20);
    assert_eq!(random_pool_len(8 << 10), 32 << 20);
    assert_eq!(random_pool_len(16 << 10), 64 << 20);
    assert_eq!(random_pool_len(64 << 10), RANDOM_POOL_MAX_BYTES);
    assert_eq!(
        random_pool_len(crate::options::MAX_VALUE_SIZE),
        RANDOM_POOL_MAX_BYTES
    );
    assert!(random_pool_len(crate::options::MAX_VALUE_SIZE) >= 4 * crate::options::MAX_VALUE_SIZE);
    // Larger than the cap (not reachable through validate()): still one window.
    assert_eq!(random_pool_len(300 << 20), 300 << 20);
}

#[test]
fn random_alphanumeric_is_uniform_over_the_alphabet() {
    let bytes = random_alphanumeric(1, 620_000);
    assert_eq!(bytes.len(), 620_000);
    let mut counts = [0u32; 256];
    for &b in &bytes {
        if let Some(n) = counts.get_mut(usize::from(b)) {
            *n += 1;
        }
    }
    for &symbol in ALPHABET {
        let n = counts.get(usize::from(symbol)).copied().unwrap_or(0);
        // Expected 10 000 each, standard deviation about 100 (fixed seed, so this
        // checks the generator, not luck).
        assert!(
            (9_400..10_600).contains(&n),
            "{} seen {n} times",
            symbol as char
        );
    }
    assert_eq!(counts.iter().map(|&n| u64::from(n)).sum::<u64>(), 620_000);
}

#[test]
fn splitmix_below_stays_in_range_and_spreads() {
    let mut rng = SplitMix64::new(1);
    let mut seen = [0u32; 10];
    for _ in 0..10_000 {
        let x = rng.below(10) as usize;
        assert!(x < 10);
        if let Some(slot) = seen.get_mut(x) {
            *slot += 1;
        }
    }
    assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
}

#[test]
fn sequential_shares_cover_the_keyspace_once() {
    let keyspace = 103;
    let connections = 4;
    let mut all = Vec::new();
    for c in 0..connections {
        let mut chooser = KeyChooser::new(KeyPattern::Sequential, keyspace, c, connections, 0);
        let KeyChooser::Sequential { len, .. } = chooser else {
            panic!("expected a sequential chooser");
        };
        for _ in 0..len {
            all.push(chooser.next_index());
        }
    }
    all.sort_unstable();
    assert_eq!(all, (0..keyspace).collect::<Vec<_>>());
}

#[test]
fn sequential_share_wraps() {
    let mut chooser = KeyChooser::new(KeyPattern::Sequential, 10, 1, 2, 0);
    let walked: Vec<u64> = (0..7).map(|_| chooser.next_index()).collect();
    assert_eq!(walked, [5, 6, 7, 8, 9, 5, 6]);
}

#[test]
fn more_connections_than_keys_still_yield_valid_keys() {
    for c in 0..8 {
        let mut chooser = KeyChooser::new(KeyPattern::Sequential, 3, c, 8, 0);
        for _ in 0..5 {
            assert!(chooser.next_index() < 3);
        }
    }
}

#[test]
fn random_choosers_differ_per_connection_and_stay_in_range() {
    let mut a = KeyChooser::new(KeyPattern::Random, 1000, 0, 2, 7);
    let mut b = KeyChooser::new(KeyPattern::Random, 1000, 1, 2, 7);
    let xs: Vec<u64> = (0..50).map(|_| a.next_index()).collect();
    let ys: Vec<u64> = (0..50).map(|_| b.next_index()).collect();
    assert_ne!(xs, ys);
    assert!(xs.iter().chain(&ys).all(|&k| k < 1000));
}
