//! The Prometheus side both binaries share: the recorder with its buckets
//! and upkeep, and the per-request counters and timings. Each binary adds
//! its own metrics where its events happen.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::time::{Duration, Instant};

/// Latency buckets in seconds: fsyncs take about a millisecond, a call that
/// times out takes seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the process-wide recorder: latency buckets for every
/// `*_seconds` histogram, `sizes` for the named ones. Gauges that stop being
/// set (a counter that left the view) expire after two minutes. Call once,
/// inside the runtime, before any task records.
pub fn install_recorder(sizes: &[(&str, &[f64])]) -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(120)));
    for (prefix, buckets) in sizes {
        builder = builder.set_buckets_for_metric(Matcher::Prefix(prefix.to_string()), buckets)?;
    }
    let handle = builder.install_recorder()?;
    describe_serving();
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

/// HELP text of the metrics this crate records. Prometheus shows it, and
/// `promtool check metrics` refuses a metric without it.
fn describe_serving() {
    metrics::describe_histogram!(
        "tally_http_request_duration_seconds",
        "Time to answer an HTTP request, by route pattern and method."
    );
    metrics::describe_counter!(
        "tally_http_requests_total",
        "HTTP requests answered, by route pattern, method and status."
    );
    metrics::describe_counter!(
        "tally_http_connections_refused_total",
        "Connections closed at once because --max-connections were open."
    );
    metrics::describe_gauge!("tally_http_connections", "Open client connections.");
    metrics::describe_counter!(
        "tally_http_requests_shed_total",
        "Requests answered 503 at once because --max-inflight-requests were in hand."
    );
    metrics::describe_counter!(
        "tally_unauthorized_total",
        "Internal calls refused for a wrong or missing cluster token."
    );
}

/// Middleware: counts every answer by route (the pattern, so tenants do not
/// explode the label set), method and status, and times it.
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
