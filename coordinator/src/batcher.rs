//! Group commit: concurrent `POST /items` requests wait in one bounded
//! queue, and whenever a transaction slot is free the batcher takes
//! everything queued (up to `max_txn_items`) into one transaction. Under
//! load the queue fills while slots are busy, so transactions grow exactly
//! when fsyncs are the bottleneck. A full queue answers 503 at once rather
//! than letting latency and memory grow without bound.

use crate::error::Error;
use crate::state::Shared;
use crate::txn;
use std::sync::Arc;
use tally_common::Item;
use tokio::sync::{mpsc, oneshot, Semaphore};

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

async fn run(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<WriteRequest>,
    max_txn_items: usize,
    max_inflight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_inflight));
    let mut carried: Option<WriteRequest> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match queue.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut items = first.items;
        let mut replies = vec![first.reply];
        while items.len() < max_txn_items {
            match queue.try_recv() {
                Ok(next) if items.len() + next.items.len() > max_txn_items => {
                    carried = Some(next);
                    break;
                }
                Ok(next) => {
                    items.extend(next.items);
                    replies.push(next.reply);
                }
                Err(_) => break,
            }
        }
        tokio::spawn(txn::run(shared.clone(), items, replies, slot));
    }
}
