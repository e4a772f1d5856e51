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
//! carries: that is where group commit pays off on the counter side. The
//! replica's writer thread is the only writer, so a plain batch does what a
//! write transaction did without its second skiplist of pending writes; the
//! batch's own effects are tracked beside it (`PendingWrite`). fjall's
//! default durability (`Buffer`) would hand a batch to the OS only, and a vote
//! or an acknowledged commit must survive power loss. A failed journal write
//! or fsync poisons the database: fjall then refuses every later write, so
//! the replica fails its writes rather than acknowledge what may be lost,
//! until a restart replays the journal.
//!
//! The files live in `TALLY_DATA_DIR/fjall/`.
//!
//! Keyspaces:
//! * `items`: (tenant, id) -> (). Whether the key is here or among the keys
//!   not indexed yet ([`IndexBacklog`]) tells whether the item is new; the
//!   in-memory [`ItemFilter`] answers that for most new items without a
//!   lookup. Keys reach `items` only by ingestion of sorted batches, never
//!   through the write batch (crate::unindexed says why), and level 0 may
//!   hold more tables than fjall's default (`ITEMS_L0_TABLES`).
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

use crate::error::{lock, Error};
use crate::item_filter::{FilterState, ItemFilter, KeyHash};
use crate::unindexed::IndexBacklog;
use fjall::compaction::Leveled;
use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable, UserKey,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tally_common::api::{ExportEntry, Outcome};
use tally_common::applied::AppliedSet;
use tally_common::participant::{Action, Event, Participant, Record};
use tally_common::{CommitIndex, Incarnation, Item, Millis, TxnId};

const APPLIED_KEY: &str = "applied";
const INCARNATION_KEY: &str = "incarnation";

/// Tables the `items` keyspace lets pile up in level 0 before merging them
/// into level 1 (fjall's default: 4). Each is one ingested batch of keys
/// (`StoreOptions::index_batch_keys`). Item keys are spread over the whole
/// key space, so every such merge rewrites all of level 1: the more is
/// merged at once, the less often that happens, and the item filter spares
/// most lookups the extra tables. With 12, merges took up to half of a
/// counter's CPU after 20 million 1,000-item POSTs; with the default, single-item
/// writes fell to 5-10k/s for seconds after bulk loads (docs/benchmarks.md).
const ITEMS_L0_TABLES: u8 = 32;

/// How many items ahead the writer asks for the memory of the item filter
/// and of the unindexed keys.
const PREFETCH_AHEAD: usize = 8;

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

/// 64 random bits from the standard library's per-process hash keys, the
/// clock and the process id: enough that two data directories never share
/// an incarnation, with no extra dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, Error> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| Error::CorruptEncoding(what))?;
    Ok(u64::from_be_bytes(bytes))
}

/// fjall panics on a key longer than u16::MAX bytes. The coordinator caps
/// each field at 256 bytes, so this only guards against a peer's import or a
/// future limit change, and fails the batch rather than the process.
fn check_storable(item: &Item) -> Result<(), Error> {
    if 2 + item.tenant.len() + item.id.len() > usize::from(u16::MAX) {
        return Err(Error::Unstorable {
            tenant: item.tenant.len(),
            id: item.id.len(),
        });
    }
    Ok(())
}

/// The item's key, built in `scratch` so that only the key itself is
/// allocated.
fn item_key(item: &Item, scratch: &mut Vec<u8>) -> Result<UserKey, Error> {
    check_storable(item)?;
    // Cannot truncate: the whole key fits in u16::MAX bytes.
    let tenant_len = item.tenant.len() as u16;
    scratch.clear();
    scratch.extend_from_slice(&tenant_len.to_be_bytes());
    scratch.extend_from_slice(item.tenant.as_bytes());
    scratch.extend_from_slice(item.id.as_bytes());
    Ok(UserKey::from(scratch.as_slice()))
}

/// [`Store`] on a fjall database.
pub struct FjallStore {
    db: Database,
    items: Keyspace,
    counts: Keyspace,
    prepared: Keyspace,
    commits: Keyspace,
    unindexed: Keyspace,
    applied_above: Keyspace,
    meta: Keyspace,
    incarnation: Incarnation,
    /// Keys stored but not yet in `items`. The writer holds the lock
    /// through a write.
    backlog: Mutex<IndexBacklog>,
    /// Keys of `items`, so that a new item needs no lookup. The writer holds
    /// the lock through a write; a metrics scrape takes it briefly.
    filter: Mutex<FilterState>,
    /// The items of transactions this process prepared, until their commit
    /// or abort: a commit then needs no decoding of the prepared record
    /// (about 5% of a counter under bulk writes). After a restart it is
    /// empty and commits read the record.
    prepared_in_memory: Mutex<HashMap<TxnId, Vec<Item>>>,
}

/// Settings of a [`FjallStore`].
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Memory the item filter may grow to (`item_filter`).
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

impl FjallStore {
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with(dir, StoreOptions::default())
    }

    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, Error> {
        if dir.join("counter.redb").exists() {
            // Nothing converts the old file: the replica starts empty and
            // catch-up copies the items back from its peers.
            tracing::warn!(
                dir = %dir.display(),
                "ignoring counter.redb left by an earlier version"
            );
        }
        // Builder defaults, as benchmarked: 32 MiB block cache, LZ4, and
        // min(cores, 4) flush and compaction workers.
        let db = Database::builder(dir.join("fjall")).open()?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let items = db.keyspace("items", || {
            KeyspaceCreateOptions::default().compaction_strategy(Arc::new(
                Leveled::default().with_l0_threshold(ITEMS_L0_TABLES),
            ))
        })?;
        // Taken before any write: the keys written after it reach the filter
        // through the writer (`FilterState::Building`).
        let snapshot = db.snapshot();
        let (send, built) = std::sync::mpsc::channel();
        let scanned = items.clone();
        let max_bytes = options.item_filter_bytes;
        std::thread::Builder::new()
            .name("item-filter".into())
            .spawn(
                move || match Self::load_filter(&snapshot, &scanned, max_bytes) {
                    Ok(filter) => drop(send.send(filter)),
                    Err(e) => tracing::error!(error = %e, "cannot build the item filter"),
                },
            )
            .map_err(|e| Error::Storage(fjall::Error::Io(e)))?;
        let backlog = IndexBacklog::start(items.clone(), options.index_batch_keys)
            .map_err(|e| Error::Storage(fjall::Error::Io(e)))?;
        let meta = keyspace("meta")?;
        let incarnation = Self::incarnation_of(&db, &meta)?;
        let store = FjallStore {
            incarnation,
            filter: Mutex::new(FilterState::building(built)),
            backlog: Mutex::new(backlog),
            prepared_in_memory: Mutex::default(),
            items,
            counts: keyspace("counts")?,
            prepared: keyspace("prepared")?,
            commits: keyspace("commits")?,
            unindexed: keyspace("unindexed")?,
            applied_above: keyspace("applied_above")?,
            meta,
            db,
        };
        store.reload_unindexed()?;
        Ok(store)
    }

    /// The directory's incarnation, made and made durable on first open. A
    /// directory from before incarnations existed gets one now: it is still
    /// the same disk.
    fn incarnation_of(db: &Database, meta: &Keyspace) -> Result<Incarnation, Error> {
        if let Some(v) = meta.get(INCARNATION_KEY)? {
            return Ok(Incarnation(decode_u64(&v, "incarnation")?));
        }
        let incarnation = Incarnation(random_u64());
        let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(meta, INCARNATION_KEY, u64_key(incarnation.0));
        batch.commit()?;
        tracing::info!(%incarnation, "new data directory");
        Ok(incarnation)
    }

    /// Puts back in memory the keys of the commits that were not indexed
    /// when the process stopped.
    fn reload_unindexed(&self) -> Result<(), Error> {
        let started = Instant::now();
        let mut backlog = lock(&self.backlog, "the unindexed keys");
        let mut filter = self.lock_filter();
        let mut scratch = Vec::new();
        for guard in self.unindexed.iter() {
            let index = guard.key()?;
            let Some(entry) = self.commits.get(&index)? else {
                continue;
            };
            let items: Vec<Item> = postcard::from_bytes(&entry)?;
            for item in &items {
                let key = item_key(item, &mut scratch)?;
                let hash = KeyHash::of(&key);
                if !backlog.contains(&key, hash) {
                    backlog.insert(key, hash);
                    filter.insert(hash);
                }
            }
            let index = CommitIndex(decode_u64(&index, "commit index")?);
            backlog.note_commit(index);
        }
        let keys = backlog.len();
        if keys > 0 {
            tracing::info!(
                keys,
                took_ms = started.elapsed().as_millis() as u64,
                "item keys not yet indexed reloaded from the commit log"
            );
        }
        Ok(())
    }

    /// The item filter, taken over from its builder if it has arrived.
    fn lock_filter(&self) -> MutexGuard<'_, FilterState> {
        let mut filter = lock(&self.filter, "the item filter");
        filter.poll();
        filter
    }

    #[cfg(test)]
    fn filter_ready(&self) -> bool {
        self.lock_filter().is_ready()
    }

    /// Builds the item filter from every key in `snapshot`, sized for twice
    /// as many.
    fn load_filter(
        snapshot: &fjall::Snapshot,
        items: &Keyspace,
        max_bytes: usize,
    ) -> Result<ItemFilter, Error> {
        let started = Instant::now();
        let mut filter = ItemFilter::new(items.approximate_len() * 2, max_bytes);
        let mut keys = 0u64;
        if max_bytes > 0 {
            for guard in snapshot.iter(items) {
                filter.insert(KeyHash::of(&guard.key()?));
                keys += 1;
            }
        }
        tracing::info!(
            keys,
            bytes = filter.bytes(),
            took_ms = started.elapsed().as_millis() as u64,
            "item filter loaded"
        );
        Ok(filter)
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        // Before `db` and the keyspaces close the database. Even a poisoned
        // backlog must stop its thread: dropping is how the process ends.
        self.backlog
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .stop();
    }
}

/// Items for one entry of `commits`, encoded as they are found instead of
/// cloned: postcard writes a `Vec<Item>` as its length (a varint) followed
/// by the items, so the entry is the count and then these bytes.
#[derive(Default)]
struct FreshItems {
    count: usize,
    encoded: Vec<u8>,
}

impl FreshItems {
    fn push(&mut self, item: &Item) -> Result<(), Error> {
        self.encoded = postcard::to_extend(item, std::mem::take(&mut self.encoded))?;
        self.count += 1;
        Ok(())
    }

    fn append(&mut self, other: FreshItems) {
        self.count += other.count;
        self.encoded.extend(other.encoded);
    }

    /// The entry's value: `logged` (what the entry already held), then these.
    fn after(self, logged: &[Item]) -> Result<Vec<u8>, Error> {
        let mut value = postcard::to_allocvec(&(logged.len() + self.count))?;
        for item in logged {
            value = postcard::to_extend(item, value)?;
        }
        value.extend(self.encoded);
        Ok(value)
    }
}

/// One storage write being built. fjall's write batch cannot be read back,
/// so what the batch has written so far that later operations of the same
/// write must see (items, prepared records) is also kept here. The writer
/// thread is the database's only writer, so everything else is read from
/// the keyspaces directly.
struct PendingWrite<'a> {
    store: &'a FjallStore,
    batch: OwnedWriteBatch,
    filter: MutexGuard<'a, FilterState>,
    backlog: MutexGuard<'a, IndexBacklog>,
    prepared_in_memory: MutexGuard<'a, HashMap<TxnId, Vec<Item>>>,
    /// Prepared records this write creates (`Some`) or removes (`None`).
    prepared: HashMap<TxnId, Option<&'a [Item]>>,
    /// Items first seen by this write, by the commit that brought them.
    fresh: BTreeMap<CommitIndex, FreshItems>,
    /// New items per tenant.
    added: BTreeMap<String, u64>,
}

impl<'a> PendingWrite<'a> {
    fn new(store: &'a FjallStore) -> Self {
        let mut batch = store.db.batch().durability(Some(PersistMode::SyncAll));
        let mut backlog = lock(&store.backlog, "the unindexed keys");
        for index in backlog.begin_write() {
            batch.remove(&store.unindexed, u64_key(index.0));
        }
        PendingWrite {
            store,
            batch,
            filter: store.lock_filter(),
            backlog,
            prepared_in_memory: lock(&store.prepared_in_memory, "the prepared items"),
            prepared: HashMap::new(),
            fresh: BTreeMap::new(),
            added: BTreeMap::new(),
        }
    }

    /// Whether the item is stored, by an earlier write or this one. Every
    /// stored key is in the filter, so "certainly not" from it settles it.
    fn is_stored(&self, key: &UserKey, hash: KeyHash) -> Result<bool, Error> {
        if !self.filter.may_contain(hash) {
            return Ok(false);
        }
        Ok(self.backlog.contains(key, hash) || self.store.items.contains_key(key)?)
    }

    /// Inserts items committed at `index` that this replica has not seen,
    /// and remembers them for that commit's log entry.
    fn add_items(&mut self, index: CommitIndex, batch: Cow<'_, [Item]>) -> Result<(), Error> {
        // In key order: lookups in `items` then touch neighbouring blocks,
        // and the backlog gets a sorted run, which its ingestion sorts cheaply.
        let mut scratch = Vec::new();
        let mut keyed = batch
            .iter()
            .map(|item| Ok((item_key(item, &mut scratch)?, item)))
            .collect::<Result<Vec<_>, Error>>()?;
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let hashes: Vec<KeyHash> = keyed.iter().map(|(key, _)| KeyHash::of(key)).collect();
        for hash in hashes.iter().take(PREFETCH_AHEAD) {
            self.filter.prefetch(*hash);
            self.backlog.prefetch(*hash);
        }
        let mut fresh = FreshItems::default();
        for (i, (key, item)) in keyed.into_iter().enumerate() {
            if let Some(ahead) = hashes.get(i + PREFETCH_AHEAD) {
                self.filter.prefetch(*ahead);
                self.backlog.prefetch(*ahead);
            }
            let hash = hashes[i];
            if self.is_stored(&key, hash)? {
                continue;
            }
            // Before the commit: should it fail, a key too many in the filter
            // only costs a lookup, and the backlog is rolled back.
            self.filter.insert(hash);
            self.backlog.insert(key, hash);
            match self.added.get_mut(item.tenant.as_str()) {
                Some(added) => *added += 1,
                None => drop(self.added.insert(item.tenant.clone(), 1)),
            }
            fresh.push(item)?;
        }
        if fresh.count > 0 {
            self.fresh.entry(index).or_default().append(fresh);
        }
        Ok(())
    }

    fn prepare(&mut self, txn: TxnId, items: &'a [Item]) -> Result<(), Error> {
        // A yes vote must be one the commit can honour.
        items.iter().try_for_each(check_storable)?;
        let record = postcard::to_allocvec(items)?;
        self.batch
            .insert(&self.store.prepared, u64_key(txn.0), record);
        self.prepared.insert(txn, Some(items));
        Ok(())
    }

    /// The items `txn` prepared: from this write, from memory, or from the
    /// store. Taken out of memory: should this write fail, the record is
    /// still in the store.
    fn prepared_items(&mut self, txn: TxnId) -> Result<Cow<'a, [Item]>, Error> {
        let missing = Error::CorruptEncoding("prepared record (missing)");
        match self.prepared.get(&txn) {
            Some(Some(items)) => Ok(Cow::Borrowed(*items)),
            Some(None) => Err(missing),
            None => {
                if let Some(items) = self.prepared_in_memory.remove(&txn) {
                    return Ok(Cow::Owned(items));
                }
                let record = self.store.prepared.get(u64_key(txn.0))?.ok_or(missing)?;
                Ok(Cow::Owned(postcard::from_bytes(&record)?))
            }
        }
    }

    fn apply(&mut self, txn: TxnId, index: CommitIndex) -> Result<(), Error> {
        let items = self.prepared_items(txn)?;
        self.add_items(index, items)?;
        self.forget(txn);
        Ok(())
    }

    fn forget(&mut self, txn: TxnId) {
        self.prepared_in_memory.remove(&txn);
        self.batch.remove(&self.store.prepared, u64_key(txn.0));
        self.prepared.insert(txn, None);
    }

    /// Writes the log entries and counts the batch's new items changed, and
    /// returns the new counts.
    fn finish_items(&mut self) -> Result<HashMap<String, u64>, Error> {
        let store = self.store;
        for (index, fresh) in std::mem::take(&mut self.fresh) {
            // A copied entry can land on an index this replica already logged.
            let key = u64_key(index.0);
            let logged: Vec<Item> = match store.commits.get(key)? {
                Some(existing) => postcard::from_bytes(&existing)?,
                None => Vec::new(),
            };
            self.batch
                .insert(&store.commits, key, fresh.after(&logged)?);
            self.batch.insert(&store.unindexed, key, []);
            self.backlog.note_commit(index);
        }
        let mut counts = HashMap::new();
        for (tenant, n) in std::mem::take(&mut self.added) {
            let count = match store.counts.get(tenant.as_bytes())? {
                Some(v) => decode_u64(&v, "count")?,
                None => 0,
            } + n;
            self.batch
                .insert(&store.counts, tenant.as_bytes(), u64_key(count));
            counts.insert(tenant, count);
        }
        Ok(counts)
    }

    /// Puts `ops` in the batch, as `next` (the participant, stepped along)
    /// decides them, with the log entries, counts and applied indexes they
    /// change.
    fn build(
        &mut self,
        ops: &'a [WriteOp],
        applied_before: &AppliedSet,
        next: &mut Participant,
        now: Millis,
        effect: &mut BatchEffect,
    ) -> Result<(), Error> {
        for op in ops {
            if let WriteOp::Import { entries, .. } = op {
                for entry in entries {
                    self.add_items(entry.index, Cow::Borrowed(&entry.items))?;
                }
            }
            let mut result = WriteResult::Done;
            for action in next.step(op.event(now)) {
                match action {
                    Action::Persist(Record::Prepared { txn }) => {
                        let WriteOp::Prepare { items, .. } = op else {
                            unreachable!("only a prepare persists a prepared record")
                        };
                        self.prepare(txn, items)?;
                    }
                    Action::Persist(Record::Applied { txn, index }) => self.apply(txn, index)?,
                    Action::Persist(Record::Forgotten { txn }) => self.forget(txn),
                    // Applied indexes are written from `next` below.
                    Action::Persist(Record::AppliedRange { .. }) => {}
                    Action::VoteYes { .. } | Action::Ack { .. } => {}
                    Action::UnknownTxn { .. } => result = WriteResult::UnknownTxn,
                    // Only ticks ask, and no write op is one.
                    Action::AskOutcome { .. } => {}
                }
            }
            effect.results.push(result);
        }
        effect.counts = self.finish_items()?;
        self.record_applied(applied_before, next.applied())
    }

    /// Makes the write durable, or undoes what it added to the backlog.
    /// Once it is durable, a full backlog goes to the indexer.
    fn commit(self) -> Result<(), Error> {
        let PendingWrite {
            batch,
            filter,
            mut backlog,
            ..
        } = self;
        drop(filter);
        match batch.commit() {
            Ok(()) => {
                backlog.seal_if_full();
                Ok(())
            }
            Err(e) => {
                backlog.roll_back();
                Err(e.into())
            }
        }
    }

    fn roll_back(&mut self) {
        self.backlog.roll_back();
    }

    /// Records which commits are applied: the gap-free prefix, and the
    /// indexes above it that `before` did not have yet.
    fn record_applied(&mut self, before: &AppliedSet, after: &AppliedSet) -> Result<(), Error> {
        let store = self.store;
        let contiguous = after.contiguous();
        for guard in store.applied_above.range(..=u64_key(contiguous.0)) {
            self.batch.remove(&store.applied_above, guard.key()?);
        }
        for index in after.above() {
            if !before.contains(index) {
                self.batch
                    .insert(&store.applied_above, u64_key(index.0), []);
            }
        }
        self.batch
            .insert(&store.meta, APPLIED_KEY, u64_key(contiguous.0));
        Ok(())
    }
}

impl FjallStore {
    /// Writes `ops` in one durable fjall batch. [`Store::write`] then keeps
    /// the items of what stays prepared, which this borrows until the
    /// batch is built.
    fn durable_write(
        &self,
        ops: &[WriteOp],
        participant: &mut Participant,
        now: Millis,
    ) -> Result<BatchEffect, Error> {
        let mut write = PendingWrite::new(self);
        let mut effect = BatchEffect::default();
        // Step a copy so a failed commit leaves the caller's state intact.
        let mut next = participant.clone();
        if let Err(e) = write.build(ops, participant.applied(), &mut next, now, &mut effect) {
            write.roll_back();
            return Err(e);
        }
        write.commit()?;
        *participant = next;
        Ok(effect)
    }
}

impl Store for FjallStore {
    fn write(
        &self,
        ops: &mut [WriteOp],
        participant: &mut Participant,
        now: Millis,
    ) -> Result<BatchEffect, Error> {
        let effect = self.durable_write(ops, participant, now)?;
        // Durable now: keep the items of what the participant still holds
        // prepared, for its commit.
        let mut kept = lock(&self.prepared_in_memory, "the prepared items");
        for op in ops {
            if let WriteOp::Prepare { txn, items } = op {
                if participant.is_prepared(*txn) {
                    kept.insert(*txn, std::mem::take(items));
                }
            }
        }
        Ok(effect)
    }

    fn recover(&self) -> Result<Recovered, Error> {
        let snapshot = self.db.snapshot();
        let contiguous = match snapshot.get(&self.meta, APPLIED_KEY)? {
            Some(v) => decode_u64(&v, "applied index")?,
            None => 0,
        };
        let mut above = Vec::new();
        for guard in snapshot.iter(&self.applied_above) {
            above.push(CommitIndex(decode_u64(&guard.key()?, "applied index")?));
        }
        let mut counts = HashMap::new();
        for guard in snapshot.iter(&self.counts) {
            let (tenant, count) = guard.into_inner()?;
            let tenant =
                String::from_utf8(tenant.to_vec()).map_err(|_| Error::CorruptEncoding("tenant"))?;
            counts.insert(tenant, decode_u64(&count, "count")?);
        }
        let mut prepared = Vec::new();
        for guard in snapshot.iter(&self.prepared) {
            prepared.push(TxnId(decode_u64(&guard.key()?, "txn id")?));
        }
        let logged_high = match self.commits.last_key_value() {
            Some(guard) => decode_u64(&guard.key()?, "commit index")?,
            None => 0,
        };
        Ok(Recovered {
            counts,
            applied: AppliedSet::new(CommitIndex(contiguous), above),
            prepared,
            logged_high: CommitIndex(logged_high),
        })
    }

    fn export(
        &self,
        since: CommitIndex,
        sink: &mut dyn FnMut(ExportEntry) -> bool,
    ) -> Result<(), Error> {
        let snapshot = self.db.snapshot();
        let range = u64_key(since.0.saturating_add(1))..;
        for guard in snapshot.range(&self.commits, range) {
            let (index, items) = guard.into_inner()?;
            let entry = ExportEntry {
                index: CommitIndex(decode_u64(&index, "commit index")?),
                items: postcard::from_bytes(&items)?,
            };
            if !sink(entry) {
                break;
            }
        }
        Ok(())
    }

    fn item_filter_bytes(&self) -> usize {
        self.lock_filter().bytes()
    }

    fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    fn unindexed_items(&self) -> usize {
        lock(&self.backlog, "the unindexed keys").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const NOW: Millis = Millis(0);

    fn item(id: &str, tenant: &str) -> Item {
        Item::new(id, tenant)
    }

    fn open() -> (tempfile::TempDir, FjallStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        (dir, store)
    }

    /// The writer's path as the counter runs it under bulk load: each
    /// storage write applies one commit and prepares the next transaction,
    /// with ids spread like random ones and every tenth one repeated. The
    /// counts must come out exact; the rate is printed for comparing store
    /// changes (`cargo test --release -p tally-counter bulk_commits -- --nocapture`),
    /// never asserted.
    #[test]
    fn bulk_commits_count_each_distinct_item_once() {
        const BATCHES: u64 = 100;
        const ITEMS: u64 = 1000;
        const TENANTS: u64 = 16;
        let (_dir, store) = open();
        let mut participant = Participant::default();
        let batch = |b: u64| -> Vec<Item> {
            (0..ITEMS)
                .map(|k| {
                    let n = b * ITEMS + k;
                    // An id seen earlier, in this batch or a previous one.
                    let n = if n % 10 == 9 { n / 2 } else { n };
                    let id = format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    item(&id, &format!("tenant-{}", n % TENANTS))
                })
                .collect()
        };
        let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
        let mut counts = HashMap::new();
        let started = std::time::Instant::now();
        for b in 1..=BATCHES + 1 {
            let mut ops = Vec::new();
            if b > 1 {
                ops.push(WriteOp::Commit {
                    txn: TxnId(b - 1),
                    index: CommitIndex(b - 1),
                });
            }
            // The last write only commits.
            if b <= BATCHES {
                let items = batch(b);
                for i in &items {
                    expected
                        .entry(i.tenant.clone())
                        .or_default()
                        .insert(i.id.clone());
                }
                ops.push(WriteOp::Prepare {
                    txn: TxnId(b),
                    items,
                });
            }
            counts.extend(store.write(&mut ops, &mut participant, NOW).unwrap().counts);
        }
        let elapsed = started.elapsed();
        println!(
            "{} items in {elapsed:.2?}: {:.0} items/s",
            BATCHES * ITEMS,
            (BATCHES * ITEMS) as f64 / elapsed.as_secs_f64()
        );
        assert_eq!(counts.len(), TENANTS as usize);
        for (tenant, ids) in &expected {
            assert_eq!(counts[tenant], ids.len() as u64, "{tenant}");
        }
        assert_eq!(store.recover().unwrap().counts, counts);
        assert_eq!(participant.applied().contiguous(), CommitIndex(BATCHES));
    }

    #[test]
    fn commit_counts_distinct_ids_and_survives_reopen() {
        let (dir, store) = open();
        let mut applied = Participant::default();
        let items = vec![
            item("a", "t"),
            item("a", "t"),
            item("b", "t"),
            item("a", "u"),
        ];
        store
            .write(
                &mut [WriteOp::Prepare {
                    txn: TxnId(1),
                    items,
                }],
                &mut applied,
                NOW,
            )
            .unwrap();
        let effect = store
            .write(
                &mut [WriteOp::Commit {
                    txn: TxnId(1),
                    index: CommitIndex(1),
                }],
                &mut applied,
                NOW,
            )
            .unwrap();
        assert_eq!(effect.counts["t"], 2);
        assert_eq!(effect.counts["u"], 1);
        assert_eq!(applied.applied().contiguous(), CommitIndex(1));
        drop(store);

        let store = FjallStore::open(dir.path()).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.counts["t"], 2);
        assert_eq!(recovered.applied.contiguous(), CommitIndex(1));
        assert!(recovered.prepared.is_empty());
    }

    /// Prepares and commits `items` as transaction `n` at index `n`.
    fn commit(
        store: &FjallStore,
        participant: &mut Participant,
        n: u64,
        items: Vec<Item>,
    ) -> BatchEffect {
        let mut ops = [
            WriteOp::Prepare {
                txn: TxnId(n),
                items,
            },
            WriteOp::Commit {
                txn: TxnId(n),
                index: CommitIndex(n),
            },
        ];
        store.write(&mut ops, participant, NOW).unwrap()
    }

    #[test]
    fn fresh_items_encode_as_the_vec_export_decodes() {
        let logged = vec![item("a", "t")];
        let mut fresh = FreshItems::default();
        fresh.push(&item("b", "t")).unwrap();
        let mut more = FreshItems::default();
        more.push(&item("c", "ü")).unwrap();
        fresh.append(more);
        let value = fresh.after(&logged).unwrap();
        let decoded: Vec<Item> = postcard::from_bytes(&value).unwrap();
        assert_eq!(
            decoded,
            vec![item("a", "t"), item("b", "t"), item("c", "ü")]
        );

        // A count past one varint byte.
        let many: Vec<Item> = (0..300).map(|i| item(&i.to_string(), "t")).collect();
        let mut fresh = FreshItems::default();
        for item in &many[100..] {
            fresh.push(item).unwrap();
        }
        let value = fresh.after(&many[..100]).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<Item>>(&value).unwrap(), many);
    }

    #[test]
    fn items_stored_before_a_reopen_are_not_counted_again_with_or_without_a_filter() {
        let batch = |range: std::ops::Range<u32>| -> Vec<Item> {
            range.map(|i| item(&format!("id-{i}"), "t")).collect()
        };
        let default_bytes = StoreOptions::default().item_filter_bytes;
        // With the filter built, while it may still be building, without one.
        for (filter_bytes, wait_for_filter) in
            [(default_bytes, true), (default_bytes, false), (0, false)]
        {
            let options = StoreOptions {
                item_filter_bytes: filter_bytes,
                ..StoreOptions::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let store = FjallStore::open_with(dir.path(), options).unwrap();
            let mut participant = Participant::default();
            commit(&store, &mut participant, 1, batch(0..5000));
            drop(store);

            let store = FjallStore::open_with(dir.path(), options).unwrap();
            let recovered = store.recover().unwrap();
            let (mut participant, _) =
                Participant::recover(Default::default(), [], recovered.applied);
            if wait_for_filter {
                let deadline = Instant::now() + std::time::Duration::from_secs(10);
                while !store.filter_ready() {
                    assert!(Instant::now() < deadline, "the filter was never built");
                    std::thread::yield_now();
                }
                assert!(store.item_filter_bytes() > 0);
            }
            // Half old, half new: only the new half counts.
            let effect = commit(&store, &mut participant, 2, batch(2500..7500));
            let case = format!("filter of {filter_bytes} bytes, waited: {wait_for_filter}");
            assert_eq!(effect.counts["t"], 7500, "{case}");
            let effect = commit(&store, &mut participant, 3, batch(0..7500));
            assert!(effect.counts.is_empty(), "nothing new, {case}");
        }
    }

    /// Keys wait in memory, are ingested into `items` in batches, and are
    /// reloaded from the commit log after a restart: an item is new exactly
    /// once through all of it, with or without the item filter.
    #[test]
    fn items_count_once_before_during_and_after_indexing_and_across_reopens() {
        let batch = |range: std::ops::Range<u32>| -> Vec<Item> {
            range.map(|i| item(&format!("id-{i}"), "t")).collect()
        };
        for filter_bytes in [StoreOptions::default().item_filter_bytes, 0] {
            let options = StoreOptions {
                item_filter_bytes: filter_bytes,
                index_batch_keys: 1000,
            };
            let dir = tempfile::tempdir().unwrap();
            let store = FjallStore::open_with(dir.path(), options).unwrap();
            let mut participant = Participant::default();
            let effect = commit(&store, &mut participant, 1, batch(0..5000));
            assert_eq!(effect.counts["t"], 5000);
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while store.unindexed_items() > 0 {
                assert!(Instant::now() < deadline, "the keys were never indexed");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(store
                .items
                .contains_key(item_key(&item("id-0", "t"), &mut Vec::new()).unwrap())
                .unwrap());

            // Half indexed, half new; the new half is handed to the indexer
            // by this write, which also drops the first commit's marker.
            let effect = commit(&store, &mut participant, 2, batch(2500..7500));
            assert_eq!(effect.counts["t"], 7500, "filter of {filter_bytes} bytes");
            drop(store);
            let store = FjallStore::open_with(dir.path(), options).unwrap();
            // Only the second commit's keys may still be missing from `items`.
            assert_eq!(store.unindexed_items(), 2500);
            let recovered = store.recover().unwrap();
            let (mut participant, _) =
                Participant::recover(Default::default(), [], recovered.applied);
            let effect = commit(&store, &mut participant, 3, batch(0..7500));
            assert!(
                effect.counts.is_empty(),
                "nothing new, filter of {filter_bytes} bytes"
            );
            let effect = commit(&store, &mut participant, 4, batch(7000..8000));
            assert_eq!(effect.counts["t"], 8000, "filter of {filter_bytes} bytes");
        }
    }

    #[test]
    fn prepared_survives_reopen_and_commit_is_idempotent() {
        let (dir, store) = open();
        let mut applied = Participant::default();
        let prepare = WriteOp::Prepare {
            txn: TxnId(9),
            items: vec![item("x", "t")],
        };
        store.write(&mut [prepare], &mut applied, NOW).unwrap();
        drop(store);
        let store = FjallStore::open(dir.path()).unwrap();
        assert_eq!(store.recover().unwrap().prepared, vec![TxnId(9)]);
        let commit = WriteOp::Commit {
            txn: TxnId(9),
            index: CommitIndex(1),
        };
        let first = store.write(&mut [commit], &mut applied, NOW).unwrap();
        assert_eq!(first.results, vec![WriteResult::Done]);
        let commit = WriteOp::Commit {
            txn: TxnId(9),
            index: CommitIndex(1),
        };
        let again = store.write(&mut [commit], &mut applied, NOW).unwrap();
        assert_eq!(again.results, vec![WriteResult::Done], "already applied");
        assert!(again.counts.is_empty(), "nothing counted twice");
        let unknown = WriteOp::Commit {
            txn: TxnId(10),
            index: CommitIndex(2),
        };
        let effect = store.write(&mut [unknown], &mut applied, NOW).unwrap();
        assert_eq!(effect.results, vec![WriteResult::UnknownTxn]);
    }

    #[test]
    fn prepared_items_stay_in_memory_only_until_commit_or_abort() {
        let (_dir, store) = open();
        let mut participant = Participant::default();
        let kept = |store: &FjallStore| store.prepared_in_memory.lock().unwrap().len();
        let prepare = |txn: u64, id: &str| WriteOp::Prepare {
            txn: TxnId(txn),
            items: vec![item(id, "t")],
        };
        store
            .write(
                &mut [prepare(1, "a"), prepare(2, "b")],
                &mut participant,
                NOW,
            )
            .unwrap();
        assert_eq!(kept(&store), 2);
        let commit = WriteOp::Commit {
            txn: TxnId(1),
            index: CommitIndex(1),
        };
        let effect = store.write(&mut [commit], &mut participant, NOW).unwrap();
        assert_eq!(effect.counts["t"], 1, "committed from memory");
        assert_eq!(kept(&store), 1);
        let abort = WriteOp::Abort { txn: TxnId(2) };
        store.write(&mut [abort], &mut participant, NOW).unwrap();
        assert_eq!(kept(&store), 0);
        // Prepared and committed in one write: never kept.
        let commit = WriteOp::Commit {
            txn: TxnId(3),
            index: CommitIndex(2),
        };
        let effect = store
            .write(&mut [prepare(3, "c"), commit], &mut participant, NOW)
            .unwrap();
        assert_eq!(effect.counts["t"], 2);
        assert_eq!(kept(&store), 0);
    }

    #[test]
    fn item_new_to_two_commits_of_one_batch_counts_once() {
        let (dir, store) = open();
        let mut applied = Participant::default();
        store
            .write(
                &mut [
                    WriteOp::Prepare {
                        txn: TxnId(1),
                        items: vec![item("a", "t"), item("b", "t")],
                    },
                    WriteOp::Prepare {
                        txn: TxnId(2),
                        items: vec![item("a", "t")],
                    },
                ],
                &mut applied,
                NOW,
            )
            .unwrap();
        let effect = store
            .write(
                &mut [
                    WriteOp::Commit {
                        txn: TxnId(1),
                        index: CommitIndex(1),
                    },
                    WriteOp::Commit {
                        txn: TxnId(2),
                        index: CommitIndex(2),
                    },
                ],
                &mut applied,
                NOW,
            )
            .unwrap();
        assert_eq!(effect.results, vec![WriteResult::Done; 2]);
        assert_eq!(effect.counts["t"], 2, "a once, b once");
        let mut entries = Vec::new();
        store
            .export(CommitIndex(0), &mut |e| {
                entries.push(e);
                true
            })
            .unwrap();
        assert_eq!(entries.len(), 1, "commit 2 added nothing new");
        assert_eq!(entries[0].index, CommitIndex(1));
        drop(store);
        let recovered = FjallStore::open(dir.path()).unwrap().recover().unwrap();
        assert_eq!(recovered.counts["t"], 2);
        assert_eq!(recovered.applied.contiguous(), CommitIndex(2));
    }

    #[test]
    fn keys_sort_numerically_and_items_never_collide() {
        let (_dir, store) = open();
        let mut applied = Participant::default();
        // Tenant "a" with id "bc" and tenant "ab" with id "c" concatenate to
        // the same bytes; 256 would sort before 1 if keys were little-endian.
        for (txn, index, tenant, id) in [(1, 256, "a", "bc"), (2, 1, "ab", "c")] {
            store
                .write(
                    &mut [
                        WriteOp::Prepare {
                            txn: TxnId(txn),
                            items: vec![item(id, tenant)],
                        },
                        WriteOp::Commit {
                            txn: TxnId(txn),
                            index: CommitIndex(index),
                        },
                    ],
                    &mut applied,
                    NOW,
                )
                .unwrap();
        }
        let mut indexes = Vec::new();
        store
            .export(CommitIndex(0), &mut |e| {
                indexes.push(e.index);
                true
            })
            .unwrap();
        assert_eq!(indexes, vec![CommitIndex(1), CommitIndex(256)]);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.counts["a"], 1);
        assert_eq!(recovered.counts["ab"], 1);
        let mut above: Vec<_> = recovered.applied.above().collect();
        above.sort();
        assert_eq!(above, vec![CommitIndex(256)]);
        assert_eq!(recovered.applied.contiguous(), CommitIndex(1));
    }

    #[test]
    fn out_of_order_commits_and_import_fill_the_gap() {
        let (_dir, source) = open();
        let mut applied = Participant::default();
        for (txn, index, id) in [(1, 1, "a"), (2, 2, "b"), (3, 3, "a")] {
            source
                .write(
                    &mut [
                        WriteOp::Prepare {
                            txn: TxnId(txn),
                            items: vec![item(id, "t")],
                        },
                        WriteOp::Commit {
                            txn: TxnId(txn),
                            index: CommitIndex(index),
                        },
                    ],
                    &mut applied,
                    NOW,
                )
                .unwrap();
        }

        // A replica that only saw commit 3 imports 1..=2 from the source.
        let (dir, replica) = open();
        let mut replica_applied = Participant::default();
        replica
            .write(
                &mut [
                    WriteOp::Prepare {
                        txn: TxnId(3),
                        items: vec![item("a", "t")],
                    },
                    WriteOp::Commit {
                        txn: TxnId(3),
                        index: CommitIndex(3),
                    },
                ],
                &mut replica_applied,
                NOW,
            )
            .unwrap();
        assert_eq!(replica_applied.applied().contiguous(), CommitIndex(0));
        let mut entries = Vec::new();
        source
            .export(CommitIndex(0), &mut |e| {
                entries.push(e);
                true
            })
            .unwrap();
        // Index 3 added nothing new at the source, so it has no entry: the
        // range is only known complete from `through`.
        assert_eq!(entries.len(), 2);
        let partial = WriteOp::Import {
            entries: entries.clone(),
            through: None,
        };
        let effect = replica
            .write(&mut [partial], &mut replica_applied, NOW)
            .unwrap();
        assert_eq!(effect.counts["t"], 2, "a once, b once");
        assert_eq!(
            replica_applied.applied().contiguous(),
            CommitIndex(0),
            "not proven yet"
        );
        let complete = WriteOp::Import {
            entries,
            through: Some((CommitIndex(0), CommitIndex(2))),
        };
        let effect = replica
            .write(&mut [complete], &mut replica_applied, NOW)
            .unwrap();
        assert!(
            effect.counts.is_empty(),
            "copying again counts nothing twice"
        );
        assert_eq!(replica_applied.applied().contiguous(), CommitIndex(3));
        drop(replica);
        let replica = FjallStore::open(dir.path()).unwrap();
        let recovered = replica.recover().unwrap();
        assert_eq!(recovered.applied.contiguous(), CommitIndex(3));
        assert_eq!(recovered.counts["t"], 2);
    }

    /// What a catch-up pass does: everything `from` exports above `since`,
    /// imported into `to` as proof of `(since, until]`.
    fn copy_pass(
        from: &FjallStore,
        to: &FjallStore,
        to_state: &mut Participant,
        since: u64,
        until: u64,
    ) {
        let mut entries = Vec::new();
        from.export(CommitIndex(since), &mut |e| {
            entries.push(e);
            true
        })
        .unwrap();
        let through = Some((CommitIndex(since), CommitIndex(until)));
        to.write(&mut [WriteOp::Import { entries, through }], to_state, NOW)
            .unwrap();
    }

    /// Two replicas that applied the same two commits in different orders
    /// log their shared item at different indexes: b at 2 (it applied 2
    /// first), c at 1. A joiner that copies `(0, 1]` from b and `(1, 2]`
    /// from c must still end up with the item. When each pass sent only
    /// the entries inside its range, it did not: b's entry 2 fell outside
    /// the first pass and c's entry 1 outside the second.
    #[test]
    fn passes_from_peers_that_applied_in_different_orders_miss_nothing() {
        let shared = item("x", "t");
        let first = vec![shared.clone(), item("only-1", "t")];
        let second = vec![shared.clone(), item("only-2", "t")];
        let build = |order: [(u64, u64); 2]| {
            let (dir, store) = open();
            let mut state = Participant::default();
            let mut ops = vec![
                WriteOp::Prepare {
                    txn: TxnId(1),
                    items: first.clone(),
                },
                WriteOp::Prepare {
                    txn: TxnId(2),
                    items: second.clone(),
                },
            ];
            for (txn, index) in order {
                ops.push(WriteOp::Commit {
                    txn: TxnId(txn),
                    index: CommitIndex(index),
                });
            }
            store.write(&mut ops, &mut state, NOW).unwrap();
            (dir, store)
        };
        let (_b_dir, b) = build([(2, 2), (1, 1)]);
        let (_c_dir, c) = build([(1, 1), (2, 2)]);
        let (_j_dir, joiner) = open();
        let mut joiner_state = Participant::default();
        copy_pass(&b, &joiner, &mut joiner_state, 0, 1);
        copy_pass(&c, &joiner, &mut joiner_state, 1, 2);
        assert_eq!(joiner_state.applied().contiguous(), CommitIndex(2));
        let recovered = joiner.recover().unwrap();
        assert_eq!(
            recovered.counts["t"], 3,
            "x, only-1 and only-2, whatever order the peers applied in"
        );
    }
}
