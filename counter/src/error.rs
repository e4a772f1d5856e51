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
    /// A storage write failed (fjall refuses writes after a failed fsync
    /// until a restart): nothing of it is durable.
    #[error("storage write failed: {0}")]
    WriteFailed(String),
    /// A vote or a fenced read asked for by a coordinator this counter has
    /// not registered with (or before it registered at all): a counter that
    /// restarted on an empty disk must not answer for the member it was.
    #[error("not registered with the coordinator of epoch {asked} (registered: {registered})")]
    NotRegistered { asked: u64, registered: u64 },
    #[error("{0}")]
    BadRequest(String),
    /// A copy from a peer failed: the peer is unreachable, sent something
    /// else than an export stream, or went quiet. The copy moves on to the
    /// next peer, or resumes later.
    #[error("copy from a peer failed: {0}")]
    CopyFailed(String),
    #[error("peer: {0}")]
    Peer(#[from] reqwest::Error),
    #[error("peer sent a broken stream: {0}")]
    Stream(#[from] tally_common::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::UnknownTxn(_) => StatusCode::CONFLICT,
            Error::FenceTimeout { .. }
            | Error::WriterGone
            | Error::WriteFailed(_)
            | Error::NotRegistered { .. }
            | Error::CopyFailed(_)
            | Error::Peer(_)
            | Error::Stream(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Storage(_) | Error::Corrupt(_) | Error::CorruptEncoding(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        // A counter that has not registered yet refuses votes and reads as
        // a matter of course (the coordinator learns at its next health
        // check); that is no failure of this process.
        if let Error::NotRegistered { .. } = self {
            tracing::debug!(error = %self, "refused until registered");
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(Message::new(self.to_string()))).into_response()
    }
}
