//! Durable state of one replica in fjall: the items, a count per tenant, the
//! prepared transactions, and a log of what each commit added.
//!
//! fjall rather than redb because of what `bench/engines` measured on this
//! very write path (docs/storage-engine.md): fjall 3 commits the counter's
//! batches 2.2–3× faster than redb 4 (100-item batches: 181k against 60k
//! items/s; 1,000-item batches: 213k against 96k), with about a third of the
//! p99 commit latency and 30–40× fewer bytes written per commit. Item ids are
//! random, so redb's copy-on-write B-tree rewrites a leaf-to-root path for
//! nearly every new item, while fjall appends the batch to its journal. Count
//! lookups were a tie. The price is a directory of files and background flush
//! and compaction threads that share the replica's CPUs.
//!
//! Every call of [`Store::write`] is one atomic fjall write batch, committed
//! with `PersistMode::SyncAll`, however many prepares, commits and imports it
//! carries: that is where group commit pays off on the counter side
//! (`batch`). fjall's default durability (`Buffer`) would hand a batch to
//! the OS only, and a vote or an acknowledged commit must survive power
//! loss. A failed journal write or fsync poisons the database: fjall then
//! refuses every later write, so the replica fails its writes rather than
//! acknowledge what may be lost, until a restart replays the journal.
//!
//! One file per concern:
//! * `keys`: how items and indexes become fjall keys and values.
//! * `open`: opening the database, the directory's incarnation, and what
//!   [`Store::recover`] reads back after a restart.
//! * `batch`: one storage write, built from the operations of a writer batch
//!   as the 2PC participant decides them.
//! * `dedup`: whether an item is new to this replica ([`SeenItems`]).
//! * `export`: the log a peer copies during catch-up.
//!
//! The files live in `TALLY_DATA_DIR/fjall/`.
//!
//! Keyspaces:
//! * `items`: (tenant, id) -> (). Whether the key is here or among the keys
//!   not indexed yet tells whether the item is new ([`SeenItems`]). Keys
//!   reach `items` only by ingestion of sorted batches, never through the
//!   write batch (`dedup::unindexed` says why), and level 0 may hold more
//!   tables than fjall's default (`dedup::ITEMS_L0_TABLES`).
//! * `counts`: tenant -> number of distinct ids, so a read is one lookup.
//! * `prepared`: txn id -> the transaction's items, until commit or abort.
//! * `commits`: commit index -> the items first seen here in that commit
//!   (commits that added nothing new have no entry). Catch-up streams this
//!   keyspace to a peer.
//! * `unindexed`: commit index -> (), for each entry of `commits` whose
//!   items' keys may not be in `items` yet. Written with the entry, removed
//!   once they were ingested; start-up reloads the keys from these entries.
//! * `applied_above`: commit indexes applied beyond the gap-free prefix
//!   (commits arrive out of order); emptied as the prefix advances.
//! * `meta`: the gap-free applied index, under `applied`, and the data
//!   directory's incarnation, under `incarnation`: a random number made
//!   when the directory is first opened, so that the coordinator can tell
//!   a counter that lost its disk from the member it was.
//!
//! fjall keys and values are bytes, ordered bytewise. u64 keys and values are
//! big-endian so that byte order is numeric order: export scans `commits` by
//! index range and pruning `applied_above` drops a prefix. An item key is the
//! tenant's length (u16, big-endian), the tenant, then the id; without the
//! length, ("ab", "c") and ("a", "bc") would share a key.

mod batch;
mod dedup;
mod export;
mod keys;
mod open;
#[cfg(test)]
mod testing;

use crate::error::Error;
use dedup::SeenItems;
use fjall::{Database, Keyspace};
use std::collections::HashMap;
use std::sync::Mutex;
use tally_common::api::{ExportEntry, Outcome};
use tally_common::applied::AppliedSet;
use tally_common::participant::{Event, Participant};
use tally_common::{CommitIndex, Incarnation, Item, Millis, TxnId};

/// One change to make durable.
#[derive(Debug)]
pub enum WriteOp {
    Prepare {
        txn: TxnId,
        items: Vec<Item>,
    },
    Commit {
        txn: TxnId,
        index: CommitIndex,
    },
    Abort {
        txn: TxnId,
    },
    /// The coordinator's answer about a transaction in doubt.
    Outcome {
        txn: TxnId,
        outcome: Outcome,
    },
    /// Items copied from a peer. `through` is set once the peer's stream
    /// ended complete: then every index in `(since, through]` is applied.
    Import {
        entries: Vec<ExportEntry>,
        through: Option<(CommitIndex, CommitIndex)>,
    },
}

impl WriteOp {
    /// What this operation, arriving at `now`, is to the 2PC participant,
    /// which decides what to persist and answer; the items are this
    /// module's business.
    fn event(&self, now: Millis) -> Event {
        match self {
            WriteOp::Prepare { txn, .. } => Event::Prepare { txn: *txn, now },
            WriteOp::Commit { txn, index } => Event::Commit {
                txn: *txn,
                index: *index,
            },
            WriteOp::Abort { txn } => Event::Abort { txn: *txn },
            WriteOp::Outcome { txn, outcome } => Event::Outcome {
                txn: *txn,
                outcome: *outcome,
            },
            WriteOp::Import { through, .. } => Event::Imported { range: *through },
        }
    }
}

/// What became of one [`WriteOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Done,
    UnknownTxn,
}

/// What a batch changed, for the in-memory view to follow once it is durable.
#[derive(Debug, Default)]
pub struct BatchEffect {
    pub results: Vec<WriteResult>,
    /// New count of every tenant the batch touched.
    pub counts: HashMap<String, u64>,
}

/// Everything the counter rebuilds its memory from at start-up.
#[derive(Debug)]
pub struct Recovered {
    pub counts: HashMap<String, u64>,
    pub applied: AppliedSet,
    pub prepared: Vec<TxnId>,
    /// The highest index with an entry in the commit log (0 if none). Above
    /// the applied prefix, it may be a copy that a crash cut short.
    pub logged_high: CommitIndex,
}

/// The counter's storage operations.
pub trait Store: Send + Sync + 'static {
    /// Applies the operations, arriving at `now`, in order in one durable
    /// transaction, as `participant` decides them; `participant` is updated
    /// only once the transaction is durable. The store may take the items
    /// out of prepares (to keep them until the commit), so `ops` are spent
    /// afterwards.
    fn write(
        &self,
        ops: &mut [WriteOp],
        participant: &mut Participant,
        now: Millis,
    ) -> Result<BatchEffect, Error>;

    /// Reads back everything needed to serve after a restart.
    fn recover(&self) -> Result<Recovered, Error>;

    /// Calls `sink` with every log entry above `since`, in index order,
    /// until it returns false. There is no upper bound: an item is logged
    /// at the commit that first brought it *here*, which depends on the
    /// order this replica applied commits in, so an item of a commit at or
    /// below some `until` may be logged above it (docs/protocol.md,
    /// "Catch-up").
    fn export(
        &self,
        since: CommitIndex,
        sink: &mut dyn FnMut(ExportEntry) -> bool,
    ) -> Result<(), Error>;

    /// Memory held by the item filter, for `/metrics`.
    fn item_filter_bytes(&self) -> usize;

    /// Stored items whose keys wait for indexing, for `/metrics`.
    fn unindexed_items(&self) -> usize;

    /// The life of this data directory (see the module doc).
    fn incarnation(&self) -> Incarnation;
}

/// [`Store`] on a fjall database.
pub struct FjallStore {
    db: Database,
    counts: Keyspace,
    prepared: Keyspace,
    commits: Keyspace,
    applied_above: Keyspace,
    meta: Keyspace,
    incarnation: Incarnation,
    /// Which items this replica holds: `items`, `unindexed` and what keeps
    /// them fast in memory.
    seen: SeenItems,
    /// The items of transactions this process prepared, until their commit
    /// or abort: a commit then needs no decoding of the prepared record
    /// (about 5% of a counter under bulk writes). After a restart it is
    /// empty and commits read the record.
    prepared_in_memory: Mutex<HashMap<TxnId, Vec<Item>>>,
}

/// Settings of a [`FjallStore`].
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Memory the item filter may grow to (`dedup::item_filter`).
    pub item_filter_bytes: usize,
    /// How many new keys gather in memory before they are ingested into
    /// `items` as one sorted batch. A million keys of 20-40 bytes hold
    /// about as much memory as one fjall memtable (64 MiB).
    pub index_batch_keys: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            item_filter_bytes: 256 << 20,
            index_batch_keys: 1 << 20,
        }
    }
}

impl Store for FjallStore {
    fn write(
        &self,
        ops: &mut [WriteOp],
        participant: &mut Participant,
        now: Millis,
    ) -> Result<BatchEffect, Error> {
        self.write_batch(ops, participant, now)
    }

    fn recover(&self) -> Result<Recovered, Error> {
        self.read_back()
    }

    fn export(
        &self,
        since: CommitIndex,
        sink: &mut dyn FnMut(ExportEntry) -> bool,
    ) -> Result<(), Error> {
        self.export_since(since, sink)
    }

    fn item_filter_bytes(&self) -> usize {
        self.seen.filter_bytes()
    }

    fn unindexed_items(&self) -> usize {
        self.seen.unindexed_keys()
    }

    fn incarnation(&self) -> Incarnation {
        self.incarnation
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        // Before `db` and the keyspaces close the database (see
        // `SeenItems::stop_indexer`).
        self.seen.stop_indexer();
    }
}
