//! The coordinator processes, driven the way the binary's driver drives
//! them: calls time out (a prepare, a commit, a health check become
//! `Voted { Err }`, `CommitAnswered { Failed }`, `HealthAnswered { Err }`),
//! the core is ticked at its next wakeup, and answers go back to whoever
//! asked.
//!
//! With one coordinator, the process is the real `CoordinatorCore` over a
//! simulated decision log: a `WriteLog` becomes durable after a simulated
//! fsync, and only then is `LogWritten` delivered; a crash loses a write
//! not yet durable. Every start rebuilds `RestoredLog` from the durable
//! part with the epoch raised by one, as opening the real log does.
//!
//! With several, each process is a `ReplicatedCoordinator` (replica.rs),
//! whose leader runs the same core; what that core asks for is carried out
//! here, the same way. A coordinator that does not lead passes a client's
//! or a counter's request on to the leader it knows and relays the answer
//! (as the binary's HTTP proxy will), or answers "not leader".

use crate::net::{
    counter_id, counter_index, counter_url, Msg, Node, ReadResult, Reply, WriteError,
};
use crate::replica::Replica;
use crate::world::{Ev, World};
use std::collections::BTreeMap;
use tally_common::api::CounterState;
use tally_common::coordinator::{
    Action, CommitAnswer, CoordinatorCore, CoreConfig, Event, LogWrite, Millis, ReadView,
    RequestId, RestoredLog,
};
use tally_common::membership::StoredMember;
use tally_common::{CommitIndex, CounterId, TxnId};
use tally_consensus::Input;

/// How long the driver waits for a commit's answer.
const COMMIT_TIMEOUT_MS: u64 = 1000;
/// A health check's timeout: the interval clamped to 0.5–2 s.
const HEALTH_TIMEOUT_MS: u64 = 500;
/// How long a fenced read may take at one counter before the next is tried.
const COUNT_TIMEOUT_MS: u64 = 1500;

/// What the decision log of a lone coordinator holds durably.
#[derive(Debug, Default, Clone)]
pub struct DurableLog {
    pub epoch: u64,
    pub decided: CommitIndex,
    pub decisions: BTreeMap<CommitIndex, TxnId>,
    pub members: Vec<StoredMember>,
}

/// Who waits for the answer to a request the core was given, and where
/// that answer goes (the caller, or the coordinator that proxied it).
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    Write {
        to: Node,
        attempt: u64,
    },
    Counter {
        to: Node,
        call: u64,
    },
    /// A read waiting for the leader to confirm that it still leads.
    Read {
        to: Node,
        read: u64,
        tenant: String,
    },
}

/// A call the coordinator made and waits on.
#[derive(Debug, Clone)]
pub(crate) enum Call {
    Prepare {
        txn: TxnId,
        counter: CounterId,
    },
    Commit {
        index: CommitIndex,
        counter: CounterId,
    },
    Health {
        counter: CounterId,
    },
    Count {
        read: u64,
    },
}

/// A client's read: the view taken when it arrived (or when the leader
/// confirmed it still leads), and the next counter to try.
#[derive(Debug)]
struct ReadJob {
    to: Node,
    read: u64,
    tenant: String,
    view: ReadView,
    next: usize,
}

#[derive(Default)]
pub struct Coordinator {
    /// The core of a lone coordinator.
    pub core: Option<CoordinatorCore>,
    pub life: u64,
    /// The decision log of a lone coordinator.
    pub log: DurableLog,
    writing: Option<LogWrite>,
    /// The Raft side of one of several coordinators.
    pub replica: Option<Replica>,
    pub(crate) origins: BTreeMap<RequestId, Origin>,
    pub(crate) calls: BTreeMap<u64, Call>,
    reads: BTreeMap<u64, ReadJob>,
    tick_at: Option<u64>,
    next_request: u64,
    /// Each read starts from the next readable counter, as the binary's
    /// reads do (coordinator/src/reads.rs), so every readable counter
    /// answers reads, not only the first.
    read_cursor: usize,
    /// Requests passed on to the leader: whom to relay each answer to, by
    /// the request's id.
    proxied: BTreeMap<u64, Node>,
}

impl Coordinator {
    /// A lone coordinator, or one of several.
    pub fn new(replicated: bool) -> Self {
        Coordinator {
            replica: replicated.then(Replica::default),
            ..Coordinator::default()
        }
    }
}

impl World {
    /// Several coordinators replicating their decisions, or one.
    pub(crate) fn replicated(&self) -> bool {
        self.coordinators.len() > 1
    }

    /// Starts coordinator `k`: a lone one on its durable log, in a new
    /// epoch; one of several as replica.rs says.
    pub(crate) fn coordinator_start(&mut self, k: usize) {
        if self.replicated() {
            self.replica_start(k);
            return;
        }
        let c = &mut self.coordinators[k];
        c.life += 1;
        c.log.epoch += 1;
        let restored = RestoredLog {
            epoch: c.log.epoch,
            decided: c.log.decided,
            decisions: c.log.decisions.iter().map(|(i, t)| (*t, *i)).collect(),
            members: c.log.members.clone(),
        };
        let epoch = c.log.epoch;
        let config = self.core_config(epoch);
        let c = &mut self.coordinators[k];
        c.core = Some(CoordinatorCore::recover(config, restored, Millis(self.now)));
        self.trace(|| {
            format!(
                "coordinator starts, epoch {}",
                self.coordinators[k].log.epoch
            )
        });
        self.schedule_tick(k);
    }

    /// The core's settings in this world.
    pub(crate) fn core_config(&self, epoch: u64) -> CoreConfig {
        let mut config = CoreConfig::for_tests(epoch);
        config.membership.min_insync = self.settings.min_insync;
        config.max_queued = self.settings.max_queued;
        config
    }

    /// The process dies: everything not durable is gone.
    pub(crate) fn coordinator_crash(&mut self, k: usize) {
        if self.coordinator_life(k).is_none() {
            return;
        }
        let c = &mut self.coordinators[k];
        c.core = None;
        c.writing = None;
        if let Some(r) = c.replica.as_mut() {
            r.crash();
        }
        c.origins.clear();
        c.calls.clear();
        c.reads.clear();
        c.proxied.clear();
        c.tick_at = None;
        c.read_cursor = 0;
        self.trace(|| format!("coordinator {k} crashes"));
        if self.replicated() {
            self.agreement_up_or_down();
        }
    }

    pub(crate) fn coordinator_life(&self, k: usize) -> Option<u64> {
        let c = &self.coordinators[k];
        let up = match &c.replica {
            Some(r) => r.up,
            None => c.core.is_some(),
        };
        up.then_some(c.life)
    }

    /// The core coordinator `k` runs, if any (one of several runs one only
    /// while it leads).
    pub(crate) fn core_of(&self, k: usize) -> Option<&CoordinatorCore> {
        let c = &self.coordinators[k];
        match &c.replica {
            Some(r) => r.node.as_ref().and_then(|n| n.core()),
            None => c.core.as_ref(),
        }
    }

    /// The highest commit index decided durably as coordinator `k` knows.
    fn durable_decided(&self, k: usize) -> CommitIndex {
        let c = &self.coordinators[k];
        match &c.replica {
            Some(r) => r
                .node
                .as_ref()
                .map_or(CommitIndex::ZERO, |n| n.state().decided),
            None => c.log.decided,
        }
    }

    /// The epoch of the core whose actions are being carried out.
    fn core_epoch(&self, k: usize) -> u64 {
        let c = &self.coordinators[k];
        match &c.replica {
            Some(r) => r.core_term.unwrap_or(0),
            None => c.log.epoch,
        }
    }

    fn coordinator_step(&mut self, k: usize, event: Event) {
        if self.replicated() {
            self.replica_step(k, Input::Core(event));
            return;
        }
        let now = Millis(self.now);
        if self.coordinators[k].core.is_none() {
            return;
        }
        self.trace(|| format!("coordinator <- {event:?}"));
        let core = self.coordinators[k].core.as_mut().expect("checked");
        let actions = core.step(now, event);
        for action in actions {
            self.coordinator_carry_out(k, action);
        }
        self.schedule_tick(k);
        self.check_in_sync_set(k);
    }

    /// The in-sync set's promise (common/src/membership.rs): a counter the
    /// coordinator lets vote as in sync and answer reads holds every
    /// commit decided durably, applied or prepared. Checked for each member
    /// the coordinator counts as serving whose process runs on the disk the
    /// coordinator knows and has registered with this coordinator: one that
    /// restarted and has not registered yet refuses votes and reads by
    /// itself, which is the rule that makes the coordinator's stale view
    /// harmless. With several coordinators, for each core, with what its
    /// own coordinator has applied as durable.
    pub(crate) fn check_in_sync_set(&mut self, k: usize) {
        let Some(core) = self.core_of(k) else {
            return;
        };
        let epoch = core.config().epoch;
        let durable = self.durable_decided(k);
        let mut found = None;
        for m in core.cluster().members() {
            if !(m.in_sync && m.registered && m.state == CounterState::Live) {
                continue;
            }
            let Some(i) = counter_index(&m.id.0) else {
                continue;
            };
            let c = &self.counters[i];
            if !c.up
                || Some(c.disk.incarnation) != m.incarnation
                || c.registration.epoch() != Some(epoch)
            {
                continue;
            }
            let applied = c.applied();
            let missing = self
                .history
                .decided
                .range(applied.next()..)
                .take_while(|(index, _)| **index <= durable)
                .find(|(index, (txn, _))| {
                    !c.disk.applied.contains(**index) && !c.disk.prepared.contains_key(txn)
                });
            if let Some((index, (txn, _))) = missing {
                found = Some(format!(
                    "the coordinator (epoch {epoch}) counts {} as in sync (applied {} by its word), \
                     but its disk (incarnation {}, applied {applied}) holds neither the commit at \
                     {index} nor {txn} prepared",
                    m.id, m.applied, c.disk.incarnation
                ));
                break;
            }
        }
        if let Some(detail) = found {
            if !self
                .history
                .violations
                .iter()
                .any(|v| v.property == "in-sync set")
            {
                let state = self.describe_cluster();
                self.history
                    .violation("in-sync set", format!("{detail}\n{state}"));
            }
        }
    }

    pub(crate) fn schedule_tick(&mut self, k: usize) {
        let c = &self.coordinators[k];
        let wakeup = match &c.replica {
            Some(r) => r.node.as_ref().map(|n| n.next_wakeup()),
            None => c.core.as_ref().map(|core| core.next_wakeup()),
        };
        let Some(wakeup) = wakeup else {
            return;
        };
        let at = wakeup.0.max(self.now + 1);
        if self.coordinators[k].tick_at.is_none_or(|t| at < t) {
            self.coordinators[k].tick_at = Some(at);
            let life = self.coordinators[k].life;
            self.schedule_at(at, Ev::CoordinatorTick { k, life });
        }
    }

    pub(crate) fn coordinator_tick(&mut self, k: usize, life: u64) {
        if self.coordinator_life(k) != Some(life) || self.coordinators[k].tick_at != Some(self.now)
        {
            return;
        }
        self.coordinators[k].tick_at = None;
        if self.replicated() {
            self.replica_step(k, Input::Tick);
        } else {
            self.coordinator_step(k, Event::Tick);
        }
    }

    fn request_id(&mut self, k: usize, origin: Origin) -> RequestId {
        let c = &mut self.coordinators[k];
        c.next_request += 1;
        let id = RequestId(c.next_request);
        c.origins.insert(id, origin);
        id
    }

    fn coordinator_call(
        &mut self,
        k: usize,
        to: usize,
        call: Call,
        msg: impl FnOnce(u64) -> Msg,
        ms: u64,
    ) {
        let id = self.new_id();
        self.coordinators[k].calls.insert(id, call);
        self.send(Node::Coordinator(k), Node::Counter(to), msg(id));
        let life = self.coordinators[k].life;
        self.schedule(
            ms,
            Ev::Timeout {
                node: Node::Coordinator(k),
                life,
                call: id,
            },
        );
    }

    /// Sends the answer to whoever made `request`, if it is the kind of
    /// request that answer is for.
    fn answer(
        &mut self,
        k: usize,
        request: RequestId,
        reply: impl FnOnce(Origin) -> Option<(Node, Msg)>,
    ) {
        if let Some((to, msg)) = self.coordinators[k]
            .origins
            .remove(&request)
            .and_then(reply)
        {
            self.send(Node::Coordinator(k), to, msg);
        }
    }

    /// Answers a request whose outcome this coordinator cannot tell: it
    /// does not lead, or its core was deposed while the request waited.
    pub(crate) fn answer_unknown(&mut self, k: usize, request: RequestId, why: &'static str) {
        self.answer(k, request, |origin| Some(unknown_answer(origin, why)));
    }

    /// The core is gone: every request it held is answered "outcome
    /// unknown", and its calls are forgotten (their late answers must not
    /// reach a later core). Reads already confirmed go on with their view.
    pub(crate) fn forget_core(&mut self, k: usize) {
        let origins = std::mem::take(&mut self.coordinators[k].origins);
        for (_, origin) in origins {
            let (to, msg) = unknown_answer(origin, "deposed");
            self.send(Node::Coordinator(k), to, msg);
        }
        self.coordinators[k]
            .calls
            .retain(|_, call| matches!(call, Call::Count { .. }));
    }

    pub(crate) fn coordinator_carry_out(&mut self, k: usize, action: Action) {
        if !matches!(action, Action::Notice(_)) {
            self.trace(|| format!("coordinator {k} -> {action:?}"));
        }
        match action {
            Action::Prepare {
                txn,
                to,
                items,
                commits,
            } => {
                self.history.prepared(txn, &items);
                for target in to {
                    let Some(i) = counter_index(&target.id.0) else {
                        continue;
                    };
                    let (items, commits) = (items.clone(), commits.clone());
                    self.coordinator_call(
                        k,
                        i,
                        Call::Prepare {
                            txn,
                            counter: target.id,
                        },
                        |call| Msg::Prepare {
                            call,
                            txn,
                            items,
                            commits,
                        },
                        self.settings.prepare_timeout_ms,
                    );
                }
            }
            Action::Commit { to, commit } => {
                if let Some(i) = counter_index(&to.id.0) {
                    self.coordinator_call(
                        k,
                        i,
                        Call::Commit {
                            index: commit.index,
                            counter: to.id,
                        },
                        |call| Msg::Commit { call, commit },
                        COMMIT_TIMEOUT_MS,
                    );
                }
            }
            Action::Abort { to, txn } => {
                for target in to {
                    if let Some(i) = counter_index(&target.id.0) {
                        self.send(Node::Coordinator(k), Node::Counter(i), Msg::Abort { txn });
                    }
                }
            }
            Action::WriteLog(write) => {
                // Only a lone coordinator's core writes its own log; a
                // replicated one turns each write into a Raft proposal.
                let delay = self.rng.range(1, 8);
                let decides = !write.commits.is_empty();
                self.coordinators[k].writing = Some(write);
                let life = self.coordinators[k].life;
                self.schedule(delay, Ev::CoordinatorFsync { k, life });
                // The worst moment to die: a decision formed, not yet (or
                // only just) durable, nobody told.
                if decides && self.faults_on && self.rng.chance(self.settings.crash_after_decision)
                {
                    let at = self.rng.range(0, delay + 2);
                    self.schedule(
                        at,
                        Ev::Crash {
                            node: Node::Coordinator(k),
                            life,
                        },
                    );
                }
            }
            Action::WriteDone { request, result } => {
                self.answer(k, request, |origin| match origin {
                    Origin::Write { to, attempt } => Some((
                        to,
                        Msg::WriteAnswer {
                            attempt,
                            result: result.map_err(WriteError::Refused),
                        },
                    )),
                    _ => None,
                })
            }
            Action::Joined { request, result } => self.answer(k, request, |origin| match origin {
                Origin::Counter { to, call } => Some((
                    to,
                    Msg::Reply {
                        call,
                        body: Reply::Joined(result),
                    },
                )),
                _ => None,
            }),
            Action::Outcome { request, outcome } => {
                self.answer(k, request, |origin| match origin {
                    Origin::Counter { to, call } => Some((
                        to,
                        Msg::Reply {
                            call,
                            body: Reply::Outcome(outcome),
                        },
                    )),
                    _ => None,
                })
            }
            Action::Promoted { .. } => {}
            Action::CheckHealth { to } => {
                let epoch = self.core_epoch(k);
                if let Some(i) = counter_index(&to.id.0) {
                    self.coordinator_call(
                        k,
                        i,
                        Call::Health { counter: to.id },
                        |call| Msg::Status { call, epoch },
                        HEALTH_TIMEOUT_MS,
                    );
                }
            }
            Action::CatchUp { url, request } => {
                if let Some(i) = counter_index(&url) {
                    self.send(
                        Node::Coordinator(k),
                        Node::Counter(i),
                        Msg::CatchUp { request },
                    );
                }
            }
            Action::Notice(notice) => self.trace(|| format!("coordinator {k} notice: {notice:?}")),
        }
    }

    /// A lone coordinator's log write is durable now (unless the process
    /// died meanwhile).
    pub(crate) fn coordinator_fsync(&mut self, k: usize, life: u64) {
        if self.replicated() {
            self.replica_fsync(k, life);
            return;
        }
        if self.coordinator_life(k) != Some(life) {
            return;
        }
        let Some(write) = self.coordinators[k].writing.take() else {
            return;
        };
        let log = &mut self.coordinators[k].log;
        for (txn, index) in &write.commits {
            if *index != log.decided.next() {
                self.history.violation(
                    "gap-free indexes",
                    format!(
                        "the log holds decided {} and now logs {index} ({txn})",
                        log.decided
                    ),
                );
            }
            log.decided = log.decided.max(*index);
            log.decisions.insert(*index, *txn);
        }
        if let Some(decided) = write.decided {
            log.decided = log.decided.max(decided);
        }
        if let Some(members) = &write.members {
            log.members = members.clone();
        }
        if let Some(upto) = write.trim {
            log.decisions.retain(|index, _| *index > upto);
        }
        let now = self.now;
        for (txn, index) in &write.commits {
            self.history.logged(*txn, *index, now);
        }
        self.trace(|| format!("coordinator log durable: {write:?}"));
        self.coordinator_step(k, Event::LogWritten);
    }

    pub(crate) fn coordinator_receive(&mut self, k: usize, from: Node, msg: Msg) {
        match (from, msg) {
            (Node::Counter(_), Msg::Reply { call, body }) => {
                let Some(call) = self.coordinators[k].calls.remove(&call) else {
                    return;
                };
                match (call, body) {
                    (Call::Prepare { txn, counter }, Reply::Vote(vote)) => {
                        self.coordinator_step(k, Event::Voted { txn, counter, vote })
                    }
                    (Call::Commit { index, counter }, Reply::Commit(answer)) => self
                        .coordinator_step(
                            k,
                            Event::CommitAnswered {
                                index,
                                counter,
                                answer,
                            },
                        ),
                    (Call::Health { counter }, Reply::Health(report)) => self.coordinator_step(
                        k,
                        Event::HealthAnswered {
                            counter,
                            report: Ok(report),
                        },
                    ),
                    (Call::Count { read }, Reply::Count(answer)) => {
                        self.read_answered(k, read, answer)
                    }
                    (call, body) => panic!("answer {body:?} to {call:?}"),
                }
            }
            // The leader's answers to requests this coordinator passed on.
            (Node::Coordinator(_), msg @ Msg::Reply { call: id, .. })
            | (Node::Coordinator(_), msg @ Msg::WriteAnswer { attempt: id, .. })
            | (Node::Coordinator(_), msg @ Msg::ReadAnswer { read: id, .. }) => {
                if let Some(to) = self.coordinators[k].proxied.remove(&id) {
                    self.send(Node::Coordinator(k), to, msg);
                }
            }
            (Node::Coordinator(p), Msg::Raft { bytes }) => self.replica_message(k, p, &bytes),
            (Node::Coordinator(p), Msg::TermAsk) => self.replica_term_asked(k, p),
            (Node::Coordinator(p), Msg::TermIs { log }) => self.replica_term_answered(k, p, log),
            (
                from,
                msg @ (Msg::Register { .. }
                | Msg::CaughtUp { .. }
                | Msg::AskOutcome { .. }
                | Msg::Write { .. }
                | Msg::Read { .. }),
            ) => self.coordinator_request(k, from, msg),
            (from, msg) => panic!("coordinator {k} got {msg:?} from {from:?}"),
        }
    }

    /// A client's or a counter's request. One of several coordinators that
    /// has no core passes it on to the leader it knows (once: a request
    /// passed on already is answered "not leader" by a coordinator that
    /// does not lead either), and relays the answer.
    fn coordinator_request(&mut self, k: usize, from: Node, msg: Msg) {
        if let Some(r) = &self.coordinators[k].replica {
            let node = r.node.as_ref();
            if node.is_none_or(|n| n.core().is_none()) {
                let leader = node
                    .and_then(|n| n.leader())
                    .map(|id| id as usize - 1)
                    .filter(|l| *l != k && *l < self.coordinators.len());
                match leader {
                    Some(l) if !matches!(from, Node::Coordinator(_)) => {
                        self.trace(|| {
                            format!("coordinator {k} passes {} on to {l}", request_name(&msg))
                        });
                        self.coordinators[k].proxied.insert(request_key(&msg), from);
                        self.send(Node::Coordinator(k), Node::Coordinator(l), msg);
                        return;
                    }
                    _ if node.is_none() => {
                        let origin = origin_of(from, &msg);
                        let (to, answer) = unknown_answer(origin, "not leader");
                        self.send(Node::Coordinator(k), to, answer);
                        return;
                    }
                    // Its node answers "not leader" itself.
                    _ => {}
                }
            }
        }
        match msg {
            Msg::Register {
                counter,
                call,
                incarnation,
                applied,
                holds,
            } => {
                let request = self.request_id(k, Origin::Counter { to: from, call });
                self.coordinator_step(
                    k,
                    Event::Register {
                        request,
                        id: counter_id(counter),
                        url: counter_url(counter),
                        incarnation,
                        applied,
                        holds,
                    },
                );
            }
            Msg::CaughtUp {
                counter,
                call,
                incarnation,
                registration,
                applied,
            } => {
                let request = self.request_id(k, Origin::Counter { to: from, call });
                self.coordinator_step(
                    k,
                    Event::CaughtUp {
                        request,
                        id: counter_id(counter),
                        incarnation,
                        registration,
                        applied,
                    },
                );
            }
            Msg::AskOutcome { call, txn } => {
                let request = self.request_id(k, Origin::Counter { to: from, call });
                self.coordinator_step(k, Event::AskOutcome { request, txn });
            }
            Msg::Write { attempt, items } => {
                let request = self.request_id(k, Origin::Write { to: from, attempt });
                self.coordinator_step(k, Event::Write { request, items });
            }
            Msg::Read { read, tenant } if self.replicated() => {
                // A fenced read waits for a heartbeat round to confirm that
                // this coordinator still leads (Input::ReadIndex).
                let request = self.request_id(
                    k,
                    Origin::Read {
                        to: from,
                        read,
                        tenant,
                    },
                );
                self.replica_step(k, Input::ReadIndex(request));
            }
            Msg::Read { read, tenant } => {
                let Some(core) = self.coordinators[k].core.as_ref() else {
                    return;
                };
                let view = core.read_view();
                self.start_read(k, from, read, tenant, view);
            }
            other => panic!("not a request: {other:?}"),
        }
    }

    /// Serves a read with `view`, from the next readable counter on.
    pub(crate) fn start_read(
        &mut self,
        k: usize,
        to: Node,
        read: u64,
        tenant: String,
        mut view: ReadView,
    ) {
        let c = &mut self.coordinators[k];
        if !view.readable.is_empty() {
            let start = c.read_cursor % view.readable.len();
            view.readable.rotate_left(start);
        }
        c.read_cursor += 1;
        self.trace(|| format!("coordinator {k} read {read} of {tenant}: {view:?}"));
        self.coordinators[k].reads.insert(
            read,
            ReadJob {
                to,
                read,
                tenant,
                view,
                next: 0,
            },
        );
        self.read_next(k, read);
    }

    pub(crate) fn coordinator_timeout(&mut self, k: usize, call: u64) {
        let Some(call) = self.coordinators[k].calls.remove(&call) else {
            return;
        };
        match call {
            Call::Prepare { txn, counter } => self.coordinator_step(
                k,
                Event::Voted {
                    txn,
                    counter,
                    vote: Err("timed out".into()),
                },
            ),
            Call::Commit { index, counter } => self.coordinator_step(
                k,
                Event::CommitAnswered {
                    index,
                    counter,
                    answer: CommitAnswer::Failed("timed out".into()),
                },
            ),
            Call::Health { counter } => self.coordinator_step(
                k,
                Event::HealthAnswered {
                    counter,
                    report: Err("timed out".into()),
                },
            ),
            Call::Count { read } => self.read_next(k, read),
        }
    }

    /// Asks the next readable counter, or answers the client that none could.
    fn read_next(&mut self, k: usize, read: u64) {
        let Some(job) = self.coordinators[k].reads.get_mut(&read) else {
            return;
        };
        let Some(target) = job.view.readable.get(job.next).cloned() else {
            let job = self.coordinators[k].reads.remove(&read).expect("present");
            self.send(
                Node::Coordinator(k),
                job.to,
                Msg::ReadAnswer {
                    read: job.read,
                    result: Err("no counter could answer".into()),
                },
            );
            return;
        };
        job.next += 1;
        let (tenant, fence, epoch) = (job.tenant.clone(), job.view.fence, job.view.epoch);
        match counter_index(&target.id.0) {
            Some(i) => self.coordinator_call(
                k,
                i,
                Call::Count { read },
                |call| Msg::Count {
                    call,
                    tenant,
                    fence,
                    epoch,
                },
                COUNT_TIMEOUT_MS,
            ),
            None => self.read_next(k, read),
        }
    }

    fn read_answered(
        &mut self,
        k: usize,
        read: u64,
        answer: Result<(CounterId, std::collections::BTreeSet<String>), String>,
    ) {
        let Some(job) = self.coordinators[k].reads.get(&read) else {
            return;
        };
        let expected = job.view.readable[job.next - 1].id.clone();
        match answer {
            Ok((counter, ids)) if counter == expected => {
                let job = self.coordinators[k].reads.remove(&read).expect("present");
                let result = ReadResult {
                    ids,
                    counter,
                    fence: job.view.fence,
                    epoch: job.view.epoch,
                };
                self.send(
                    Node::Coordinator(k),
                    job.to,
                    Msg::ReadAnswer {
                        read,
                        result: Ok(result),
                    },
                );
            }
            _ => self.read_next(k, read),
        }
    }
}

/// Where the answer to a request goes and what it says, when its outcome
/// is not known.
fn unknown_answer(origin: Origin, why: &'static str) -> (Node, Msg) {
    match origin {
        Origin::Write { to, attempt } => (
            to,
            Msg::WriteAnswer {
                attempt,
                result: Err(WriteError::Unknown(why)),
            },
        ),
        Origin::Counter { to, call } => (
            to,
            Msg::Reply {
                call,
                body: Reply::NotLeader,
            },
        ),
        Origin::Read { to, read, .. } => (
            to,
            Msg::ReadAnswer {
                read,
                result: Err(why.to_string()),
            },
        ),
    }
}

/// The origin a request would have.
fn origin_of(from: Node, msg: &Msg) -> Origin {
    match msg {
        Msg::Write { attempt, .. } => Origin::Write {
            to: from,
            attempt: *attempt,
        },
        Msg::Read { read, tenant } => Origin::Read {
            to: from,
            read: *read,
            tenant: tenant.clone(),
        },
        other => Origin::Counter {
            to: from,
            call: request_key(other),
        },
    }
}

/// The id a request's answer carries back.
fn request_key(msg: &Msg) -> u64 {
    match msg {
        Msg::Register { call, .. } | Msg::CaughtUp { call, .. } | Msg::AskOutcome { call, .. } => {
            *call
        }
        Msg::Write { attempt, .. } => *attempt,
        Msg::Read { read, .. } => *read,
        other => panic!("not a request: {other:?}"),
    }
}

fn request_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Register { .. } => "a registration",
        Msg::CaughtUp { .. } => "a caught-up report",
        Msg::AskOutcome { .. } => "an outcome question",
        Msg::Write { .. } => "a write",
        Msg::Read { .. } => "a read",
        _ => "a message",
    }
}
