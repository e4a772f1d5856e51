//! The coordinator's timers: health checks that drive counter states, and
//! the sweeper that re-sends unacknowledged commits and trims the decision
//! log once every in-sync counter has applied a transaction.

use crate::client::CallError;
use crate::state::{now_ms, Shared};
use crate::txn::acknowledge;
use std::sync::Arc;
use std::time::Duration;
use tally_common::api::{CommitRequest, CounterState};
use tally_common::membership::HealthReport;
use tally_common::CommitIndex;
use tokio::time::MissedTickBehavior;

/// Checks every counter each `--health-interval`, all at once, each with
/// its own timeout so one hung counter cannot delay the verdict on others.
pub async fn run_checks(shared: Arc<Shared>) {
    let interval = shared.settings.health_interval;
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(2));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let members: Vec<_> = shared
            .cluster
            .lock()
            .expect("poisoned")
            .members()
            .map(|m| (m.id.clone(), m.url.clone()))
            .collect();
        let checks = members.into_iter().map(|(id, url)| {
            let shared = shared.clone();
            async move {
                let epoch = shared.epoch();
                let result = shared.counters.status(&url, &id, epoch, timeout).await;
                let effects = {
                    let mut cluster = shared.cluster.lock().expect("poisoned");
                    match result {
                        Ok(status) => {
                            let report = HealthReport {
                                incarnation: status.incarnation,
                                applied: status.applied_index,
                                catching_up: status.catching_up,
                                registered_here: status.registered_epoch == epoch,
                                copy: status.copy,
                            };
                            cluster.health_ok(&id, report, now_ms())
                        }
                        Err(e) => {
                            tracing::debug!(counter = %id, error = %e, "health check failed");
                            cluster.health_failed(&id)
                        }
                    }
                };
                shared.carry_out(effects).await;
            }
        });
        futures_util::future::join_all(checks).await;
    }
}

/// Re-sends commits that a counter has not acknowledged, and trims the log.
pub async fn run_sweeper(shared: Arc<Shared>) {
    let period = shared
        .settings
        .health_interval
        .clamp(Duration::from_millis(200), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut trimmed = CommitIndex::ZERO;
    loop {
        tick.tick().await;
        resend_commits(&shared, period).await;
        let upto = {
            let mut cluster = shared.cluster.lock().expect("poisoned");
            let upto = cluster.trim_point();
            if upto > trimmed {
                cluster.note_trimmed(upto);
                // Counters still waiting for a commit about to be forgotten
                // will hear "aborted" for it: they must copy it instead.
                let mut pending = shared.pending.lock().expect("poisoned");
                for (index, entry) in pending.range(..=upto) {
                    for id in &entry.waiting {
                        cluster.must_copy(id, *index);
                    }
                }
                pending.retain(|index, _| *index > upto);
            }
            upto
        };
        if upto > trimmed {
            shared.decider.trim(upto);
            trimmed = upto;
        }
    }
}

async fn resend_commits(shared: &Arc<Shared>, older_than: Duration) {
    let due: Vec<_> = shared
        .pending
        .lock()
        .expect("poisoned")
        .iter()
        .filter(|(_, p)| p.since.elapsed() >= older_than)
        .take(256)
        .map(|(index, p)| (*index, p.txn, p.waiting.clone()))
        .collect();
    let timeout = shared.settings.commit_timeout;
    let mut calls = Vec::new();
    for (index, txn, waiting) in due {
        for id in waiting {
            let member = shared
                .cluster
                .lock()
                .expect("poisoned")
                .member(&id)
                .map(|m| (m.url.clone(), m.state));
            let shared = shared.clone();
            calls.push(async move {
                let Some((url, state)) = member else {
                    // Gone from the view: nobody left to tell.
                    acknowledge(&shared, index, &id, CommitIndex::ZERO);
                    return;
                };
                if state == CounterState::Dead {
                    return;
                }
                let request = CommitRequest { txn, index };
                match shared.counters.commit(&url, &id, request, timeout).await {
                    Ok(status) => acknowledge(&shared, index, &id, status.applied_index),
                    Err(CallError::Status { status, .. }) if status.as_u16() == 409 => {
                        // It does not hold the prepared transaction: catch-up
                        // brings it instead, and until then it is not in sync.
                        tracing::info!(counter = %id, %index, "counter lacks a prepared commit; it will copy it from a peer");
                        let effects = shared
                            .cluster
                            .lock()
                            .expect("poisoned")
                            .lacks_commit(&id, index);
                        shared.carry_out(effects).await;
                        acknowledge(&shared, index, &id, CommitIndex::ZERO);
                    }
                    Err(e) => tracing::debug!(counter = %id, %index, error = %e, "commit re-send failed"),
                }
            });
        }
    }
    futures_util::future::join_all(calls).await;
}
