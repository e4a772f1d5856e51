//! The one error type of this crate: what is wrong with a client's request,
//! or with a peer's export stream.

/// Why a `POST /items` body or a tenant in a path was refused (each variant
/// maps to one HTTP status in the coordinator, so the mapping lives in one
/// place), why a counter refused a prepare, or why it gave up on a peer's
/// export stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The body is not a JSON array of item objects (400).
    #[error("body must be a JSON array of {{\"id\": string, \"tenant\": string}} objects: {0}")]
    Malformed(String),
    /// One item is missing a field, or a field is empty or too long (400).
    #[error("item {index}: {problem}")]
    InvalidItem { index: usize, problem: String },
    /// The tenant of a count path is empty or too long (400).
    #[error("tenant in the path {0}")]
    InvalidTenant(String),
    /// More items than one request may carry (413).
    #[error("too many items in one request: {count}, the limit is {limit}")]
    TooManyItems { count: usize, limit: usize },
    /// A prepare from the coordinator does not decode (the counter
    /// answers 400).
    #[error("malformed prepare ({encoding}): {problem}")]
    MalformedPrepare {
        encoding: &'static str,
        problem: String,
    },
    /// A frame of a peer's export stream does not decode (the counter
    /// abandons the stream).
    #[error("export stream frame {frame}: {problem}")]
    BadFrame { frame: u64, problem: String },
    /// A frame of a peer's export stream announces more bytes than any
    /// transaction can take (the counter abandons the stream).
    #[error("export stream frame {frame} announces {len} bytes, the limit is {limit}")]
    FrameTooLong {
        frame: u64,
        len: usize,
        limit: usize,
    },
}
