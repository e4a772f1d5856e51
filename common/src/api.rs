//! Request and response bodies of every HTTP endpoint, public and internal.
//! Both sides and `simulate` use these types, so nobody formats JSON by hand.
//! With the `openapi` feature the public ones also derive `ToSchema`, so the
//! coordinator's OpenAPI document describes exactly what is serialised.

use crate::{CommitIndex, CounterId, Error, Incarnation, Item, TxnId};
use serde::{Deserialize, Serialize};

/// Header that carries the cluster token on internal calls.
pub const TOKEN_HEADER: &str = "x-tally-token";

/// Query parameter of a counter's count read that carries the read fence.
pub const FENCE_PARAM: &str = "fence";

/// Query parameter of the coordinator's reads and health checks that names
/// its epoch: a counter answers fenced reads only for the coordinator it
/// registered with, and registers again when a new one calls.
pub const EPOCH_PARAM: &str = "epoch";

/// Header of an export stream: the exporting counter's incarnation, so an
/// importer resumes a cut copy only from the same life of the same disk.
pub const INCARNATION_HEADER: &str = "x-tally-incarnation";

/// Header of an export stream: how many distinct items the exporting
/// counter holds, for the importer's estimate of the copy's size.
pub const ITEMS_HEADER: &str = "x-tally-items";

/// `{"message": "..."}`: the success answer of `POST /items` and every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    /// `Success`, or what is wrong.
    #[cfg_attr(feature = "openapi", schema(example = "Success"))]
    pub message: String,
}

impl Message {
    pub fn new(message: impl Into<String>) -> Self {
        Message {
            message: message.into(),
        }
    }

    pub fn success() -> Self {
        Message::new("Success")
    }
}

/// Answer of `GET /items/{tenant}/count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Count {
    /// Distinct ids ever added for the tenant.
    pub count: u64,
}

/// Answer of a counter's own `GET /items/{tenant}/count`, which an
/// operator reads to compare replicas. The coordinator never serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaCount {
    /// Distinct ids this replica holds for the tenant.
    pub count: u64,
    /// The counter holds data copied from a peer above its applied index
    /// (it catches up a slice at a time), so the count may include some of
    /// one request's items and not the others. Counts through the
    /// coordinator are never partial.
    pub partial: bool,
}

/// A counter's place in the cluster, as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CounterState {
    /// Registered and receiving new transactions, still fetching older ones.
    Joining,
    /// Answering health checks.
    Live,
    /// Failed its last health check, fewer than `--dead-after` in a row.
    Suspect,
    /// Failed `--dead-after` checks in a row: not asked to prepare, not read.
    Dead,
}

impl CounterState {
    /// The name on the wire, in metrics labels and in messages.
    pub fn name(self) -> &'static str {
        match self {
            CounterState::Joining => "joining",
            CounterState::Live => "live",
            CounterState::Suspect => "suspect",
            CounterState::Dead => "dead",
        }
    }
}

/// One counter in `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CounterView {
    pub id: CounterId,
    /// Where the coordinator reaches the counter (its `--advertise` URL).
    pub url: String,
    pub state: CounterState,
    /// Holds every committed transaction, so it may answer reads.
    pub in_sync: bool,
    /// Highest commit index up to which the counter reported holding everything.
    pub applied_index: CommitIndex,
    /// How many decided transactions the counter is behind.
    pub lag: u64,
    /// Milliseconds since the counter last answered, if it ever did.
    pub last_seen_ms_ago: Option<u64>,
    /// Health checks failed in a row.
    pub failed_checks: u32,
    /// The life of the counter's data directory, once known.
    #[serde(default)]
    pub incarnation: Option<Incarnation>,
    /// Registered with this coordinator since it started. Until then the
    /// counter neither votes nor answers reads, whatever `in_sync` says.
    #[serde(default)]
    pub registered: bool,
    /// The copy in progress, while the counter catches up from a peer.
    #[serde(default)]
    pub catch_up: Option<CopyProgress>,
}

/// How far a joining counter's copy from a peer has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CopyProgress {
    /// The peer being copied from.
    pub peer: String,
    /// Items received in this copy so far.
    pub copied: u64,
    /// Estimated items the copy brings in all (the peer's items less the
    /// counter's own when the copy began).
    pub total: u64,
    /// Items per second since the copy began.
    pub items_per_sec: u64,
    /// Estimated seconds left, once a rate is known.
    pub eta_secs: Option<u64>,
}

/// Whether the cluster can serve, and if not, why: which counters hold
/// what, and what would fix it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Availability {
    /// `ok` when reads and writes can be served, `degraded` when only reads
    /// can, `stalled` when neither can.
    #[cfg_attr(feature = "openapi", schema(example = "ok"))]
    pub status: String,
    /// Why the cluster cannot serve, naming counters and indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Availability {
    pub fn ok() -> Self {
        Availability {
            status: "ok".into(),
            problem: None,
        }
    }

    /// Reads are served, writes abort.
    pub fn degraded(problem: String) -> Self {
        Availability {
            status: "degraded".into(),
            problem: Some(problem),
        }
    }

    /// Neither reads nor writes are served.
    pub fn stalled(problem: String) -> Self {
        Availability {
            status: "stalled".into(),
            problem: Some(problem),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// What a coordinator is in the group of coordinators that replicate the
/// decision log. A single coordinator is always the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CoordinatorRole {
    /// Decides transactions and answers the counters; the others forward
    /// to it.
    Leader,
    /// Holds a copy of the decision log and forwards to the leader.
    Follower,
    /// Standing for election: there is no leader it knows of.
    Candidate,
    /// The coordinator answering could not reach this one.
    Unreachable,
}

impl CoordinatorRole {
    /// The name on the wire, in metrics labels and in messages.
    pub fn name(self) -> &'static str {
        match self {
            CoordinatorRole::Leader => "leader",
            CoordinatorRole::Follower => "follower",
            CoordinatorRole::Candidate => "candidate",
            CoordinatorRole::Unreachable => "unreachable",
        }
    }
}

/// One coordinator in `GET /cluster`, as the answering coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoordinatorStatus {
    /// The coordinator's `--advertise` URL (its listen address when it runs
    /// alone without one).
    pub url: String,
    pub role: CoordinatorRole,
    /// The last entry of the decision log this coordinator holds. A single
    /// coordinator reports its decided index.
    pub log_index: u64,
    /// How many log entries it is behind the leader; 0 for the leader.
    pub lag: u64,
}

/// `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    /// The URL of the coordinator that leads, if one does right now.
    #[serde(default)]
    pub leader: Option<String>,
    /// Every coordinator, in `--peers` order (one entry when it runs alone).
    #[serde(default)]
    pub coordinators: Vec<CoordinatorStatus>,
    pub counters: Vec<CounterView>,
    /// The highest commit index the coordinator has durably decided.
    pub decided_index: CommitIndex,
    /// Counters in the in-sync set.
    pub in_sync: usize,
    /// In-sync counters a transaction needs to commit (`--min-insync`).
    pub min_insync: usize,
    /// Whether the cluster can serve, and if not, why.
    #[serde(default)]
    pub availability: Availability,
}

/// `GET /health`: whether the coordinator can serve reads and writes.
/// `in_sync` tells an operator how many counters hold everything decided
/// (writes need `--min-insync` of them); `problem` says why it cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`; `degraded` when writes abort; `stalled` when no counter can
    /// serve (see `problem`).
    #[cfg_attr(feature = "openapi", schema(example = "ok"))]
    pub status: String,
    /// Counters in the in-sync set.
    pub in_sync: usize,
    /// Why the cluster cannot serve, naming counters and indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// This coordinator's role: a follower forwards writes and counters'
    /// calls to the leader.
    pub role: CoordinatorRole,
}

impl Health {
    pub fn new(in_sync: usize, availability: Availability, role: CoordinatorRole) -> Self {
        Health {
            status: availability.status,
            in_sync,
            problem: availability.problem,
            role,
        }
    }
}

// ---- internal: coordinator -> counter ----

/// Content type of a [`PrepareRequest`] body in postcard, which is how the
/// coordinator sends it: for a 1,000-item transaction, decoding JSON with
/// axum's extractor was about a fifth of a counter's CPU. A counter still
/// takes JSON (any other content type) from people and older coordinators.
pub const PREPARE_CONTENT_TYPE: &str = "application/vnd.tally.prepare+postcard";

/// Phase one: make these items durable as a prepared transaction, then vote.
///
/// Every field is always serialised: postcard is not self-describing, so
/// a field skipped when empty would shift everything after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareRequest {
    pub txn: TxnId,
    pub items: Vec<Item>,
    /// Commits decided since the previous prepare went out. Under load the
    /// next prepare follows a decision within a millisecond, so carrying
    /// them here saves each counter a separate commit call and storage
    /// write; a counter applies those it has prepared and ignores the rest.
    #[serde(default)]
    pub commits: Vec<CommitRequest>,
}

impl PrepareRequest {
    /// The body for [`PREPARE_CONTENT_TYPE`].
    pub fn to_postcard(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a prepare request always serialises")
    }

    /// Reads a body of `content_type`: postcard for [`PREPARE_CONTENT_TYPE`],
    /// JSON otherwise.
    pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<Self, Error> {
        let malformed = |encoding, problem: String| Error::MalformedPrepare { encoding, problem };
        if content_type == Some(PREPARE_CONTENT_TYPE) {
            postcard::from_bytes(body).map_err(|e| malformed("postcard", e.to_string()))
        } else {
            serde_json::from_slice(body).map_err(|e| malformed("JSON", e.to_string()))
        }
    }
}

/// Phase two, commit: apply the prepared transaction at this index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    pub txn: TxnId,
    pub index: CommitIndex,
}

/// Phase two, abort: forget the prepared transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRequest {
    pub txn: TxnId,
}

/// A counter's answer to prepare, commit, abort and health checks alike, so
/// the coordinator learns a counter's progress from every exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterStatus {
    pub id: CounterId,
    /// The life of this counter's data directory.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// The coordinator epoch this counter registered with; 0 before it has.
    #[serde(default)]
    pub registered_epoch: u64,
    pub applied_index: CommitIndex,
    pub catching_up: bool,
    pub prepared: usize,
    /// In a prepare answer: the transaction this vote is for. A yes that
    /// names another transaction (a confused or replayed answer) is no vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voted: Option<TxnId>,
    /// In a prepare answer: the carried commits now applied here. In a
    /// commit answer: the index just applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub committed: Vec<CommitIndex>,
    /// The copy from a peer in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyProgress>,
}

/// A counter's answer to the coordinator's fenced read: the count and who
/// answered, so an answer from another process at the same address (a
/// counter restarted under another id) is never taken for this one's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedCount {
    pub id: CounterId,
    pub count: u64,
}

/// The operator's last resort when every complete copy is gone: make the
/// counter that holds the most the new complete copy, giving up the
/// commits it lacks (`POST /internal/promote` on the coordinator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub counter: CounterId,
    /// Must be true: the caller acknowledges that commits are lost.
    pub accept_loss: bool,
}

/// What a forced promotion gave up: the commit indexes the promoted
/// counter did not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteReport {
    pub counter: CounterId,
    /// Everything at or below this was held by the promoted counter.
    pub held_through: CommitIndex,
    /// The decided index; `(held_through, decided]` is lost.
    pub decided: CommitIndex,
}

/// The coordinator tells a counter it promoted by force to take every
/// index up to `through` as held, so that reads fenced there can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptLossRequest {
    pub through: CommitIndex,
}

/// Tells a joining counter to fetch what it misses up to `until` from peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpRequest {
    pub until: CommitIndex,
    pub peers: Vec<String>,
    /// The registration the counter's catch-up report must name
    /// (`JoinPlan::registration`).
    #[serde(default)]
    pub registration: u64,
}

/// The items that the transaction at `index` added to the exporting
/// replica (its first sight of each; the others it held already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEntry {
    pub index: CommitIndex,
    pub items: Vec<Item>,
}

/// One frame of a counter's export stream from `since`: every entry above
/// `since` in index order (also those above `until`), then `End`. Only a
/// stream that reached `End` proves that the importer now holds every
/// transaction in `(since, until]` (docs/protocol.md, "Catch-up", says why
/// entries above `until` are sent too), so a cut-off stream marks nothing
/// as applied; the importer may resume it from the same peer. Sent as postcard, not JSON
/// (`export_stream`), so the enum is externally tagged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportFrame {
    Entry(ExportEntry),
    End { through: CommitIndex },
}

// ---- internal: counter -> coordinator ----

/// A counter announces itself at start-up (and after it was forgotten).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub id: CounterId,
    pub url: String,
    #[serde(default)]
    pub incarnation: Incarnation,
    pub applied_index: CommitIndex,
    /// The transactions it holds prepared: with `applied_above`, what it
    /// holds of the commits above `applied_index`.
    #[serde(default)]
    pub prepared: Vec<TxnId>,
    /// Commit indexes above `applied_index` applied out of order.
    #[serde(default)]
    pub applied_above: Vec<CommitIndex>,
}

/// A counter reports that it has fetched everything it was told to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtUpRequest {
    pub id: CounterId,
    #[serde(default)]
    pub incarnation: Incarnation,
    /// The registration this report follows (`JoinPlan::registration`).
    #[serde(default)]
    pub registration: u64,
    pub applied_index: CommitIndex,
}

/// What a counter must do to become in sync: nothing if `in_sync`, otherwise
/// hold everything up to `until`, fetching it from `peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinPlan {
    pub in_sync: bool,
    pub until: CommitIndex,
    pub peers: Vec<String>,
    /// The epoch of the coordinator that answered: the counter votes only on
    /// transactions of this epoch, and answers reads only for it.
    #[serde(default)]
    pub epoch: u64,
    /// Names this registration: the catch-up report echoes it, so a report
    /// sent before the counter registered again counts for nothing.
    #[serde(default)]
    pub registration: u64,
}

/// The coordinator's logged outcome of a transaction, asked for by a counter
/// that restarted with it prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Committed {
        index: CommitIndex,
    },
    Aborted,
    /// Still being decided: ask again later.
    Pending,
}
