//! Leveled compaction: L0 is compacted when it holds too many files, each deeper level when it
//! holds more bytes than its target; the target grows by a constant factor per level.
//!
//! # Rules
//!
//! ```text
//!   level    target                                 scored by
//!   L0       l0_compaction_trigger files (4)         files / trigger
//!   L1       base_level_bytes (64 MiB)               bytes / target
//!   L2       base_level_bytes × multiplier (640 MiB) bytes / target
//!   ...      × level_size_multiplier (10) per level
//!   L(max_levels − 1)  the bottom: never an input
//! ```
//!
//! 1. **L0 first.** If L0 holds at least `l0_compaction_trigger` tables, all of them are merged
//!    with every L1 table overlapping their combined user-key range (L0 tables overlap each
//!    other, so taking them all keeps newer versions above older ones).
//! 2. **Otherwise the fullest level.** Among L1 up to the level above the bottom, the level
//!    with the highest score `size_bytes / target_bytes`, if it is at least 1 (ties go to the
//!    shallower level). One table of it is picked **round-robin by key**: the first table
//!    whose smallest user key is above the level's compaction cursor (the largest user key of
//!    the previous compaction out of that level, kept in the [`Version`] and logged in the
//!    manifest), wrapping around to the level's first table. It is merged with the tables of
//!    the next level overlapping its range. Round-robin spreads rewrites evenly over the key
//!    space, as LevelDB's compaction pointer does.
//! 3. **Trivial move.** When the choice has a single input and nothing overlaps it in the
//!    output level, the [`Action`] is [`Action::TrivialMove`]: the file moves down unchanged.
//!    (Unlike LevelDB we do not yet refuse a move whose range overlaps very many bytes two
//!    levels down.)
//!
//! `bottommost` is set when no deeper level overlaps the compaction's key range, so the merge
//! may drop tombstones.

use bytes::Bytes;

use super::{Action, Choice, CompactionStrategy, Reason};
use crate::lsm::version::{TableHandle, Version, NUM_LEVELS};

/// Thresholds of [`Leveled`] compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeveledOptions {
    /// L0 is compacted once it holds this many tables. Default 4.
    pub l0_compaction_trigger: usize,
    /// Each level's target is this many times the one above. Default 10.
    pub level_size_multiplier: u64,
    /// Target size of L1 in bytes. Default 64 MiB.
    pub base_level_bytes: u64,
    /// Size of the tables a merge writes, in bytes. Default 64 MiB.
    pub target_table_bytes: u64,
    /// Number of levels used, 2..=[`NUM_LEVELS`]; the last is the bottom. Default 7.
    pub max_levels: usize,
}

impl Default for LeveledOptions {
    fn default() -> Self {
        LeveledOptions {
            l0_compaction_trigger: 4,
            level_size_multiplier: 10,
            base_level_bytes: 64 << 20,
            target_table_bytes: 64 << 20,
            max_levels: NUM_LEVELS,
        }
    }
}

impl LeveledOptions {
    /// `max_levels` within 2..=NUM_LEVELS.
    fn levels(&self) -> usize {
        self.max_levels.clamp(2, NUM_LEVELS)
    }
}

/// Target size in bytes of `level` (1 and deeper): `base_level_bytes ×
/// level_size_multiplier^(level − 1)`, saturating. L0 is scored by file count instead; for it
/// this returns `base_level_bytes`.
pub fn level_target_bytes(options: &LeveledOptions, level: usize) -> u64 {
    let mut target = options.base_level_bytes.max(1);
    for _ in 1..level {
        target = target.saturating_mul(options.level_size_multiplier.max(1));
    }
    target
}

/// The score of every level: L0 `tables / l0_compaction_trigger`, deeper levels
/// `size_bytes / target_bytes`, the bottom level and anything below it 0. A level with a score
/// of at least 1 needs compaction.
pub fn level_scores(version: &Version, options: &LeveledOptions) -> [f64; NUM_LEVELS] {
    let bottom = options.levels() - 1;
    std::array::from_fn(|level| {
        if level == 0 {
            version.table_count(0) as f64 / options.l0_compaction_trigger.max(1) as f64
        } else if level < bottom {
            version.level_size_bytes(level) as f64 / level_target_bytes(options, level) as f64
        } else {
            0.0
        }
    })
}

/// Leveled compaction (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leveled {
    /// Its thresholds.
    pub options: LeveledOptions,
}

impl CompactionStrategy for Leveled {
    fn name(&self) -> &'static str {
        "leveled"
    }

    fn choose(&self, version: &Version) -> Option<Choice> {
        pick(version, &self.options)
    }
}

/// The next leveled compaction for `version`, or `None` if every level is within its target.
pub fn pick(version: &Version, options: &LeveledOptions) -> Option<Choice> {
    let l0 = version.level(0);
    let trigger = options.l0_compaction_trigger.max(1);
    if l0.len() >= trigger {
        let reason = Reason::L0FileCount {
            files: l0.len(),
            trigger,
        };
        return Some(choose(version, options, 0, l0, reason));
    }

    let bottom = options.levels() - 1;
    let scores = level_scores(version, options);
    let (level, score) = (1..bottom)
        .filter_map(|level| Some((level, *scores.get(level)?)))
        .fold(
            None,
            |best: Option<(usize, f64)>, (level, score)| match best {
                Some((_, best_score)) if best_score >= score => best,
                _ => Some((level, score)),
            },
        )?;
    if score < 1.0 {
        return None;
    }
    let tables = version.level(level);
    let at = version.compact_cursor(level).map_or(0, |cursor| {
        let after = tables.partition_point(|t| t.smallest_user_key() <= cursor);
        if after < tables.len() {
            after
        } else {
            0
        }
    });
    let input = tables.get(at..=at)?;
    let reason = Reason::LevelSize {
        size_bytes: version.level_size_bytes(level),
        target_bytes: level_target_bytes(options, level),
        score,
    };
    Some(choose(version, options, level, input, reason))
}

/// A manual compaction ([`Reason::Manual`]): `inputs` of `level` merged (never moved) with the
/// tables of the next level they overlap. For L0 the caller passes every L0 table that
/// overlaps the range of interest; pass all of L0 to be safe when L0 tables overlap each other.
pub fn manual(
    version: &Version,
    options: &LeveledOptions,
    level: usize,
    inputs: &[std::sync::Arc<TableHandle>],
) -> Choice {
    let mut choice = choose(version, options, level, inputs, Reason::Manual);
    choice.action = super::Action::Merge;
    choice
}

/// The choice merging `inputs` of `level` into the next level.
fn choose(
    version: &Version,
    options: &LeveledOptions,
    level: usize,
    inputs: &[std::sync::Arc<TableHandle>],
    reason: Reason,
) -> Choice {
    let (lo, hi) = key_range(inputs.iter().map(|t| &**t));
    let output_level = level + 1;
    let overlapping = version.overlapping(output_level, &lo, &hi);
    let (range_lo, range_hi) = key_range(inputs.iter().chain(&overlapping).map(|t| &**t));
    let bottommost = ((output_level + 1)..NUM_LEVELS)
        .all(|deeper| version.overlapping(deeper, &range_lo, &range_hi).is_empty());
    let action = if inputs.len() == 1 && overlapping.is_empty() {
        Action::TrivialMove
    } else {
        Action::Merge
    };
    Choice {
        action,
        reason,
        input_level: level,
        inputs: inputs.iter().map(|t| t.file_number).collect(),
        output_level,
        overlapping: overlapping.iter().map(|t| t.file_number).collect(),
        key_range: (range_lo, range_hi),
        bottommost,
        target_table_bytes: options.target_table_bytes,
        cursor: hi,
    }
}

/// The smallest and largest user key of `tables` (empty keys if there are none).
fn key_range<'a>(tables: impl Iterator<Item = &'a TableHandle>) -> (Bytes, Bytes) {
    let mut range: Option<(&[u8], &[u8])> = None;
    for t in tables {
        let (lo, hi) = (t.smallest_user_key(), t.largest_user_key());
        range = Some(match range {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
    }
    let (lo, hi) = range.unwrap_or_default();
    (Bytes::copy_from_slice(lo), Bytes::copy_from_slice(hi))
}
