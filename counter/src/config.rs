//! Command line of the counter; every flag also reads its environment
//! variable (`--data-dir` ↔ `TALLY_DATA_DIR`). A value the counter cannot
//! run with is refused at start-up.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tally_common::participant;
use tally_server::flags::{at_least_one, base_url, positive_duration};

#[derive(Debug, Clone, Parser)]
#[command(name = "counter", version, about = "One replica of tally's data set")]
pub struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "TALLY_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Directory of the replica's database; keep it across restarts.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "data/counter")]
    pub data_dir: PathBuf,
    /// Base URL of the coordinator to register with; with several
    /// coordinators, every one's URL, separated by commas (calls go to
    /// whichever leads).
    #[arg(
        long,
        env = "TALLY_COORDINATOR",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ',',
        value_parser = base_url
    )]
    pub coordinator: Vec<String>,
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

/// Every setting the running counter reads, in one place: the flags it was
/// given, and the timeouts and sizes derived from them or fixed by the
/// protocol. Built once at start-up ([`Settings::from_args`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL of every coordinator, without a trailing slash, each
    /// once, in the order given.
    pub coordinators: Vec<String>,
    /// How long a read waits for this replica to apply up to its fence; the
    /// export stream waits as long for the range it must serve.
    pub fence_timeout: Duration,
    /// Register again after this long without a call from the coordinator.
    pub rejoin_after: Duration,
    /// Items per second the export stream may send; 0 for no limit.
    pub catch_up_rate: u64,
    /// Items per chunk of the export stream: with a rate cap, at most a
    /// quarter second of items, so the importer hears from this counter
    /// often enough for its idle timeout ([`Settings::copy_idle_timeout`]).
    pub export_chunk_items: usize,
    /// When the 2PC participant asks the coordinator about a prepared
    /// transaction.
    pub in_doubt: participant::Config,
    /// How often the participant's in-doubt clock ticks, and the
    /// coordinator's silence is checked.
    pub maintenance_interval: Duration,
    /// How long a call to the coordinator may take.
    pub call_timeout: Duration,
    /// How long a copy may go without a byte from the peer before it counts
    /// as cut. A copy as a whole has no time limit: a large one at a capped
    /// rate takes minutes, and a total timeout once made every copy longer
    /// than it start over for ever. The exporter sends at least every
    /// quarter second when it is rate-capped, and waits at most its fence
    /// timeout before its first byte.
    pub copy_idle_timeout: Duration,
    /// How long opening a connection to the coordinator or a peer may take.
    pub connect_timeout: Duration,
    /// How long this counter's HTTP client keeps an idle pooled connection
    /// (inside the servers' idle close, see `ServeLimits`).
    pub client_idle_timeout: Duration,
    /// How long shutdown waits for the writer to finish its last batch
    /// after the server stopped: the server's own grace period.
    pub writer_stop_grace: Duration,
}

impl Settings {
    pub fn from_args(args: &Args) -> Self {
        let catch_up_rate = args.catch_up_rate;
        Settings {
            coordinators: args.coordinator.iter().fold(Vec::new(), |mut urls, url| {
                if !urls.contains(url) {
                    urls.push(url.clone());
                }
                urls
            }),
            fence_timeout: args.fence_timeout,
            rejoin_after: args.rejoin_after,
            catch_up_rate,
            export_chunk_items: if catch_up_rate > 0 {
                usize::try_from((catch_up_rate / 4).max(1)).unwrap_or(usize::MAX)
            } else {
                usize::MAX
            },
            in_doubt: participant::Config {
                in_doubt_after: participant::DEFAULT_IN_DOUBT_AFTER,
            },
            maintenance_interval: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
            copy_idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            client_idle_timeout: args.serve.client_idle_timeout(),
            writer_stop_grace: args.serve.shutdown_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(flags: &[&str]) -> Settings {
        let args = Args::try_parse_from(std::iter::once("counter").chain(flags.iter().copied()))
            .expect("valid flags");
        Settings::from_args(&args)
    }

    #[test]
    fn an_export_chunk_holds_a_quarter_second_of_a_capped_rate() {
        assert_eq!(settings(&[]).export_chunk_items, 100_000);
        assert_eq!(settings(&["--catch-up-rate", "2"]).export_chunk_items, 1);
        assert_eq!(
            settings(&["--catch-up-rate", "0"]).export_chunk_items,
            usize::MAX,
            "no cap, no chunk limit"
        );
    }

    #[test]
    fn the_coordinator_url_loses_its_trailing_slash() {
        let s = settings(&["--coordinator", "http://c:8080/"]);
        assert_eq!(s.coordinators, ["http://c:8080"]);
        assert_eq!(settings(&[]).coordinators, ["http://127.0.0.1:8080"]);
    }

    #[test]
    fn several_coordinators_are_listed_once_each_in_order() {
        let s = settings(&[
            "--coordinator",
            "http://c1:8080,http://c2:8080/,http://c3:8080,http://c2:8080",
        ]);
        assert_eq!(
            s.coordinators,
            ["http://c1:8080", "http://c2:8080", "http://c3:8080"]
        );
    }

    #[test]
    fn a_coordinator_list_with_a_bad_url_is_refused_naming_the_flag() {
        for (list, said) in [
            ("http://c1:8080,,http://c2:8080", "an empty URL"),
            ("http://c1:8080,c2:8080", "http://"),
            ("http://c1:8080/api", "has a path"),
        ] {
            let err = Args::try_parse_from(["counter", "--coordinator", list])
                .expect_err(list)
                .to_string();
            assert!(
                err.contains("--coordinator") && err.contains(said),
                "{list}: {err}"
            );
        }
    }
}
