//! `simulate bench`: the figures of docs/benchmarks.md, measured on fresh
//! local clusters (coordinator and 3 counters on loopback). Prints tables
//! and writes JSON plus Markdown next to `--out`.
//!
//! Rows come from three drivers: `simulate load` (verifies every count
//! afterwards, but its own HTTP client costs CPU on the same 2 cores), wrk
//! (cheaper per request, so closer to what the servers can take), and, as a
//! reference measured in the same run, Redis with `appendfsync always`
//! doing the same job (SADD/SCARD) without replication. wrk and Redis rows
//! appear only where those programs are installed (`make bench` installs
//! them).

use anyhow::{bail, Context};
use simulate::api::{Api, WriteOutcome};
use simulate::cluster::{free_port, ClusterOptions, LocalCluster};
use simulate::load::{self, LoadOptions, LoadReport};
use simulate::table::Table;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_common::Item;

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) workload: String,
    driver: String,
    clients: usize,
    requests_per_sec: f64,
    items_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

impl Row {
    pub(crate) fn from_load(workload: &str, clients: usize, report: &LoadReport) -> Self {
        Row {
            workload: workload.into(),
            driver: "simulate".into(),
            clients,
            requests_per_sec: report.requests_per_sec(),
            items_per_sec: report.items_per_sec(),
            p50_ms: report.latency(50.0).as_secs_f64() * 1e3,
            p99_ms: report.latency(99.0).as_secs_f64() * 1e3,
            errors: report.ops.len() - report.requests_ok(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct CatchUp {
    missed_items: usize,
    catch_up_secs: f64,
    steady_items_per_sec: f64,
    during_catch_up_items_per_sec: f64,
}

/// One part of the benchmark, for `--only`: a change that touches one row
/// is measured without waiting for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The write and read rows on one cluster (and wrk's, if installed).
    Throughput,
    /// A restarted counter copying what it missed while writes go on.
    CatchUp,
    /// Redis doing the same job, if installed.
    Redis,
    /// Presence sockets held, join-to-seen latency, memory per socket.
    Presence,
}

pub async fn run(
    duration: Duration,
    catch_up_items: usize,
    only: Option<Part>,
    out: &Path,
) -> anyhow::Result<()> {
    let runs = |part: Part| only.is_none_or(|o| o == part);
    let dir = std::env::temp_dir().join(format!("tally-bench-{:x}", rand::random::<u32>()));
    let mut rows = Vec::new();
    let mut mismatches = 0;
    if runs(Part::Throughput) {
        let (throughput, wrong) = throughput_rows(&dir.join("throughput"), duration).await?;
        rows.extend(throughput);
        mismatches += wrong;
    }
    let catch_up = if runs(Part::CatchUp) {
        eprintln!("catch-up of {catch_up_items} missed items");
        Some(catch_up(&dir.join("catch-up"), catch_up_items, duration).await?)
    } else {
        None
    };
    if runs(Part::Redis) {
        rows.extend(redis_rows_if_installed(&dir.join("redis"), duration)?);
    }
    let presence = if runs(Part::Presence) {
        Some(crate::presence_bench::run(&dir.join("presence")).await?)
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    let presence_table = presence.as_ref().map(crate::presence_bench::table);

    let table = rows_table(&rows);
    let catch_table = catch_up.as_ref().map(catch_up_table);
    let catch_text = catch_table.as_ref().map(Table::render).unwrap_or_default();
    print!("{}\n{catch_text}", table.render());
    if let Some(presence) = &presence_table {
        print!("\n{}", presence.render());
    }
    println!(
        "counts verified after the run: {}",
        if mismatches == 0 { "exact" } else { "MISMATCH" }
    );

    let json = serde_json::json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "seconds_per_row": duration.as_secs_f64(),
        "counts_exact": mismatches == 0,
        "rows": rows,
        "catch_up": catch_up,
        "presence": presence,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    let catch_markdown = catch_table
        .as_ref()
        .map(Table::markdown)
        .unwrap_or_default();
    std::fs::write(
        out.with_extension("md"),
        format!(
            "{}\n{catch_markdown}\n{}",
            table.markdown(),
            presence_table
                .as_ref()
                .map(Table::markdown)
                .unwrap_or_default()
        ),
    )?;
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

/// The write and read rows on one fresh cluster, and how many counts
/// disagreed with what the writes were acknowledged for.
async fn throughput_rows(dir: &Path, duration: Duration) -> anyhow::Result<(Vec<Row>, usize)> {
    let mut rows = Vec::new();
    let mut options = ClusterOptions::new(dir, 3);
    options.health_interval = Duration::from_secs(1);
    let cluster = LocalCluster::start(options).await?;
    let api = cluster.api().clone();
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
    let tenant = fill_read_tenant(&api).await?;
    rows.push(reads(&api, &tenant, 16, duration).await?);

    if has("wrk") {
        eprintln!("wrk: single-item POSTs, count reads, 1,000-item POSTs");
        rows.extend(wrk_rows(cluster.coordinator_url(), &tenant, duration)?);
    } else {
        eprintln!("wrk not installed: skipping its rows");
    }

    let urls: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    let mut mismatches = 0;
    for report in &verified {
        mismatches += load::verify(&api, &urls, report).await.mismatches.len();
    }
    Ok((rows, mismatches))
}

pub(crate) fn rows_table(rows: &[Row]) -> Table {
    let mut table = Table::new([
        "workload", "driver", "clients", "req/s", "items/s", "p50", "p99", "errors",
    ]);
    for r in rows {
        table.row([
            r.workload.clone(),
            r.driver.clone(),
            r.clients.to_string(),
            format!("{:.0}", r.requests_per_sec),
            format!("{:.0}", r.items_per_sec),
            format!("{:.2}ms", r.p50_ms),
            format!("{:.2}ms", r.p99_ms),
            r.errors.to_string(),
        ]);
    }
    table
}

fn catch_up_table(catch_up: &CatchUp) -> Table {
    let mut table = Table::new([
        "missed items",
        "catch-up",
        "writes/s steady",
        "writes/s during catch-up",
        "ratio",
    ]);
    table.row([
        catch_up.missed_items.to_string(),
        format!("{:.2}s", catch_up.catch_up_secs),
        format!("{:.0}", catch_up.steady_items_per_sec),
        format!("{:.0}", catch_up.during_catch_up_items_per_sec),
        format!(
            "{:.0}%",
            100.0 * catch_up.during_catch_up_items_per_sec / catch_up.steady_items_per_sec.max(1.0)
        ),
    ]);
    table
}

pub(crate) fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) async fn timed(
    api: &Api,
    clients: usize,
    batch: usize,
    duration: Duration,
) -> LoadReport {
    let mut options = LoadOptions::new(clients, 0, batch);
    options.requests = None;
    options.duration = Some(duration);
    options.tenants = 16;
    load::run(api, &options).await
}

/// Fills one tenant with 100,000 items for the read rows.
async fn fill_read_tenant(api: &Api) -> anyhow::Result<String> {
    let tenant = format!("bench-reads-{:x}", rand::random::<u32>());
    for chunk in 0..100 {
        let items: Vec<Item> = (0..1000)
            .map(|k| Item::new(format!("{chunk}-{k}"), &tenant))
            .collect();
        let outcome = api.add(&items).await;
        if outcome != WriteOutcome::Ok {
            bail!("filling the read tenant failed: {outcome:?}");
        }
    }
    let count = api.count(&tenant).await.map_err(anyhow::Error::msg)?;
    if count != 100_000 {
        bail!("read tenant holds {count} items, not 100000");
    }
    Ok(tenant)
}

/// Reads the tenant's count from `clients` concurrent clients.
async fn reads(api: &Api, tenant: &str, clients: usize, duration: Duration) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, tenant) = (api.clone(), tenant.to_string());
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
            .as_secs_f64()
            * 1e3
    };
    Ok(Row {
        workload: "GET count (100k items)".into(),
        driver: "simulate".into(),
        clients,
        requests_per_sec: latencies.len() as f64 / elapsed,
        items_per_sec: 0.0,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        errors,
    })
}

/// wrk's figures: count reads, and POSTs through bench/post_items.lua where
/// every item is new: single items, then 1,000-item requests with ids in a
/// sequence per client (as every other row has them) and with random ids.
pub(crate) fn wrk_rows(base: &str, tenant: &str, duration: Duration) -> anyhow::Result<Vec<Row>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/post_items.lua");
    let script = script.to_str().context("script path")?;
    let secs = format!("{}s", duration.as_secs().max(1));
    let posts = |clients: &str, ids: &str, per_request: &str| {
        run_wrk(&[
            "-t2",
            clients,
            "-d",
            &secs,
            "--latency",
            "-s",
            script,
            &format!("{base}/"),
            "--",
            &format!("wrk{:x}", rand::random::<u32>()),
            ids,
            per_request,
        ])
    };
    let post = posts("-c64", "sequential", "1")?;
    let read = run_wrk(&[
        "-t2",
        "-c16",
        "-d",
        &secs,
        "--latency",
        &format!("{base}/items/{tenant}/count"),
    ])?;
    // Last: they leave the most compaction work behind.
    let sequential = posts("-c8", "sequential", "1000")?;
    let random = posts("-c8", "random", "1000")?;
    Ok(vec![
        Row {
            workload: "POST 1 item".into(),
            driver: "wrk".into(),
            clients: 64,
            items_per_sec: post.0,
            ..post.1
        },
        Row {
            workload: "GET count (100k items)".into(),
            driver: "wrk".into(),
            clients: 16,
            ..read.1
        },
        Row {
            workload: "POST 1,000 items".into(),
            driver: "wrk".into(),
            clients: 8,
            items_per_sec: sequential.0 * 1000.0,
            ..sequential.1
        },
        Row {
            workload: "POST 1,000 items, random ids".into(),
            driver: "wrk".into(),
            clients: 8,
            items_per_sec: random.0 * 1000.0,
            ..random.1
        },
    ])
}

/// Runs wrk and returns (requests/s, row with latencies and errors).
fn run_wrk(args: &[&str]) -> anyhow::Result<(f64, Row)> {
    let output = Command::new("wrk")
        .args(args)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    };
    let rps: f64 = field("Requests/sec:")
        .context("no Requests/sec in wrk output")?
        .parse()?;
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok((
        rps,
        Row {
            workload: String::new(),
            driver: "wrk".into(),
            clients: 0,
            requests_per_sec: rps,
            items_per_sec: 0.0,
            p50_ms: field("50%").map_or(0.0, |v| wrk_ms(&v)),
            p99_ms: field("99%").map_or(0.0, |v| wrk_ms(&v)),
            errors,
        },
    ))
}

/// wrk prints latencies as `812.00us`, `1.20ms` or `1.01s`.
fn wrk_ms(value: &str) -> f64 {
    let (number, scale) = if let Some(v) = value.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1e3)
    } else {
        (value, 1.0)
    };
    number.parse::<f64>().unwrap_or(0.0) * scale
}

/// A counter misses `missed` items, then restarts while 8 clients keep
/// writing 100-item requests: how long until it is in sync, and how the
/// write rate during its catch-up compares with the rate afterwards.
async fn catch_up(dir: &Path, missed: usize, duration: Duration) -> anyhow::Result<CatchUp> {
    let mut options = ClusterOptions::new(dir, 3);
    options.health_interval = Duration::from_millis(200);
    let mut cluster = LocalCluster::start(options).await?;
    let api = cluster.api().clone();
    cluster.kill_counter(2)?;
    let mut fill = LoadOptions::new(8, (missed / 8).div_ceil(1000) as u64, 1000);
    fill.tenants = 16;
    let filled = load::run(&api, &fill).await;
    if filled.items_ok() < missed {
        bail!("could only add {} of {missed} items", filled.items_ok());
    }
    let write_for = |window: Duration| {
        let mut options = LoadOptions::new(8, 0, 100);
        options.requests = None;
        options.duration = Some(window);
        options
    };

    // Restart it and keep writing in short windows until it is in sync;
    // a watcher times the catch-up itself more finely.
    let started = Instant::now();
    cluster.start_counter(2)?;
    let watcher = {
        let ids: Vec<String> = cluster.counters().iter().map(|c| c.id.clone()).collect();
        let api = api.clone();
        tokio::spawn(async move {
            // A million items take about 4 s on a quiet machine; allow for
            // a loaded one, and never less than five minutes.
            let limit = Duration::from_secs((missed as u64 / 20_000).max(300));
            simulate::wait::until("catch-up", limit, || {
                let (api, ids) = (api.clone(), ids.clone());
                async move {
                    let view = api.cluster().await?;
                    let all = ids
                        .iter()
                        .all(|id| view.counters.iter().any(|c| &c.id.0 == id && c.in_sync));
                    if all {
                        Ok(started.elapsed())
                    } else {
                        Err("catching up".into())
                    }
                }
            })
            .await
        })
    };
    let mut written = 0usize;
    let mut writing = Duration::ZERO;
    while !watcher.is_finished() {
        let report = load::run(&api, &write_for(Duration::from_millis(250))).await;
        written += report.items_ok();
        writing += report.elapsed;
    }
    let catch_up_time = watcher
        .await?
        .context("the restarted counter did not catch up")?;
    let steady = load::run(&api, &write_for(duration.max(Duration::from_secs(3)))).await;
    Ok(CatchUp {
        missed_items: missed,
        catch_up_secs: catch_up_time.as_secs_f64(),
        steady_items_per_sec: steady.items_per_sec(),
        during_catch_up_items_per_sec: written as f64 / writing.as_secs_f64().max(1e-9),
    })
}

fn redis_rows_if_installed(dir: &Path, duration: Duration) -> anyhow::Result<Vec<Row>> {
    if has("redis-server") && has("redis-benchmark") {
        eprintln!("redis reference (appendfsync always)");
        redis_rows(dir, duration)
    } else {
        eprintln!("redis-server not installed: skipping the reference rows");
        Ok(Vec::new())
    }
}

/// The reference: Redis, fsync on every write, SADD of random members at
/// 64 clients and SCARD at 16.
fn redis_rows(dir: &Path, duration: Duration) -> anyhow::Result<Vec<Row>> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?.to_string();
    let server = Command::new("redis-server")
        .args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let _server = KillOnDrop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("redis-cli")
        .args(["-p", &port, "ping"])
        .output()
        .map_or(true, |o| {
            !String::from_utf8_lossy(&o.stdout).contains("PONG")
        })
    {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let requests = (duration.as_secs().max(1) * 20_000).to_string();
    let sadd = redis_benchmark(&[
        "-p",
        &port,
        "-c",
        "64",
        "-n",
        &requests,
        "-r",
        "100000000",
        "sadd",
        "bench",
        "__rand_int__",
    ])?;
    let scard = redis_benchmark(&["-p", &port, "-c", "16", "-n", &requests, "scard", "bench"])?;
    Ok(vec![
        Row {
            workload: "SADD 1 member (AOF fsync always)".into(),
            clients: 64,
            items_per_sec: sadd.requests_per_sec,
            ..sadd
        },
        Row {
            workload: "SCARD".into(),
            clients: 16,
            ..scard
        },
    ])
}

fn redis_benchmark(args: &[&str]) -> anyhow::Result<Row> {
    let output = Command::new("redis-benchmark")
        .arg("--csv")
        .args(args)
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    // --csv: a header line, then "name","rps","avg","min","p50","p95","p99","max".
    let line = text
        .lines()
        .rfind(|l| !l.starts_with("\"test\""))
        .context("no redis-benchmark result")?;
    let fields: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|f| f.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    Ok(Row {
        workload: String::new(),
        driver: "redis-benchmark".into(),
        clients: 0,
        requests_per_sec: fields.first().copied().unwrap_or(0.0),
        items_per_sec: 0.0,
        p50_ms: fields.get(3).copied().unwrap_or(0.0),
        p99_ms: fields.get(5).copied().unwrap_or(0.0),
        errors: 0,
    })
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
