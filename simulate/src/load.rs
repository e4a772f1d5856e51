//! Bounded load against a coordinator: C clients each sending requests of B
//! distinct new items, for N requests or D seconds, whichever is given.
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
    /// Tenants written round-robin; 0 gives every request its own tenant,
    /// which lets the set checker see each request's fate in one count.
    pub tenants: usize,
    pub batch: usize,
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
    pub tenant: String,
    pub items: usize,
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
            *per.entry(op.tenant.clone()).or_default() += op.items as u64;
        }
        per
    }

    /// Items of requests with an indeterminate answer, per tenant.
    pub fn unknown_per_tenant(&self) -> BTreeMap<String, u64> {
        let mut per = BTreeMap::new();
        for op in &self.ops {
            if let WriteOutcome::Unknown(_) = op.outcome {
                *per.entry(op.tenant.clone()).or_default() += op.items as u64;
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

    /// Failed and indeterminate requests by kind, for the report.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for op in &self.ops {
            let kind = match &op.outcome {
                WriteOutcome::Ok => continue,
                WriteOutcome::Failed(status, _) => format!("failed {status}"),
                WriteOutcome::Unknown(e) if e.contains("connect") => "unknown: connect".into(),
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

/// Runs the load and returns every request's outcome.
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
                let tenant = if options.tenants == 0 {
                    format!("{}-c{client}-q{seq}", options.prefix)
                } else {
                    let n = (client as u64 + seq) % options.tenants as u64;
                    format!("{}-t{n}", options.prefix)
                };
                let items: Vec<Item> = (0..options.batch)
                    .map(|k| Item::new(format!("{}-{client}-{seq}-{k}", options.prefix), &tenant))
                    .collect();
                let sent = Instant::now();
                let outcome = api.add(&items).await;
                ops.push(Op {
                    tenant,
                    items: items.len(),
                    first_id: items[0].id.clone(),
                    outcome,
                    latency: sent.elapsed(),
                });
                bar.inc(1);
                seq += 1;
                // A coordinator that is down refuses at once: pause rather
                // than spin through thousands of refused requests.
                if let Some(Op {
                    outcome: WriteOutcome::Unknown(_),
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
        report.ops.extend(task.await.unwrap_or_default());
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
