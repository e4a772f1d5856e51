//! One of several coordinators: the real `ReplicatedCoordinator`
//! (tally-consensus) over a simulated disk and the simulated network.
//!
//! - **Its disk** holds what the Raft node asked to persist
//!   (`RestoredRaft`, changed only by `RestoredRaft::apply`, as the
//!   driver's store does). A `PersistWrite` goes to an unsynced buffer; a
//!   simulated fsync (1–8 ms, now and then 30–200 ms) makes the buffer
//!   durable, in order, and only then is each write reported
//!   `Persisted(number)`, in order. A crash loses the buffer; a restart
//!   rebuilds the node from the durable part.
//! - **Starting.** A process with an empty disk asks the others for their
//!   terms and whether they hold a log, and starts as
//!   `tally_consensus::start` says: rejoining as soon as one holds a log (a
//!   wiped disk), a new cluster once every other coordinator has answered
//!   without one, waiting otherwise.
//! - **Raft messages** travel encoded, as the binary sends them, and meet
//!   the same delays, losses, duplicates, stalls and partitions as every
//!   other message; one that cannot reach its peer (down, cut off) is
//!   reported `Unreachable` a moment later, as a refused connection would.
//! - **Its outputs** are carried out in order: the core's actions by
//!   coordinator.rs, "not leader" and "deposed" as answers whose outcome is
//!   unknown, a confirmed read by serving it with the view it came with.
//!
//! After every step the agreement between coordinators is checked
//! (agreement.rs) and, on the leader, the core's in-sync set.

use crate::net::{Msg, Node};
use crate::world::{Ev, World};
use std::collections::BTreeMap;
use tally_common::coordinator::Millis;
use tally_consensus::{
    Input, Message, NodeConfig, Output, PeerLog, PersistWrite, ReplicatedConfig,
    ReplicatedCoordinator, RestoredRaft, Role, Start,
};

/// How often an empty coordinator asks the others for their terms again.
const ASK_TERMS_MS: u64 = 100;
/// How long a refused connection takes to be noticed, and how often one
/// peer is reported unreachable at most.
const UNREACHABLE_MS: u64 = 20;

/// The Raft timing of one world (the binary's flags will set these).
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub tick_ms: u64,
    pub heartbeat_ticks: usize,
    pub election_ticks: (usize, usize),
    /// A snapshot after this many applied entries: small values make
    /// followers that fell behind, and wiped ones, catch up by snapshot.
    pub snapshot_every: u64,
}

/// The Raft side of one coordinator process.
#[derive(Default)]
pub struct Replica {
    pub up: bool,
    /// `None` while it starts (asking the others' terms) or is down.
    pub node: Option<ReplicatedCoordinator>,
    /// What survives a crash.
    pub disk: RestoredRaft,
    unsynced: Vec<PersistWrite>,
    fsync_scheduled: bool,
    /// The answers of the others to "what do you hold?", this life.
    peer_logs: BTreeMap<usize, PeerLog>,
    /// The term of the core whose actions are being carried out.
    pub core_term: Option<u64>,
    /// What the agreement check has seen of this node, this life.
    pub applied_seen: u64,
    pub decided_seen: tally_common::CommitIndex,
    /// When each peer was last reported unreachable.
    unreachable_at: BTreeMap<u64, u64>,
}

impl Replica {
    /// The process dies: the node and the unsynced writes go.
    pub fn crash(&mut self) {
        self.up = false;
        self.node = None;
        self.unsynced.clear();
        self.fsync_scheduled = false;
        self.peer_logs.clear();
        self.core_term = None;
        self.applied_seen = 0;
        self.decided_seen = tally_common::CommitIndex::ZERO;
        self.unreachable_at.clear();
    }

    /// Down, starting, or rejoining after losing its disk: it cannot stand
    /// in for a coordinator with a full log.
    pub fn impaired(&self) -> bool {
        self.node
            .as_ref()
            .is_none_or(|n| n.role() == Role::Rejoining)
    }
}

impl World {
    fn replica(&self, k: usize) -> &Replica {
        self.coordinators[k]
            .replica
            .as_ref()
            .expect("a replicated world")
    }

    fn replica_mut(&mut self, k: usize) -> &mut Replica {
        self.coordinators[k]
            .replica
            .as_mut()
            .expect("a replicated world")
    }

    /// Starts coordinator `k`'s process: on its disk if it holds anything,
    /// else once the others said what they hold.
    pub(crate) fn replica_start(&mut self, k: usize) {
        self.coordinators[k].life += 1;
        let r = self.replica_mut(k);
        r.crash();
        r.up = true;
        self.agreement_up_or_down();
        let r = self.replica_mut(k);
        if r.disk.is_empty() {
            self.trace(|| format!("coordinator {k} starts on an empty disk, asks the others"));
            self.ask_terms(k);
        } else {
            self.boot(k, Start::Restart);
        }
    }

    fn ask_terms(&mut self, k: usize) {
        for p in 0..self.coordinators.len() {
            if p != k {
                self.send(Node::Coordinator(k), Node::Coordinator(p), Msg::TermAsk);
            }
        }
        let life = self.coordinators[k].life;
        self.schedule(ASK_TERMS_MS, Ev::AskTerms { k, life });
    }

    pub(crate) fn replica_ask_again(&mut self, k: usize, life: u64) {
        if self.coordinator_life(k) == Some(life) && self.replica(k).node.is_none() {
            self.ask_terms(k);
        }
    }

    /// Another coordinator asks what this one holds: its term and whether
    /// it holds a log (nothing while it starts on an empty disk).
    pub(crate) fn replica_term_asked(&mut self, k: usize, p: usize) {
        let r = self.replica(k);
        let log = match &r.node {
            Some(node) => node.peer_log(),
            None => PeerLog::of(&r.disk),
        };
        self.send(
            Node::Coordinator(k),
            Node::Coordinator(p),
            Msg::TermIs { log },
        );
    }

    pub(crate) fn replica_term_answered(&mut self, k: usize, p: usize, log: PeerLog) {
        let others = self.coordinators.len() - 1;
        let r = self.replica_mut(k);
        if r.node.is_some() {
            return;
        }
        r.peer_logs.insert(p, log);
        let logs: Vec<PeerLog> = r.peer_logs.values().copied().collect();
        match tally_consensus::start(&r.disk, &logs, others) {
            Start::Wait => {}
            start => {
                if let Start::Rejoin { term } = start {
                    self.trace(|| format!("coordinator {k} lost its disk: rejoins at term {term}"));
                }
                self.boot(k, start)
            }
        }
    }

    /// Builds the node from the durable disk.
    fn boot(&mut self, k: usize, start: Start) {
        let raft = self.settings.raft.clone().expect("a replicated world");
        let config = ReplicatedConfig {
            node: NodeConfig {
                id: k as u64 + 1,
                voters: (1..=self.coordinators.len() as u64).collect(),
                heartbeat_ticks: raft.heartbeat_ticks,
                election_ticks: raft.election_ticks,
                seed: self.rng.next_u64(),
            },
            core: self.core_config(0),
            tick_ms: raft.tick_ms,
            snapshot_every: raft.snapshot_every,
        };
        let restored = self.replica(k).disk.clone();
        self.trace(|| {
            format!(
                "coordinator {k} starts: term {}, commit {}, {} entries, snapshot at {}{}",
                restored.hard_state.term,
                restored.hard_state.commit,
                restored.entries.len(),
                restored
                    .snapshot
                    .as_ref()
                    .map_or(0, |s| s.get_metadata().index),
                if restored.rejoining {
                    ", rejoining"
                } else {
                    ""
                }
            )
        });
        match ReplicatedCoordinator::new(config, restored, start, Millis(self.now)) {
            Ok((node, out)) => {
                self.replica_mut(k).node = Some(node);
                self.replica_carry(k, out);
            }
            Err(e) => {
                self.history
                    .violation("consensus", format!("coordinator {k} cannot start: {e}"));
            }
        }
    }

    /// Steps coordinator `k`'s node and carries out what it asks.
    pub(crate) fn replica_step(&mut self, k: usize, input: Input) {
        let now = Millis(self.now);
        if !matches!(input, Input::Tick | Input::Message(_) | Input::Persisted(_)) {
            self.trace(|| format!("coordinator {k} <- {input:?}"));
        }
        let Some(node) = self.replica_mut(k).node.as_mut() else {
            return;
        };
        let out = node.step(now, input);
        self.replica_carry(k, out);
    }

    fn replica_carry(&mut self, k: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(m) => self.raft_send(k, m),
                Output::Persist(w) => self.replica_persist(k, w),
                Output::Core(action) => self.coordinator_carry_out(k, action),
                Output::NotLeader(request) => self.answer_unknown(k, request, "not leader"),
                Output::ReadReady { request, view } => {
                    let origin = self.coordinators[k].origins.remove(&request);
                    if let Some(crate::coordinator::Origin::Read { to, read, tenant }) = origin {
                        self.start_read(k, to, read, tenant, view);
                    }
                }
                Output::Leading { term } => {
                    let life = self.coordinators[k].life;
                    self.trace(|| format!("coordinator {k} leads, term {term}"));
                    self.replica_mut(k).core_term = Some(term);
                    self.agreement_leading(k, life, term);
                }
                Output::Deposed => {
                    self.trace(|| format!("coordinator {k} is deposed"));
                    self.replica_mut(k).core_term = None;
                    self.forget_core(k);
                }
            }
        }
        self.schedule_tick(k);
        self.check_in_sync_set(k);
        self.check_agreement(k);
    }

    fn raft_send(&mut self, k: usize, m: Message) {
        let peer = m.to;
        let Some(p) = (peer as usize)
            .checked_sub(1)
            .filter(|p| *p < self.coordinators.len())
        else {
            return;
        };
        {
            self.trace(|| {
                format!(
                    "coordinator {k} -> {p}: {:?} term {} index {} log term {} commit {} entries {} reject {}",
                    m.get_msg_type(),
                    m.term,
                    m.index,
                    m.log_term,
                    m.commit,
                    m.entries.len(),
                    m.reject
                )
            });
        }
        let (from, to) = (Node::Coordinator(k), Node::Coordinator(p));
        if self.life_of(to).is_none() || self.net.partitioned(from, to) {
            // A refused connection: raft-rs probes the peer instead of
            // streaming to it.
            let now = self.now;
            let r = self.replica_mut(k);
            let due = r
                .unreachable_at
                .get(&peer)
                .is_none_or(|t| *t + UNREACHABLE_MS <= now);
            if due {
                r.unreachable_at.insert(peer, now);
                let life = self.coordinators[k].life;
                let after = self.rng.range(1, UNREACHABLE_MS);
                self.schedule(after, Ev::Unreachable { k, life, peer });
            }
            return;
        }
        let bytes = tally_consensus::encode_message(&m);
        self.send(from, to, Msg::Raft { bytes });
    }

    pub(crate) fn replica_unreachable(&mut self, k: usize, life: u64, peer: u64) {
        if self.coordinator_life(k) == Some(life) {
            self.replica_step(k, Input::Unreachable(peer));
        }
    }

    pub(crate) fn replica_message(&mut self, k: usize, p: usize, bytes: &[u8]) {
        match tally_consensus::decode_message(bytes) {
            Ok(m) => self.replica_step(k, Input::Message(m)),
            Err(e) => self.history.violation(
                "consensus",
                format!("coordinator {k} cannot decode a message from {p}: {e}"),
            ),
        }
    }

    /// A write goes to the unsynced buffer; a simulated fsync follows.
    fn replica_persist(&mut self, k: usize, write: PersistWrite) {
        let proposes = write.entries.iter().any(|e| !e.get_data().is_empty());
        let leads = self
            .replica(k)
            .node
            .as_ref()
            .is_some_and(|n| n.role() == Role::Leader);
        let life = self.coordinators[k].life;
        let r = self.replica_mut(k);
        r.unsynced.push(write);
        if r.fsync_scheduled {
            return;
        }
        r.fsync_scheduled = true;
        // Now and then a slow disk: a leader whose own fsync lags commits
        // with its followers' copies (raft-rs persists asynchronously).
        let delay = if self.rng.chance(0.05) {
            self.rng.range(30, 200)
        } else {
            self.rng.range(1, 8)
        };
        self.schedule(delay, Ev::CoordinatorFsync { k, life });
        // The worst moment for a leader to die: a decision proposed, not
        // yet (or only just) on its own disk, nobody told. Only when the
        // others are up: two down at once is a fault of its own.
        if proposes
            && leads
            && self.faults_on
            && self.coordinators_down() == 0
            && self.rng.chance(self.settings.crash_after_decision)
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

    /// The buffered writes are durable now: each is reported, in order.
    pub(crate) fn replica_fsync(&mut self, k: usize, life: u64) {
        if self.coordinator_life(k) != Some(life) {
            return;
        }
        let r = self.replica_mut(k);
        r.fsync_scheduled = false;
        let writes = std::mem::take(&mut r.unsynced);
        for w in &writes {
            r.disk.apply(w);
        }
        for w in writes {
            if self.coordinator_life(k) != Some(life) {
                return;
            }
            self.replica_step(k, Input::Persisted(w.number));
        }
    }

    /// Coordinators whose process is down.
    pub(crate) fn coordinators_down(&self) -> usize {
        (0..self.coordinators.len())
            .filter(|k| self.coordinator_life(*k).is_none())
            .count()
    }

    /// The coordinator whose core has the highest epoch: the leader, as
    /// far as the simulation can tell.
    pub(crate) fn leader(&self) -> Option<usize> {
        (0..self.coordinators.len())
            .filter_map(|k| self.core_of(k).map(|core| (core.config().epoch, k)))
            .max()
            .map(|(_, k)| k)
    }

    /// One line per coordinator, for failure reports.
    pub(crate) fn describe_replicas(&self) -> String {
        let mut s = String::new();
        for k in 0..self.coordinators.len() {
            let r = self.replica(k);
            let line = match (&r.node, r.up) {
                (_, false) => "down".to_string(),
                (None, true) => format!("starting, answers so far {:?}", r.peer_logs),
                (Some(n), true) => format!(
                    "{} term {} leader {:?} applied {} last index {} decided {} core {}",
                    n.role().as_str(),
                    n.term(),
                    n.leader(),
                    n.applied(),
                    n.last_index(),
                    n.state().decided,
                    n.core().is_some()
                ),
            };
            s.push_str(&format!(
                "  coordinator {k}: {line}; disk term {} commit {} entries {}{}\n",
                r.disk.hard_state.term,
                r.disk.hard_state.commit,
                r.disk.entries.len(),
                if r.disk.rejoining { " (rejoining)" } else { "" }
            ));
        }
        s
    }
}
