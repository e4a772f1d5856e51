//! The counter's one error type, its mapping to HTTP answers, and the
//! policy for poisoned locks.
//!
//! Each variant says what happened, and the status follows from that: a
//! client's mistake is 400, a commit for a transaction never prepared here
//! is 409, a failed or refused storage write is 503 (fjall refuses writes
//! after a failed fsync until a restart; the coordinator counts it like a
//! missing vote), a failed storage read or corrupt stored data is 500, and
//! anything that is only
//! "not now" (not registered yet, not caught up to the fence, a peer that
//! failed) is 503. Storage failures are never 400.
//!
//! **Poisoned locks.** A lock is poisoned when a thread panicked while it
//! held it, in the middle of changing what the lock guards: the counts, the
//! registration, the item filter or the keys waiting for the index may then
//! be half updated, and every later answer built on them could be wrong.
//! Everything they hold is rebuilt from durable storage at start-up, so the
//! counter does not try to repair them: [`lock`] (and [`read`], [`write`])
//! log which lock it was and exit the process, and the restart recovers.
//! This is the same as a `kill -9`, which loses nothing acknowledged. The
//! coordinator does the same (`tally_server::locks`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tally_common::api::Message;
use tally_common::registration::NotRegistered;
use tally_common::{CommitIndex, TxnId};

pub use tally_server::locks::{lock, read, write};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage engine failed to read or open (an I/O error, a failed
    /// fsync, a database that refuses writes after one).
    #[error("storage: {0}")]
    Storage(#[from] fjall::Error),
    /// A storage write failed: nothing of it is durable. The writer thread
    /// answers every operation of the failed batch with this.
    #[error("storage write failed: {0}")]
    WriteFailed(String),
    /// A stored record does not decode.
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] postcard::Error),
    #[error("stored {0} is corrupt")]
    CorruptEncoding(&'static str),
    /// An item whose key storage cannot hold (fjall keys are at most
    /// u16::MAX bytes); the coordinator's field limits keep every valid
    /// request far below it.
    #[error("an item of {tenant} + {id} bytes (tenant + id) is too long to store")]
    Unstorable { tenant: usize, id: usize },
    #[error("transaction {0} is not prepared here")]
    UnknownTxn(TxnId),
    #[error("not caught up to index {fence} (applied {applied})")]
    FenceTimeout {
        fence: CommitIndex,
        applied: CommitIndex,
    },
    #[error("the writer has stopped")]
    WriterGone,
    /// A vote or a fenced read asked for by a coordinator this counter has
    /// not registered with (or before it registered at all): a counter that
    /// restarted on an empty disk must not answer for the member it was.
    #[error(transparent)]
    NotRegistered(#[from] NotRegistered),
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
    /// Start-up or shutdown could not do its part: a thread, the metrics
    /// recorder, the HTTP client or the listener.
    #[error("{what}: {reason}")]
    Process { what: &'static str, reason: String },
}

impl Error {
    /// A start-up or shutdown failure of `what`.
    pub fn process(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Process {
            what,
            reason: reason.to_string(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Error::UnknownTxn(_) => StatusCode::CONFLICT,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::FenceTimeout { .. }
            | Error::WriterGone
            | Error::WriteFailed(_)
            | Error::NotRegistered(_)
            | Error::CopyFailed(_)
            | Error::Peer(_)
            | Error::Stream(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Storage(_)
            | Error::Corrupt(_)
            | Error::CorruptEncoding(_)
            | Error::Unstorable { .. }
            | Error::Process { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        // A counter that has not registered yet refuses votes and reads as
        // a matter of course (the coordinator learns at its next health
        // check); that is no failure of this process.
        if let Error::NotRegistered(_) = self {
            tracing::debug!(error = %self, "refused until registered");
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(Message::new(self.to_string()))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Storage trouble is the server's or the disk's, never the client's.
    #[test]
    fn storage_failures_are_never_a_bad_request() {
        let cases = [
            Error::WriteFailed("fsync: EIO".into()),
            Error::Storage(fjall::Error::Io(std::io::Error::other("EIO"))),
            Error::CorruptEncoding("count"),
            Error::Unstorable {
                tenant: 40_000,
                id: 40_000,
            },
            Error::WriterGone,
        ];
        for error in cases {
            let status = error.status();
            assert!(status.is_server_error(), "{error}: {status}");
        }
        assert_eq!(
            Error::BadRequest("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(Error::UnknownTxn(TxnId(1)).status(), StatusCode::CONFLICT);
    }
}
