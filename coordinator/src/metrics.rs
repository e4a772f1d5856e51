//! `GET /metrics` and `GET /stats`: what an operator (Prometheus) and the
//! dashboard see of the coordinator.
//!
//! Events (requests, transactions, log writes) are recorded where they
//! happen through the `metrics` facade; the exporter crate keeps them and
//! renders the Prometheus text. The cluster's shape (in-sync set, counter
//! states, lag) is not an event: it is read from the membership at scrape
//! time, so it can never drift from what `GET /cluster` says. Gauges of a
//! counter that left the view stop being refreshed and expire.

use crate::error::Error;
use crate::replication::Leadership;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tally_common::api::{ClusterView, CoordinatorRole, CounterState};

/// Size buckets for items or requests per transaction (group commit size).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0,
];

/// Installs the process-wide recorder. Call once, before any task records.
pub fn install() -> Result<PrometheusHandle, Error> {
    let handle = tally_server::install_recorder(&[
        ("tally_txn_", SIZE_BUCKETS),
        ("tally_decision_log_batch", SIZE_BUCKETS),
    ])
    .map_err(|e| Error::Metrics(e.to_string()))?;
    describe();
    Ok(handle)
}

/// HELP text of every coordinator metric (docs/operations.md says which to
/// watch). Per-replica gauges are named `tally_replica_*`: a name with
/// `_counter_` in it reads as the Prometheus type to promtool and to people.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "tally_presence_sockets",
        "Presence WebSockets open on this coordinator."
    );
    describe_counter!(
        "tally_presence_refused_total",
        "Presence WebSockets closed at once by a bound (reason: coordinator_full, key_full)."
    );
    describe_gauge!(
        "tally_decided_index",
        "Commit index of the last transaction the coordinator decided to commit."
    );
    describe_gauge!(
        "tally_in_sync_counters",
        "Counters in the in-sync set: each holds every committed transaction."
    );
    describe_gauge!(
        "tally_min_insync",
        "In-sync counters a transaction needs to commit (--min-insync); below it writes get 503."
    );
    describe_gauge!(
        "tally_replicas",
        "Counters in the cluster view, by state (joining, live, suspect, dead)."
    );
    describe_gauge!(
        "tally_replica_state",
        "1 for the state each counter is in, 0 for the others."
    );
    describe_gauge!(
        "tally_replica_in_sync",
        "1 while a counter is in the in-sync set, else 0."
    );
    describe_gauge!(
        "tally_replica_applied_index",
        "Commit index a counter has applied, as its last health check reported."
    );
    describe_gauge!(
        "tally_replica_lag_transactions",
        "Committed transactions a counter has yet to apply (decided index minus its applied index)."
    );
    describe_counter!(
        "tally_transactions_total",
        "Transactions finished, by outcome (committed or aborted)."
    );
    describe_histogram!(
        "tally_txn_items",
        "Items per transaction, by outcome: how much group commit folds together."
    );
    describe_histogram!(
        "tally_txn_requests",
        "POST /items requests per transaction, by outcome."
    );
    describe_counter!(
        "tally_prepare_failures_total",
        "Prepares that got no vote from a counter, by counter and kind (timeout, unreachable, ...)."
    );
    describe_histogram!(
        "tally_prepare_phase_seconds",
        "Time from sending a transaction's prepares to having every vote."
    );
    describe_histogram!(
        "tally_decide_phase_seconds",
        "Time from the end of a transaction's vote to its decision being durable."
    );
    describe_histogram!(
        "tally_decision_log_batch",
        "Decisions written to the decision log in one fsync."
    );
    describe_histogram!(
        "tally_decision_log_write_seconds",
        "Time to write and fsync one batch of the decision log."
    );
    describe_counter!(
        "tally_items_acknowledged_total",
        "Items in acknowledged POST /items requests (repeats included)."
    );
    describe_counter!(
        "tally_writes_acknowledged_total",
        "Acknowledged POST /items requests."
    );
    describe_gauge!(
        "tally_coordinator_role",
        "1 for this coordinator's role in its group (leader, follower, candidate), 0 for the others; a coordinator alone leads."
    );
    describe_gauge!(
        "tally_raft_term",
        "The Raft term this coordinator is in; 0 for a coordinator alone."
    );
    describe_gauge!(
        "tally_raft_replication_lag_entries",
        "Raft log entries each coordinator is behind the leader, as this coordinator knows it (the leader knows all)."
    );
    describe_counter!(
        "tally_raft_elections_total",
        "Terms this coordinator has seen begin: each is an election."
    );
    describe_counter!(
        "tally_raft_leaderships_total",
        "Times this coordinator started leading."
    );
    describe_histogram!(
        "tally_raft_log_write_seconds",
        "Time to write and fsync one batch of the Raft log."
    );
    describe_gauge!(
        "tally_count_streams",
        "Open count streams (GET /items/{tenant}/count/stream)."
    );
}

/// The Prometheus text: refreshes the group's and the cluster's gauges
/// (the cluster's only on the coordinator that has a view of it: the
/// leader, or the only one), then renders.
pub fn render(handle: &PrometheusHandle, view: Option<&ClusterView>, group: &Leadership) -> String {
    let roles = [
        CoordinatorRole::Leader,
        CoordinatorRole::Follower,
        CoordinatorRole::Candidate,
    ];
    for role in roles {
        let on = if group.role == role { 1.0 } else { 0.0 };
        metrics::gauge!("tally_coordinator_role", "role" => role.name()).set(on);
    }
    metrics::gauge!("tally_raft_term").set(group.term as f64);
    for c in &group.coordinators {
        metrics::gauge!("tally_raft_replication_lag_entries", "coordinator" => c.url.clone())
            .set(c.lag as f64);
    }
    if let Some(view) = view {
        cluster_gauges(view);
    }
    handle.render()
}

fn cluster_gauges(view: &ClusterView) {
    metrics::gauge!("tally_decided_index").set(view.decided_index.0 as f64);
    metrics::gauge!("tally_in_sync_counters").set(view.in_sync as f64);
    metrics::gauge!("tally_min_insync").set(view.min_insync as f64);
    let states = [
        CounterState::Joining,
        CounterState::Live,
        CounterState::Suspect,
        CounterState::Dead,
    ];
    for state in states {
        let n = view.counters.iter().filter(|c| c.state == state).count();
        metrics::gauge!("tally_replicas", "state" => state.name()).set(n as f64);
    }
    for c in &view.counters {
        let id = c.id.0.clone();
        for state in states {
            let on = if c.state == state { 1.0 } else { 0.0 };
            metrics::gauge!("tally_replica_state", "counter" => id.clone(), "state" => state.name())
                .set(on);
        }
        let in_sync = if c.in_sync { 1.0 } else { 0.0 };
        metrics::gauge!("tally_replica_in_sync", "counter" => id.clone()).set(in_sync);
        metrics::gauge!("tally_replica_applied_index", "counter" => id.clone())
            .set(c.applied_index.0 as f64);
        metrics::gauge!("tally_replica_lag_transactions", "counter" => id).set(c.lag as f64);
    }
}

/// Totals the dashboard charts; kept beside the Prometheus counters because
/// the browser should not have to parse the Prometheus text.
#[derive(Debug)]
pub struct Stats {
    items_acknowledged: AtomicU64,
    writes_acknowledged: AtomicU64,
}

/// `GET /stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsView {
    /// Items in acknowledged `POST /items` requests (repeats included).
    pub items_acknowledged: u64,
    /// Acknowledged `POST /items` requests.
    pub writes_acknowledged: u64,
    /// Milliseconds since the epoch, so the browser can compute rates.
    pub now_ms: u64,
}

impl Stats {
    pub const fn new() -> Self {
        Stats {
            items_acknowledged: AtomicU64::new(0),
            writes_acknowledged: AtomicU64::new(0),
        }
    }

    /// Records a committed transaction of `requests` requests and `items` items.
    pub fn committed(&self, requests: usize, items: usize) {
        self.items_acknowledged
            .fetch_add(items as u64, Ordering::Relaxed);
        self.writes_acknowledged
            .fetch_add(requests as u64, Ordering::Relaxed);
        metrics::counter!("tally_items_acknowledged_total").increment(items as u64);
        metrics::counter!("tally_writes_acknowledged_total").increment(requests as u64);
    }

    pub fn view(&self) -> StatsView {
        StatsView {
            items_acknowledged: self.items_acknowledged.load(Ordering::Relaxed),
            writes_acknowledged: self.writes_acknowledged.load(Ordering::Relaxed),
            now_ms: now_ms(),
        }
    }
}

/// Wall-clock milliseconds, for the dashboard's rates only.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
