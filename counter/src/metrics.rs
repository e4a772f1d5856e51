//! `GET /metrics` of a counter: its storage write (fsync) latency and batch
//! size, requests by route and status, and its progress (applied index,
//! prepared transactions, catch-up). Events are recorded where they happen
//! through the `metrics` facade; progress gauges are read from the replica
//! at scrape time so they always match `GET /health`.

use crate::replica::Replica;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::{Duration, Instant};

/// Latency buckets in seconds, from a fast fsync to a slow catch-up call.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Operations per storage transaction: how much the writer batches.
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the process-wide recorder. Call once, before any task records;
/// a failure stops start-up, so it goes straight to `main`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("tally_store_batch_ops".into()), SIZE_BUCKETS)
        })
        .and_then(|b| b.install_recorder())?;
    // Histograms keep raw samples until upkeep folds them into buckets.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The Prometheus text, with the progress gauges refreshed first.
pub fn render(handle: &PrometheusHandle, replica: &Replica) -> String {
    let status = replica.status();
    metrics::gauge!("tally_applied_index").set(status.applied_index.0 as f64);
    metrics::gauge!("tally_prepared_txns").set(status.prepared as f64);
    metrics::gauge!("tally_catching_up").set(if status.catching_up { 1.0 } else { 0.0 });
    handle.render()
}

/// Counts every answer by route pattern, method and status, and times it.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("tally_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("tally_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}
