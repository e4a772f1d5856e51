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
use crate::state::{now_ms, Shared};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_common::api::CounterState;

/// Latency buckets in seconds: fsyncs take about a millisecond, a prepare
/// that times out takes seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Size buckets for items or requests per transaction (group commit size).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0,
];

/// Installs the process-wide recorder. Call once, before any task records.
pub fn install() -> Result<PrometheusHandle, Error> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Prefix("tally_txn_".into()), SIZE_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("tally_decision_log_batch".into()),
                SIZE_BUCKETS,
            )
        })
        .map(|b| b.idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(120))))
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::Metrics(e.to_string()))?;
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

/// The Prometheus text: refreshes the cluster gauges, then renders.
pub fn render(handle: &PrometheusHandle, shared: &Shared) -> String {
    let view = shared.cluster.lock().expect("poisoned").view(now_ms());
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
        metrics::gauge!("tally_counters", "state" => state_name(state)).set(n as f64);
    }
    for c in &view.counters {
        let id = c.id.0.clone();
        for state in states {
            let on = if c.state == state { 1.0 } else { 0.0 };
            metrics::gauge!("tally_counter_state", "counter" => id.clone(), "state" => state_name(state))
                .set(on);
        }
        let in_sync = if c.in_sync { 1.0 } else { 0.0 };
        metrics::gauge!("tally_counter_in_sync", "counter" => id.clone()).set(in_sync);
        metrics::gauge!("tally_counter_applied_index", "counter" => id.clone())
            .set(c.applied_index.0 as f64);
        metrics::gauge!("tally_counter_lag", "counter" => id).set(c.lag as f64);
    }
    handle.render()
}

fn state_name(state: CounterState) -> &'static str {
    match state {
        CounterState::Joining => "joining",
        CounterState::Live => "live",
        CounterState::Suspect => "suspect",
        CounterState::Dead => "dead",
    }
}

/// Counts every answer by route (the pattern, so tenants do not explode the
/// label set), method and status, and times it.
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

/// Totals the dashboard charts; kept beside the Prometheus counters because
/// the browser should not have to parse the Prometheus text.
#[derive(Debug, Default)]
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
