//! Compaction *decisions*: which tables to merge into which level next. Pure code, no I/O: a
//! strategy looks at a [`Version`] and returns a [`Choice`]; a worker (coming with the engine)
//! acts on it, merging the tables or moving a file, and installs the result through the
//! [manifest](crate::lsm::manifest) with the edit [`Choice::merge_edit`] or
//! [`Choice::trivial_move_edit`] builds.
//!
//! - [`leveled`]: leveled compaction, L0 triggered by file count, deeper levels by size.
//!
//! Strategies assume one compaction at a time: a worker asks for the next choice only once the
//! previous one is installed (or abandoned).
//!
//! # Example
//!
//! ```
//! use limedb_storage::lsm::compaction::{Action, CompactionStrategy, Leveled};
//! use limedb_storage::lsm::key::{encode, ValueKind};
//! use limedb_storage::lsm::manifest::VersionEdit;
//! use limedb_storage::lsm::version::{TableHandle, Version};
//!
//! // Four flushed tables in L0 reach the default trigger.
//! let mut edit = VersionEdit::default();
//! edit.set_last_seqno(4).set_next_file_number(5);
//! for n in 1..=4u64 {
//!     edit.add_table(0, TableHandle {
//!         file_number: n,
//!         file_size_bytes: 1 << 20,
//!         smallest_key: encode(b"a", n, ValueKind::Put).into(),
//!         largest_key: encode(b"z", n, ValueKind::Put).into(),
//!         min_seqno: n,
//!         max_seqno: n,
//!         entry_count: 1,
//!     });
//! }
//! let version = Version::new().apply(&edit)?;
//! let choice = Leveled::default().choose(&version).expect("L0 is full");
//! assert_eq!((choice.input_level, choice.output_level), (0, 1));
//! assert_eq!(choice.inputs, [4, 3, 2, 1]);
//! assert_eq!(choice.action, Action::Merge);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod leveled;

use bytes::Bytes;

use crate::lsm::manifest::VersionEdit;
use crate::lsm::version::{TableHandle, Version};

pub use leveled::{level_scores, level_target_bytes, Leveled, LeveledOptions};

/// A compaction strategy: looks at a version, says what to compact next, if anything.
pub trait CompactionStrategy {
    /// A short name for logs and statistics.
    fn name(&self) -> &'static str;

    /// The next compaction for `version`, or `None` if the tree is in shape.
    fn choose(&self, version: &Version) -> Option<Choice>;
}

/// What the worker does with a [`Choice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Merge the inputs and the overlapping tables into new tables in the output level,
    /// dropping shadowed versions (and tombstones, if [`Choice::bottommost`]).
    Merge,
    /// The single input overlaps nothing in the output level: move its file there without
    /// rewriting it (only the manifest changes).
    TrivialMove,
}

/// Why a compaction was chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// L0 holds `files` tables, at least the trigger.
    L0FileCount {
        /// Tables in L0.
        files: usize,
        /// The trigger ([`LeveledOptions::l0_compaction_trigger`]).
        trigger: usize,
    },
    /// The input level holds more bytes than its target: `score = size_bytes / target_bytes`.
    LevelSize {
        /// Bytes in the input level.
        size_bytes: u64,
        /// Its target size.
        target_bytes: u64,
        /// `size_bytes / target_bytes`, at least 1.
        score: f64,
    },
    /// Asked for by `LsmEngine::compact_range`.
    Manual,
}

/// One compaction to run: tables of `input_level` merged with the tables of `output_level`
/// they overlap.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Merge or trivial move.
    pub action: Action,
    /// Why it was chosen.
    pub reason: Reason,
    /// The level the inputs come from.
    pub input_level: usize,
    /// File numbers of the input tables (in level order: L0 newest first).
    pub inputs: Vec<u64>,
    /// The level the result goes to: `input_level + 1`.
    pub output_level: usize,
    /// File numbers of the tables of `output_level` whose user-key range intersects the
    /// inputs' range: every one of them, and no other (they are rewritten too).
    pub overlapping: Vec<u64>,
    /// Smallest and largest user key of inputs and overlapping tables together.
    pub key_range: (Bytes, Bytes),
    /// No level below `output_level` holds a table overlapping `key_range`, so the merge may
    /// drop tombstones (and versions no snapshot can see).
    pub bottommost: bool,
    /// Cut merge output into tables of about this many bytes (never splitting a user key).
    pub target_table_bytes: u64,
    /// The compaction cursor of `input_level` to record with the result: the largest user key
    /// of the inputs. The next compaction out of that level starts after it.
    pub cursor: Bytes,
}

impl Choice {
    /// Every table the compaction reads: inputs, then overlapping.
    pub fn all_file_numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.inputs.iter().chain(&self.overlapping).copied()
    }

    /// The edit that installs a finished merge: deletes every input and overlapping table,
    /// adds `outputs` to the output level and records the cursor. The caller adds the counters
    /// (or lets the manifest set the next file number).
    pub fn merge_edit(&self, outputs: impl IntoIterator<Item = TableHandle>) -> VersionEdit {
        let mut edit = VersionEdit::default();
        for &n in &self.inputs {
            edit.delete_table(self.input_level, n);
        }
        for &n in &self.overlapping {
            edit.delete_table(self.output_level, n);
        }
        for table in outputs {
            edit.add_table(self.output_level, table);
        }
        edit.set_compact_cursor(self.input_level, self.cursor.clone());
        edit
    }

    /// The edit that performs a trivial move on `version` (the version the choice was made
    /// from): the input's handle deleted from the input level and added to the output level.
    /// `None` if this is not a trivial move or the input is no longer in `version`.
    pub fn trivial_move_edit(&self, version: &Version) -> Option<VersionEdit> {
        let [n] = self.inputs.as_slice() else {
            return None;
        };
        if self.action != Action::TrivialMove {
            return None;
        }
        let table = version
            .level(self.input_level)
            .iter()
            .find(|t| t.file_number == *n)?;
        Some(self.merge_edit([TableHandle::clone(table)]))
    }
}

#[cfg(test)]
mod tests;
