//! The public presence endpoints: `GET /presence/{tenant}/{key}` (a
//! WebSocket) and `GET /presence/{tenant}/{key}/count`. Tenant and key
//! follow the item API's rules for a tenant in a path, with the same 400.

use super::hub::Refused;
use super::{socket, Frontend};
use crate::error::Error;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Duration;
use tally_common::api::{Count, Message};
use tally_common::items::check_tenant;
use tally_common::presence::PresenceKey;

/// Most bytes a client may send in one message: it has nothing to say but
/// pongs and a close.
const MAX_CLIENT_MESSAGE: usize = 1024;

/// The `{tenant}` and `{key}` of a presence path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct PresenceParams {
    /// The tenant: 1 to 256 bytes of UTF-8, percent-encoded in the path.
    #[param(min_length = 1, max_length = 256, example = "test")]
    tenant: String,
    /// The key within the tenant (a page, a room): 1 to 256 bytes of UTF-8.
    #[param(min_length = 1, max_length = 256, example = "lobby")]
    key: String,
}

/// The checked key of a presence path.
fn presence_key(
    path: Result<Path<PresenceParams>, PathRejection>,
    frontend: &Frontend,
) -> Result<PresenceKey, Error> {
    let Path(PresenceParams { tenant, key }) = path.map_err(|e| Error::BadPath(e.body_text()))?;
    check_tenant(&tenant, frontend.limits)?;
    check_tenant(&key, frontend.limits).map_err(|e| match e {
        tally_common::Error::InvalidTenant(problem) => {
            Error::BadPath(format!("key in the path {problem}"))
        }
        other => Error::Invalid(other),
    })?;
    Ok(PresenceKey::new(tenant, key))
}

/// Joins a key's presence over a WebSocket. Not in the OpenAPI document,
/// which cannot describe an upgrade (docs/api.md).
pub(crate) async fn join(
    State(frontend): State<Arc<Frontend>>,
    path: Result<Path<PresenceParams>, PathRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let key = presence_key(path, &frontend)?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return Ok((
                rejection.status(),
                Json(Message::new(format!(
                    "this path is a WebSocket: {}",
                    rejection.body_text()
                ))),
            )
                .into_response())
        }
    };
    let upgrade = upgrade
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    // The seat is taken before the upgrade, so the bounds hold for
    // handshakes in flight too.
    Ok(match frontend.hub.join(key) {
        Ok(seat) => {
            let ping = frontend.ping_interval;
            let stopping = frontend.stopping.subscribe();
            upgrade.on_upgrade(move |ws| socket::serve(ws, seat, ping, stopping))
        }
        Err(refused) => {
            metrics::counter!("tally_presence_refused_total", "reason" => refused_label(refused))
                .increment(1);
            upgrade.on_upgrade(move |ws| socket::refuse(ws, refused))
        }
    })
}

fn refused_label(refused: Refused) -> &'static str {
    match refused {
        Refused::CoordinatorFull => "coordinator_full",
        Refused::KeyFull => "key_full",
    }
}

/// Read a key's presence
///
/// How many clients hold a presence WebSocket (`GET /presence/{tenant}/{key}`)
/// of the key right now, over every coordinator, without joining. Not
/// durable: a count of who is connected, not of items.
#[utoipa::path(
    get,
    path = "/presence/{tenant}/{key}/count",
    tag = "presence",
    params(PresenceParams),
    responses(
        (status = 200, description = "Clients connected to the key now.", body = Count,
            example = json!({"count": 3})),
        (status = 400, description = "The tenant or key is empty, longer than 256 bytes or not \
            UTF-8.", body = Message),
        (status = 503, description = "No live counter owns the key, or its owner did not answer; \
            retry.", body = Message,
            headers(("retry-after" = u32, description = "Seconds to wait before retrying."))),
    ),
)]
pub(crate) async fn count(
    State(frontend): State<Arc<Frontend>>,
    path: Result<Path<PresenceParams>, PathRejection>,
) -> Result<Json<Count>, Error> {
    let key = presence_key(path, &frontend)?;
    // Sockets here see `others + local` already; nothing to ask.
    if let Some(count) = frontend.hub.shown(&key) {
        return Ok(Json(Count { count }));
    }
    let owner = frontend
        .hub
        .owner_of(&key)
        .ok_or_else(|| Error::Unavailable("no live counter to own presence keys".into()))?;
    let answer = frontend
        .link
        .with_token(
            frontend
                .link
                .http
                .get(format!("{}/internal/presence/count", owner.url)),
        )
        .query(&[("tenant", &key.tenant), ("key", &key.key)])
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .and_then(|a| a.error_for_status())
        .map_err(|e| {
            Error::Unavailable(format!("presence owner {} did not answer: {e}", owner.id))
        })?;
    let count: Count = answer.json().await.map_err(|e| {
        Error::Unavailable(format!("presence owner {} answered garbage: {e}", owner.id))
    })?;
    Ok(Json(count))
}
