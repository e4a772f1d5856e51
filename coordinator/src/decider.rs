//! The one writer of the decision log. Transactions hand in their votes;
//! the decider decides a whole batch of them under the membership lock,
//! logs the commits together with the membership in one redb transaction
//! (one fsync for many transactions: group commit on the coordinator), and
//! only then publishes the new fence and answers.
//!
//! Being the only writer also orders membership snapshots: a snapshot is
//! taken inside the write transaction, so an older one can never overwrite
//! a newer one.

use crate::state::Shared;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tally_common::membership::{Decision, Effect, StoredMember};
use tally_common::{CommitIndex, CounterId, TxnId};
use tokio::sync::{mpsc, oneshot};

/// Most jobs folded into one log write.
const MAX_BATCH: usize = 1024;

enum Job {
    Decide {
        txn: TxnId,
        yes: BTreeSet<CounterId>,
        reply: oneshot::Sender<Decision>,
    },
    Persist {
        reply: oneshot::Sender<()>,
    },
    Trim {
        upto: CommitIndex,
    },
}

/// A logged commit and the counters that have not acknowledged it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub txn: TxnId,
    pub waiting: BTreeSet<CounterId>,
    pub since: Instant,
}

/// Handle to submit work to the decider task.
#[derive(Clone)]
pub struct Decider {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Decider {
    pub fn new() -> (Self, DeciderTask) {
        let (jobs, rx) = mpsc::unbounded_channel();
        (Decider { jobs }, DeciderTask { jobs: rx })
    }

    /// Decides `txn` from its yes votes; returns once the decision is durable.
    pub async fn decide(&self, txn: TxnId, yes: BTreeSet<CounterId>) -> Decision {
        let (reply, rx) = oneshot::channel();
        let aborted = || Decision::Abort {
            reason: "the coordinator is shutting down".into(),
        };
        if self.jobs.send(Job::Decide { txn, yes, reply }).is_err() {
            return aborted();
        }
        rx.await.unwrap_or_else(|_| aborted())
    }

    /// Makes the current membership durable.
    pub async fn persist(&self) {
        let (reply, rx) = oneshot::channel();
        if self.jobs.send(Job::Persist { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn trim(&self, upto: CommitIndex) {
        let _ = self.jobs.send(Job::Trim { upto });
    }
}

pub struct DeciderTask {
    jobs: mpsc::UnboundedReceiver<Job>,
}

impl DeciderTask {
    pub async fn run(mut self, shared: Arc<Shared>) {
        // The membership as last made durable: a batch whose decisions left
        // it unchanged does not rewrite it, which keeps the log write (and
        // the pages it dirties) to the decisions themselves.
        let mut saved: Option<Vec<StoredMember>> = None;
        while let Some(first) = self.jobs.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let shared = shared.clone();
            let done = tokio::task::spawn_blocking(move || write_batch(&shared, jobs, saved)).await;
            match done {
                Ok(members) => saved = Some(members),
                Err(_) => {
                    // The log write panicked: memory and log may disagree,
                    // and only a restart from the log is safe.
                    tracing::error!("decision log write failed; exiting to recover from the log");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Decides and logs one batch of jobs; returns the membership that is now
/// durable.
fn write_batch(
    shared: &Shared,
    jobs: Vec<Job>,
    saved: Option<Vec<StoredMember>>,
) -> Vec<StoredMember> {
    metrics::histogram!("tally_decision_log_batch").record(jobs.len() as f64);
    let result = (|| -> Result<_, crate::error::Error> {
        let mut batch = shared.log.begin()?;
        let mut decided = Vec::new();
        let mut effects = Vec::new();
        let mut replies = Vec::new();
        let mut persisted = Vec::new();
        let members = {
            let mut cluster = shared.cluster.lock().expect("poisoned");
            for job in jobs {
                match job {
                    Job::Decide { txn, yes, reply } => {
                        let (decision, more) = cluster.decide(&yes);
                        effects.extend(more);
                        if let Decision::Commit { index, .. } = &decision {
                            decided.push((txn, *index, yes));
                        }
                        replies.push((txn, decision, reply));
                    }
                    Job::Persist { reply } => persisted.push(reply),
                    Job::Trim { upto } => {
                        let trimmed = batch.trim(upto)?;
                        if trimmed > 0 {
                            tracing::debug!(%upto, trimmed, "trimmed decision log");
                        }
                    }
                }
            }
            cluster.stored()
        };
        for (txn, index, _) in &decided {
            batch.log_commit(*txn, *index)?;
        }
        if let Some(top) = decided.iter().map(|(_, index, _)| *index).max() {
            batch.raise_decided(top)?;
        }
        if saved.as_ref() != Some(&members) {
            batch.save_members(&members)?;
        }
        let writing = Instant::now();
        batch.commit()?;
        // The commit is the fsync that every decision in the batch waits on.
        metrics::histogram!("tally_decision_log_write_seconds")
            .record(writing.elapsed().as_secs_f64());
        Ok((decided, effects, replies, persisted, members))
    })();
    let (decided, effects, replies, persisted, members) = match result {
        Ok(done) => done,
        Err(e) => {
            // Commit indexes were assigned in memory but not logged; going
            // on would leave a gap that no counter could ever fill.
            tracing::error!(error = %e, "cannot write the decision log; exiting");
            std::process::exit(1);
        }
    };

    #[cfg(feature = "failpoints")]
    if !decided.is_empty() && std::env::var("TALLY_FAILPOINT").as_deref() == Ok("after-decision") {
        tracing::error!("failpoint after-decision: crashing before any commit is sent");
        std::process::abort();
    }

    if let Some(top) = decided.iter().map(|(_, index, _)| *index).max() {
        let now = Instant::now();
        let mut pending = shared.pending.lock().expect("poisoned");
        for (txn, index, yes) in decided {
            pending.insert(
                index,
                Pending {
                    txn,
                    waiting: yes,
                    since: now,
                },
            );
        }
        drop(pending);
        shared.decided.send_if_modified(|d| {
            let changed = top > *d;
            *d = (*d).max(top);
            changed
        });
    }
    {
        let mut in_flight = shared.in_flight.lock().expect("poisoned");
        for (txn, _, _) in &replies {
            in_flight.remove(txn);
        }
    }
    for (_, decision, reply) in replies {
        let _ = reply.send(decision);
    }
    for reply in persisted {
        let _ = reply.send(());
    }
    // A decision's effects are the transitions of counters that missed the
    // vote; the persist they need was part of this batch.
    for effect in effects {
        if let Effect::Transition { id, .. } = effect {
            tracing::warn!(counter = %id, "counter missed a prepare and left the in-sync set");
        }
    }
    members
}
