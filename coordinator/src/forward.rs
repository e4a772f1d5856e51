//! A follower passes every request that needs the leader on to it, so a
//! client may send anything to any coordinator. While there is no leader
//! (an election, or too few coordinators up) such requests answer 503 with
//! `Retry-After`: nothing was done, and retrying is safe.
//!
//! A forwarded request is marked, and a coordinator never forwards a marked
//! one again: two coordinators that each believe the other leads (for the
//! moment an election takes to settle) answer 503 instead of bouncing the
//! request between them.

use crate::error::Error;
use crate::state::Shared;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tally_common::api::TOKEN_HEADER;

pub const FORWARDED: &str = "x-tally-forwarded";

/// Headers that travel with a forwarded request and its answer; hop-by-hop
/// headers and lengths are the HTTP stacks' own.
const REQUEST_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::ACCEPT];
const ANSWER_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    header::CACHE_CONTROL,
];

/// Middleware on the routes the leader must answer.
pub async fn to_leader(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let leadership = shared.driver.leadership();
    if leadership.serving {
        return next.run(request).await;
    }
    if request.headers().contains_key(FORWARDED) {
        return Error::Unavailable(
            "this coordinator does not lead (a forwarded request is not forwarded again); retry"
                .into(),
        )
        .into_response();
    }
    match leadership.leader {
        Some(leader) if Some(&leader) != shared.advertise.as_ref() => {
            proxy(&shared, &leader, request).await
        }
        _ => Error::Unavailable(format!(
            "no coordinator leads right now ({}); retry",
            leadership.role.name()
        ))
        .into_response(),
    }
}

async fn proxy(shared: &Shared, leader: &str, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let mut out = shared
        .forwarder
        .request(parts.method.clone(), &url)
        .header(FORWARDED, "1");
    for name in REQUEST_HEADERS.iter() {
        if let Some(value) = parts.headers.get(name) {
            out = out.header(name, value);
        }
    }
    if let Some(value) = parts.headers.get(TOKEN_HEADER) {
        out = out.header(TOKEN_HEADER, value);
    }
    out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    // A leader cut off from the network leaves a pooled connection that
    // nothing closes: the request would wait for as long as the client
    // does (15 s in the Docker test where the leader's container is
    // disconnected), well after the others elected a new leader in about a
    // second. Once this coordinator no longer takes it for the leader, the
    // request ends like any other unanswered one.
    let answer = tokio::select! {
        answer = out.send() => answer,
        () = shared.driver.replaced(leader) => {
            return Error::Indeterminate(format!(
                "the leader {leader} was replaced before it answered; the request may or may \
                 not have been carried out, and retrying is safe"
            ))
            .into_response();
        }
    };
    match answer {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for name in ANSWER_HEADERS.iter() {
                if let Some(value) = answer.headers().get(name) {
                    response = response.header(name, value);
                }
            }
            response
                .body(Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|e| Error::Io(e.to_string()).into_response())
        }
        // Not connected: the leader never saw it.
        Err(e) if e.is_connect() => Error::Unavailable(format!(
            "the leader {leader} cannot be reached ({e}); retry"
        ))
        .into_response(),
        // It may have arrived and been carried out.
        Err(e) => Error::Indeterminate(format!(
            "the leader {leader} did not answer ({e}); the request may or may not have been \
             carried out, and retrying is safe"
        ))
        .into_response(),
    }
}
