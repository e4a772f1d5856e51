//! The Prometheus side both binaries share: the recorder with its buckets
//! and upkeep, and the per-request counters and timings. Each binary adds
//! its own metrics where its events happen.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
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
    RECORDER_INSTALLED.store(true, Ordering::Release);
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
///
/// The handles are looked up once per route, method and status and kept
/// (`RequestMetrics`): through the `metrics!` macros every request built
/// its label strings, allocated a key and hashed it into the recorder's
/// registry, several percent of the coordinator's instructions per
/// request (docs/benchmarks.md).
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let start = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (duration, count) = REQUEST_METRICS.handles(route, &method, response.status());
    duration.record(start.elapsed().as_secs_f64());
    count.increment(1);
    response
}

/// Set once the recorder is installed: handles taken before that would be
/// no-ops forever, so nothing is cached until then.
static RECORDER_INSTALLED: AtomicBool = AtomicBool::new(false);

static REQUEST_METRICS: RequestMetrics = RequestMetrics {
    routes: Mutex::new(None),
};

/// The request histogram and counters, by route pattern, then method, then
/// status. Routes and methods are a handful each, so the inner lists are
/// searched in order.
struct RequestMetrics {
    routes: Mutex<Option<HashMap<String, Vec<MethodMetrics>>>>,
}

struct MethodMetrics {
    method: Method,
    duration: Histogram,
    by_status: Vec<(StatusCode, Counter)>,
}

impl RequestMetrics {
    /// The duration histogram and the answer counter of one route,
    /// method and status, registered on first use.
    fn handles(&self, route: &str, method: &Method, status: StatusCode) -> (Histogram, Counter) {
        if !RECORDER_INSTALLED.load(Ordering::Acquire) {
            return (
                duration_histogram(route, method),
                answer_counter(route, method, status),
            );
        }
        let mut routes = crate::locks::lock(&self.routes, "the request metrics");
        let routes = routes.get_or_insert_with(HashMap::new);
        if !routes.contains_key(route) {
            routes.insert(route.to_string(), Vec::new());
        }
        let methods = routes.get_mut(route).expect("inserted above");
        let index = match methods.iter().position(|m| m.method == method) {
            Some(index) => index,
            None => {
                methods.push(MethodMetrics {
                    method: method.clone(),
                    duration: duration_histogram(route, method),
                    by_status: Vec::new(),
                });
                methods.len() - 1
            }
        };
        let entry = &mut methods[index];
        let counter = match entry.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.clone(),
            None => {
                let counter = answer_counter(route, method, status);
                entry.by_status.push((status, counter.clone()));
                counter
            }
        };
        (entry.duration.clone(), counter)
    }
}

fn duration_histogram(route: &str, method: &Method) -> Histogram {
    metrics::histogram!("tally_http_request_duration_seconds",
        "route" => route.to_string(), "method" => method.to_string())
}

fn answer_counter(route: &str, method: &Method, status: StatusCode) -> Counter {
    metrics::counter!("tally_http_requests_total",
        "route" => route.to_string(), "method" => method.to_string(),
        "status" => status.as_u16().to_string())
}
