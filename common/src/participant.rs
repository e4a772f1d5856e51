//! A counter's side of two-phase commit as plain code: which transactions it
//! holds prepared, which commit indexes it has applied, and, for every
//! prepare, commit, abort, copied range or outcome that arrives, what to
//! write durably and what to answer.
//!
//! The counter's writer thread feeds every operation of a storage batch,
//! every clock tick and every answer about an in-doubt transaction
//! through [`Participant::step`] and carries out the [`Action`]s in one
//! durable write (`counter/src/store/batch.rs`); the items themselves are payload
//! the participant never looks at, so they stay in the carrier and in
//! storage. Every change of what is prepared or applied comes with a
//! [`Record`] to persist, which is why a restart, [`Participant::recover`]
//! from what storage holds, loses nothing. The participant is the one place
//! that says which transactions are prepared: storage keeps their items and
//! records, and does what the actions say.
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
//! * **In doubt** (prepared, no outcome for longer than
//!   [`Config::in_doubt_after`]): ask the coordinator, at every
//!   [`Event::Tick`] until the outcome arrives. Its answer comes back as
//!   [`Event::Outcome`] and is applied like a commit or an abort; "pending"
//!   changes nothing, so the next tick asks again. A commit or abort that
//!   was lost leaves no other trace, which is why the participant itself
//!   keeps the clock of every prepared transaction and decides when to ask.
//! * **Restart**: every prepared transaction is in doubt at once
//!   ([`Participant::recover`] asks about each, and so does every tick
//!   until it is resolved): nothing says whether its outcome was sent while
//!   the process was down. A prepare that arrives after its abort (a
//!   delayed request) is persisted again, and is cleared the same way: the
//!   coordinator answers "aborted".
//!
//! Time enters only as the `now` of an event ([`Millis`] on the carrier's
//! clock). When each transaction was prepared is the one piece of state that
//! is not durable: it only says when to ask, and a restart asks about
//! everything anyway.

use crate::api::Outcome;
use crate::applied::AppliedSet;
use crate::time::Millis;
use crate::{CommitIndex, TxnId};
use std::collections::BTreeMap;

/// How long a prepared transaction waits for its outcome before the
/// participant asks the coordinator, unless the carrier configures another.
/// Long enough that a commit still on its way (the coordinator answers the
/// client before it sends commits, and re-sends them every second) is not
/// raced by a question.
pub const DEFAULT_IN_DOUBT_AFTER: Millis = Millis(3_000);

/// The participant's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a transaction stays prepared without an outcome before a
    /// [`Event::Tick`] asks the coordinator about it.
    pub in_doubt_after: Millis,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            in_doubt_after: DEFAULT_IN_DOUBT_AFTER,
        }
    }
}

/// What happens to a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Phase one: `txn`'s items arrive at `now`, to be held until the
    /// outcome.
    Prepare { txn: TxnId, now: Millis },
    /// Phase two: `txn` committed at `index`.
    Commit { txn: TxnId, index: CommitIndex },
    /// Phase two: `txn` aborted.
    Abort { txn: TxnId },
    /// Entries copied from a peer were imported. With `range`, the peer's
    /// stream ended complete, so every index in `(since, through]` is held.
    Imported {
        range: Option<(CommitIndex, CommitIndex)>,
    },
    /// The carrier's clock reads `now`: ask about every transaction
    /// prepared for at least [`Config::in_doubt_after`], and about every one
    /// recovered after a restart.
    Tick { now: Millis },
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

/// The participant's state. The prepared transactions and the applied set
/// are durable; when each transaction was prepared is not (see the module
/// doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    config: Config,
    /// Each prepared transaction and when this process first saw its
    /// prepare: `None` for one recovered after a restart, in doubt at once.
    prepared: BTreeMap<TxnId, Option<Millis>>,
    applied: AppliedSet,
}

impl Default for Participant {
    fn default() -> Self {
        Participant::new(Config::default())
    }
}

impl Participant {
    /// A participant that holds nothing: a new data directory.
    pub fn new(config: Config) -> Self {
        Participant {
            config,
            prepared: BTreeMap::new(),
            applied: AppliedSet::default(),
        }
    }

    /// Rebuilds the participant from what storage holds, after a restart,
    /// and asks about every prepared transaction: nothing says whether its
    /// outcome was sent while the process was down.
    pub fn recover(
        config: Config,
        prepared: impl IntoIterator<Item = TxnId>,
        applied: AppliedSet,
    ) -> (Self, Vec<Action>) {
        let participant = Participant {
            config,
            prepared: prepared.into_iter().map(|txn| (txn, None)).collect(),
            applied,
        };
        let ask = participant
            .prepared
            .keys()
            .map(|&txn| Action::AskOutcome { txn })
            .collect();
        (participant, ask)
    }

    /// The transactions held prepared, in id order.
    pub fn prepared(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.prepared.keys().copied()
    }

    /// How many transactions are held prepared.
    pub fn prepared_len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_prepared(&self, txn: TxnId) -> bool {
        self.prepared.contains_key(&txn)
    }

    /// The commit indexes applied here.
    pub fn applied(&self) -> &AppliedSet {
        &self.applied
    }

    /// Takes one event and returns what to persist and answer.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        match event {
            #[cfg(not(feature = "mutate-vote-before-durable"))]
            Event::Prepare { txn, now } => {
                // A repeated prepare keeps its first time: the outcome is
                // overdue from then on.
                self.prepared.entry(txn).or_insert(Some(now));
                vec![
                    Action::Persist(Record::Prepared { txn }),
                    Action::VoteYes { txn },
                ]
            }
            // Mutation: the yes vote leaves before the prepared record is
            // durable, so a crash can lose a vote that was counted.
            #[cfg(feature = "mutate-vote-before-durable")]
            Event::Prepare { txn, now } => {
                self.prepared.entry(txn).or_insert(Some(now));
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
            Event::Tick { now } => self.in_doubt(now),
            Event::Outcome {
                txn,
                outcome: Outcome::Committed { index },
            } => self.commit(txn, index),
            Event::Outcome {
                txn,
                outcome: Outcome::Aborted,
            } => self.abort(txn),
            // Still being decided: the next tick asks again.
            Event::Outcome {
                outcome: Outcome::Pending,
                ..
            } => Vec::new(),
        }
    }

    /// The questions a tick at `now` asks, in id order.
    fn in_doubt(&self, now: Millis) -> Vec<Action> {
        let after = self.config.in_doubt_after;
        self.prepared
            .iter()
            .filter(|(_, since)| since.is_none_or(|since| now.since(since) >= after))
            .map(|(&txn, _)| Action::AskOutcome { txn })
            .collect()
    }

    fn commit(&mut self, txn: TxnId, index: CommitIndex) -> Vec<Action> {
        let was_prepared = self.prepared.remove(&txn).is_some();
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
        if self.prepared.remove(&txn).is_some() {
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
    const T3: TxnId = TxnId(3);
    const NOW: Millis = Millis(1_000);

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
                    Event::Prepare { txn: T1, now: NOW },
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
        p.step(Event::Prepare { txn: T1, now: NOW });
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
        p.step(Event::Prepare { txn: T1, now: NOW });
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
        p.step(Event::Prepare { txn: T2, now: NOW });
        p.step(Event::Prepare { txn: T1, now: NOW });
        let (mut p, ask) = Participant::recover(
            Config::default(),
            p.prepared().collect::<Vec<_>>(),
            p.applied.clone(),
        );
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
                // In doubt at once after a restart, whatever the clock says.
                (
                    Event::Tick { now: Millis(0) },
                    vec![
                        Action::AskOutcome { txn: T1 },
                        Action::AskOutcome { txn: T2 },
                    ],
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
                // Resolved: nothing is in doubt any more.
                (Event::Tick { now: Millis(0) }, vec![]),
            ],
        );
    }

    #[test]
    fn a_tick_asks_only_about_transactions_prepared_long_enough_ago() {
        let after = Millis(3_000);
        let mut p = Participant::new(Config {
            in_doubt_after: after,
        });
        p.step(Event::Prepare {
            txn: T1,
            now: Millis(1_000),
        });
        p.step(Event::Prepare {
            txn: T2,
            now: Millis(2_000),
        });
        let ask = |txns: &[TxnId]| -> Vec<Action> {
            txns.iter().map(|&txn| Action::AskOutcome { txn }).collect()
        };
        run(
            &mut p,
            &[
                (Event::Tick { now: Millis(3_999) }, vec![]),
                (Event::Tick { now: Millis(4_000) }, ask(&[T1])),
                (Event::Tick { now: Millis(5_000) }, ask(&[T1, T2])),
                // A repeated prepare does not reset its clock: the outcome
                // has been overdue since the first.
                (
                    Event::Prepare {
                        txn: T1,
                        now: Millis(5_000),
                    },
                    vec![
                        Action::Persist(Record::Prepared { txn: T1 }),
                        Action::VoteYes { txn: T1 },
                    ],
                ),
                (Event::Tick { now: Millis(5_000) }, ask(&[T1, T2])),
                // A clock that reads earlier than a prepare asks nothing.
                (Event::Tick { now: Millis(0) }, vec![]),
            ],
        );
    }

    #[test]
    fn an_outcome_settles_a_transaction_in_doubt_and_pending_asks_again() {
        let mut p = Participant::default();
        let later = Millis(NOW.0 + DEFAULT_IN_DOUBT_AFTER.0);
        for txn in [T1, T2, T3] {
            p.step(Event::Prepare { txn, now: NOW });
        }
        run(
            &mut p,
            &[
                (
                    Event::Tick { now: later },
                    vec![
                        Action::AskOutcome { txn: T1 },
                        Action::AskOutcome { txn: T2 },
                        Action::AskOutcome { txn: T3 },
                    ],
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
                (
                    Event::Outcome {
                        txn: T3,
                        outcome: Outcome::Pending,
                    },
                    vec![],
                ),
                (
                    Event::Tick { now: later },
                    vec![Action::AskOutcome { txn: T3 }],
                ),
                // An answer that arrives twice changes nothing the second
                // time: the commit is applied once.
                (
                    Event::Outcome {
                        txn: T1,
                        outcome: Outcome::Committed { index: at(1) },
                    },
                    vec![Action::Ack { txn: T1 }],
                ),
            ],
        );
        assert_eq!(p.prepared().collect::<Vec<_>>(), vec![T3]);
        assert_eq!(p.prepared_len(), 1);
    }

    #[test]
    fn a_tick_changes_nothing() {
        let mut p = Participant::default();
        p.step(Event::Prepare { txn: T1, now: NOW });
        let before = p.clone();
        p.step(Event::Tick {
            now: Millis(u64::MAX),
        });
        assert_eq!(p, before);
    }
}
