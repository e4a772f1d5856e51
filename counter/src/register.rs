//! How a counter gets (back) into the cluster: register with the
//! coordinator, and register again whenever the coordinator needs it.
//! What the coordinator's answers mean for votes and reads is
//! `tally_common::registration`; this module carries the calls.

use crate::catch_up;
use crate::coordinator_client::{self, Backoff};
use crate::in_doubt;
use crate::state::AppState;
use std::sync::Arc;
use std::time::Instant;
use tally_common::api::{JoinPlan, RegisterRequest};

/// Start-up: settle in-doubt transactions, register, then keep the
/// counter in the cluster: catch up, keep settling what is in doubt, and
/// register again whenever the coordinator needs it.
pub async fn join(state: Arc<AppState>) {
    in_doubt::resolve(&state, true).await;
    state.tasks.spawn("in-doubt", in_doubt::run(state.clone()));
    let plan = register(&state).await;
    catch_up::start(&state, plan);
    maintain(state).await;
}

/// Registers, retrying with backoff until the coordinator answers. From
/// then on the counter votes for that coordinator's epoch only.
pub async fn register(state: &AppState) -> JoinPlan {
    let mut backoff = Backoff::new();
    loop {
        let held = match state.replica.held().await {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(error = %e, "cannot read what this counter holds; not registering");
                backoff.wait().await;
                continue;
            }
        };
        let request = RegisterRequest {
            id: state.replica.id().clone(),
            url: state.advertise.clone(),
            incarnation: state.replica.status().incarnation,
            applied_index: held.applied,
            prepared: held.prepared,
            applied_above: held.applied_above,
        };
        match coordinator_client::register(state, &request).await {
            Ok(plan) => {
                state.replica.update_registration(|r| {
                    r.registered(plan.epoch, plan.in_sync);
                    r.named(plan.registration);
                });
                tracing::info!(
                    in_sync = plan.in_sync,
                    until = %plan.until,
                    epoch = plan.epoch,
                    applied = %request.applied_index,
                    "registered with the coordinator"
                );
                return plan;
            }
            Err(e) => {
                tracing::warn!(error = %e, coordinator = %state.coordinators.current(), "registration failed, retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Registers again when a coordinator of another epoch calls (it
/// restarted), when the coordinator no longer knows this counter, or when
/// it has not called for `rejoin_after` (it forgot us).
async fn maintain(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.settings.maintenance_interval);
    loop {
        let asked = tokio::select! {
            _ = tick.tick() => false,
            () = state.register_again.notified() => true,
        };
        let silent = state.last_contact().elapsed();
        if asked || silent >= state.settings.rejoin_after {
            if !asked {
                tracing::warn!(silent = ?silent, "no word from the coordinator, registering again");
            }
            state.note_contact(Instant::now());
            let plan = register(&state).await;
            catch_up::start(&state, plan);
        }
    }
}
