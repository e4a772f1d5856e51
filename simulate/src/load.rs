//! Bounded load against a coordinator: C clients each sending requests of B
//! distinct new items to each of S tenants, for N requests or D seconds,
//! whichever comes first.
//! Every request and its outcome is kept, so the run can be verified
//! against the cluster's counts afterwards and fed to the set checker.

use crate::api::{Api, WriteOutcome};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_common::Item;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub clients: usize,
    /// Requests per client; with `duration` unset this bounds the run.
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    /// Tenants written round-robin; 0 gives every request its own tenants,
    /// which lets the set checker see each request's fate in its counts.
    pub tenants: usize,
    /// New items per tenant per request: with shared tenants, every count
    /// that holds only whole requests is a multiple of it.
    pub batch: usize,
    /// Tenants each request spans (at least 1), `batch` items to each: a
    /// request of several tenants is one transaction too.
    pub spread: usize,
    /// Prefix of every id and tenant, unique per run.
    pub prefix: String,
    pub progress: bool,
}

impl LoadOptions {
    pub fn new(clients: usize, requests: u64, batch: usize) -> Self {
        LoadOptions {
            clients,
            requests: Some(requests),
            duration: None,
            tenants: 4,
            batch,
            spread: 1,
            prefix: run_prefix(),
            progress: false,
        }
    }
}

/// A prefix that differs between runs, so runs never share ids.
pub fn run_prefix() -> String {
    format!("r{:x}", rand::random::<u32>())
}

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Op {
    /// The first tenant of the request (of `shares`).
    pub tenant: String,
    /// Items in the whole request.
    pub items: usize,
    /// Each tenant the request wrote and how many new items it gave it.
    pub shares: Vec<(String, u64)>,
    pub first_id: String,
    pub outcome: WriteOutcome,
    pub latency: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub ops: Vec<Op>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn ok(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(|o| o.outcome == WriteOutcome::Ok)
    }

    pub fn requests_ok(&self) -> usize {
        self.ok().count()
    }

    pub fn items_ok(&self) -> usize {
        self.ok().map(|o| o.items).sum()
    }

    /// Acknowledged items per tenant (every id in a run is distinct).
    pub fn acknowledged_per_tenant(&self) -> BTreeMap<String, u64> {
        let mut per = BTreeMap::new();
        for op in self.ok() {
            for (tenant, n) in &op.shares {
                *per.entry(tenant.clone()).or_default() += n;
            }
        }
        per
    }

    /// Items of requests with an indeterminate answer, per tenant.
    pub fn unknown_per_tenant(&self) -> BTreeMap<String, u64> {
        let mut per = BTreeMap::new();
        for op in &self.ops {
            if let WriteOutcome::Unknown(_) = op.outcome {
                for (tenant, n) in &op.shares {
                    *per.entry(tenant.clone()).or_default() += n;
                }
            }
        }
        per
    }

    /// Latency percentile of successful requests.
    pub fn latency(&self, percentile: f64) -> Duration {
        let mut l: Vec<Duration> = self.ok().map(|o| o.latency).collect();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l.sort();
        let rank = ((percentile / 100.0) * (l.len() - 1) as f64).round() as usize;
        l[rank.min(l.len() - 1)]
    }

    /// Requests refused with 503 (an abort, a full queue): definite failures.
    pub fn refused_503(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o.outcome, WriteOutcome::Failed(503, _)))
            .count()
    }

    /// Requests whose outcome the client could not know.
    pub fn unknown(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o.outcome, WriteOutcome::Unknown(_)))
            .count()
    }

    /// Failed and indeterminate requests by kind, for the report.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for op in &self.ops {
            let kind = match &op.outcome {
                WriteOutcome::Ok => continue,
                WriteOutcome::Failed(status, _) => format!("failed {status}"),
                WriteOutcome::NotSent(_) => "failed: not connected".into(),
                WriteOutcome::Unknown(e) if e.contains("timed out") => "unknown: timeout".into(),
                WriteOutcome::Unknown(_) => "unknown: other".into(),
            };
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests_ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn items_per_sec(&self) -> f64 {
        self.items_ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the load and returns every request's outcome. A client task that
/// panics panics the caller: its requests must not silently drop out of
/// every check.
pub async fn run(api: &Api, options: &LoadOptions) -> LoadReport {
    let bar = progress_bar(options);
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for client in 0..options.clients {
        let (api, options, bar) = (api.clone(), Arc::new(options.clone()), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut ops = Vec::new();
            let mut seq = 0u64;
            loop {
                if options.requests.is_some_and(|n| seq >= n)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let spread = options.spread.max(1);
                let tenants: Vec<String> = (0..spread)
                    .map(|j| {
                        if options.tenants == 0 {
                            format!("{}-c{client}-q{seq}-s{j}", options.prefix)
                        } else {
                            let n = (client as u64 + seq + j as u64) % options.tenants as u64;
                            format!("{}-t{n}", options.prefix)
                        }
                    })
                    .collect();
                // Spread wider than the tenants would write one tenant twice.
                let mut shares: Vec<(String, u64)> = Vec::new();
                let mut items: Vec<Item> = Vec::new();
                for (j, tenant) in tenants.iter().enumerate() {
                    if shares.iter().any(|(t, _)| t == tenant) {
                        continue;
                    }
                    shares.push((tenant.clone(), options.batch as u64));
                    items.extend((0..options.batch).map(|k| {
                        Item::new(format!("{}-{client}-{seq}-{j}-{k}", options.prefix), tenant)
                    }));
                }
                let sent = Instant::now();
                let outcome = api.add(&items).await;
                ops.push(Op {
                    tenant: tenants[0].clone(),
                    items: items.len(),
                    shares,
                    first_id: items[0].id.clone(),
                    outcome,
                    latency: sent.elapsed(),
                });
                bar.inc(1);
                seq += 1;
                // A coordinator that is down refuses at once: pause rather
                // than spin through thousands of refused requests.
                if let Some(Op {
                    outcome: WriteOutcome::Unknown(_) | WriteOutcome::NotSent(_),
                    ..
                }) = ops.last()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ops
        }));
    }
    let mut report = LoadReport::default();
    for task in tasks {
        match task.await {
            Ok(ops) => report.ops.extend(ops),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a load client was cancelled: {e}"),
        }
    }
    report.elapsed = started.elapsed();
    bar.finish_and_clear();
    report
}

fn progress_bar(options: &LoadOptions) -> ProgressBar {
    if !options.progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match (options.duration, options.requests) {
        (Some(d), _) => {
            let bar = ProgressBar::new_spinner();
            bar.set_message(format!("sending for {}", humantime::format_duration(d)));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }
        (None, Some(n)) => {
            let bar = ProgressBar::new(n * options.clients as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} requests  {per_sec}  eta {eta}")
                    .expect("static template"),
            );
            bar
        }
        (None, None) => ProgressBar::hidden(),
    }
}

/// The result of comparing a run with the cluster's counts.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub tenants: usize,
    pub mismatches: Vec<String>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Checks that every tenant's count (through `api`, and at each counter URL
/// given) equals its acknowledged items, allowing indeterminate requests to
/// have landed or not. Assumes no other writer used this run's tenants.
/// Counters are read once they have applied everything decided so far.
pub async fn verify(api: &Api, counters: &[String], report: &LoadReport) -> Verification {
    let acknowledged = report.acknowledged_per_tenant();
    let unknown = report.unknown_per_tenant();
    let mut tenants: Vec<&String> = acknowledged.keys().chain(unknown.keys()).collect();
    tenants.sort();
    tenants.dedup();
    let mut verification = Verification {
        tenants: tenants.len(),
        ..Verification::default()
    };
    if let Err(e) = api.wait_applied(counters, Duration::from_secs(30)).await {
        verification.mismatches.push(e);
        return verification;
    }
    for tenant in tenants {
        let low = acknowledged.get(tenant).copied().unwrap_or(0);
        let high = low + unknown.get(tenant).copied().unwrap_or(0);
        let mut sources = vec![("coordinator".to_string(), api.count(tenant).await)];
        for url in counters {
            sources.push((url.clone(), api.counter_count(url, tenant).await));
        }
        for (source, count) in sources {
            match count {
                Ok(n) if (low..=high).contains(&n) => {}
                Ok(n) => verification.mismatches.push(format!(
                    "{tenant} at {source}: count {n}, expected {}",
                    if low == high {
                        low.to_string()
                    } else {
                        format!("{low}..={high}")
                    }
                )),
                Err(e) => verification
                    .mismatches
                    .push(format!("{tenant} at {source}: {e}")),
            }
        }
    }
    verification
}
