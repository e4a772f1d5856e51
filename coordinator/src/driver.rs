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

use crate::client::{CallError, CounterClient};
use crate::config::Settings;
use crate::error::Stopped;
use crate::log::DecisionLog;
use crate::notices;
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
use tokio::sync::{mpsc, oneshot, watch};

/// Most inputs stepped before the actions are carried out: under load many
/// votes and writes arrive together, and carrying out once per batch lets
/// one prepare carry every write that arrived meanwhile.
const INPUTS_PER_TURN: usize = 512;

type Inspect = Box<dyn FnOnce(&CoordinatorCore, Millis) + Send>;

enum Input {
    Write {
        items: Vec<Item>,
        reply: oneshot::Sender<Result<(), WriteRefused>>,
    },
    Register {
        request: RegisterRequest,
        reply: oneshot::Sender<Result<JoinPlan, JoinRefused>>,
    },
    CaughtUp {
        request: CaughtUpRequest,
        reply: oneshot::Sender<Result<JoinPlan, JoinRefused>>,
    },
    AskOutcome {
        txn: TxnId,
        reply: oneshot::Sender<Outcome>,
    },
    Promote {
        id: CounterId,
        reply: oneshot::Sender<Result<CommitIndex, String>>,
    },
    /// An answer from a counter or the log.
    Event(Event),
    Inspect(Inspect),
    Stop,
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
}

impl Driver {
    /// Starts the task that owns `core`; returns the handle and the task.
    pub fn start(
        core: CoordinatorCore,
        log: DecisionLog,
        counters: CounterClient,
        settings: Settings,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (inputs, rx) = mpsc::unbounded_channel();
        let (view_tx, view) = watch::channel(core.read_view());
        let io = Io {
            log: Arc::new(log),
            counters,
            settings,
            inputs: inputs.clone(),
            epoch: core.config().epoch,
        };
        let task = tokio::spawn(run(core, rx, io, view_tx));
        (Driver { inputs, view }, task)
    }

    /// Adds `items` to the next transaction and waits for its outcome.
    pub async fn write(&self, items: Vec<Item>) -> Result<Result<(), WriteRefused>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Write { items, reply })?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn register(
        &self,
        request: RegisterRequest,
    ) -> Result<Result<JoinPlan, JoinRefused>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Register { request, reply })?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn caught_up(
        &self,
        request: CaughtUpRequest,
    ) -> Result<Result<JoinPlan, JoinRefused>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::CaughtUp { request, reply })?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn outcome(&self, txn: TxnId) -> Result<Outcome, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::AskOutcome { txn, reply })?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn promote(&self, id: CounterId) -> Result<Result<CommitIndex, String>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Promote { id, reply })?;
        rx.await.map_err(|_| Stopped)
    }

    /// Runs `f` on the core's state (for views: `/cluster`, `/health`,
    /// metrics) and returns what it computed.
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&CoordinatorCore, Millis) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Inspect(Box::new(move |core, now| {
            let _ = reply.send(f(core, now));
        })))?;
        rx.await.map_err(|_| Stopped)
    }

    /// The fence and the counters a read starting now may ask.
    pub fn read_view(&self) -> ReadView {
        self.view.borrow().clone()
    }

    /// Changes whenever the read view does (a new durable decision, say).
    pub fn watch_view(&self) -> watch::Receiver<ReadView> {
        self.view.clone()
    }

    /// Ends the task; answers still waiting are dropped (their requests
    /// answer 503).
    pub fn stop(&self) {
        let _ = self.inputs.send(Input::Stop);
    }

    fn send(&self, input: Input) -> Result<(), Stopped> {
        self.inputs.send(input).map_err(|_| Stopped)
    }
}

/// Requests waiting for the core's answer, by the id the driver gave them.
#[derive(Default)]
struct Waiting {
    next: u64,
    writes: HashMap<RequestId, oneshot::Sender<Result<(), WriteRefused>>>,
    joins: HashMap<RequestId, oneshot::Sender<Result<JoinPlan, JoinRefused>>>,
    outcomes: HashMap<RequestId, oneshot::Sender<Outcome>>,
    promotions: HashMap<RequestId, oneshot::Sender<Result<CommitIndex, String>>>,
}

impl Waiting {
    fn id(&mut self) -> RequestId {
        self.next += 1;
        RequestId(self.next)
    }
}

async fn run(
    mut core: CoordinatorCore,
    mut rx: mpsc::UnboundedReceiver<Input>,
    io: Io,
    view: watch::Sender<ReadView>,
) {
    let clock = Clock(Instant::now());
    let mut waiting = Waiting::default();
    let mut actions = Vec::new();
    loop {
        let wake = clock.instant(core.next_wakeup());
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
            None => actions.extend(core.step(now, Event::Tick)),
            Some(input) => stop |= take(&mut core, now, input, &mut waiting, &mut actions),
        }
        for _ in 0..INPUTS_PER_TURN {
            match rx.try_recv() {
                Ok(input) => stop |= take(&mut core, now, input, &mut waiting, &mut actions),
                Err(_) => break,
            }
        }
        for action in actions.drain(..) {
            io.carry_out(action, &mut waiting);
        }
        view.send_if_modified(|published| {
            if core.read_view_is(published) {
                return false;
            }
            *published = core.read_view();
            true
        });
        if stop {
            break;
        }
    }
}

/// Steps one input; true when it asks the task to stop.
fn take(
    core: &mut CoordinatorCore,
    now: Millis,
    input: Input,
    waiting: &mut Waiting,
    actions: &mut Vec<Action>,
) -> bool {
    let event = match input {
        Input::Write { items, reply } => {
            let request = waiting.id();
            waiting.writes.insert(request, reply);
            Event::Write { request, items }
        }
        Input::Register { request: r, reply } => {
            let request = waiting.id();
            waiting.joins.insert(request, reply);
            Event::Register {
                request,
                id: r.id,
                url: r.url,
                incarnation: r.incarnation,
                applied: r.applied_index,
                holds: Holdings {
                    prepared: r.prepared,
                    applied_above: r.applied_above,
                },
            }
        }
        Input::CaughtUp { request: r, reply } => {
            let request = waiting.id();
            waiting.joins.insert(request, reply);
            Event::CaughtUp {
                request,
                id: r.id,
                incarnation: r.incarnation,
                registration: r.registration,
                applied: r.applied_index,
            }
        }
        Input::AskOutcome { txn, reply } => {
            let request = waiting.id();
            waiting.outcomes.insert(request, reply);
            Event::AskOutcome { request, txn }
        }
        Input::Promote { id, reply } => {
            let request = waiting.id();
            waiting.promotions.insert(request, reply);
            Event::Promote { request, id }
        }
        Input::Event(event) => event,
        Input::Inspect(f) => {
            f(core, now);
            return false;
        }
        Input::Stop => return true,
    };
    actions.extend(core.step(now, event));
    false
}

/// What carries out the core's actions.
struct Io {
    log: Arc<DecisionLog>,
    counters: CounterClient,
    settings: Settings,
    inputs: mpsc::UnboundedSender<Input>,
    epoch: u64,
}

impl Io {
    fn carry_out(&self, action: Action, waiting: &mut Waiting) {
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
                let (log, inputs) = (self.log.clone(), self.inputs.clone());
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
                    let _ = reply.send(result);
                }
            }
            Action::Joined { request, result } => {
                if let Some(reply) = waiting.joins.remove(&request) {
                    let _ = reply.send(result);
                }
            }
            Action::Outcome { request, outcome } => {
                if let Some(reply) = waiting.outcomes.remove(&request) {
                    let _ = reply.send(outcome);
                }
            }
            Action::Promoted { request, result } => {
                if let Some(reply) = waiting.promotions.remove(&request) {
                    let _ = reply.send(result);
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
