//! `GET /metrics` of a counter: its storage write (fsync) latency and batch
//! size, requests by route and status, its progress (applied index,
//! prepared transactions, catch-up), the item filter's memory and the
//! stored items not yet indexed. Events
//! are recorded where they happen through the `metrics` facade; gauges are
//! read from the replica at scrape time so they always match
//! `GET /health`.

use crate::replica::Replica;
use metrics_exporter_prometheus::{BuildError, PrometheusHandle};
use std::sync::{Mutex, OnceLock};

/// Operations per storage transaction: how much the writer batches.
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process-wide recorder, installed by the first call: a process that
/// runs the counter more than once (a test) shares one. A failure stops
/// start-up.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _once = crate::error::lock(&INSTALLING, "the metrics recorder");
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = tally_server::install_recorder(&[("tally_store_batch_ops", SIZE_BUCKETS)])?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// HELP text of every counter metric (docs/operations.md says which to
/// watch).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "tally_applied_index",
        "Commit index of the last transaction this counter applied."
    );
    describe_gauge!(
        "tally_prepared_txns",
        "Transactions prepared here and waiting for their outcome."
    );
    describe_gauge!(
        "tally_catching_up",
        "1 while this counter copies committed transactions from a peer, else 0."
    );
    describe_gauge!(
        "tally_catchup_target_index",
        "Commit index the current or last catch-up copies up to."
    );
    describe_counter!(
        "tally_catchup_items_copied_total",
        "Items copied from peers while catching up."
    );
    describe_gauge!(
        "tally_item_filter_bytes",
        "Memory held by the item filter that spares new items a storage lookup."
    );
    describe_gauge!(
        "tally_unindexed_items",
        "Stored items not yet written to the item index (durable in the commit log)."
    );
    describe_histogram!(
        "tally_store_write_seconds",
        "Time to write and fsync one storage batch."
    );
    describe_histogram!(
        "tally_store_batch_ops",
        "Operations (prepares, commits, aborts) in one storage batch."
    );
}

/// The Prometheus text, with the progress gauges refreshed first.
pub fn render(handle: &PrometheusHandle, replica: &Replica) -> String {
    let status = replica.status();
    metrics::gauge!("tally_applied_index").set(status.applied_index.0 as f64);
    metrics::gauge!("tally_prepared_txns").set(status.prepared as f64);
    metrics::gauge!("tally_catching_up").set(if status.catching_up { 1.0 } else { 0.0 });
    metrics::gauge!("tally_item_filter_bytes").set(replica.store().item_filter_bytes() as f64);
    metrics::gauge!("tally_unindexed_items").set(replica.store().unindexed_items() as f64);
    handle.render()
}
