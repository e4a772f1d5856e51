//! Protocol scenarios: plain-text scripts in `tests/scenarios/` that feed
//! events into the real [`CoordinatorCore`] (and the real counter-side
//! [`Participant`]s) and record what comes out. A newcomer reads them to
//! learn the protocol; `cargo test` replays them and fails with a diff when
//! the output changes. `UPDATE_GOLDENFILES=1 cargo test -p tally-common
//! --test scenarios` rewrites the expected output, to be read before it is
//! committed. Each script starts a fresh coordinator (epoch 1, the test
//! settings of `CoreConfig::for_tests`: prepare timeout 500 ms, joiner grace
//! 5 ms, commit linger 1 ms, health and sweep every 200 ms) at time 0.
//!
//! The command language (scripts use the goldenscript syntax: commands,
//! then `---`, then their output; `#` starts a comment):
//!
//! Coordinator events, each printing the actions that came out:
//! - `cluster c1 c2 c3`: setup, printing only the in-sync set: each counter
//!   registers (incarnations 1, 2, 3 …) and reports caught up, with every
//!   log write made durable, so all are live and in sync.
//! - `config min_insync=2 max_queued=1 …`: settings, before anything else.
//! - `register c1 incarnation=1 applied=0`: counter `c1` (url `http://c1`)
//!   registers. The runner gives it a participant holding `(0, applied]`,
//!   and a fresh one when the incarnation changes (a wiped disk).
//! - `caught-up c1 [applied=N] [incarnation=N] [registration=N]`: its
//!   catch-up report (naming its latest registration unless told);
//!   applied defaults to what its participant holds.
//! - `write r1 a b`: client request `r1` adds items `a` and `b`.
//! - `vote txn=1.1 c1 yes|fail|incarnation=9 [applied=N]`: a vote by hand
//!   (`fail`: an error or timeout; `incarnation=`: a yes from another disk).
//! - `commit-answer c1 index=1 applied|not-prepared|failed [through=N] [incarnation=N]` (`incarnation=`: an answer from another disk).
//! - `health c2 ok [applied=N] [registered] [catching-up] [incarnation=N]`,
//!   `health c2 fail`.
//! - `log-written`: the outstanding `write-log` is durable; the runner keeps
//!   it as the coordinator's log.
//! - `tick 500ms`: time passes; timers fire.
//! - `ask-outcome txn=1.1 [c1]`: how did it end? With a counter named, its
//!   participant is given the answer.
//! - `promote c1`: the operator's forced promotion.
//! - `crash`, `restart`: the coordinator dies (an unwritten log write is
//!   lost) and starts again from the log with the next epoch.
//!
//! Counters (their real [`Participant`]; messages the coordinator sends to
//! a registered counter wait in its inbox):
//! - `deliver c1`: c1 takes its inbox in order and answers the coordinator
//!   (votes carry its incarnation, applied index and carried commits).
//! - `drop c1`: its inbox is lost (a network fault, a slow disk).
//! - `copy c1 through=N`: a catch-up pass ended complete up to N.
//! - `in-doubt c1`: its timer asks about every prepared transaction.
//! - `counter-restart c1`: its process restarts on the same disk (inbox
//!   lost; it asks about every prepared transaction).
//! - `wipe c1 incarnation=7`: its disk is replaced by an empty one.
//!
//! State: `state` (coordinator, counters, durable log), `read-view`.
//!
//! Output lines: `→ prepare 1.2 to=c1,c2 items=a carries=1.1@1` (a
//! message), `write-log …` (what must become durable), `answer r1 ok`,
//! `decided 1.1 commit@1`, `c2: live → joining out` (a membership change),
//! and `c1: …` lines for what a counter did.

use goldenscript::{Command, Context};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::error::Error;
use std::fmt::Write as _;
use tally_common::api::{CommitRequest, CounterState, Outcome};
use tally_common::applied::AppliedSet;
use tally_common::coordinator::{
    Action, CommitAnswer, CoordinatorCore, CoreConfig, Event, Holdings, JoinRefused, LogWrite,
    Millis, Notice, RequestId, RestoredLog, Target, Vote, WriteRefused,
};
use tally_common::membership::{Decision, Effect, HealthReport, StoredMember};
use tally_common::participant::{self, Participant};
use tally_common::{CommitIndex, CounterId, Incarnation, Item, TxnId};

type Res<T> = Result<T, Box<dyn Error>>;

/// A message from the coordinator waiting for a counter.
#[derive(Debug, Clone)]
enum Msg {
    Prepare {
        txn: TxnId,
        commits: Vec<CommitRequest>,
    },
    Commit(CommitRequest),
    Abort(TxnId),
}

/// One counter: its disk's life and its participant, and what was sent to it.
struct Counter {
    incarnation: Incarnation,
    participant: Participant,
    inbox: VecDeque<Msg>,
}

/// What a request id stands for, to print answers by name.
#[derive(Clone)]
enum Req {
    Write(String),
    Join(String),
    Outcome(TxnId),
    Promote(String),
}

struct ScenarioRunner {
    config: CoreConfig,
    /// `None` between `crash` and `restart`.
    core: Option<CoordinatorCore>,
    now: Millis,
    /// The coordinator's durable log: what `restart` recovers from.
    log: RestoredLog,
    /// The log write asked for and not yet durable.
    unwritten: Option<LogWrite>,
    counters: BTreeMap<String, Counter>,
    requests: BTreeMap<RequestId, Req>,
    next_request: u64,
    started: bool,
}

impl ScenarioRunner {
    fn new() -> Self {
        ScenarioRunner {
            config: CoreConfig::for_tests(1),
            core: None,
            now: Millis(0),
            log: RestoredLog::default(),
            unwritten: None,
            counters: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            started: false,
        }
    }

    /// Starts the coordinator from the durable log, with the next epoch (as
    /// the binary's log does at every start).
    fn start(&mut self) {
        self.log.epoch += 1;
        self.config.epoch = self.log.epoch;
        self.core = Some(CoordinatorCore::recover(
            self.config.clone(),
            self.log.clone(),
            self.now,
        ));
        self.started = true;
    }

    fn core(&mut self) -> Res<&mut CoordinatorCore> {
        if !self.started {
            self.start();
        }
        self.core
            .as_mut()
            .ok_or_else(|| "the coordinator is down (crash without restart)".into())
    }

    fn request(&mut self, req: Req) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.requests.insert(id, req);
        id
    }

    /// Steps the core and prints what came out.
    fn step(&mut self, event: Event, out: &mut String) -> Res<()> {
        let now = self.now;
        let actions = self.core()?.step(now, event);
        self.carry(actions, out)
    }

    /// Prints actions, queues messages for modelled counters, and keeps the
    /// log write asked for.
    fn carry(&mut self, actions: Vec<Action>, out: &mut String) -> Res<()> {
        let mut commits: Vec<(CommitRequest, Vec<String>)> = Vec::new();
        let mut checks: Vec<String> = Vec::new();
        let flush = |out: &mut String,
                     commits: &mut Vec<(CommitRequest, Vec<String>)>,
                     checks: &mut Vec<String>| {
            for (c, to) in commits.drain(..) {
                let _ = writeln!(out, "→ commit {}@{} to={}", c.txn, c.index, to.join(","));
            }
            if !checks.is_empty() {
                let _ = writeln!(out, "→ check-health {}", checks.join(","));
                checks.clear();
            }
        };
        for action in actions {
            match &action {
                Action::Commit { to, commit } => {
                    self.queue(&to.id, Msg::Commit(*commit));
                    match commits.last_mut() {
                        Some((c, ids)) if c == commit => ids.push(to.id.to_string()),
                        _ => {
                            flush(out, &mut Vec::new(), &mut checks);
                            commits.push((*commit, vec![to.id.to_string()]));
                        }
                    }
                    continue;
                }
                Action::CheckHealth { to } => {
                    flush(out, &mut commits, &mut Vec::new());
                    checks.push(to.id.to_string());
                    continue;
                }
                _ => flush(out, &mut commits, &mut checks),
            }
            match action {
                Action::Prepare {
                    txn,
                    to,
                    items,
                    commits: carried,
                } => {
                    for target in &to {
                        self.queue(
                            &target.id,
                            Msg::Prepare {
                                txn,
                                commits: carried.clone(),
                            },
                        );
                    }
                    let items: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
                    let _ = write!(
                        out,
                        "→ prepare {txn} to={} items={}",
                        names(&to),
                        items.join(",")
                    );
                    if !carried.is_empty() {
                        let c: Vec<String> = carried
                            .iter()
                            .map(|c| format!("{}@{}", c.txn, c.index))
                            .collect();
                        let _ = write!(out, " carries={}", c.join(","));
                    }
                    out.push('\n');
                }
                Action::Abort { to, txn } => {
                    for target in &to {
                        self.queue(&target.id, Msg::Abort(txn));
                    }
                    writeln!(out, "→ abort {txn} to={}", names(&to))?;
                }
                Action::WriteLog(write) => {
                    if self.unwritten.is_some() {
                        return Err("a second log write while one is outstanding".into());
                    }
                    writeln!(out, "write-log {}", show_write(&write))?;
                    self.unwritten = Some(write);
                }
                Action::WriteDone { request, result } => {
                    let name = self.name(request);
                    match result {
                        Ok(()) => writeln!(out, "answer {name} ok")?,
                        Err(WriteRefused::Busy) => writeln!(out, "answer {name} busy")?,
                        Err(WriteRefused::Aborted(why)) => {
                            writeln!(out, "answer {name} aborted ({why})")?
                        }
                    }
                }
                Action::Joined { request, result } => {
                    let name = self.name(request);
                    match result {
                        Ok(plan) => writeln!(
                            out,
                            "join-plan {name} in_sync={} until={} peers=[{}] epoch={}",
                            plan.in_sync,
                            plan.until,
                            plan.peers
                                .iter()
                                .map(|u| short(u))
                                .collect::<Vec<_>>()
                                .join(","),
                            plan.epoch
                        )?,
                        Err(JoinRefused::NotRegistered) => {
                            writeln!(out, "join-plan {name} refused: not registered")?
                        }
                        Err(JoinRefused::ImpossibleClaim { applied, decided }) => writeln!(
                            out,
                            "join-plan {name} refused: claims {applied}, only {decided} decided"
                        )?,
                    }
                }
                Action::Outcome { request, outcome } => {
                    let name = self.name(request);
                    writeln!(out, "outcome {name} {}", show_outcome(outcome))?;
                }
                Action::Promoted { request, result } => {
                    let name = self.name(request);
                    match result {
                        Ok(held) => writeln!(out, "promoted {name} held={held}")?,
                        Err(why) => writeln!(out, "promote {name} refused: {why}")?,
                    }
                }
                Action::CatchUp { url, request } => writeln!(
                    out,
                    "→ catch-up {} until={} peers=[{}]",
                    short(&url),
                    request.until,
                    request
                        .peers
                        .iter()
                        .map(|u| short(u))
                        .collect::<Vec<_>>()
                        .join(",")
                )?,
                Action::Notice(notice) => show_notice(notice, out),
                Action::Commit { .. } | Action::CheckHealth { .. } => unreachable!(),
            }
        }
        flush(out, &mut commits, &mut checks);
        Ok(())
    }

    fn queue(&mut self, id: &CounterId, msg: Msg) {
        if let Some(counter) = self.counters.get_mut(&id.0) {
            counter.inbox.push_back(msg);
        }
    }

    fn name(&self, request: RequestId) -> String {
        match self.requests.get(&request) {
            Some(Req::Write(n) | Req::Join(n) | Req::Promote(n)) => n.clone(),
            Some(Req::Outcome(txn)) => txn.to_string(),
            None => format!("#{}", request.0),
        }
    }

    fn counter(&mut self, name: &str) -> Res<&mut Counter> {
        self.counters
            .get_mut(name)
            .ok_or_else(|| format!("no counter {name} (register it first)").into())
    }

    fn txn(&self, s: &str) -> Res<TxnId> {
        let (epoch, seq) = s.split_once('.').ok_or("txn is EPOCH.SEQ")?;
        Ok(TxnId::new(epoch.parse()?, seq.parse()?))
    }

    /// Hands `name`'s participant one event and prints what it did.
    /// The coordinator's name for `id`'s current registration.
    fn registration_of(&mut self, id: &CounterId) -> Res<u64> {
        Ok(self
            .core()?
            .cluster()
            .member(id)
            .map_or(0, |m| m.registration))
    }

    fn participant_step(
        &mut self,
        name: &str,
        event: participant::Event,
        out: &mut String,
    ) -> Res<Vec<participant::Action>> {
        let actions = self.counter(name)?.participant.step(event);
        for a in &actions {
            writeln!(out, "{name}: {}", show_participant(a))?;
        }
        Ok(actions)
    }

    /// `name` asks the coordinator how `txn` ended and acts on the answer.
    fn ask(&mut self, name: &str, txn: TxnId, out: &mut String) -> Res<()> {
        let outcome = self.core()?.outcome(txn);
        writeln!(out, "{name}: asks {txn} → {}", show_outcome(outcome))?;
        self.participant_step(name, participant::Event::Outcome { txn, outcome }, out)?;
        Ok(())
    }

    fn deliver(&mut self, name: &str, out: &mut String) -> Res<()> {
        let now = self.now;
        let inbox = std::mem::take(&mut self.counter(name)?.inbox);
        for msg in inbox {
            match msg {
                Msg::Prepare { txn, commits } => {
                    let mut committed = Vec::new();
                    for c in &commits {
                        let event = participant::Event::Commit {
                            txn: c.txn,
                            index: c.index,
                        };
                        let acts = self.counter(name)?.participant.step(event);
                        if acts.contains(&participant::Action::Ack { txn: c.txn }) {
                            committed.push(c.index);
                        }
                    }
                    let acts = self
                        .counter(name)?
                        .participant
                        .step(participant::Event::Prepare { txn, now });
                    debug_assert!(acts.contains(&participant::Action::VoteYes { txn }));
                    let counter = self.counter(name)?;
                    let vote = Vote {
                        incarnation: counter.incarnation,
                        applied: counter.participant.applied().contiguous(),
                        committed: committed.clone(),
                    };
                    let shown: Vec<String> = committed.iter().map(|i| i.to_string()).collect();
                    write!(out, "{name}: prepare {txn} → yes applied={}", vote.applied)?;
                    if !commits.is_empty() {
                        write!(out, " committed=[{}]", shown.join(","))?;
                    }
                    out.push('\n');
                    self.step(
                        Event::Voted {
                            txn,
                            counter: CounterId::from(name),
                            vote: Ok(vote),
                        },
                        out,
                    )?;
                }
                Msg::Commit(c) => {
                    let acts = self
                        .counter(name)?
                        .participant
                        .step(participant::Event::Commit {
                            txn: c.txn,
                            index: c.index,
                        });
                    let applied = self.counter(name)?.participant.applied().contiguous();
                    let answer = if acts.contains(&participant::Action::Ack { txn: c.txn }) {
                        writeln!(
                            out,
                            "{name}: commit {}@{} → ok applied={applied}",
                            c.txn, c.index
                        )?;
                        let incarnation = self.counter(name)?.incarnation;
                        CommitAnswer::Applied {
                            applied,
                            incarnation,
                        }
                    } else {
                        writeln!(
                            out,
                            "{name}: commit {}@{} → 409 not prepared",
                            c.txn, c.index
                        )?;
                        CommitAnswer::NotPrepared
                    };
                    self.step(
                        Event::CommitAnswered {
                            index: c.index,
                            counter: CounterId::from(name),
                            answer,
                        },
                        out,
                    )?;
                }
                Msg::Abort(txn) => {
                    self.counter(name)?
                        .participant
                        .step(participant::Event::Abort { txn });
                    writeln!(out, "{name}: abort {txn} → ok")?;
                }
            }
        }
        Ok(())
    }

    /// Makes the outstanding log write durable, if any (setup only).
    fn settle(&mut self, out: &mut String) -> Res<()> {
        if let Some(write) = self.unwritten.take() {
            apply(&mut self.log, write);
            self.step(Event::LogWritten, out)?;
        }
        Ok(())
    }

    fn state(&mut self, out: &mut String) -> Res<()> {
        match &self.core {
            None if self.started => writeln!(out, "coordinator: down")?,
            _ => {
                let core = self.core()?;
                let (queued, inflight) = core.load();
                writeln!(
                    out,
                    "coordinator: epoch={} decided={} fence={} queued={queued} in_flight={inflight} unacknowledged={}",
                    core.config().epoch,
                    core.cluster().decided(),
                    core.read_view().fence,
                    core.unacknowledged()
                )?;
                let mut in_sync = Vec::new();
                for m in core.cluster().members() {
                    if m.in_sync {
                        in_sync.push(m.id.to_string());
                    }
                    write!(
                        out,
                        "  {} {}{} applied={}",
                        m.id,
                        m.state.name(),
                        if m.in_sync { " in-sync" } else { "" },
                        m.applied
                    )?;
                    if !m.in_sync {
                        write!(out, " join_until={}", m.join_until)?;
                    }
                    if !m.registered {
                        out.push_str(" unregistered");
                    }
                    if m.catching_up {
                        out.push_str(" catching-up");
                    }
                    if m.converging {
                        out.push_str(" converging");
                    }
                    if let Some(inc) = m.incarnation {
                        write!(out, " incarnation={}", inc.0)?;
                    }
                    out.push('\n');
                }
                writeln!(out, "  in-sync set: [{}]", in_sync.join(","))?;
            }
        }
        let decisions: Vec<String> = self
            .log
            .decisions
            .iter()
            .map(|(t, i)| format!("{t}@{i}"))
            .collect();
        writeln!(
            out,
            "log: epoch={} decided={} decisions=[{}] members=[{}]",
            self.log.epoch,
            self.log.decided,
            decisions.join(","),
            show_members(&self.log.members)
        )?;
        for (name, c) in &self.counters {
            let prepared: Vec<String> = c.participant.prepared().map(|t| t.to_string()).collect();
            let above: Vec<String> = c
                .participant
                .applied()
                .above()
                .map(|i| i.to_string())
                .collect();
            write!(
                out,
                "counter {name}: incarnation={} applied={}",
                c.incarnation.0,
                c.participant.applied().contiguous()
            )?;
            if !above.is_empty() {
                write!(out, " also=[{}]", above.join(","))?;
            }
            if !prepared.is_empty() {
                write!(out, " prepared=[{}]", prepared.join(","))?;
            }
            if !c.inbox.is_empty() {
                write!(out, " inbox={}", c.inbox.len())?;
            }
            out.push('\n');
        }
        Ok(())
    }
}

impl goldenscript::Runner for ScenarioRunner {
    type Command = Command;

    fn run(&mut self, command: &Command, _: &Context) -> Res<String> {
        let mut out = String::new();
        let mut args = command.consume_args();
        match command.name.as_str() {
            "config" => {
                if self.started {
                    return Err("config must come first".into());
                }
                while let Some((key, value)) = args.next_key() {
                    match key {
                        "min_insync" => self.config.membership.min_insync = value.parse()?,
                        "dead_after" => self.config.membership.dead_after = value.parse()?,
                        "remove_after" => self.config.membership.remove_after = value.parse()?,
                        "max_queued" => self.config.max_queued = value.parse()?,
                        "max_inflight" => self.config.max_inflight = value.parse()?,
                        "max_txn_items" => self.config.max_txn_items = value.parse()?,
                        "prepare_timeout_ms" => self.config.prepare_timeout_ms = value.parse()?,
                        "commit_linger_ms" => self.config.commit_linger_ms = value.parse()?,
                        other => return Err(format!("unknown setting {other}").into()),
                    }
                }
                args.reject_next()?;
                self.start();
            }
            "cluster" => {
                let mut names = Vec::new();
                while let Some(name) = args.next_pos() {
                    names.push(name.to_string());
                }
                args.reject_next()?;
                for (i, name) in names.iter().enumerate() {
                    let mut ignored = String::new();
                    let incarnation = Incarnation(i as u64 + 1);
                    self.counters.insert(
                        name.clone(),
                        Counter {
                            incarnation,
                            participant: Participant::default(),
                            inbox: VecDeque::new(),
                        },
                    );
                    let id = CounterId::from(name.as_str());
                    let request = self.request(Req::Join(name.clone()));
                    let url = format!("http://{name}");
                    let applied = CommitIndex::ZERO;
                    let register = Event::Register {
                        request,
                        id: id.clone(),
                        url,
                        incarnation,
                        applied,
                        holds: Holdings::default(),
                    };
                    self.step(register, &mut ignored)?;
                    self.settle(&mut ignored)?;
                    let request = self.request(Req::Join(name.clone()));
                    let registration = self.registration_of(&id)?;
                    self.step(
                        Event::CaughtUp {
                            request,
                            id,
                            incarnation,
                            registration,
                            applied,
                        },
                        &mut ignored,
                    )?;
                    self.settle(&mut ignored)?;
                }
                let core = self.core()?;
                let in_sync: Vec<String> = core
                    .cluster()
                    .members()
                    .filter(|m| m.in_sync)
                    .map(|m| m.id.to_string())
                    .collect();
                writeln!(out, "in-sync set: [{}]", in_sync.join(","))?;
            }
            "register" => {
                let name = args.next_pos().ok_or("register NAME")?.to_string();
                let incarnation = Incarnation(num(&mut args, "incarnation")?.unwrap_or(1));
                let applied = CommitIndex(num(&mut args, "applied")?.unwrap_or(0));
                args.reject_next()?;
                let fresh = self
                    .counters
                    .get(&name)
                    .is_none_or(|c| c.incarnation != incarnation);
                if fresh {
                    self.counters.insert(
                        name.clone(),
                        Counter {
                            incarnation,
                            participant: holding(applied),
                            inbox: VecDeque::new(),
                        },
                    );
                }
                let request = self.request(Req::Join(name.clone()));
                let participant = &self.counter(&name)?.participant;
                let holds = Holdings {
                    prepared: participant.prepared().collect(),
                    applied_above: participant.applied().above().collect(),
                };
                self.step(
                    Event::Register {
                        request,
                        id: CounterId::from(name.as_str()),
                        url: format!("http://{name}"),
                        incarnation,
                        applied,
                        holds,
                    },
                    &mut out,
                )?;
            }
            "caught-up" => {
                let name = args.next_pos().ok_or("caught-up NAME")?.to_string();
                let counter = self.counter(&name)?;
                let (held, inc) = (
                    counter.participant.applied().contiguous(),
                    counter.incarnation,
                );
                let applied = CommitIndex(num(&mut args, "applied")?.unwrap_or(held.0));
                let incarnation = Incarnation(num(&mut args, "incarnation")?.unwrap_or(inc.0));
                // The report names the counter's latest registration unless
                // told otherwise (a report sent before it registered again).
                let latest = self.registration_of(&CounterId::from(name.as_str()))?;
                let registration = num(&mut args, "registration")?.unwrap_or(latest);
                args.reject_next()?;
                let request = self.request(Req::Join(name.clone()));
                self.step(
                    Event::CaughtUp {
                        request,
                        id: CounterId::from(name.as_str()),
                        incarnation,
                        registration,
                        applied,
                    },
                    &mut out,
                )?;
            }
            "write" => {
                let name = args.next_pos().ok_or("write REQUEST ITEM…")?.to_string();
                let mut items = Vec::new();
                while let Some(item) = args.next_pos() {
                    items.push(Item::new(item, "t"));
                }
                args.reject_next()?;
                let request = self.request(Req::Write(name));
                self.step(Event::Write { request, items }, &mut out)?;
            }
            "vote" => {
                let txn = self.txn(args.take_key("txn").ok_or("vote txn=E.S NAME …")?)?;
                let name = args.next_pos().ok_or("vote txn=E.S NAME")?.to_string();
                let counter = self.counter(&name)?;
                let (inc, held) = (
                    counter.incarnation,
                    counter.participant.applied().contiguous(),
                );
                let applied = CommitIndex(num(&mut args, "applied")?.unwrap_or(held.0));
                let incarnation: Option<u64> = num(&mut args, "incarnation")?;
                let vote = match args.next_pos().map(str::to_string).as_deref() {
                    Some("fail") => Err("timed out".to_string()),
                    Some("yes") | None => Ok(Vote {
                        incarnation: incarnation.map_or(inc, Incarnation),
                        applied,
                        committed: vec![],
                    }),
                    Some(other) => return Err(format!("vote yes|fail, not {other}").into()),
                };
                args.reject_next()?;
                self.step(
                    Event::Voted {
                        txn,
                        counter: CounterId::from(name.as_str()),
                        vote,
                    },
                    &mut out,
                )?;
            }
            "commit-answer" => {
                let name = args.next_pos().ok_or("commit-answer NAME")?.to_string();
                let index = CommitIndex(num(&mut args, "index")?.ok_or("index=N")?);
                let through = CommitIndex(num(&mut args, "through")?.unwrap_or(index.0));
                // The disk it answers from: the one registered, unless named.
                let registered = self
                    .core()?
                    .cluster()
                    .member(&CounterId::from(name.as_str()))
                    .and_then(|m| m.incarnation)
                    .unwrap_or_default();
                let incarnation = num(&mut args, "incarnation")?.map_or(registered, Incarnation);
                let answer = match args.next_pos().map(str::to_string).as_deref() {
                    Some("applied") => CommitAnswer::Applied {
                        applied: through,
                        incarnation,
                    },
                    Some("not-prepared") => CommitAnswer::NotPrepared,
                    Some("failed") => CommitAnswer::Failed("timed out".into()),
                    _ => return Err("applied|not-prepared|failed".into()),
                };
                args.reject_next()?;
                self.step(
                    Event::CommitAnswered {
                        index,
                        counter: CounterId::from(name.as_str()),
                        answer,
                    },
                    &mut out,
                )?;
            }
            "health" => {
                let name = args.next_pos().ok_or("health NAME ok|fail")?.to_string();
                let how = args.next_pos().ok_or("health NAME ok|fail")?.to_string();
                let report = if how == "fail" {
                    Err("connection refused".to_string())
                } else if how == "ok" {
                    let counter = self.counter(&name)?;
                    let (inc, held) = (
                        counter.incarnation,
                        counter.participant.applied().contiguous(),
                    );
                    let applied = CommitIndex(num(&mut args, "applied")?.unwrap_or(held.0));
                    let incarnation = Incarnation(num(&mut args, "incarnation")?.unwrap_or(inc.0));
                    let mut registered_here = false;
                    let mut catching_up = false;
                    while let Some(flag) = args.next_pos() {
                        match flag {
                            "registered" => registered_here = true,
                            "catching-up" => catching_up = true,
                            other => return Err(format!("unknown flag {other}").into()),
                        }
                    }
                    Ok(HealthReport {
                        incarnation,
                        applied,
                        catching_up,
                        registered_here,
                        copy: None,
                    })
                } else {
                    return Err("health NAME ok|fail".into());
                };
                args.reject_next()?;
                self.step(
                    Event::HealthAnswered {
                        counter: CounterId::from(name.as_str()),
                        report,
                    },
                    &mut out,
                )?;
            }
            "log-written" => {
                args.reject_next()?;
                let write = self.unwritten.take().ok_or("no log write outstanding")?;
                apply(&mut self.log, write);
                self.step(Event::LogWritten, &mut out)?;
            }
            "tick" => {
                let by = args.next_pos().ok_or("tick 500ms")?.to_string();
                args.reject_next()?;
                let ms: u64 = by
                    .strip_suffix("ms")
                    .ok_or("tick takes e.g. 500ms")?
                    .parse()?;
                self.now = self.now.plus(ms);
                // Time passes for a coordinator that is down too.
                if self.core.is_some() || !self.started {
                    self.step(Event::Tick, &mut out)?;
                }
            }
            "ask-outcome" => {
                let txn = self.txn(args.take_key("txn").ok_or("ask-outcome txn=E.S")?)?;
                let counter = args.next_pos().map(str::to_string);
                args.reject_next()?;
                match counter {
                    Some(name) => self.ask(&name, txn, &mut out)?,
                    None => {
                        let request = self.request(Req::Outcome(txn));
                        self.step(Event::AskOutcome { request, txn }, &mut out)?;
                    }
                }
            }
            "promote" => {
                let name = args.next_pos().ok_or("promote NAME")?.to_string();
                args.reject_next()?;
                let request = self.request(Req::Promote(name.clone()));
                self.step(
                    Event::Promote {
                        request,
                        id: CounterId::from(name.as_str()),
                    },
                    &mut out,
                )?;
            }
            "crash" => {
                args.reject_next()?;
                self.core()?;
                self.core = None;
                if self.unwritten.take().is_some() {
                    writeln!(out, "the log write in progress is lost")?;
                }
                writeln!(out, "coordinator down")?;
            }
            "restart" => {
                args.reject_next()?;
                if self.core.is_some() {
                    return Err("crash first".into());
                }
                self.start();
                writeln!(out, "coordinator up, epoch {}", self.config.epoch)?;
                // Its first health round and re-sends are due at once.
                self.step(Event::Tick, &mut out)?;
            }
            "deliver" => {
                let name = args.next_pos().ok_or("deliver NAME")?.to_string();
                args.reject_next()?;
                self.deliver(&name, &mut out)?;
            }
            "drop" => {
                let name = args.next_pos().ok_or("drop NAME")?.to_string();
                args.reject_next()?;
                let lost = std::mem::take(&mut self.counter(&name)?.inbox).len();
                writeln!(out, "{name}: {lost} message(s) lost")?;
            }
            "copy" => {
                let name = args.next_pos().ok_or("copy NAME through=N")?.to_string();
                let through = CommitIndex(num(&mut args, "through")?.ok_or("through=N")?);
                args.reject_next()?;
                let since = self.counter(&name)?.participant.applied().contiguous();
                let range = Some((since, through));
                self.participant_step(&name, participant::Event::Imported { range }, &mut out)?;
            }
            "in-doubt" => {
                let name = args.next_pos().ok_or("in-doubt NAME")?.to_string();
                args.reject_next()?;
                // The counter's clock reaches the in-doubt threshold: it
                // asks about every transaction prepared before now.
                let late = self.now.plus(participant::DEFAULT_IN_DOUBT_AFTER.0);
                let asks =
                    self.participant_step(&name, participant::Event::Tick { now: late }, &mut out)?;
                for a in asks {
                    if let participant::Action::AskOutcome { txn } = a {
                        self.ask(&name, txn, &mut out)?;
                    }
                }
            }
            "counter-restart" => {
                let name = args.next_pos().ok_or("counter-restart NAME")?.to_string();
                args.reject_next()?;
                let counter = self.counter(&name)?;
                counter.inbox.clear();
                let (participant, asks) = Participant::recover(
                    Default::default(),
                    counter.participant.prepared().collect::<Vec<_>>(),
                    counter.participant.applied().clone(),
                );
                counter.participant = participant;
                for a in asks {
                    if let participant::Action::AskOutcome { txn } = a {
                        self.ask(&name, txn, &mut out)?;
                    }
                }
            }
            "wipe" => {
                let name = args
                    .next_pos()
                    .ok_or("wipe NAME incarnation=N")?
                    .to_string();
                let incarnation =
                    Incarnation(num(&mut args, "incarnation")?.ok_or("incarnation=N")?);
                args.reject_next()?;
                let counter = self.counter(&name)?;
                counter.incarnation = incarnation;
                counter.participant = Participant::default();
                counter.inbox.clear();
                writeln!(out, "{name}: empty disk, incarnation {}", incarnation.0)?;
            }
            "state" => {
                args.reject_next()?;
                self.state(&mut out)?;
            }
            "read-view" => {
                args.reject_next()?;
                let view = self.core()?.read_view();
                writeln!(
                    out,
                    "read-view fence={} readable=[{}] epoch={}",
                    view.fence,
                    names(&view.readable),
                    view.epoch
                )?;
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        Ok(out)
    }
}

/// The number given as `key=N`, if any.
fn num(args: &mut goldenscript::ArgumentConsumer, key: &str) -> Res<Option<u64>> {
    Ok(args.take_key(key).map(str::parse).transpose()?)
}

/// A participant that holds every index in `(0, applied]`.
fn holding(applied: CommitIndex) -> Participant {
    Participant::recover(Default::default(), [], AppliedSet::new(applied, [])).0
}

/// Makes a log write durable in the runner's copy of the log.
fn apply(log: &mut RestoredLog, write: LogWrite) {
    log.decisions.extend(write.commits);
    if let Some(decided) = write.decided {
        log.decided = log.decided.max(decided);
    }
    if let Some(members) = write.members {
        log.members = members;
    }
    if let Some(upto) = write.trim {
        log.decisions.retain(|(_, index)| *index > upto);
    }
}

fn names(targets: &[Target]) -> String {
    let mut ids: Vec<String> = targets.iter().map(|t| t.id.to_string()).collect();
    ids.sort();
    ids.join(",")
}

fn short(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

fn show_members(members: &[StoredMember]) -> String {
    members
        .iter()
        .map(|m| {
            let inc = m.incarnation.map_or("?".to_string(), |i| i.0.to_string());
            let place = if m.in_sync { "in" } else { "out" };
            format!("{}:{place}:inc{inc}", m.id)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn show_write(write: &LogWrite) -> String {
    let mut parts = Vec::new();
    if !write.commits.is_empty() {
        let c: Vec<String> = write
            .commits
            .iter()
            .map(|(t, i)| format!("{t}@{i}"))
            .collect();
        parts.push(format!("commits=[{}]", c.join(",")));
    }
    if let Some(d) = write.decided {
        parts.push(format!("decided={d}"));
    }
    if let Some(members) = &write.members {
        parts.push(format!("members=[{}]", show_members(members)));
    }
    if let Some(t) = write.trim {
        parts.push(format!("trim={t}"));
    }
    parts.join(" ")
}

fn show_outcome(outcome: Outcome) -> String {
    match outcome {
        Outcome::Committed { index } => format!("committed@{index}"),
        Outcome::Aborted => "aborted".into(),
        Outcome::Pending => "pending".into(),
    }
}

fn show_notice(notice: Notice, out: &mut String) {
    let line = match notice {
        Notice::Decided { txn, decision, .. } => match decision {
            Decision::Commit { index, dropped } if dropped.is_empty() => {
                format!("decided {txn} commit@{index}")
            }
            Decision::Commit { index, dropped } => {
                let d: BTreeSet<String> = dropped.iter().map(|c| c.to_string()).collect();
                let d: Vec<String> = d.into_iter().collect();
                format!(
                    "decided {txn} commit@{index} (left the in-sync set: {})",
                    d.join(",")
                )
            }
            Decision::Abort { reason } => format!("decided {txn} abort ({reason})"),
        },
        Notice::PrepareFailed { counter, error } => format!("{counter}: no vote ({error})"),
        Notice::Membership(Effect::Transition {
            id,
            from,
            to,
            in_sync,
        }) => format!(
            "{id}: {} → {} {}",
            from.map_or("new", CounterState::name),
            to.map_or("removed", CounterState::name),
            if in_sync { "in-sync" } else { "out" }
        ),
        Notice::Membership(Effect::LostData { id, reason }) => {
            format!("{id}: lost data ({reason})")
        }
        Notice::Membership(other) => format!("membership {other:?}"),
        Notice::LacksCommit { counter, index } => {
            format!("{counter}: lacks commit {index}, must copy it")
        }
        Notice::Trimmed { upto } => format!("trimmed decisions up to {upto}"),
        Notice::HealthFailed { counter, error } => format!("{counter}: health failed ({error})"),
        // Registration shows in its join plan; batch sizes are for metrics.
        Notice::Registered { .. } | Notice::LogBatch { .. } => return,
    };
    out.push_str(&line);
    out.push('\n');
}

fn show_participant(action: &participant::Action) -> String {
    use participant::{Action as A, Record as R};
    match action {
        A::Persist(R::Prepared { txn }) => format!("persist prepared {txn}"),
        A::Persist(R::Applied { txn, index }) => format!("persist applied {txn}@{index}"),
        A::Persist(R::Forgotten { txn }) => format!("persist forget {txn}"),
        A::Persist(R::AppliedRange { since, through }) => {
            format!("persist applied ({since}, {through}]")
        }
        A::VoteYes { txn } => format!("vote yes {txn}"),
        A::Ack { txn } => format!("ack {txn}"),
        A::UnknownTxn { txn, index } => format!("409 {txn}@{index} not prepared"),
        A::AskOutcome { txn } => format!("ask outcome of {txn}"),
    }
}

/// Replays one scenario file.
fn scenario(name: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(format!("{name}.txt"));
    goldenscript::run(&mut ScenarioRunner::new(), &path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { scenario(stringify!($name)); })*

        /// Every file in the directory has its test above.
        #[test]
        fn every_scenario_file_runs() {
            let listed: BTreeSet<&str> = [$(stringify!($name)),*].into_iter().collect();
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "txt") {
                    let stem = path.file_stem().unwrap().to_string_lossy().to_string();
                    assert!(listed.contains(stem.as_str()), "{stem}.txt is not run: add it to scenarios!");
                }
            }
        }
    };
}

scenarios! {
    busy_queue,
    commit_carried_on_next_prepare,
    crash_between_decision_and_commit,
    in_doubt_after_restart,
    joiner_promoted,
    missed_vote,
    normal_commit,
    trim,
    wiped_counter,
}
