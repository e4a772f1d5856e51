//! The coordinator process: the real `CoordinatorCore`, driven the way the
//! binary's driver drives it. Its decision log is a simulated disk: a
//! `WriteLog` becomes durable after a simulated fsync, and only then is
//! `LogWritten` delivered; a crash loses a write not yet durable. Every
//! start rebuilds `RestoredLog` from the durable part with the epoch
//! raised by one, as opening the real log does.

use crate::net::{counter_id, counter_index, counter_url, Msg, Node, ReadResult, Reply};
use crate::world::{Ev, World};
use std::collections::BTreeMap;
use tally_common::api::CounterState;
use tally_common::coordinator::{
    Action, CommitAnswer, CoordinatorCore, CoreConfig, Event, LogWrite, Millis, ReadView,
    RequestId, RestoredLog,
};
use tally_common::membership::StoredMember;
use tally_common::{CommitIndex, CounterId, TxnId};

/// How long the driver waits for a commit's answer.
const COMMIT_TIMEOUT_MS: u64 = 1000;
/// A health check's timeout: the interval clamped to 0.5–2 s.
const HEALTH_TIMEOUT_MS: u64 = 500;
/// How long a fenced read may take at one counter before the next is tried.
const COUNT_TIMEOUT_MS: u64 = 1500;

/// What the decision log holds durably.
#[derive(Debug, Default, Clone)]
pub struct DurableLog {
    pub epoch: u64,
    pub decided: CommitIndex,
    pub decisions: BTreeMap<CommitIndex, TxnId>,
    pub members: Vec<StoredMember>,
}

/// Who waits for the answer to a request the core was given.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Write { client: usize, attempt: u64 },
    Counter { counter: usize, call: u64 },
}

/// A call the coordinator made and waits on.
#[derive(Debug, Clone)]
enum Call {
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

/// A client's read: the view taken when it arrived, and the next counter
/// to try.
#[derive(Debug)]
struct ReadJob {
    client: usize,
    read: u64,
    tenant: String,
    view: ReadView,
    next: usize,
}

#[derive(Debug, Default)]
pub struct Coordinator {
    pub core: Option<CoordinatorCore>,
    pub life: u64,
    pub log: DurableLog,
    writing: Option<LogWrite>,
    origins: BTreeMap<RequestId, Origin>,
    calls: BTreeMap<u64, Call>,
    reads: BTreeMap<u64, ReadJob>,
    tick_at: Option<u64>,
    next_request: u64,
    /// Each read starts from the next readable counter, as the binary's
    /// reads do (coordinator/src/reads.rs), so every readable counter
    /// answers reads, not only the first.
    read_cursor: usize,
}

impl World {
    /// Starts the coordinator on its durable log, in a new epoch.
    pub(crate) fn coordinator_start(&mut self) {
        let c = &mut self.coordinator;
        c.life += 1;
        c.log.epoch += 1;
        let restored = RestoredLog {
            epoch: c.log.epoch,
            decided: c.log.decided,
            decisions: c.log.decisions.iter().map(|(i, t)| (*t, *i)).collect(),
            members: c.log.members.clone(),
        };
        let mut config = CoreConfig::for_tests(c.log.epoch);
        config.membership.min_insync = self.settings.min_insync;
        config.max_queued = self.settings.max_queued;
        c.core = Some(CoordinatorCore::recover(config, restored, Millis(self.now)));
        self.trace(|| format!("coordinator starts, epoch {}", self.coordinator.log.epoch));
        self.schedule_tick();
    }

    /// The process dies: everything not durable is gone.
    pub(crate) fn coordinator_crash(&mut self) {
        let c = &mut self.coordinator;
        if c.core.is_none() {
            return;
        }
        c.core = None;
        c.writing = None;
        c.origins.clear();
        c.calls.clear();
        c.reads.clear();
        c.tick_at = None;
        c.read_cursor = 0;
        self.trace(|| "coordinator crashes".to_string());
    }

    pub(crate) fn coordinator_life(&self) -> Option<u64> {
        self.coordinator
            .core
            .as_ref()
            .map(|_| self.coordinator.life)
    }

    fn coordinator_step(&mut self, event: Event) {
        let now = Millis(self.now);
        if self.coordinator.core.is_none() {
            return;
        }
        self.trace(|| format!("coordinator <- {event:?}"));
        let core = self.coordinator.core.as_mut().expect("checked");
        let actions = core.step(now, event);
        for action in actions {
            self.coordinator_carry_out(action);
        }
        self.schedule_tick();
        self.check_in_sync_set();
    }

    /// The in-sync set's promise (common/src/membership.rs): a counter the
    /// coordinator lets vote as in sync and answer reads holds every
    /// commit decided durably, applied or prepared. Checked for each member
    /// the coordinator counts as serving whose process runs on the disk the
    /// coordinator knows and has registered with this coordinator: one that
    /// restarted and has not registered yet refuses votes and reads by
    /// itself, which is the rule that makes the coordinator's stale view
    /// harmless.
    fn check_in_sync_set(&mut self) {
        let Some(core) = self.coordinator.core.as_ref() else {
            return;
        };
        let epoch = core.config().epoch;
        let durable = self.coordinator.log.decided;
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

    fn schedule_tick(&mut self) {
        let Some(core) = self.coordinator.core.as_ref() else {
            return;
        };
        let at = core.next_wakeup().0.max(self.now + 1);
        if self.coordinator.tick_at.is_none_or(|t| at < t) {
            self.coordinator.tick_at = Some(at);
            let life = self.coordinator.life;
            self.schedule_at(at, Ev::CoordinatorTick { life });
        }
    }

    pub(crate) fn coordinator_tick(&mut self, life: u64) {
        if self.coordinator_life() != Some(life) || self.coordinator.tick_at != Some(self.now) {
            return;
        }
        self.coordinator.tick_at = None;
        self.coordinator_step(Event::Tick);
    }

    fn request_id(&mut self, origin: Origin) -> RequestId {
        self.coordinator.next_request += 1;
        let id = RequestId(self.coordinator.next_request);
        self.coordinator.origins.insert(id, origin);
        id
    }

    fn coordinator_call(&mut self, to: usize, call: Call, msg: impl FnOnce(u64) -> Msg, ms: u64) {
        let id = self.new_id();
        self.coordinator.calls.insert(id, call);
        self.send(Node::Coordinator, Node::Counter(to), msg(id));
        let life = self.coordinator.life;
        self.schedule(
            ms,
            Ev::Timeout {
                node: Node::Coordinator,
                life,
                call: id,
            },
        );
    }

    /// Sends the answer to whoever made `request`, if it is the kind of
    /// request that answer is for.
    fn answer(&mut self, request: RequestId, reply: impl FnOnce(Origin) -> Option<(Node, Msg)>) {
        if let Some((to, msg)) = self.coordinator.origins.remove(&request).and_then(reply) {
            self.send(Node::Coordinator, to, msg);
        }
    }

    fn coordinator_carry_out(&mut self, action: Action) {
        if !matches!(action, Action::Notice(_)) {
            self.trace(|| format!("coordinator -> {action:?}"));
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
                        self.send(Node::Coordinator, Node::Counter(i), Msg::Abort { txn });
                    }
                }
            }
            Action::WriteLog(write) => {
                let delay = self.rng.range(1, 8);
                let decides = !write.commits.is_empty();
                self.coordinator.writing = Some(write);
                let life = self.coordinator.life;
                self.schedule(delay, Ev::CoordinatorFsync { life });
                // The worst moment to die: a decision formed, not yet (or
                // only just) durable, nobody told.
                if decides && self.faults_on && self.rng.chance(self.settings.crash_after_decision)
                {
                    let at = self.rng.range(0, delay + 2);
                    self.schedule(
                        at,
                        Ev::Crash {
                            node: Node::Coordinator,
                            life,
                        },
                    );
                }
            }
            Action::WriteDone { request, result } => self.answer(request, |origin| match origin {
                Origin::Write { client, attempt } => {
                    Some((Node::Client(client), Msg::WriteAnswer { attempt, result }))
                }
                Origin::Counter { .. } => None,
            }),
            Action::Joined { request, result } => self.answer(request, |origin| match origin {
                Origin::Counter { counter, call } => Some((
                    Node::Counter(counter),
                    Msg::Reply {
                        call,
                        body: Reply::Joined(result),
                    },
                )),
                Origin::Write { .. } => None,
            }),
            Action::Outcome { request, outcome } => self.answer(request, |origin| match origin {
                Origin::Counter { counter, call } => Some((
                    Node::Counter(counter),
                    Msg::Reply {
                        call,
                        body: Reply::Outcome(outcome),
                    },
                )),
                Origin::Write { .. } => None,
            }),
            Action::Promoted { .. } => {}
            Action::CheckHealth { to } => {
                let epoch = self.coordinator.log.epoch;
                if let Some(i) = counter_index(&to.id.0) {
                    self.coordinator_call(
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
                        Node::Coordinator,
                        Node::Counter(i),
                        Msg::CatchUp { request },
                    );
                }
            }
            Action::Notice(notice) => self.trace(|| format!("coordinator notice: {notice:?}")),
        }
    }

    /// The log write is durable now (unless the process died meanwhile).
    pub(crate) fn coordinator_fsync(&mut self, life: u64) {
        if self.coordinator_life() != Some(life) {
            return;
        }
        let Some(write) = self.coordinator.writing.take() else {
            return;
        };
        let log = &mut self.coordinator.log;
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
        self.coordinator_step(Event::LogWritten);
    }

    pub(crate) fn coordinator_receive(&mut self, from: Node, msg: Msg) {
        match (from, msg) {
            (_, Msg::Reply { call, body }) => {
                let Some(call) = self.coordinator.calls.remove(&call) else {
                    return;
                };
                match (call, body) {
                    (Call::Prepare { txn, counter }, Reply::Vote(vote)) => {
                        self.coordinator_step(Event::Voted { txn, counter, vote })
                    }
                    (Call::Commit { index, counter }, Reply::Commit(answer)) => self
                        .coordinator_step(Event::CommitAnswered {
                            index,
                            counter,
                            answer,
                        }),
                    (Call::Health { counter }, Reply::Health(report)) => {
                        self.coordinator_step(Event::HealthAnswered {
                            counter,
                            report: Ok(report),
                        })
                    }
                    (Call::Count { read }, Reply::Count(answer)) => {
                        self.read_answered(read, answer)
                    }
                    (call, body) => panic!("answer {body:?} to {call:?}"),
                }
            }
            (
                Node::Counter(counter),
                Msg::Register {
                    call,
                    incarnation,
                    applied,
                    holds,
                },
            ) => {
                let request = self.request_id(Origin::Counter { counter, call });
                self.coordinator_step(Event::Register {
                    request,
                    id: counter_id(counter),
                    url: counter_url(counter),
                    incarnation,
                    applied,
                    holds,
                });
            }
            (
                Node::Counter(counter),
                Msg::CaughtUp {
                    call,
                    incarnation,
                    registration,
                    applied,
                },
            ) => {
                let request = self.request_id(Origin::Counter { counter, call });
                self.coordinator_step(Event::CaughtUp {
                    request,
                    id: counter_id(counter),
                    incarnation,
                    registration,
                    applied,
                });
            }
            (Node::Counter(counter), Msg::AskOutcome { call, txn }) => {
                let request = self.request_id(Origin::Counter { counter, call });
                self.coordinator_step(Event::AskOutcome { request, txn });
            }
            (Node::Client(client), Msg::Write { attempt, items }) => {
                let request = self.request_id(Origin::Write { client, attempt });
                self.coordinator_step(Event::Write { request, items });
            }
            (Node::Client(client), Msg::Read { read, tenant }) => {
                let Some(core) = self.coordinator.core.as_ref() else {
                    return;
                };
                let mut view = core.read_view();
                if !view.readable.is_empty() {
                    let start = self.coordinator.read_cursor % view.readable.len();
                    view.readable.rotate_left(start);
                }
                self.coordinator.read_cursor += 1;
                self.trace(|| format!("coordinator read {read} of {tenant}: {view:?}"));
                self.coordinator.reads.insert(
                    read,
                    ReadJob {
                        client,
                        read,
                        tenant,
                        view,
                        next: 0,
                    },
                );
                self.read_next(read);
            }
            (from, msg) => panic!("coordinator got {msg:?} from {from:?}"),
        }
    }

    pub(crate) fn coordinator_timeout(&mut self, call: u64) {
        let Some(call) = self.coordinator.calls.remove(&call) else {
            return;
        };
        match call {
            Call::Prepare { txn, counter } => self.coordinator_step(Event::Voted {
                txn,
                counter,
                vote: Err("timed out".into()),
            }),
            Call::Commit { index, counter } => self.coordinator_step(Event::CommitAnswered {
                index,
                counter,
                answer: CommitAnswer::Failed("timed out".into()),
            }),
            Call::Health { counter } => self.coordinator_step(Event::HealthAnswered {
                counter,
                report: Err("timed out".into()),
            }),
            Call::Count { read } => self.read_next(read),
        }
    }

    /// Asks the next readable counter, or answers the client that none could.
    fn read_next(&mut self, read: u64) {
        let Some(job) = self.coordinator.reads.get_mut(&read) else {
            return;
        };
        let Some(target) = job.view.readable.get(job.next).cloned() else {
            let job = self.coordinator.reads.remove(&read).expect("present");
            self.send(
                Node::Coordinator,
                Node::Client(job.client),
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
            None => self.read_next(read),
        }
    }

    fn read_answered(
        &mut self,
        read: u64,
        answer: Result<(CounterId, std::collections::BTreeSet<String>), String>,
    ) {
        let Some(job) = self.coordinator.reads.get(&read) else {
            return;
        };
        let expected = job.view.readable[job.next - 1].id.clone();
        match answer {
            Ok((counter, ids)) if counter == expected => {
                let job = self.coordinator.reads.remove(&read).expect("present");
                let result = ReadResult {
                    ids,
                    counter,
                    fence: job.view.fence,
                    epoch: job.view.epoch,
                };
                self.send(
                    Node::Coordinator,
                    Node::Client(job.client),
                    Msg::ReadAnswer {
                        read,
                        result: Ok(result),
                    },
                );
            }
            _ => self.read_next(read),
        }
    }
}
