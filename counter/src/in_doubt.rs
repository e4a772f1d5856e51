//! Transactions left prepared without an outcome: the participant in the
//! writer says which are in doubt (`tally_common::participant`, at every
//! tick of its clock); this module asks the coordinator about each and
//! feeds the answer back to it.
//!
//! At start-up every prepared transaction is in doubt at once, and the
//! counter keeps asking until each has a definite answer before it
//! registers: a coordinator would otherwise count this counter's vote on a
//! transaction it may already have decided. After that, [`run`] ticks the
//! clock once a [`Settings::maintenance_interval`](crate::config::Settings).

use crate::coordinator_client::{self, Backoff};
use crate::state::AppState;
use std::sync::Arc;
use tally_common::api::Outcome;

/// Ticks the participant's in-doubt clock until shutdown.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.settings.maintenance_interval);
    loop {
        tick.tick().await;
        resolve(&state, false).await;
    }
}

/// Ticks the participant's in-doubt clock, asks the coordinator for the
/// outcome of every transaction the participant says is in doubt, and
/// feeds each answer back to it. Presumed abort: the coordinator answers
/// aborted for any transaction it has no decision for. At `start_up`, when
/// every recovered transaction is in doubt at once, it keeps at it until
/// none is left.
pub async fn resolve(state: &AppState, start_up: bool) {
    let mut backoff = Backoff::new();
    loop {
        let txns = match state.replica.in_doubt().await {
            Ok(txns) => txns,
            Err(e) => {
                tracing::error!(error = %e, "cannot tell which transactions are in doubt");
                return;
            }
        };
        if txns.is_empty() {
            return;
        }
        let mut unresolved = 0;
        for txn in txns {
            let outcome = match coordinator_client::outcome(state, txn).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::warn!(%txn, error = %e, "cannot ask the coordinator about a prepared transaction");
                    unresolved += 1;
                    continue;
                }
            };
            match outcome {
                Outcome::Committed { index } => {
                    tracing::info!(%txn, %index, "in-doubt transaction committed")
                }
                Outcome::Aborted => tracing::info!(%txn, "in-doubt transaction aborted"),
                Outcome::Pending => unresolved += 1,
            }
            if let Err(e) = state.replica.settle(txn, outcome).await {
                tracing::error!(%txn, error = %e, "cannot apply the outcome of an in-doubt transaction");
            }
        }
        // Start-up must settle everything before registering; the periodic
        // resolver just tries again on its next tick.
        if unresolved == 0 || !start_up {
            return;
        }
        backoff.wait().await;
    }
}
