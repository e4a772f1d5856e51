//! Answers for requests no route takes, the same from both binaries: a
//! known path asked with another method gets a JSON 405, and axum's method
//! router adds the `Allow` header listing the methods the path takes.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use tally_common::api::Message;

/// For `Router::method_not_allowed_fallback`.
pub async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(Message::new("method not allowed on this path")),
    )
}
