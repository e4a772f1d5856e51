//! The live replica: the store, the single writer thread that batches every
//! change into one durable transaction, and the in-memory view (counts and
//! applied index) that reads are served from.
//!
//! The writer is the one owner of the 2PC participant state
//! (`tally_common::participant`): the prepared transactions, when each was
//! prepared, and the applied set, which decide every prepare, commit, abort
//! and in-doubt question. Nothing else keeps its own list of what is
//! prepared; `/health` shows the count the writer last published. It
//! publishes a new count
//! only after the transaction that produced it is durable, and the applied
//! index only after the counts, so a read fenced at index N never misses an
//! item committed at or below N.

use crate::error::{lock, read, write, Error};
use crate::import_queue::{Import, ImportQueue, Slice, IMPORT_SLICE_ITEMS};
use crate::store::{BatchEffect, Store, WriteOp, WriteResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tally_common::api::{CommitRequest, CopyProgress, CounterStatus, ExportEntry, Outcome};
use tally_common::participant::{self, Action, Event, Participant};
use tally_common::registration::{NotRegistered, Registration};
use tally_common::{CommitIndex, CounterId, Item, Millis, TxnId};
use tokio::sync::{mpsc, oneshot, watch};

/// Upper bound on operations folded into one storage transaction, so one
/// batch cannot keep early callers waiting for a very long fsync.
const MAX_BATCH_OPS: usize = 512;

type Reply = oneshot::Sender<Result<WriteResult, String>>;

/// What the writer thread is asked to do.
enum Job {
    /// A 2PC operation: written in the next storage write.
    TwoPhase(WriteOp, Reply),
    /// Copied data: written a slice at a time, behind the 2PC work.
    Import(Import<Reply>),
    /// The in-doubt clock ticks: which prepared transactions to ask the
    /// coordinator about now.
    Tick(oneshot::Sender<Vec<TxnId>>),
    /// What the participant durably holds, for a registration.
    Holdings(oneshot::Sender<Held>),
}

/// What a counter durably holds: its gap-free applied index, and above it
/// the transactions it holds prepared and the indexes applied out of order.
/// A registration sends all three, so the coordinator can tell an in-sync
/// counter from a disk restored from an older copy.
#[derive(Debug, Clone)]
pub struct Held {
    pub applied: CommitIndex,
    pub prepared: Vec<TxnId>,
    pub applied_above: Vec<CommitIndex>,
}

/// Shared handle on the replica; cheap to clone into handlers and tasks.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    id: CounterId,
    store: Arc<dyn Store>,
    writer: mpsc::UnboundedSender<Job>,
    counts: RwLock<HashMap<String, u64>>,
    applied: watch::Sender<CommitIndex>,
    /// How many transactions the participant holds prepared, as of the
    /// last durable batch: a published count for `/health`, not a record.
    prepared: AtomicUsize,
    catching_up: AtomicBool,
    /// Which coordinator this counter serves: votes and fenced reads are
    /// only for the one it registered with.
    registration: Mutex<Registration>,
    /// The copy from a peer in progress, for the coordinator's view.
    copy: Mutex<Option<CopyProgress>>,
    /// The highest commit index of which some copied data is held: it is
    /// written a slice at a time, so while this is above the applied index
    /// the counts may include part of a commit (some of a request's items
    /// and not the others). Raised before a slice's counts are published;
    /// at start-up, the highest index in the commit log, where a copy cut
    /// by a crash leaves its entries.
    logged_high: AtomicU64,
}

impl Replica {
    /// Recovers the in-memory view from `store` and starts the writer
    /// thread, whose participant asks about a prepared transaction once it
    /// waited `in_doubt` for its outcome. The writer ends once every clone
    /// of the replica is gone, after its last batch is durable.
    pub fn start(
        id: CounterId,
        store: Arc<dyn Store>,
        in_doubt: participant::Config,
    ) -> Result<(Self, WriterThread), Error> {
        let recovered = store.recover()?;
        let (writer, jobs) = mpsc::unbounded_channel();
        let (applied, _) = watch::channel(recovered.applied.contiguous());
        let inner = Arc::new(Inner {
            id,
            store: store.clone(),
            writer,
            counts: RwLock::new(recovered.counts),
            applied,
            prepared: AtomicUsize::new(recovered.prepared.len()),
            catching_up: AtomicBool::new(false),
            registration: Mutex::new(Registration::default()),
            copy: Mutex::new(None),
            logged_high: AtomicU64::new(recovered.logged_high.0),
        });
        let weak = Arc::downgrade(&inner);
        // The participant's start-up questions (one per prepared
        // transaction) are asked again by the first tick, which
        // `catchup::join` makes before it registers.
        let (participant, _ask) =
            Participant::recover(in_doubt, recovered.prepared, recovered.applied);
        let thread = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || run_writer(store, participant, jobs, weak))
            .map_err(|e| Error::process("cannot start the writer thread", e))?;
        Ok((Replica { inner }, WriterThread(thread)))
    }

    pub fn id(&self) -> &CounterId {
        &self.inner.id
    }

    /// Everything at or below this index is applied here.
    pub fn applied(&self) -> CommitIndex {
        *self.inner.applied.borrow()
    }

    pub fn status(&self) -> CounterStatus {
        CounterStatus {
            id: self.inner.id.clone(),
            incarnation: self.inner.store.incarnation(),
            registered_epoch: self.registered_epoch(),
            applied_index: self.applied(),
            catching_up: self.inner.catching_up.load(Ordering::SeqCst),
            prepared: self.inner.prepared.load(Ordering::SeqCst),
            voted: None,
            committed: Vec::new(),
            copy: lock(&self.inner.copy, "the copy progress").clone(),
        }
    }

    /// Which coordinator this counter serves, as of now.
    pub fn registration(&self) -> Registration {
        *lock(&self.inner.registration, "the registration")
    }

    /// Changes the registration (`tally_common::registration` decides what
    /// each answer of the coordinator means).
    pub fn update_registration(&self, change: impl FnOnce(&mut Registration)) {
        change(&mut lock(&self.inner.registration, "the registration"));
    }

    /// The coordinator epoch this counter registered with; 0 before it has.
    pub fn registered_epoch(&self) -> u64 {
        self.registration().epoch().unwrap_or(0)
    }

    /// Refuses a vote for a transaction of any coordinator but the one this
    /// counter registered with.
    pub fn check_vote(&self, txn_epoch: u64) -> Result<(), NotRegistered> {
        self.registration().check_vote(txn_epoch)
    }

    /// Refuses a fenced read of any coordinator but the one this counter
    /// registered with, and of that one until it said this counter is in
    /// sync.
    pub fn check_fenced_read(&self, epoch: u64) -> Result<(), NotRegistered> {
        self.registration().check_fenced_read(epoch)
    }

    /// Publishes how far the copy from a peer has got (`None` when done).
    pub fn set_copy_progress(&self, progress: Option<CopyProgress>) {
        *lock(&self.inner.copy, "the copy progress") = progress;
    }

    /// Distinct items held, over every tenant.
    pub fn total_items(&self) -> u64 {
        read(&self.inner.counts, "the counts").values().sum()
    }

    /// The operator promoted this counter by force: every index up to
    /// `through` counts as held, giving up the commits it lacks, so that
    /// reads fenced there can be answered.
    pub async fn accept_loss(&self, through: CommitIndex) -> Result<(), Error> {
        let since = self.applied();
        if through <= since {
            return Ok(());
        }
        tracing::error!(%since, %through, "told to take commits it never received as held: they are lost");
        self.queue_import(Vec::new(), Some((since, through)))?
            .durable()
            .await
    }

    /// The tenant's count once everything up to `fence` is applied.
    pub async fn count(
        &self,
        tenant: &str,
        fence: CommitIndex,
        wait: Duration,
    ) -> Result<u64, Error> {
        self.wait_applied(fence, wait).await?;
        Ok(read(&self.inner.counts, "the counts")
            .get(tenant)
            .copied()
            .unwrap_or(0))
    }

    /// The tenant's count as this replica holds it now, and whether it may
    /// include part of a commit: what the counter's own public count
    /// endpoint answers. The applied index is read before the count and the
    /// highest held index after it: a commit the count holds only part of
    /// is above the first (which passes a commit only once it is whole) and
    /// at or below the second (raised before its first slice was counted).
    pub fn own_count(&self, tenant: &str) -> (u64, bool) {
        let applied = self.applied();
        let count = read(&self.inner.counts, "the counts")
            .get(tenant)
            .copied()
            .unwrap_or(0);
        let held = self.inner.logged_high.load(Ordering::SeqCst);
        (count, held > applied.0)
    }

    /// Waits until the applied index reaches `index`, at most `wait`.
    pub async fn wait_applied(&self, index: CommitIndex, wait: Duration) -> Result<(), Error> {
        let mut rx = self.inner.applied.subscribe();
        let reached = tokio::time::timeout(wait, rx.wait_for(|a| *a >= index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::FenceTimeout {
                fence: index,
                applied: self.applied(),
            }),
        }
    }

    async fn submit(&self, op: WriteOp) -> Result<WriteResult, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Job::TwoPhase(op, tx))
            .map_err(|_| Error::WriterGone)?;
        writer_answer(rx.await)
    }

    /// Phase one: durable before it returns, so a yes vote survives a crash.
    pub async fn prepare(&self, txn: TxnId, items: Vec<Item>) -> Result<(), Error> {
        self.submit(WriteOp::Prepare { txn, items }).await.map(drop)
    }

    /// Applies the commits a prepare carries, then prepares; queued back to
    /// back, they normally share one storage write. Returns the indexes of
    /// the carried commits that are applied here (those this replica never
    /// prepared are not its business).
    pub async fn commit_and_prepare(
        &self,
        commits: Vec<CommitRequest>,
        txn: TxnId,
        items: Vec<Item>,
    ) -> Result<Vec<CommitIndex>, Error> {
        let mut pending = Vec::with_capacity(commits.len());
        for c in commits {
            let (tx, rx) = oneshot::channel();
            let op = WriteOp::Commit {
                txn: c.txn,
                index: c.index,
            };
            self.inner
                .writer
                .send(Job::TwoPhase(op, tx))
                .map_err(|_| Error::WriterGone)?;
            pending.push((c.index, rx));
        }
        let prepared = self.prepare(txn, items).await;
        let mut committed = Vec::new();
        for (index, rx) in pending {
            if let Ok(Ok(WriteResult::Done)) = rx.await {
                committed.push(index);
            }
        }
        prepared.map(|()| committed)
    }

    pub async fn commit(&self, txn: TxnId, index: CommitIndex) -> Result<(), Error> {
        match self.submit(WriteOp::Commit { txn, index }).await? {
            WriteResult::Done => Ok(()),
            WriteResult::UnknownTxn => Err(Error::UnknownTxn(txn)),
        }
    }

    pub async fn abort(&self, txn: TxnId) -> Result<(), Error> {
        self.submit(WriteOp::Abort { txn }).await.map(drop)
    }

    /// Applies the coordinator's answer about a transaction in doubt, as
    /// the participant decides it: a commit, an abort, or, if still
    /// pending, nothing.
    pub async fn settle(&self, txn: TxnId, outcome: Outcome) -> Result<(), Error> {
        match self.submit(WriteOp::Outcome { txn, outcome }).await? {
            WriteResult::Done => Ok(()),
            WriteResult::UnknownTxn => Err(Error::UnknownTxn(txn)),
        }
    }

    /// Ticks the participant's in-doubt clock: the prepared transactions
    /// to ask the coordinator about now, in id order.
    pub async fn in_doubt(&self) -> Result<Vec<TxnId>, Error> {
        self.ask_writer(Job::Tick).await
    }

    /// What the participant durably holds, as one snapshot.
    pub async fn held(&self) -> Result<Held, Error> {
        self.ask_writer(Job::Holdings).await
    }

    /// A question the writer answers between batches, from the
    /// participant's durable state.
    async fn ask_writer<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writer
            .send(job(tx))
            .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)
    }

    /// Hands entries fetched from a peer to the writer and returns at once,
    /// so the caller can fetch the next ones while these are written.
    /// Imports are written in the order they are queued, and are safe to
    /// repeat. With `through`, the whole copied range `(since, through]` is
    /// recorded as applied once every entry is in.
    pub fn queue_import(
        &self,
        entries: Vec<ExportEntry>,
        through: Option<(CommitIndex, CommitIndex)>,
    ) -> Result<QueuedImport, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Job::Import(Import::new(entries, through, tx)))
            .map_err(|_| Error::WriterGone)?;
        Ok(QueuedImport(rx))
    }

    /// Marks a catch-up as running; false if one already is.
    pub fn begin_catch_up(&self) -> bool {
        !self.inner.catching_up.swap(true, Ordering::SeqCst)
    }

    pub fn end_catch_up(&self) {
        self.inner.catching_up.store(false, Ordering::SeqCst);
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.inner.store.clone()
    }
}

/// The writer thread, to be joined at shutdown.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits, at most `grace`, for the writer to finish its last batch and
    /// end, which it does once every clone of the replica is dropped. Polls
    /// rather than blocking a thread on it: a runtime waits for its
    /// blocking threads when it shuts down, and a writer that did not end
    /// must not keep the process from exiting.
    pub async fn join(self, grace: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + grace;
        while !self.0.is_finished() {
            if Instant::now() >= deadline {
                return Err(Error::process(
                    "the writer thread",
                    format!("still running {grace:?} after the server stopped"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.0.join().map_err(|_| {
            Error::process(
                "the writer thread",
                "it panicked; nothing it had not made durable was acknowledged",
            )
        })
    }
}

/// An import the writer has taken on; [`QueuedImport::durable`] waits for it.
pub struct QueuedImport(oneshot::Receiver<Result<WriteResult, String>>);

impl QueuedImport {
    pub async fn durable(self) -> Result<(), Error> {
        writer_answer(self.0.await).map(drop)
    }
}

/// The writer's answer to one job, or why there is none.
fn writer_answer(
    answer: Result<Result<WriteResult, String>, oneshot::error::RecvError>,
) -> Result<WriteResult, Error> {
    match answer {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(e)) => Err(Error::WriteFailed(e)),
        Err(_) => Err(Error::WriterGone),
    }
}

/// Drains the job channel in batches, one durable transaction per batch:
/// every queued 2PC operation, plus a slice of copied data when
/// [`ImportQueue::rides`] allows. Ends when every sender is gone (the
/// process is shutting down), after the last batch is durable.
fn run_writer(
    store: Arc<dyn Store>,
    mut participant: Participant,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    inner: std::sync::Weak<Inner>,
) {
    let clock = Clock::start();
    let mut ops = Vec::with_capacity(MAX_BATCH_OPS);
    let mut replies = Vec::with_capacity(MAX_BATCH_OPS);
    let mut imports = ImportQueue::default();
    loop {
        if imports.is_empty() {
            // Nothing to do until a job arrives.
            let Some(job) = jobs.blocking_recv() else {
                break;
            };
            queue(
                job,
                &mut ops,
                &mut replies,
                &mut imports,
                &mut participant,
                &clock,
            );
        }
        while ops.len() < MAX_BATCH_OPS {
            match jobs.try_recv() {
                Ok(job) => queue(
                    job,
                    &mut ops,
                    &mut replies,
                    &mut imports,
                    &mut participant,
                    &clock,
                ),
                Err(_) => break,
            }
        }
        if ops.is_empty() && imports.is_empty() {
            // Only ticks came: nothing to write.
            continue;
        }
        let slice = if imports.rides(ops.len()) {
            imports.next_slice(IMPORT_SLICE_ITEMS)
        } else {
            None
        };
        imports.note_write(slice.is_some());
        let last_slice = slice.as_ref().map(|s| s.last);
        if let Some(Slice {
            entries, through, ..
        }) = slice
        {
            // Before any of it is counted: reads must know a commit may be
            // split from the moment its first slice is visible.
            if let (Some(inner), Some(top)) =
                (inner.upgrade(), entries.iter().map(|e| e.index.0).max())
            {
                inner.logged_high.fetch_max(top, Ordering::SeqCst);
            }
            ops.push(WriteOp::Import { entries, through });
        }
        let Some(mut results) =
            write_batch(&*store, &mut ops, &mut participant, clock.now(), &inner)
        else {
            break;
        };
        ops.clear();
        // The slice, if any, is the last op of the batch.
        let slice_result = last_slice.and_then(|_| results.pop());
        for (reply, result) in replies.drain(..).zip(results) {
            let _ = reply.send(result);
        }
        if let (Some(last), Some(result)) = (last_slice, slice_result) {
            // A failed slice ends its import: the copy retries from the
            // replica's applied index.
            if last || result.is_err() {
                if let Some(import) = imports.finish() {
                    let _ = import.reply.send(result);
                }
            }
        }
    }
}

/// The writer's clock: time enters the participant only as a reading of
/// it. Milliseconds since the writer started; nothing durable holds one.
struct Clock(Instant);

impl Clock {
    fn start() -> Self {
        Clock(Instant::now())
    }

    fn now(&self) -> Millis {
        Millis::from_duration(self.0.elapsed())
    }
}

/// Files a job: a 2PC operation into this batch, an import into the queue;
/// a tick or a question about holdings is answered at once from the
/// participant's durable state (the batch's operations are stepped only
/// when it is written, and these change nothing).
fn queue(
    job: Job,
    ops: &mut Vec<WriteOp>,
    replies: &mut Vec<Reply>,
    imports: &mut ImportQueue<Reply>,
    participant: &mut Participant,
    clock: &Clock,
) {
    match job {
        Job::TwoPhase(op, reply) => {
            ops.push(op);
            replies.push(reply);
        }
        Job::Import(import) => imports.push(import),
        Job::Holdings(reply) => {
            let _ = reply.send(Held {
                applied: participant.applied().contiguous(),
                prepared: participant.prepared().collect(),
                applied_above: participant.applied().above().collect(),
            });
        }
        Job::Tick(reply) => {
            let ask = participant
                .step(Event::Tick { now: clock.now() })
                .into_iter()
                .filter_map(|action| match action {
                    Action::AskOutcome { txn } => Some(txn),
                    _ => None,
                })
                .collect();
            let _ = reply.send(ask);
        }
    }
}

/// Writes `ops` in one durable transaction and publishes what it changed;
/// one result per op. `None` once the replica is gone (shutting down).
fn write_batch(
    store: &dyn Store,
    ops: &mut [WriteOp],
    participant: &mut Participant,
    now: Millis,
    inner: &std::sync::Weak<Inner>,
) -> Option<Vec<Result<WriteResult, String>>> {
    #[cfg(feature = "failpoints")]
    crash_before_commit(ops, participant);
    let writing = Instant::now();
    let outcome = store.write(ops, participant, now);
    // One durable storage transaction (one fsync) for the whole batch.
    metrics::histogram!("tally_store_write_seconds").record(writing.elapsed().as_secs_f64());
    metrics::histogram!("tally_store_batch_ops").record(ops.len() as f64);
    let inner = inner.upgrade()?;
    Some(match outcome {
        Ok(effect) => {
            publish(&inner, &effect, participant);
            effect.results.into_iter().map(Ok).collect()
        }
        Err(e) => {
            tracing::error!(error = %e, ops = ops.len(), "storage write failed");
            vec![Err(e.to_string()); ops.len()]
        }
    })
}

/// The failpoint build's worst moment for a counter (`TALLY_FAILPOINT=
/// before-commit`): a yes vote is durable, the coordinator has logged the
/// commit, and this process dies before applying it. Only the restart's
/// in-doubt resolution can then bring the transaction in.
#[cfg(feature = "failpoints")]
fn crash_before_commit(ops: &[WriteOp], participant: &Participant) {
    let commits_a_vote = ops.iter().any(|op| match op {
        WriteOp::Commit { txn, .. }
        | WriteOp::Outcome {
            txn,
            outcome: Outcome::Committed { .. },
        } => participant.is_prepared(*txn),
        _ => false,
    });
    if commits_a_vote && std::env::var("TALLY_FAILPOINT").as_deref() == Ok("before-commit") {
        tracing::error!("failpoint before-commit: crashing before applying a commit it voted for");
        std::process::abort();
    }
}

/// Makes a durable batch visible: counts first, then the applied index.
fn publish(inner: &Inner, effect: &BatchEffect, participant: &Participant) {
    let contiguous = participant.applied().contiguous();
    if !effect.counts.is_empty() {
        let mut counts = write(&inner.counts, "the counts");
        for (tenant, count) in &effect.counts {
            counts.insert(tenant.clone(), *count);
        }
    }
    inner
        .prepared
        .store(participant.prepared_len(), Ordering::SeqCst);
    inner.applied.send_if_modified(|current| {
        let changed = *current != contiguous;
        *current = contiguous;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FjallStore;

    fn entries(count: u64, items_each: usize) -> Vec<ExportEntry> {
        (1..=count)
            .map(|index| ExportEntry {
                index: CommitIndex(index),
                items: (0..items_each)
                    .map(|i| Item::new(format!("{index}-{i}"), "t"))
                    .collect(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_prepare_does_not_wait_for_a_whole_import() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FjallStore::open(dir.path()).unwrap());
        let (replica, _writer) =
            Replica::start(CounterId("c".into()), store, Default::default()).unwrap();
        // 200 slices' worth of copied data, queued ahead of the prepare:
        // 200 storage writes, each with its fsync.
        const SLICES: u64 = 200;
        let range = (CommitIndex(0), CommitIndex(SLICES));
        let import = replica
            .queue_import(entries(SLICES, IMPORT_SLICE_ITEMS), Some(range))
            .unwrap();
        replica
            .prepare(TxnId(1), vec![Item::new("x", "t")])
            .await
            .unwrap();
        // The prepare waits for at most a slice or two; what matters is that
        // it did not wait for the whole import. Judged by the items in when
        // it returned, with a wide margin: a loaded machine may let a few
        // slices through between the queueing and the prepare.
        let (imported, _) = replica.own_count("t");
        let whole = SLICES * IMPORT_SLICE_ITEMS as u64;
        assert!(
            imported < whole / 2,
            "the prepare waited for {imported} of {whole} copied items"
        );
        import.durable().await.unwrap();
        assert_eq!(replica.applied(), CommitIndex(SLICES));
        assert_eq!(
            replica
                .count("t", CommitIndex(SLICES), Duration::ZERO)
                .await
                .unwrap(),
            whole
        );
    }

    /// Copied data lands a slice at a time: until the copied range is
    /// recorded as applied, the counter's own count says it may be partial,
    /// and so does a restart that finds the cut copy on disk.
    #[tokio::test]
    async fn the_own_count_is_flagged_partial_while_copied_data_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FjallStore::open(dir.path()).unwrap());
        let (replica, _writer) =
            Replica::start(CounterId("c".into()), store, Default::default()).unwrap();
        assert_eq!(replica.own_count("t"), (0, false));

        // A stream cut after two of four entries: no `through`.
        let cut: Vec<ExportEntry> = entries(4, 3).into_iter().skip(2).collect();
        replica
            .queue_import(cut, None)
            .unwrap()
            .durable()
            .await
            .unwrap();
        assert_eq!(replica.own_count("t"), (6, true), "indexes 3 and 4 only");
        drop(replica);

        // The cut copy is on disk after a restart, and still flagged.
        let store = Arc::new(FjallStore::open(dir.path()).unwrap());
        let (replica, _writer) =
            Replica::start(CounterId("c".into()), store, Default::default()).unwrap();
        assert_eq!(replica.own_count("t"), (6, true), "after a restart");

        // The whole range, ended complete: every commit is whole again.
        let range = (CommitIndex(0), CommitIndex(4));
        replica
            .queue_import(entries(4, 3), Some(range))
            .unwrap()
            .durable()
            .await
            .unwrap();
        assert_eq!(replica.own_count("t"), (12, false));
    }

    #[tokio::test]
    async fn commits_out_of_order_are_never_flagged_partial() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FjallStore::open(dir.path()).unwrap());
        let (replica, _writer) =
            Replica::start(CounterId("c".into()), store, Default::default()).unwrap();
        // Index 2 before index 1 leaves a gap, but each commit held is whole.
        for (txn, index) in [(2, 2), (1, 1)] {
            let items: Vec<Item> = (0..3)
                .map(|k| Item::new(format!("{txn}-{k}"), "t"))
                .collect();
            replica.prepare(TxnId(txn), items).await.unwrap();
            replica
                .commit(TxnId(txn), CommitIndex(index))
                .await
                .unwrap();
            assert!(!replica.own_count("t").1);
        }
        assert_eq!(replica.own_count("t"), (6, false));
    }
}
