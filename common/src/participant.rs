//! A counter's side of two-phase commit as plain code: which transactions it
//! holds prepared, which commit indexes it has applied, and, for every
//! prepare, commit, abort, copied range or outcome that arrives, what to
//! write durably and what to answer.
//!
//! The counter's writer thread feeds every operation of a storage batch
//! through [`Participant::step`] and carries out the [`Action`]s in one
//! durable write (`counter/src/store.rs`); the items themselves are payload
//! the participant never looks at, so they stay in the carrier and in
//! storage. Every change of state comes with a [`Record`] to persist, which
//! is why a restart, [`Participant::recover`] from what storage holds, loses
//! nothing: the whole state is durable.
//!
//! The rules, and why (docs/protocol.md has the protocol around them):
//!
//! * **Prepare**: persist the prepared record, then vote yes. The vote is
//!   sent only once the record is durable, so a yes survives a crash. There
//!   is no decided "no": a counter that cannot persist answers an error,
//!   which the coordinator counts like a timeout.
//! * **Commit of a prepared transaction**: apply its items at the index and
//!   drop the record, in one write.
//! * **Commit of an index already applied** (a duplicate, or an index a
//!   catch-up copied from a peer): acknowledge, drop the record if any,
//!   apply nothing. Applying twice would be harmless for the items (a set)
//!   but not for the per-index log that peers copy.
//! * **Commit of a transaction neither prepared nor applied**: refuse (409).
//!   The counter does not have the items, and a commit carries only the id
//!   and index; the coordinator stops re-sending and the counter copies the
//!   index from a peer, which catch-up does before it is in sync again.
//! * **Abort**: drop the record if any and acknowledge. Idempotent, and an
//!   abort for an unknown transaction is not an error (presumed abort: it
//!   may be a re-send, or the prepare never arrived).
//! * **In doubt** (prepared, no outcome for too long) and **restart**: ask
//!   the coordinator. Its answer is applied like a commit or an abort. A
//!   prepare that arrives after its abort (a delayed request) is persisted
//!   again, and is cleared the same way: the coordinator answers "aborted".

use crate::api::Outcome;
use crate::applied::AppliedSet;
use crate::{CommitIndex, TxnId};
use std::collections::BTreeSet;

/// What happens to a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Phase one: `txn`'s items arrive, to be held until the outcome.
    Prepare { txn: TxnId },
    /// Phase two: `txn` committed at `index`.
    Commit { txn: TxnId, index: CommitIndex },
    /// Phase two: `txn` aborted.
    Abort { txn: TxnId },
    /// Entries copied from a peer were imported. With `range`, the peer's
    /// stream ended complete, so every index in `(since, through]` is held.
    Imported {
        range: Option<(CommitIndex, CommitIndex)>,
    },
    /// `txn` has waited for its outcome longer than the carrier tolerates.
    InDoubt { txn: TxnId },
    /// The coordinator's answer to [`Action::AskOutcome`].
    Outcome { txn: TxnId, outcome: Outcome },
}

/// What the carrier must do, in order. Answers (votes, acks, refusals) go out
/// only once every [`Action::Persist`] before them is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Persist(Record),
    /// Answer the prepare of `txn`: yes.
    VoteYes {
        txn: TxnId,
    },
    /// Answer a commit or abort of `txn`: done (200).
    Ack {
        txn: TxnId,
    },
    /// Answer a commit of `txn` at `index`: not prepared here (409).
    UnknownTxn {
        txn: TxnId,
        index: CommitIndex,
    },
    /// Ask the coordinator for the outcome of `txn`.
    AskOutcome {
        txn: TxnId,
    },
}

/// A durable change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Store `txn`'s items as prepared.
    Prepared { txn: TxnId },
    /// Add `txn`'s prepared items at `index`, record `index` as applied, and
    /// delete the prepared record.
    Applied { txn: TxnId, index: CommitIndex },
    /// Delete `txn`'s prepared record.
    Forgotten { txn: TxnId },
    /// Record every index in `(since, through]` as applied.
    AppliedRange {
        since: CommitIndex,
        through: CommitIndex,
    },
}

/// The participant's state: every field is durable (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Participant {
    prepared: BTreeSet<TxnId>,
    applied: AppliedSet,
}

impl Participant {
    /// Rebuilds the participant from what storage holds, after a restart.
    /// Every prepared transaction is in doubt: nothing says whether its
    /// outcome was sent while the process was down.
    pub fn recover(
        prepared: impl IntoIterator<Item = TxnId>,
        applied: AppliedSet,
    ) -> (Self, Vec<Action>) {
        let participant = Participant {
            prepared: prepared.into_iter().collect(),
            applied,
        };
        let ask = participant
            .prepared
            .iter()
            .map(|&txn| Action::AskOutcome { txn })
            .collect();
        (participant, ask)
    }

    /// The transactions held prepared, in id order.
    pub fn prepared(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.prepared.iter().copied()
    }

    pub fn is_prepared(&self, txn: TxnId) -> bool {
        self.prepared.contains(&txn)
    }

    /// The commit indexes applied here.
    pub fn applied(&self) -> &AppliedSet {
        &self.applied
    }

    /// Takes one event and returns what to persist and answer.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        match event {
            #[cfg(not(feature = "mutate-vote-before-durable"))]
            Event::Prepare { txn } => {
                self.prepared.insert(txn);
                vec![
                    Action::Persist(Record::Prepared { txn }),
                    Action::VoteYes { txn },
                ]
            }
            // Mutation: the yes vote leaves before the prepared record is
            // durable, so a crash can lose a vote that was counted.
            #[cfg(feature = "mutate-vote-before-durable")]
            Event::Prepare { txn } => {
                self.prepared.insert(txn);
                vec![
                    Action::VoteYes { txn },
                    Action::Persist(Record::Prepared { txn }),
                ]
            }
            Event::Commit { txn, index } => self.commit(txn, index),
            Event::Abort { txn } => self.abort(txn),
            Event::Imported { range: None } => Vec::new(),
            Event::Imported {
                range: Some((since, through)),
            } => {
                self.applied.insert_through(since, through);
                vec![Action::Persist(Record::AppliedRange { since, through })]
            }
            Event::InDoubt { txn } if self.prepared.contains(&txn) => {
                vec![Action::AskOutcome { txn }]
            }
            Event::InDoubt { .. } => Vec::new(),
            Event::Outcome {
                txn,
                outcome: Outcome::Committed { index },
            } => self.commit(txn, index),
            Event::Outcome {
                txn,
                outcome: Outcome::Aborted,
            } => self.abort(txn),
            // Still being decided: the next in-doubt tick asks again.
            Event::Outcome {
                outcome: Outcome::Pending,
                ..
            } => Vec::new(),
        }
    }

    fn commit(&mut self, txn: TxnId, index: CommitIndex) -> Vec<Action> {
        let was_prepared = self.prepared.remove(&txn);
        if self.applied.contains(index) {
            let mut actions = Vec::with_capacity(2);
            if was_prepared {
                actions.push(Action::Persist(Record::Forgotten { txn }));
            }
            actions.push(Action::Ack { txn });
            actions
        } else if was_prepared {
            self.applied.insert(index);
            vec![
                Action::Persist(Record::Applied { txn, index }),
                Action::Ack { txn },
            ]
        } else {
            vec![Action::UnknownTxn { txn, index }]
        }
    }

    fn abort(&mut self, txn: TxnId) -> Vec<Action> {
        if self.prepared.remove(&txn) {
            vec![
                Action::Persist(Record::Forgotten { txn }),
                Action::Ack { txn },
            ]
        } else {
            vec![Action::Ack { txn }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: TxnId = TxnId(1);
    const T2: TxnId = TxnId(2);

    fn at(i: u64) -> CommitIndex {
        CommitIndex(i)
    }

    /// One scripted case: events in, the actions each one must produce.
    fn run(participant: &mut Participant, script: &[(Event, Vec<Action>)]) {
        for (n, (event, want)) in script.iter().enumerate() {
            assert_eq!(&participant.step(*event), want, "step {n}: {event:?}");
        }
    }

    #[test]
    fn prepare_persists_before_it_votes_and_commit_applies_once() {
        let mut p = Participant::default();
        run(
            &mut p,
            &[
                (
                    Event::Prepare { txn: T1 },
                    vec![
                        Action::Persist(Record::Prepared { txn: T1 }),
                        Action::VoteYes { txn: T1 },
                    ],
                ),
                (
                    Event::Commit {
                        txn: T1,
                        index: at(1),
                    },
                    vec![
                        Action::Persist(Record::Applied {
                            txn: T1,
                            index: at(1),
                        }),
                        Action::Ack { txn: T1 },
                    ],
                ),
                // A re-sent commit: acknowledged, nothing applied again.
                (
                    Event::Commit {
                        txn: T1,
                        index: at(1),
                    },
                    vec![Action::Ack { txn: T1 }],
                ),
            ],
        );
        assert_eq!(p.applied().contiguous(), at(1));
        assert_eq!(p.prepared().count(), 0);
    }

    #[test]
    fn a_commit_for_a_transaction_never_prepared_is_refused() {
        let mut p = Participant::default();
        run(
            &mut p,
            &[(
                Event::Commit {
                    txn: T2,
                    index: at(1),
                },
                vec![Action::UnknownTxn {
                    txn: T2,
                    index: at(1),
                }],
            )],
        );
        assert_eq!(p, Participant::default(), "nothing changed");
    }

    #[test]
    fn a_commit_for_an_index_copied_from_a_peer_only_drops_the_record() {
        let mut p = Participant::default();
        p.step(Event::Prepare { txn: T1 });
        run(
            &mut p,
            &[
                (
                    Event::Imported {
                        range: Some((at(0), at(2))),
                    },
                    vec![Action::Persist(Record::AppliedRange {
                        since: at(0),
                        through: at(2),
                    })],
                ),
                (
                    Event::Commit {
                        txn: T1,
                        index: at(2),
                    },
                    vec![
                        Action::Persist(Record::Forgotten { txn: T1 }),
                        Action::Ack { txn: T1 },
                    ],
                ),
            ],
        );
    }

    #[test]
    fn abort_is_idempotent_and_never_an_error() {
        let mut p = Participant::default();
        p.step(Event::Prepare { txn: T1 });
        run(
            &mut p,
            &[
                (
                    Event::Abort { txn: T1 },
                    vec![
                        Action::Persist(Record::Forgotten { txn: T1 }),
                        Action::Ack { txn: T1 },
                    ],
                ),
                (Event::Abort { txn: T1 }, vec![Action::Ack { txn: T1 }]),
                // The commit of an aborted transaction cannot come from a
                // correct coordinator; if it did, nothing would be applied.
                (
                    Event::Commit {
                        txn: T1,
                        index: at(1),
                    },
                    vec![Action::UnknownTxn {
                        txn: T1,
                        index: at(1),
                    }],
                ),
            ],
        );
    }

    #[test]
    fn a_restart_asks_about_every_prepared_transaction() {
        let mut p = Participant::default();
        p.step(Event::Prepare { txn: T2 });
        p.step(Event::Prepare { txn: T1 });
        let (mut p, ask) =
            Participant::recover(p.prepared().collect::<Vec<_>>(), p.applied.clone());
        assert_eq!(
            ask,
            vec![
                Action::AskOutcome { txn: T1 },
                Action::AskOutcome { txn: T2 }
            ]
        );
        run(
            &mut p,
            &[
                (
                    Event::Outcome {
                        txn: T1,
                        outcome: Outcome::Pending,
                    },
                    vec![],
                ),
                (
                    Event::InDoubt { txn: T1 },
                    vec![Action::AskOutcome { txn: T1 }],
                ),
                (
                    Event::Outcome {
                        txn: T1,
                        outcome: Outcome::Committed { index: at(1) },
                    },
                    vec![
                        Action::Persist(Record::Applied {
                            txn: T1,
                            index: at(1),
                        }),
                        Action::Ack { txn: T1 },
                    ],
                ),
                (
                    Event::Outcome {
                        txn: T2,
                        outcome: Outcome::Aborted,
                    },
                    vec![
                        Action::Persist(Record::Forgotten { txn: T2 }),
                        Action::Ack { txn: T2 },
                    ],
                ),
                // Resolved: no longer in doubt.
                (Event::InDoubt { txn: T2 }, vec![]),
            ],
        );
    }
}
