//! The counter's calls to the coordinator: register, report that it caught
//! up, and ask for the outcome of a transaction in doubt. Each has its own
//! timeout ([`Settings::call_timeout`](crate::config::Settings)) and
//! carries the cluster token.

use crate::state::AppState;
use std::time::Duration;
use tally_common::api::{CaughtUpRequest, JoinPlan, Outcome, RegisterRequest, TOKEN_HEADER};
use tally_common::TxnId;

/// `POST /internal/register`: the join plan, with the coordinator's epoch.
pub async fn register(
    state: &AppState,
    request: &RegisterRequest,
) -> Result<JoinPlan, reqwest::Error> {
    post(state, "/internal/register", request).await
}

/// `POST /internal/caught-up`: the next plan; 404 if the coordinator does
/// not know this counter (or not this disk).
pub async fn caught_up(
    state: &AppState,
    request: &CaughtUpRequest,
) -> Result<JoinPlan, reqwest::Error> {
    post(state, "/internal/caught-up", request).await
}

/// `GET /internal/outcome/{txn}`: committed (at an index), aborted, or
/// still pending.
pub async fn outcome(state: &AppState, txn: TxnId) -> Result<Outcome, reqwest::Error> {
    let mut request = state
        .http
        .get(format!(
            "{}/internal/outcome/{}",
            state.settings.coordinator, txn.0
        ))
        .timeout(state.settings.call_timeout);
    if let Some(token) = state.token.get() {
        request = request.header(TOKEN_HEADER, token);
    }
    request.send().await?.error_for_status()?.json().await
}

async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    state: &AppState,
    path: &str,
    body: &B,
) -> Result<R, reqwest::Error> {
    let mut request = state
        .http
        .post(format!("{}{path}", state.settings.coordinator))
        .timeout(state.settings.call_timeout)
        .json(body);
    if let Some(token) = state.token.get() {
        request = request.header(TOKEN_HEADER, token);
    }
    request.send().await?.error_for_status()?.json().await
}

/// Exponential backoff from 100 ms to 2 s between retries.
pub struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}
