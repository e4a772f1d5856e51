//! The serving limits, as flags both binaries flatten into their command
//! line (each also reads its environment variable).

use clap::Args;
use std::time::Duration;

/// Bounds on what one server holds at once. Defaults suit one machine
/// serving many clients; every one can be raised or lowered per deployment.
#[derive(Debug, Clone, Args)]
pub struct ServeLimits {
    /// Open client connections at most; a connection beyond is closed at
    /// once, so a flood meets a quick refusal instead of a growing backlog.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = 4096, value_parser = crate::flags::at_least_one)]
    pub max_connections: usize,
    /// Requests being handled at once at most; beyond, 503 with Retry-After.
    #[arg(long, env = "TALLY_MAX_INFLIGHT_REQUESTS", default_value_t = 2048, value_parser = crate::flags::at_least_one)]
    pub max_inflight_requests: usize,
    /// Time a client has to send a request's headers, counted from when the
    /// connection opens or goes idle: slow clients (slowloris) and idle
    /// keep-alive connections are closed after it. Clients that pool
    /// connections should let them idle for less (tally's own use half).
    #[arg(long, env = "TALLY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = crate::flags::positive_duration)]
    pub header_read_timeout: Duration,
    /// Largest request line plus headers, in bytes; beyond, 431.
    #[arg(long, env = "TALLY_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = crate::flags::at_least_one)]
    pub max_header_bytes: usize,
    /// How long a stopping server waits for open requests before it exits.
    #[arg(long, env = "TALLY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl ServeLimits {
    /// How long tally's own HTTP clients keep an idle pooled connection:
    /// well inside the server's idle close, so a request never goes out on
    /// a connection the server is closing at that moment. Assumes the
    /// processes of one cluster share the setting, as `.env` makes them.
    pub fn client_idle_timeout(&self) -> Duration {
        self.header_read_timeout / 2
    }
}
