//! The coordinators' replicated decision log.
//!
//! With `--peers`, three (or five) coordinators keep the decision log, the
//! decided index and the membership with its in-sync set in a Raft log, so
//! losing one coordinator — its process, its machine or its disk — loses
//! nothing and stops writes only for an election. The pieces, each plain
//! code with no I/O, so the simulator runs exactly what production runs:
//!
//! - [`log_store`]: the Raft log in memory as raft-rs reads it, and what
//!   must be made durable ([`PersistWrite`]).
//! - [`node`]: raft-rs's `RawNode` with its ready loop turned into outputs,
//!   seeded election timeouts, and the rule for a node that lost its data.
//! - [`state`]: what the log adds up to ([`DecisionState`]), and the
//!   encoding of entries and snapshots.
//! - [`replicated`]: the Raft node with the coordinator's core on the
//!   leader ([`ReplicatedCoordinator`]): the type the binary's driver and
//!   the simulator step.
//!
//! docs/consensus.md says why raft-rs and not openraft, and argues the
//! safety of leadership changes and reads.

pub mod log_store;
pub mod node;
pub mod replicated;
pub mod state;

pub use log_store::{PersistWrite, RestoredRaft};
pub use node::{NodeConfig, Role};
pub use raft::prelude::{Entry, HardState, Message, MessageType, Snapshot};
pub use replicated::{Input, Output, ReplicatedConfig, ReplicatedCoordinator};
pub use state::DecisionState;

/// What went wrong in the consensus layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("raft: {0}")]
    Raft(raft::Error),
    #[error("this coordinator does not lead")]
    NotLeader,
    #[error("a log entry or snapshot does not decode: {0}")]
    Corrupt(postcard::Error),
    #[error("a raft message does not decode: {0}")]
    BadMessage(protobuf::ProtobufError),
    #[error("an empty coordinator must wait for its peers before it starts")]
    NotStarted,
}

/// How a coordinator with peers starts, from its own disk and what its
/// peers say of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Its disk holds something: go on from it.
    Restart,
    /// No coordinator holds a log: a new cluster. It starts at the highest
    /// term a peer reported (a campaign may have written one), as having
    /// voted for itself in it (see [`node`]).
    Fresh { term: u64 },
    /// Its disk is empty but a peer holds a log: it lost its data and must
    /// rejoin at this term (see [`node`]).
    Rejoin { term: u64 },
    /// Its disk is empty and not every peer has answered yet.
    Wait,
}

/// What another coordinator answers an empty one that asks how to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLog {
    /// Its current term.
    pub term: u64,
    /// It holds log entries or a snapshot.
    pub has_log: bool,
}

impl PeerLog {
    pub fn of(restored: &RestoredRaft) -> Self {
        PeerLog {
            term: restored.hard_state.term,
            has_log: restored.snapshot.is_some() || !restored.entries.is_empty(),
        }
    }
}

/// Decides how to start. `peers` holds the answers so far of the other
/// coordinators.
///
/// A new cluster needs every coordinator to answer once: an empty node
/// cannot tell "all new" from "I lost my data and the others are slow"
/// otherwise, and guessing "new" there is what could lose a decision.
/// Only a peer's log says that something was replicated: a peer with a
/// term and no log only campaigned, and taking that for a lost disk left
/// every empty node waiting to rejoin a cluster no one could lead.
pub fn start(own: &RestoredRaft, peers: &[PeerLog], other_peers: usize) -> Start {
    if !own.is_empty() {
        return Start::Restart;
    }
    let term = peers.iter().map(|p| p.term).max().unwrap_or(0);
    if peers.iter().any(|p| p.has_log) {
        Start::Rejoin { term }
    } else if peers.len() >= other_peers {
        Start::Fresh { term }
    } else {
        Start::Wait
    }
}

/// A Raft message as it travels between coordinators.
pub fn encode_message(message: &Message) -> Vec<u8> {
    protobuf::Message::write_to_bytes(message).expect("encoding to a Vec cannot fail")
}

pub fn decode_message(bytes: &[u8]) -> Result<Message, Error> {
    protobuf::Message::parse_from_bytes(bytes).map_err(Error::BadMessage)
}
