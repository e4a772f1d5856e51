//! A counter process, as the counter crate behaves: the real
//! `tally_common::participant::Participant` decides every prepare, commit,
//! abort, copied range and outcome; its `Persist` records go to the store's
//! unsynced buffer and become durable at the next simulated sync; answers
//! (votes, acks) leave only once every record before them is durable.
//! Around it, the counter's own duties: resolve prepared transactions at
//! start-up, register (and register again when a health check names another
//! epoch, when the coordinator forgets it, or after a long silence), refuse
//! prepares and fenced reads unless registered with that epoch, copy from
//! in-sync peers when told, report `CaughtUp`, and ask about transactions
//! left in doubt. With several coordinators, a counter answers whoever
//! called, and sends its own calls to the coordinator that last checked
//! its health or prepared with the highest epoch it has seen (the leader,
//! as far as it knows); a call that fails or meets one that does not lead
//! goes to the next coordinator.

use crate::disk::{Disk, Op};
use crate::net::{counter_id, counter_index, ExportReply, Msg, Node, Reply};
use crate::world::{Ev, World};
use std::collections::{BTreeMap, BTreeSet};
use tally_common::api::{CommitRequest, JoinPlan, Outcome};
use tally_common::coordinator::{CommitAnswer, Holdings, JoinRefused, Vote};
use tally_common::membership::HealthReport;
use tally_common::participant::{Action, Event, Participant, Record};
pub use tally_common::registration::Registration;
use tally_common::time::Millis;
use tally_common::{CommitIndex, Incarnation, Item, TxnId};

/// The background duties' period.
const MAINTAIN_MS: u64 = 1000;
/// How long a call to the coordinator may take.
const CALL_TIMEOUT_MS: u64 = 1000;
/// How long a copy may go without data before it counts as cut.
const COPY_IDLE_MS: u64 = 2000;
/// Backups kept of a counter's disk.
const MAX_SNAPSHOTS: usize = 8;
/// Longest an export stream takes to arrive, well within `COPY_IDLE_MS`.
const MAX_STREAM_MS: u64 = 1200;
/// How long a fenced read or an export waits for the applied index.
const FENCE_TIMEOUT_MS: u64 = 1000;

/// An answer that leaves once the records before it are durable.
#[derive(Debug, Clone)]
enum Answer {
    Vote {
        to: Node,
        call: u64,
        committed: Vec<CommitIndex>,
    },
    Commit {
        to: Node,
        call: u64,
        known: bool,
    },
    /// An import is durable: the copy goes on. `until` is what the stream
    /// was asked to prove.
    Imported {
        last: Option<CommitIndex>,
        end: bool,
        until: CommitIndex,
    },
}

/// A fenced read or an export waiting for the applied index.
#[derive(Debug, Clone)]
enum Parked {
    Count {
        to: Node,
        call: u64,
        tenant: String,
        fence: CommitIndex,
        deadline: u64,
    },
    Export {
        call: u64,
        peer: usize,
        since: CommitIndex,
        until: CommitIndex,
        deadline: u64,
    },
}

#[derive(Debug, Clone)]
enum Call {
    Register,
    CaughtUp,
    Ask { txn: TxnId, startup: bool },
    Export { peer: usize },
}

/// Timers of a counter.
#[derive(Debug, Clone, Copy)]
pub enum Timer {
    Maintain,
    RegisterRetry,
    StartupRetry,
    CatchUpRetry,
    Parked,
}

/// One pass of copying from one peer's disk (counter/src/catchup.rs).
#[derive(Debug, Clone)]
struct Pass {
    peer: usize,
    incarnation: Incarnation,
    start: CommitIndex,
    next: CommitIndex,
}

#[derive(Debug, Clone)]
struct CatchUp {
    until: CommitIndex,
    peers: Vec<usize>,
    next_peer: usize,
    round_start: CommitIndex,
    pass: Option<Pass>,
    backoff: u64,
}

/// Start-up: every prepared transaction is asked about until each has a
/// definite answer, before the counter registers.
#[derive(Debug, Clone, Default)]
struct Startup {
    outstanding: BTreeSet<TxnId>,
    unresolved: bool,
    backoff: u64,
}

#[derive(Debug)]
pub struct Counter {
    pub up: bool,
    pub life: u64,
    pub disk: Disk,
    buffer: Vec<Op>,
    appended: u64,
    synced: u64,
    sync_scheduled: bool,
    participant: Participant,
    pub registration: Registration,
    waiting: Vec<(u64, Answer)>,
    parked: Vec<Parked>,
    calls: BTreeMap<u64, Call>,
    catchup: Option<CatchUp>,
    registering: bool,
    register_backoff: u64,
    startup: Option<Startup>,
    joined: bool,
    last_contact: u64,
    /// Copies of its earlier disks, for restores.
    pub snapshots: Vec<Disk>,
    /// `(until, release)`: the answers it sends before `until` sit in a
    /// stalled connection that delivers them only from `release` on.
    pub stalled: (u64, u64),
    /// The coordinator its own calls go to, and the highest epoch it has
    /// heard a coordinator's core name.
    coordinator: usize,
    leader_epoch: u64,
}

impl Counter {
    pub fn new(incarnation: Incarnation) -> Self {
        Counter {
            up: false,
            life: 0,
            disk: Disk::new(incarnation),
            buffer: Vec::new(),
            appended: 0,
            synced: 0,
            sync_scheduled: false,
            participant: Participant::default(),
            registration: Registration::default(),
            waiting: Vec::new(),
            parked: Vec::new(),
            calls: BTreeMap::new(),
            catchup: None,
            registering: false,
            register_backoff: 100,
            startup: None,
            joined: false,
            last_contact: 0,
            snapshots: Vec::new(),
            stalled: (0, 0),
            coordinator: 0,
            leader_epoch: 0,
        }
    }

    pub fn applied(&self) -> CommitIndex {
        self.disk.applied.contiguous()
    }

    /// Writes not yet synced (a prepare among them may be voted on soon).
    pub fn has_unsynced(&self) -> bool {
        !self.buffer.is_empty()
    }

    pub fn catching_up(&self) -> bool {
        self.catchup.is_some()
    }
}

fn backoff_next(ms: u64) -> u64 {
    (ms * 2).min(2000)
}

impl World {
    pub(crate) fn counter_life(&self, i: usize) -> Option<u64> {
        let c = &self.counters[i];
        c.up.then_some(c.life)
    }

    /// Starts counter `i` on its disk: rebuilds the participant from what is
    /// durable and settles its prepared transactions before registering.
    pub(crate) fn counter_start(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.counters[i];
        c.up = true;
        c.life += 1;
        let (participant, _ask) = Participant::recover(
            Default::default(),
            c.disk.prepared.keys().copied(),
            c.disk.applied.clone(),
        );
        c.participant = participant;
        c.registration = Registration::default();
        c.last_contact = now;
        c.joined = false;
        c.register_backoff = 100;
        c.coordinator = 0;
        c.leader_epoch = 0;
        let life = c.life;
        self.trace(|| {
            let c = &self.counters[i];
            format!(
                "c{i} starts: incarnation {}, applied {}, {} prepared",
                c.disk.incarnation,
                c.applied(),
                c.disk.prepared.len()
            )
        });
        self.schedule(
            MAINTAIN_MS,
            Ev::CounterTimer {
                i,
                life,
                timer: Timer::Maintain,
            },
        );
        self.counters[i].startup = Some(Startup {
            backoff: 100,
            ..Startup::default()
        });
        self.startup_resolve(i);
    }

    /// The process dies: the unsynced buffer and every volatile thing go.
    pub(crate) fn counter_crash(&mut self, i: usize) {
        let c = &mut self.counters[i];
        if !c.up {
            return;
        }
        c.up = false;
        c.buffer.clear();
        c.appended = 0;
        c.synced = 0;
        c.sync_scheduled = false;
        c.waiting.clear();
        c.parked.clear();
        c.calls.clear();
        c.catchup = None;
        c.registering = false;
        c.startup = None;
        self.trace(|| format!("c{i} crashes"));
    }

    fn counter_call(
        &mut self,
        i: usize,
        to: Node,
        call: Call,
        msg: impl FnOnce(u64) -> Msg,
        ms: u64,
    ) {
        let id = self.new_id();
        self.counters[i].calls.insert(id, call);
        self.send(Node::Counter(i), to, msg(id));
        let life = self.counters[i].life;
        self.schedule(
            ms,
            Ev::Timeout {
                node: Node::Counter(i),
                life,
                call: id,
            },
        );
    }

    /// Where the counter's own calls go.
    fn coordinator_of(&self, i: usize) -> Node {
        Node::Coordinator(self.counters[i].coordinator)
    }

    /// A coordinator's core called with `epoch`: the newest leader heard
    /// of gets the counter's calls.
    fn heard_from(&mut self, i: usize, from: Node, epoch: u64) {
        let c = &mut self.counters[i];
        if let Node::Coordinator(k) = from {
            if epoch >= c.leader_epoch {
                c.leader_epoch = epoch;
                c.coordinator = k;
            }
        }
    }

    /// A call to the coordinator failed or met one that does not lead: the
    /// next call goes to the next coordinator.
    fn try_next_coordinator(&mut self, i: usize) {
        let n = self.coordinators.len();
        let c = &mut self.counters[i];
        c.coordinator = (c.coordinator + 1) % n;
    }

    fn counter_timer_in(&mut self, i: usize, ms: u64, timer: Timer) {
        let life = self.counters[i].life;
        self.schedule(ms, Ev::CounterTimer { i, life, timer });
    }

    fn append(&mut self, i: usize, op: Op) {
        let c = &mut self.counters[i];
        c.buffer.push(op);
        c.appended += 1;
        if !c.sync_scheduled {
            c.sync_scheduled = true;
            let life = c.life;
            let delay = self.rng.range(1, 6);
            self.schedule(delay, Ev::CounterSync { i, life });
        }
    }

    /// Carries out the participant's actions; answers wait for durability.
    /// `items` are the prepare's payload, `answer` what a yes vote or an
    /// acknowledgement sends.
    fn carry(
        &mut self,
        i: usize,
        actions: Vec<Action>,
        items: Option<&Vec<Item>>,
        mut answer: impl FnMut(Action) -> Option<Answer>,
    ) {
        for action in actions {
            match action {
                Action::Persist(record) => {
                    let op = match record {
                        Record::Prepared { txn } => Op::Prepared {
                            txn,
                            items: items.cloned().unwrap_or_default(),
                        },
                        Record::Applied { txn, index } => Op::Applied { txn, index },
                        Record::Forgotten { txn } => Op::Forgotten { txn },
                        Record::AppliedRange { since, through } => {
                            Op::AppliedRange { since, through }
                        }
                    };
                    self.append(i, op);
                }
                Action::AskOutcome { txn } => self.ask_outcome(i, txn, false),
                other => {
                    if let Some(a) = answer(other) {
                        self.answer_when_durable(i, a);
                    }
                }
            }
        }
    }

    fn answer_when_durable(&mut self, i: usize, answer: Answer) {
        let c = &mut self.counters[i];
        if c.appended <= c.synced {
            self.send_answer(i, answer);
        } else {
            let needed = c.appended;
            c.waiting.push((needed, answer));
        }
    }

    fn send_answer(&mut self, i: usize, answer: Answer) {
        let c = &self.counters[i];
        let (incarnation, applied) = (c.disk.incarnation, c.applied());
        match answer {
            Answer::Vote {
                to,
                call,
                committed,
            } => {
                let body = Reply::Vote(Ok(Vote {
                    incarnation,
                    applied,
                    committed,
                }));
                self.send(Node::Counter(i), to, Msg::Reply { call, body });
            }
            Answer::Commit { to, call, known } => {
                let body = Reply::Commit(if known {
                    CommitAnswer::Applied {
                        applied,
                        incarnation,
                    }
                } else {
                    CommitAnswer::NotPrepared
                });
                self.send(Node::Counter(i), to, Msg::Reply { call, body });
            }
            Answer::Imported { last, end, until } => self.imported(i, last, end, until),
        }
    }

    /// The buffered writes are durable now.
    pub(crate) fn counter_sync(&mut self, i: usize, life: u64) {
        if self.counter_life(i) != Some(life) {
            return;
        }
        let c = &mut self.counters[i];
        c.sync_scheduled = false;
        let ops = std::mem::take(&mut c.buffer);
        let mut failures = Vec::new();
        for op in ops {
            if let Err(e) = c.disk.apply(op) {
                failures.push(e);
            }
        }
        c.synced = c.appended;
        let synced = c.synced;
        // Now and then a backup copies the disk as it is now: a later
        // fault may bring it back in place of the newer one.
        if self.faults_on && self.rng.chance(0.05) {
            let c = &mut self.counters[i];
            c.snapshots.push(c.disk.clone());
            if c.snapshots.len() > MAX_SNAPSHOTS {
                c.snapshots.remove(0);
            }
        }
        let c = &mut self.counters[i];
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut c.waiting)
            .into_iter()
            .partition(|(needed, _)| *needed <= synced);
        c.waiting = waiting;
        for e in failures {
            self.history.violation("counter store", format!("c{i} {e}"));
        }
        self.trace(|| format!("c{i} synced: applied {}", self.counters[i].applied()));
        for (_, answer) in ready {
            self.send_answer(i, answer);
        }
        self.check_parked(i);
    }

    pub(crate) fn counter_receive(&mut self, i: usize, from: Node, msg: Msg) {
        if !matches!(msg, Msg::Reply { .. }) {
            self.counters[i].last_contact = self.now;
        }
        self.trace(|| format!("c{i} <- {msg:?}", msg = short(&msg)));
        match msg {
            Msg::Prepare {
                call,
                txn,
                items,
                commits,
            } => {
                self.heard_from(i, from, txn.epoch());
                self.on_prepare(i, from, call, txn, items, commits)
            }
            Msg::Commit { call, commit } => {
                let actions = self.counters[i].participant.step(Event::Commit {
                    txn: commit.txn,
                    index: commit.index,
                });
                self.carry(i, actions, None, |a| match a {
                    Action::Ack { .. } => Some(Answer::Commit {
                        to: from,
                        call,
                        known: true,
                    }),
                    Action::UnknownTxn { .. } => Some(Answer::Commit {
                        to: from,
                        call,
                        known: false,
                    }),
                    _ => None,
                });
            }
            Msg::Abort { txn } => {
                let actions = self.counters[i].participant.step(Event::Abort { txn });
                self.carry(i, actions, None, |_| None);
            }
            Msg::Status { call, epoch } => {
                self.heard_from(i, from, epoch);
                let c = &self.counters[i];
                let report = HealthReport {
                    incarnation: c.disk.incarnation,
                    applied: c.applied(),
                    catching_up: c.catching_up(),
                    registered_here: c.registration.epoch() == Some(epoch),
                    copy: None,
                };
                if c.registration.epoch() != Some(epoch) {
                    self.register_again(i);
                }
                let body = Reply::Health(report);
                self.send(Node::Counter(i), from, Msg::Reply { call, body });
            }
            Msg::Count {
                call,
                tenant,
                fence,
                epoch,
            } => {
                if let Err(e) = self.counters[i].registration.check_fenced_read(epoch) {
                    let body = Reply::Count(Err(e.to_string()));
                    self.send(Node::Counter(i), from, Msg::Reply { call, body });
                    return;
                }
                let deadline = self.now + FENCE_TIMEOUT_MS;
                self.counters[i].parked.push(Parked::Count {
                    to: from,
                    call,
                    tenant,
                    fence,
                    deadline,
                });
                self.counter_timer_in(i, FENCE_TIMEOUT_MS, Timer::Parked);
                self.check_parked(i);
            }
            Msg::CatchUp { request } => self.start_catchup(
                i,
                JoinPlan {
                    in_sync: false,
                    until: request.until,
                    peers: request.peers,
                    epoch: 0,
                    registration: request.registration,
                },
            ),
            Msg::Export { call, since, until } => {
                let Node::Counter(peer) = from else { return };
                let deadline = self.now + FENCE_TIMEOUT_MS;
                self.counters[i].parked.push(Parked::Export {
                    call,
                    peer,
                    since,
                    until,
                    deadline,
                });
                self.counter_timer_in(i, FENCE_TIMEOUT_MS, Timer::Parked);
                self.check_parked(i);
            }
            Msg::Reply { call, body } => {
                let Some(call) = self.counters[i].calls.remove(&call) else {
                    return;
                };
                match (call, body) {
                    (Call::Register, Reply::Joined(result)) => self.registered(i, result.ok()),
                    (Call::CaughtUp, Reply::Joined(result)) => {
                        self.caught_up_answered(i, Some(result))
                    }
                    (Call::Ask { txn, startup }, Reply::Outcome(outcome)) => {
                        self.outcome(i, txn, startup, Some(outcome))
                    }
                    (Call::Export { peer }, Reply::Export(result)) => {
                        self.export_answered(i, peer, result.ok())
                    }
                    (call, Reply::NotLeader) => self.call_failed(i, call),
                    (call, body) => panic!("c{i}: answer {body:?} to {call:?}"),
                }
            }
            other => panic!("c{i} got {other:?}"),
        }
    }

    pub(crate) fn counter_timeout(&mut self, i: usize, call: u64) {
        let Some(call) = self.counters[i].calls.remove(&call) else {
            return;
        };
        self.call_failed(i, call);
    }

    /// A call got no answer, or "not leader".
    fn call_failed(&mut self, i: usize, call: Call) {
        if !matches!(call, Call::Export { .. }) && self.coordinators.len() > 1 {
            self.try_next_coordinator(i);
        }
        match call {
            Call::Register => self.registered(i, None),
            Call::CaughtUp => self.caught_up_answered(i, None),
            Call::Ask { txn, startup } => self.outcome(i, txn, startup, None),
            Call::Export { peer } => self.export_answered(i, peer, None),
        }
    }

    pub(crate) fn counter_timer(&mut self, i: usize, timer: Timer) {
        match timer {
            Timer::Maintain => {
                self.counter_timer_in(i, MAINTAIN_MS, Timer::Maintain);
                self.maintain(i);
            }
            Timer::RegisterRetry => self.send_register(i),
            Timer::StartupRetry => self.startup_resolve(i),
            Timer::CatchUpRetry => self.catchup_round(i),
            Timer::Parked => self.check_parked(i),
        }
    }

    fn on_prepare(
        &mut self,
        i: usize,
        from: Node,
        call: u64,
        txn: TxnId,
        items: Vec<Item>,
        commits: Vec<CommitRequest>,
    ) {
        if let Err(e) = self.counters[i].registration.check_vote(txn.epoch()) {
            let body = Reply::Vote(Err(e.to_string()));
            self.send(Node::Counter(i), from, Msg::Reply { call, body });
            return;
        }
        let mut committed = Vec::new();
        for commit in commits {
            let actions = self.counters[i].participant.step(Event::Commit {
                txn: commit.txn,
                index: commit.index,
            });
            self.carry(i, actions, None, |a| {
                if matches!(a, Action::Ack { .. }) {
                    committed.push(commit.index);
                }
                None
            });
        }
        let actions = self.counters[i].participant.step(Event::Prepare {
            txn,
            now: Millis(self.now),
        });
        let mut voted = false;
        self.carry(i, actions, Some(&items), |a| match a {
            Action::VoteYes { .. } => {
                voted = true;
                Some(Answer::Vote {
                    to: from,
                    call,
                    committed: committed.clone(),
                })
            }
            _ => None,
        });
        // The moment after a yes vote: a crash here tests that the vote
        // was durable.
        if voted && self.faults_on && self.rng.chance(self.settings.crash_after_vote) {
            let life = self.counters[i].life;
            let at = self.rng.range(0, 4);
            self.schedule(
                at,
                Ev::Crash {
                    node: Node::Counter(i),
                    life,
                },
            );
        }
    }

    /// Answers the parked reads and exports that can be answered now, and
    /// refuses those whose time is up.
    fn check_parked(&mut self, i: usize) {
        let now = self.now;
        let parked = std::mem::take(&mut self.counters[i].parked);
        let applied = self.counters[i].applied();
        let mut kept = Vec::new();
        for p in parked {
            match p {
                Parked::Count {
                    to,
                    call,
                    ref tenant,
                    fence,
                    deadline,
                } => {
                    let body = if applied >= fence {
                        Reply::Count(Ok((
                            counter_id(i),
                            self.counters[i].disk.tenant_ids(tenant),
                        )))
                    } else if now >= deadline {
                        Reply::Count(Err(format!("fence {fence} not reached ({applied})")))
                    } else {
                        kept.push(p);
                        continue;
                    };
                    self.send(Node::Counter(i), to, Msg::Reply { call, body });
                }
                Parked::Export {
                    call,
                    peer,
                    since,
                    until,
                    deadline,
                } => {
                    let mut stream_ms = 0;
                    let body = if applied >= until {
                        let disk = &self.counters[i].disk;
                        let mut entries = disk.export(since);
                        let mut end = true;
                        if self.faults_on && self.rng.chance(self.settings.cut_stream) {
                            let keep = self.rng.pick(entries.len() + 1);
                            entries.truncate(keep);
                            end = false;
                        }
                        stream_ms = (self.rng.range(0, self.settings.copy_setup_ms)
                            + entries.len() as u64 * self.settings.copy_ms_per_entry)
                            .min(MAX_STREAM_MS);
                        Reply::Export(Ok(ExportReply {
                            incarnation: disk.incarnation,
                            entries,
                            end,
                        }))
                    } else if now >= deadline {
                        Reply::Export(Err(format!("{until} not applied here")))
                    } else {
                        kept.push(p);
                        continue;
                    };
                    self.send_after(
                        Node::Counter(i),
                        Node::Counter(peer),
                        Msg::Reply { call, body },
                        stream_ms,
                    );
                }
            }
        }
        self.counters[i].parked.extend(kept);
    }

    // ---- start-up, registration, in-doubt ----

    fn startup_resolve(&mut self, i: usize) {
        let txns: Vec<TxnId> = self.counters[i].participant.prepared().collect();
        let Some(startup) = self.counters[i].startup.as_mut() else {
            return;
        };
        if txns.is_empty() {
            self.counters[i].startup = None;
            self.register(i);
            return;
        }
        startup.unresolved = false;
        startup.outstanding = txns.iter().copied().collect();
        for txn in txns {
            self.ask_outcome(i, txn, true);
        }
    }

    fn ask_outcome(&mut self, i: usize, txn: TxnId, startup: bool) {
        let asking = self.counters[i]
            .calls
            .values()
            .any(|c| matches!(c, Call::Ask { txn: t, .. } if *t == txn));
        if asking && !startup {
            return;
        }
        let to = self.coordinator_of(i);
        self.counter_call(
            i,
            to,
            Call::Ask { txn, startup },
            |call| Msg::AskOutcome { call, txn },
            CALL_TIMEOUT_MS,
        );
    }

    fn outcome(&mut self, i: usize, txn: TxnId, startup: bool, outcome: Option<Outcome>) {
        if let Some(outcome) = outcome {
            let actions = self.counters[i]
                .participant
                .step(Event::Outcome { txn, outcome });
            self.carry(i, actions, None, |_| None);
        }
        if !startup {
            return;
        }
        let Some(s) = self.counters[i].startup.as_mut() else {
            return;
        };
        s.outstanding.remove(&txn);
        if !matches!(outcome, Some(Outcome::Committed { .. } | Outcome::Aborted)) {
            s.unresolved = true;
        }
        if !s.outstanding.is_empty() {
            return;
        }
        if s.unresolved {
            let wait = s.backoff;
            s.backoff = backoff_next(s.backoff);
            self.counter_timer_in(i, wait, Timer::StartupRetry);
        } else {
            self.counters[i].startup = None;
            self.register(i);
        }
    }

    fn register(&mut self, i: usize) {
        if self.counters[i].registering {
            return;
        }
        self.counters[i].registering = true;
        self.send_register(i);
    }

    fn register_again(&mut self, i: usize) {
        if self.counters[i].joined {
            self.register(i);
        }
    }

    fn send_register(&mut self, i: usize) {
        let c = &self.counters[i];
        let (incarnation, applied) = (c.disk.incarnation, c.applied());
        let holds = Holdings {
            prepared: c.participant.prepared().collect(),
            applied_above: c.participant.applied().above().collect(),
        };
        let to = self.coordinator_of(i);
        self.counter_call(
            i,
            to,
            Call::Register,
            |call| Msg::Register {
                counter: i,
                call,
                incarnation,
                applied,
                holds,
            },
            CALL_TIMEOUT_MS,
        );
    }

    fn registered(&mut self, i: usize, plan: Option<JoinPlan>) {
        let c = &mut self.counters[i];
        match plan {
            Some(plan) => {
                c.registering = false;
                c.joined = true;
                c.register_backoff = 100;
                c.registration.registered(plan.epoch, plan.in_sync);
                c.registration.named(plan.registration);
                self.trace(|| format!("c{i} registered: {plan:?}"));
                self.start_catchup(i, plan);
            }
            None => {
                let wait = c.register_backoff;
                c.register_backoff = backoff_next(wait);
                self.counter_timer_in(i, wait, Timer::RegisterRetry);
            }
        }
    }

    /// Background duties: ask about old prepared transactions, and register
    /// again after a long silence from the coordinator.
    fn maintain(&mut self, i: usize) {
        if !self.counters[i].joined {
            return;
        }
        let now = self.now;
        let actions = self.counters[i]
            .participant
            .step(Event::Tick { now: Millis(now) });
        self.carry(i, actions, None, |_| None);
        if now.saturating_sub(self.counters[i].last_contact) >= self.settings.rejoin_after_ms {
            self.counters[i].last_contact = now;
            self.register(i);
        }
    }

    // ---- catch-up ----

    fn start_catchup(&mut self, i: usize, plan: JoinPlan) {
        if plan.in_sync || self.counters[i].catchup.is_some() {
            return;
        }
        self.counters[i].catchup = Some(CatchUp {
            until: plan.until,
            peers: plan.peers.iter().filter_map(|p| counter_index(p)).collect(),
            next_peer: 0,
            round_start: CommitIndex::ZERO,
            pass: None,
            backoff: 100,
        });
        self.catchup_round(i);
    }

    fn catchup_round(&mut self, i: usize) {
        let applied = self.counters[i].applied();
        let Some(cu) = self.counters[i].catchup.as_mut() else {
            return;
        };
        cu.round_start = applied;
        cu.next_peer = 0;
        self.catchup_next(i);
    }

    /// Copies from the next peer, or reports once every peer was tried or
    /// everything up to `until` is held.
    fn catchup_next(&mut self, i: usize) {
        let applied = self.counters[i].applied();
        let Some(cu) = self.counters[i].catchup.as_mut() else {
            return;
        };
        if applied >= cu.until || cu.next_peer >= cu.peers.len() {
            let incarnation = self.counters[i].disk.incarnation;
            let registration = self.counters[i].registration.number();
            let to = self.coordinator_of(i);
            self.counter_call(
                i,
                to,
                Call::CaughtUp,
                |call| Msg::CaughtUp {
                    counter: i,
                    call,
                    incarnation,
                    registration,
                    applied,
                },
                CALL_TIMEOUT_MS,
            );
            return;
        }
        let peer = cu.peers[cu.next_peer];
        cu.next_peer += 1;
        let since = cu
            .pass
            .as_ref()
            .filter(|p| p.peer == peer)
            .map_or(applied, |p| p.next);
        let until = cu.until;
        self.export_call(i, peer, since, until);
    }

    fn export_call(&mut self, i: usize, peer: usize, since: CommitIndex, until: CommitIndex) {
        self.counter_call(
            i,
            Node::Counter(peer),
            Call::Export { peer },
            |call| Msg::Export { call, since, until },
            COPY_IDLE_MS,
        );
    }

    fn export_answered(&mut self, i: usize, peer: usize, reply: Option<ExportReply>) {
        let applied = self.counters[i].applied();
        let Some(cu) = self.counters[i].catchup.as_mut() else {
            return;
        };
        let Some(reply) = reply else {
            self.catchup_next(i);
            return;
        };
        let resuming = cu.pass.as_ref().filter(|p| p.peer == peer).cloned();
        match resuming {
            Some(p) if p.incarnation == reply.incarnation => {}
            Some(_) => {
                // Another disk at that address: what was imported proves
                // nothing about its log; a new pass from the applied index.
                cu.pass = Some(Pass {
                    peer,
                    incarnation: reply.incarnation,
                    start: applied,
                    next: applied,
                });
                let until = cu.until;
                self.export_call(i, peer, applied, until);
                return;
            }
            None => {
                cu.pass = Some(Pass {
                    peer,
                    incarnation: reply.incarnation,
                    start: applied,
                    next: applied,
                });
            }
        }
        let (start, until) = (cu.pass.as_ref().expect("set").start, cu.until);
        if reply.entries.is_empty() && !reply.end {
            self.catchup_next(i);
            return;
        }
        let last = reply.entries.last().map(|e| e.index);
        self.append(
            i,
            Op::Import {
                entries: reply.entries,
            },
        );
        if reply.end {
            let actions = self.counters[i].participant.step(Event::Imported {
                range: Some((start, until)),
            });
            self.carry(i, actions, None, |_| None);
        }
        self.answer_when_durable(
            i,
            Answer::Imported {
                last,
                end: reply.end,
                until,
            },
        );
    }

    /// An import is durable: the pass moves on, or ends. A cut pass
    /// resumes from the last entry imported, but never above what the cut
    /// stream was asked to prove (counter/src/catch_up.rs): the peer held
    /// every commit up to that `until` when it began streaming, so every
    /// entry of its log below it was in the stream; above it, the peer may
    /// have applied a commit after its stream went past that index (it
    /// applies out of order), and resuming past the gap would prove a
    /// commit nothing carried.
    fn imported(&mut self, i: usize, last: Option<CommitIndex>, end: bool, until: CommitIndex) {
        let Some(cu) = self.counters[i].catchup.as_mut() else {
            return;
        };
        if let (Some(p), Some(last)) = (cu.pass.as_mut(), last) {
            p.next = p.next.max(last).min(until.max(p.start));
        }
        if end {
            cu.pass = None;
        }
        self.catchup_next(i);
    }

    fn caught_up_answered(&mut self, i: usize, answer: Option<Result<JoinPlan, JoinRefused>>) {
        let applied = self.counters[i].applied();
        let Some(cu) = self.counters[i].catchup.as_mut() else {
            return;
        };
        match answer {
            Some(Ok(plan)) if plan.in_sync => {
                self.counters[i].registration.registered(plan.epoch, true);
                self.counters[i].catchup = None;
                self.trace(|| format!("c{i} caught up and in sync"));
            }
            Some(Ok(plan)) => {
                cu.until = plan.until;
                cu.peers = plan.peers.iter().filter_map(|p| counter_index(p)).collect();
                if applied <= cu.round_start {
                    let wait = cu.backoff;
                    cu.backoff = backoff_next(wait);
                    self.counter_timer_in(i, wait, Timer::CatchUpRetry);
                } else {
                    self.catchup_round(i);
                }
            }
            Some(Err(JoinRefused::NotRegistered)) => {
                self.counters[i].catchup = None;
                self.register_again(i);
            }
            _ => {
                let wait = cu.backoff;
                cu.backoff = backoff_next(wait);
                self.counter_timer_in(i, wait, Timer::CatchUpRetry);
            }
        }
    }
}

/// A message without its payload, for the trace.
fn short(msg: &Msg) -> String {
    match msg {
        Msg::Prepare {
            txn,
            items,
            commits,
            ..
        } => format!("Prepare {txn} ({} items, commits {commits:?})", items.len()),
        Msg::Reply {
            body: Reply::Export(Ok(r)),
            ..
        } => format!("Export answer: {} entries, end {}", r.entries.len(), r.end),
        other => format!("{other:?}"),
    }
}
