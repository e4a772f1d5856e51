//! Presence owner: sums the frontends' reports of connected sockets for the
//! keys this counter owns (rendezvous hashing on the frontends' side picks
//! the owner; this side takes whatever it is sent) and streams to each
//! frontend the sum of the *other* frontends for each of its keys.
//!
//! Nothing here is durable or touches the replica: a restarted counter
//! starts empty, and the frontends fill it again when their update streams
//! reconnect (each reconnect is followed by a full report). A frontend
//! that stops renewing its lease is dropped by [`expire_leases`]. The sums
//! themselves are `tally_common::presence::PresenceTable`; this module only
//! carries HTTP in and out, so it imports nothing else of the counter.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_common::api::{Count, Message};
use tally_common::presence::{FrontendId, PresenceKey, PresenceReport, PresenceTable};
use tally_server::{require_token, ClusterToken};
use tokio::sync::Notify;

/// How often an idle update stream sends an empty line, so a frontend can
/// tell a silent owner from a dead connection (it gives up after three).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How often leases are checked; a frontend that disappeared is dropped at
/// most this long after its lease ran out.
const LEASE_CHECK: Duration = Duration::from_millis(250);

/// Most (frontend, key) counts held at once: far above what frontends
/// bounded by their socket limits report, and a cap on what a buggy or
/// hostile token holder can make this process keep.
const MAX_KEYS: usize = 1_000_000;

/// The owner's state, shared by the handlers and the lease task.
pub struct Presence {
    inner: Mutex<Inner>,
    started: Instant,
}

struct Inner {
    table: PresenceTable,
    /// One per frontend with an update stream (or one about to open).
    wakers: HashMap<FrontendId, Arc<Notify>>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            inner: Mutex::new(Inner {
                table: PresenceTable::default(),
                wakers: HashMap::new(),
            }),
            started: Instant::now(),
        }
    }
}

impl Presence {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::error::lock(&self.inner, "the presence table")
    }
}

impl Inner {
    fn wake(&mut self, frontends: Vec<FrontendId>) {
        for id in frontends {
            if let Some(waker) = self.wakers.get(&id) {
                waker.notify_one();
            }
        }
    }

    fn waker(&mut self, id: &FrontendId) -> Arc<Notify> {
        self.wakers.entry(id.clone()).or_default().clone()
    }
}

/// The internal presence endpoints, behind the cluster token.
pub fn router<S>(presence: Arc<Presence>, token: ClusterToken) -> Router<S> {
    Router::new()
        .route("/internal/presence/report", post(report))
        .route("/internal/presence/updates", get(updates))
        .route("/internal/presence/count", get(count))
        .route_layer(middleware::from_fn_with_state(token, require_token))
        .with_state(presence)
}

/// Drops the counts of frontends whose lease ran out; runs until stopped.
pub async fn expire_leases(presence: Arc<Presence>) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = presence.now_ms();
        let mut inner = presence.lock();
        let before = inner.table.frontends();
        let wake = inner.table.expire(now);
        if inner.table.frontends() < before {
            tracing::info!(
                dropped = before - inner.table.frontends(),
                "presence: frontends stopped renewing their lease; their sockets no longer count"
            );
        }
        inner.wake(wake);
        // A waker outlives its frontend only while a stream holds it.
        let Inner { table, wakers } = &mut *inner;
        wakers.retain(|id, waker| table.has_frontend(id) || Arc::strong_count(waker) > 1);
    }
}

async fn report(
    State(presence): State<Arc<Presence>>,
    Json(report): Json<PresenceReport>,
) -> Response {
    let now = presence.now_ms();
    let mut inner = presence.lock();
    if inner.table.entries() + report.counts.len() > MAX_KEYS {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(Message::new("presence table full")),
        )
            .into_response();
    }
    let wake = inner.table.report(report, now);
    inner.wake(wake);
    Json(Message::success()).into_response()
}

#[derive(serde::Deserialize)]
struct UpdatesQuery {
    frontend: String,
}

/// An endless stream of JSON lines (`PresenceUpdate`), one whenever the
/// others' sums of the frontend's keys changed, coalesced: a burst of
/// reports becomes one line. The first line lists every key again.
async fn updates(
    State(presence): State<Arc<Presence>>,
    Query(query): Query<UpdatesQuery>,
) -> Response {
    let id = FrontendId(query.frontend);
    let waker = {
        let mut inner = presence.lock();
        inner.table.resend_all(&id);
        inner.waker(&id)
    };
    let lines = futures_util::stream::unfold(
        (presence, id, waker, true),
        |(presence, id, waker, first)| async move {
            if !first {
                let _ = tokio::time::timeout(HEARTBEAT, waker.notified()).await;
            }
            let update = presence.lock().table.take_updates(&id);
            let mut line = serde_json::to_vec(&update).unwrap_or_default();
            line.push(b'\n');
            Some((
                Ok::<Bytes, std::convert::Infallible>(Bytes::from(line)),
                (presence, id, waker, false),
            ))
        },
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct CountQuery {
    tenant: String,
    key: String,
}

/// The total of a key over every frontend, for a frontend asked for a
/// count of a key it has no socket of. Tenant and key travel in the query,
/// where `.` and `..` survive URL normalisation.
async fn count(
    State(presence): State<Arc<Presence>>,
    Query(CountQuery { tenant, key }): Query<CountQuery>,
) -> Json<Count> {
    let key = PresenceKey::new(tenant, key);
    Json(Count {
        count: presence.lock().table.total(&key),
    })
}
