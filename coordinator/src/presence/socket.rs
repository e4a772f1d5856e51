//! One presence WebSocket: holds its seat while open, sends `{"count": N}`
//! at once and on every change (at most one message per 100 ms, always the
//! latest number), pings an idle client and drops one that stopped
//! answering, and closes with 1001 when the coordinator stops.

use super::hub::{Refused, Seat};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use std::time::Duration;
use tally_common::api::Count;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// Least time between two count messages on one socket: at most 10 a
/// second, however fast the key changes.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// Close code of a socket refused by a bound: 1013, "try again later".
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Close code when the coordinator stops: 1001, "going away".
pub const CLOSE_GOING_AWAY: u16 = 1001;

fn count_message(count: u64) -> Message {
    let text = serde_json::to_string(&Count { count }).unwrap_or_default();
    Message::Text(Utf8Bytes::from(text))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Closes a socket that a bound refused, saying which.
pub async fn refuse(mut socket: WebSocket, refused: Refused) {
    let _ = socket
        .send(close(CLOSE_TRY_AGAIN_LATER, refused.reason()))
        .await;
}

/// Serves one socket until the client leaves, stops answering pings, or
/// the coordinator stops.
pub async fn serve(
    mut socket: WebSocket,
    mut seat: Seat,
    ping_every: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let mut last_sent = *seat.shown().borrow_and_update();
    if socket.send(count_message(last_sent)).await.is_err() {
        return;
    }
    let throttle = tokio::time::sleep(MIN_GAP);
    tokio::pin!(throttle);
    let mut pending = false;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Whether the client sent anything (a pong included) since our last
    // ping; `None` before the first ping.
    let mut heard: Option<bool> = None;
    loop {
        tokio::select! {
            changed = seat.shown().changed() => {
                if changed.is_err() {
                    return;
                }
                pending = true;
            }
            () = &mut throttle, if pending => {
                pending = false;
                let now = *seat.shown().borrow_and_update();
                if now != last_sent {
                    if socket.send(count_message(now)).await.is_err() {
                        return;
                    }
                    last_sent = now;
                    throttle.as_mut().reset(Instant::now() + MIN_GAP);
                }
            }
            received = socket.recv() => match received {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => heard = Some(true),
            },
            _ = ping.tick() => {
                if heard == Some(false) {
                    tracing::debug!("presence socket silent for a ping interval: dropped");
                    return;
                }
                heard = Some(false);
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            () = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => {
                let _ = socket.send(close(CLOSE_GOING_AWAY, "coordinator stopping")).await;
                return;
            }
        }
    }
}
