//! State shared by the coordinator's tasks. Each piece has one job and is
//! held for a few lines at a time with no `.await` inside, which is why
//! plain `std::sync::Mutex`es are enough.

use crate::client::CounterClient;
use crate::decider::{Decider, Pending};
use crate::log::DecisionLog;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally_common::api::CounterState;
use tally_common::membership::{Cluster, Effect};
use tally_common::{CommitIndex, CounterId, TxnId};
use tokio::sync::watch;

/// Timeouts and limits the tasks read; copied from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prepare_timeout: Duration,
    pub commit_timeout: Duration,
    pub read_timeout: Duration,
    pub health_interval: Duration,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub item_limits: tally_common::items::ItemLimits,
}

pub struct Shared {
    pub settings: Settings,
    pub cluster: Mutex<Cluster>,
    pub log: DecisionLog,
    /// Highest commit index whose decision is durable: the read fence.
    pub decided: watch::Sender<CommitIndex>,
    /// Transactions between their first prepare and their logged decision;
    /// a counter asking about one of these is told to wait, not to abort.
    pub in_flight: Mutex<HashSet<TxnId>>,
    /// Counters that missed their last prepare deadline. Transactions do not
    /// wait for them unless they are in sync, so a stalled counter slows
    /// writes for one timeout, not for every transaction.
    pub lagging: Mutex<HashSet<CounterId>>,
    /// Commits decided but not yet carried by a prepare (see txn.rs).
    pub undelivered: Mutex<Vec<tally_common::api::CommitRequest>>,
    /// Logged commits that some counter has not acknowledged yet.
    pub pending: Mutex<BTreeMap<CommitIndex, Pending>>,
    pub counters: CounterClient,
    pub decider: Decider,
    pub reads: crate::reads::ReadsInFlight,
    /// Totals for the dashboard's writes/s chart.
    pub stats: crate::metrics::Stats,
    epoch: u64,
    next_seq: AtomicU64,
    read_cursor: AtomicUsize,
}

impl Shared {
    pub fn new(
        settings: Settings,
        cluster: Cluster,
        log: DecisionLog,
        epoch: u64,
        counters: CounterClient,
        decider: Decider,
    ) -> Self {
        let (decided, _) = watch::channel(cluster.decided());
        Shared {
            settings,
            cluster: Mutex::new(cluster),
            log,
            decided,
            in_flight: Mutex::new(HashSet::new()),
            lagging: Mutex::new(HashSet::new()),
            pending: Mutex::new(BTreeMap::new()),
            undelivered: Mutex::new(Vec::new()),
            counters,
            decider,
            reads: Default::default(),
            stats: Default::default(),
            epoch,
            next_seq: AtomicU64::new(1),
            read_cursor: AtomicUsize::new(0),
        }
    }

    /// A fresh transaction id, registered as in flight before any prepare.
    pub fn begin_txn(&self) -> TxnId {
        let txn = TxnId::new(self.epoch, self.next_seq.fetch_add(1, Ordering::Relaxed));
        self.in_flight.lock().expect("poisoned").insert(txn);
        txn
    }

    /// Which counter a read starts with, so reads spread across replicas.
    pub fn next_read_start(&self) -> usize {
        self.read_cursor.fetch_add(1, Ordering::Relaxed)
    }

    /// Where a counter is reached, if it is still in the cluster.
    pub fn member_url(&self, id: &CounterId) -> Option<String> {
        let cluster = self.cluster.lock().expect("poisoned");
        cluster.member(id).map(|m| m.url.clone())
    }

    pub fn fence(&self) -> CommitIndex {
        *self.decided.borrow()
    }

    /// This coordinator's run: counters vote and answer reads only for the
    /// epoch they registered with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Carries out what the membership state machine asked for: persist
    /// first, so nobody acts on a change a crash could undo.
    pub async fn carry_out(&self, effects: Vec<Effect>) {
        if effects.contains(&Effect::Persist) {
            self.decider.persist().await;
        }
        for effect in effects {
            match effect {
                Effect::Persist => {}
                Effect::LostData { id, reason } => {
                    tracing::warn!(
                        counter = %id, %reason,
                        "counter came back without its data: it left the in-sync set and copies everything"
                    );
                }
                Effect::Transition {
                    id,
                    from,
                    to,
                    in_sync,
                } => {
                    let show = |s: Option<CounterState>| {
                        s.map_or("gone".to_string(), |s| format!("{s:?}").to_lowercase())
                    };
                    tracing::info!(
                        counter = %id, from = %show(from), to = %show(to), in_sync,
                        "counter state changed"
                    );
                }
                Effect::CatchUp { url, request } => {
                    let client = self.counters.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client
                            .catch_up(&url, &request, Duration::from_secs(2))
                            .await
                        {
                            tracing::warn!(%url, error = %e, "cannot start catch-up");
                        }
                    });
                }
            }
        }
    }
}

/// Wall-clock milliseconds, for "last seen" in the cluster view only.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
