//! The coordinator's HTTP surface: the public API of DESIGN.md and the
//! internal endpoints counters call (registration, catch-up progress,
//! transaction outcomes), the latter behind the cluster token.

use crate::batcher::Batcher;
use crate::error::Error;
use crate::reads;
use crate::state::{now_ms, Shared};
use crate::{dashboard, stream};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use std::sync::Arc;
use tally_common::api::{
    CaughtUpRequest, ClusterView, Count, JoinPlan, Message, Outcome, RegisterRequest,
};
use tally_common::items::{check_tenant, parse_items};
use tally_common::TxnId;
use tally_server::{require_token, ClusterToken};

#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub batcher: Batcher,
    pub token: ClusterToken,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let internal = Router::new()
        .route("/internal/register", post(register))
        .route("/internal/caught-up", post(caught_up))
        .route("/internal/outcome/{txn}", get(outcome))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            require_token,
        ));
    Router::new()
        .route("/items", post(add_items))
        .route("/items/{tenant}/count", get(count))
        .route("/items/{tenant}/count/stream", get(count_stream))
        .route("/cluster", get(cluster))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/", get(dashboard::page))
        .route("/assets/dashboard.css", get(dashboard::style))
        .route("/assets/dashboard.js", get(dashboard::script))
        .merge(internal)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn(tally_server::track_requests))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::NotFound("no such path".into())
}

async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(Message::new("method not allowed on this path")),
    )
}

/// Accepts the body whatever its Content-Type: the seed's clients send
/// JSON with curl's default form type.
async fn add_items(State(state): State<AppState>, body: Body) -> Result<Json<Message>, Error> {
    let settings = &state.shared.settings;
    let bytes = tokio::time::timeout(
        settings.body_read_timeout,
        read_body(body, settings.max_body_bytes),
    )
    .await
    .map_err(|_| Error::SlowBody(settings.body_read_timeout))??;
    let items = parse_items(&bytes, state.shared.settings.item_limits)?;
    if !items.is_empty() {
        state.batcher.submit(items).await?;
    }
    Ok(Json(Message::success()))
}

/// Most of an oversized body that is read and dropped before answering 413:
/// a client still sending when the connection closes sees a reset instead
/// of the answer.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Collects the body up to `limit` bytes; beyond, drains a bounded amount
/// and refuses with 413.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, Error> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::BadBody(e.to_string()))?;
        seen += chunk.len();
        if seen > limit {
            let drain = async {
                while let Some(Ok(chunk)) = stream.next().await {
                    seen += chunk.len();
                    if seen > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            return Err(Error::TooLarge(format!(
                "body is larger than {limit} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn count(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Json<Count>, Error> {
    check_tenant(&tenant, state.shared.settings.item_limits)?;
    let count = reads::count(&state.shared, &tenant).await?;
    Ok(Json(Count { count }))
}

/// Server-Sent Events of the tenant's count; see `stream.rs`.
async fn count_stream(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, Error> {
    check_tenant(&tenant, state.shared.settings.item_limits)?;
    Ok(stream::count_stream(state.shared.clone(), tenant).into_response())
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state.metrics, &state.shared),
    )
}

async fn stats(State(state): State<AppState>) -> Json<crate::metrics::StatsView> {
    Json(state.shared.stats.view())
}

async fn cluster(State(state): State<AppState>) -> Json<ClusterView> {
    let view = state
        .shared
        .cluster
        .lock()
        .expect("poisoned")
        .view(now_ms());
    Json(view)
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let in_sync = state
        .shared
        .cluster
        .lock()
        .expect("poisoned")
        .in_sync_count();
    Json(serde_json::json!({ "status": "ok", "in_sync": in_sync }))
}

async fn register(
    State(state): State<AppState>,
    Json(request): Json<RegisterRequest>,
) -> Result<Json<JoinPlan>, Error> {
    let (plan, effects) = {
        let mut cluster = state.shared.cluster.lock().expect("poisoned");
        refuse_impossible_claim(&cluster, &request.id, request.applied_index)?;
        cluster.register(
            request.id.clone(),
            request.url.clone(),
            request.applied_index,
            now_ms(),
        )
    };
    tracing::info!(
        counter = %request.id, url = %request.url, applied = %request.applied_index,
        in_sync = plan.in_sync, until = %plan.until, "counter registered"
    );
    state.shared.carry_out(effects).await;
    Ok(Json(plan))
}

fn refuse_impossible_claim(
    cluster: &tally_common::membership::Cluster,
    id: &tally_common::CounterId,
    applied: tally_common::CommitIndex,
) -> Result<(), Error> {
    if cluster.claim_is_possible(applied) {
        return Ok(());
    }
    tracing::error!(
        counter = %id, claimed = %applied, decided = %cluster.decided(),
        "counter claims to hold commits never decided here: refused (another cluster's data, or a lost decision log?)"
    );
    Err(Error::Conflict(format!(
        "applied index {applied} is beyond the last decided index {}",
        cluster.decided()
    )))
}

async fn caught_up(
    State(state): State<AppState>,
    Json(request): Json<CaughtUpRequest>,
) -> Result<Json<JoinPlan>, Error> {
    let result = {
        let mut cluster = state.shared.cluster.lock().expect("poisoned");
        refuse_impossible_claim(&cluster, &request.id, request.applied_index)?;
        cluster.caught_up(&request.id, request.applied_index, now_ms())
    };
    let (plan, effects) =
        result.ok_or_else(|| Error::NotFound(format!("unknown counter {}", request.id)))?;
    state.shared.carry_out(effects).await;
    Ok(Json(plan))
}

/// Presumed abort: no logged decision and not in flight means aborted.
async fn outcome(
    State(state): State<AppState>,
    Path(txn): Path<u64>,
) -> Result<Json<Outcome>, Error> {
    let txn = TxnId(txn);
    let shared = &state.shared;
    if shared.in_flight.lock().expect("poisoned").contains(&txn) {
        return Ok(Json(Outcome::Pending));
    }
    Ok(Json(match shared.log.decision(txn)? {
        Some(index) => Outcome::Committed { index },
        None => Outcome::Aborted,
    }))
}
