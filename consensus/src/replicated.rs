//! A coordinator that is one of several: the Raft node, the decision state
//! it replicates, and — on the leader only — the coordinator's core.
//!
//! The core is unchanged from a single coordinator's. What changes is where
//! its log writes go: each [`Action::WriteLog`] becomes one Raft proposal
//! (so group commit stays one replicated append per decision batch), and
//! [`Event::LogWritten`] comes back only once a majority of coordinators
//! hold the entry and it is applied here. Clients are answered and commits
//! sent after that, as before, so "durable" now means "on a majority".
//!
//! Leadership. A node that wins an election does not serve at once: raft-rs
//! appends an empty entry of the new term, and only once that entry is
//! applied — and with it every entry an earlier leader got committed — does
//! the node start a core, by the same `recover` a restarted single
//! coordinator uses, in an epoch equal to its term. A decision the old
//! leader had made durable is in that state and gets committed; one it had
//! not is in no majority's log, so it is presumed aborted, and no one was
//! ever told otherwise. A node that stops leading drops its core at once
//! ([`Output::Deposed`]): the requests that core held get "outcome unknown"
//! answers, never an acknowledgement.
//!
//! Fenced reads ask the majority first ([`Input::ReadIndex`]): a leader
//! serves a read only after a heartbeat round that started after the read
//! arrived confirms no newer leader exists, so a deposed leader that does
//! not know it yet cannot answer a read that a newer leader's writes would
//! contradict. Rounds are shared by every read that waits for one.

use crate::log_store::{PersistWrite, RestoredRaft};
use crate::node::{NodeConfig, NodeOutput, RaftNode, Role};
use crate::state::{decode_write, encode_write, DecisionState};
use crate::{Error, PeerLog, Start};
use raft::prelude::{Entry, Message};
use tally_common::coordinator::{
    Action, CoordinatorCore, CoreConfig, Event, Millis, ReadView, RequestId,
};

/// How a replicated coordinator is set up.
#[derive(Debug, Clone)]
pub struct ReplicatedConfig {
    pub node: NodeConfig,
    /// The core's settings; its epoch is replaced by the leader's term.
    pub core: CoreConfig,
    /// One Raft tick.
    pub tick_ms: u64,
    /// Take a snapshot (and forget the log below it) after this many
    /// applied entries.
    pub snapshot_every: u64,
}

/// Something that happens to a replicated coordinator.
#[derive(Debug, Clone)]
pub enum Input {
    /// For the leader's core.
    Core(Event),
    /// A Raft message from a peer.
    Message(Message),
    /// The [`PersistWrite`] with this number (and all before it) is durable.
    Persisted(u64),
    /// A message to this peer could not be delivered.
    Unreachable(u64),
    /// A fenced read waits to hear that this node still leads.
    ReadIndex(RequestId),
    /// Time passed.
    Tick,
}

/// Something the caller must do, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// An action of the leader's core; never [`Action::WriteLog`].
    Core(Action),
    /// Send to peer `message.to`.
    Send(Message),
    /// Write durably, in order, then step [`Input::Persisted`].
    Persist(PersistWrite),
    /// This node does not lead (or its core is not ready yet): the request
    /// must go to the leader, or wait for one.
    NotLeader(RequestId),
    /// The read may be served with this view.
    ReadReady { request: RequestId, view: ReadView },
    /// This node now leads, with a core in epoch `term`.
    Leading { term: u64 },
    /// This node stopped leading: every request its core held is
    /// unanswered and must be told "outcome unknown".
    Deposed,
}

struct Leadership {
    term: u64,
    /// The index of the new term's first entry: the core starts once it
    /// is applied.
    ready_at: u64,
    core: Option<CoordinatorCore>,
    /// The entry holding the core's log write in progress.
    proposal: Option<(u64, u64)>,
}

#[derive(Default)]
struct Reads {
    /// The round in flight: its context number and the reads it serves.
    inflight: Option<(u64, Vec<RequestId>)>,
    /// Reads that arrived after the round in flight started.
    waiting: Vec<RequestId>,
    /// Confirmed rounds waiting for the log to be applied to their index.
    confirmed: Vec<(u64, Vec<RequestId>)>,
    next: u64,
}

pub struct ReplicatedCoordinator {
    config: ReplicatedConfig,
    node: RaftNode,
    state: DecisionState,
    applied: u64,
    leading: Option<Leadership>,
    reads: Reads,
    next_tick: Millis,
    now: Millis,
}

impl ReplicatedCoordinator {
    /// Starts from what the disk held, as [`crate::start`] decided.
    pub fn new(
        config: ReplicatedConfig,
        restored: RestoredRaft,
        start: Start,
        now: Millis,
    ) -> Result<(Self, Vec<Output>), Error> {
        let state = match &restored.snapshot {
            Some(s) => DecisionState::decode(s.get_data())?,
            None => DecisionState::default(),
        };
        let applied = restored
            .snapshot
            .as_ref()
            .map_or(0, |s| s.get_metadata().index);
        let mut node_out = Vec::new();
        let node = RaftNode::new(config.node.clone(), restored, start, &mut node_out)?;
        let mut me = ReplicatedCoordinator {
            next_tick: Millis(now.0 + config.tick_ms),
            config,
            node,
            state,
            applied,
            leading: None,
            reads: Reads::default(),
            now,
        };
        let mut out = Vec::new();
        me.carry(node_out, &mut out);
        Ok((me, out))
    }

    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Output> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        let mut node_out = Vec::new();
        // Raft counts time in ticks; a long pause counts as one election
        // timeout at most, as a stalled process would see it.
        let mut ticks = 0;
        while self.next_tick <= self.now {
            if ticks <= self.config.node.election_ticks.1 {
                self.node.tick(&mut node_out);
            }
            ticks += 1;
            self.next_tick = Millis(self.next_tick.0 + self.config.tick_ms);
        }
        match input {
            Input::Message(message) => self.node.step(message, &mut node_out),
            Input::Persisted(number) => self.node.persisted(number, &mut node_out),
            Input::Unreachable(peer) => self.node.unreachable(peer),
            Input::ReadIndex(request) => self.read_index(request, &mut node_out, &mut out),
            Input::Core(event) => self.step_core(event, &mut out),
            Input::Tick => self.step_core(Event::Tick, &mut out),
        }
        self.carry(node_out, &mut out);
        out
    }

    /// When to step [`Input::Tick`] next.
    pub fn next_wakeup(&self) -> Millis {
        let core = self
            .leading
            .as_ref()
            .and_then(|l| l.core.as_ref())
            .map(|c| c.next_wakeup());
        core.map_or(self.next_tick, |c| c.min(self.next_tick))
    }

    pub fn role(&self) -> Role {
        self.node.role()
    }

    pub fn term(&self) -> u64 {
        self.node.term()
    }

    pub fn leader(&self) -> Option<u64> {
        self.node.leader()
    }

    /// The core, on a leader that has started one.
    pub fn core(&self) -> Option<&CoordinatorCore> {
        self.leading.as_ref().and_then(|l| l.core.as_ref())
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn last_index(&self) -> u64 {
        self.node.last_index()
    }

    /// Each peer's matched log index, as the leader knows it.
    pub fn matched(&self) -> Vec<(u64, u64)> {
        self.node.matched()
    }

    /// What this coordinator answers an empty one that asks how to start
    /// ([`crate::start`]).
    pub fn peer_log(&self) -> PeerLog {
        PeerLog {
            term: self.node.term(),
            has_log: self.node.last_index() > 0,
        }
    }

    /// The replicated decision state as applied here.
    pub fn state(&self) -> &DecisionState {
        &self.state
    }

    fn step_core(&mut self, event: Event, out: &mut Vec<Output>) {
        let now = self.now;
        let Some(core) = self.leading.as_mut().and_then(|l| l.core.as_mut()) else {
            if let Some(request) = request_of(&event) {
                out.push(Output::NotLeader(request));
            }
            return;
        };
        let actions = core.step(now, event);
        self.carry_core(actions, out);
    }

    fn read_index(
        &mut self,
        request: RequestId,
        node_out: &mut Vec<NodeOutput>,
        out: &mut Vec<Output>,
    ) {
        if self.core().is_none() {
            out.push(Output::NotLeader(request));
            return;
        }
        self.reads.waiting.push(request);
        self.start_read_round(node_out);
    }

    fn start_read_round(&mut self, node_out: &mut Vec<NodeOutput>) {
        if self.reads.inflight.is_some() || self.reads.waiting.is_empty() {
            return;
        }
        self.reads.next += 1;
        let round = self.reads.next;
        let requests = std::mem::take(&mut self.reads.waiting);
        self.reads.inflight = Some((round, requests));
        self.node.read_index(round.to_be_bytes().to_vec(), node_out);
    }

    /// Carries out what the Raft node asked, then whatever follows from it
    /// (applying entries, starting or dropping the core, serving reads).
    fn carry(&mut self, mut node_out: Vec<NodeOutput>, out: &mut Vec<Output>) {
        while !node_out.is_empty() {
            let mut more = Vec::new();
            for o in node_out {
                match o {
                    NodeOutput::Send(m) => out.push(Output::Send(m)),
                    NodeOutput::Persist(w) => out.push(Output::Persist(w)),
                    NodeOutput::InstallSnapshot(s) => {
                        if let Ok(state) = DecisionState::decode(s.get_data()) {
                            self.state = state;
                            self.applied = s.get_metadata().index;
                        }
                    }
                    NodeOutput::Committed(entry) => self.apply(entry, out),
                    NodeOutput::ReadReady { context, index } => {
                        self.read_confirmed(&context, index, &mut more)
                    }
                }
            }
            self.follow_leadership(out);
            self.serve_reads(out);
            self.maybe_compact(&mut more);
            node_out = more;
        }
    }

    fn apply(&mut self, entry: Entry, out: &mut Vec<Output>) {
        if entry.index <= self.applied {
            return;
        }
        self.applied = entry.index;
        if entry.get_data().is_empty() {
            return; // a new leader's first entry
        }
        // A committed entry that does not decode was written by a coordinator
        // of another version or is corrupt; applying a guess would diverge.
        let write = decode_write(entry.get_data()).expect("a committed entry decodes");
        self.state.apply(&write);
        let ours =
            self.leading.as_ref().and_then(|l| l.proposal) == Some((entry.index, entry.term));
        if ours {
            if let Some(leading) = self.leading.as_mut() {
                leading.proposal = None;
            }
            self.step_core(Event::LogWritten, out);
        }
    }

    /// Starts a core once this node leads and has applied its term's first
    /// entry; drops it when it no longer leads.
    fn follow_leadership(&mut self, out: &mut Vec<Output>) {
        let leads = self.node.role() == Role::Leader;
        let term = self.node.term();
        if self
            .leading
            .as_ref()
            .is_some_and(|l| !leads || l.term != term)
        {
            self.leading = None;
            self.reads = Reads {
                next: self.reads.next,
                ..Reads::default()
            };
            out.push(Output::Deposed);
        }
        if leads && self.leading.is_none() {
            self.leading = Some(Leadership {
                term,
                ready_at: self.node.last_index(),
                core: None,
                proposal: None,
            });
        }
        let Some(leading) = self.leading.as_mut() else {
            return;
        };
        if leading.core.is_none() && self.applied >= leading.ready_at {
            let mut config = self.config.core.clone();
            config.epoch = term;
            leading.core = Some(CoordinatorCore::recover(
                config,
                self.state.restored(term),
                self.now,
            ));
            out.push(Output::Leading { term });
            self.step_core(Event::Tick, out);
        }
    }

    fn carry_core(&mut self, actions: Vec<Action>, out: &mut Vec<Output>) {
        for action in actions {
            match action {
                Action::WriteLog(write) => {
                    let mut node_out = Vec::new();
                    // Refused only when not leading any more: the core goes
                    // at the next leadership check, and its requests with it.
                    if let Ok(index) = self.node.propose(encode_write(&write), &mut node_out) {
                        if let Some(leading) = self.leading.as_mut() {
                            leading.proposal = Some((index, leading.term));
                        }
                    }
                    self.carry(node_out, out);
                }
                other => out.push(Output::Core(other)),
            }
        }
    }

    fn read_confirmed(&mut self, context: &[u8], index: u64, _more: &mut Vec<NodeOutput>) {
        let Ok(bytes) = <[u8; 8]>::try_from(context) else {
            return;
        };
        let round = u64::from_be_bytes(bytes);
        if let Some((inflight, requests)) = self.reads.inflight.take() {
            if inflight == round {
                self.reads.confirmed.push((index, requests));
            } else {
                self.reads.inflight = Some((inflight, requests));
            }
        }
    }

    fn serve_reads(&mut self, out: &mut Vec<Output>) {
        let Some(core) = self.core() else {
            return;
        };
        let view = core.read_view();
        let applied = self.applied;
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.confirmed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads.confirmed = later;
        for (_, requests) in ready {
            for request in requests {
                out.push(Output::ReadReady {
                    request,
                    view: view.clone(),
                });
            }
        }
        let mut node_out = Vec::new();
        self.start_read_round(&mut node_out);
        if !node_out.is_empty() {
            self.carry(node_out, out);
        }
    }

    fn maybe_compact(&mut self, more: &mut Vec<NodeOutput>) {
        if self.applied >= self.node.snapshot_index() + self.config.snapshot_every {
            self.node.compact(self.applied, self.state.encode(), more);
        }
    }
}

/// The request an event answers, if it is a request.
fn request_of(event: &Event) -> Option<RequestId> {
    match event {
        Event::Write { request, .. }
        | Event::Register { request, .. }
        | Event::CaughtUp { request, .. }
        | Event::AskOutcome { request, .. }
        | Event::Promote { request, .. } => Some(*request),
        _ => None,
    }
}
