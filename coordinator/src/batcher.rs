//! Group commit: concurrent `POST /items` requests wait in one bounded
//! queue and are folded into transactions (up to `max_txn_items` each).
//! A transaction starts at once when no other is in its prepare phase;
//! while one is, small requests keep gathering until its votes are in, so
//! under load each transaction (and each fsync, and each round of prepare
//! and commit messages) serves many requests. The two phases form a
//! pipeline: one batch prepares at the counters while the one before it has
//! its decision logged at the coordinator, so neither side's fsync waits for
//! the other's. Batches of `OVERLAP_ITEMS` or more may prepare side by side,
//! since their cost is in moving items, not in per-transaction overhead.
//! At most `max_inflight` transactions are between prepare and decision at
//! once. A full queue answers 503 at once rather than letting latency and
//! memory grow without bound.

use crate::error::Error;
use crate::state::Shared;
use crate::txn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tally_common::Item;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

/// One client request waiting for its transaction.
pub struct WriteRequest {
    pub items: Vec<Item>,
    pub reply: oneshot::Sender<Result<(), Error>>,
}

/// Handle used by the HTTP handler.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<WriteRequest>,
}

impl Batcher {
    /// Starts the batching task.
    pub fn start(
        shared: Arc<Shared>,
        max_queued: usize,
        max_txn_items: usize,
        max_inflight: usize,
    ) -> Self {
        let (queue, rx) = mpsc::channel(max_queued.max(1));
        tokio::spawn(run(shared, rx, max_txn_items.max(1), max_inflight.max(1)));
        Batcher { queue }
    }

    /// Adds `items` to the next transaction and waits for its outcome.
    pub async fn submit(&self, items: Vec<Item>) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .try_send(WriteRequest { items, reply })
            .map_err(|_| Error::Unavailable("too many writes waiting, retry shortly".into()))?;
        rx.await.map_err(|_| {
            Error::Unavailable("the coordinator stopped before deciding; retry".into())
        })?
    }
}

/// Requests at least this many items start a transaction even while
/// others are in flight: large batches gain from overlapping fsyncs, small
/// ones from waiting and growing.
const OVERLAP_ITEMS: usize = 1000;

/// Small transactions in their prepare phase at once. One keeps the
/// counters' writers busy with one batch while the previous transaction's
/// decision is being logged; more would split the waiting requests into
/// smaller transactions, each costing its own round of messages.
const PREPARING_SMALL: usize = 1;

/// A transaction slot; dropping it wakes the batcher.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    preparing: Option<Arc<AtomicUsize>>,
    freed: Arc<Notify>,
}

impl Slot {
    /// Ends phase one: the next batch may start preparing while this
    /// transaction's decision is logged.
    pub fn prepared(&mut self) {
        if let Some(preparing) = self.preparing.take() {
            preparing.fetch_sub(1, Ordering::SeqCst);
            self.freed.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.prepared();
        self.freed.notify_one();
    }
}

/// The batch being gathered for the next transaction.
struct Gathering {
    items: Vec<Item>,
    replies: Vec<oneshot::Sender<Result<(), Error>>>,
}

async fn run(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<WriteRequest>,
    max_txn_items: usize,
    max_inflight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_inflight));
    let freed = Arc::new(Notify::new());
    let preparing = Arc::new(AtomicUsize::new(0));
    let mut carried: Option<WriteRequest> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match queue.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        let mut batch = Gathering {
            items: first.items,
            replies: vec![first.reply],
        };
        // Start when no other transaction is preparing, or when the batch
        // is big enough to be worth overlapping; until then keep gathering.
        loop {
            carried = take_queued(&mut queue, &mut batch, max_txn_items);
            let free = slots.available_permits();
            let big = batch.items.len() >= OVERLAP_ITEMS.min(max_txn_items);
            let idle = preparing.load(Ordering::SeqCst) < PREPARING_SMALL;
            if carried.is_some() || ((idle || big) && free > 0) {
                break;
            }
            tokio::select! {
                _ = freed.notified() => {}
                next = queue.recv() => match next {
                    Some(next) if batch.items.len() + next.items.len() <= max_txn_items => {
                        batch.items.extend(next.items);
                        batch.replies.push(next.reply);
                    }
                    Some(next) => {
                        carried = Some(next);
                        break;
                    }
                    None => break,
                },
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        preparing.fetch_add(1, Ordering::SeqCst);
        let slot = Slot {
            _permit: permit,
            preparing: Some(preparing.clone()),
            freed: freed.clone(),
        };
        tokio::spawn(txn::run(shared.clone(), batch.items, batch.replies, slot));
    }
}

/// Moves queued requests into `batch` up to `max_items`; returns the first
/// request that does not fit.
fn take_queued(
    queue: &mut mpsc::Receiver<WriteRequest>,
    batch: &mut Gathering,
    max_items: usize,
) -> Option<WriteRequest> {
    while batch.items.len() < max_items {
        match queue.try_recv() {
            Ok(next) if batch.items.len() + next.items.len() > max_items => return Some(next),
            Ok(next) => {
                batch.items.extend(next.items);
                batch.replies.push(next.reply);
            }
            Err(_) => return None,
        }
    }
    None
}
