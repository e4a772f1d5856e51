//! The coordinator's HTTP surface: the public API (README.md, docs/api.md) and the
//! internal endpoints counters call (registration, catch-up progress,
//! transaction outcomes), the latter behind the cluster token.
//!
//! The public handlers carry `#[utoipa::path]` attributes: `openapi.rs`
//! gathers them into the document served at `GET /openapi.json`, so what a
//! handler is documented to answer sits next to the code that answers it.

use crate::error::{Error, Stopped};
use crate::schema::{CountEvent, ItemList};
use crate::state::Shared;
use crate::{dashboard, stream};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use std::sync::Arc;
use tally_common::api::{
    CaughtUpRequest, ClusterView, Count, Health, JoinPlan, Message, Outcome, PromoteReport,
    PromoteRequest, RegisterRequest,
};
use tally_common::coordinator::JoinRefused;
use tally_common::items::{check_tenant, parse_items};
use tally_common::TxnId;
use tally_server::{require_token, ClusterToken};

/// The `{tenant}` of the count paths, checked with the body's rules
/// (`check_tenant`); the attributes only describe those rules.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TenantParam {
    /// Whose count: 1 to 256 bytes of UTF-8, percent-encoded in the path.
    #[param(min_length = 1, max_length = 256, example = "test")]
    tenant: String,
}

/// The checked tenant of a count path. Taking the extractor's rejection
/// here keeps a tenant that is not UTF-8 once percent-decoded a JSON 400
/// like every other error, not axum's plain-text one.
fn tenant(
    path: Result<Path<TenantParam>, PathRejection>,
    state: &AppState,
) -> Result<String, Error> {
    let Path(TenantParam { tenant }) = path.map_err(|e| Error::BadPath(e.body_text()))?;
    check_tenant(&tenant, state.shared.settings.item_limits)?;
    Ok(tenant)
}

#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    /// The OpenAPI document, built once at start-up (`openapi.rs`).
    pub openapi: Arc<serde_json::Value>,
    pub token: ClusterToken,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The presence frontend (`presence/`), with routes of its own.
    pub presence: Arc<crate::presence::Frontend>,
}

pub fn router(state: AppState) -> Router {
    // One reference count per request, not one per field: every handler
    // and middleware that takes the state clones it.
    let state = Arc::new(state);
    // Counters' calls, which only the leader can answer.
    let internal = Router::new()
        .route("/internal/register", post(register))
        .route("/internal/caught-up", post(caught_up))
        .route("/internal/outcome/{txn}", get(outcome))
        .route("/internal/promote", post(promote))
        .route_layer(middleware::from_fn_with_state(
            state.shared.clone(),
            crate::forward::to_leader,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            require_token,
        ));
    // Between coordinators, answered by each itself.
    let raft = Router::new()
        .route("/internal/raft", post(raft_messages))
        .route("/internal/raft/status", get(raft_status))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            require_token,
        ));
    // The public requests a follower passes to the leader.
    let leader_only = Router::new()
        .route("/items", post(add_items))
        .route("/items/{tenant}/count", get(count))
        .route("/items/{tenant}/count/stream", get(count_stream))
        .route("/cluster", get(cluster))
        .route("/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(
            state.shared.clone(),
            crate::forward::to_leader,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/", get(dashboard::page))
        .route("/assets/dashboard.css", get(dashboard::style))
        .route("/assets/dashboard.js", get(dashboard::script))
        .merge(leader_only)
        .merge(internal)
        .merge(raft)
        .merge(crate::presence::router(state.presence.clone()))
        .method_not_allowed_fallback(tally_server::method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn(tally_server::track_requests))
        .with_state(state)
}

/// Raft messages from a peer coordinator (`replication/transport.rs`).
async fn raft_messages(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<axum::http::StatusCode, Error> {
    let messages = crate::replication::transport::decode_batch(&body).map_err(Error::BadBody)?;
    state.shared.driver.raft(messages)?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// This coordinator's term, for a peer starting on an empty disk.
async fn raft_status(
    State(state): State<Arc<AppState>>,
) -> Json<crate::replication::transport::RaftStatus> {
    let leadership = state.shared.driver.leadership();
    Json(crate::replication::transport::RaftStatus {
        term: leadership.term,
        has_log: leadership.has_log,
        rejoining: leadership.rejoining,
    })
}

async fn not_found() -> Error {
    Error::NotFound("no such path".into())
}

/// Count items
///
/// Answers once every item is durably committed on the in-sync counters;
/// the items of one request become visible together. Adding an id twice
/// counts it once, so retrying after a 503, a 500 or a dropped connection is
/// always safe. An empty array is a successful no-op.
///
/// The body is read as JSON whatever its Content-Type: clients that use
/// curl's `-d` send it with curl's default form type.
#[utoipa::path(
    post,
    path = "/items",
    tag = "items",
    request_body(
        content = ItemList,
        content_type = "application/json",
        description = "The items to count. Unknown fields are ignored; any Content-Type is accepted.",
    ),
    responses(
        (status = 200, description = "Every item is committed.", body = Message,
            example = json!({"message": "Success"})),
        (status = 400, description = "The body is not a JSON array of items, or an id or tenant is \
            missing, empty, longer than 256 bytes or not valid UTF-8. Nothing was counted.",
            body = Message),
        (status = 408, description = "The body did not arrive within `--body-read-timeout` (10 s \
            by default). Nothing was counted.", body = Message),
        (status = 413, description = "The body is over the byte limit (`--max-body-bytes`, 4 MiB \
            by default) or carries more than `--max-items` items. Nothing was counted.",
            body = Message),
        (status = 503, description = "The transaction aborted (too few in-sync counters, a counter \
            voted no or timed out), the write queue is full, or the coordinator has more than \
            `--max-inflight-requests` requests in hand. Nothing was counted; retry.",
            body = Message, headers(("retry-after" = u32, description = "Seconds to wait before retrying."))),
        (status = 500, description = "Indeterminate: the items may or may not have been counted. \
            Retrying is safe.", body = Message),
    ),
)]
pub(crate) async fn add_items(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let settings = &state.shared.settings;
    // A body announced as too large is refused before a byte of it is read:
    // the client learns at once instead of after uploading it. What it
    // sends anyway is drained in the background, bounded, so closing the
    // connection does not reset it before it reads the answer.
    if let Some(announced) = content_length(&headers) {
        if announced > settings.max_body_bytes as u64 {
            tokio::spawn(drain(body.into_data_stream(), 0));
            return Err(Error::TooLarge(format!(
                "body is larger than {} bytes (Content-Length: {announced})",
                settings.max_body_bytes
            )));
        }
    }
    let bytes = tokio::time::timeout(
        settings.body_read_timeout,
        read_body(body, settings.max_body_bytes),
    )
    .await
    .map_err(|_| Error::SlowBody(settings.body_read_timeout))??;
    let items = parse_items(&bytes, state.shared.settings.item_limits)?;
    if !items.is_empty() {
        state
            .shared
            .driver
            .write(items)
            .await?
            .map_err(Error::from)?;
    }
    Ok(success())
}

/// `{"message":"Success"}`, serialised once: every acknowledged write
/// answers it, and building it through `Json` each time (a serialiser, a
/// buffer, a header) was about 1% of the coordinator's instructions per
/// single-item write.
fn success() -> Response {
    static BODY: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| {
        serde_json::to_vec(&Message::success())
            .expect("a message serialises")
            .into()
    });
    (
        [(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        )],
        BODY.clone(),
    )
        .into_response()
}

/// The request's `Content-Length`, when it has one that parses.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Most of an oversized body that is read and dropped before answering 413:
/// a client still sending when the connection closes sees a reset instead
/// of the answer.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads and drops what is left of a refused body, up to `DRAIN_LIMIT`
/// bytes in all (`seen` so far) or 5 s.
async fn drain(mut stream: axum::body::BodyDataStream, mut seen: usize) {
    let drain = async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

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
            drain(stream, seen).await;
            return Err(Error::TooLarge(format!(
                "body is larger than {limit} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Read a tenant's count
///
/// The count includes every item acknowledged before the read started, and
/// never goes down from one read to the next. A tenant never written to
/// counts 0.
#[utoipa::path(
    get,
    path = "/items/{tenant}/count",
    tag = "items",
    params(TenantParam),
    responses(
        (status = 200, description = "The tenant's count.", body = Count,
            example = json!({"count": 1})),
        (status = 400, description = "The tenant is empty, longer than 256 bytes or not UTF-8.",
            body = Message),
        (status = 503, description = "No in-sync counter answered; retry.", body = Message,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying."))),
    ),
)]
pub(crate) async fn count(
    State(state): State<Arc<AppState>>,
    path: Result<Path<TenantParam>, PathRejection>,
) -> Result<Json<Count>, Error> {
    let tenant = tenant(path, &state)?;
    let count = state.shared.count(&tenant).await?;
    Ok(Json(Count { count }))
}

/// Follow a tenant's count
///
/// Server-Sent Events: `event: count` with `data: {"count":N}`, first the
/// current count, then each larger one, at most 10 a second. The stream
/// does not end; a comment line keeps it alive every 15 s.
#[utoipa::path(
    get,
    path = "/items/{tenant}/count/stream",
    tag = "items",
    params(TenantParam),
    responses(
        (status = 200, description = "An endless event stream; the schema is that of one event.",
            body = CountEvent, content_type = "text/event-stream"),
        (status = 400, description = "The tenant is empty, longer than 256 bytes or not UTF-8.",
            body = Message),
    ),
)]
pub(crate) async fn count_stream(
    State(state): State<Arc<AppState>>,
    path: Result<Path<TenantParam>, PathRejection>,
) -> Result<Response, Error> {
    let tenant = tenant(path, &state)?;
    Ok(stream::count_stream(state.shared.clone(), tenant).into_response())
}

/// Prometheus metrics
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String,
            content_type = "text/plain"),
    ),
)]
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
) -> Result<impl IntoResponse, Error> {
    // A follower has no view of the counters; it still exports its own
    // figures and its place in the group.
    let view = match cluster_view(&state.shared).await {
        Ok(view) => Some(view),
        Err(Stopped::NotLeader) => None,
        Err(e) => return Err(e.into()),
    };
    let group = state.shared.driver.leadership();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state.metrics, view.as_ref(), &group),
    ))
}

/// Totals for the dashboard
#[utoipa::path(
    get,
    path = "/stats",
    tag = "operations",
    responses((status = 200, description = "Acknowledged writes so far.", body = crate::metrics::StatsView)),
)]
pub(crate) async fn stats() -> Json<crate::metrics::StatsView> {
    Json(crate::notices::STATS.view())
}

/// The counters as the coordinator sees them
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "operations",
    responses((status = 200, description = "Membership, states and progress.", body = ClusterView)),
)]
pub(crate) async fn cluster(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ClusterView>, Error> {
    Ok(Json(cluster_view(&state.shared).await?))
}

/// The cluster as the core sees it now, "last seen" ages on its clock,
/// with the group of coordinators around it.
async fn cluster_view(shared: &Shared) -> Result<ClusterView, Stopped> {
    let mut view = shared
        .driver
        .inspect(|core, now| core.cluster().view(now.0))
        .await?;
    let group = shared.driver.leadership();
    view.leader = group.leader;
    view.coordinators = group.coordinators;
    Ok(view)
}

/// Liveness of the coordinator, and whether the cluster can serve
///
/// Answers 200 whenever the coordinator process serves, so a supervisor
/// does not restart it for its counters' sake; `status` says whether reads
/// and writes can be served, and `problem` why not.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "The coordinator is up; `status` tells whether the cluster serves.", body = Health)),
)]
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Result<Json<Health>, Error> {
    let leadership = state.shared.driver.leadership();
    let role = leadership.role;
    let answer = state
        .shared
        .driver
        .inspect(|core, _| {
            let cluster = core.cluster();
            (cluster.in_sync_count(), cluster.availability())
        })
        .await;
    match answer {
        Ok((in_sync, availability)) => Ok(Json(Health::new(in_sync, availability, role))),
        // A follower has no view of the counters of its own: it serves by
        // passing requests to the leader, when there is one.
        Err(Stopped::NotLeader) => {
            let availability = match &leadership.leader {
                Some(_) => tally_common::api::Availability::ok(),
                None => tally_common::api::Availability {
                    status: "stalled".into(),
                    problem: Some(format!(
                        "no coordinator leads (this one is a {}): a majority of the \
                         coordinators must be up and reach each other",
                        role.name()
                    )),
                },
            };
            Ok(Json(Health::new(0, availability, role)))
        }
        Err(e) => Err(e.into()),
    }
}

/// This document
///
/// Built on each request from the code (see `openapi.rs`), with the limits
/// this coordinator was started with.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document of the public API.",
        body = Object, content_type = "application/json")),
)]
pub(crate) async fn openapi_json(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.openapi.as_ref().clone())
}

async fn register(
    State(state): State<Arc<AppState>>,
    Json(request): Json<RegisterRequest>,
) -> Result<Json<JoinPlan>, Error> {
    let id = request.id.clone();
    let plan = state.shared.driver.register(request).await?;
    Ok(Json(
        plan.map_err(|refused| Error::refused_join(&id, refused))?,
    ))
}

async fn caught_up(
    State(state): State<Arc<AppState>>,
    Json(request): Json<CaughtUpRequest>,
) -> Result<Json<JoinPlan>, Error> {
    let (id, incarnation) = (request.id.clone(), request.incarnation);
    let plan = state.shared.driver.caught_up(request).await?;
    Ok(Json(plan.map_err(|refused| match refused {
        JoinRefused::NotRegistered => Error::NotFound(format!(
            "counter {id} (incarnation {incarnation}) is not registered here: register first"
        )),
        refused => Error::refused_join(&id, refused),
    })?))
}

/// The operator's last resort for a stalled cluster whose complete copies
/// are gone for good: the named counter becomes the complete copy, and the
/// commits it lacks are given up. Never done automatically; logged as an
/// error with what was lost (docs/operations.md).
async fn promote(
    State(state): State<Arc<AppState>>,
    Json(request): Json<PromoteRequest>,
) -> Result<Json<PromoteReport>, Error> {
    if !request.accept_loss {
        return Err(Error::Conflict(
            "a forced promotion gives up every commit the counter lacks: send accept_loss: true"
                .into(),
        ));
    }
    let shared = &state.shared;
    let id = request.counter.clone();
    let member = shared
        .driver
        .inspect(move |core, _| {
            let cluster = core.cluster();
            if cluster.availability().is_ok() {
                return Err(Error::Conflict(
                    "the cluster is serving: nothing to promote".into(),
                ));
            }
            let member = cluster
                .member(&id)
                .ok_or_else(|| Error::NotFound(format!("unknown counter {id}")))?;
            Ok((member.url.clone(), cluster.decided()))
        })
        .await?;
    let (url, decided) = member?;
    // The counter first takes everything up to the decided index as held,
    // so that reads fenced there can be answered; only then is it trusted.
    let status = shared
        .counters
        .accept_loss(
            &url,
            &request.counter,
            decided,
            shared.settings.commit_timeout,
        )
        .await
        .map_err(|e| Error::Unavailable(format!("{} did not accept: {e}", request.counter)))?;
    let held = shared
        .driver
        .promote(request.counter.clone())
        .await?
        .map_err(Error::Conflict)?;
    tracing::error!(
        counter = %request.counter, held_through = %held, decided = %decided,
        applied_now = %status.applied_index,
        "operator promoted a counter by force: commits {}..={} are given up",
        held.0 + 1, decided
    );
    Ok(Json(PromoteReport {
        counter: request.counter,
        held_through: held,
        decided,
    }))
}

/// Presumed abort: no logged decision and not in flight means aborted.
async fn outcome(
    State(state): State<Arc<AppState>>,
    Path(txn): Path<u64>,
) -> Result<Json<Outcome>, Error> {
    Ok(Json(state.shared.driver.outcome(TxnId(txn)).await?))
}
