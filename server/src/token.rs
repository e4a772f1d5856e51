//! The cluster token in front of internal endpoints: without it anyone who
//! can reach a port could vote in a transaction or register as a counter.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use tally_common::api::{Message, TOKEN_HEADER};
use tally_common::token::token_matches;

/// The shared secret, or none when the deployment runs without one.
#[derive(Clone, Default)]
pub struct ClusterToken(Option<Arc<str>>);

impl ClusterToken {
    /// An empty string means no token, as an unset variable does.
    pub fn new(token: Option<&str>) -> Self {
        ClusterToken(token.filter(|t| !t.is_empty()).map(Arc::from))
    }

    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// Middleware: 401 unless the request carries the token (when one is set).
/// Runs before the body is read, so a refused caller costs nothing more.
pub async fn require_token(
    State(token): State<ClusterToken>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = token.get() {
        let given = request
            .headers()
            .get(TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !token_matches(token, given) {
            tracing::warn!(path = %request.uri().path(), "internal call with a wrong or missing token");
            metrics::counter!("tally_unauthorized_total").increment(1);
            return (
                StatusCode::UNAUTHORIZED,
                Json(Message::new("missing or wrong cluster token")),
            )
                .into_response();
        }
    }
    next.run(request).await
}
