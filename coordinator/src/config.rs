//! Command line of the coordinator; every flag also reads its environment
//! variable (`--health-interval` ↔ `HEALTH_INTERVAL`). Defaults live here only.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "coordinator",
    version,
    about = "tally's entry point and 2PC coordinator"
)]
pub struct Args {
    /// Address to serve the public and internal API on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Directory of the decision log and membership; keep it across restarts.
    #[arg(long, env = "DATA_DIR", default_value = "data/coordinator")]
    pub data_dir: PathBuf,
    /// Time between health checks of each counter.
    #[arg(long, env = "HEALTH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// Failed checks in a row after which a counter is dead.
    #[arg(long, env = "DEAD_AFTER", default_value_t = 1)]
    pub dead_after: u32,
    /// Failed checks in a row after which a counter leaves the cluster view.
    #[arg(long, env = "REMOVE_AFTER", default_value_t = 5)]
    pub remove_after: u32,
    /// In-sync counters that must hold a transaction before it commits.
    #[arg(long, env = "MIN_INSYNC", default_value_t = 1)]
    pub min_insync: usize,
    /// Shared secret for internal endpoints; unset means no check.
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// How long a counter may take to vote before it is dropped from the
    /// in-sync set for that transaction.
    #[arg(long, env = "PREPARE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub prepare_timeout: Duration,
    /// How long a count read waits for one counter before trying another.
    #[arg(long, env = "READ_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
    /// Largest accepted `POST /items` body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Time a client has to send the whole `POST /items` body; beyond, 408.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Most items accepted in one request.
    #[arg(long, env = "MAX_ITEMS", default_value_t = 100_000)]
    pub max_items: usize,
    /// Most items grouped into one transaction (a larger request is its own).
    #[arg(long, env = "MAX_TXN_ITEMS", default_value_t = 20_000)]
    pub max_txn_items: usize,
    /// Transactions in flight at once.
    #[arg(long, env = "MAX_INFLIGHT_TXNS", default_value_t = 4)]
    pub max_inflight_txns: usize,
    /// Write requests that may wait for a transaction; beyond, 503.
    #[arg(long, env = "MAX_QUEUED_WRITES", default_value_t = 20_000)]
    pub max_queued_writes: usize,
    #[command(flatten)]
    pub serve: tally_server::ServeLimits,
    #[command(flatten)]
    pub process: tally_server::ProcessArgs,
}
