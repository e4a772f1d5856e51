//! What several coordinators must agree on, checked after every step of
//! each:
//!
//! * **one leader per term**: no two coordinators (nor two lives of one)
//!   ever run a core in the same term. The core's epoch is the term, and
//!   transaction ids and registrations carry it: two cores in one term
//!   could hand out the same transaction id, and counters could not tell
//!   their calls apart.
//! * **one replicated state**: every coordinator that has applied the log
//!   up to an index holds the same `DecisionState` there, whether it got
//!   there entry by entry or from a snapshot;
//! * **one decision per index, gap-free**: every decision a coordinator
//!   applies names the transaction any other applied at that index
//!   (`History::logged`), and the decisions it holds follow each other
//!   with no gap up to its decided index;
//! * **no majority, no decision**: while two of three coordinators are
//!   down, no new decision is applied anywhere (past the time a message
//!   already on its way may take): writes stall, and what they stall on
//!   is not lost (the checker's other properties).

use crate::world::World;
use std::collections::BTreeMap;

/// How long after a majority went down a decision it had made may still
/// be applied for the first time: the longest a message can be on its way
/// (a stalled connection, a slow network, a retry).
const IN_FLIGHT_MS: u64 = 1000;

/// What the coordinators have shown so far.
#[derive(Debug, Default)]
pub struct Agreement {
    /// Since when a majority of the coordinators has been down.
    majority_down_since: Option<u64>,
    /// Term → the coordinator (and its life) that ran a core in it.
    leaders: BTreeMap<u64, (usize, u64)>,
    /// Applied index → a digest of the state there, and who showed it first.
    states: BTreeMap<u64, (u64, usize)>,
}

/// FNV-1a: a digest of an encoded state, small enough to keep one per
/// applied index.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl World {
    /// A coordinator went down or came back.
    pub(crate) fn agreement_up_or_down(&mut self) {
        let down = self.coordinators_down();
        if down * 2 > self.coordinators.len() {
            self.agreement.majority_down_since.get_or_insert(self.now);
        } else {
            self.agreement.majority_down_since = None;
        }
    }

    /// Coordinator `k`, in its life `life`, started a core in `term`.
    pub(crate) fn agreement_leading(&mut self, k: usize, life: u64, term: u64) {
        match self.agreement.leaders.get(&term) {
            Some(&(other, other_life)) if (other, other_life) != (k, life) => {
                let state = self.describe_cluster();
                self.history.violation(
                    "one leader per term",
                    format!(
                        "coordinator {k} (life {life}) runs a core in term {term}, as coordinator \
                         {other} (life {other_life}) did\n{state}"
                    ),
                );
            }
            _ => {
                self.agreement.leaders.insert(term, (k, life));
            }
        }
    }

    /// Checks what coordinator `k` has applied since the last check.
    pub(crate) fn check_agreement(&mut self, k: usize) {
        let Some(r) = self.coordinators[k].replica.as_ref() else {
            return;
        };
        let Some(node) = r.node.as_ref() else {
            return;
        };
        let applied = node.applied();
        if applied == r.applied_seen {
            return;
        }
        let state = node.state();
        let decided_seen = r.decided_seen;
        let mut problems = Vec::new();
        let mut previous = None;
        for (txn, index) in &state.decisions {
            if previous.is_some_and(|p: tally_common::CommitIndex| p.next() != *index) {
                problems.push((
                    "gap-free indexes",
                    format!(
                        "coordinator {k} holds decisions at {} and {index} and none between",
                        previous.expect("checked")
                    ),
                ));
            }
            previous = Some(*index);
            if *index > decided_seen {
                let new = !self.history.decided.contains_key(index);
                self.history.logged(*txn, *index, self.now);
                if let Some(since) = self.agreement.majority_down_since {
                    if new && self.now > since + IN_FLIGHT_MS {
                        problems.push((
                            "no majority, no decision",
                            format!(
                                "coordinator {k} applies a new decision at {index} ({txn}) \
                                 while a majority of coordinators has been down since {since}"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(last) = previous {
            if last != state.decided {
                problems.push((
                    "gap-free indexes",
                    format!(
                        "coordinator {k} holds decisions up to {last} but decided {}",
                        state.decided
                    ),
                ));
            }
        }
        let digest = digest(&state.encode());
        let decided = state.decided;
        let r = self.coordinators[k].replica.as_mut().expect("checked");
        r.applied_seen = applied;
        r.decided_seen = decided;
        match self.agreement.states.get(&applied) {
            Some(&(d, other)) if d != digest => problems.push((
                "one replicated state",
                format!(
                    "coordinator {k} applied the log up to {applied} and holds another decision \
                     state there than coordinator {other} did"
                ),
            )),
            Some(_) => {}
            None => {
                self.agreement.states.insert(applied, (digest, k));
            }
        }
        for (property, detail) in problems {
            let state = self.describe_cluster();
            self.history
                .violation(property, format!("{detail}\n{state}"));
        }
    }
}
