//! The driver: one task owns the protocol core (`tally_common::coordinator`)
//! and is the only way into it. HTTP handlers and the calls it starts hand
//! it events; it steps the core and carries out the actions: calls to
//! counters, decision-log writes on a blocking thread, answers to waiting
//! requests. Nothing here decides anything; the simulator (sim/) drives the
//! same core the same way, so what it proves is what runs here.
//!
//! One task and no locks: the core's state is touched by nothing else.
//! Reads do not pass through the task; it publishes the read view (fence
//! and readable counters) after every step that changes it.
//!
//! With peers (`--peers`), what the task steps is a replica
//! (`replication::Replica`): the Raft node, with the core on the leader
//! only. Its outputs add Raft messages to send and Raft writes to persist,
//! and reads first confirm the leadership (a read index) before they take
//! the view. Both kinds are one [`Brain`] to the loop below.

use crate::client::{CallError, CounterClient};
use crate::config::{ClusterPeers, Settings};
use crate::error::Stopped;
use crate::log::DecisionLog;
use crate::notices;
use crate::replication::disk::RaftDisk;
use crate::replication::transport::Outbox;
use crate::replication::{Leadership, Replica};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_common::api::{CaughtUpRequest, JoinPlan, Outcome, PrepareRequest, RegisterRequest};
use tally_common::coordinator::{
    Action, CommitAnswer, CoordinatorCore, Event, Holdings, JoinRefused, Millis, ReadView,
    RequestId, Vote, WriteRefused,
};
use tally_common::membership::HealthReport;
use tally_common::{CommitIndex, CounterId, Item, TxnId};
use tally_consensus::{Message, Output, PersistWrite};
use tokio::sync::{mpsc, oneshot, watch};

/// Most inputs stepped before the actions are carried out: under load many
/// votes and writes arrive together, and carrying out once per batch lets
/// one prepare carry every write that arrived meanwhile.
const INPUTS_PER_TURN: usize = 512;

type Inspect = Box<dyn FnOnce(&CoordinatorCore, Millis) + Send>;

/// Where an answer goes: `Err` when this coordinator does not lead, or
/// stopped leading with the request in hand.
type Reply<T> = oneshot::Sender<Result<T, Stopped>>;

enum Input {
    Write {
        items: Vec<Item>,
        reply: Reply<Result<(), WriteRefused>>,
    },
    Register {
        request: RegisterRequest,
        reply: Reply<Result<JoinPlan, JoinRefused>>,
    },
    CaughtUp {
        request: CaughtUpRequest,
        reply: Reply<Result<JoinPlan, JoinRefused>>,
    },
    AskOutcome {
        txn: TxnId,
        reply: Reply<Outcome>,
    },
    Promote {
        id: CounterId,
        reply: Reply<Result<CommitIndex, String>>,
    },
    /// A fenced read asks for the view to read at.
    ReadView {
        reply: Reply<ReadView>,
    },
    /// An answer from a counter or the log.
    Event(Event),
    /// Raft messages from a peer coordinator.
    Raft(Vec<Message>),
    /// The Raft write with this number is durable.
    Persisted(u64),
    /// A batch to this peer was not delivered.
    Unreachable(u64),
    /// What a peer holds, asked while this coordinator starts on an empty
    /// disk.
    PeerLog {
        peer: u64,
        log: tally_consensus::PeerLog,
    },
    Inspect(Inspect),
    Stop,
}

/// What the driver steps: a single coordinator's core and its decision
/// log, or a replica of several coordinators and its Raft log.
pub enum Brain {
    Single {
        core: Box<CoordinatorCore>,
        log: DecisionLog,
    },
    Replicated {
        replica: Box<Replica>,
        outputs: Vec<Output>,
        disk: RaftDisk,
    },
}

/// The state the loop steps; the logs have gone to their writers.
enum Stepper {
    Single(Box<CoordinatorCore>),
    Replicated(Box<Replica>),
}

impl Stepper {
    fn step(&mut self, now: Millis, input: tally_consensus::Input) -> Vec<Output> {
        use tally_consensus::Input as I;
        match self {
            Stepper::Replicated(replica) => replica.step(now, input),
            Stepper::Single(core) => match input {
                I::Core(event) => core
                    .step(now, event)
                    .into_iter()
                    .map(Output::Core)
                    .collect(),
                I::Tick => core
                    .step(now, Event::Tick)
                    .into_iter()
                    .map(Output::Core)
                    .collect(),
                // One coordinator is the only one: its view needs no
                // confirmation.
                I::ReadIndex(request) => vec![Output::ReadReady {
                    request,
                    view: core.read_view(),
                }],
                I::Message(_) | I::Persisted(_) | I::Unreachable(_) => Vec::new(),
            },
        }
    }

    fn core(&self) -> Option<&CoordinatorCore> {
        match self {
            Stepper::Single(core) => Some(core),
            Stepper::Replicated(replica) => replica.core(),
        }
    }

    fn next_wakeup(&self, now: Millis) -> Millis {
        match self {
            Stepper::Single(core) => core.next_wakeup(),
            Stepper::Replicated(replica) => replica.next_wakeup(now),
        }
    }

    fn leadership(&self, peers: &ClusterPeers) -> Leadership {
        match self {
            Stepper::Single(core) => Leadership::single(peers, core.fence()),
            Stepper::Replicated(replica) => replica.leadership(),
        }
    }
}

/// The monotonic clock the core's [`Millis`] count on.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> Millis {
        core_time(self.0.elapsed())
    }

    fn instant(&self, at: Millis) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_millis(at.0))
    }
}

/// The core's time for `elapsed`, rounded up, so a deadline `now + d`
/// lies at least `d` ahead. Rounded down, a commit's 1 ms linger lasted
/// anywhere from 0 to 1 ms, mostly too little for the next prepare to carry
/// it: every commit went out alone, and single-item writes ran at 12.1k/s
/// instead of 18.2k/s (docs/benchmarks.md).
fn core_time(elapsed: Duration) -> Millis {
    Millis(elapsed.as_micros().div_ceil(1000) as u64)
}

/// Handle for HTTP handlers; cheap to clone.
#[derive(Clone)]
pub struct Driver {
    inputs: mpsc::UnboundedSender<Input>,
    view: watch::Receiver<ReadView>,
    leadership: watch::Receiver<Leadership>,
}

/// What the driver needs besides its brain.
pub struct Start {
    pub counters: CounterClient,
    pub settings: Settings,
    /// Every coordinator, this one's place among them.
    pub peers: ClusterPeers,
    pub token: Option<String>,
}

impl Driver {
    /// Starts the task that steps `brain`; returns the handle and the task.
    pub fn start(brain: Brain, start: Start) -> (Self, tokio::task::JoinHandle<()>) {
        let (inputs, rx) = mpsc::unbounded_channel();
        let (stepper, log, raft, first) = match brain {
            Brain::Single { core, log } => {
                (Stepper::Single(core), Some(Arc::new(log)), None, vec![])
            }
            Brain::Replicated {
                replica,
                outputs,
                disk,
            } => {
                let unreachable = {
                    let inputs = inputs.clone();
                    move |peer| {
                        let _ = inputs.send(Input::Unreachable(peer));
                    }
                };
                let outbox = Outbox::start(
                    &replica.peers.peers,
                    replica.peers.raft_id(),
                    start.token.clone(),
                    unreachable,
                );
                let raft = RaftIo {
                    outbox,
                    persist: start_persisting(disk, inputs.clone()),
                    peers: replica.peers.clone(),
                    asked: None,
                    http: reqwest::Client::new(),
                    token: start.token.clone(),
                };
                (Stepper::Replicated(replica), None, Some(raft), outputs)
            }
        };
        let initial = stepper.core().map(|c| c.read_view()).unwrap_or(ReadView {
            fence: CommitIndex(0),
            readable: Vec::new(),
            epoch: 0,
        });
        let (view_tx, view) = watch::channel(initial);
        let (lead_tx, leadership) = watch::channel(stepper.leadership(&start.peers));
        let io = Io {
            log,
            raft,
            counters: start.counters,
            settings: start.settings,
            inputs: inputs.clone(),
            epoch: stepper.core().map_or(0, |c| c.config().epoch),
            peers: start.peers,
        };
        let task = tokio::spawn(run(stepper, first, rx, io, view_tx, lead_tx));
        (
            Driver {
                inputs,
                view,
                leadership,
            },
            task,
        )
    }

    /// Adds `items` to the next transaction and waits for its outcome.
    pub async fn write(&self, items: Vec<Item>) -> Result<Result<(), WriteRefused>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Write { items, reply })?;
        answer(rx).await
    }

    pub async fn register(
        &self,
        request: RegisterRequest,
    ) -> Result<Result<JoinPlan, JoinRefused>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Register { request, reply })?;
        answer(rx).await
    }

    pub async fn caught_up(
        &self,
        request: CaughtUpRequest,
    ) -> Result<Result<JoinPlan, JoinRefused>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::CaughtUp { request, reply })?;
        answer(rx).await
    }

    pub async fn outcome(&self, txn: TxnId) -> Result<Outcome, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::AskOutcome { txn, reply })?;
        answer(rx).await
    }

    pub async fn promote(&self, id: CounterId) -> Result<Result<CommitIndex, String>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Promote { id, reply })?;
        answer(rx).await
    }

    /// Runs `f` on the core's state (for views: `/cluster`, `/health`,
    /// metrics) and returns what it computed; `NotLeader` on a coordinator
    /// without a core (a follower).
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&CoordinatorCore, Millis) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Inspect(Box::new(move |core, now| {
            let _ = reply.send(f(core, now));
        })))?;
        rx.await.map_err(|_| {
            if self.inputs.is_closed() {
                Stopped::Stopping
            } else {
                Stopped::NotLeader
            }
        })
    }

    /// The view a fenced read starting now must read at: the fence and the
    /// counters that may answer. With peers, it comes only after a majority
    /// confirmed that this coordinator still leads.
    pub async fn read_view(&self) -> Result<ReadView, Stopped> {
        if self.leadership.borrow().term == 0 {
            // One coordinator: the published view is current.
            return Ok(self.view.borrow().clone());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Input::ReadView { reply })?;
        answer(rx).await
    }

    /// Changes whenever the read view does (a new durable decision, say).
    pub fn watch_view(&self) -> watch::Receiver<ReadView> {
        self.view.clone()
    }

    /// Who leads, as of the driver's last turn.
    pub fn leadership(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    /// Resolves once this coordinator no longer takes `leader` for the
    /// leader (an election began, or another won one).
    pub async fn replaced(&self, leader: &str) {
        let mut changes = self.leadership.clone();
        // An error means the driver stopped: nothing will lead from here.
        let _ = changes
            .wait_for(|now| now.leader.as_deref() != Some(leader))
            .await;
    }

    /// Raft messages from a peer.
    pub fn raft(&self, messages: Vec<Message>) -> Result<(), Stopped> {
        self.send(Input::Raft(messages))
    }

    /// Ends the task; answers still waiting are dropped (their requests
    /// answer 503).
    pub fn stop(&self) {
        let _ = self.inputs.send(Input::Stop);
    }

    fn send(&self, input: Input) -> Result<(), Stopped> {
        self.inputs.send(input).map_err(|_| Stopped::Stopping)
    }
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, Stopped>>) -> Result<T, Stopped> {
    rx.await.map_err(|_| Stopped::Stopping)?
}

/// Writes the Raft log on a thread of its own, in order: every write
/// waiting is folded into one transaction (one fsync), and each is then
/// reported persisted. A failed write exits the process: the node has
/// acknowledged nothing it did not persist, and a restart recovers from
/// what is on disk.
fn start_persisting(
    disk: RaftDisk,
    inputs: mpsc::UnboundedSender<Input>,
) -> std::sync::mpsc::Sender<PersistWrite> {
    let (tx, rx) = std::sync::mpsc::channel::<PersistWrite>();
    std::thread::Builder::new()
        .name("raft-log".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut writes = vec![first];
                writes.extend(rx.try_iter());
                let writing = Instant::now();
                if let Err(e) = disk.write(&writes) {
                    tracing::error!(error = %e, "cannot write the raft log; exiting");
                    std::process::exit(1);
                }
                metrics::histogram!("tally_raft_log_write_seconds")
                    .record(writing.elapsed().as_secs_f64());
                for w in writes {
                    if inputs.send(Input::Persisted(w.number)).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("a thread starts");
    tx
}

/// Requests waiting for the core's answer, by the id the driver gave them.
#[derive(Default)]
struct Waiting {
    next: u64,
    writes: HashMap<RequestId, Reply<Result<(), WriteRefused>>>,
    joins: HashMap<RequestId, Reply<Result<JoinPlan, JoinRefused>>>,
    outcomes: HashMap<RequestId, Reply<Outcome>>,
    promotions: HashMap<RequestId, Reply<Result<CommitIndex, String>>>,
    reads: HashMap<RequestId, Reply<ReadView>>,
}

impl Waiting {
    fn id(&mut self) -> RequestId {
        self.next += 1;
        RequestId(self.next)
    }

    /// Answers `request` with `why`, whatever kind it is.
    fn fail(&mut self, request: RequestId, why: fn() -> Stopped) {
        if let Some(r) = self.writes.remove(&request) {
            let _ = r.send(Err(why()));
        } else if let Some(r) = self.joins.remove(&request) {
            let _ = r.send(Err(why()));
        } else if let Some(r) = self.outcomes.remove(&request) {
            let _ = r.send(Err(why()));
        } else if let Some(r) = self.promotions.remove(&request) {
            let _ = r.send(Err(why()));
        } else if let Some(r) = self.reads.remove(&request) {
            let _ = r.send(Err(why()));
        }
    }

    /// Leadership ended: nothing in hand will be answered by this core.
    /// Writes may have been decided by it and committed by the next leader,
    /// so they are told "may or may not"; the rest did nothing durable.
    fn fail_all(&mut self) {
        for (_, r) in self.writes.drain() {
            let _ = r.send(Err(Stopped::LeadershipLost));
        }
        for (_, r) in self.joins.drain() {
            let _ = r.send(Err(Stopped::LeadershipLost));
        }
        for (_, r) in self.outcomes.drain() {
            let _ = r.send(Err(Stopped::NotLeader));
        }
        for (_, r) in self.promotions.drain() {
            let _ = r.send(Err(Stopped::LeadershipLost));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.send(Err(Stopped::NotLeader));
        }
    }
}

async fn run(
    mut stepper: Stepper,
    first_outputs: Vec<Output>,
    mut rx: mpsc::UnboundedReceiver<Input>,
    mut io: Io,
    view: watch::Sender<ReadView>,
    leadership: watch::Sender<Leadership>,
) {
    let clock = Clock(Instant::now());
    let mut waiting = Waiting::default();
    let mut outputs = first_outputs;
    loop {
        for output in outputs.drain(..) {
            io.carry_out(output, &mut waiting);
        }
        if let Some(core) = stepper.core() {
            // Compared in place: building a view to compare was a measurable
            // share of the driver's turn under load (docs/benchmarks.md).
            view.send_if_modified(|published| {
                if core.read_view_is(published) {
                    return false;
                }
                *published = core.read_view();
                true
            });
        }
        leadership.send_if_modified(|published| {
            let fresh = stepper.leadership(&io.peers);
            if published.rejoining && !fresh.rejoining {
                tracing::info!(
                    "caught up with the leader after losing its data: this coordinator votes again"
                );
            }
            if fresh.term > published.term {
                metrics::counter!("tally_raft_elections_total").increment(1);
            }
            let changed = *published != fresh;
            *published = fresh;
            changed
        });
        io.ask_peer_logs(&stepper, clock.now());
        let wake = clock.instant(stepper.next_wakeup(clock.now()));
        let first = tokio::select! {
            input = rx.recv() => match input {
                Some(input) => Some(input),
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => None,
        };
        let now = clock.now();
        let mut stop = false;
        match first {
            None => outputs.extend(stepper.step(now, tally_consensus::Input::Tick)),
            Some(input) => stop |= take(&mut stepper, now, input, &mut waiting, &mut outputs),
        }
        for _ in 0..INPUTS_PER_TURN {
            match rx.try_recv() {
                Ok(input) => stop |= take(&mut stepper, now, input, &mut waiting, &mut outputs),
                Err(_) => break,
            }
        }
        if stop {
            for output in outputs.drain(..) {
                io.carry_out(output, &mut waiting);
            }
            break;
        }
    }
}

/// Steps one input; true when it asks the task to stop.
fn take(
    stepper: &mut Stepper,
    now: Millis,
    input: Input,
    waiting: &mut Waiting,
    outputs: &mut Vec<Output>,
) -> bool {
    use tally_consensus::Input as I;
    let input = match input {
        Input::Write { items, reply } => {
            let request = waiting.id();
            waiting.writes.insert(request, reply);
            I::Core(Event::Write { request, items })
        }
        Input::Register { request: r, reply } => {
            let request = waiting.id();
            waiting.joins.insert(request, reply);
            I::Core(Event::Register {
                request,
                id: r.id,
                url: r.url,
                incarnation: r.incarnation,
                applied: r.applied_index,
                holds: Holdings {
                    prepared: r.prepared,
                    applied_above: r.applied_above,
                },
            })
        }
        Input::CaughtUp { request: r, reply } => {
            let request = waiting.id();
            waiting.joins.insert(request, reply);
            I::Core(Event::CaughtUp {
                request,
                id: r.id,
                incarnation: r.incarnation,
                registration: r.registration,
                applied: r.applied_index,
            })
        }
        Input::AskOutcome { txn, reply } => {
            let request = waiting.id();
            waiting.outcomes.insert(request, reply);
            I::Core(Event::AskOutcome { request, txn })
        }
        Input::Promote { id, reply } => {
            let request = waiting.id();
            waiting.promotions.insert(request, reply);
            I::Core(Event::Promote { request, id })
        }
        Input::ReadView { reply } => {
            let request = waiting.id();
            waiting.reads.insert(request, reply);
            I::ReadIndex(request)
        }
        Input::Event(event) => I::Core(event),
        Input::Raft(messages) => {
            for message in messages {
                outputs.extend(stepper.step(now, I::Message(message)));
            }
            return false;
        }
        Input::Persisted(number) => I::Persisted(number),
        Input::Unreachable(peer) => I::Unreachable(peer),
        Input::PeerLog { peer, log } => {
            if let Stepper::Replicated(replica) = stepper {
                match replica.peer_log(peer, log, now) {
                    Ok(more) => outputs.extend(more),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the replica; exiting");
                        std::process::exit(1);
                    }
                }
            }
            return false;
        }
        Input::Inspect(f) => {
            if let Some(core) = stepper.core() {
                f(core, now);
            }
            return false;
        }
        Input::Stop => return true,
    };
    outputs.extend(stepper.step(now, input));
    false
}

/// What carries out the core's actions.
struct Io {
    /// The single coordinator's decision log; with peers, the Raft log is
    /// the decision log and `raft` writes it.
    log: Option<Arc<DecisionLog>>,
    raft: Option<RaftIo>,
    counters: CounterClient,
    settings: Settings,
    inputs: mpsc::UnboundedSender<Input>,
    /// The epoch health checks name: the leader's term with peers.
    epoch: u64,
    peers: ClusterPeers,
}

/// The Raft side of a replica's I/O.
struct RaftIo {
    outbox: Outbox,
    persist: std::sync::mpsc::Sender<PersistWrite>,
    peers: crate::replication::Peers,
    /// When the peers' terms were last asked (while starting).
    asked: Option<Millis>,
    http: reqwest::Client,
    token: Option<String>,
}

impl Io {
    fn carry_out(&mut self, output: Output, waiting: &mut Waiting) {
        match output {
            Output::Core(action) => self.carry_out_action(action, waiting),
            Output::Send(message) => {
                if let Some(raft) = &self.raft {
                    raft.outbox.send(message);
                }
            }
            Output::Persist(write) => {
                if let Some(raft) = &self.raft {
                    let _ = raft.persist.send(write);
                }
            }
            Output::NotLeader(request) => waiting.fail(request, || Stopped::NotLeader),
            Output::ReadReady { request, view } => {
                if let Some(reply) = waiting.reads.remove(&request) {
                    let _ = reply.send(Ok(view));
                }
            }
            Output::Leading { term } => {
                self.epoch = term;
                tracing::info!(term, "this coordinator leads");
                metrics::counter!("tally_raft_leaderships_total").increment(1);
            }
            Output::Deposed => {
                tracing::warn!(
                    "this coordinator stopped leading; requests in hand are answered as undecided"
                );
                waiting.fail_all();
            }
        }
    }

    /// While starting on an empty disk, asks every peer what it holds, at
    /// most twice a second.
    fn ask_peer_logs(&mut self, stepper: &Stepper, now: Millis) {
        let Stepper::Replicated(replica) = stepper else {
            return;
        };
        let Some(raft) = self.raft.as_mut() else {
            return;
        };
        if !replica.starting() || raft.asked.is_some_and(|at| now.0 < at.0 + 500) {
            return;
        }
        raft.asked = Some(now);
        for (i, url) in raft.peers.others() {
            let peer = i as u64 + 1;
            let (http, token, inputs) =
                (raft.http.clone(), raft.token.clone(), self.inputs.clone());
            let url = url.to_string();
            tokio::spawn(async move {
                let asked = crate::replication::transport::peer_log(&http, &url, token).await;
                if let Ok(log) = asked {
                    let _ = inputs.send(Input::PeerLog { peer, log });
                }
            });
        }
    }

    fn carry_out_action(&self, action: Action, waiting: &mut Waiting) {
        match action {
            Action::Prepare {
                txn,
                to,
                items,
                commits,
            } => {
                let body = Bytes::from(
                    PrepareRequest {
                        txn,
                        items,
                        commits,
                    }
                    .to_postcard(),
                );
                let timeout = self.settings.prepare_timeout;
                for target in to {
                    let (counters, inputs, body) =
                        (self.counters.clone(), self.inputs.clone(), body.clone());
                    tokio::spawn(async move {
                        let result = counters
                            .prepare(&target.url, &target.id, None, txn, body, timeout)
                            .await;
                        let vote = match result {
                            Ok(status) => Ok(Vote {
                                incarnation: status.incarnation,
                                applied: status.applied_index,
                                committed: status.committed,
                            }),
                            Err(e) => {
                                notices::prepare_failed(&target.id, &e);
                                Err(e.to_string())
                            }
                        };
                        let _ = inputs.send(Input::Event(Event::Voted {
                            txn,
                            counter: target.id,
                            vote,
                        }));
                    });
                }
            }
            Action::Commit { to, commit } => {
                let (counters, inputs) = (self.counters.clone(), self.inputs.clone());
                let timeout = self.settings.commit_timeout;
                tokio::spawn(async move {
                    let answer = match counters.commit(&to.url, &to.id, commit, timeout).await {
                        Ok(status) => CommitAnswer::Applied {
                            applied: status.applied_index,
                            incarnation: status.incarnation,
                        },
                        Err(CallError::Status { status, .. }) if status.as_u16() == 409 => {
                            CommitAnswer::NotPrepared
                        }
                        Err(e) => {
                            tracing::debug!(counter = %to.id, index = %commit.index, error = %e,
                                "commit not acknowledged yet");
                            CommitAnswer::Failed(e.to_string())
                        }
                    };
                    let _ = inputs.send(Input::Event(Event::CommitAnswered {
                        index: commit.index,
                        counter: to.id,
                        answer,
                    }));
                });
            }
            Action::Abort { to, txn } => {
                let timeout = self.settings.commit_timeout;
                for target in to {
                    let counters = self.counters.clone();
                    tokio::spawn(async move {
                        let request = tally_common::api::AbortRequest { txn };
                        let _ = counters.abort(&target.url, request, timeout).await;
                    });
                }
            }
            Action::WriteLog(write) => {
                let Some(log) = self.log.clone() else {
                    unreachable!("a replica's core writes through Raft, never here");
                };
                let inputs = self.inputs.clone();
                tokio::spawn(async move {
                    let writing = Instant::now();
                    let done = tokio::task::spawn_blocking(move || {
                        log.write(&write).map(|()| !write.commits.is_empty())
                    })
                    .await;
                    match done {
                        Ok(Ok(decided_commits)) => {
                            // The write is the fsync every decision in it waits on.
                            metrics::histogram!("tally_decision_log_write_seconds")
                                .record(writing.elapsed().as_secs_f64());
                            crash_after_decision(decided_commits);
                            let _ = inputs.send(Input::Event(Event::LogWritten));
                        }
                        Ok(Err(e)) => {
                            // Commit indexes were assigned in memory but not
                            // logged; going on would leave a gap that no
                            // counter could ever fill. A restart recovers
                            // from the log.
                            tracing::error!(error = %e, "cannot write the decision log; exiting");
                            std::process::exit(1);
                        }
                        Err(_) => {
                            tracing::error!(
                                "decision log write failed; exiting to recover from the log"
                            );
                            std::process::exit(1);
                        }
                    }
                });
            }
            Action::WriteDone { request, result } => {
                if let Some(reply) = waiting.writes.remove(&request) {
                    let _ = reply.send(Ok(result));
                }
            }
            Action::Joined { request, result } => {
                if let Some(reply) = waiting.joins.remove(&request) {
                    let _ = reply.send(Ok(result));
                }
            }
            Action::Outcome { request, outcome } => {
                if let Some(reply) = waiting.outcomes.remove(&request) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Action::Promoted { request, result } => {
                if let Some(reply) = waiting.promotions.remove(&request) {
                    let _ = reply.send(Ok(result));
                }
            }
            Action::CheckHealth { to } => {
                let (counters, inputs) = (self.counters.clone(), self.inputs.clone());
                let (epoch, timeout) = (self.epoch, self.settings.health_timeout);
                tokio::spawn(async move {
                    let report = match counters.status(&to.url, &to.id, epoch, timeout).await {
                        Ok(status) => Ok(HealthReport {
                            incarnation: status.incarnation,
                            applied: status.applied_index,
                            catching_up: status.catching_up,
                            registered_here: status.registered_epoch == epoch,
                            copy: status.copy,
                        }),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = inputs.send(Input::Event(Event::HealthAnswered {
                        counter: to.id,
                        report,
                    }));
                });
            }
            Action::CatchUp { url, request } => {
                let counters = self.counters.clone();
                let timeout = self.settings.catch_up_call_timeout;
                tokio::spawn(async move {
                    if let Err(e) = counters.catch_up(&url, &request, timeout).await {
                        tracing::warn!(%url, error = %e, "cannot start catch-up");
                    }
                });
            }
            Action::Notice(notice) => notices::report(notice),
        }
    }
}

/// Test builds only: crash between logging a commit decision and sending
/// it, so a test can prove the restart sends it.
fn crash_after_decision(decided_commits: bool) {
    #[cfg(feature = "failpoints")]
    if decided_commits && std::env::var("TALLY_FAILPOINT").as_deref() == Ok("after-decision") {
        tracing::error!("failpoint after-decision: crashing before any commit is sent");
        std::process::abort();
    }
    let _ = decided_commits;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver sleeps until a deadline's millisecond starts; a deadline
    /// `now + 1` taken 0.9 ms into a millisecond must still be 1 ms away.
    #[test]
    fn a_deadline_lies_at_least_its_span_ahead() {
        let elapsed = Duration::from_micros(100_900);
        let linger_due = core_time(elapsed).plus(1);
        let wakes_at = Duration::from_millis(linger_due.0);
        assert!(
            wakes_at - elapsed >= Duration::from_millis(1),
            "the linger lasted {:?}",
            wakes_at - elapsed
        );
    }
}
