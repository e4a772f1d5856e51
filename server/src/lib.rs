//! How tally's two binaries serve HTTP. Both face networks other people can
//! reach, so both get the same defences, written once: a bound on open
//! connections and on requests in flight (load is shed with a quick 503, not
//! queued), a deadline and a size cap on request headers (a slow or huge
//! header cannot pin a connection), the cluster-token check in front of
//! internal endpoints, and the plumbing every server needs (logging, the
//! shutdown signal, the container health probe, memory settings, and what
//! a poisoned lock means).
//!
//! Protocol logic stays in `tally-common`; this crate is the I/O around it.

mod fallback;
pub mod flags;
mod healthcheck;
mod limits;
mod listen;
pub mod locks;
mod logging;
mod memory;
mod metrics;
mod shutdown;
mod token;

pub use fallback::method_not_allowed;
pub use healthcheck::probe;
pub use limits::ServeLimits;
pub use listen::{raise_open_file_limit, serve};
pub use logging::{init_logging, LogFormat, ProcessArgs};
pub use memory::disable_transparent_huge_pages;
pub use metrics::{install_recorder, track_requests};
pub use shutdown::shutdown_signal;
pub use token::{require_token, ClusterToken};
