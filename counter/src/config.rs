//! Command line of the counter; every flag also reads its environment
//! variable (`--data-dir` ↔ `TALLY_DATA_DIR`). A value the counter cannot
//! run with is refused at start-up.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tally_server::flags::{at_least_one, positive_duration};

#[derive(Debug, Clone, Parser)]
#[command(name = "counter", version, about = "One replica of tally's data set")]
pub struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "TALLY_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Directory of the replica's database; keep it across restarts.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "data/counter")]
    pub data_dir: PathBuf,
    /// Base URL of the coordinator to register with.
    #[arg(
        long,
        env = "TALLY_COORDINATOR",
        default_value = "http://127.0.0.1:8080"
    )]
    pub coordinator: String,
    /// URL the coordinator and peers reach this counter at
    /// [default: http://<host name>:<port>].
    #[arg(long, env = "TALLY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Stable member name [default: the host name].
    #[arg(long, env = "TALLY_ID")]
    pub id: Option<String>,
    /// Shared secret required on internal endpoints when set.
    #[arg(long, env = "TALLY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// How long a read waits for this replica to apply up to its fence.
    #[arg(long, env = "TALLY_FENCE_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    pub fence_timeout: Duration,
    /// Register again after this long without a call from the coordinator.
    #[arg(long, env = "TALLY_REJOIN_AFTER", default_value = "60s", value_parser = positive_duration)]
    pub rejoin_after: Duration,
    /// Most items per second this counter sends to a peer that copies from
    /// it; 0 means no limit. Lower it to leave more of a busy machine to the
    /// writes while another counter catches up. The default copies a million
    /// items in about 4 s on 2 cores and keeps 93-97% of the write rate
    /// meanwhile; unlimited took 2.4-2.9 s and kept 68-81%
    /// (docs/benchmarks.md).
    #[arg(long, env = "TALLY_CATCH_UP_RATE", default_value_t = 400_000)]
    pub catch_up_rate: u64,
    /// Memory, in MiB, for the filter that spares new items a storage
    /// lookup (about 1.5 bytes per stored item); past it, writes slow down
    /// toward one lookup per item. 0 turns the filter off.
    #[arg(long, env = "TALLY_ITEM_FILTER_MB", default_value_t = 256)]
    pub item_filter_mb: usize,
    /// New item keys held in memory (40-80 bytes each) until they are
    /// written to the item index as one sorted batch. They are in the
    /// commit log already. Keys go on gathering while a batch is written;
    /// writes wait for the indexer once four batches' worth are waiting.
    #[arg(long, env = "TALLY_INDEX_BATCH_KEYS", default_value_t = 1 << 20, value_parser = at_least_one)]
    pub index_batch_keys: usize,
    #[command(flatten)]
    pub serve: tally_server::ServeLimits,
    #[command(flatten)]
    pub process: tally_server::ProcessArgs,
}

/// The machine's host name, the default id and advertised host: in a
/// container it is the container's name, stable across restarts.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
