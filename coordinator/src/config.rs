//! Command line of the coordinator; every flag also reads its environment
//! variable (`--health-interval` ↔ `TALLY_HEALTH_INTERVAL`). Defaults live
//! here only, and so do the checks: a value the coordinator cannot run with
//! is refused at start-up, never adjusted.

use clap::{CommandFactory, Parser};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tally_common::coordinator::CoreConfig;
use tally_common::items::ItemLimits;
use tally_common::limits::MAX_TXN_ITEMS;
use tally_common::membership::MembershipConfig;
use tally_server::flags::{at_least_one, at_least_one_u32, positive_duration};

/// How long a transaction waits for joiners once every in-sync vote is in
/// (`CoreConfig::joiner_grace_ms` says why it is short).
const JOINER_GRACE_MS: u64 = 5;

/// How long a decided commit waits for the next prepare to carry it.
const COMMIT_LINGER_MS: u64 = 1;

/// Timeouts and limits the driver and the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prepare_timeout: Duration,
    pub commit_timeout: Duration,
    pub read_timeout: Duration,
    pub health_timeout: Duration,
    pub catch_up_call_timeout: Duration,
    /// How long a call to a counter may take to connect.
    pub connect_timeout: Duration,
    /// How long a pooled connection to a counter may idle.
    pub client_idle_timeout: Duration,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub item_limits: ItemLimits,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "coordinator",
    version,
    about = "tally's entry point and 2PC coordinator"
)]
pub struct Args {
    /// Address to serve the public and internal API on.
    #[arg(long, env = "TALLY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Directory of the decision log and membership; keep it across restarts.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "data/coordinator")]
    pub data_dir: PathBuf,
    /// Time between health checks of each counter.
    #[arg(long, env = "TALLY_HEALTH_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub health_interval: Duration,
    /// Failed checks in a row after which a counter is dead (at least 1).
    #[arg(long, env = "TALLY_DEAD_AFTER", default_value_t = 1, value_parser = at_least_one_u32)]
    pub dead_after: u32,
    /// Failed checks in a row after which a counter leaves the cluster view
    /// (at least `--dead-after`).
    #[arg(long, env = "TALLY_REMOVE_AFTER", default_value_t = 5, value_parser = at_least_one_u32)]
    pub remove_after: u32,
    /// In-sync counters that must hold a transaction before it commits (at
    /// least 1).
    #[arg(long, env = "TALLY_MIN_INSYNC", default_value_t = 1, value_parser = at_least_one)]
    pub min_insync: usize,
    /// Shared secret for internal endpoints; unset means no check.
    #[arg(long, env = "TALLY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// How long a counter may take to vote before it is dropped from the
    /// in-sync set for that transaction.
    #[arg(long, env = "TALLY_PREPARE_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    pub prepare_timeout: Duration,
    /// How long a count read waits for one counter before trying another.
    #[arg(long, env = "TALLY_READ_TIMEOUT", default_value = "3s", value_parser = positive_duration)]
    pub read_timeout: Duration,
    /// Largest accepted `POST /items` body, in bytes.
    #[arg(long, env = "TALLY_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = at_least_one)]
    pub max_body_bytes: usize,
    /// Time a client has to send the whole `POST /items` body; beyond, 408.
    #[arg(long, env = "TALLY_BODY_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub body_read_timeout: Duration,
    /// Most items accepted in one request.
    #[arg(long, env = "TALLY_MAX_ITEMS", default_value_t = 100_000, value_parser = at_least_one)]
    pub max_items: usize,
    /// Most items grouped into one transaction (a larger request is its own).
    // The counters' body limit is derived from the same default
    // (tally_common::limits), so they accept every transaction it makes.
    #[arg(long, env = "TALLY_MAX_TXN_ITEMS", default_value_t = MAX_TXN_ITEMS, value_parser = at_least_one)]
    pub max_txn_items: usize,
    /// Transactions in flight at once.
    #[arg(long, env = "TALLY_MAX_INFLIGHT_TXNS", default_value_t = 4, value_parser = at_least_one)]
    pub max_inflight_txns: usize,
    /// Write requests that may wait for a transaction; beyond, 503.
    #[arg(long, env = "TALLY_MAX_QUEUED_WRITES", default_value_t = 20_000, value_parser = at_least_one)]
    pub max_queued_writes: usize,
    /// This coordinator's URL as the other coordinators and the counters
    /// reach it; needed with --peers.
    #[arg(long, env = "TALLY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Every coordinator's --advertise URL, this one's included, comma
    /// separated: with more than one they replicate the decision log with
    /// Raft (docs/consensus.md). Without it, one coordinator works alone.
    #[arg(long, env = "TALLY_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    #[command(flatten)]
    pub presence: PresenceArgs,
    #[command(flatten)]
    pub serve: tally_server::ServeLimits,
    #[command(flatten)]
    pub process: tally_server::ProcessArgs,
}

/// The coordinators, as `--peers` and `--advertise` name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    pub urls: Vec<String>,
    /// 1-based: this coordinator is `urls[me - 1]`.
    pub me: u64,
}

impl Peers {
    pub fn url_of(&self, id: u64) -> Option<&str> {
        self.urls
            .get((id as usize).checked_sub(1)?)
            .map(String::as_str)
    }

    pub fn others(&self) -> usize {
        self.urls.len() - 1
    }
}

impl Args {
    /// Parses the command line and environment, exiting with clap's usage
    /// error when flags contradict each other.
    pub fn parse_checked() -> Self {
        let args = Self::parse();
        if let Err(message) = args.check() {
            Self::command()
                .error(clap::error::ErrorKind::ArgumentConflict, message)
                .exit();
        }
        args
    }

    /// The timeouts and limits the driver and handlers use, each derived
    /// here and only here.
    pub fn settings(&self) -> Settings {
        Settings {
            prepare_timeout: self.prepare_timeout,
            // A commit is cheap for a counter, but one busy importing may
            // take a moment; a commit timeout shorter than 2 s only made
            // re-sends of commits that were about to be acknowledged.
            commit_timeout: self.prepare_timeout.max(Duration::from_secs(2)),
            read_timeout: self.read_timeout,
            // One hung counter must not hold its check past the next round,
            // nor a slow but healthy one be declared dead at short intervals.
            health_timeout: self
                .health_interval
                .clamp(Duration::from_millis(500), Duration::from_secs(2)),
            catch_up_call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            // Less than the counters' idle close (`ServeLimits` says why).
            client_idle_timeout: self.serve.client_idle_timeout(),
            max_body_bytes: self.max_body_bytes,
            body_read_timeout: self.body_read_timeout,
            item_limits: ItemLimits {
                max_items: self.max_items,
                ..ItemLimits::default()
            },
        }
    }

    /// The protocol core's settings for a run in `epoch`.
    pub fn core(&self, epoch: u64) -> CoreConfig {
        let ms = |d: Duration| d.as_millis() as u64;
        CoreConfig {
            epoch,
            membership: MembershipConfig {
                dead_after: self.dead_after,
                remove_after: self.remove_after,
                min_insync: self.min_insync,
            },
            prepare_timeout_ms: ms(self.prepare_timeout),
            joiner_grace_ms: JOINER_GRACE_MS,
            commit_linger_ms: COMMIT_LINGER_MS,
            health_interval_ms: ms(self.health_interval),
            // Re-sends and trims follow the health rhythm, but at least once
            // a second so a lost commit is not left for a whole 10 s round.
            sweep_interval_ms: ms(self
                .health_interval
                .clamp(Duration::from_millis(200), Duration::from_secs(1))),
            max_txn_items: self.max_txn_items,
            max_inflight: self.max_inflight_txns,
            max_queued: self.max_queued_writes,
        }
    }

    /// The coordinators of a replicated decision log, if `--peers` names
    /// more than this one.
    pub fn replication(&self) -> Result<Option<Peers>, String> {
        if self.peers.len() <= 1 && self.advertise.is_none() {
            return Ok(None);
        }
        let Some(me) = &self.advertise else {
            return Err("--peers needs --advertise: this coordinator's own URL among them".into());
        };
        let urls: Vec<String> = self
            .peers
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .collect();
        for url in &urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("--peers: {url:?} is not an http(s) URL"));
            }
        }
        let mut sorted = urls.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != urls.len() {
            return Err("--peers names a coordinator twice".into());
        }
        if urls.len() == 1 {
            return Ok(None);
        }
        if urls.len().is_multiple_of(2) || urls.len() > 7 {
            return Err(format!(
                "--peers names {} coordinators: use 3, 5 or 7 (an even number tolerates no more \
                 failures than one fewer, and needs a larger majority)",
                urls.len()
            ));
        }
        let me = me.trim_end_matches('/');
        let Some(position) = urls.iter().position(|u| u == me) else {
            return Err(format!("--advertise {me} is not among --peers"));
        };
        Ok(Some(Peers {
            urls,
            me: position as u64 + 1,
        }))
    }

    /// What no single flag's parser can see: how flags relate.
    fn check(&self) -> Result<(), String> {
        self.replication()?;
        if self.remove_after < self.dead_after {
            return Err(format!(
                "--remove-after ({}) must be at least --dead-after ({}): a counter leaves \
                 the view only after it has been declared dead",
                self.remove_after, self.dead_after
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Args, String> {
        let args =
            Args::try_parse_from(std::iter::once("coordinator").chain(flags.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.check()?;
        Ok(args)
    }

    #[test]
    fn unusable_values_are_refused_with_the_flag_named() {
        for (flags, said) in [
            (&["--dead-after", "0"][..], "--dead-after"),
            (&["--min-insync", "0"][..], "--min-insync"),
            (&["--health-interval", "0s"][..], "--health-interval"),
            (&["--max-inflight-txns", "0"][..], "--max-inflight-txns"),
            (&["--log-format", "xml"][..], "--log-format"),
            (
                &["--dead-after", "3", "--remove-after", "2"][..],
                "--remove-after",
            ),
        ] {
            let err = parse(flags).expect_err(&format!("{flags:?} was accepted"));
            assert!(err.contains(said), "{flags:?}: {err}");
        }
        let ok = parse(&[
            "--dead-after",
            "2",
            "--remove-after",
            "2",
            "--log-format",
            "json",
        ])
        .expect("valid flags");
        assert_eq!(ok.process.log_format, tally_server::LogFormat::Json);
    }
}

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
