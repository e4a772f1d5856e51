//! The coordinator's side of two-phase commit as plain code: when a
//! transaction is decided, what must be durable before anyone hears of it,
//! and what a counter that asks about a transaction is told. Presumed
//! abort: only commit decisions are logged, and a transaction with no
//! logged decision that is no longer in flight was aborted.
//!
//! This is a model. The coordinator binary runs the same rules in async
//! code, spread over `coordinator/src/txn.rs` (prepare, votes, sending
//! commits and aborts), `decider.rs` (deciding in batches, logging before
//! answering) and `http.rs` (`outcome`); its decision rule proper is
//! `membership::Cluster::decide`, which also takes the in-sync set into
//! account. Here the rule is "at least `min_yes` yes votes", which is what
//! the 2PC guarantees depend on. The property test
//! `tests/two_phase_commit.rs` drives this model and several
//! [`Participant`](crate::participant::Participant)s through lost,
//! duplicated and reordered messages and crashes of either side. Trimming
//! the log is not modelled: it is a membership matter (protocol.md,
//! "Trimming").
//!
//! The order that matters, and why:
//!
//! 1. A commit decision takes the next commit index and is persisted;
//!    the client is answered and commits are sent only once that record is
//!    durable. A crash before then loses the decision, and the transaction
//!    was aborted: nobody heard of it, and its index is given again.
//! 2. A transaction stays "in flight" until its decision is durable, so a
//!    counter that asks meanwhile is told "pending", never "aborted".
//! 3. An abort is not logged and is sent best effort: a counter that misses
//!    it asks, and hears "aborted" because nothing is logged.
//! 4. Commits are re-sent until every yes voter acknowledged them; a
//!    restarted coordinator re-sends every logged decision to every counter
//!    it knows, because it no longer knows who voted.

use crate::api::Outcome;
use crate::{CommitIndex, CounterId, TxnId};
use std::collections::{BTreeMap, BTreeSet};

/// What happens to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new transaction, to be prepared on `participants`.
    Begin {
        txn: TxnId,
        participants: BTreeSet<CounterId>,
    },
    /// A participant's answer to a prepare: `yes` once its prepare is
    /// durable, not `yes` for an error.
    Voted {
        txn: TxnId,
        from: CounterId,
        yes: bool,
    },
    /// The prepare deadline of `txn` passed: decide on the votes so far.
    PrepareTimeout { txn: TxnId },
    /// The [`Record::Decision`] of `txn` is durable.
    Logged { txn: TxnId },
    /// `from` has applied the commit at `index`, or answered that it does
    /// not hold the transaction (it will copy the index from a peer).
    Acked { index: CommitIndex, from: CounterId },
    /// Re-send timer.
    Resend,
    /// A participant asks what became of `txn`.
    AskOutcome { txn: TxnId, from: CounterId },
}

/// What the carrier must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make `record` durable, then report [`Event::Logged`].
    Persist(Record),
    SendPrepare {
        to: CounterId,
        txn: TxnId,
    },
    SendCommit {
        to: CounterId,
        txn: TxnId,
        index: CommitIndex,
    },
    SendAbort {
        to: CounterId,
        txn: TxnId,
    },
    /// Answer the client requests of `txn`: committed at this index (200),
    /// or aborted (503).
    Reply {
        txn: TxnId,
        committed: Option<CommitIndex>,
    },
    Answer {
        to: CounterId,
        txn: TxnId,
        outcome: Outcome,
    },
}

/// A durable change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `txn` committed at `index`; also raises the decided index.
    Decision { txn: TxnId, index: CommitIndex },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum InFlight {
    Preparing {
        awaited: BTreeSet<CounterId>,
        yes: BTreeSet<CounterId>,
    },
    /// Decided to commit; the decision is not durable yet.
    Logging {
        index: CommitIndex,
        yes: BTreeSet<CounterId>,
    },
}

/// The coordinator's 2PC state. `log` is durable; the rest is rebuilt
/// from it by [`Coordinator::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinator {
    min_yes: usize,
    log: BTreeMap<TxnId, CommitIndex>,
    /// The index the next commit decision takes.
    next_index: CommitIndex,
    in_flight: BTreeMap<TxnId, InFlight>,
    /// Logged commits and the counters that have not acknowledged them.
    pending: BTreeMap<CommitIndex, (TxnId, BTreeSet<CounterId>)>,
}

impl Coordinator {
    /// A coordinator with an empty log. A transaction commits with at least
    /// `min_yes` (at least 1) yes votes.
    pub fn new(min_yes: usize) -> Self {
        Coordinator {
            min_yes: min_yes.max(1),
            log: BTreeMap::new(),
            next_index: CommitIndex(1),
            in_flight: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Restarts from the durable log: every transaction that was in flight
    /// is aborted (it has no logged decision), and every logged decision is
    /// sent again to every counter in `counters`.
    pub fn recover(
        min_yes: usize,
        log: impl IntoIterator<Item = (TxnId, CommitIndex)>,
        counters: &BTreeSet<CounterId>,
    ) -> (Self, Vec<Action>) {
        let mut coordinator = Coordinator::new(min_yes);
        coordinator.log = log.into_iter().collect();
        let decided = coordinator.log.values().max().copied().unwrap_or_default();
        coordinator.next_index = decided.next();
        let mut actions = Vec::new();
        for (&txn, &index) in &coordinator.log {
            coordinator.pending.insert(index, (txn, counters.clone()));
            actions.extend(counters.iter().map(|to| Action::SendCommit {
                to: to.clone(),
                txn,
                index,
            }));
        }
        (coordinator, actions)
    }

    /// The durable decisions, in transaction id order.
    pub fn log(&self) -> impl Iterator<Item = (TxnId, CommitIndex)> + '_ {
        self.log.iter().map(|(&t, &i)| (t, i))
    }

    /// Transactions not yet decided durably, in id order.
    pub fn in_flight(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.in_flight.keys().copied()
    }

    /// Logged commits some yes voter has not acknowledged yet.
    pub fn unacknowledged(&self) -> usize {
        self.pending.len()
    }

    /// Takes one event and returns what to do.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Begin { txn, participants } => {
                let actions = participants
                    .iter()
                    .map(|to| Action::SendPrepare {
                        to: to.clone(),
                        txn,
                    })
                    .collect();
                self.in_flight.insert(
                    txn,
                    InFlight::Preparing {
                        awaited: participants,
                        yes: BTreeSet::new(),
                    },
                );
                actions
            }
            Event::Voted { txn, from, yes } => {
                // A vote after the decision is not counted: that counter
                // learns the outcome by asking.
                let Some(InFlight::Preparing { awaited, yes: ayes }) = self.in_flight.get_mut(&txn)
                else {
                    return Vec::new();
                };
                if awaited.remove(&from) && yes {
                    ayes.insert(from);
                }
                if awaited.is_empty() {
                    self.decide(txn)
                } else {
                    Vec::new()
                }
            }
            Event::PrepareTimeout { txn } => self.decide(txn),
            Event::Logged { txn } => {
                let Some(InFlight::Logging { index, yes }) = self.in_flight.remove(&txn) else {
                    return Vec::new();
                };
                self.log.insert(txn, index);
                let mut actions = vec![Action::Reply {
                    txn,
                    committed: Some(index),
                }];
                actions.extend(yes.iter().map(|to| Action::SendCommit {
                    to: to.clone(),
                    txn,
                    index,
                }));
                if !yes.is_empty() {
                    self.pending.insert(index, (txn, yes));
                }
                actions
            }
            Event::Acked { index, from } => {
                if let Some((_, waiting)) = self.pending.get_mut(&index) {
                    waiting.remove(&from);
                    if waiting.is_empty() {
                        self.pending.remove(&index);
                    }
                }
                Vec::new()
            }
            Event::Resend => self
                .pending
                .iter()
                .flat_map(|(&index, (txn, waiting))| {
                    waiting.iter().map(move |to| Action::SendCommit {
                        to: to.clone(),
                        txn: *txn,
                        index,
                    })
                })
                .collect(),
            Event::AskOutcome { txn, from } => {
                let outcome = if self.in_flight.contains_key(&txn) {
                    Outcome::Pending
                } else if let Some(&index) = self.log.get(&txn) {
                    Outcome::Committed { index }
                } else {
                    Outcome::Aborted
                };
                vec![Action::Answer {
                    to: from,
                    txn,
                    outcome,
                }]
            }
        }
    }

    fn decide(&mut self, txn: TxnId) -> Vec<Action> {
        let Some(InFlight::Preparing { yes, .. }) = self.in_flight.get(&txn) else {
            return Vec::new();
        };
        let yes = yes.clone();
        if yes.len() >= self.min_yes {
            let index = self.next_index;
            self.next_index = index.next();
            self.in_flight.insert(txn, InFlight::Logging { index, yes });
            vec![Action::Persist(Record::Decision { txn, index })]
        } else {
            // Presumed abort: nothing to log, so the answer goes out now.
            self.in_flight.remove(&txn);
            let mut actions = vec![Action::Reply {
                txn,
                committed: None,
            }];
            actions.extend(yes.into_iter().map(|to| Action::SendAbort { to, txn }));
            actions
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str) -> CounterId {
        CounterId::from(name)
    }

    fn both() -> BTreeSet<CounterId> {
        [c("a"), c("b")].into_iter().collect()
    }

    #[test]
    fn nobody_hears_of_a_commit_before_it_is_logged() {
        let mut co = Coordinator::new(1);
        let t = TxnId(1);
        co.step(Event::Begin {
            txn: t,
            participants: both(),
        });
        let yes = |from| Event::Voted {
            txn: t,
            from,
            yes: true,
        };
        assert_eq!(co.step(yes(c("a"))), vec![]);
        let decided = co.step(yes(c("b")));
        assert_eq!(
            decided,
            vec![Action::Persist(Record::Decision {
                txn: t,
                index: CommitIndex(1)
            })],
            "only the log write, no reply and no commit yet"
        );
        let ask = co.step(Event::AskOutcome {
            txn: t,
            from: c("a"),
        });
        assert!(matches!(
            ask[0],
            Action::Answer {
                outcome: Outcome::Pending,
                ..
            }
        ));
        let logged = co.step(Event::Logged { txn: t });
        assert_eq!(logged.len(), 3, "reply, then a commit to each voter");
        assert_eq!(
            logged[0],
            Action::Reply {
                txn: t,
                committed: Some(CommitIndex(1))
            }
        );
    }

    #[test]
    fn a_crash_before_the_log_write_aborts_and_reuses_the_index() {
        let mut co = Coordinator::new(1);
        co.step(Event::Begin {
            txn: TxnId(1),
            participants: both(),
        });
        co.step(Event::Voted {
            txn: TxnId(1),
            from: c("a"),
            yes: true,
        });
        co.step(Event::PrepareTimeout { txn: TxnId(1) });
        let (mut co, resend) = Coordinator::recover(1, [], &both());
        assert!(resend.is_empty());
        let ask = co.step(Event::AskOutcome {
            txn: TxnId(1),
            from: c("a"),
        });
        assert!(matches!(
            ask[0],
            Action::Answer {
                outcome: Outcome::Aborted,
                ..
            }
        ));
        co.step(Event::Begin {
            txn: TxnId(2),
            participants: both(),
        });
        let decided = co.step(Event::PrepareTimeout { txn: TxnId(2) });
        assert!(
            matches!(
                decided[0],
                Action::Reply {
                    committed: None,
                    ..
                }
            ),
            "no votes"
        );
    }

    #[test]
    fn a_restart_resends_every_logged_decision_to_every_counter() {
        let (mut co, resend) = Coordinator::recover(1, [(TxnId(7), CommitIndex(4))], &both());
        assert_eq!(resend.len(), 2);
        co.step(Event::Acked {
            index: CommitIndex(4),
            from: c("a"),
        });
        assert_eq!(co.unacknowledged(), 1);
        assert_eq!(
            co.step(Event::Resend),
            vec![Action::SendCommit {
                to: c("b"),
                txn: TxnId(7),
                index: CommitIndex(4)
            }]
        );
        co.step(Event::Begin {
            txn: TxnId(8),
            participants: both(),
        });
        co.step(Event::Voted {
            txn: TxnId(8),
            from: c("b"),
            yes: true,
        });
        let decided = co.step(Event::PrepareTimeout { txn: TxnId(8) });
        assert_eq!(
            decided,
            vec![Action::Persist(Record::Decision {
                txn: TxnId(8),
                index: CommitIndex(5)
            })],
            "indexes continue after the logged ones"
        );
    }
}
