//! The counter's calls to the coordinator: register, report that it caught
//! up, and ask for the outcome of a transaction in doubt. Each has its own
//! timeout ([`Settings::call_timeout`](crate::config::Settings)) and
//! carries the cluster token. With several coordinators each call goes to
//! whichever answered last, and on to the next when that one cannot
//! answer (`coordinators.rs`).

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
    let path = format!("/internal/outcome/{}", txn.0);
    state
        .coordinators
        .send(|base| with_token(state, state.http.get(format!("{base}{path}"))))
        .await?
        .json()
        .await
}

async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    state: &AppState,
    path: &str,
    body: &B,
) -> Result<R, reqwest::Error> {
    state
        .coordinators
        .send(|base| with_token(state, state.http.post(format!("{base}{path}")).json(body)))
        .await?
        .json()
        .await
}

/// The call's timeout, which holds for each coordinator tried, and the
/// cluster token.
fn with_token(state: &AppState, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let request = request.timeout(state.settings.call_timeout);
    match state.token.get() {
        Some(token) => request.header(TOKEN_HEADER, token),
        None => request,
    }
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
