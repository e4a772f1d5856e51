//! Phase two: getting every commit to every counter that voted for it, and
//! forgetting decisions once every in-sync counter applied them.
//!
//! A commit is first offered to the next prepare (the counter then applies
//! the commit in the same storage write as the prepare); if none carried
//! it within `commit_linger`, it goes out on its own, unless writes are
//! waiting for a transaction: then a prepare is about to start (it starts
//! as soon as the one preparing has its votes), and the commit waits for
//! it, up to [`BUSY_LINGER_MS`]. Commits not acknowledged stay pending and
//! are re-sent each sweep until every voter has them.

use super::{Action, CommitAnswer, CoordinatorCore, Millis, Notice, Target};
use crate::api::{CommitRequest, CounterState};
use crate::{CommitIndex, CounterId, TxnId};
use std::collections::{BTreeMap, BTreeSet};

/// Most pending commits re-sent in one sweep.
const RESEND_BATCH: usize = 256;

/// Longest a decided commit waits for a prepare to carry it while writes
/// are waiting for a transaction. Under load the next small prepare starts
/// only once the one preparing has its votes, a prepare round trip after
/// the decision, usually more than `commit_linger`: with the linger alone,
/// about three commits in four went out on their own at 64 clients, each
/// an extra call and storage write with its fsync at every counter
/// (docs/benchmarks.md). It delays only the counters' applying, which
/// fenced reads wait for, never a client's answer.
pub(super) const BUSY_LINGER_MS: u64 = 5;

/// A decided commit no prepare has carried yet.
#[derive(Debug)]
struct Lingering {
    commit: CommitRequest,
    yes: BTreeSet<CounterId>,
    /// When it goes out on its own if no write is waiting.
    until: Millis,
    /// When it goes out on its own whatever is waiting.
    busy_until: Millis,
}

impl Lingering {
    /// When it is due, given whether writes are waiting for a prepare.
    fn due(&self, writes_waiting: bool) -> Millis {
        if writes_waiting {
            self.busy_until.max(self.until)
        } else {
            self.until
        }
    }
}

#[derive(Debug)]
struct Pending {
    txn: TxnId,
    waiting: BTreeSet<CounterId>,
    since: Millis,
}

#[derive(Debug, Default)]
pub(super) struct Deliveries {
    /// Decided commits not yet carried by a prepare, with their voters and
    /// when they go out on their own.
    undelivered: Vec<Lingering>,
    /// Logged commits that some voter has not acknowledged.
    pending: BTreeMap<CommitIndex, Pending>,
    last_sweep: Millis,
    trimmed: CommitIndex,
}

impl Deliveries {
    pub(super) fn pending_since(
        &mut self,
        index: CommitIndex,
        txn: TxnId,
        waiting: BTreeSet<CounterId>,
        since: Millis,
    ) {
        if !waiting.is_empty() {
            self.pending.insert(
                index,
                Pending {
                    txn,
                    waiting,
                    since,
                },
            );
        }
    }

    /// A commit's decision is durable: it waits for a prepare to carry it
    /// until `linger_until`.
    pub(super) fn decided(
        &mut self,
        commit: CommitRequest,
        yes: BTreeSet<CounterId>,
        linger_until: Millis,
        now: Millis,
    ) {
        self.pending_since(commit.index, commit.txn, yes.clone(), now);
        self.undelivered.push(Lingering {
            commit,
            yes,
            until: linger_until,
            busy_until: now.plus(BUSY_LINGER_MS),
        });
    }

    /// Every commit waiting to ride on a prepare; the prepare takes them.
    pub(super) fn take_undelivered(&mut self) -> Vec<CommitRequest> {
        self.undelivered.drain(..).map(|l| l.commit).collect()
    }

    /// When the first lingering commit goes out on its own.
    pub(super) fn next_linger(&self, writes_waiting: bool) -> Option<Millis> {
        self.undelivered.iter().map(|l| l.due(writes_waiting)).min()
    }

    pub(super) fn next_sweep(&self) -> Millis {
        self.last_sweep
    }

    pub(super) fn sweep_due(&self, now: Millis) -> bool {
        now >= self.last_sweep
    }

    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The lowest commit some voter has not acknowledged.
    #[allow(dead_code)]
    pub(super) fn lowest_pending(&self) -> Option<CommitIndex> {
        self.pending.keys().next().copied()
    }
}

impl CoordinatorCore {
    /// Commits that no prepare carried within the linger go out alone.
    /// While writes wait for a transaction, a prepare is about to start
    /// (in this very step, or once the one preparing has its votes), so
    /// they wait for it, up to [`BUSY_LINGER_MS`].
    pub(super) fn deliver_lingering(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let writes_waiting = self.writes_waiting();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deliveries.undelivered)
            .into_iter()
            .partition(|l| l.due(writes_waiting) <= now);
        self.deliveries.undelivered = waiting;
        for Lingering { commit, yes, .. } in due {
            for to in self.targets(&yes) {
                out.push(Action::Commit { to, commit });
            }
        }
    }

    /// Records that `counter` applied the commit at `index`.
    pub(super) fn acknowledge(
        &mut self,
        index: CommitIndex,
        counter: &CounterId,
        applied: CommitIndex,
    ) {
        self.cluster.record_applied(counter, applied);
        if let Some(entry) = self.deliveries.pending.get_mut(&index) {
            entry.waiting.remove(counter);
            if entry.waiting.is_empty() {
                self.deliveries.pending.remove(&index);
            }
        }
    }

    pub(super) fn on_commit_answer(
        &mut self,
        index: CommitIndex,
        counter: CounterId,
        answer: CommitAnswer,
        out: &mut Vec<Action>,
    ) {
        match answer {
            CommitAnswer::Applied {
                applied,
                incarnation,
            } => {
                // An answer from a life of its disk that is gone (it came
                // late) says nothing about what the counter holds now.
                let known = self.cluster.member(&counter).and_then(|m| m.incarnation);
                if known.is_none_or(|known| known == incarnation) {
                    self.acknowledge(index, &counter, applied);
                }
            }
            CommitAnswer::NotPrepared => {
                // It does not hold the prepared transaction: catch-up brings
                // it instead, and until then it is not in sync.
                out.push(Action::Notice(Notice::LacksCommit {
                    counter: counter.clone(),
                    index,
                }));
                let effects = self.cluster.lacks_commit(&counter, index);
                self.carry_out(effects, Vec::new(), out);
                self.acknowledge(index, &counter, CommitIndex::ZERO);
            }
            CommitAnswer::Failed(_) => {}
        }
    }

    /// Re-sends commits a voter has not acknowledged, and trims the log up
    /// to what every in-sync counter applied.
    pub(super) fn sweep(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let period = self.config.sweep_interval_ms;
        self.deliveries.last_sweep = now.plus(period);
        let due: Vec<(CommitIndex, TxnId, Vec<CounterId>)> = self
            .deliveries
            .pending
            .iter()
            .filter(|(_, p)| now.since(p.since).0 >= period)
            .take(RESEND_BATCH)
            .map(|(index, p)| (*index, p.txn, p.waiting.iter().cloned().collect()))
            .collect();
        for (index, txn, waiting) in due {
            for id in waiting {
                let Some(member) = self.cluster.member(&id) else {
                    // Gone from the view: nobody left to tell.
                    self.acknowledge(index, &id, CommitIndex::ZERO);
                    continue;
                };
                if member.state == CounterState::Dead {
                    continue;
                }
                out.push(Action::Commit {
                    to: Target {
                        id: id.clone(),
                        url: member.url.clone(),
                    },
                    commit: CommitRequest { txn, index },
                });
            }
        }
        self.trim(out);
    }

    fn trim(&mut self, _out: &mut Vec<Action>) {
        let upto = self.cluster.trim_point();
        if upto <= self.deliveries.trimmed {
            return;
        }
        self.deliveries.trimmed = upto;
        self.cluster.note_trimmed(upto);
        // Counters still waiting for a commit about to be forgotten will
        // hear "aborted" for it: they must copy it instead.
        let kept = self.deliveries.pending.split_off(&upto.next());
        for (index, entry) in std::mem::replace(&mut self.deliveries.pending, kept) {
            for id in &entry.waiting {
                self.cluster.must_copy(id, index);
            }
        }
        let kept_decisions: BTreeMap<TxnId, CommitIndex> = std::mem::take(&mut self.decisions)
            .into_iter()
            .filter(|(_, index)| *index > upto)
            .collect();
        self.decisions = kept_decisions;
        self.log.trim(upto);
    }
}
