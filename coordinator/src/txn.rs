//! One two-phase-commit transaction, from prepare to the last commit.
//!
//! 1. Prepare goes to every counter that is not dead, with one serialised
//!    body. The transaction waits for the in-sync counters and for the
//!    others that are keeping up, never past `--prepare-timeout`. Once
//!    the votes are in, the batcher may start the next transaction's
//!    prepare while this one's decision is logged.
//! 2. The decider turns the yes votes into a decision and logs it durably.
//! 3. Clients hear the outcome; commit (or abort) goes to the yes voters.
//!    A commit is offered to the next prepare before the batcher is told
//!    this transaction is done, then waits `COMMIT_LINGER` to ride along with the next
//!    transaction's prepare (under load one follows at once, and the
//!    counter then applies the commit in the same storage write as the
//!    prepare); if none picked it up, it goes out on its own.
//!    Unacknowledged commits stay pending and are re-sent until every
//!    counter has them.

use crate::batcher::Slot;
use crate::error::Error;
use crate::state::Shared;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_common::api::{AbortRequest, CommitRequest, PrepareRequest};
use tally_common::membership::Decision;
use tally_common::{CommitIndex, CounterId, Item, TxnId};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

type Reply = oneshot::Sender<Result<(), Error>>;

/// How long a decided commit waits for the next prepare to carry it. It
/// delays only the counters' applying, which read fences already wait for,
/// never the client's answer.
const COMMIT_LINGER: Duration = Duration::from_millis(1);

/// How long a transaction waits for counters that are not in sync once
/// every in-sync counter has voted. A joining counter is often busy
/// importing what it missed; waiting for it at full prepare timeout made
/// every write as slow as the slowest joiner. A vote that misses the grace
/// only means the joiner copies that commit later (its `join_until` rises).
const JOINER_GRACE: Duration = Duration::from_millis(5);

pub async fn run(shared: Arc<Shared>, items: Vec<Item>, replies: Vec<Reply>, mut slot: Slot) {
    let txn = shared.begin_txn();
    let span = tracing::debug_span!("txn", %txn, items = items.len(), requests = replies.len());
    let (item_count, request_count) = (items.len(), replies.len());
    async move {
        let started = Instant::now();
        let yes = prepare(&shared, txn, items).await;
        slot.prepared();
        metrics::histogram!("tally_prepare_phase_seconds").record(started.elapsed().as_secs_f64());
        let decision = shared.decider.decide(txn, yes.clone()).await;
        if let Decision::Commit { index, .. } = &decision {
            // Offered to the next prepare before the batcher hears this slot
            // is free, so the transaction it starts next can carry it.
            let request = CommitRequest { txn, index: *index };
            shared.undelivered.lock().expect("poisoned").push(request);
        }
        drop(slot);
        match decision {
            Decision::Commit { index, dropped } => {
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
                record_outcome("committed", item_count, request_count);
                shared.stats.committed(request_count, item_count);
                if !dropped.is_empty() {
                    tracing::warn!(%txn, %index, ?dropped, "committed without counters that did not vote");
                }
                let committing = Instant::now();
                send_commits(&shared, txn, index, yes).await;
                metrics::histogram!("tally_commit_phase_seconds")
                    .record(committing.elapsed().as_secs_f64());
            }
            Decision::Abort { reason } => {
                record_outcome("aborted", item_count, request_count);
                tracing::warn!(%txn, %reason, "transaction aborted");
                for reply in replies {
                    let _ = reply.send(Err(Error::Aborted(reason.clone())));
                }
                send_aborts(&shared, txn, yes).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Transactions by outcome, and their size: items and requests per
/// transaction show how much group commit is folding together.
fn record_outcome(outcome: &'static str, items: usize, requests: usize) {
    metrics::counter!("tally_transactions_total", "outcome" => outcome).increment(1);
    metrics::histogram!("tally_txn_items", "outcome" => outcome).record(items as f64);
    metrics::histogram!("tally_txn_requests", "outcome" => outcome).record(requests as f64);
}

/// Phase one. Returns the counters that voted yes in time.
async fn prepare(shared: &Arc<Shared>, txn: TxnId, items: Vec<Item>) -> BTreeSet<CounterId> {
    let participants = shared.cluster.lock().expect("poisoned").participants();
    let lagging = shared.lagging.lock().expect("poisoned").clone();
    let commits = std::mem::take(&mut *shared.undelivered.lock().expect("poisoned"));
    let carried: Arc<BTreeSet<CommitIndex>> = Arc::new(commits.iter().map(|c| c.index).collect());
    let body = Bytes::from(
        PrepareRequest {
            txn,
            items,
            commits,
        }
        .to_postcard(),
    );
    let timeout = shared.settings.prepare_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let (votes, mut rx) = mpsc::unbounded_channel();
    let mut awaited = BTreeSet::new();
    let mut awaited_in_sync = BTreeSet::new();
    for p in participants {
        if p.in_sync || !lagging.contains(&p.id) {
            awaited.insert(p.id.clone());
        }
        // A converging joiner is waited for like an in-sync counter, unless
        // its last prepare failed (membership.rs says why).
        if p.in_sync || (p.converging && !lagging.contains(&p.id)) {
            awaited_in_sync.insert(p.id.clone());
        }
        let (shared, body, votes) = (shared.clone(), body.clone(), votes.clone());
        let carried = carried.clone();
        tokio::spawn(async move {
            let result = shared
                .counters
                .prepare(&p.url, &p.id, p.incarnation, txn, body, timeout)
                .await;
            if let Ok(status) = &result {
                // Only commits this prepare carried can have been applied
                // by it; anything else in the answer is not believed.
                for index in status.committed.iter().filter(|i| carried.contains(i)) {
                    acknowledge(&shared, *index, &p.id, status.applied_index);
                }
            }
            let mut lagging = shared.lagging.lock().expect("poisoned");
            match &result {
                Ok(_) => lagging.remove(&p.id),
                Err(e) => {
                    tracing::debug!(counter = %p.id, error = %e, "prepare failed");
                    metrics::counter!("tally_prepare_failures_total",
                        "counter" => p.id.0.clone(), "kind" => e.kind())
                    .increment(1);
                    lagging.insert(p.id.clone())
                }
            };
            drop(lagging);
            let _ = votes.send((p.id, result.is_ok()));
        });
    }
    drop(votes);
    let mut yes = BTreeSet::new();
    let mut deadline = deadline;
    let mut graced = false;
    while !awaited.is_empty() {
        if awaited_in_sync.is_empty() && !graced {
            deadline = deadline.min(tokio::time::Instant::now() + JOINER_GRACE);
            graced = true;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((id, voted_yes))) => {
                awaited.remove(&id);
                awaited_in_sync.remove(&id);
                if voted_yes {
                    yes.insert(id);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Votes that already arrived from counters we did not wait for count too.
    while let Ok((id, true)) = rx.try_recv() {
        yes.insert(id);
    }
    yes
}

async fn send_commits(
    shared: &Arc<Shared>,
    txn: TxnId,
    index: CommitIndex,
    yes: BTreeSet<CounterId>,
) {
    let request = CommitRequest { txn, index };
    tokio::time::sleep(COMMIT_LINGER).await;
    let carried = {
        let mut undelivered = shared.undelivered.lock().expect("poisoned");
        match undelivered.iter().position(|c| c.txn == txn) {
            Some(at) => {
                undelivered.swap_remove(at);
                false
            }
            None => true,
        }
    };
    if carried {
        return;
    }
    let timeout = shared.settings.commit_timeout;
    let calls = yes.into_iter().filter_map(|id| {
        let url = shared.member_url(&id)?;
        let shared = shared.clone();
        Some(async move {
            match shared.counters.commit(&url, &id, request, timeout).await {
                Ok(status) => acknowledge(&shared, index, &id, status.applied_index),
                Err(e) => tracing::debug!(counter = %id, error = %e, "commit not acknowledged yet"),
            }
        })
    });
    futures_util::future::join_all(calls).await;
}

/// Records that `id` applied the commit at `index`.
pub fn acknowledge(shared: &Shared, index: CommitIndex, id: &CounterId, applied: CommitIndex) {
    shared
        .cluster
        .lock()
        .expect("poisoned")
        .record_applied(id, applied);
    let mut pending = shared.pending.lock().expect("poisoned");
    if let Some(entry) = pending.get_mut(&index) {
        entry.waiting.remove(id);
        if entry.waiting.is_empty() {
            pending.remove(&index);
        }
    }
}

/// Best effort: a counter that misses the abort asks for the outcome later
/// and, the decision being absent, aborts by itself.
async fn send_aborts(shared: &Arc<Shared>, txn: TxnId, yes: BTreeSet<CounterId>) {
    let timeout = shared.settings.commit_timeout;
    let calls = yes.into_iter().filter_map(|id| {
        let url = shared.member_url(&id)?;
        let shared = shared.clone();
        Some(async move {
            let _ = shared
                .counters
                .abort(&url, AbortRequest { txn }, timeout)
                .await;
        })
    });
    futures_util::future::join_all(calls).await;
}
