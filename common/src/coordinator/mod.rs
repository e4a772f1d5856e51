//! The coordinator's side of two-phase commit as plain code: the one state
//! machine that the `coordinator` binary runs and that the simulator and
//! the property tests drive.
//!
//! Events come in ([`Event`]: a client's write, a counter's vote or
//! acknowledgement, a health answer, a registration, the decision log
//! saying a write is durable, a timer tick) and actions go out ([`Action`]:
//! send a prepare, a commit or an abort, write a log batch, answer a
//! client, start a catch-up). Nothing here does I/O or reads a clock: the
//! caller passes the time ([`Millis`]) with every event and asks
//! [`CoordinatorCore::next_wakeup`] when to tick next. The binary's driver
//! (coordinator/src/driver.rs) turns HTTP answers, timers and redb writes
//! into events; the simulator (sim/) turns simulated messages into them.
//!
//! The life of a write, and the rules that keep it safe:
//!
//! 1. **Group commit** ([`writes`]). Writes wait in one bounded queue and
//!    are folded into transactions of up to `max_txn_items` items. A
//!    transaction starts at once when no other small one is preparing;
//!    while one is, writes keep gathering, so under load each round of
//!    messages and each fsync serves many requests. At most
//!    `max_inflight` transactions are between prepare and durable decision.
//! 2. **Prepare**. Every registered counter that is not dead gets the
//!    prepare (with the commits decided since the last prepare riding
//!    along). The transaction waits for the in-sync counters and for the
//!    others that kept up, never past `prepare_timeout`, and for joiners
//!    only a short grace once every in-sync vote is in.
//! 3. **Decide** ([`log`]). The membership decides from the yes votes
//!    (`Cluster::decide`: commit only with `min_insync` in-sync yes votes;
//!    in-sync counters that did not vote leave the set in the same durable
//!    step). Decisions of many transactions go to the log in one write.
//! 4. **Only once that write is durable** are clients answered, the read
//!    fence raised and commits sent. A decision that a crash could undo is
//!    never acted on: presumed abort then says "aborted", and nobody heard
//!    otherwise.
//! 5. **Deliver** ([`delivery`]). A commit rides on the next prepare when
//!    one follows within `commit_linger` (longer while writes wait for a
//!    transaction, since a prepare is then about to start), or goes out
//!    on its own. Commits
//!    not acknowledged are re-sent until every yes voter has them; the log
//!    is trimmed once every in-sync counter applied a decision.
//!
//! Membership (health checks, registration, catch-up reports, promotion)
//! is `crate::membership::Cluster`; [`members`] feeds it events and makes
//! every change it asks to persist durable before acting on it.

mod delivery;
mod log;
mod members;
mod writes;

use crate::api::{CatchUpRequest, CommitRequest, JoinPlan, Outcome};
use crate::membership::{Cluster, Decision, Effect, HealthReport, MembershipConfig, StoredMember};
use crate::{CommitIndex, CounterId, Incarnation, Item, TxnId};
use std::collections::{BTreeMap, BTreeSet, HashSet};

pub use log::LogWrite;

pub use crate::time::Millis;

/// Names a client request (a write, a registration, …) so its answer can
/// find it; chosen by the caller, never reused while the request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A counter to send something to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: CounterId,
    pub url: String,
}

/// The timeouts and limits the core works with (the binary's flags set
/// them; coordinator/src/config.rs has the defaults and says why).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This run of the coordinator: part of every transaction id, and the
    /// counters vote and answer reads only for the epoch they registered
    /// with.
    pub epoch: u64,
    pub membership: MembershipConfig,
    /// Longest wait for votes.
    pub prepare_timeout_ms: u64,
    /// How long a transaction waits for counters that are not in sync once
    /// every in-sync counter has voted. A joining counter is often busy
    /// importing what it missed; waiting for it at full prepare timeout made
    /// every write as slow as the slowest joiner. A vote that misses the
    /// grace only means the joiner copies that commit later.
    pub joiner_grace_ms: u64,
    /// How long a decided commit waits for the next prepare to carry it. It
    /// delays only the counters' applying, which read fences already wait
    /// for, never the client's answer.
    pub commit_linger_ms: u64,
    /// Time between health rounds.
    pub health_interval_ms: u64,
    /// Time between sweeps (re-sending unacknowledged commits, trimming).
    pub sweep_interval_ms: u64,
    pub max_txn_items: usize,
    pub max_inflight: usize,
    /// Write requests that may wait for a transaction; more answer "busy".
    pub max_queued: usize,
}

impl CoreConfig {
    /// The settings tests and the simulator start from.
    pub fn for_tests(epoch: u64) -> Self {
        CoreConfig {
            epoch,
            membership: MembershipConfig::default(),
            prepare_timeout_ms: 500,
            joiner_grace_ms: 5,
            commit_linger_ms: 1,
            health_interval_ms: 200,
            sweep_interval_ms: 200,
            max_txn_items: 10_000,
            max_inflight: 4,
            max_queued: 1024,
        }
    }
}

/// What the decision log held when the coordinator started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoredLog {
    pub epoch: u64,
    pub decided: CommitIndex,
    /// Commit decisions not trimmed, in index order.
    pub decisions: Vec<(TxnId, CommitIndex)>,
    pub members: Vec<StoredMember>,
}

/// What a registering counter holds above its applied index: the
/// transactions it has prepared and the commit indexes it applied out of
/// order. An in-sync counter keeps its place only if these cover every
/// logged decision above its applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub prepared: Vec<TxnId>,
    pub applied_above: Vec<CommitIndex>,
}

/// A counter's answer to a prepare: a yes vote from the life of its data
/// directory named, with its progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub incarnation: Incarnation,
    pub applied: CommitIndex,
    /// The carried commits it applied along with the prepare.
    pub committed: Vec<CommitIndex>,
}

/// A counter's answer to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitAnswer {
    /// Applied (now or before), by the life of its data directory named;
    /// its gap-free applied index.
    Applied {
        applied: CommitIndex,
        incarnation: Incarnation,
    },
    /// It neither prepared nor applied the transaction (409): it must copy it.
    NotPrepared,
    /// No answer, or not a well-formed one.
    Failed(String),
}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefused {
    /// Decided "abort": nothing of it is counted.
    Aborted(String),
    /// The queue is full; nothing was tried.
    Busy,
}

/// Why a registration or catch-up report was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefused {
    /// It claims commits never decided here: another cluster's data, or a
    /// lost decision log.
    ImpossibleClaim {
        applied: CommitIndex,
        decided: CommitIndex,
    },
    /// A catch-up report from a counter (or a life of one) not registered.
    NotRegistered,
}

/// Something that happens to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client's `POST /items`, already validated.
    Write {
        request: RequestId,
        items: Vec<Item>,
    },
    /// A counter answered the prepare of `txn` (or failed to).
    Voted {
        txn: TxnId,
        counter: CounterId,
        vote: Result<Vote, String>,
    },
    /// A counter answered a commit.
    CommitAnswered {
        index: CommitIndex,
        counter: CounterId,
        answer: CommitAnswer,
    },
    /// The log write asked for by the last [`Action::WriteLog`] is durable.
    LogWritten,
    /// A health check answered (`Ok`) or failed.
    HealthAnswered {
        counter: CounterId,
        report: Result<HealthReport, String>,
    },
    /// A counter registers (at start, or after it noticed this coordinator).
    Register {
        request: RequestId,
        id: CounterId,
        url: String,
        incarnation: Incarnation,
        applied: CommitIndex,
        holds: Holdings,
    },
    /// A joining counter says it fetched everything it was told to, since
    /// the registration named.
    CaughtUp {
        request: RequestId,
        id: CounterId,
        incarnation: Incarnation,
        registration: u64,
        applied: CommitIndex,
    },
    /// A counter asks how `txn` ended.
    AskOutcome { request: RequestId, txn: TxnId },
    /// The operator promotes `id` by force (it already took every decided
    /// index as held).
    Promote { request: RequestId, id: CounterId },
    /// Time passed; timers due now fire.
    Tick,
}

/// Something the caller must do. Actions come out in the order they must
/// happen; answers never precede the durable write they depend on, because
/// the core emits them only after [`Event::LogWritten`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `to` to prepare `txn`; `commits` ride along.
    Prepare {
        txn: TxnId,
        to: Vec<Target>,
        items: Vec<Item>,
        commits: Vec<CommitRequest>,
    },
    Commit {
        to: Target,
        commit: CommitRequest,
    },
    /// Best effort: a counter that misses it asks later and hears "aborted".
    Abort {
        to: Vec<Target>,
        txn: TxnId,
    },
    /// Write this batch to the decision log durably, then send
    /// [`Event::LogWritten`]. At most one is outstanding.
    WriteLog(LogWrite),
    /// Answer a client's write.
    WriteDone {
        request: RequestId,
        result: Result<(), WriteRefused>,
    },
    /// Answer a registration or catch-up report.
    Joined {
        request: RequestId,
        result: Result<JoinPlan, JoinRefused>,
    },
    Outcome {
        request: RequestId,
        outcome: Outcome,
    },
    /// Answer a promotion: what the counter held, or why not.
    Promoted {
        request: RequestId,
        result: Result<CommitIndex, String>,
    },
    /// Check a counter's health (its status, naming this epoch).
    CheckHealth {
        to: Target,
    },
    /// Ask the counter at `url` to fetch what it misses.
    CatchUp {
        url: String,
        request: CatchUpRequest,
    },
    /// For logs and metrics only.
    Notice(Notice),
}

/// What happened, for the operator: the driver logs it and counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A transaction's decision is durable.
    Decided {
        txn: TxnId,
        decision: Decision,
        items: usize,
        requests: usize,
        /// From the first prepare to the end of the vote.
        prepare_ms: u64,
        /// From the end of the vote to the durable decision.
        decide_ms: u64,
    },
    /// A prepare got no vote from `counter`.
    PrepareFailed { counter: CounterId, error: String },
    /// A membership change (a transition, lost data).
    Membership(Effect),
    /// A counter lacks a commit it was sent again: it copies it instead.
    LacksCommit {
        counter: CounterId,
        index: CommitIndex,
    },
    /// Decisions up to `upto` will be forgotten.
    Trimmed { upto: CommitIndex },
    /// A health check failed.
    HealthFailed { counter: CounterId, error: String },
    /// A registration was accepted.
    Registered {
        counter: CounterId,
        incarnation: Incarnation,
        applied: CommitIndex,
        plan: JoinPlan,
    },
    /// One log write: how many jobs it folded together.
    LogBatch { jobs: usize },
}

/// What a fenced read needs: the durable decided index to fence at, the
/// counters that may answer, and this coordinator's epoch, which they
/// check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadView {
    pub fence: CommitIndex,
    pub readable: Vec<Target>,
    pub epoch: u64,
}

/// The coordinator's whole protocol state.
#[derive(Debug)]
pub struct CoordinatorCore {
    config: CoreConfig,
    cluster: Cluster,
    now: Millis,
    /// Highest commit index whose decision is durable: the read fence.
    fence: CommitIndex,
    next_seq: u64,
    queue: writes::WriteQueue,
    /// Transactions from their first prepare to their durable decision.
    txns: BTreeMap<TxnId, writes::Txn>,
    /// Transactions in their prepare phase that are small (group commit).
    preparing_small: usize,
    /// Counters that missed their last prepare: transactions do not wait
    /// for them unless they are in sync, so a stalled counter slows writes
    /// for one timeout, not for every transaction.
    lagging: HashSet<CounterId>,
    log: log::LogState,
    deliveries: delivery::Deliveries,
    /// Durable commit decisions not trimmed: the answer to "how did `txn`
    /// end?".
    decisions: BTreeMap<TxnId, CommitIndex>,
    health: members::HealthRounds,
}

impl CoordinatorCore {
    /// Starts from what the decision log held. Commits logged before are
    /// re-sent to every counter (one that applied it just acknowledges),
    /// and every counter is checked at once, so each re-registers with
    /// this epoch at the first round.
    pub fn recover(config: CoreConfig, restored: RestoredLog, now: Millis) -> Self {
        let mut cluster = Cluster::restore(
            config.membership,
            restored.members.clone(),
            restored.decided,
        );
        cluster.number_registrations_from(config.epoch << 32);
        // Every index below the oldest decision still logged was trimmed,
        // so every counter in sync then had applied it.
        cluster.note_trimmed(
            restored
                .decisions
                .first()
                .map_or(restored.decided, |(_, index)| CommitIndex(index.0 - 1)),
        );
        let everyone: BTreeSet<CounterId> = cluster.members().map(|m| m.id.clone()).collect();
        let mut deliveries = delivery::Deliveries::default();
        for (txn, index) in &restored.decisions {
            deliveries.pending_since(*index, *txn, everyone.clone(), Millis(0));
        }
        CoordinatorCore {
            fence: restored.decided,
            next_seq: 1,
            queue: writes::WriteQueue::default(),
            txns: BTreeMap::new(),
            preparing_small: 0,
            lagging: HashSet::new(),
            log: log::LogState::new(restored.members),
            deliveries,
            decisions: restored.decisions.iter().copied().collect(),
            health: members::HealthRounds::new(now, &config),
            cluster,
            now,
            config,
        }
    }

    /// Takes one event at time `now` and returns what to do, in order.
    pub fn step(&mut self, now: Millis, event: Event) -> Vec<Action> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        match event {
            Event::Write { request, items } => self.on_write(request, items, &mut out),
            Event::Voted { txn, counter, vote } => self.on_vote(txn, counter, vote, &mut out),
            Event::CommitAnswered {
                index,
                counter,
                answer,
            } => self.on_commit_answer(index, counter, answer, &mut out),
            Event::LogWritten => self.on_log_written(&mut out),
            Event::HealthAnswered { counter, report } => self.on_health(counter, report, &mut out),
            Event::Register {
                request,
                id,
                url,
                incarnation,
                applied,
                holds,
            } => {
                let hello = members::Hello {
                    id,
                    url,
                    incarnation,
                    applied,
                    holds,
                };
                self.on_register(request, hello, &mut out)
            }
            Event::CaughtUp {
                request,
                id,
                incarnation,
                registration,
                applied,
            } => self.on_caught_up(request, id, incarnation, registration, applied, &mut out),
            Event::AskOutcome { request, txn } => out.push(Action::Outcome {
                request,
                outcome: self.outcome(txn),
            }),
            Event::Promote { request, id } => self.on_promote(request, id, &mut out),
            Event::Tick => {}
        }
        self.fire_timers(&mut out);
        self.start_transactions(&mut out);
        self.start_log_write(&mut out);
        out
    }

    /// When the next timer is due; the caller ticks then (or earlier).
    pub fn next_wakeup(&self) -> Millis {
        let mut next = self.health.next_round().min(self.deliveries.next_sweep());
        for txn in self.txns.values() {
            if let Some(deadline) = txn.deadline() {
                next = next.min(deadline);
            }
        }
        if let Some(due) = self.deliveries.next_linger(self.writes_waiting()) {
            next = next.min(due);
        }
        next
    }

    fn fire_timers(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let expired: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| t.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for txn in expired {
            self.end_prepare(txn);
        }
        self.deliver_lingering(out);
        if self.health.due(now) {
            self.health_round(out);
        }
        if self.deliveries.sweep_due(now) {
            self.sweep(out);
        }
    }

    /// How `txn` ended, as far as anyone may be told: pending until its
    /// decision is durable, then committed or (presumed) aborted.
    pub fn outcome(&self, txn: TxnId) -> Outcome {
        if self.txns.contains_key(&txn) {
            return Outcome::Pending;
        }
        match self.decisions.get(&txn) {
            Some(index) => Outcome::Committed { index: *index },
            None => Outcome::Aborted,
        }
    }

    /// What a fenced read starting now needs.
    pub fn read_view(&self) -> ReadView {
        ReadView {
            fence: self.read_fence(),
            readable: self
                .cluster
                .readable()
                .into_iter()
                .map(|(id, url)| Target { id, url })
                .collect(),
            epoch: self.config.epoch,
        }
    }

    /// Whether `view` is what [`read_view`](Self::read_view) would give
    /// now. The driver asks after every turn; building a new view each time
    /// (the readable counters' ids and URLs copied) cost about 2% of the
    /// coordinator's instructions per single-item write.
    pub fn read_view_is(&self, view: &ReadView) -> bool {
        let mut readable = self.cluster.readable_members();
        view.fence == self.read_fence()
            && view.epoch == self.config.epoch
            && view.readable.iter().all(|target| {
                readable
                    .next()
                    .is_some_and(|(id, url)| *id == target.id && url == target.url)
            })
            && readable.next().is_none()
    }

    /// The highest durable decision: every write acknowledged before a
    /// read starts has an index at or below it, so a counter that applied
    /// everything up to it counts every such write.
    #[cfg(not(feature = "mutate-fence-at-delivered"))]
    fn read_fence(&self) -> CommitIndex {
        self.fence
    }

    /// Mutation: fence at the highest commit every voter acknowledged. A
    /// write acknowledged to its client but not yet applied everywhere is
    /// missed by a read that starts after the acknowledgement.
    #[cfg(feature = "mutate-fence-at-delivered")]
    fn read_fence(&self) -> CommitIndex {
        self.deliveries
            .lowest_pending()
            .map_or(self.fence, |i| CommitIndex(i.0 - 1))
            .min(self.fence)
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The durable decided index.
    pub fn fence(&self) -> CommitIndex {
        self.fence
    }

    /// Writes waiting for a transaction, and transactions in flight.
    pub fn load(&self) -> (usize, usize) {
        (self.queue.len(), self.txns.len())
    }

    /// Logged commits some counter has not acknowledged yet.
    pub fn unacknowledged(&self) -> usize {
        self.deliveries.pending_len()
    }

    /// Carries out what the membership asked: changes that must be durable
    /// wait for the next log write, together with everything after them.
    fn carry_out(&mut self, effects: Vec<Effect>, then: Vec<Action>, out: &mut Vec<Action>) {
        let persist = effects.contains(&Effect::Persist);
        let mut after = Vec::new();
        for effect in effects {
            match effect {
                Effect::Persist => {}
                Effect::CatchUp { url, request } => after.push(Action::CatchUp { url, request }),
                other => after.push(Action::Notice(Notice::Membership(other))),
            }
        }
        after.extend(then);
        if persist {
            self.log.persist_then(after);
        } else {
            out.extend(after);
        }
    }
}

#[cfg(test)]
mod tests;
