//! The counter's HTTP surface. Public: `GET /health` and
//! `GET /items/{tenant}/count` (so an operator can compare replicas).
//! Internal, behind the cluster token: the 2PC calls, status, catch-up and
//! the export stream that joining peers copy from.

use crate::catch_up;
use crate::error::Error;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_common::api::{
    AbortRequest, AcceptLossRequest, CatchUpRequest, CommitRequest, Count, CounterStatus,
    ExportEntry, ExportFrame, FencedCount, Message, PrepareRequest, ReplicaCount,
    INCARNATION_HEADER, ITEMS_HEADER,
};
use tally_common::export_stream::{self, encode_frame};
use tally_common::limits::MAX_PREPARE_BODY_BYTES;
use tally_common::CommitIndex;
use tally_server::require_token;

/// Entries per chunk of the export stream: large enough to amortise the
/// channel hop, small enough to keep both sides' memory flat.
const EXPORT_CHUNK_BYTES: usize = 256 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let internal = Router::new()
        .route("/internal/prepare", post(prepare))
        .route("/internal/commit", post(commit))
        .route("/internal/abort", post(abort))
        .route("/internal/status", get(status))
        .route("/internal/count", get(internal_count))
        .route("/internal/catchup", post(catch_up))
        .route("/internal/export", get(export))
        .route("/internal/accept-loss", post(accept_loss))
        .layer(DefaultBodyLimit::max(MAX_PREPARE_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), note_contact))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/items/{tenant}/count", get(count))
        .route("/metrics", get(metrics))
        .merge(internal)
        .merge(crate::presence::router(
            state.presence.clone(),
            state.token.clone(),
        ))
        .method_not_allowed_fallback(tally_server::method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn(tally_server::track_requests))
        .with_state(state)
}

/// A call that passed the token check came from the coordinator (or a
/// peer): a counter the coordinator stops calling registers again.
async fn note_contact(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    state.note_contact(Instant::now());
    next.run(request).await
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Json(Message::new("no such path")))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state.metrics, &state.replica),
    )
}

async fn health(State(state): State<Arc<AppState>>) -> Json<CounterStatus> {
    Json(state.replica.status())
}

#[derive(Deserialize)]
struct FenceQuery {
    fence: Option<u64>,
}

/// The counter's own count, with whether it may be partial (it is catching
/// up). Taking the extractors' rejections keeps a tenant that is not UTF-8 once
/// percent-decoded, or a fence that is not a number, a JSON 400 like every
/// other error, not axum's plain-text one.
async fn count(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FenceQuery>, QueryRejection>,
) -> Result<Json<ReplicaCount>, Error> {
    let Path(tenant) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    let Query(query) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let fence = CommitIndex(query.fence.unwrap_or(0));
    state
        .replica
        .wait_applied(fence, state.settings.fence_timeout)
        .await?;
    let (count, partial) = state.replica.own_count(&tenant);
    Ok(Json(ReplicaCount { count, partial }))
}

#[derive(Deserialize)]
struct CountQuery {
    tenant: String,
    fence: Option<u64>,
    epoch: u64,
}

/// The coordinator's reads. The tenant travels in the query because a URL
/// path cannot carry every name: clients normalise `.` and `..` segments
/// (even percent-encoded ones) away. Answered only for the coordinator
/// this counter registered with, and only once it said this counter is in
/// sync: a process on an empty disk must never answer for the member.
async fn internal_count(
    State(state): State<Arc<AppState>>,
    Query(query): Query<CountQuery>,
) -> Result<Json<FencedCount>, Error> {
    state.replica.check_fenced_read(query.epoch)?;
    let Json(Count { count }) = fenced_count(&state, &query.tenant, query.fence).await?;
    Ok(Json(FencedCount {
        id: state.replica.id().clone(),
        count,
    }))
}

async fn fenced_count(
    state: &AppState,
    tenant: &str,
    fence: Option<u64>,
) -> Result<Json<Count>, Error> {
    let fence = CommitIndex(fence.unwrap_or(0));
    let count = state
        .replica
        .count(tenant, fence, state.settings.fence_timeout)
        .await?;
    Ok(Json(Count { count }))
}

async fn prepare(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CounterStatus>, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request = PrepareRequest::decode(content_type, &body)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    // A vote only for the coordinator this counter registered with: until
    // it has, the coordinator cannot know which disk answers.
    state.replica.check_vote(request.txn.epoch())?;
    let committed = state
        .replica
        .commit_and_prepare(request.commits, request.txn, request.items)
        .await?;
    let mut status = state.replica.status();
    status.voted = Some(request.txn);
    status.committed = committed;
    Ok(Json(status))
}

async fn commit(
    State(state): State<Arc<AppState>>,
    Json(request): Json<CommitRequest>,
) -> Result<Json<CounterStatus>, Error> {
    state.replica.commit(request.txn, request.index).await?;
    let mut status = state.replica.status();
    status.committed = vec![request.index];
    Ok(Json(status))
}

async fn abort(
    State(state): State<Arc<AppState>>,
    Json(request): Json<AbortRequest>,
) -> Result<Json<CounterStatus>, Error> {
    state.replica.abort(request.txn).await?;
    Ok(Json(state.replica.status()))
}

#[derive(Deserialize)]
struct StatusQuery {
    epoch: Option<u64>,
}

/// The coordinator's health check. One from a coordinator of another epoch
/// (it restarted) makes this counter register again at once, since it
/// neither votes nor is read until it has.
async fn status(
    State(state): State<Arc<AppState>>,
    Query(query): Query<StatusQuery>,
) -> Json<CounterStatus> {
    if state.replica.registration().must_register_for(query.epoch) {
        state.register_again.notify_one();
    }
    Json(state.replica.status())
}

/// The operator promoted this counter by force (coordinator's
/// `POST /internal/promote`).
async fn accept_loss(
    State(state): State<Arc<AppState>>,
    Json(request): Json<AcceptLossRequest>,
) -> Result<Json<CounterStatus>, Error> {
    state.replica.accept_loss(request.through).await?;
    // The coordinator promotes this counter next: it serves reads from now.
    state.replica.update_registration(|r| r.promoted());
    Ok(Json(state.replica.status()))
}

async fn catch_up(
    State(state): State<Arc<AppState>>,
    Json(request): Json<CatchUpRequest>,
) -> StatusCode {
    catch_up::requested(&state, request);
    StatusCode::ACCEPTED
}

#[derive(Deserialize)]
struct ExportQuery {
    since: u64,
    until: u64,
}

/// Streams every commit-log entry above `since` as length-prefixed
/// postcard frames (`tally_common::export_stream`), ending with an `End`
/// frame for `until`. It serves only when this replica holds `(since,
/// until]` whole: it waits briefly for `until` to be applied, and refuses
/// with 503 otherwise, so the importer may trust `End`. Entries above
/// `until` are sent too: an item of a commit at or below `until` may be
/// logged here under a later commit that this replica applied first
/// (docs/protocol.md, "Catch-up"). The headers carry this disk's
/// incarnation, so that an importer resumes a cut copy only from the same
/// disk, and how many items it holds, for the importer's progress.
async fn export(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ExportQuery>,
) -> Result<Response, Error> {
    let (since, until) = (CommitIndex(query.since), CommitIndex(query.until));
    state
        .replica
        .wait_applied(until, state.settings.fence_timeout)
        .await?;
    let store = state.replica.store();
    let incarnation = store.incarnation();
    let items_held = state.replica.total_items();
    let rate = state.settings.catch_up_rate;
    let chunk_items = state.settings.export_chunk_items;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut sent = 0usize;
        let mut in_chunk = 0usize;
        let mut buf = Vec::with_capacity(EXPORT_CHUNK_BYTES);
        let mut sink = |entry: ExportEntry| {
            sent += entry.items.len();
            in_chunk += entry.items.len();
            encode_frame(&mut buf, &ExportFrame::Entry(entry));
            if buf.len() >= EXPORT_CHUNK_BYTES || in_chunk >= chunk_items {
                in_chunk = 0;
                // --catch-up-rate: hold the chunk until its items are due.
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(EXPORT_CHUNK_BYTES));
                return tx.blocking_send(Bytes::from(chunk)).is_ok();
            }
            true
        };
        match store.export(since, &mut sink) {
            Ok(()) => {
                encode_frame(&mut buf, &ExportFrame::End { through: until });
                let _ = tx.blocking_send(Bytes::from(buf));
            }
            // No `End` frame: the importer sees a cut stream and retries.
            Err(e) => tracing::error!(error = %e, "export failed"),
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                export_stream::CONTENT_TYPE.to_string(),
            ),
            (
                header::HeaderName::from_static(INCARNATION_HEADER),
                incarnation.0.to_string(),
            ),
            (
                header::HeaderName::from_static(ITEMS_HEADER),
                items_held.to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
