//! What the core tells the operator, as logs and metrics. The core only
//! says what happened (`Notice`); how it is shown is decided here.

use crate::client::CallError;
use tally_common::api::CounterState;
use tally_common::coordinator::Notice;
use tally_common::membership::{Decision, Effect};
use tally_common::CounterId;

/// Totals for the dashboard's writes/s chart (`GET /stats`).
pub static STATS: crate::metrics::Stats = crate::metrics::Stats::new();

pub fn report(notice: Notice) {
    match notice {
        Notice::Decided {
            txn,
            decision,
            items,
            requests,
            prepare_ms,
            decide_ms,
        } => {
            metrics::histogram!("tally_prepare_phase_seconds").record(prepare_ms as f64 / 1e3);
            metrics::histogram!("tally_decide_phase_seconds").record(decide_ms as f64 / 1e3);
            match decision {
                Decision::Commit { index, dropped } => {
                    record_outcome("committed", items, requests);
                    STATS.committed(requests, items);
                    if !dropped.is_empty() {
                        tracing::warn!(%txn, %index, ?dropped,
                            "committed without counters that did not vote; they left the in-sync set");
                    }
                }
                Decision::Abort { reason } => {
                    record_outcome("aborted", items, requests);
                    tracing::warn!(%txn, %reason, "transaction aborted");
                }
            }
        }
        Notice::PrepareFailed { counter, error } => {
            tracing::debug!(%counter, %error, "no vote");
        }
        Notice::Membership(effect) => membership(effect),
        Notice::LacksCommit { counter, index } => {
            tracing::info!(%counter, %index,
                "counter lacks a prepared commit; it will copy it from a peer");
        }
        Notice::Trimmed { upto } => tracing::debug!(%upto, "trimmed decision log"),
        Notice::HealthFailed { counter, error } => {
            tracing::debug!(%counter, %error, "health check failed");
        }
        Notice::Registered {
            counter,
            incarnation,
            applied,
            plan,
        } => {
            tracing::info!(
                %counter, %incarnation, %applied, in_sync = plan.in_sync, until = %plan.until,
                "counter registered"
            );
        }
        Notice::LogBatch { jobs } => {
            metrics::histogram!("tally_decision_log_batch").record(jobs as f64);
        }
    }
}

/// A prepare that got no vote, by counter and kind of failure.
pub fn prepare_failed(counter: &CounterId, error: &CallError) {
    tracing::debug!(%counter, %error, "prepare failed");
    metrics::counter!("tally_prepare_failures_total",
        "counter" => counter.0.clone(), "kind" => error.kind())
    .increment(1);
}

fn membership(effect: Effect) {
    match effect {
        Effect::LostData { id, reason } => {
            tracing::warn!(
                counter = %id, %reason,
                "counter came back without its data: it left the in-sync set and copies everything"
            );
        }
        Effect::Transition {
            id,
            from,
            to,
            in_sync,
        } => {
            let show = |s: Option<CounterState>| {
                s.map_or("gone".to_string(), |s| format!("{s:?}").to_lowercase())
            };
            tracing::info!(
                counter = %id, from = %show(from), to = %show(to), in_sync,
                "counter state changed"
            );
        }
        Effect::Persist | Effect::CatchUp { .. } => {}
    }
}

/// Transactions by outcome, and their size: items and requests per
/// transaction show how much group commit is folding together.
fn record_outcome(outcome: &'static str, items: usize, requests: usize) {
    metrics::counter!("tally_transactions_total", "outcome" => outcome).increment(1);
    metrics::histogram!("tally_txn_items", "outcome" => outcome).record(items as f64);
    metrics::histogram!("tally_txn_requests", "outcome" => outcome).record(requests as f64);
}
