//! Tests of the compaction picker: triggers, scores, round-robin, trivial moves, and a property
//! test that a choice never leaves an overlapping table out.

use std::sync::Arc;

use proptest::prelude::*;

use super::leveled::pick;
use super::*;
use crate::lsm::key::{encode, ValueKind};
use crate::lsm::version::NUM_LEVELS;

const MIB: u64 = 1 << 20;

fn table(n: u64, lo: &str, hi: &str, size: u64, seqno: u64) -> TableHandle {
    TableHandle {
        file_number: n,
        file_size_bytes: size,
        smallest_key: encode(lo.as_bytes(), seqno, ValueKind::Put).into(),
        largest_key: encode(hi.as_bytes(), seqno, ValueKind::Put).into(),
        min_seqno: seqno,
        max_seqno: seqno,
        entry_count: 1,
    }
}

/// A version with `tables` as `(level, table)`.
fn version(tables: Vec<(usize, TableHandle)>) -> Version {
    let mut edit = VersionEdit::default();
    edit.set_last_seqno(1 << 40).set_next_file_number(1 << 40);
    for (level, t) in tables {
        edit.add_table(level, t);
    }
    Version::new().apply(&edit).expect("valid test version")
}

fn opts() -> LeveledOptions {
    LeveledOptions {
        base_level_bytes: 100 * MIB,
        ..LeveledOptions::default()
    }
}

#[test]
fn defaults_and_targets() {
    let o = LeveledOptions::default();
    assert_eq!(
        (
            o.l0_compaction_trigger,
            o.level_size_multiplier,
            o.max_levels
        ),
        (4, 10, 7)
    );
    assert_eq!(
        (o.base_level_bytes, o.target_table_bytes),
        (64 * MIB, 64 * MIB)
    );
    assert_eq!(level_target_bytes(&o, 1), 64 * MIB);
    assert_eq!(level_target_bytes(&o, 3), 6400 * MIB);
    assert_eq!(Leveled::default().name(), "leveled");
}

#[test]
fn nothing_to_do_under_the_limits() {
    assert_eq!(pick(&Version::new(), &opts()), None);
    let v = version(vec![
        (0, table(1, "a", "z", MIB, 10)),
        (0, table(2, "a", "z", MIB, 11)),
        (0, table(3, "a", "z", MIB, 12)),
        (1, table(4, "a", "m", 50 * MIB, 1)),
        (1, table(5, "n", "z", 49 * MIB, 1)),
        (2, table(6, "a", "z", 999 * MIB, 1)),
        // The bottom level is never an input, however large.
        (6, table(7, "a", "z", u64::MAX / 2, 1)),
    ]);
    assert_eq!(pick(&v, &opts()), None);
    let scores = level_scores(&v, &opts());
    assert_eq!(scores[0], 0.75);
    assert!(scores[1] < 1.0 && scores[2] < 1.0);
    assert_eq!(scores[6], 0.0);
}

#[test]
fn l0_file_count_triggers_a_merge_of_all_l0_with_overlapping_l1() {
    let v = version(vec![
        (0, table(1, "c", "e", MIB, 10)),
        (0, table(2, "d", "h", MIB, 11)),
        (0, table(3, "c", "d", MIB, 12)),
        (0, table(4, "f", "g", MIB, 13)),
        (1, table(5, "a", "b", MIB, 1)),
        (1, table(6, "b1", "c", MIB, 1)),
        (1, table(7, "e", "f", MIB, 1)),
        (1, table(8, "h", "i", MIB, 1)),
        (1, table(9, "j", "k", MIB, 1)),
        (2, table(10, "a", "b", MIB, 1)),
    ]);
    let c = pick(&v, &opts()).expect("L0 is full");
    assert_eq!(
        c.reason,
        Reason::L0FileCount {
            files: 4,
            trigger: 4
        }
    );
    assert_eq!((c.input_level, c.output_level), (0, 1));
    assert_eq!(c.inputs, [4, 3, 2, 1], "newest first");
    assert_eq!(c.overlapping, [6, 7, 8]);
    assert_eq!(c.action, Action::Merge);
    assert_eq!(c.key_range, (Bytes::from("b1"), Bytes::from("i")));
    assert!(c.bottommost, "L2 holds only a..b");
    assert_eq!(c.cursor, Bytes::from("h"));
    assert_eq!(c.target_table_bytes, 64 * MIB);

    // Installing a merged output covering the range leaves a valid version.
    let out = table(100, "b1", "i", 6 * MIB, 13);
    let w = v.apply(&c.merge_edit([out])).expect("valid");
    assert_eq!(w.table_count(0), 0);
    let l1: Vec<u64> = w.level(1).iter().map(|t| t.file_number).collect();
    assert_eq!(l1, [5, 100, 9]);
    assert_eq!(c.all_file_numbers().count(), 7);
}

#[test]
fn the_level_with_the_highest_score_is_picked() {
    let v = version(vec![
        // L1: 150 / 100 = 1.5
        (1, table(1, "a", "f", 100 * MIB, 1)),
        (1, table(2, "g", "p", 50 * MIB, 1)),
        // L2: 3000 / 1000 = 3
        (2, table(3, "a", "c", 1000 * MIB, 1)),
        (2, table(4, "d", "k", 1500 * MIB, 1)),
        (2, table(5, "l", "z", 500 * MIB, 1)),
        (3, table(6, "b", "e", MIB, 1)),
        (3, table(7, "f", "m", MIB, 1)),
        (3, table(8, "n", "o", MIB, 1)),
        (4, table(9, "x", "y", MIB, 1)),
    ]);
    let c = pick(&v, &opts()).expect("over target");
    let Reason::LevelSize {
        score,
        size_bytes,
        target_bytes,
    } = c.reason
    else {
        panic!("{c:?}");
    };
    assert_eq!(
        (score, size_bytes, target_bytes),
        (3.0, 3000 * MIB, 1000 * MIB)
    );
    assert_eq!((c.input_level, c.output_level), (2, 3));
    // No cursor yet: the first table of L2.
    assert_eq!(c.inputs, [3]);
    assert_eq!(c.overlapping, [6]);
    assert_eq!(c.cursor, Bytes::from("c"));
    assert!(c.bottommost);

    // Round-robin: after recording the cursor the next pick is the following table...
    let w = v
        .apply(&c.merge_edit([table(10, "a", "e", 1000 * MIB, 1)]))
        .expect("valid");
    assert_eq!(w.compact_cursor(2), Some(&b"c"[..]));
    let c2 = pick(&w, &opts()).expect("still over target");
    assert_eq!((c2.input_level, c2.inputs.as_slice()), (2, &[4][..]));
    assert_eq!(c2.overlapping, [10, 7]);
    // ...and after the last table it wraps around.
    let mut e = VersionEdit::default();
    e.set_compact_cursor(2, Bytes::from("z"));
    let c3 = pick(&w.apply(&e).expect("valid"), &opts()).expect("over target");
    assert_eq!(c3.inputs, [4]);
    // Not bottommost when the range reaches a deeper table (L4 holds x..y).
    let c4 = pick(
        &w.apply(&{
            let mut e = VersionEdit::default();
            e.set_compact_cursor(2, Bytes::from("k"));
            e
        })
        .expect("valid"),
        &opts(),
    )
    .expect("over target");
    assert_eq!(
        (c4.inputs.as_slice(), c4.overlapping.as_slice()),
        (&[5][..], &[7, 8][..])
    );
    assert!(!c4.bottommost, "L4 holds x..y");
}

#[test]
fn a_table_without_overlap_below_is_moved() {
    let v = version(vec![
        (1, table(1, "a", "f", 150 * MIB, 1)),
        (2, table(2, "g", "z", MIB, 1)),
    ]);
    let c = pick(&v, &opts()).expect("over target");
    assert_eq!(c.action, Action::TrivialMove);
    assert_eq!((c.inputs.as_slice(), c.overlapping.len()), (&[1][..], 0));
    let edit = c.trivial_move_edit(&v).expect("a move");
    let w = v.apply(&edit).expect("valid");
    assert_eq!(w.table_count(1), 0);
    assert_eq!(
        w.find_table(1).map(|(level, t)| (level, t.file_size_bytes)),
        Some((2, 150 * MIB))
    );
    // Not a move for a merge, nor for a version that lost the table.
    assert_eq!(c.trivial_move_edit(&w), None);
    let l0 = version(vec![
        (0, table(1, "a", "b", MIB, 1)),
        (1, table(2, "a", "a", MIB, 1)),
    ]);
    let one = LeveledOptions {
        l0_compaction_trigger: 1,
        ..opts()
    };
    let merge = pick(&l0, &one).expect("L0 trigger of 1");
    assert_eq!(merge.action, Action::Merge);
    assert_eq!(merge.trivial_move_edit(&l0), None);
}

#[test]
fn max_levels_limits_the_bottom() {
    let v = version(vec![(2, table(1, "a", "z", 10_000 * MIB, 1))]);
    assert!(pick(&v, &opts()).is_some());
    let three = LeveledOptions {
        max_levels: 3,
        ..opts()
    };
    assert_eq!(pick(&v, &three), None, "L2 is the bottom of three levels");
}

/// Tables of one level: disjoint ranges over `points` (sorted, deduplicated) in pairs.
fn disjoint(points: &[u16]) -> Vec<(u16, u16)> {
    let mut sorted = points.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

fn key(k: u16) -> String {
    format!("{k:05}")
}

fn arb_version() -> impl Strategy<Value = Version> {
    let l0 = proptest::collection::vec((any::<u16>(), any::<u16>(), 1..50u64), 0..8);
    let deeper = proptest::collection::vec(
        (proptest::collection::vec(any::<u16>(), 0..24), 1..400u64),
        NUM_LEVELS - 1,
    );
    let cursors = proptest::collection::vec(proptest::option::of(any::<u16>()), NUM_LEVELS);
    (l0, deeper, cursors).prop_map(|(l0, deeper, cursors)| {
        let mut n = 0;
        let mut tables = Vec::new();
        for (i, (a, b, size)) in l0.into_iter().enumerate() {
            n += 1;
            let (lo, hi) = (a.min(b), a.max(b));
            tables.push((0, table(n, &key(lo), &key(hi), size * MIB, 1000 + i as u64)));
        }
        for (level, (points, size)) in deeper.into_iter().enumerate() {
            for (lo, hi) in disjoint(&points) {
                n += 1;
                tables.push((level + 1, table(n, &key(lo), &key(hi), size * MIB, 1)));
            }
        }
        let v = version(tables);
        let mut e = VersionEdit::default();
        for (level, c) in cursors.into_iter().enumerate() {
            if let Some(c) = c {
                e.set_compact_cursor(level, Bytes::from(key(c)));
            }
        }
        v.apply(&e).expect("cursors apply")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A choice's inputs and overlapping tables cover its key range: every table of the output
    /// level that intersects the inputs is in `overlapping`, so the merged output never
    /// overlaps a table left behind, and installing it yields a valid version.
    #[test]
    fn a_choice_covers_its_key_range(
        v in arb_version(),
        trigger in 1..6usize,
        base_mib in 1..300u64,
        multiplier in 2..12u64,
        max_levels in 2..=NUM_LEVELS,
    ) {
        let options = LeveledOptions {
            l0_compaction_trigger: trigger,
            level_size_multiplier: multiplier,
            base_level_bytes: base_mib * MIB,
            target_table_bytes: MIB,
            max_levels,
        };
        let scores = level_scores(&v, &options);
        let Some(c) = pick(&v, &options) else {
            prop_assert!(scores.iter().all(|s| *s < 1.0), "{scores:?}");
            return Ok(());
        };
        prop_assert_eq!(c.output_level, c.input_level + 1);
        prop_assert!(c.output_level < max_levels);
        prop_assert!(!c.inputs.is_empty());
        let input_tables: Vec<&Arc<TableHandle>> = v
            .level(c.input_level)
            .iter()
            .filter(|t| c.inputs.contains(&t.file_number))
            .collect();
        prop_assert_eq!(input_tables.len(), c.inputs.len(), "inputs are in the input level");
        if c.input_level == 0 {
            prop_assert_eq!(c.inputs.len(), v.table_count(0), "all of L0");
        } else {
            prop_assert_eq!(c.inputs.len(), 1);
            prop_assert!(scores[c.input_level] >= 1.0);
        }
        let in_lo = input_tables.iter().map(|t| t.smallest_user_key()).min().unwrap_or_default();
        let in_hi = input_tables.iter().map(|t| t.largest_user_key()).max().unwrap_or_default();
        for t in v.level(c.output_level) {
            let hits_input = input_tables
                .iter()
                .any(|i| t.overlaps(i.smallest_user_key(), i.largest_user_key()));
            let chosen = c.overlapping.contains(&t.file_number);
            prop_assert!(chosen || !hits_input, "table {} left out", t.file_number);
            prop_assert_eq!(chosen, t.overlaps(in_lo, in_hi), "table {}", t.file_number);
        }
        let (lo, hi) = (&c.key_range.0[..], &c.key_range.1[..]);
        for n in c.all_file_numbers() {
            let (_, t) = v.find_table(n).expect("live");
            prop_assert!(lo <= t.smallest_user_key() && t.largest_user_key() <= hi);
        }
        let deeper_overlap = ((c.output_level + 1)..NUM_LEVELS)
            .any(|l| !v.overlapping(l, lo, hi).is_empty());
        prop_assert_eq!(c.bottommost, !deeper_overlap);

        // Install: one merged table spanning the range, or the moved file.
        let edit = match c.action {
            Action::TrivialMove => c.trivial_move_edit(&v).expect("a move"),
            Action::Merge => c.merge_edit([table(
                v.next_file_number() - 1,
                &String::from_utf8_lossy(lo),
                &String::from_utf8_lossy(hi),
                MIB,
                1,
            )]),
        };
        let w = v.apply(&edit);
        prop_assert!(w.is_ok(), "{:?}", w);
    }
}
