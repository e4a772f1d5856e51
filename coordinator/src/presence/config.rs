//! The presence flags, flattened into the coordinator's command line; each
//! also reads its `TALLY_` environment variable.

use std::time::Duration;
use tally_server::flags::{at_least_one, positive_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct PresenceArgs {
    /// Most presence WebSockets open on this coordinator; one more is
    /// closed at once with code 1013 (try again later).
    #[arg(long = "presence-max-sockets", env = "TALLY_PRESENCE_MAX_SOCKETS", default_value_t = 10_000, value_parser = at_least_one)]
    pub max_sockets: usize,
    /// Most presence WebSockets of one key on this coordinator; one more is
    /// closed at once with code 1013.
    #[arg(long = "presence-max-per-key", env = "TALLY_PRESENCE_MAX_PER_KEY", default_value_t = 5_000, value_parser = at_least_one)]
    pub max_per_key: usize,
    /// Time between pings of an idle presence WebSocket; a client that
    /// answered nothing since the previous ping is dropped.
    #[arg(long = "presence-ping-interval", env = "TALLY_PRESENCE_PING_INTERVAL", default_value = "15s", value_parser = positive_duration)]
    pub ping_interval: Duration,
    /// How long the owning counters keep this coordinator's socket counts
    /// without hearing from it; it renews them every third of this.
    #[arg(long = "presence-lease", env = "TALLY_PRESENCE_LEASE", default_value = "6s", value_parser = positive_duration)]
    pub lease: Duration,
    /// Serve presence only, as a frontend of the coordinator at this URL
    /// (it learns the counters from that coordinator's `GET /cluster`):
    /// no decision log, no item API.
    #[arg(long = "presence-frontend-of", env = "TALLY_PRESENCE_FRONTEND_OF")]
    pub frontend_of: Option<String>,
}
