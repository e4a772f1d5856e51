//! One coordinator's Raft node: raft-rs's `RawNode` with its `Ready` loop
//! turned into outputs, so nothing here does I/O. What must be durable goes
//! out as a [`PersistWrite`] and the node goes on only once the caller says
//! it is ([`RaftNode::persisted`]); messages that depend on it wait for it.
//! Persisting runs asynchronously (raft-rs's `advance_append_async`), so the
//! leader keeps stepping votes and answers while its disk syncs.
//!
//! Two things are ours rather than raft-rs's:
//!
//! - **Election timeouts from a seed.** raft-rs draws each randomized
//!   election timeout from the thread's RNG. We overwrite it from our own
//!   seeded generator whenever the node's term, role or leader changes (the
//!   only moments raft-rs draws one), so a simulated run replays exactly.
//! - **Rejoining after losing the data directory.** A node that comes back
//!   empty has forgotten its vote and the entries it acknowledged; voting
//!   again could elect a leader that lacks a committed decision, or two
//!   leaders in one term. So it starts at the highest term any peer
//!   reports, as if it had voted for itself in it, and neither votes nor
//!   campaigns until its log reaches the commit index of the first leader
//!   that sends it entries or a snapshot (that leader holds every committed
//!   entry). The mark survives a crash in the middle (docs/consensus.md).

use crate::log_store::{LogStore, PersistWrite, RestoredRaft};
use crate::{Error, Start};
use raft::prelude::{Entry, HardState, Message, MessageType, Snapshot};
use raft::{Config, RawNode, SnapshotStatus, StateRole};
use std::collections::VecDeque;

/// How a node is set up. Ticks are the caller's time unit (the
/// coordinator's driver ticks every `tick_ms`).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// 1-based, the position in the peer list plus one.
    pub id: u64,
    pub voters: Vec<u64>,
    pub heartbeat_ticks: usize,
    /// An election starts after a random number of ticks in this range
    /// without hearing from a leader.
    pub election_ticks: (usize, usize),
    /// Seeds the election timeouts.
    pub seed: u64,
}

/// What the node asks its caller to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOutput {
    Send(Message),
    /// Make this durable, then call [`RaftNode::persisted`] with its number.
    Persist(PersistWrite),
    /// The state machine must become this snapshot's state.
    InstallSnapshot(Snapshot),
    /// An entry is committed (and persisted here): apply it.
    Committed(Entry),
    /// A read-index request (`context`) is confirmed: reads may be served
    /// once everything up to `index` is applied.
    ReadReady {
        context: Vec<u8>,
        index: u64,
    },
}

/// The role as the rest of tally sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    /// Lost its data; catching up before it may vote (see the module doc).
    Rejoining,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Rejoining => "rejoining",
        }
    }
}

/// The leader's commit index to reach before a rejoining node may vote;
/// `None` until a leader sent something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rejoin {
    target: Option<u64>,
}

pub struct RaftNode {
    raw: RawNode<LogStore>,
    config: NodeConfig,
    /// Messages that may go only once the write with that number is
    /// durable (a follower's acknowledgement of entries, a vote).
    held: VecDeque<(u64, Vec<Message>)>,
    /// Writes handed out and not yet reported durable.
    unpersisted: u64,
    rejoin: Option<Rejoin>,
    rng: u64,
    seen: (u64, StateRole, u64),
    /// A snapshot received from the leader, by the number of the write
    /// that persists it and its index: once that write is durable, raft-rs
    /// must hear that the snapshot is applied (see [`Self::persisted`]).
    snapshot_to_apply: Option<(u64, u64)>,
}

impl RaftNode {
    /// Starts from what the disk held, as [`crate::start`] decided. An
    /// empty disk starts at the highest term a peer reported, as having
    /// voted for itself in it: if it lost its data it may have voted in
    /// that term already, and voting twice could elect two leaders. It
    /// rejoins (see the module doc) when a peer holds a log.
    pub fn new(
        config: NodeConfig,
        mut restored: RestoredRaft,
        start: Start,
        out: &mut Vec<NodeOutput>,
    ) -> Result<Self, Error> {
        let pinned = match start {
            Start::Restart | Start::Fresh { term: 0 } => None,
            Start::Fresh { term } => Some((term, false)),
            Start::Rejoin { term } => Some((term, true)),
            Start::Wait => return Err(Error::NotStarted),
        };
        if let Some((term, rejoining)) = pinned {
            restored.hard_state = HardState {
                term,
                vote: config.id,
                commit: 0,
                ..Default::default()
            };
            restored.rejoining = rejoining;
            out.push(NodeOutput::Persist(PersistWrite {
                number: 0,
                hard_state: Some(restored.hard_state.clone()),
                rejoining: rejoining.then_some(true),
                ..Default::default()
            }));
        }
        let applied = restored
            .snapshot
            .as_ref()
            .map_or(0, |s| s.get_metadata().index);
        let store = LogStore::new(config.voters.clone(), &restored);
        let raft_config = Config {
            id: config.id,
            election_tick: config.election_ticks.0,
            min_election_tick: config.election_ticks.0,
            max_election_tick: config.election_ticks.1,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // A leader that has not heard from a majority for an election
            // timeout steps down, and followers that hear from a leader
            // ignore vote requests: an isolated old leader cannot linger,
            // and a node coming back cannot depose a healthy leader.
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate().map_err(Error::Raft)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, store, &logger).map_err(Error::Raft)?;
        let mut node = RaftNode {
            raw,
            held: VecDeque::new(),
            unpersisted: u64::from(pinned.is_some()),
            rejoin: restored.rejoining.then_some(Rejoin { target: None }),
            rng: config.seed | 1,
            snapshot_to_apply: None,
            // Not a state raft-rs can be in, so the first timeout is ours too.
            seen: (u64::MAX, StateRole::Leader, u64::MAX),
            config,
        };
        node.redraw_timeout();
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    pub fn role(&self) -> Role {
        if self.rejoin.is_some() {
            return Role::Rejoining;
        }
        match self.raw.raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
        }
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this node follows, if it knows one.
    pub fn leader(&self) -> Option<u64> {
        let id = self.raw.raft.leader_id;
        (id != raft::INVALID_ID).then_some(id)
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    pub fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// How far each peer's log matches the leader's (leader only).
    pub fn matched(&self) -> Vec<(u64, u64)> {
        match self.raw.status().progress {
            Some(progress) if self.raw.raft.state == StateRole::Leader => {
                progress.iter().map(|(id, p)| (*id, p.matched)).collect()
            }
            _ => Vec::new(),
        }
    }

    pub fn tick(&mut self, out: &mut Vec<NodeOutput>) {
        // A rejoining node must not campaign; followers only count towards
        // an election on ticks, so it simply does not tick. Nor does one
        // whose snapshot from the leader is not durable yet: raft-rs took
        // the snapshot as written when it was handed out, but counts it as
        // applied only once durable (see `persisted`), and a campaign in
        // between reads the entries the snapshot replaced, and panics.
        if self.rejoin.is_none() && self.snapshot_to_apply.is_none() {
            self.raw.tick();
        }
        self.drain(out);
    }

    pub fn step(&mut self, mut message: Message, out: &mut Vec<NodeOutput>) {
        self.forget_progress_of_rejoining_peer(&message);
        let last_index = self.last_index();
        if let Some(rejoin) = &mut self.rejoin {
            match message.get_msg_type() {
                // The leader still takes this node to hold what it held
                // before losing its data, and tells it a commit index its
                // empty log cannot reach (raft-rs would panic on it).
                MessageType::MsgHeartbeat => message.commit = message.commit.min(last_index),
                MessageType::MsgRequestVote
                | MessageType::MsgRequestPreVote
                | MessageType::MsgTimeoutNow => return,
                MessageType::MsgAppend if rejoin.target.is_none() => {
                    rejoin.target = Some(message.commit)
                }
                MessageType::MsgSnapshot if rejoin.target.is_none() => {
                    rejoin.target = Some(message.get_snapshot().get_metadata().index)
                }
                _ => {}
            }
        } else if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last_index
        {
            // Only a leader that took this node for its life before it lost
            // its data sends that, and the message was on its way before
            // the leader learnt otherwise (a duplicate, a slow connection):
            // it arrives after the node rejoined. raft-rs would panic on
            // it; the leader's next heartbeat tells the truth.
            return;
        }
        // A message for another group or from a stale peer is raft-rs's to
        // judge; a malformed one is refused here and changes nothing.
        let _ = self.raw.step(message);
        self.drain(out);
    }

    /// A leader's view of a peer that lost its data is wrong: it believes
    /// the peer holds what it acknowledged before, so it would send only
    /// newer entries and take the peer's refusals as stale. A rejoining
    /// node marks what it sends with its last index (see [`Self::outgoing`]);
    /// the leader then probes it from the start, which ends in a snapshot
    /// or the whole log.
    fn forget_progress_of_rejoining_peer(&mut self, message: &Message) {
        if self.raw.raft.state != StateRole::Leader || message.deprecated_priority == 0 {
            return;
        }
        if !matches!(
            message.get_msg_type(),
            MessageType::MsgAppendResponse | MessageType::MsgHeartbeatResponse
        ) {
            return;
        }
        let held = message.deprecated_priority - 1;
        if let Some(progress) = self.raw.raft.mut_prs().get_mut(message.from) {
            if progress.matched > held {
                progress.matched = 0;
                progress.become_probe();
            }
        }
    }

    /// What this node sends, marked while it rejoins. The field is raft-rs's
    /// old vote priority, read only on vote requests, which a rejoining node
    /// never sends.
    fn outgoing(&self, mut message: Message) -> NodeOutput {
        if self.rejoin.is_some() {
            message.deprecated_priority = self.last_index() + 1;
        }
        NodeOutput::Send(message)
    }

    /// Proposes one entry; only a leader may.
    pub fn propose(&mut self, data: Vec<u8>, out: &mut Vec<NodeOutput>) -> Result<u64, Error> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(Error::NotLeader);
        }
        self.raw.propose(Vec::new(), data).map_err(Error::Raft)?;
        let index = self.last_index();
        self.drain(out);
        Ok(index)
    }

    /// Asks a majority to confirm this node still leads (a read index).
    pub fn read_index(&mut self, context: Vec<u8>, out: &mut Vec<NodeOutput>) {
        self.raw.read_index(context);
        self.drain(out);
    }

    /// The write numbered `number` (and every one before it) is durable.
    pub fn persisted(&mut self, number: u64, out: &mut Vec<NodeOutput>) {
        self.unpersisted = self.unpersisted.saturating_sub(1);
        if number > 0 {
            self.raw.on_persist_ready(number);
        }
        // raft-rs counts a received snapshot as applied only when told. Left
        // behind, its applied index points below the snapshot, at entries
        // the log no longer has, and the next campaign (which reads the
        // entries between applied and committed) panics. Only once the
        // snapshot is durable: raft-rs refuses to apply past what is.
        if let Some((n, index)) = self.snapshot_to_apply {
            if n <= number {
                self.snapshot_to_apply = None;
                if index > self.raw.raft.raft_log.applied {
                    self.raw.advance_apply_to(index);
                }
            }
        }
        while self.held.front().is_some_and(|(n, _)| *n <= number) {
            let (_, messages) = self.held.pop_front().expect("checked");
            for m in messages {
                out.push(self.outgoing(m));
            }
        }
        self.drain(out);
    }

    /// The peer could not be reached: raft-rs probes it instead of
    /// streaming to it.
    pub fn unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }

    /// Takes a snapshot at `applied` holding the state `data` and forgets
    /// the log below it.
    pub fn compact(&mut self, applied: u64, data: Vec<u8>, out: &mut Vec<NodeOutput>) {
        let snapshot = self.raw.mut_store().compact(applied, data);
        self.unpersisted += 1;
        out.push(NodeOutput::Persist(PersistWrite {
            number: 0,
            snapshot: Some(snapshot),
            compact_to: Some(applied),
            ..Default::default()
        }));
    }

    pub fn snapshot_index(&self) -> u64 {
        self.raw.store().last_snapshot().get_metadata().index
    }

    fn drain(&mut self, out: &mut Vec<NodeOutput>) {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            let mut snapshots_to = Vec::new();
            for m in ready.take_messages() {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    snapshots_to.push(m.to);
                }
                out.push(self.outgoing(m));
            }
            let mut write = PersistWrite {
                number: ready.number(),
                ..Default::default()
            };
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                self.snapshot_to_apply = Some((ready.number(), snapshot.get_metadata().index));
                self.raw.mut_store().apply_snapshot(snapshot.clone());
                out.push(NodeOutput::InstallSnapshot(snapshot.clone()));
                write.snapshot = Some(snapshot);
            }
            let committed = ready.take_committed_entries();
            let last_applied = committed.last().map(|e| e.index);
            out.extend(committed.into_iter().map(NodeOutput::Committed));
            if !ready.entries().is_empty() {
                self.raw.mut_store().append(ready.entries());
                write.entries = ready.take_entries();
            }
            if let Some(hs) = ready.hs() {
                self.raw.mut_store().set_hard_state(hs.clone());
                write.hard_state = Some(hs.clone());
            }
            for state in ready.take_read_states() {
                out.push(NodeOutput::ReadReady {
                    context: state.request_ctx,
                    index: state.index,
                });
            }
            let after = ready.take_persisted_messages();
            let nothing_to_write =
                write.hard_state.is_none() && write.entries.is_empty() && write.snapshot.is_none();
            let number = write.number;
            self.raw.advance_append_async(ready);
            // raft-rs sends a peer nothing more after a snapshot until told
            // how sending it went; the caller's network cannot tell (a
            // message may be lost on the way). Told "sent" at once, raft-rs
            // probes the peer at its next heartbeat answer: one that got
            // the snapshot answers from beyond it, one that did not is sent
            // another. Left untold, a lost snapshot stalled the peer for
            // good.
            for to in snapshots_to {
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
            if nothing_to_write && self.unpersisted == 0 && self.held.is_empty() {
                self.raw.on_persist_ready(number);
                for m in after {
                    out.push(self.outgoing(m));
                }
            } else {
                self.unpersisted += 1;
                out.push(NodeOutput::Persist(write));
                self.held.push_back((number, after));
            }
            if let Some(applied) = last_applied {
                self.raw.advance_apply_to(applied);
            }
        }
        self.check_rejoined(out);
        self.redraw_timeout();
    }

    fn check_rejoined(&mut self, out: &mut Vec<NodeOutput>) {
        let Some(Rejoin {
            target: Some(target),
        }) = self.rejoin
        else {
            return;
        };
        if self.committed() >= target {
            self.rejoin = None;
            self.unpersisted += 1;
            out.push(NodeOutput::Persist(PersistWrite {
                number: 0,
                rejoining: Some(false),
                ..Default::default()
            }));
        }
    }

    /// Overwrites raft-rs's election timeout with one from our seed whenever
    /// raft-rs may have drawn a new one.
    fn redraw_timeout(&mut self) {
        let raft = &self.raw.raft;
        let now = (raft.term, raft.state, raft.leader_id);
        if now == self.seen {
            return;
        }
        self.seen = now;
        let (low, high) = self.config.election_ticks;
        // xorshift64: small, seeded, good enough to break election ties.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = (high - low).max(1) as u64;
        let timeout = low + (self.rng % span) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
    }
}
