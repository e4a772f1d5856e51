//! The simulated network: who talks to whom, the messages they exchange, and
//! the faults a message meets on the way (loss, duplication, delay that
//! reorders, partitions).
//!
//! Calls are HTTP-like: a request names a call id, the answer carries it
//! back, and the caller gives up at its own timeout. A request whose
//! receiver restarted meanwhile is lost (its connection is gone); an answer
//! reaches only the life of the caller that asked. Call, attempt and read
//! ids come from one counter of the world, so a coordinator that proxies a
//! request to the leader finds whom to relay the answer to by its id alone.

use std::collections::BTreeSet;
use std::fmt;
use tally_common::api::{CatchUpRequest, CommitRequest, ExportEntry, JoinPlan, Outcome};
use tally_common::coordinator::{CommitAnswer, Holdings, JoinRefused, Vote, WriteRefused};
use tally_common::membership::HealthReport;
use tally_common::{CommitIndex, CounterId, Incarnation, Item, TxnId};

/// A process or a client. Coordinators are numbered from 0; a world with
/// one coordinator has only `Coordinator(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Coordinator(usize),
    Counter(usize),
    Client(usize),
}

/// A message on the wire.
#[derive(Debug, Clone)]
pub enum Msg {
    // The coordinator's calls to a counter.
    Prepare {
        call: u64,
        txn: TxnId,
        items: Vec<Item>,
        commits: Vec<CommitRequest>,
    },
    Commit {
        call: u64,
        commit: CommitRequest,
    },
    Abort {
        txn: TxnId,
    },
    Status {
        call: u64,
        epoch: u64,
    },
    Count {
        call: u64,
        tenant: String,
        fence: CommitIndex,
        epoch: u64,
    },
    CatchUp {
        request: CatchUpRequest,
    },
    // A counter's calls to the coordinator. Registrations and reports name
    // the counter, as the real ones do: a coordinator that does not lead
    // passes them on, so the sender is not always the counter.
    Register {
        counter: usize,
        call: u64,
        incarnation: Incarnation,
        applied: CommitIndex,
        holds: Holdings,
    },
    CaughtUp {
        counter: usize,
        call: u64,
        incarnation: Incarnation,
        registration: u64,
        applied: CommitIndex,
    },
    AskOutcome {
        call: u64,
        txn: TxnId,
    },
    // A joining counter's call to a peer.
    Export {
        call: u64,
        since: CommitIndex,
        until: CommitIndex,
    },
    // Between coordinators: a Raft message as it travels (encoded), and
    // the question an empty coordinator asks before it starts.
    Raft {
        bytes: Vec<u8>,
    },
    TermAsk,
    TermIs {
        log: tally_consensus::PeerLog,
    },
    // A client's calls to the coordinator.
    Write {
        attempt: u64,
        items: Vec<Item>,
    },
    Read {
        read: u64,
        tenant: String,
    },
    // Answers.
    Reply {
        call: u64,
        body: Reply,
    },
    WriteAnswer {
        attempt: u64,
        result: Result<(), WriteError>,
    },
    ReadAnswer {
        read: u64,
        result: Result<ReadResult, String>,
    },
}

/// The answer to a call.
#[derive(Debug, Clone)]
pub enum Reply {
    Vote(Result<Vote, String>),
    Commit(CommitAnswer),
    Health(HealthReport),
    /// A fenced read: who answered and the tenant's item ids.
    Count(Result<(CounterId, BTreeSet<String>), String>),
    Joined(Result<JoinPlan, JoinRefused>),
    Outcome(Outcome),
    Export(Result<ExportReply, String>),
    /// The coordinator asked does not lead (or lost its leadership while
    /// the call waited): the call failed and goes to another coordinator.
    NotLeader,
}

/// Why a write attempt was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The core refused it: nothing of it is counted.
    Refused(WriteRefused),
    /// No core answered for certain (the coordinator asked does not lead,
    /// or its core was deposed while the write waited): it may have been
    /// applied or not.
    Unknown(&'static str),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Refused(r) => write!(f, "{r:?}"),
            WriteError::Unknown(why) => write!(f, "outcome unknown ({why})"),
        }
    }
}

/// What a peer's export stream delivered: its disk's incarnation, the
/// entries, and whether the end marker arrived (a cut stream has none).
#[derive(Debug, Clone)]
pub struct ExportReply {
    pub incarnation: Incarnation,
    pub entries: Vec<ExportEntry>,
    pub end: bool,
}

/// A read answered through the coordinator, with what the checker needs to
/// explain it.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub ids: BTreeSet<String>,
    pub counter: CounterId,
    pub fence: CommitIndex,
    pub epoch: u64,
}

/// The network's weather: partitions and how unreliable it is now.
#[derive(Debug, Default)]
pub struct Network {
    /// Processes cut off from the rest (clients stay with the rest).
    pub cut: BTreeSet<Node>,
    /// Links that pass nothing, each as (lower, higher): a coordinator cut
    /// from the other coordinators but not from the counters, or the
    /// reverse.
    pub blocked: BTreeSet<(Node, Node)>,
    pub loss: f64,
    pub dup: f64,
    /// Extra delay, ms, while the network is slow.
    pub slow: u64,
}

impl Network {
    fn side(&self, node: Node) -> bool {
        match node {
            Node::Client(_) => false,
            other => self.cut.contains(&other),
        }
    }

    /// A message between these two cannot pass now.
    pub fn partitioned(&self, a: Node, b: Node) -> bool {
        self.side(a) != self.side(b)
            || (!self.blocked.is_empty() && self.blocked.contains(&(a.min(b), a.max(b))))
    }

    /// Blocks the link between `a` and `b`.
    pub fn block(&mut self, a: Node, b: Node) {
        self.blocked.insert((a.min(b), a.max(b)));
    }
}

/// A counter's URL and id, from its index.
pub fn counter_url(i: usize) -> String {
    format!("sim://c{i}")
}

pub fn counter_id(i: usize) -> CounterId {
    CounterId(format!("c{i}"))
}

/// The index of the counter at `url` or with id `id`.
pub fn counter_index(name: &str) -> Option<usize> {
    let digits = name.rsplit('c').next()?;
    digits.parse().ok()
}
