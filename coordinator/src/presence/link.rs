//! One task per owning counter: it holds the counter's update stream open
//! (`GET /internal/presence/updates`, JSON lines of the others' sums) and
//! sends it this frontend's reports (`POST /internal/presence/report`),
//! one at a time, so reports never overtake each other.
//!
//! After the stream (re)opens the next report is full: the counter may be
//! a new process that knows nothing. Every third of the lease a full report
//! renews it. A failed report makes the next one full, so whatever was lost
//! is repaired by absolute counts, never by replaying deltas.

use super::hub::Hub;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tally_common::api::TOKEN_HEADER;
use tally_common::presence::{Owner, PresenceUpdate};
use tokio::time::MissedTickBehavior;

/// How long a report or the opening of a stream may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A stream silent this long is dead (the counter sends a heartbeat every
/// 2 s).
const STREAM_IDLE: Duration = Duration::from_secs(6);

/// Pause after a failure before trying the same counter again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Longest line accepted on an update stream: a bound on what a broken or
/// hostile peer can make this process buffer.
const MAX_LINE: usize = 16 << 20;

/// What a link needs besides its owner.
#[derive(Clone)]
pub struct LinkClient {
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl LinkClient {
    pub fn with_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.header(TOKEN_HEADER, token),
            None => request,
        }
    }
}

/// Runs the link to `owner` until aborted (the owner left the set).
pub async fn run(hub: Arc<Hub>, owner: Owner, client: LinkClient) {
    let wake = hub.link_wake(&owner.id);
    let updates_url = format!("{}/internal/presence/updates", owner.url);
    loop {
        let opened = client
            .with_token(client.http.get(&updates_url))
            .query(&[("frontend", hub.id.0.as_str())])
            .send();
        let stream = match tokio::time::timeout(CALL_TIMEOUT, opened).await {
            Ok(Ok(answer)) if answer.status().is_success() => answer.bytes_stream(),
            Ok(Ok(answer)) => {
                tracing::debug!(owner = %owner.id, status = %answer.status(), "presence stream refused");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            _ => {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        hub.want_full(&owner.id);
        send_reports(&hub, &owner, &client).await;
        let mut stream = std::pin::pin!(stream);
        let mut pending = Vec::new();
        let mut renew = tokio::time::interval(hub.lease / 3);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        renew.tick().await;
        loop {
            tokio::select! {
                chunk = tokio::time::timeout(STREAM_IDLE, stream.next()) => {
                    let Ok(Some(Ok(chunk))) = chunk else { break };
                    pending.extend_from_slice(&chunk);
                    if !take_lines(&hub, &owner, &mut pending) {
                        break;
                    }
                }
                () = wake.notified() => send_reports(&hub, &owner, &client).await,
                _ = renew.tick() => {
                    hub.want_full(&owner.id);
                    send_reports(&hub, &owner, &client).await;
                }
            }
        }
        tracing::debug!(owner = %owner.id, "presence stream ended; reopening");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Applies every whole line in `pending`; false if the stream is garbage.
fn take_lines(hub: &Hub, owner: &Owner, pending: &mut Vec<u8>) -> bool {
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        match serde_json::from_slice::<PresenceUpdate>(&line) {
            Ok(update) => hub.apply(&owner.id, update),
            Err(e) => {
                tracing::warn!(owner = %owner.id, error = %e, "bad presence update line");
                return false;
            }
        }
    }
    pending.len() <= MAX_LINE
}

/// Sends what `owner` has to be told, one report after the other.
async fn send_reports(hub: &Hub, owner: &Owner, client: &LinkClient) {
    let url = format!("{}/internal/presence/report", owner.url);
    while let Some(report) = hub.take_report(&owner.id) {
        let sent = client
            .with_token(client.http.post(&url))
            .json(&report)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .and_then(|answer| answer.error_for_status());
        if let Err(e) = sent {
            tracing::debug!(owner = %owner.id, error = %e, "presence report failed");
            hub.want_full(&owner.id);
            return;
        }
    }
}
