//! Three (or five) coordinators with one decision log: the binary's side of
//! `tally_consensus`. The consensus itself — Raft, the replicated state, the
//! core on the leader — is plain code in that crate, stepped by the driver
//! like the single coordinator's core; this module holds what touches the
//! world: the Raft log on disk ([`disk`]), the messages between
//! coordinators ([`transport`]). Requests a follower passes to the leader
//! are `forward.rs`'s.
//!
//! A coordinator with peers starts in [`Phase::Starting`] when its disk is
//! empty: it cannot tell a new cluster from having lost its data until its
//! peers say what they hold (`GET /internal/raft/status`), and guessing
//! wrong could elect a leader without a committed decision.

pub mod disk;
pub mod transport;

use std::collections::BTreeMap;
use tally_common::api::{CoordinatorRole, CoordinatorStatus};
use tally_common::coordinator::{CoordinatorCore, CoreConfig, Millis};
use tally_common::CommitIndex;
use tally_consensus::{
    Input, NodeConfig, Output, PeerLog, ReplicatedConfig, ReplicatedCoordinator, RestoredRaft,
    Role, Start,
};

/// One Raft tick. Heartbeats go every 2 ticks (100 ms); a follower that
/// hears nothing for 6 to 12 ticks (300 to 600 ms) starts an election.
/// Failover is about one election timeout plus a round trip and the new
/// leader's first health round (docs/benchmarks.md measures it); shorter
/// timeouts made elections start during fsync stalls on a loaded machine.
pub const TICK_MS: u64 = 50;
const HEARTBEAT_TICKS: usize = 2;
const ELECTION_TICKS: (usize, usize) = (6, 12);
/// Entries applied between snapshots: a snapshot is the decision state
/// (small: decisions are trimmed once every in-sync counter has them), so
/// taking one is cheap and keeps a restart's replay short.
const SNAPSHOT_EVERY: u64 = 1024;

pub use crate::config::ClusterPeers as Peers;

/// Who leads, as a request arriving here and `GET /cluster` need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// This coordinator's own role.
    pub role: CoordinatorRole,
    /// The Raft term; 0 for a coordinator alone.
    pub term: u64,
    /// The leader's URL, if one is known (this coordinator's own when it
    /// leads).
    pub leader: Option<String>,
    /// This coordinator leads and its core is serving.
    pub serving: bool,
    /// Every coordinator as this one sees it, in `--peers` order.
    pub coordinators: Vec<CoordinatorStatus>,
    /// This coordinator holds Raft log entries or a snapshot (what a peer
    /// starting on an empty disk asks).
    pub has_log: bool,
    /// It lost its data and has not caught up yet: it may not vote.
    pub rejoining: bool,
}

impl Leadership {
    /// A coordinator alone: it leads its group of one, and its log is its
    /// decision log, up to its decided index.
    pub fn single(peers: &Peers, decided: CommitIndex) -> Self {
        let me = peers.my_url().to_string();
        Leadership {
            role: CoordinatorRole::Leader,
            term: 0,
            leader: Some(me.clone()),
            serving: true,
            coordinators: vec![CoordinatorStatus {
                url: me,
                role: CoordinatorRole::Leader,
                log_index: decided.0,
                lag: 0,
            }],
            has_log: false,
            rejoining: false,
        }
    }
}

/// A peer not heard from for this long is reported unreachable: ten
/// heartbeats.
const HEARD_WITHIN_MS: u64 = 1000;

pub enum Phase {
    /// Empty disk: waiting to hear every peer's term.
    Starting {
        restored: Box<RestoredRaft>,
        logs: BTreeMap<u64, PeerLog>,
        core: Box<CoreConfig>,
    },
    Running(Box<ReplicatedCoordinator>),
}

pub struct Replica {
    pub peers: Peers,
    pub phase: Phase,
    /// When each peer's last Raft message arrived, by Raft id.
    heard: BTreeMap<u64, Millis>,
    now: Millis,
}

impl Replica {
    pub fn new(
        peers: Peers,
        core: CoreConfig,
        restored: RestoredRaft,
        now: Millis,
    ) -> Result<(Self, Vec<Output>), crate::Error> {
        let mut replica = Replica {
            phase: Phase::Starting {
                restored: Box::new(restored),
                logs: BTreeMap::new(),
                core: Box::new(core),
            },
            peers,
            heard: BTreeMap::new(),
            now,
        };
        let out = replica.try_start(now)?;
        Ok((replica, out))
    }

    /// A peer's answer to the status question, while starting.
    pub fn peer_log(
        &mut self,
        peer: u64,
        log: PeerLog,
        now: Millis,
    ) -> Result<Vec<Output>, crate::Error> {
        if let Phase::Starting { logs, .. } = &mut self.phase {
            logs.insert(peer, log);
        }
        self.try_start(now)
    }

    fn try_start(&mut self, now: Millis) -> Result<Vec<Output>, crate::Error> {
        let Phase::Starting {
            restored,
            logs,
            core,
        } = &self.phase
        else {
            return Ok(Vec::new());
        };
        let heard: Vec<PeerLog> = logs.values().copied().collect();
        let start = tally_consensus::start(restored, &heard, self.peers.peers.len() - 1);
        match start {
            Start::Wait => return Ok(Vec::new()),
            Start::Restart | Start::Fresh { .. } => {}
            Start::Rejoin { term } => tracing::warn!(
                term,
                "this coordinator's data directory is empty but its peers' are not: \
                 rejoining (it votes again once it holds what the leader has committed)"
            ),
        }
        let config = ReplicatedConfig {
            node: NodeConfig {
                id: self.peers.raft_id(),
                voters: (1..=self.peers.peers.len() as u64).collect(),
                heartbeat_ticks: HEARTBEAT_TICKS,
                election_ticks: ELECTION_TICKS,
                seed: seed(),
            },
            core: (**core).clone(),
            tick_ms: TICK_MS,
            snapshot_every: SNAPSHOT_EVERY,
        };
        let (node, out) = ReplicatedCoordinator::new(config, (**restored).clone(), start, now)
            .map_err(|e| crate::Error::Io(format!("cannot start the raft node: {e}")))?;
        self.phase = Phase::Running(Box::new(node));
        Ok(out)
    }

    pub fn starting(&self) -> bool {
        matches!(self.phase, Phase::Starting { .. })
    }

    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Output> {
        self.now = self.now.max(now);
        if let Input::Message(m) = &input {
            self.heard.insert(m.from, now);
        }
        match &mut self.phase {
            Phase::Running(node) => node.step(now, input),
            Phase::Starting { .. } => refuse(input),
        }
    }

    pub fn next_wakeup(&self, now: Millis) -> Millis {
        match &self.phase {
            Phase::Running(node) => node.next_wakeup(),
            Phase::Starting { .. } => Millis(now.0 + 200),
        }
    }

    pub fn core(&self) -> Option<&CoordinatorCore> {
        match &self.phase {
            Phase::Running(node) => node.core(),
            Phase::Starting { .. } => None,
        }
    }

    /// The current term; 0 while this coordinator holds nothing.
    pub fn term(&self) -> u64 {
        match &self.phase {
            Phase::Running(node) => node.term(),
            Phase::Starting { restored, .. } => restored.hard_state.term,
        }
    }

    /// What `GET /internal/raft/status` tells a starting peer.
    pub fn log(&self) -> PeerLog {
        match &self.phase {
            Phase::Running(node) => node.peer_log(),
            Phase::Starting { restored, .. } => PeerLog::of(restored),
        }
    }

    pub fn leadership(&self) -> Leadership {
        let Phase::Running(node) = &self.phase else {
            return Leadership {
                role: CoordinatorRole::Candidate,
                term: self.term(),
                leader: None,
                serving: false,
                coordinators: self
                    .peers
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, url)| CoordinatorStatus {
                        url: url.clone(),
                        role: if i == self.peers.me {
                            CoordinatorRole::Candidate
                        } else {
                            CoordinatorRole::Unreachable
                        },
                        log_index: 0,
                        lag: 0,
                    })
                    .collect(),
                has_log: self.log().has_log,
                rejoining: false,
            };
        };
        let role = match node.role() {
            Role::Leader => CoordinatorRole::Leader,
            // A rejoining coordinator follows the leader; it only may not
            // vote yet.
            Role::Follower | Role::Rejoining => CoordinatorRole::Follower,
            Role::Candidate => CoordinatorRole::Candidate,
        };
        let leader = node.leader();
        let last = node.last_index();
        let matched: BTreeMap<u64, u64> = node.matched().into_iter().collect();
        let coordinators = self
            .peers
            .peers
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let id = i as u64 + 1;
                if id == self.peers.raft_id() {
                    return CoordinatorStatus {
                        url: url.clone(),
                        role,
                        log_index: last,
                        lag: 0,
                    };
                }
                let heard = self
                    .heard
                    .get(&id)
                    .is_some_and(|at| self.now.0 < at.0 + HEARD_WITHIN_MS);
                let role = match (heard, leader == Some(id)) {
                    (false, _) => CoordinatorRole::Unreachable,
                    (true, true) => CoordinatorRole::Leader,
                    (true, false) if role == CoordinatorRole::Leader => CoordinatorRole::Follower,
                    // Only the leader knows how far the others are.
                    (true, false) => CoordinatorRole::Follower,
                };
                let log_index = matched.get(&id).copied().unwrap_or(0);
                CoordinatorStatus {
                    url: url.clone(),
                    role,
                    log_index,
                    lag: if matched.is_empty() {
                        0
                    } else {
                        last.saturating_sub(log_index)
                    },
                }
            })
            .collect();
        Leadership {
            role,
            term: node.term(),
            leader: leader
                .and_then(|id| self.peers.url_of(id))
                .map(str::to_string),
            serving: node.role() == Role::Leader && node.core().is_some(),
            coordinators,
            has_log: self.log().has_log,
            rejoining: node.role() == Role::Rejoining,
        }
    }
}

/// While starting, every request is refused as "not leader".
fn refuse(input: Input) -> Vec<Output> {
    use tally_common::coordinator::Event;
    match input {
        Input::ReadIndex(request) => vec![Output::NotLeader(request)],
        Input::Core(
            Event::Write { request, .. }
            | Event::Register { request, .. }
            | Event::CaughtUp { request, .. }
            | Event::AskOutcome { request, .. }
            | Event::Promote { request, .. },
        ) => vec![Output::NotLeader(request)],
        _ => Vec::new(),
    }
}

/// Election timeouts only need to differ between coordinators; the
/// process id and the clock are different enough.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_alone_leads_with_the_whole_log() {
        let alone = Peers::single("http://127.0.0.1:8080".into());
        let view = Leadership::single(&alone, CommitIndex(42));
        assert_eq!(view.role, CoordinatorRole::Leader);
        assert!(view.serving);
        assert_eq!(view.leader.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            view.coordinators,
            [CoordinatorStatus {
                url: "http://127.0.0.1:8080".into(),
                role: CoordinatorRole::Leader,
                log_index: 42,
                lag: 0,
            }]
        );
    }
}
