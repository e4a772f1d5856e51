//! `simulate bench`: the figures of docs/benchmarks.md, measured on a fresh
//! local cluster (coordinator and 3 counters on loopback). Prints a table
//! and writes JSON plus a Markdown table next to it.

use anyhow::{bail, Context};
use simulate::api::Api;
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::load::{self, LoadOptions, LoadReport};
use simulate::table::Table;
use std::path::Path;
use std::time::{Duration, Instant};
use tally_common::Item;

struct Row {
    workload: String,
    clients: usize,
    requests_per_sec: f64,
    items_per_sec: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

impl Row {
    fn from_load(workload: &str, clients: usize, report: &LoadReport) -> Self {
        Row {
            workload: workload.into(),
            clients,
            requests_per_sec: report.requests_per_sec(),
            items_per_sec: report.items_per_sec(),
            p50: report.latency(50.0),
            p99: report.latency(99.0),
            errors: report.ops.len() - report.requests_ok(),
        }
    }
}

pub async fn run(duration: Duration, out: &Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tally-bench-{:x}", rand::random::<u32>()));
    let mut options = ClusterOptions::new(&dir, 3);
    options.health_interval = Duration::from_secs(1);
    let cluster = LocalCluster::start(options).await?;
    let api = cluster.api().clone();
    let mut rows = Vec::new();
    let mut verified = Vec::new();

    // Warm the connection pools and the page cache.
    load::run(&api, &LoadOptions::new(16, 50, 1)).await;

    for clients in [1, 16, 64] {
        eprintln!("single-item POSTs, {clients} clients, {duration:?}");
        let report = timed(&api, clients, 1, duration).await;
        rows.push(Row::from_load("POST 1 item", clients, &report));
        verified.push(report);
    }
    eprintln!("1,000-item POSTs, 8 clients, {duration:?}");
    let report = timed(&api, 8, 1000, duration).await;
    rows.push(Row::from_load("POST 1,000 items", 8, &report));
    verified.push(report);

    eprintln!("count reads at 100,000 items, 16 clients, {duration:?}");
    rows.push(reads(&api, 16, duration).await?);

    let mut mismatches = 0;
    let urls: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    for report in &verified {
        mismatches += load::verify(&api, &urls, report).await.mismatches.len();
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);

    let mut table = Table::new([
        "workload", "clients", "req/s", "items/s", "p50", "p99", "errors",
    ]);
    for r in &rows {
        table.row([
            r.workload.clone(),
            r.clients.to_string(),
            format!("{:.0}", r.requests_per_sec),
            format!("{:.0}", r.items_per_sec),
            format!("{:.2}ms", r.p50.as_secs_f64() * 1e3),
            format!("{:.2}ms", r.p99.as_secs_f64() * 1e3),
            r.errors.to_string(),
        ]);
    }
    print!("{}", table.render());
    println!(
        "counts verified after the run: {}",
        if mismatches == 0 { "exact" } else { "MISMATCH" }
    );

    let json = serde_json::json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "seconds_per_row": duration.as_secs_f64(),
        "counts_exact": mismatches == 0,
        "rows": rows.iter().map(|r| serde_json::json!({
            "workload": r.workload,
            "clients": r.clients,
            "requests_per_sec": r.requests_per_sec,
            "items_per_sec": r.items_per_sec,
            "p50_ms": r.p50.as_secs_f64() * 1e3,
            "p99_ms": r.p99.as_secs_f64() * 1e3,
            "errors": r.errors,
        })).collect::<Vec<_>>(),
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(out.with_extension("md"), table.markdown())?;
    println!(
        "results written to {} and {}",
        out.display(),
        out.with_extension("md").display()
    );
    if mismatches > 0 {
        bail!("{mismatches} count mismatches after the benchmark");
    }
    Ok(())
}

async fn timed(api: &Api, clients: usize, batch: usize, duration: Duration) -> LoadReport {
    let mut options = LoadOptions::new(clients, 0, batch);
    options.requests = None;
    options.duration = Some(duration);
    options.tenants = 16;
    load::run(api, &options).await
}

/// Fills one tenant with 100,000 items, then reads its count from
/// `clients` concurrent clients for `duration`.
async fn reads(api: &Api, clients: usize, duration: Duration) -> anyhow::Result<Row> {
    let tenant = format!("bench-reads-{:x}", rand::random::<u32>());
    for chunk in 0..100 {
        let items: Vec<Item> = (0..1000)
            .map(|k| Item::new(format!("{chunk}-{k}"), &tenant))
            .collect();
        let outcome = api.add(&items).await;
        if outcome != simulate::api::WriteOutcome::Ok {
            bail!("filling the read tenant failed: {outcome:?}");
        }
    }
    let expected = api.count(&tenant).await.map_err(anyhow::Error::msg)?;
    if expected != 100_000 {
        bail!("read tenant holds {expected} items, not 100000");
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, tenant) = (api.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while started.elapsed() < duration {
                let sent = Instant::now();
                match api.count(&tenant).await {
                    Ok(100_000) => latencies.push(sent.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.context("read task")?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((p / 100.0) * (latencies.len().max(1) - 1) as f64).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(Row {
        workload: "GET count (100k items)".into(),
        clients,
        requests_per_sec: latencies.len() as f64 / elapsed,
        items_per_sec: 0.0,
        p50: pct(50.0),
        p99: pct(99.0),
        errors,
    })
}
