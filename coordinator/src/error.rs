//! The coordinator's one error type; every HTTP error answer comes from
//! `impl IntoResponse` here. And the policy for poisoned locks.
//!
//! **Poisoned locks.** The same as the counter's (`tally_server::locks`):
//! [`lock`] logs which lock it was and exits the process. Protocol state
//! has no lock (the driver owns it); what sits behind one is the reads in
//! flight, which a half-finished change could leave pointing later reads
//! at an answer that never comes, and which a restart simply starts
//! without, and the parsed URLs of the counters' endpoints (`client.rs`),
//! a cache. Everything acknowledged is in the decision log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tally_common::api::Message;

pub use tally_server::locks::lock;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] tally_common::Error),
    #[error("{0}")]
    TooLarge(String),
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    /// The client sent its body too slowly (or stopped): the connection
    /// is not held for it.
    #[error("the request body did not arrive within {0:?}")]
    SlowBody(std::time::Duration),
    #[error("bad path: {0}")]
    BadPath(String),
    /// Definite failure: nothing of the request was counted.
    #[error("transaction aborted, nothing was counted: {0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    /// The request may or may not have been carried out (a leader lost its
    /// leadership while deciding it, or stopped answering a forwarded one).
    #[error("{0}")]
    Indeterminate(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error("serving failed: {0}")]
    Io(String),
}

/// Why the driver gave no answer.
#[derive(Debug)]
pub enum Stopped {
    /// The process is shutting down.
    Stopping,
    /// This coordinator does not lead (any more, or yet): nothing of the
    /// request was done.
    NotLeader,
    /// It stopped leading while the request was in hand: it may or may not
    /// have been carried out.
    LeadershipLost,
}

impl From<Stopped> for Error {
    fn from(stopped: Stopped) -> Self {
        match stopped {
            Stopped::Stopping => Error::Unavailable("the coordinator is stopping; retry".into()),
            Stopped::NotLeader => {
                Error::Unavailable("this coordinator does not lead right now; retry".into())
            }
            Stopped::LeadershipLost => Error::Indeterminate(
                "the coordinator stopped leading while deciding this request: it may or may not \
                 have been carried out, and retrying is safe"
                    .into(),
            ),
        }
    }
}

impl From<tally_common::coordinator::WriteRefused> for Error {
    fn from(refused: tally_common::coordinator::WriteRefused) -> Self {
        use tally_common::coordinator::WriteRefused;
        match refused {
            WriteRefused::Aborted(reason) => Error::Aborted(reason),
            WriteRefused::Busy => {
                Error::Unavailable("too many writes waiting, retry shortly".into())
            }
        }
    }
}

impl Error {
    /// A registration or catch-up report the core refused.
    pub fn refused_join(
        id: &tally_common::CounterId,
        refused: tally_common::coordinator::JoinRefused,
    ) -> Self {
        use tally_common::coordinator::JoinRefused;
        match refused {
            JoinRefused::ImpossibleClaim { applied, decided } => {
                tracing::error!(
                    counter = %id, claimed = %applied, %decided,
                    "counter claims to hold commits never decided here: refused (another cluster's data, or a lost decision log?)"
                );
                Error::Conflict(format!(
                    "applied index {applied} is beyond the last decided index {decided}"
                ))
            }
            JoinRefused::NotRegistered => Error::NotFound(format!(
                "counter {id} is not registered here: register first"
            )),
        }
    }
}

macro_rules! storage_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.into())
            }
        }
    )*};
}
storage_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Invalid(tally_common::Error::TooManyItems { .. }) | Error::TooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Invalid(_) | Error::BadBody(_) | Error::BadPath(_) => StatusCode::BAD_REQUEST,
            Error::Aborted(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Storage(_)
            | Error::Corrupt(_)
            | Error::Metrics(_)
            | Error::Io(_)
            | Error::Indeterminate(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = (status, Json(Message::new(self.to_string()))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
