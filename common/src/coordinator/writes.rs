//! Group commit and the prepare phase: writes wait in one bounded queue,
//! are folded into transactions, and each transaction collects its votes.

use super::{Action, CoordinatorCore, Millis, Notice, RequestId, Target, Vote, WriteRefused};
use crate::api::CommitRequest;
use crate::{CommitIndex, CounterId, Incarnation, Item, TxnId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Transactions of at least this many items start even while another is
/// preparing: large batches gain from overlapping fsyncs, small ones from
/// waiting and growing.
const OVERLAP_ITEMS: usize = 1000;

/// Small transactions in their prepare phase at once. One keeps the
/// counters' writers busy with one batch while the previous transaction's
/// decision is being logged; more would split the waiting requests into
/// smaller transactions, each costing its own round of messages.
const PREPARING_SMALL: usize = 1;

/// Writes waiting for a transaction.
#[derive(Debug, Default)]
pub(super) struct WriteQueue {
    waiting: VecDeque<(RequestId, Vec<Item>)>,
    items: usize,
}

impl WriteQueue {
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }
}

impl CoordinatorCore {
    /// Writes are waiting for a transaction: a prepare starts as soon as
    /// the rules allow (`start_transactions`).
    pub(super) fn writes_waiting(&self) -> bool {
        !self.queue.waiting.is_empty()
    }
}

/// One transaction between its first prepare and its durable decision.
#[derive(Debug)]
pub(super) struct Txn {
    pub(super) requests: Vec<RequestId>,
    pub(super) items: usize,
    pub(super) small: bool,
    pub(super) started: Millis,
    /// Commits this prepare carried: only those can be acknowledged by its
    /// answers.
    pub(super) carried: BTreeSet<CommitIndex>,
    /// The counters asked, with the life of their data directory that was
    /// registered: a vote from another one is no vote, early or late.
    pub(super) asked: BTreeMap<CounterId, Option<Incarnation>>,
    pub(super) phase: Phase,
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for votes.
    Preparing {
        /// Votes still awaited before the vote ends early.
        awaited: BTreeSet<CounterId>,
        /// Of those, the ones waited for like in-sync counters.
        awaited_in_sync: BTreeSet<CounterId>,
        yes: BTreeSet<CounterId>,
        deadline: Millis,
        /// The joiners' grace started (every in-sync vote is in).
        graced: bool,
    },
    /// Votes are in; the decision waits for the log.
    Deciding {
        yes: BTreeSet<CounterId>,
        voted: Millis,
    },
}

impl Txn {
    pub(super) fn deadline(&self) -> Option<Millis> {
        match &self.phase {
            Phase::Preparing { deadline, .. } => Some(*deadline),
            Phase::Deciding { .. } => None,
        }
    }
}

impl CoordinatorCore {
    pub(super) fn on_write(&mut self, request: RequestId, items: Vec<Item>, out: &mut Vec<Action>) {
        if self.queue.waiting.len() >= self.config.max_queued.max(1) {
            out.push(Action::WriteDone {
                request,
                result: Err(WriteRefused::Busy),
            });
            return;
        }
        self.queue.items += items.len();
        self.queue.waiting.push_back((request, items));
    }

    /// Starts as many transactions as the rules allow: one when no small
    /// one is preparing, or when the waiting writes fill a big one, while
    /// fewer than `max_inflight` are in flight.
    pub(super) fn start_transactions(&mut self, out: &mut Vec<Action>) {
        let max_items = self.config.max_txn_items.max(1);
        while !self.queue.waiting.is_empty() && self.txns.len() < self.config.max_inflight.max(1) {
            let idle = self.preparing_small < PREPARING_SMALL;
            let big = self.queue.items >= OVERLAP_ITEMS.min(max_items);
            if !idle && !big {
                return;
            }
            let mut requests = Vec::new();
            let mut items: Vec<Item> = Vec::new();
            while let Some((_, next)) = self.queue.waiting.front() {
                if !items.is_empty() && items.len() + next.len() > max_items {
                    break;
                }
                let (request, next) = self.queue.waiting.pop_front().expect("front exists");
                self.queue.items -= next.len();
                if items.is_empty() {
                    items = next;
                } else {
                    items.extend(next);
                }
                requests.push(request);
            }
            self.begin(requests, items, out);
        }
    }

    fn begin(&mut self, requests: Vec<RequestId>, items: Vec<Item>, out: &mut Vec<Action>) {
        let txn = TxnId::new(self.config.epoch, self.next_seq);
        self.next_seq += 1;
        let small = items.len() < OVERLAP_ITEMS.min(self.config.max_txn_items.max(1));
        let commits: Vec<CommitRequest> = self.deliveries.take_undelivered();
        let carried = commits.iter().map(|c| c.index).collect();
        let mut asked = BTreeMap::new();
        let mut awaited = BTreeSet::new();
        let mut awaited_in_sync = BTreeSet::new();
        let mut to = Vec::new();
        for p in self.cluster.participants() {
            let lagging = self.lagging.contains(&p.id);
            if p.in_sync || !lagging {
                awaited.insert(p.id.clone());
            }
            // A converging joiner is waited for like an in-sync counter,
            // unless its last prepare failed (membership.rs says why).
            if p.in_sync || (p.converging && !lagging) {
                awaited_in_sync.insert(p.id.clone());
            }
            asked.insert(p.id.clone(), p.incarnation);
            to.push(Target {
                id: p.id,
                url: p.url,
            });
        }
        let now = self.now;
        let mut record = Txn {
            requests,
            items: items.len(),
            small,
            started: now,
            carried,
            asked,
            phase: Phase::Preparing {
                awaited,
                awaited_in_sync,
                yes: BTreeSet::new(),
                deadline: now.plus(self.config.prepare_timeout_ms),
                graced: false,
            },
        };
        if small {
            self.preparing_small += 1;
        }
        grace_joiners(&mut record, now, self.config.joiner_grace_ms);
        self.txns.insert(txn, record);
        out.push(Action::Prepare {
            txn,
            to,
            items,
            commits,
        });
        self.end_prepare_if_done(txn);
    }

    pub(super) fn on_vote(
        &mut self,
        txn: TxnId,
        counter: CounterId,
        vote: Result<Vote, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(record) = self.txns.get_mut(&txn) else {
            // Decided already: a late vote counts for nothing, and the
            // counter learns the outcome by asking.
            self.note_lagging(&counter, vote.is_ok());
            return;
        };
        let vote = vote.and_then(|vote| match record.asked.get(&counter) {
            Some(Some(expected)) if *expected != vote.incarnation => Err(format!(
                "answered from another data directory (incarnation {})",
                vote.incarnation
            )),
            Some(_) => Ok(vote),
            None => Err("answered a prepare it was not sent".to_string()),
        });
        // Only commits this prepare carried can have been applied by it;
        // anything else in the answer is not believed.
        if let Ok(vote) = &vote {
            let acked: Vec<CommitIndex> = vote
                .committed
                .iter()
                .filter(|i| record.carried.contains(i))
                .copied()
                .collect();
            for index in acked {
                self.acknowledge(index, &counter, vote.applied);
            }
        }
        let yes = vote.is_ok();
        if let Err(error) = vote {
            out.push(Action::Notice(Notice::PrepareFailed {
                counter: counter.clone(),
                error,
            }));
        }
        self.note_lagging(&counter, yes);
        let Some(record) = self.txns.get_mut(&txn) else {
            return;
        };
        if let Phase::Preparing {
            awaited,
            awaited_in_sync,
            yes: voted_yes,
            ..
        } = &mut record.phase
        {
            awaited.remove(&counter);
            awaited_in_sync.remove(&counter);
            if yes {
                voted_yes.insert(counter);
            }
        }
        grace_joiners(record, self.now, self.config.joiner_grace_ms);
        self.end_prepare_if_done(txn);
    }

    fn note_lagging(&mut self, counter: &CounterId, yes: bool) {
        if yes {
            self.lagging.remove(counter);
        } else {
            self.lagging.insert(counter.clone());
        }
    }

    fn end_prepare_if_done(&mut self, txn: TxnId) {
        let done = matches!(
            self.txns.get(&txn).map(|t| &t.phase),
            Some(Phase::Preparing { awaited, .. }) if awaited.is_empty()
        );
        if done {
            self.end_prepare(txn);
        }
    }

    /// The vote is over (every awaited vote in, or the deadline passed):
    /// the decision goes to the log, and the next small transaction may
    /// start preparing while this one's decision is logged.
    pub(super) fn end_prepare(&mut self, txn: TxnId) {
        let now = self.now;
        let Some(record) = self.txns.get_mut(&txn) else {
            return;
        };
        let Phase::Preparing { yes, .. } = &mut record.phase else {
            return;
        };
        let yes = std::mem::take(yes);
        record.phase = Phase::Deciding { yes, voted: now };
        if record.small {
            self.preparing_small -= 1;
        }
        self.log.decide(txn);
    }
}

/// Once every in-sync vote is in, joiners get a short grace, not the whole
/// prepare timeout.
fn grace_joiners(txn: &mut Txn, now: Millis, grace_ms: u64) {
    if let Phase::Preparing {
        awaited_in_sync,
        deadline,
        graced,
        ..
    } = &mut txn.phase
    {
        if awaited_in_sync.is_empty() && !*graced {
            *deadline = (*deadline).min(now.plus(grace_ms));
            *graced = true;
        }
    }
}
