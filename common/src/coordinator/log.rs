//! The decision log's one writer. Decisions of many transactions, the
//! membership changes that must be durable and trims are folded into one
//! write (one fsync for many transactions: group commit on the
//! coordinator), and only once it is durable does anyone hear of them.
//!
//! Being the only writer also orders membership snapshots: a snapshot is
//! taken when the write is formed, so an older one can never overwrite a
//! newer one.

use super::{Action, CoordinatorCore, Notice, WriteRefused};
use crate::api::CommitRequest;
use crate::membership::{Decision, StoredMember};
use crate::{CommitIndex, CounterId, TxnId};
use std::collections::BTreeSet;

/// What one log write must make durable, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// Commit decisions, in index order.
    pub commits: Vec<(TxnId, CommitIndex)>,
    /// The new highest decided index, if it rose.
    pub decided: Option<CommitIndex>,
    /// The membership, if it changed since it was last written.
    pub members: Option<Vec<StoredMember>>,
    /// Forget the decisions at or below this index.
    pub trim: Option<CommitIndex>,
}

impl LogWrite {
    fn is_empty(&self) -> bool {
        self.commits.is_empty()
            && self.decided.is_none()
            && self.members.is_none()
            && self.trim.is_none()
    }
}

#[derive(Debug)]
enum Job {
    /// Decide this transaction (its votes are in).
    Decide(TxnId),
    /// The membership changed: write it, then do these.
    Persist(Vec<Action>),
    Trim(CommitIndex),
}

/// A log write in progress and what waits on it.
#[derive(Debug)]
struct Writing {
    decided: Vec<(TxnId, Decision, BTreeSet<CounterId>)>,
    after: Vec<Action>,
    trim: Option<CommitIndex>,
}

#[derive(Debug)]
pub(super) struct LogState {
    jobs: Vec<Job>,
    writing: Option<Writing>,
    /// The membership as last made durable: a batch whose decisions left it
    /// unchanged does not rewrite it, which keeps the write (and the pages
    /// it dirties) to the decisions themselves.
    saved: Vec<StoredMember>,
}

impl LogState {
    pub(super) fn new(saved: Vec<StoredMember>) -> Self {
        LogState {
            jobs: Vec::new(),
            writing: None,
            saved,
        }
    }

    pub(super) fn decide(&mut self, txn: TxnId) {
        self.jobs.push(Job::Decide(txn));
    }

    pub(super) fn persist_then(&mut self, after: Vec<Action>) {
        self.jobs.push(Job::Persist(after));
    }

    pub(super) fn trim(&mut self, upto: CommitIndex) {
        self.jobs.push(Job::Trim(upto));
    }
}

impl CoordinatorCore {
    /// Forms the next log write from every job waiting, unless one is in
    /// progress. Decisions are made here, in job order, so commit indexes
    /// follow the order of the log.
    pub(super) fn start_log_write(&mut self, out: &mut Vec<Action>) {
        if self.log.writing.is_some() || self.log.jobs.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.log.jobs);
        out.push(Action::Notice(Notice::LogBatch { jobs: jobs.len() }));
        let mut write = LogWrite::default();
        let mut writing = Writing {
            decided: Vec::new(),
            after: Vec::new(),
            trim: None,
        };
        for job in jobs {
            match job {
                Job::Decide(txn) => {
                    let Some(super::writes::Phase::Deciding { yes, .. }) =
                        self.txns.get(&txn).map(|t| &t.phase)
                    else {
                        continue;
                    };
                    let yes = yes.clone();
                    let (decision, effects) = self.cluster.decide(&yes);
                    for effect in effects {
                        if effect != crate::membership::Effect::Persist {
                            writing
                                .after
                                .push(Action::Notice(Notice::Membership(effect)));
                        }
                    }
                    if let Decision::Commit { index, .. } = &decision {
                        write.commits.push((txn, *index));
                        write.decided = Some(*index);
                    }
                    #[cfg(feature = "mutate-ack-before-durable")]
                    self.answer_clients(txn, &decision, out);
                    writing.decided.push((txn, decision, yes));
                }
                Job::Persist(after) => writing.after.extend(after),
                Job::Trim(upto) => {
                    write.trim = Some(write.trim.map_or(upto, |t: CommitIndex| t.max(upto)));
                    writing.trim = write.trim;
                }
            }
        }
        let members = self.cluster.stored();
        if members != self.log.saved {
            self.log.saved = members.clone();
            write.members = Some(members);
        }
        self.log.writing = Some(writing);
        if write.is_empty() {
            // Nothing to make durable (only aborts): done at once.
            self.on_log_written(out);
        } else {
            out.push(Action::WriteLog(write));
        }
    }

    /// The log write is durable: now the decisions may be acted on.
    pub(super) fn on_log_written(&mut self, out: &mut Vec<Action>) {
        let Some(writing) = self.log.writing.take() else {
            return;
        };
        let now = self.now;
        for (txn, decision, yes) in writing.decided {
            let Some(record) = self.txns.remove(&txn) else {
                continue;
            };
            let voted = match record.phase {
                super::writes::Phase::Deciding { voted, .. } => voted,
                super::writes::Phase::Preparing { .. } => now,
            };
            match &decision {
                Decision::Commit { index, .. } => {
                    self.decisions.insert(txn, *index);
                    self.fence = self.fence.max(*index);
                    self.deliveries.decided(
                        CommitRequest { txn, index: *index },
                        yes,
                        now.plus(self.config.commit_linger_ms),
                        now,
                    );
                }
                Decision::Abort { .. } => {
                    if !yes.is_empty() {
                        out.push(Action::Abort {
                            to: self.targets(&yes),
                            txn,
                        });
                    }
                }
            }
            #[cfg(not(feature = "mutate-ack-before-durable"))]
            for request in &record.requests {
                out.push(Action::WriteDone {
                    request: *request,
                    result: client_result(&decision),
                });
            }
            out.push(Action::Notice(Notice::Decided {
                txn,
                items: record.items,
                requests: record.requests.len(),
                prepare_ms: voted.since(record.started).0,
                decide_ms: now.since(voted).0,
                decision,
            }));
        }
        if let Some(upto) = writing.trim {
            out.push(Action::Notice(Notice::Trimmed { upto }));
        }
        out.extend(writing.after);
    }

    /// Mutation: clients hear the decision before it is durable.
    #[cfg(feature = "mutate-ack-before-durable")]
    fn answer_clients(&self, txn: TxnId, decision: &Decision, out: &mut Vec<Action>) {
        if let Some(record) = self.txns.get(&txn) {
            for request in &record.requests {
                out.push(Action::WriteDone {
                    request: *request,
                    result: client_result(decision),
                });
            }
        }
    }

    /// Where to reach each of `ids` that is still a member.
    pub(super) fn targets(&self, ids: &BTreeSet<CounterId>) -> Vec<super::Target> {
        ids.iter()
            .filter_map(|id| {
                self.cluster.member(id).map(|m| super::Target {
                    id: id.clone(),
                    url: m.url.clone(),
                })
            })
            .collect()
    }
}

fn client_result(decision: &Decision) -> Result<(), WriteRefused> {
    match decision {
        Decision::Commit { .. } => Ok(()),
        Decision::Abort { reason } => Err(WriteRefused::Aborted(reason.clone())),
    }
}
