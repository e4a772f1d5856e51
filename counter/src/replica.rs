//! The live replica: the store, the single writer thread that batches every
//! change into one durable transaction, and the in-memory view (counts and
//! applied index) that reads are served from.
//!
//! The writer is the one owner of the 2PC participant state
//! (`tally_common::participant`): the prepared transactions and the applied
//! set, which decide every prepare, commit and abort. It publishes a new count
//! only after the transaction that produced it is durable, and the applied
//! index only after the counts, so a read fenced at index N never misses an
//! item committed at or below N.

use crate::error::Error;
use crate::store::{BatchEffect, Store, WriteOp, WriteResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tally_common::api::{CommitRequest, CounterStatus, ExportEntry};
use tally_common::participant::Participant;
use tally_common::{CommitIndex, CounterId, Item, TxnId};
use tokio::sync::{mpsc, oneshot, watch};

/// Upper bound on operations folded into one storage transaction, so one
/// batch cannot keep early callers waiting for a very long fsync.
const MAX_BATCH_OPS: usize = 512;

type Reply = oneshot::Sender<Result<WriteResult, String>>;

/// Shared handle on the replica; cheap to clone into handlers and tasks.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    id: CounterId,
    store: Arc<dyn Store>,
    writer: mpsc::UnboundedSender<(WriteOp, Reply)>,
    counts: RwLock<HashMap<String, u64>>,
    applied: watch::Sender<CommitIndex>,
    /// Prepared transactions and when this process first saw them, so the
    /// in-doubt resolver only asks about ones that waited too long.
    prepared: Mutex<HashMap<TxnId, Instant>>,
    catching_up: AtomicBool,
}

impl Replica {
    /// Recovers the in-memory view from `store` and starts the writer thread.
    pub fn start(id: CounterId, store: Arc<dyn Store>) -> Result<Self, Error> {
        let recovered = store.recover()?;
        let now = Instant::now();
        let (writer, jobs) = mpsc::unbounded_channel();
        let (applied, _) = watch::channel(recovered.applied.contiguous());
        let inner = Arc::new(Inner {
            id,
            store: store.clone(),
            writer,
            counts: RwLock::new(recovered.counts),
            applied,
            prepared: Mutex::new(recovered.prepared.iter().map(|&t| (t, now)).collect()),
            catching_up: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        // The participant's start-up questions (one per prepared
        // transaction) are asked by `catchup::join` before it registers.
        let (participant, _ask) = Participant::recover(recovered.prepared, recovered.applied);
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || run_writer(store, participant, jobs, weak))
            .map_err(|e| Error::BadRequest(format!("cannot start writer: {e}")))?;
        Ok(Replica { inner })
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
            applied_index: self.applied(),
            catching_up: self.inner.catching_up.load(Ordering::SeqCst),
            prepared: self.inner.prepared.lock().expect("poisoned").len(),
            voted: None,
            committed: Vec::new(),
        }
    }

    /// The tenant's count once everything up to `fence` is applied.
    pub async fn count(
        &self,
        tenant: &str,
        fence: CommitIndex,
        wait: Duration,
    ) -> Result<u64, Error> {
        self.wait_applied(fence, wait).await?;
        Ok(self
            .inner
            .counts
            .read()
            .expect("poisoned")
            .get(tenant)
            .copied()
            .unwrap_or(0))
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
            .send((op, tx))
            .map_err(|_| Error::WriterGone)?;
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(Error::BadRequest(e)),
            Err(_) => Err(Error::WriterGone),
        }
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
                .send((op, tx))
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

    /// Merges entries fetched from a peer; safe to repeat. With `through`,
    /// also records the whole copied range `(since, through]` as applied.
    pub async fn import(
        &self,
        entries: Vec<ExportEntry>,
        through: Option<(CommitIndex, CommitIndex)>,
    ) -> Result<(), Error> {
        self.submit(WriteOp::Import { entries, through })
            .await
            .map(drop)
    }

    /// Prepared transactions that have waited longer than `age` for an outcome.
    pub fn in_doubt(&self, age: Duration) -> Vec<TxnId> {
        let prepared = self.inner.prepared.lock().expect("poisoned");
        let mut txns: Vec<TxnId> = prepared
            .iter()
            .filter(|(_, since)| since.elapsed() >= age)
            .map(|(txn, _)| *txn)
            .collect();
        txns.sort();
        txns
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

/// Drains the job channel in batches, one durable transaction per batch.
/// Ends when every sender is gone (the process is shutting down), after the
/// last batch is durable.
fn run_writer(
    store: Arc<dyn Store>,
    mut participant: Participant,
    mut jobs: mpsc::UnboundedReceiver<(WriteOp, Reply)>,
    inner: std::sync::Weak<Inner>,
) {
    let mut ops = Vec::with_capacity(MAX_BATCH_OPS);
    let mut replies = Vec::with_capacity(MAX_BATCH_OPS);
    while let Some((op, reply)) = jobs.blocking_recv() {
        ops.push(op);
        replies.push(reply);
        while ops.len() < MAX_BATCH_OPS {
            match jobs.try_recv() {
                Ok((op, reply)) => {
                    ops.push(op);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let writing = Instant::now();
        let outcome = store.write(&ops, &mut participant);
        // One durable storage transaction (one fsync) for the whole batch.
        metrics::histogram!("tally_store_write_seconds").record(writing.elapsed().as_secs_f64());
        metrics::histogram!("tally_store_batch_ops").record(ops.len() as f64);
        let Some(inner) = inner.upgrade() else { break };
        match outcome {
            Ok(effect) => {
                publish(&inner, &effect, participant.applied().contiguous());
                for (reply, result) in replies.drain(..).zip(effect.results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = ops.len(), "storage write failed");
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        ops.clear();
    }
}

/// Makes a durable batch visible: counts first, then the applied index.
fn publish(inner: &Inner, effect: &BatchEffect, contiguous: CommitIndex) {
    if !effect.counts.is_empty() {
        let mut counts = inner.counts.write().expect("poisoned");
        for (tenant, count) in &effect.counts {
            counts.insert(tenant.clone(), *count);
        }
    }
    {
        let mut prepared = inner.prepared.lock().expect("poisoned");
        let now = Instant::now();
        for txn in &effect.prepared {
            prepared.entry(*txn).or_insert(now);
        }
        for txn in &effect.forgotten {
            prepared.remove(txn);
        }
    }
    inner.applied.send_if_modified(|current| {
        let changed = *current != contiguous;
        *current = contiguous;
        changed
    });
}
