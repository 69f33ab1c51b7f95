//! Chaos testing: record what clients saw while faults were injected, then check it.
//!
//! This first piece is the checker. A [`History`] holds key-value operations as clients saw
//! them: when each was invoked, when (and whether) it returned, and what it returned. The
//! history is **linearizable** if every operation can be placed at one instant between its call
//! and its return such that the results match a single sequential key-value store. An operation
//! whose outcome is unknown (the client timed out, its server was killed) may have taken effect
//! at any time after its call, or never.
//!
//! The search is Wing & Gong's, with the memoization of Lowe (and Porcupine): a state is the set
//! of operations already placed plus the register's value, and a state seen once is never
//! explored again. Keys are independent (a KV store is linearizable iff each key is), so the
//! history is split per key first.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// What one operation did to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Wrote `value` (`None`: deleted the key).
    Write(Option<String>),
    /// Read, and saw `value` (`None`: the key was absent). Unknown for a read that never
    /// returned; such reads constrain nothing and can be left out.
    Read(Option<String>),
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The key.
    pub key: String,
    /// What it did.
    pub action: Action,
    /// When it was invoked (any monotonic clock, e.g. nanoseconds since the run began).
    pub call: u64,
    /// When it returned; `None` if its outcome is unknown.
    pub ret: Option<u64>,
}

/// A recorded run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Every operation, in any order.
    pub ops: Vec<Operation>,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("history of key {key:?} is not linearizable ({ops} operations); e.g. {example}")]
pub struct Violation {
    /// The key whose operations cannot be ordered.
    pub key: String,
    /// How many operations that key had.
    pub ops: usize,
    /// A completed read no ordering can explain, described for a person.
    pub example: String,
}

impl History {
    /// Checks the history; `Ok` if it is linearizable.
    pub fn check(&self) -> Result<(), Violation> {
        let mut per_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
        for op in &self.ops {
            // A read with no known result tells nothing.
            if op.ret.is_none() && matches!(op.action, Action::Read(_)) {
                continue;
            }
            per_key.entry(&op.key).or_default().push(op);
        }
        for (key, ops) in per_key {
            if !Register::new(&ops).linearizable() {
                return Err(Violation {
                    key: key.to_string(),
                    ops: ops.len(),
                    example: first_unexplained_read(&ops),
                });
            }
        }
        Ok(())
    }
}

fn first_unexplained_read(ops: &[&Operation]) -> String {
    let written: HashSet<Option<&String>> = ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::Write(v) => Some(v.as_ref()),
            Action::Read(_) => None,
        })
        .chain([None])
        .collect();
    for o in ops {
        if let Action::Read(v) = &o.action {
            if !written.contains(&v.as_ref()) {
                return format!("a read at {} saw {v:?}, which nothing wrote", o.call);
            }
        }
    }
    "reads and writes cannot be ordered consistently with real time".into()
}

/// The search over one key's operations.
struct Register<'a> {
    ops: Vec<&'a Operation>,
}

impl<'a> Register<'a> {
    fn new(ops: &[&'a Operation]) -> Register<'a> {
        let mut ops = ops.to_vec();
        ops.sort_by_key(|o| o.call);
        Register { ops }
    }

    fn linearizable(&self) -> bool {
        let n = self.ops.len();
        let mut placed = vec![false; n];
        let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
        self.search(&mut placed, None, &mut seen)
    }

    fn bits(placed: &[bool]) -> Vec<u64> {
        let mut out = vec![0u64; placed.len().div_ceil(64)];
        for (i, p) in placed.iter().enumerate() {
            if *p {
                out[i / 64] |= 1 << (i % 64);
            }
        }
        out
    }

    fn search(
        &self,
        placed: &mut Vec<bool>,
        value: Option<String>,
        seen: &mut HashSet<(Vec<u64>, Option<String>)>,
    ) -> bool {
        // Done when every operation that returned has been placed; operations with unknown
        // outcomes may simply never have happened.
        let pending_completed = self
            .ops
            .iter()
            .zip(placed.iter())
            .any(|(o, p)| !p && o.ret.is_some());
        if !pending_completed {
            return true;
        }
        if !seen.insert((Self::bits(placed), value.clone())) {
            return false;
        }
        // An operation can go next only if no unplaced operation returned before it was called.
        let horizon = self
            .ops
            .iter()
            .zip(placed.iter())
            .filter(|(_, p)| !**p)
            .filter_map(|(o, _)| o.ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if placed[i] || op.call > horizon {
                continue;
            }
            let next = match &op.action {
                Action::Write(v) => v.clone(),
                Action::Read(v) => {
                    if *v != value {
                        continue;
                    }
                    value.clone()
                }
            };
            placed[i] = true;
            if self.search(placed, next, seen) {
                return true;
            }
            placed[i] = false;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, v: &str, call: u64, ret: Option<u64>) -> Operation {
        Operation {
            key: key.into(),
            action: Action::Write(Some(v.into())),
            call,
            ret,
        }
    }

    fn r(key: &str, v: Option<&str>, call: u64, ret: u64) -> Operation {
        Operation {
            key: key.into(),
            action: Action::Read(v.map(String::from)),
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = History {
            ops: vec![
                r("k", None, 0, 1),
                w("k", "a", 2, Some(3)),
                r("k", Some("a"), 4, 5),
            ],
        };
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        // The write overlaps both reads: old-then-new is fine.
        let h = History {
            ops: vec![
                w("k", "a", 0, Some(10)),
                r("k", None, 1, 2),
                r("k", Some("a"), 3, 4),
            ],
        };
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        // The write returned before the read started, yet the read saw the old value: this is
        // what losing an acknowledged write looks like.
        let h = History {
            ops: vec![w("k", "a", 0, Some(1)), r("k", None, 2, 3)],
        };
        let v = h.check().unwrap_err();
        assert_eq!(v.key, "k");
    }

    #[test]
    fn new_then_old_is_not_linearizable() {
        let h = History {
            ops: vec![
                w("k", "a", 0, Some(1)),
                w("k", "b", 2, Some(10)),
                r("k", Some("b"), 3, 4),
                r("k", Some("a"), 5, 6),
            ],
        };
        assert!(h.check().is_err());
    }

    #[test]
    fn unknown_outcomes_may_take_effect_late_or_never() {
        let h = History {
            ops: vec![
                w("k", "lost?", 0, None),
                r("k", None, 5, 6),
                r("k", Some("lost?"), 7, 8),
            ],
        };
        assert_eq!(h.check(), Ok(()));
        let never = History {
            ops: vec![w("k", "x", 0, None), r("k", None, 5, 6)],
        };
        assert_eq!(never.check(), Ok(()));
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_explained() {
        let h = History {
            ops: vec![w("k", "a", 0, Some(1)), r("k", Some("zz"), 2, 3)],
        };
        let v = h.check().unwrap_err();
        assert!(v.example.contains("nothing wrote"), "{v}");
    }

    #[test]
    fn keys_are_checked_independently_and_large_histories_finish() {
        let mut ops = Vec::new();
        for i in 0..200u64 {
            let key = format!("k{}", i % 4);
            ops.push(w(&key, &i.to_string(), i * 10, Some(i * 10 + 15)));
            ops.push(r(&key, Some(&i.to_string()), i * 10 + 16, i * 10 + 17));
        }
        assert_eq!(History { ops }.check(), Ok(()));
    }
}
