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
use tally_server::flags::{at_least_one, at_least_one_u32, base_url, positive_duration};

/// How long a transaction waits for joiners once every in-sync vote is in
/// (`CoreConfig::joiner_grace_ms` says why it is short).
const JOINER_GRACE_MS: u64 = 5;

/// How long a decided commit waits for the next prepare to carry it.
const COMMIT_LINGER_MS: u64 = 1;

/// Most coordinators in one group: every decision waits for a majority of
/// them, so more only slows each write, and seven already survive three
/// failures.
pub const MAX_COORDINATORS: usize = 7;

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
    /// The coordinators of the group and which one this is (one, alone,
    /// without `--peers`).
    pub peers: ClusterPeers,
}

/// The coordinators that replicate the decision log, from `--peers`, and
/// which of them this one is. A coordinator started without `--peers` is
/// a group of one whose only member is itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPeers {
    /// Every coordinator's advertise URL, in the order `--peers` gives
    /// them, without trailing slashes. The order is the same on every
    /// coordinator when they share one `--peers` value.
    pub peers: Vec<String>,
    /// This coordinator's place in `peers`.
    pub me: usize,
}

impl ClusterPeers {
    /// A coordinator on its own, reached at `url`.
    pub fn single(url: String) -> Self {
        ClusterPeers {
            peers: vec![url],
            me: 0,
        }
    }

    /// Whether this coordinator runs alone, as before replication: it
    /// decides by itself and needs no election.
    pub fn is_single(&self) -> bool {
        self.peers.len() == 1
    }

    /// This coordinator's id in Raft: its place in `peers`, counted from 1
    /// (raft-rs reserves 0 for "nobody").
    pub fn raft_id(&self) -> u64 {
        self.me as u64 + 1
    }

    /// The URL of the coordinator with this Raft id.
    pub fn url_of(&self, raft_id: u64) -> Option<&str> {
        let at = (raft_id as usize).checked_sub(1)?;
        self.peers.get(at).map(String::as_str)
    }

    /// This coordinator's own advertise URL.
    pub fn my_url(&self) -> &str {
        &self.peers[self.me]
    }

    /// The other coordinators, each with its place in `peers`.
    pub fn others(&self) -> impl Iterator<Item = (usize, &str)> {
        self.peers
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != self.me)
            .map(|(i, url)| (i, url.as_str()))
    }
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
    /// Recovery of a lost decision log (docs/operations.md): start an
    /// empty log as if every commit up to this index had been decided, so
    /// the counters that hold them can register; then promote the most
    /// complete one by hand. Refused when the log is not empty, and with
    /// --peers (a group rebuilds a lost log from its other members).
    #[arg(long, env = "TALLY_RECOVER_DECIDED_INDEX")]
    pub recover_decided_index: Option<u64>,
    /// URL the other coordinators and the counters reach this coordinator
    /// at; required with `--peers` [default: http://<--listen>].
    #[arg(long, env = "TALLY_ADVERTISE", value_parser = base_url)]
    pub advertise: Option<String>,
    /// Every coordinator's `--advertise` URL, this one's included, separated
    /// by commas: 1, 3, 5 or 7 of them, in the same order on each. Without
    /// it, this coordinator runs alone.
    #[arg(long, env = "TALLY_PEERS", value_delimiter = ',', value_parser = base_url)]
    pub peers: Vec<String>,
    #[command(flatten)]
    pub presence: PresenceArgs,
    #[command(flatten)]
    pub serve: tally_server::ServeLimits,
    #[command(flatten)]
    pub process: tally_server::ProcessArgs,
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
            peers: self.cluster_peers(),
        }
    }

    /// The group of coordinators from `--peers` and `--advertise`, as
    /// [`Args::check`] accepted them; without `--peers`, this one alone at
    /// its advertise URL, or at its listen address when it has none.
    pub fn cluster_peers(&self) -> ClusterPeers {
        let me = self
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen));
        match self.peers.iter().position(|p| *p == me) {
            Some(at) if !self.peers.is_empty() => ClusterPeers {
                peers: self.peers.clone(),
                me: at,
            },
            _ => ClusterPeers::single(me),
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

    /// What no single flag's parser can see: how flags relate.
    fn check(&self) -> Result<(), String> {
        if self.remove_after < self.dead_after {
            return Err(format!(
                "--remove-after ({}) must be at least --dead-after ({}): a counter leaves \
                 the view only after it has been declared dead",
                self.remove_after, self.dead_after
            ));
        }
        if self.recover_decided_index.is_some() && self.peers.len() > 1 {
            return Err(
                "--recover-decided-index is for a coordinator alone: in a group, a \
                 coordinator that lost its log copies it from the others"
                    .into(),
            );
        }
        self.check_peers()
    }

    /// `--peers` and `--advertise` together name a group this coordinator
    /// belongs to, of a size that has a majority to lose.
    fn check_peers(&self) -> Result<(), String> {
        let peers = &self.peers;
        if peers.is_empty() {
            return Ok(());
        }
        let Some(me) = &self.advertise else {
            return Err(
                "--peers needs --advertise: this coordinator's own URL, as it appears in --peers"
                    .into(),
            );
        };
        for (i, peer) in peers.iter().enumerate() {
            if peers[..i].contains(peer) {
                return Err(format!(
                    "--peers names {peer} twice: list each coordinator once"
                ));
            }
        }
        if !peers.contains(me) {
            return Err(format!(
                "--advertise {me} is not among --peers ({}): list every coordinator, this one \
                 included, with the URL it advertises",
                peers.join(",")
            ));
        }
        let n = peers.len();
        if n > MAX_COORDINATORS || (n > 1 && n.is_multiple_of(2)) {
            return Err(format!(
                "--peers lists {n} coordinators: give 1, 3, 5 or 7. A decision needs a \
                 majority, so an even number survives no more failures than one fewer, and \
                 more than {MAX_COORDINATORS} only slows every write"
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

    const A: &str = "http://c1:8080";
    const B: &str = "http://c2:8080";
    const C: &str = "http://c3:8080";

    #[test]
    fn peers_that_make_no_group_are_refused_each_with_its_reason() {
        let five = format!("{A},{B},{C},http://c4:8080,http://c5:8080");
        let eight = (1..=8)
            .map(|i| format!("http://c{i}:8080"))
            .collect::<Vec<_>>()
            .join(",");
        let abc = format!("{A},{B},{C}");
        for (flags, said) in [
            (vec!["--peers", &abc], "--peers needs --advertise"),
            (
                vec!["--advertise", "http://c9:8080", "--peers", &abc],
                "--advertise http://c9:8080 is not among --peers",
            ),
            (
                vec!["--advertise", A, "--peers", &format!("{A},{B},{A}")],
                "--peers names http://c1:8080 twice",
            ),
            (
                vec!["--advertise", A, "--peers", &format!("{A},{B},{B}/")],
                "--peers names http://c2:8080 twice",
            ),
            (
                vec!["--advertise", A, "--peers", &format!("{A},{B}")],
                "--peers lists 2 coordinators: give 1, 3, 5 or 7",
            ),
            (
                vec!["--advertise", A, "--peers", &eight],
                "--peers lists 8 coordinators",
            ),
            (
                vec!["--advertise", A, "--peers", &format!("{A},{B},c3:8080")],
                "is not an http:// or https:// URL",
            ),
            (
                vec!["--advertise", A, "--peers", &format!("{A},,{B}")],
                "an empty URL",
            ),
            (vec!["--advertise", "ftp://c1", "--peers", A], "--advertise"),
            (
                vec!["--advertise", A, "--peers", &format!("{A},{B},{C}/x")],
                "has a path",
            ),
        ] {
            let err = parse(&flags).expect_err(&format!("{flags:?} was accepted"));
            assert!(err.contains(said), "{flags:?}: {err}");
        }
        let nine = (1..=9)
            .map(|i| format!("http://c{i}:8080"))
            .collect::<Vec<_>>()
            .join(",");
        let err = parse(&["--advertise", A, "--peers", &nine]).unwrap_err();
        assert!(err.contains("lists 9 coordinators"), "{err}");
        assert!(parse(&["--advertise", A, "--peers", &five]).is_ok());
    }

    #[test]
    fn peers_name_the_group_and_this_coordinators_place_in_it() {
        let args = parse(&["--advertise", B, "--peers", &format!("{A}/,{B},{C}")]).unwrap();
        let peers = args.settings().peers;
        assert_eq!(peers.peers, [A, B, C]);
        assert_eq!((peers.me, peers.my_url()), (1, B));
        assert!(!peers.is_single());
        assert_eq!(peers.others().collect::<Vec<_>>(), [(0, A), (2, C)]);

        // One peer, itself: a group of one, as without --peers.
        let one = parse(&["--advertise", A, "--peers", A]).unwrap();
        assert_eq!(one.cluster_peers(), ClusterPeers::single(A.into()));
    }

    #[test]
    fn without_peers_a_coordinator_is_alone_at_its_advertise_or_listen_url() {
        let alone = parse(&["--listen", "127.0.0.1:9000"]).unwrap();
        let peers = alone.cluster_peers();
        assert_eq!(peers, ClusterPeers::single("http://127.0.0.1:9000".into()));
        assert!(peers.is_single());
        assert_eq!(peers.others().count(), 0);
        let advertised = parse(&["--advertise", "http://tally:8080/"]).unwrap();
        assert_eq!(advertised.cluster_peers().my_url(), "http://tally:8080");
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
