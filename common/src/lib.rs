//! Shared by every tally binary: the wire types of the public and internal
//! APIs, request validation, and the protocol logic as plain code.
//!
//! Nothing here does I/O, reads a clock or spawns a task. The binaries feed
//! events in (a vote, a health-check result, a registration) and carry out
//! what comes back, which is what lets the unit tests below drive every
//! interleaving of prepare, commit, crash and timeout without a network.

pub mod api;
pub mod applied;
pub mod coordinator;
pub mod error;
pub mod export_stream;
pub mod ids;
pub mod items;
pub mod limits;
pub mod membership;
pub mod participant;
pub mod presence;
pub mod registration;
pub mod time;
pub mod token;

pub use error::Error;
pub use ids::{CommitIndex, CounterId, Incarnation, TxnId};
pub use items::Item;
pub use time::Millis;
