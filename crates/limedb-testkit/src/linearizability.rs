//! Linearizability checking for histories of register operations recorded by process-level
//! tests.
//!
//! # What this module owns
//!
//! Tests that drive LimeDB through its coordinator with concurrent clients, while processes are
//! killed, paused or cut off, record every operation they performed in a [`History`]: when it was
//! invoked, when its answer arrived (if it did) and what the answer was. [`check`] decides
//! whether that history is *linearizable*: whether one total order of the operations exists that
//! respects real time (an operation that completed before another was invoked comes first) and in
//! which every read returns the value of the latest write before it, as if each key were a
//! single register in a single-threaded program. When it is not, the [`Violation`] says which
//! key failed, how far the search got and which operations could not come next, so a failing
//! test explains itself.
//!
//! # Model
//!
//! * Every key is an independent register, initially absent unless [`History::set_initial`]
//!   says otherwise. Registers are independent, so linearizability is checked per key
//!   (P-compositionality): the history is linearizable iff every key's sub-history is.
//! * [`OpKind::Write`] sets the key; [`OpKind::Read`] returns it. Writes should carry values that
//!   are unique per key (and differ from the initial value): the check stays correct without
//!   that, but unknown-outcome writes are then much more expensive to search and there is no
//!   fallback when the search runs out of budget.
//! * [`Outcome::Failed`] operations definitely did not take effect and are left out.
//! * [`Outcome::Unknown`] writes (timeouts, dropped connections, operations still pending when
//!   the history ends) may have taken effect at any moment after their invocation — even after
//!   operations that completed later — or never: their completion time is taken to be +infinity
//!   and the search may leave them out. Unknown reads carry no information and are left out.
//! * Interval ends touch: an operation that completes at the instant another is invoked counts
//!   as concurrent with it (with coarse clocks, equal stamps prove nothing about order).
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's memoization, as in Knossos and Porcupine. A key's operations
//! become call and return events in a doubly linked list sorted by time. The search walks the
//! list from its head: at a call it tries to linearize that operation next (a read fits only if
//! it returned what the register holds); if it fits and the pair (set of linearized operations
//! as a bitset, register value) was never reached before, it records the pair in a cache, pushes
//! the operation on a stack, unlinks its two events and starts again from the head. Reaching a
//! return event means the operation that returns there must be linearized before anything later
//! and was not, so the search backtracks: it pops the last operation, relinks its events and
//! tries the next call after it. The history is linearizable once every operation with a finite
//! completion is linearized (the unknown writes left over are taken never to have happened),
//! and not linearizable when backtracking empties the stack. Only calls before the first
//! remaining return event are candidates, which is exactly the real-time order; the cache makes
//! the search visit every reachable configuration at most once. Cache keys are compact: the
//! run of fully linearized 64-operation words at the start (operations are numbered by
//! invocation time) is stored as a count.
//!
//! One register-specific prune keeps concurrent writes from multiplying the configurations: a
//! write may not overwrite the current value while reads of that value are still to be
//! linearized and no write still to be linearized writes it again, since those reads could
//! then never be satisfied. It depends only on the configuration, so it is sound with the cache.
//! And reads are never branch points: a read that real time allows next and that returned what
//! the register holds is linearized at once (moving it to the front of any linearization of the
//! rest keeps that linearization valid), so if nothing works after it, nothing works before it
//! either and the search backtracks past it instead of trying other candidates.
//!
//! Before searching, each key is simplified without changing the answer:
//!
//! * a read of a value that no (non-failed) write wrote and that is not the initial value is
//!   reported at once ([`ViolationKind::ImpossibleRead`]);
//! * an unknown write whose value nobody read is dropped (it could only ever matter to a read of
//!   its value);
//! * an unknown write whose value was read, and which is the only write of that value, must be
//!   linearized before every read of it, so it gets a finite completion: the earliest
//!   completion among those reads. Unknown writes therefore stay optional (and branch the
//!   search) only when values are not unique.
//!
//! If the search runs out of its step budget and every value has a single write (the intended
//! use), Gibbons & Korach's polynomial zone check decides instead (see `zone_check`): for a
//! register whose reads each know their write it is exact. The search stays the primary
//! procedure because its report (longest linearizable prefix, the operations that could not
//! come next) explains a failure better; the unit tests check both against each other and
//! against brute force.
//!
//! # Limits
//!
//! The problem is NP-complete in general. Typical histories — a few thousand operations per key,
//! up to ~16 concurrent clients, tens of unknown writes — take milliseconds in release builds
//! and tens of milliseconds in debug builds. Failing histories cost more than passing ones,
//! since the search must exhaust every configuration before it can say no, and that cost grows
//! exponentially with the number of concurrent clients. A search that exceeds
//! [`CheckOptions::max_steps_per_key`] (one step = one event visited) falls back to the zone
//! check when it applies and otherwise stops with [`ViolationKind::GaveUp`], which says nothing
//! either way. The cache grows with the number of configurations visited (tens of bytes each),
//! so the step budget also bounds memory. Only single-register reads and writes are modelled (no
//! deletes, compare-and-set or multi-key transactions).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Identifies an operation of a [`History`]: its index in [`History::ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What an operation does to its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Sets the key to this value (unique per key, see the module doc).
    Write(String),
    /// Returns the key's value.
    Read,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The write was acknowledged: it took effect between its invocation and its completion.
    Written,
    /// The read returned this value (`None`: the key was absent).
    Read(Option<String>),
    /// The operation definitely did not take effect (e.g. it was refused before it executed);
    /// the check leaves it out.
    Failed,
    /// Nobody knows (timeout, dropped connection, crash, or never completed). A write may have
    /// taken effect at any moment after its invocation, or never; a read is left out.
    Unknown,
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Who performed it. Only reports use it: the check does not assume that a client's
    /// operations are sequential.
    pub client: u64,
    /// The key (register) it is on.
    pub key: String,
    /// Write or read.
    pub kind: OpKind,
    /// When it was invoked: nanoseconds since some origin, or a logical tick. Only the order of
    /// the stamps matters, and they must come from one clock for the whole history.
    pub invoke: u64,
    /// When its outcome arrived, on the same clock; `None` while pending.
    pub complete: Option<u64>,
    /// How it ended; [`Outcome::Unknown`] while pending.
    pub outcome: Outcome,
}

impl Operation {
    /// Why this operation cannot be part of a history, if it cannot.
    fn problem(&self) -> Option<String> {
        match (&self.kind, &self.outcome) {
            (OpKind::Write(_), Outcome::Read(_)) => {
                return Some("a write cannot end with a read's outcome".into())
            }
            (OpKind::Read, Outcome::Written) => {
                return Some("a read cannot end with a write's outcome".into())
            }
            _ => {}
        }
        match (self.complete, &self.outcome) {
            (None, Outcome::Written | Outcome::Read(_)) => {
                Some("an operation that succeeded needs its completion time".into())
            }
            (Some(complete), _) if complete < self.invoke => Some(format!(
                "it completes at {complete}, before its invocation at {}",
                self.invoke
            )),
            _ => None,
        }
    }
}

/// One line describing an operation, for reports.
fn describe(id: OpId, op: &Operation) -> String {
    let end = op
        .complete
        .map_or_else(|| "pending".to_string(), |c| c.to_string());
    let what = match (&op.kind, &op.outcome) {
        (OpKind::Write(v), Outcome::Written) => format!("write {v:?} -> ok"),
        (OpKind::Write(v), Outcome::Failed) => format!("write {v:?} -> failed (ignored)"),
        (OpKind::Write(v), _) => format!("write {v:?} -> unknown"),
        (OpKind::Read, Outcome::Read(r)) => format!("read -> {}", show(r.as_deref())),
        (OpKind::Read, Outcome::Failed) => "read -> failed (ignored)".to_string(),
        (OpKind::Read, _) => "read -> unknown (ignored)".to_string(),
    };
    format!("{id} client {} [{}, {end}] {what}", op.client, op.invoke)
}

/// At most `max` ids, comma-separated, then how many more there are.
fn list_ids(ids: &[OpId], max: usize) -> String {
    let mut text = ids
        .iter()
        .take(max)
        .map(OpId::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > max {
        text += &format!(" and {} more", ids.len() - max);
    }
    text
}

/// A register value for reports.
fn show(value: Option<&str>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| format!("{v:?}"))
}

/// A recorded history of operations on any number of keys, built while the test runs.
///
/// Operations can be added in any order; the check sorts them by time. Recording from several
/// tasks needs the caller's own lock around the history.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Operation>,
    initial: BTreeMap<String, Option<String>>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Declares the value `key` holds before the history starts (by default it is absent).
    pub fn set_initial(&mut self, key: impl Into<String>, value: Option<String>) {
        self.initial.insert(key.into(), value);
    }

    /// The value `key` holds before the history starts.
    pub fn initial(&self, key: &str) -> Option<&str> {
        self.initial.get(key).and_then(|v| v.as_deref())
    }

    /// Records that `client` invoked `kind` on `key` at time `at`. The operation stays pending
    /// (which counts as [`Outcome::Unknown`]) until [`History::complete`].
    pub fn invoke(&mut self, client: u64, key: impl Into<String>, kind: OpKind, at: u64) -> OpId {
        self.ops.push(Operation {
            client,
            key: key.into(),
            kind,
            invoke: at,
            complete: None,
            outcome: Outcome::Unknown,
        });
        OpId(self.ops.len() - 1)
    }

    /// Records that pending operation `id` ended with `outcome` at time `at`.
    ///
    /// # Panics
    ///
    /// If `id` is not an operation of this history, if it already completed, if `at` is before
    /// its invocation, or if `outcome` does not fit its kind (a write ends [`Outcome::Written`],
    /// a read [`Outcome::Read`], either may end [`Outcome::Failed`] or [`Outcome::Unknown`]).
    /// These are bugs in the test that records the history.
    pub fn complete(&mut self, id: OpId, outcome: Outcome, at: u64) {
        let Some(op) = self.ops.get_mut(id.0) else {
            panic!("complete({id}): no such operation in this history");
        };
        if op.complete.is_some() || op.outcome != Outcome::Unknown {
            panic!("complete({id}): {} already completed", describe(id, op));
        }
        let mut done = op.clone();
        done.complete = Some(at);
        done.outcome = outcome;
        if let Some(problem) = done.problem() {
            panic!("complete({id}): {problem}: {}", describe(id, &done));
        }
        *op = done;
    }

    /// Appends a whole recorded operation (for histories assembled after the fact).
    ///
    /// # Panics
    ///
    /// If the operation is inconsistent: it completes before its invocation, a successful
    /// outcome lacks a completion time, or the outcome does not fit the kind.
    pub fn push(&mut self, op: Operation) -> OpId {
        if let Some(problem) = op.problem() {
            panic!("push: {problem}: {}", describe(OpId(self.ops.len()), &op));
        }
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    /// Every operation, indexed by [`OpId`].
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// The operation `id`, if it belongs to this history.
    pub fn op(&self, id: OpId) -> Option<&Operation> {
        self.ops.get(id.0)
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Tuning for [`check_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// How many search steps one key may take before the check gives up
    /// ([`ViolationKind::GaveUp`]). A step visits one event; the cache holds at most one entry
    /// per step, so this also bounds memory.
    pub max_steps_per_key: u64,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            max_steps_per_key: 5_000_000,
        }
    }
}

/// What a successful [`check_with`] looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Keys checked.
    pub keys: usize,
    /// Operations recorded on them (including failed and unknown ones).
    pub ops: usize,
    /// Search steps taken, over all keys.
    pub steps: u64,
    /// Keys whose search ran out of budget and that the zone check then proved linearizable
    /// (see the module doc).
    pub decided_by_zones: usize,
}

/// Why a [`Violation`] was reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// A read returned a value that no write (that did not fail) wrote and that is not the
    /// initial value; found before any search.
    ImpossibleRead,
    /// No linearization exists: the search proved it, or (as `reason` then says) the zone check
    /// did after the search ran out of budget.
    NotLinearizable,
    /// The search used up its step budget before deciding and the zone check did not apply: the
    /// history may or may not be linearizable.
    GaveUp {
        /// The budget that was used up.
        max_steps: u64,
    },
}

/// The result of a failed check: one key whose history is not linearizable (or on which the
/// search gave up), with what the search found.
///
/// `Debug` prints the same report as `Display`, so `check(&h).expect("...")` explains itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Why it was reported.
    pub kind: ViolationKind,
    /// A one-paragraph explanation.
    pub reason: String,
    /// The key's value before the history.
    pub initial: Option<String>,
    /// Every operation recorded on the key (including ignored ones), sorted by invocation time.
    pub ops: Vec<(OpId, Operation)>,
    /// The longest linearizable prefix the search found, in linearization order (empty for
    /// [`ViolationKind::ImpossibleRead`]).
    pub longest_prefix: Vec<OpId>,
    /// The key's value after `longest_prefix`.
    pub state_after_prefix: Option<String>,
    /// The operations that real time allows right after `longest_prefix`, none of which leads
    /// to a linearization; for [`ViolationKind::ImpossibleRead`], the impossible reads.
    pub candidates: Vec<OpId>,
    /// Search steps taken on the key.
    pub steps: u64,
    /// Whether the zone check gave the verdict because the search ran out of budget; then
    /// `longest_prefix` is only the longest the search found before it stopped.
    pub decided_by_zones: bool,
}

impl Violation {
    /// Whether the search gave up rather than finding a violation.
    pub fn gave_up(&self) -> bool {
        matches!(self.kind, ViolationKind::GaveUp { .. })
    }

    fn find(&self, id: OpId) -> Option<&Operation> {
        self.ops.iter().find(|(i, _)| *i == id).map(|(_, op)| op)
    }
}

/// How many operations of the prefix a report shows.
const REPORT_PREFIX_TAIL: usize = 8;
/// How many operations of the excerpt a report shows.
const REPORT_EXCERPT: usize = 40;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ViolationKind::GaveUp { max_steps } => writeln!(
                f,
                "linearizability check gave up on key {:?} after {} steps (budget {max_steps}): \
                 the history may or may not be linearizable",
                self.key, self.steps
            )?,
            _ => writeln!(f, "history of key {:?} is not linearizable", self.key)?,
        }
        writeln!(f, "{}", self.reason)?;
        writeln!(f, "initial value: {}", show(self.initial.as_deref()))?;
        // Reads after the prefix that still need the value it leaves, and whether a write after
        // the prefix could bring that value back.
        let state = &self.state_after_prefix;
        let in_prefix: HashSet<OpId> = self.longest_prefix.iter().copied().collect();
        let after_prefix = |(id, op): &&(OpId, Operation)| {
            !in_prefix.contains(id) && op.outcome != Outcome::Failed
        };
        let waiting: Vec<OpId> = match self.kind {
            ViolationKind::NotLinearizable => self
                .ops
                .iter()
                .filter(after_prefix)
                .filter(|(_, op)| op.outcome == Outcome::Read(state.clone()))
                .map(|(id, _)| *id)
                .collect(),
            _ => Vec::new(),
        };
        let rewritten = self
            .ops
            .iter()
            .filter(after_prefix)
            .any(|(_, op)| matches!(&op.kind, OpKind::Write(v) if Some(v) == state.as_ref()));
        let explain = |id: OpId| -> String {
            let Some(op) = self.find(id) else {
                return format!("{id} (unknown operation)");
            };
            let line = describe(id, op);
            let note = match (&self.kind, &op.kind, &op.outcome) {
                (ViolationKind::ImpossibleRead, _, _) => "  <- impossible value".to_string(),
                (ViolationKind::GaveUp { .. }, _, _) => String::new(),
                _ if self.decided_by_zones => String::new(),
                (_, _, Outcome::Read(r)) if r != state => {
                    format!("  <- the register holds {}", show(state.as_deref()))
                }
                (_, OpKind::Write(v), _)
                    if Some(v) != state.as_ref() && !waiting.is_empty() && !rewritten =>
                {
                    format!(
                        "  <- would overwrite {}, which {} still read{}",
                        show(state.as_deref()),
                        list_ids(&waiting, 5),
                        if waiting.len() == 1 { "s" } else { "" }
                    )
                }
                _ => "  <- fits, but no order of the rest works after it".to_string(),
            };
            line + &note
        };
        if self.kind != ViolationKind::ImpossibleRead {
            let skip = self.longest_prefix.len().saturating_sub(REPORT_PREFIX_TAIL);
            writeln!(
                f,
                "longest linearizable prefix: {} operation{}{}",
                self.longest_prefix.len(),
                if self.longest_prefix.len() == 1 {
                    ""
                } else {
                    "s"
                },
                if skip > 0 {
                    format!(", the last {REPORT_PREFIX_TAIL}:")
                } else {
                    ":".to_string()
                }
            )?;
            for (pos, id) in self.longest_prefix.iter().enumerate().skip(skip) {
                if let Some(op) = self.find(*id) {
                    writeln!(f, "  {:>5}. {}", pos + 1, describe(*id, op))?;
                }
            }
            writeln!(
                f,
                "value after the prefix: {}",
                show(self.state_after_prefix.as_deref())
            )?;
            if self.decided_by_zones {
                writeln!(
                    f,
                    "operations that may come next (the search had not ruled them out):"
                )?;
            } else {
                writeln!(f, "operations that may come next (none leads anywhere):")?;
            }
        } else {
            writeln!(f, "impossible reads:")?;
        }
        for id in &self.candidates {
            writeln!(f, "  {}", explain(*id))?;
        }
        // The key's operations around where the search got stuck.
        let tail =
            &self.longest_prefix[self.longest_prefix.len().saturating_sub(REPORT_PREFIX_TAIL)..];
        let focus: Vec<&Operation> = tail
            .iter()
            .chain(&self.candidates)
            .filter_map(|id| self.find(*id))
            .collect();
        let lo = focus.iter().map(|op| op.invoke).min().unwrap_or(0);
        let hi = self
            .candidates
            .iter()
            .filter_map(|id| self.find(*id))
            .map(|op| op.complete.unwrap_or(op.invoke))
            .max()
            .unwrap_or(u64::MAX);
        // Values the candidates and the waiting reads need: their writes belong in the excerpt.
        let needed: Vec<&Option<String>> = self
            .candidates
            .iter()
            .chain(&waiting)
            .filter_map(|id| match self.find(*id).map(|op| &op.outcome) {
                Some(Outcome::Read(value)) => Some(value),
                _ => None,
            })
            .chain([state])
            .collect();
        let window: Vec<&(OpId, Operation)> = self
            .ops
            .iter()
            .filter(|(id, op)| {
                // An operation without a known end (pending, unknown, failed) counts as a point
                // at its invocation here, or every pending write would overlap the window.
                let end = match op.outcome {
                    Outcome::Written | Outcome::Read(_) => op.complete.unwrap_or(op.invoke),
                    Outcome::Failed | Outcome::Unknown => op.invoke,
                };
                let writes_needed = matches!(&op.kind, OpKind::Write(v)
                    if needed.iter().any(|n| n.as_ref() == Some(v)));
                (op.invoke <= hi && end >= lo) || waiting.contains(id) || writes_needed
            })
            .collect();
        writeln!(
            f,
            "operations on the key overlapping [{lo}, {hi}], reads waiting for the value after \
             the prefix and writes of the values needed, by invocation ({} of {} on the key; all \
             are in `Violation::ops`):",
            window.len().min(REPORT_EXCERPT),
            self.ops.len()
        )?;
        for (id, op) in window.iter().take(REPORT_EXCERPT) {
            let mark = if self.candidates.contains(id) {
                "  <- candidate"
            } else if waiting.contains(id) {
                "  <- waiting"
            } else if let Some(pos) = self.longest_prefix.iter().position(|p| p == id) {
                if pos + REPORT_PREFIX_TAIL >= self.longest_prefix.len() {
                    "  (in prefix)"
                } else {
                    ""
                }
            } else {
                ""
            };
            writeln!(f, "  {}{mark}", describe(*id, op))?;
        }
        if window.len() > REPORT_EXCERPT {
            writeln!(f, "  ... and {} more", window.len() - REPORT_EXCERPT)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Violation {}

/// Checks that `history` is linearizable, key by key, with the default [`CheckOptions`].
///
/// Returns the first violation in key order; a key on which the search gave up is reported only
/// when no key has a definite violation.
pub fn check(history: &History) -> Result<(), Box<Violation>> {
    check_with(history, &CheckOptions::default()).map(|_| ())
}

/// Like [`check`], with explicit options; on success says how much work it did.
pub fn check_with(history: &History, options: &CheckOptions) -> Result<CheckStats, Box<Violation>> {
    let mut by_key: BTreeMap<&str, Vec<OpId>> = BTreeMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(OpId(i));
    }
    let mut stats = CheckStats::default();
    let mut gave_up = None;
    for (key, ids) in by_key {
        match check_key(history, key, &ids, options) {
            Ok(passed) => {
                stats.keys += 1;
                stats.ops += ids.len();
                stats.steps += passed.steps;
                stats.decided_by_zones += usize::from(passed.by_zones);
            }
            Err(violation) if violation.gave_up() => {
                gave_up.get_or_insert(violation);
            }
            Err(violation) => return Err(violation),
        }
    }
    match gave_up {
        Some(violation) => Err(violation),
        None => Ok(stats),
    }
}

/// The register value meaning "absent".
const ABSENT: u32 = 0;

/// What an operation does to the register, values interned (`ABSENT` or an index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Write(u32),
    Read(u32),
}

/// An operation as the search sees it.
#[derive(Clone, Copy, Debug)]
struct Prepared {
    id: OpId,
    invoke: u64,
    /// `None`: +infinity, the operation is optional.
    ret: Option<u64>,
    step: Step,
}

/// Value strings of one key, numbered from 1 (0 is [`ABSENT`]).
struct Values<'a> {
    ids: HashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> Values<'a> {
    fn new() -> Values<'a> {
        Values {
            ids: HashMap::new(),
            names: vec![""],
        }
    }

    fn id(&mut self, value: Option<&'a str>) -> u32 {
        let Some(value) = value else { return ABSENT };
        let next = self.names.len() as u32;
        let id = *self.ids.entry(value).or_insert(next);
        if id == next {
            self.names.push(value);
        }
        id
    }

    fn name(&self, id: u32) -> Option<String> {
        (id != ABSENT).then(|| {
            self.names
                .get(id as usize)
                .copied()
                .unwrap_or("?")
                .to_string()
        })
    }
}

/// A key's operations, ready for the search.
struct KeyOps<'a> {
    values: Values<'a>,
    /// The initial value.
    init: u32,
    /// Sorted by invocation time.
    ops: Vec<Prepared>,
}

/// Simplifies the history of `key` (operations `ids`) for the search, as the module doc says;
/// fails with the reads of values that nobody wrote.
fn prepare<'a>(history: &'a History, key: &str, ids: &[OpId]) -> Result<KeyOps<'a>, Vec<OpId>> {
    let mut values = Values::new();
    let init = values.id(history.initial(key));
    let mut ops = Vec::with_capacity(ids.len());
    for &id in ids {
        let op = &history.ops[id.0];
        let step = match (&op.kind, &op.outcome) {
            (_, Outcome::Failed) | (OpKind::Read, Outcome::Unknown) => continue,
            (OpKind::Read, Outcome::Read(r)) => Step::Read(values.id(r.as_deref())),
            (OpKind::Write(v), Outcome::Written | Outcome::Unknown) => {
                Step::Write(values.id(Some(v)))
            }
            // Ruled out when the operation was recorded.
            (OpKind::Read, Outcome::Written) | (OpKind::Write(_), Outcome::Read(_)) => continue,
        };
        let ret = match op.outcome {
            Outcome::Unknown => None,
            _ => op.complete,
        };
        ops.push(Prepared {
            id,
            invoke: op.invoke,
            ret,
            step,
        });
    }

    let mut writers: HashMap<u32, usize> = HashMap::new();
    let mut first_read_ret: HashMap<u32, u64> = HashMap::new();
    for op in &ops {
        match op.step {
            Step::Write(v) => *writers.entry(v).or_default() += 1,
            Step::Read(v) => {
                let ret = op.ret.unwrap_or(u64::MAX);
                first_read_ret
                    .entry(v)
                    .and_modify(|r| *r = (*r).min(ret))
                    .or_insert(ret);
            }
        }
    }
    let impossible: Vec<OpId> = ops
        .iter()
        .filter(|op| matches!(op.step, Step::Read(v) if v != init && !writers.contains_key(&v)))
        .map(|op| op.id)
        .collect();
    if !impossible.is_empty() {
        return Err(impossible);
    }

    // Unknown writes: drop those nobody read; bound those whose value has a single writer.
    ops.retain_mut(|op| {
        let (Step::Write(v), None) = (op.step, op.ret) else {
            return true;
        };
        let Some(&read_by) = first_read_ret.get(&v) else {
            return false;
        };
        if v != init && writers.get(&v) == Some(&1) {
            op.ret = Some(read_by.max(op.invoke));
        }
        true
    });
    ops.sort_by_key(|op| (op.invoke, op.id));
    Ok(KeyOps { values, init, ops })
}

/// How a key passed.
struct Passed {
    steps: u64,
    by_zones: bool,
}

/// Checks one key.
fn check_key(
    history: &History,
    key: &str,
    ids: &[OpId],
    options: &CheckOptions,
) -> Result<Passed, Box<Violation>> {
    let initial = history.initial(key);
    let violation = |kind, reason, longest_prefix, state_after_prefix, candidates, steps| {
        Box::new(Violation {
            key: key.to_string(),
            kind,
            reason,
            initial: initial.map(str::to_string),
            ops: key_ops(history, ids),
            longest_prefix,
            state_after_prefix,
            candidates,
            steps,
            decided_by_zones: false,
        })
    };
    let k = match prepare(history, key, ids) {
        Ok(k) => k,
        Err(impossible) => {
            let first = impossible[0];
            let value = match &history.ops[first.0].outcome {
                Outcome::Read(r) => r.clone(),
                _ => None,
            };
            let failed_writer = ids.iter().find(|id| {
                let op = &history.ops[id.0];
                op.outcome == Outcome::Failed
                    && matches!(&op.kind, OpKind::Write(v) if Some(v) == value.as_ref())
            });
            let mut reason = format!(
                "read {first} returned {}, which no write that did not fail wrote and which is \
                 not the initial value",
                show(value.as_deref())
            );
            if let Some(w) = failed_writer {
                reason += &format!(" (only {w}, reported as failed, wrote it)");
            }
            if impossible.len() > 1 {
                reason += &format!("; {} such reads in all", impossible.len());
            }
            return Err(violation(
                ViolationKind::ImpossibleRead,
                reason,
                Vec::new(),
                initial.map(str::to_string),
                impossible,
                0,
            ));
        }
    };
    let ops = &k.ops;
    let result = search(ops, k.init, k.values.names.len(), options.max_steps_per_key);
    let zones = match result.end {
        SearchEnd::Linearizable => {
            return Ok(Passed {
                steps: result.steps,
                by_zones: false,
            })
        }
        SearchEnd::NotLinearizable => None,
        SearchEnd::GaveUp => match zone_check(&k) {
            Some(Ok(())) => {
                return Ok(Passed {
                    steps: result.steps,
                    by_zones: true,
                })
            }
            Some(Err(why)) => Some(why),
            None => None,
        },
    };
    // Replay the prefix, then find what real time allows next.
    let mut state = k.init;
    let mut done = vec![false; ops.len()];
    for &i in &result.best {
        done[i] = true;
        if let Step::Write(v) = ops[i].step {
            state = v;
        }
    }
    let horizon = ops
        .iter()
        .zip(&done)
        .filter(|(_, d)| !**d)
        .filter_map(|(op, _)| op.ret)
        .min()
        .unwrap_or(u64::MAX);
    let candidates: Vec<OpId> = ops
        .iter()
        .zip(&done)
        .filter(|(op, d)| !**d && op.invoke <= horizon)
        .map(|(op, _)| op.id)
        .collect();
    let checked = ops.len();
    let (kind, reason) = match (result.end, zones) {
        (SearchEnd::GaveUp, Some(why)) => (
            ViolationKind::NotLinearizable,
            format!(
                "{why}. (The search stopped after {} steps without deciding; this verdict comes \
                 from the zone check, and the prefix below is the longest the search found.)",
                result.steps
            ),
        ),
        (SearchEnd::GaveUp, None) => (
            ViolationKind::GaveUp {
                max_steps: options.max_steps_per_key,
            },
            format!(
                "the search explored {} configurations of {checked} operations without deciding; \
                 raise CheckOptions::max_steps_per_key or shorten the history",
                result.configurations
            ),
        ),
        _ => (
            ViolationKind::NotLinearizable,
            format!(
                "no order of the {checked} checked operations respects both real time and a \
                 register: at most {} of them can be linearized, after which none of the {} \
                 operations that may come next leads to a linearization",
                result.best.len(),
                candidates.len()
            ),
        ),
    };
    let mut found = violation(
        kind,
        reason,
        result.best.iter().map(|&i| ops[i].id).collect(),
        k.values.name(state),
        candidates,
        result.steps,
    );
    found.decided_by_zones =
        result.end == SearchEnd::GaveUp && found.kind == ViolationKind::NotLinearizable;
    Err(found)
}

/// Gibbons & Korach's exact test for a register whose reads each know their write, used when
/// the search runs out of budget. It applies when every write is required (no unknown write
/// left optional) and writes a value no other write writes and that is not the initial value.
/// `None` if it does not apply, else the verdict with an explanation.
///
/// Each value's *cluster* is its write and the reads of it (the initial value's write is
/// virtual, before everything). With `f` the earliest completion and `s` the latest invocation
/// in a cluster: if `f < s` the value must stay in the register throughout (f, s), its *forward
/// zone*; otherwise the whole cluster fits at any one instant of [s, f], its *backward zone*. The
/// history is linearizable iff no read completes before its write is invoked, no two forward
/// zones overlap and no backward zone lies inside a forward zone. Intervals that only touch do
/// not conflict, as everywhere in this module.
fn zone_check(k: &KeyOps<'_>) -> Option<Result<(), String>> {
    /// A cluster; times are shifted by one so that 0 is "before everything".
    struct Cluster {
        value: u32,
        write: Option<usize>,
        f: u128,
        f_op: Option<usize>,
        s: u128,
        s_op: Option<usize>,
    }
    let ops = &k.ops;
    let at = |t: u64| u128::from(t) + 1;
    let mut clusters: HashMap<u32, Cluster> = HashMap::new();
    clusters.insert(
        k.init,
        Cluster {
            value: k.init,
            write: None,
            f: 0,
            f_op: None,
            s: 0,
            s_op: None,
        },
    );
    for (i, op) in ops.iter().enumerate() {
        if let Step::Write(v) = op.step {
            let ret = op.ret?;
            if clusters.contains_key(&v) {
                return None;
            }
            clusters.insert(
                v,
                Cluster {
                    value: v,
                    write: Some(i),
                    f: at(ret),
                    f_op: Some(i),
                    s: at(op.invoke),
                    s_op: Some(i),
                },
            );
        }
    }
    let name = |v: u32| show(k.values.name(v).as_deref());
    let event = |op: Option<usize>, what: &str| match op {
        Some(i) => format!("{} {what}", ops[i].id),
        None => "the history began".to_string(),
    };
    for (i, op) in ops.iter().enumerate() {
        let (Step::Read(v), Some(ret)) = (op.step, op.ret) else {
            continue;
        };
        let c = clusters.get_mut(&v)?;
        if let Some(w) = c.write {
            if ret < ops[w].invoke {
                return Some(Err(format!(
                    "read {} of {} completed at {ret}, before {}, the only write of that value, \
                     was invoked at {}",
                    op.id,
                    name(v),
                    ops[w].id,
                    ops[w].invoke
                )));
            }
        }
        if at(ret) < c.f {
            c.f = at(ret);
            c.f_op = Some(i);
        }
        if at(op.invoke) > c.s {
            c.s = at(op.invoke);
            c.s_op = Some(i);
        }
    }
    let zone = |c: &Cluster| {
        format!(
            "{} must stay in the register from when {} until {} was invoked",
            name(c.value),
            event(c.f_op, "completed"),
            c.s_op
                .map_or_else(|| "?".to_string(), |i| ops[i].id.to_string())
        )
    };
    let (mut forward, backward): (Vec<&Cluster>, Vec<&Cluster>) =
        clusters.values().partition(|c| c.f < c.s);
    forward.sort_by_key(|c| (c.f, c.value));
    let mut widest: Option<&Cluster> = None;
    for &c in &forward {
        if let Some(w) = widest {
            if c.f < w.s {
                return Some(Err(format!(
                    "{}, and {}: the two periods overlap",
                    zone(w),
                    zone(c)
                )));
            }
        }
        if widest.is_none_or(|w| c.s > w.s) {
            widest = Some(c);
        }
    }
    for b in backward {
        let Some(w) = b.write else { continue };
        let after = forward.partition_point(|a| a.f < b.s);
        let Some(a) = after.checked_sub(1).map(|i| forward[i]) else {
            continue;
        };
        if b.f < a.s {
            return Some(Err(format!(
                "{}, but {} (write of {}) and every read of it happened strictly within that \
                 period",
                zone(a),
                ops[w].id,
                name(b.value)
            )));
        }
    }
    Some(Ok(()))
}

/// The operations `ids` of `history`, sorted by invocation time.
fn key_ops(history: &History, ids: &[OpId]) -> Vec<(OpId, Operation)> {
    let mut ops: Vec<(OpId, Operation)> = ids
        .iter()
        .map(|&id| (id, history.ops[id.0].clone()))
        .collect();
    ops.sort_by_key(|(id, op)| (op.invoke, *id));
    ops
}

/// How a search ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SearchEnd {
    Linearizable,
    NotLinearizable,
    GaveUp,
}

/// What a search found.
#[derive(Debug)]
struct SearchResult {
    end: SearchEnd,
    steps: u64,
    configurations: usize,
    /// The longest linearizable prefix seen, as indices into the searched operations.
    best: Vec<usize>,
}

/// The list's head sentinel.
const HEAD: usize = 0;

/// Wing & Gong's search with Lowe's cache over `ops` (sorted by invocation), from register value
/// `init`; values are below `value_count`.
fn search(ops: &[Prepared], init: u32, value_count: usize, max_steps: u64) -> SearchResult {
    let n = ops.len();
    // Operations not linearized yet, per value: reads of it and writes of it.
    let mut unread = vec![0usize; value_count];
    let mut unwritten = vec![0usize; value_count];
    for op in ops {
        match op.step {
            Step::Read(v) => unread[v as usize] += 1,
            Step::Write(v) => unwritten[v as usize] += 1,
        }
    }
    // Events sorted by time; at equal times calls come first (touching intervals overlap).
    let mut events: Vec<(u128, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((u128::from(op.invoke), false, i));
        events.push((op.ret.map_or(u128::MAX, u128::from), true, i));
    }
    events.sort_unstable();
    // Doubly linked list of nodes: 0 is the head, 1..=2n the events, 2n+1 the tail.
    let tail = 2 * n + 1;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|i| i.saturating_sub(1)).collect();
    let mut node_op = vec![usize::MAX; tail + 1];
    let mut is_call = vec![false; tail + 1];
    let mut return_node = vec![tail; tail + 1];
    let mut ret_of_op = vec![tail; n];
    for (k, &(_, is_return, i)) in events.iter().enumerate() {
        node_op[k + 1] = i;
        is_call[k + 1] = !is_return;
        if is_return {
            ret_of_op[i] = k + 1;
        }
    }
    for node in 1..tail {
        if is_call[node] {
            return_node[node] = ret_of_op[node_op[node]];
        }
    }

    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut cache = Cache::default();
    // (call node, register value before it, whether it is a read).
    let mut stack: Vec<(usize, u32, bool)> = Vec::new();
    let mut state = init;
    let mut required = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut best: Vec<usize> = Vec::new();
    let mut agree = 0; // length of the common prefix of `stack` and `best`
    let mut steps = 0u64;
    let mut entry = next[HEAD];
    // Set when the current configuration is known to lead nowhere.
    let mut backtrack = false;
    let end = loop {
        if required == 0 {
            break SearchEnd::Linearizable;
        }
        if steps >= max_steps {
            break SearchEnd::GaveUp;
        }
        steps += 1;
        if !backtrack {
            if entry == tail {
                // Unreachable: a required operation's return event is still listed.
                break SearchEnd::NotLinearizable;
            }
            if is_call[entry] {
                let i = node_op[entry];
                let is_read = matches!(ops[i].step, Step::Read(_));
                let after = match ops[i].step {
                    // Overwriting a value that reads still wait for and that no write left can
                    // bring back leads nowhere.
                    Step::Write(v) => {
                        (v == state || unread[state as usize] == 0 || unwritten[state as usize] > 0)
                            .then_some(v)
                    }
                    Step::Read(v) => (v == state).then_some(state),
                };
                if let Some(after) = after {
                    bits[i / 64] |= 1 << (i % 64);
                    if cache.insert(&bits, after) {
                        stack.push((entry, state, is_read));
                        state = after;
                        // Unlink the call and its return.
                        for node in [entry, return_node[entry]] {
                            next[prev[node]] = next[node];
                            prev[next[node]] = prev[node];
                        }
                        if ops[i].ret.is_some() {
                            required -= 1;
                        }
                        match ops[i].step {
                            Step::Read(v) => unread[v as usize] -= 1,
                            Step::Write(v) => unwritten[v as usize] -= 1,
                        }
                        let depth = stack.len();
                        if agree == depth - 1 && best.get(depth - 1) == Some(&i) {
                            agree = depth;
                        }
                        if depth > best.len() {
                            best.truncate(agree);
                            best.extend(stack[agree..].iter().map(|&(node, _, _)| node_op[node]));
                            agree = depth;
                        }
                        entry = next[HEAD];
                        continue;
                    }
                    bits[i / 64] &= !(1 << (i % 64));
                    // A read that fits can go first; if what follows it is known to lead
                    // nowhere, so does this configuration.
                    backtrack = is_read;
                }
                entry = next[entry];
                continue;
            }
            // A return: its operation had to come before everything after. Backtrack.
        }
        let Some((call, before, was_read)) = stack.pop() else {
            break SearchEnd::NotLinearizable;
        };
        let i = node_op[call];
        bits[i / 64] &= !(1 << (i % 64));
        state = before;
        // Relink in the reverse order of unlinking.
        for node in [return_node[call], call] {
            next[prev[node]] = node;
            prev[next[node]] = node;
        }
        if ops[i].ret.is_some() {
            required += 1;
        }
        match ops[i].step {
            Step::Read(v) => unread[v as usize] += 1,
            Step::Write(v) => unwritten[v as usize] += 1,
        }
        agree = agree.min(stack.len());
        // A read was linearized as soon as it fitted: the configuration before it leads
        // nowhere either, so keep backtracking. Otherwise try the next candidate.
        backtrack = was_read;
        entry = next[call];
    };
    SearchResult {
        end,
        steps,
        configurations: cache.entries.len(),
        best,
    }
}

/// The set of (linearized operations, register value) configurations already reached.
///
/// A bitset is stored as the number of all-ones words it starts with plus the words after them,
/// up to its last non-zero word: operations are numbered by invocation time, so the stored part
/// stays about as long as the history is concurrent.
#[derive(Default)]
struct Cache {
    /// Hash of a configuration -> its newest entry.
    heads: HashMap<u64, usize>,
    entries: Vec<CacheEntry>,
    words: Vec<u64>,
}

struct CacheEntry {
    lead: usize,
    state: u32,
    start: usize,
    len: usize,
    /// The previous entry with the same hash, or `usize::MAX`.
    next: usize,
}

impl Cache {
    /// Adds a configuration; false if it was already there.
    fn insert(&mut self, bits: &[u64], state: u32) -> bool {
        let lead = bits.iter().take_while(|&&w| w == u64::MAX).count();
        let end = bits
            .iter()
            .rposition(|&w| w != 0)
            .map_or(lead, |i| (i + 1).max(lead));
        let window = &bits[lead..end];
        let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        let mut hash = mix(lead as u64, u64::from(state));
        for &w in window {
            hash = mix(hash, w);
        }
        let head = self.heads.get(&hash).copied().unwrap_or(usize::MAX);
        let mut at = head;
        while let Some(e) = self.entries.get(at) {
            if e.lead == lead && e.state == state && self.words[e.start..e.start + e.len] == *window
            {
                return false;
            }
            at = e.next;
        }
        self.entries.push(CacheEntry {
            lead,
            state,
            start: self.words.len(),
            len: window.len(),
            next: head,
        });
        self.words.extend_from_slice(window);
        self.heads.insert(hash, self.entries.len() - 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn w(v: &str) -> OpKind {
        OpKind::Write(v.to_string())
    }

    fn read(v: &str) -> Outcome {
        Outcome::Read(Some(v.to_string()))
    }

    /// Records a whole operation on key "k".
    fn op(h: &mut History, client: u64, kind: OpKind, invoke: u64, complete: u64, out: Outcome) {
        let id = h.invoke(client, "k", kind, invoke);
        h.complete(id, out, complete);
    }

    fn rejected(h: &History) -> Box<Violation> {
        let v = check(h).expect_err("history should not be linearizable");
        assert!(!v.gave_up(), "expected a verdict, got:\n{v}");
        v
    }

    #[test]
    fn accepts_empty_history() {
        check(&History::new()).expect("empty history");
    }

    #[test]
    fn accepts_sequential_history() {
        let mut h = History::new();
        op(&mut h, 1, OpKind::Read, 0, 1, Outcome::Read(None));
        op(&mut h, 1, w("a"), 2, 3, Outcome::Written);
        op(&mut h, 2, OpKind::Read, 4, 5, read("a"));
        op(&mut h, 2, w("b"), 6, 7, Outcome::Written);
        op(&mut h, 1, OpKind::Read, 8, 9, read("b"));
        check(&h).expect("sequential history");
    }

    #[test]
    fn accepts_read_concurrent_with_write_seeing_old_or_new_value() {
        for seen in ["a", "b"] {
            let mut h = History::new();
            op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
            op(&mut h, 1, w("b"), 20, 40, Outcome::Written);
            op(&mut h, 2, OpKind::Read, 25, 30, read(seen));
            op(&mut h, 2, OpKind::Read, 50, 60, read("b"));
            check(&h).expect("a read overlapping a write may see either value");
        }
    }

    #[test]
    fn accepts_overlapping_reads_seeing_new_and_old_value() {
        // The reads overlap each other and the write: old-read, write, new-read is an order.
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 1, Outcome::Written);
        op(&mut h, 1, w("b"), 10, 50, Outcome::Written);
        op(&mut h, 2, OpKind::Read, 12, 30, read("b"));
        op(&mut h, 3, OpKind::Read, 11, 31, read("a"));
        check(&h).expect("overlapping reads may be ordered either way");
    }

    #[test]
    fn accepts_touching_intervals_as_concurrent() {
        let mut h = History::new();
        op(&mut h, 1, OpKind::Read, 0, 10, read("a"));
        op(&mut h, 2, w("a"), 10, 20, Outcome::Written);
        check(&h).expect("an operation ending when another starts overlaps it");
    }

    #[test]
    fn accepts_unknown_write_that_took_effect_later() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        // Times out at 30, takes effect much later.
        op(&mut h, 1, w("b"), 20, 30, Outcome::Unknown);
        op(&mut h, 2, OpKind::Read, 40, 50, read("a"));
        op(&mut h, 2, OpKind::Read, 60, 70, read("a"));
        op(&mut h, 3, OpKind::Read, 80, 90, read("b"));
        op(&mut h, 3, OpKind::Read, 100, 110, read("b"));
        check(&h).expect("an unknown write may take effect at any time after its invocation");
    }

    #[test]
    fn accepts_unknown_write_that_never_took_effect() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 1, w("b"), 20, 30, Outcome::Unknown);
        op(&mut h, 2, OpKind::Read, 40, 50, read("a"));
        // Pending forever.
        h.invoke(3, "k", w("c"), 45);
        op(&mut h, 2, OpKind::Read, 60, 70, read("a"));
        check(&h).expect("an unknown write may never take effect");
    }

    #[test]
    fn ignores_failed_operations_and_unknown_reads() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 1, w("b"), 20, 30, Outcome::Failed);
        op(&mut h, 2, OpKind::Read, 35, 40, Outcome::Failed);
        op(&mut h, 2, OpKind::Read, 45, 50, Outcome::Unknown);
        h.invoke(3, "k", OpKind::Read, 55);
        op(&mut h, 2, OpKind::Read, 60, 70, read("a"));
        check(&h).expect("failed operations and unknown reads carry no information");
    }

    #[test]
    fn honours_initial_values() {
        let mut h = History::new();
        op(&mut h, 1, OpKind::Read, 0, 10, read("seed"));
        rejected(&h);
        h.set_initial("k", Some("seed".to_string()));
        check(&h).expect("the initial value is readable");
        op(&mut h, 1, OpKind::Read, 20, 30, Outcome::Read(None));
        let v = rejected(&h);
        assert_eq!(v.kind, ViolationKind::ImpossibleRead, "{v}");
    }

    #[test]
    fn tolerates_duplicate_values() {
        // Not the intended use, but still decided correctly.
        let mut h = History::new();
        op(&mut h, 1, w("x"), 0, 10, Outcome::Written);
        op(&mut h, 1, w("y"), 20, 30, Outcome::Written);
        op(&mut h, 2, w("x"), 25, 26, Outcome::Unknown);
        op(&mut h, 3, OpKind::Read, 40, 50, read("x"));
        check(&h).expect("the unknown duplicate write explains the read");
        h.ops[2].outcome = Outcome::Failed;
        rejected(&h);
    }

    #[test]
    fn rejects_stale_read_after_completed_write() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 1, w("b"), 20, 30, Outcome::Written);
        op(&mut h, 2, OpKind::Read, 40, 50, read("a"));
        let v = rejected(&h);
        assert_eq!(v.kind, ViolationKind::NotLinearizable);
        assert_eq!(v.key, "k");
        // "b" must come before the read, which needs "a".
        assert_eq!(v.longest_prefix, vec![OpId(0)]);
        assert_eq!(v.state_after_prefix.as_deref(), Some("a"));
        assert_eq!(v.candidates, vec![OpId(1)]);
    }

    #[test]
    fn rejects_read_of_value_never_written() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 2, OpKind::Read, 5, 15, read("zzz"));
        let v = rejected(&h);
        assert_eq!(v.kind, ViolationKind::ImpossibleRead);
        assert_eq!(v.candidates, vec![OpId(1)]);
    }

    #[test]
    fn rejects_read_of_value_from_failed_write() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Failed);
        op(&mut h, 2, OpKind::Read, 20, 30, read("a"));
        let v = rejected(&h);
        assert_eq!(v.kind, ViolationKind::ImpossibleRead);
        assert!(v.reason.contains("#0"), "{v}");
    }

    #[test]
    fn rejects_flip_flop_reads() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 1, w("b"), 20, 30, Outcome::Written);
        // Concurrent with neither write, one client sees new then old.
        op(&mut h, 2, OpKind::Read, 40, 50, read("b"));
        op(&mut h, 2, OpKind::Read, 60, 70, read("a"));
        rejected(&h);

        // Same while "b" is an unknown write: once seen, it has taken effect.
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 1, w("b"), 20, 30, Outcome::Unknown);
        op(&mut h, 2, OpKind::Read, 40, 50, read("b"));
        op(&mut h, 2, OpKind::Read, 60, 70, read("a"));
        rejected(&h);
    }

    #[test]
    fn rejects_read_of_value_written_after_the_read_completed() {
        for outcome in [Outcome::Written, Outcome::Unknown] {
            let mut h = History::new();
            op(&mut h, 1, OpKind::Read, 0, 10, read("a"));
            op(&mut h, 2, w("a"), 20, 30, outcome);
            let v = rejected(&h);
            assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
        }
    }

    #[test]
    fn rejects_lost_acknowledged_write() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 2, w("b"), 5, 20, Outcome::Written);
        op(&mut h, 3, OpKind::Read, 15, 25, read("b"));
        // "b" was acknowledged and then lost (e.g. a failover rolled it back).
        op(&mut h, 3, OpKind::Read, 30, 40, read("a"));
        rejected(&h);
    }

    #[test]
    fn checks_keys_independently() {
        let mut h = History::new();
        // Interleaved in time, linearizable per key.
        for (i, key) in ["a", "b"].iter().enumerate() {
            let t = i as u64;
            let id = h.invoke(1, *key, w(&format!("{key}1")), t);
            h.complete(id, Outcome::Written, 10 + t);
            let id = h.invoke(2, *key, OpKind::Read, 20 + t);
            h.complete(id, read(&format!("{key}1")), 30 + t);
        }
        let stats = check_with(&h, &CheckOptions::default()).expect("linearizable per key");
        assert_eq!((stats.keys, stats.ops), (2, 4));
        // A stale read on "b" only.
        let id = h.invoke(1, "b", w("b2"), 40);
        h.complete(id, Outcome::Written, 50);
        let id = h.invoke(2, "b", OpKind::Read, 60);
        h.complete(id, read("b1"), 70);
        let v = rejected(&h);
        assert_eq!(v.key, "b");
        assert!(v.ops.iter().all(|(_, op)| op.key == "b"));
    }

    #[test]
    fn reports_giving_up_distinctly() {
        let mut rng = Rng(7);
        let mut h = generate(&mut rng, 8, 40, &["k"]).history;
        // A second, unknown write of a value that is read keeps the zone check out.
        let (value, invoke) = h
            .ops
            .iter()
            .find_map(|op| match (&op.kind, &op.outcome) {
                (OpKind::Write(v), Outcome::Written) => Some((v.clone(), op.invoke)),
                _ => None,
            })
            .expect("an acknowledged write");
        let id = h.invoke(99, "k", OpKind::Write(value.clone()), invoke);
        h.complete(id, Outcome::Unknown, invoke + 1);
        let id = h.invoke(99, "k", OpKind::Read, invoke + 2);
        h.complete(id, Outcome::Read(Some(value)), invoke + 3);
        let options = CheckOptions {
            max_steps_per_key: 10,
        };
        let v = check_with(&h, &options).expect_err("10 steps are not enough");
        assert!(v.gave_up(), "{v}");
        assert_eq!(v.kind, ViolationKind::GaveUp { max_steps: 10 });
        assert!(v.to_string().contains("gave up"), "{v}");
        check(&h).expect("with the default budget it decides");
    }

    #[test]
    fn zone_check_decides_when_the_search_gives_up() {
        let mut rng = Rng(7);
        let g = generate(&mut rng, 8, 40, &["k"]);
        let options = CheckOptions {
            max_steps_per_key: 10,
        };
        let stats = check_with(&g.history, &options).expect("linearizable by construction");
        assert_eq!(stats.decided_by_zones, 1);

        let r = *ok_reads(&g.history).last().expect("a read");
        let old = stale_value(&g.history, r).expect("an old value");
        let mut h = g.history.clone();
        h.ops[r.0].outcome = read(&old);
        let v = check_with(&h, &options).expect_err("a stale read");
        assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
        assert!(v.reason.contains("zone check") && v.decided_by_zones, "{v}");
        assert!(v.reason.contains(&r.to_string()), "{v}");
    }

    #[test]
    fn violation_report_explains_itself() {
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 1, w("b"), 20, 30, Outcome::Written);
        op(&mut h, 2, OpKind::Read, 40, 50, read("a"));
        let text = format!("{:?}", rejected(&h));
        for needle in [
            "history of key \"k\" is not linearizable",
            "longest linearizable prefix: 1 operation:",
            "1. #0 client 1 [0, 10] write \"a\" -> ok",
            "value after the prefix: \"a\"",
            "#1 client 1 [20, 30] write \"b\" -> ok  <- would overwrite \"a\", which #2 still reads",
            "#2 client 2 [40, 50] read -> \"a\"  <- waiting",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }

        // A read of a value from the future.
        let mut h = History::new();
        op(&mut h, 1, w("a"), 0, 10, Outcome::Written);
        op(&mut h, 2, OpKind::Read, 20, 30, read("b"));
        op(&mut h, 1, w("b"), 40, 50, Outcome::Written);
        let text = rejected(&h).to_string();
        let needle = "#1 client 2 [20, 30] read -> \"b\"  <- the register holds \"a\"";
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");

        // A value nobody wrote.
        let mut h = History::new();
        op(&mut h, 1, OpKind::Read, 0, 10, read("ghost"));
        let text = rejected(&h).to_string();
        let needle = "read #0 returned \"ghost\", which no write that did not fail wrote";
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    #[test]
    #[should_panic(expected = "already completed")]
    fn completing_twice_is_a_bug() {
        let mut h = History::new();
        let id = h.invoke(1, "k", OpKind::Read, 0);
        h.complete(id, Outcome::Read(None), 1);
        h.complete(id, Outcome::Read(None), 2);
    }

    #[test]
    #[should_panic(expected = "before its invocation")]
    fn completing_before_invocation_is_a_bug() {
        let mut h = History::new();
        let id = h.invoke(1, "k", OpKind::Read, 10);
        h.complete(id, Outcome::Read(None), 5);
    }

    /// A small deterministic PRNG (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    /// A history that is linearizable by construction.
    struct Generated {
        history: History,
        /// Unknown-outcome operations in it.
        unknown: usize,
    }

    /// Simulates `clients` (at most 31) sequential clients doing `per_client` operations each
    /// on random `keys`. Every operation gets a linearization point strictly inside its
    /// interval (distinct across clients); the register is simulated in the order of those
    /// points. Some writes fail (no effect) or end unknown (with or without effect, sometimes
    /// never completing); some reads fail or end unknown.
    fn generate(rng: &mut Rng, clients: u64, per_client: usize, keys: &[&str]) -> Generated {
        const SCALE: u64 = 32;
        struct Plan {
            client: u64,
            key: String,
            write: Option<String>,
            invoke: u64,
            point: u64,
            complete: u64,
            /// 0 ok, 1 failed, 2 unknown with effect, 3 unknown without effect,
            /// 4 unknown with effect and never completed.
            fate: u8,
        }
        let mut plans = Vec::new();
        let mut counter = 0;
        for client in 1..=clients {
            let mut t = rng.below(4);
            for _ in 0..per_client {
                let a = t + rng.below(3);
                let c = a + rng.below(6);
                let b = c + 1 + rng.below(6);
                t = b;
                let key = keys[rng.below(keys.len() as u64) as usize].to_string();
                let write = rng.percent(40).then(|| {
                    counter += 1;
                    format!("v{counter}")
                });
                let roll = rng.below(100);
                let fate = match (write.is_some(), roll) {
                    (_, 0..=84) => 0,
                    (_, 85..=89) => 1,
                    (true, 90..=94) => 2,
                    (true, 95..=97) => 3,
                    (true, _) => 4,
                    (false, _) => 2,
                };
                plans.push(Plan {
                    client,
                    key,
                    write,
                    invoke: a * SCALE,
                    point: c * SCALE + client,
                    complete: b * SCALE,
                    fate,
                });
            }
        }
        let mut history = History::new();
        let mut register: HashMap<String, Option<String>> = HashMap::new();
        for key in keys {
            let init = rng.percent(50).then(|| format!("init-{key}"));
            register.insert(key.to_string(), init.clone());
            history.set_initial(*key, init);
        }
        let mut order: Vec<usize> = (0..plans.len()).collect();
        order.sort_by_key(|&i| plans[i].point);
        let mut seen: Vec<Option<String>> = vec![None; plans.len()];
        for i in order {
            let p = &plans[i];
            let slot = register.entry(p.key.clone()).or_default();
            match &p.write {
                Some(v) if matches!(p.fate, 0 | 2 | 4) => *slot = Some(v.clone()),
                Some(_) => {}
                None => seen[i] = slot.clone(),
            }
        }
        let mut unknown = 0;
        for (p, seen) in plans.into_iter().zip(seen) {
            let kind = match p.write {
                Some(v) => OpKind::Write(v),
                None => OpKind::Read,
            };
            let write = matches!(kind, OpKind::Write(_));
            let id = history.invoke(p.client, p.key, kind, p.invoke);
            let outcome = match (p.fate, write) {
                (0, true) => Outcome::Written,
                (0, false) => Outcome::Read(seen),
                (1, _) => Outcome::Failed,
                (4, _) => {
                    unknown += 1;
                    continue;
                }
                _ => Outcome::Unknown,
            };
            if outcome == Outcome::Unknown {
                unknown += 1;
            }
            history.complete(id, outcome, p.complete);
        }
        Generated { history, unknown }
    }

    /// A value that read `r` cannot return: that of an acknowledged write W1 on its key such
    /// that another acknowledged write W2 was invoked after W1 completed and completed before
    /// `r` was invoked (so W1 < W2 < r in every linearization; values are unique).
    fn stale_value(h: &History, r: OpId) -> Option<String> {
        let rop = &h.ops[r.0];
        let acked_before_r = |op: &&Operation| {
            op.key == rop.key
                && op.outcome == Outcome::Written
                && op.complete.is_some_and(|c| c < rop.invoke)
        };
        h.ops.iter().filter(acked_before_r).find_map(|w1| {
            let w1_done = w1.complete?;
            let OpKind::Write(value) = &w1.kind else {
                return None;
            };
            h.ops
                .iter()
                .filter(acked_before_r)
                .any(|w2| w2.invoke > w1_done)
                .then(|| value.clone())
        })
    }

    /// Ok reads of the history, with their values.
    fn ok_reads(h: &History) -> Vec<OpId> {
        (0..h.len())
            .map(OpId)
            .filter(|id| matches!(h.ops[id.0].outcome, Outcome::Read(_)))
            .collect()
    }

    #[test]
    fn random_linearizable_histories_are_accepted() {
        let started = Instant::now();
        for seed in 0..1000 {
            let mut rng = Rng(seed);
            let clients = 1 + rng.below(12);
            let per_client = 1 + rng.below(25) as usize;
            let keys: &[&str] = if rng.percent(50) { &["k"] } else { &["k", "j"] };
            let g = generate(&mut rng, clients, per_client, keys);
            if let Err(v) = check(&g.history) {
                panic!("seed {seed}: linearizable by construction, but:\n{v}");
            }
            for key in keys {
                assert_eq!(zone_verdict(&g.history, key), Some(true), "seed {seed}");
            }
        }
        eprintln!("1000 random histories checked in {:?}", started.elapsed());
    }

    #[test]
    fn random_histories_with_impossible_reads_are_rejected() {
        let (mut never, mut future, mut stale) = (0, 0, 0);
        for seed in 1000..1500 {
            let mut rng = Rng(seed);
            let clients = 2 + rng.below(6);
            let per_client = 3 + rng.below(20) as usize;
            let keys: &[&str] = if rng.percent(50) { &["k"] } else { &["k", "j"] };
            let g = generate(&mut rng, clients, per_client, keys);
            check(&g.history).expect("linearizable by construction");
            let reads = ok_reads(&g.history);
            if reads.is_empty() {
                continue;
            }
            let ops = g.history.ops();
            let r = reads[rng.below(reads.len() as u64) as usize];
            let rop = &ops[r.0];
            let r_complete = rop.complete.expect("ok reads complete");

            // 1. A value nobody wrote.
            let mut h = g.history.clone();
            h.ops[r.0].outcome = read("never-written");
            let v = check(&h).expect_err("a read of a value never written");
            assert_eq!(v.kind, ViolationKind::ImpossibleRead, "seed {seed}:\n{v}");
            never += 1;

            // 2. The value of a write invoked after the read completed.
            let later = ops.iter().find_map(|op| match &op.kind {
                OpKind::Write(value)
                    if op.key == rop.key
                        && op.invoke > r_complete
                        && op.outcome != Outcome::Failed =>
                {
                    Some(value.clone())
                }
                _ => None,
            });
            if let Some(value) = later {
                let mut h = g.history.clone();
                h.ops[r.0].outcome = read(&value);
                let v = check(&h).expect_err("a read of a value from the future");
                assert_eq!(v.kind, ViolationKind::NotLinearizable, "seed {seed}:\n{v}");
                assert_eq!(zone_verdict(&h, &rop.key), Some(false), "seed {seed}");
                future += 1;
            }

            // 3. A stale value: W1 completed, then W2 ran entirely, then the read began.
            if let Some(value) = stale_value(&g.history, r) {
                let mut h = g.history.clone();
                h.ops[r.0].outcome = read(&value);
                let v = check(&h).expect_err("a stale read");
                assert_eq!(v.kind, ViolationKind::NotLinearizable, "seed {seed}:\n{v}");
                assert_eq!(zone_verdict(&h, &rop.key), Some(false), "seed {seed}");
                stale += 1;
            }
        }
        eprintln!("rejected {never} never-written, {future} future and {stale} stale reads");
        assert!(
            never > 450 && future > 300 && stale > 250,
            "too few mutations tried"
        );
    }

    /// The zone check's verdict on `key`, if it applies.
    fn zone_verdict(h: &History, key: &str) -> Option<bool> {
        let ids: Vec<OpId> = (0..h.len())
            .map(OpId)
            .filter(|id| h.ops[id.0].key == key)
            .collect();
        let k = prepare(h, key, &ids).ok()?;
        zone_check(&k).map(|verdict| verdict.is_ok())
    }

    /// Decides linearizability of one key by trying every order (small histories only),
    /// straight from the definition: no cache, no pruning, no simplification.
    fn brute_force(h: &History, key: &str) -> bool {
        struct Op {
            invoke: u64,
            ret: Option<u64>,
            write: Option<String>,
            read: Option<Option<String>>,
        }
        let ops: Vec<Op> = h
            .ops
            .iter()
            .filter(|op| op.key == key)
            .filter_map(|op| match (&op.kind, &op.outcome) {
                (OpKind::Write(v), Outcome::Written) => Some(Op {
                    invoke: op.invoke,
                    ret: op.complete,
                    write: Some(v.clone()),
                    read: None,
                }),
                (OpKind::Write(v), Outcome::Unknown) => Some(Op {
                    invoke: op.invoke,
                    ret: None,
                    write: Some(v.clone()),
                    read: None,
                }),
                (OpKind::Read, Outcome::Read(r)) => Some(Op {
                    invoke: op.invoke,
                    ret: op.complete,
                    write: None,
                    read: Some(r.clone()),
                }),
                _ => None,
            })
            .collect();
        fn go(ops: &[Op], used: &mut Vec<bool>, state: Option<String>) -> bool {
            if (0..ops.len()).all(|i| used[i] || ops[i].ret.is_none()) {
                return true;
            }
            for x in 0..ops.len() {
                let blocked = (0..ops.len())
                    .any(|y| !used[y] && ops[y].ret.is_some_and(|r| r < ops[x].invoke));
                if used[x] || blocked {
                    continue;
                }
                let next = match (&ops[x].write, &ops[x].read) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(r)) if *r == state => state.clone(),
                    _ => continue,
                };
                used[x] = true;
                let ok = go(ops, used, next);
                used[x] = false;
                if ok {
                    return true;
                }
            }
            false
        }
        go(
            &ops,
            &mut vec![false; ops.len()],
            h.initial(key).map(str::to_string),
        )
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let (mut yes, mut searched_no, mut impossible) = (0, 0, 0);
        let (mut zoned, mut zoned_no) = (0, 0);
        for seed in 0..20_000 {
            let mut rng = Rng(seed);
            let mut h = History::new();
            if rng.percent(30) {
                h.set_initial("k", Some("v0".to_string()));
            }
            // Values repeat sometimes, to exercise the general (optional unknown write) path.
            let mut values = vec!["v0".to_string()];
            for i in 0..(2 + rng.below(6)) {
                let invoke = rng.below(12);
                let complete = invoke + rng.below(8);
                let client = i;
                if rng.percent(50) {
                    let value = if rng.percent(15) {
                        values[rng.below(values.len() as u64) as usize].clone()
                    } else {
                        format!("v{}", values.len())
                    };
                    values.push(value.clone());
                    let id = h.invoke(client, "k", OpKind::Write(value), invoke);
                    match rng.below(10) {
                        0..=5 => h.complete(id, Outcome::Written, complete),
                        6 => h.complete(id, Outcome::Failed, complete),
                        7 | 8 => h.complete(id, Outcome::Unknown, complete),
                        _ => {}
                    }
                } else {
                    let seen = match rng.below(values.len() as u64 + 1) {
                        0 => None,
                        i => Some(values[i as usize - 1].clone()),
                    };
                    let id = h.invoke(client, "k", OpKind::Read, invoke);
                    match rng.below(10) {
                        0..=7 => h.complete(id, Outcome::Read(seen), complete),
                        8 => h.complete(id, Outcome::Failed, complete),
                        _ => h.complete(id, Outcome::Unknown, complete),
                    }
                }
            }
            let expected = brute_force(&h, "k");
            if let Some(zones) = zone_verdict(&h, "k") {
                assert_eq!(
                    zones, expected,
                    "seed {seed}: zone check, history {:#?}",
                    h.ops
                );
                zoned += 1;
                zoned_no += usize::from(!zones);
            }
            let got = check(&h);
            if let Err(v) = &got {
                assert!(!v.gave_up(), "seed {seed}: gave up:\n{v}");
            }
            assert_eq!(
                got.is_ok(),
                expected,
                "seed {seed}: brute force says {expected}, check says {got:?}, history {:#?}",
                h.ops
            );
            match got {
                Ok(()) => yes += 1,
                Err(v) if v.kind == ViolationKind::ImpossibleRead => impossible += 1,
                Err(_) => searched_no += 1,
            }
        }
        eprintln!(
            "{yes} linearizable, {searched_no} not, {impossible} impossible reads; \
             the zone check also decided {zoned}, {zoned_no} of them not linearizable"
        );
        assert!(yes > 3000 && searched_no > 2000, "too few of a kind");
        assert!(zoned > 5000 && zoned_no > 1000, "too few zone checks");
    }

    #[test]
    fn large_concurrent_history_is_checked_quickly() {
        let mut rng = Rng(42);
        let g = generate(&mut rng, 16, 200, &["k"]);
        assert!(g.unknown >= 20, "only {} unknown operations", g.unknown);
        let started = Instant::now();
        let stats = check_with(&g.history, &CheckOptions::default()).expect("linearizable");
        let elapsed = started.elapsed();
        eprintln!(
            "{} operations, 16 clients, {} unknown: {} steps in {elapsed:?}",
            stats.ops, g.unknown, stats.steps
        );
        assert!(stats.steps < 200_000, "{} steps", stats.steps);

        // The same history with one stale read near the end must be rejected, also quickly.
        let reads = ok_reads(&g.history);
        let last = reads[reads.len() - 10];
        let old = stale_value(&g.history, last).expect("an old value");
        let mut h = g.history.clone();
        h.ops[last.0].outcome = read(&old);
        let started = Instant::now();
        let v = check(&h).expect_err("stale read");
        eprintln!(
            "with a stale read: rejected in {} steps, {:?}",
            v.steps,
            started.elapsed()
        );
        assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
    }

    #[test]
    fn many_unknown_writes_do_not_blow_up() {
        // 40 concurrent unknown writes, none read: all dropped. Then 40 read ones: all bounded.
        let mut h = History::new();
        op(&mut h, 0, w("base"), 0, 1, Outcome::Written);
        for i in 0..40 {
            let id = h.invoke(i + 1, "k", w(&format!("u{i}")), 10 + i);
            if i % 2 == 0 {
                h.complete(id, Outcome::Unknown, 100);
            }
        }
        for i in 0..40 {
            op(
                &mut h,
                100 + i,
                OpKind::Read,
                200 + 10 * i,
                205 + 10 * i,
                read("base"),
            );
        }
        let started = Instant::now();
        // "base" must stay visible to all reads, so none of the unknown writes took effect.
        let stats = check_with(&h, &CheckOptions::default()).expect("no unknown write applied");
        eprintln!("40 unread unknown writes: {} steps", stats.steps);

        // Now every unknown write is observed once, in order, after all were invoked.
        let mut h2 = History::new();
        op(&mut h2, 0, w("base"), 0, 1, Outcome::Written);
        for i in 0..40 {
            let id = h2.invoke(i + 1, "k", w(&format!("u{i}")), 10 + i);
            h2.complete(id, Outcome::Unknown, 100);
        }
        for i in 0..40 {
            op(
                &mut h2,
                100 + i,
                OpKind::Read,
                200 + 10 * i,
                205 + 10 * i,
                read(&format!("u{i}")),
            );
        }
        let stats = check_with(&h2, &CheckOptions::default()).expect("applied one by one");
        eprintln!(
            "40 read unknown writes: {} steps; both in {:?}",
            stats.steps,
            started.elapsed()
        );
        assert!(stats.steps < 100_000, "{} steps", stats.steps);
    }
}
