//! The counter's one error type, and its mapping to HTTP answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tally_common::api::Message;
use tally_common::{CommitIndex, TxnId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(#[from] fjall::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] postcard::Error),
    #[error("stored {0} is corrupt")]
    CorruptEncoding(&'static str),
    #[error("transaction {0} is not prepared here")]
    UnknownTxn(TxnId),
    #[error("not caught up to index {fence} (applied {applied})")]
    FenceTimeout {
        fence: CommitIndex,
        applied: CommitIndex,
    },
    #[error("the writer has stopped")]
    WriterGone,
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::UnknownTxn(_) => StatusCode::CONFLICT,
            Error::FenceTimeout { .. } | Error::WriterGone => StatusCode::SERVICE_UNAVAILABLE,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Storage(_) | Error::Corrupt(_) | Error::CorruptEncoding(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(Message::new(self.to_string()))).into_response()
    }
}
