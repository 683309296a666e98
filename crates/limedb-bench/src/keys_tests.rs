use std::collections::BTreeSet;

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
    let pool = ValuePool::new(100);
    let again = ValuePool::new(100);
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
    assert!(ValuePool::new(0).value(5).is_empty());
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
