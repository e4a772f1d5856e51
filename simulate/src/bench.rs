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
use simulate::cpu::{self, Snapshot};
use simulate::load::{self, LoadOptions, LoadReport};
use simulate::table::Table;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_common::Item;

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    workload: String,
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
    /// wrk's rows alone on a fresh cluster, with CPU per request: the
    /// quick check of a change to the servers (`--only wrk,redis`).
    Wrk,
    /// Redis doing the same job, if installed.
    Redis,
    /// A restarted counter copying what it missed while writes go on.
    CatchUp,
    /// Presence sockets held, join-to-seen latency, memory per socket.
    Presence,
}

/// CPU time per acknowledged request of every process in one wrk (or
/// redis-benchmark) run, in µs.
#[derive(Debug, Clone, serde::Serialize)]
struct CpuRow {
    workload: String,
    clients: usize,
    acknowledged_per_sec: f64,
    /// The coordinator, or redis-server.
    server: f64,
    /// Each counter (none for Redis).
    counters: Vec<f64>,
    /// wrk or redis-benchmark.
    load_generator: f64,
}

impl CpuRow {
    fn total(&self) -> f64 {
        self.server + self.counters.iter().sum::<f64>() + self.load_generator
    }
}

/// What the tables of one run hold.
#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    cpu: Vec<CpuRow>,
    steps: Option<Steps>,
    mismatches: usize,
}

pub async fn run(
    duration: Duration,
    catch_up_items: usize,
    only: &[Part],
    out: &Path,
) -> anyhow::Result<()> {
    let runs = |part: Part| only.is_empty() || only.contains(&part);
    let dir = std::env::temp_dir().join(format!("tally-bench-{:x}", rand::random::<u32>()));
    let mut results = Results::default();
    if runs(Part::Throughput) {
        throughput(&dir.join("throughput"), duration, true, &mut results).await?;
    } else if runs(Part::Wrk) {
        throughput(&dir.join("wrk"), duration, false, &mut results).await?;
    }
    // Right after tally's rows, so both see the machine in the same state.
    if runs(Part::Redis) {
        redis_rows_if_installed(&dir.join("redis"), duration, &mut results)?;
    }
    let catch_up = if runs(Part::CatchUp) {
        eprintln!("catch-up of {catch_up_items} missed items");
        Some(catch_up(&dir.join("catch-up"), catch_up_items, duration).await?)
    } else {
        None
    };
    let presence = if runs(Part::Presence) {
        Some(crate::presence_bench::run(&dir.join("presence")).await?)
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    let Results {
        rows,
        cpu,
        steps,
        mismatches,
    } = results;

    let mut tables = Vec::new();
    if !rows.is_empty() {
        tables.push(rows_table(&rows));
    }
    if let Some(versus) = versus_redis_table(&rows) {
        tables.push(versus);
    }
    if !cpu.is_empty() {
        tables.push(cpu_table(&cpu));
    }
    if let Some(steps) = &steps {
        tables.push(steps_table(steps));
    }
    tables.extend(catch_up.as_ref().map(catch_up_table));
    tables.extend(presence.as_ref().map(crate::presence_bench::table));
    let text: Vec<String> = tables.iter().map(Table::render).collect();
    print!("{}", text.join("\n"));
    println!(
        "counts verified after the run: {}",
        if mismatches == 0 { "exact" } else { "MISMATCH" }
    );

    let json = serde_json::json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "commit": git_commit(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_average": load_average(),
        "seconds_per_row": duration.as_secs_f64(),
        "counts_exact": mismatches == 0,
        "rows": rows,
        "cpu_per_request": cpu,
        "single_client_steps": steps,
        "catch_up": catch_up,
        "presence": presence,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    let markdown: Vec<String> = tables.iter().map(Table::markdown).collect();
    std::fs::write(
        out.with_extension("md"),
        format!(
            "Commit {}, load average before the run {}.\n\n{}",
            git_commit(),
            load_average(),
            markdown.join("\n")
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

/// The commit the binaries were built from, as far as git in the current
/// directory knows (`-dirty` when the tree has changes).
fn git_commit() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average, to say how busy the shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The write and read rows on one fresh cluster (the `simulate` driver's
/// only with `with_simulate`), then wrk's with their CPU per request; the
/// counts the simulate driver's writes were acknowledged for are checked.
async fn throughput(
    dir: &Path,
    duration: Duration,
    with_simulate: bool,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut options = ClusterOptions::new(dir, 3);
    options.health_interval = Duration::from_secs(1);
    let cluster = LocalCluster::start(options).await?;
    let api = cluster.api().clone();
    let mut verified = Vec::new();

    // Warm the connection pools and the page cache.
    load::run(&api, &LoadOptions::new(16, 50, 1)).await;

    if with_simulate {
        for clients in [1, 16, 64] {
            eprintln!("single-item POSTs, {clients} clients, {duration:?}");
            let report = timed(&api, clients, 1, duration).await;
            results
                .rows
                .push(Row::from_load("POST 1 item", clients, &report));
            verified.push(report);
        }
        eprintln!("1,000-item POSTs, 8 clients, {duration:?}");
        let report = timed(&api, 8, 1000, duration).await;
        results
            .rows
            .push(Row::from_load("POST 1,000 items", 8, &report));
        verified.push(report);
    }

    eprintln!("filling a tenant with 100,000 items for the read rows");
    let tenant = fill_read_tenant(&api).await?;
    if with_simulate {
        eprintln!("count reads at 100,000 items, 16 clients, {duration:?}");
        results.rows.push(reads(&api, &tenant, 16, duration).await?);
    }

    if has("wrk") {
        eprintln!("wrk: single-item POSTs at 1 and 64 clients, count reads, 1,000-item POSTs");
        wrk_rows(&cluster, &tenant, duration, results).await?;
    } else {
        eprintln!("wrk not installed: skipping its rows");
    }

    let urls: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    for report in &verified {
        results.mismatches += load::verify(&api, &urls, report).await.mismatches.len();
    }
    Ok(())
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

/// One wrk run: its figures as a row, and how many requests it had
/// acknowledged (answered 2xx).
struct WrkRun {
    row: Row,
    /// The mean latency, where the p50 and p99 are in `row`.
    mean_ms: f64,
    acknowledged: u64,
    seconds: f64,
    cpu: Duration,
}

/// wrk's figures, each with the CPU every process spent on it: single-item
/// POSTs through bench/post_items.lua (every item new) at one client (the
/// latency row) and at 64, count reads at 16, then 1,000-item requests
/// with ids in a sequence per client (as every other row has them) and
/// with random ids. The single-item and read rows use one wrk thread, as
/// the targets were set with; the 1,000-item rows two, since building
/// their bodies in Lua is most of wrk's work there.
async fn wrk_rows(
    cluster: &LocalCluster,
    tenant: &str,
    duration: Duration,
    results: &mut Results,
) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/post_items.lua");
    let script = script.to_str().context("script path")?.to_string();
    let base = cluster.coordinator_url().to_string();
    let secs = format!("{}s", duration.as_secs().max(1));
    // The coordinator first, then the counters in order.
    let mut pids = vec![cluster
        .coordinator_pid()
        .context("the coordinator is not running")?];
    for (i, info) in cluster.counters().iter().enumerate() {
        let pid = cluster
            .counter_pid(i)
            .with_context(|| format!("{} is not running", info.id))?;
        pids.push(pid);
    }
    let posts = |threads: &str, clients: usize, ids: &str, per_request: &str| -> Vec<String> {
        [
            threads,
            &format!("-c{clients}"),
            "-d",
            &secs,
            "--latency",
            "-s",
            &script,
            &format!("{base}/"),
            "--",
            &format!("wrk{:x}", rand::random::<u32>()),
            ids,
            per_request,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let reads: Vec<String> = [
        "-t1",
        "-c16",
        "-d",
        &secs,
        "--latency",
        &format!("{base}/items/{tenant}/count"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    // (workload, clients, items per request, wrk's arguments); the
    // 1,000-item rows last: they leave the most compaction work behind.
    let runs = [
        ("POST 1 item", 1, 1, posts("-t1", 1, "sequential", "1")),
        ("POST 1 item", 64, 1, posts("-t1", 64, "sequential", "1")),
        ("GET count (100k items)", 16, 0, reads),
        (
            "POST 1,000 items",
            8,
            1000,
            posts("-t2", 8, "sequential", "1000"),
        ),
        (
            "POST 1,000 items, random ids",
            8,
            1000,
            posts("-t2", 8, "random", "1000"),
        ),
    ];
    for (workload, clients, items, args) in runs {
        let single_client = clients == 1;
        let metrics_before = if single_client {
            Some(step_sums(cluster).await?)
        } else {
            None
        };
        let before = Snapshot::take(&pids)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = run_wrk(&args)?;
        let used = Snapshot::take(&pids)?.since(&before);
        if let Some(before) = metrics_before {
            let after = step_sums(cluster).await?;
            results.steps = Some(Steps::between(&before, &after, &run));
        }
        results.cpu.push(cpu_row(
            workload,
            clients,
            run.acknowledged,
            run.seconds,
            used[0],
            &used[1..],
            run.cpu,
        ));
        results.rows.push(Row {
            workload: workload.into(),
            clients,
            items_per_sec: run.row.requests_per_sec * items as f64,
            ..run.row
        });
    }
    Ok(())
}

fn cpu_row(
    workload: &str,
    clients: usize,
    acknowledged: u64,
    seconds: f64,
    server: Duration,
    counters: &[Duration],
    load_generator: Duration,
) -> CpuRow {
    let per = |cpu: Duration| cpu.as_secs_f64() * 1e6 / acknowledged.max(1) as f64;
    CpuRow {
        workload: workload.into(),
        clients,
        acknowledged_per_sec: acknowledged as f64 / seconds.max(1e-9),
        server: per(server),
        counters: counters.iter().copied().map(per).collect(),
        load_generator: per(load_generator),
    }
}

/// Runs wrk and returns its figures and its own CPU time.
/// One wrk run of POSTs of `per_request` new items each (sequential ids)
/// from `clients` connections against `base`: its row, named `workload`.
pub(crate) fn wrk_post_row(
    base: &str,
    workload: &str,
    clients: usize,
    per_request: usize,
    duration: Duration,
) -> anyhow::Result<Row> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/post_items.lua");
    let script = script.to_str().context("script path")?;
    let threads = if per_request > 1 { "-t2" } else { "-t1" };
    let run = run_wrk(&[
        threads,
        &format!("-c{clients}"),
        "-d",
        &format!("{}s", duration.as_secs().max(1)),
        "--latency",
        "-s",
        script,
        &format!("{base}/"),
        "--",
        &format!("wrk{:x}", rand::random::<u32>()),
        "sequential",
        &per_request.to_string(),
    ])?;
    let mut row = run.row;
    row.workload = workload.to_string();
    row.clients = clients;
    row.items_per_sec = row.requests_per_sec * per_request as f64;
    Ok(row)
}

fn run_wrk(args: &[&str]) -> anyhow::Result<WrkRun> {
    let measured = cpu::run_measured("wrk", args)?;
    let text = measured.stdout;
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    };
    let rps: f64 = field("Requests/sec:")
        .context("no Requests/sec in wrk output")?
        .parse()?;
    // "  183456 requests in 10.00s, 20.12MB read"
    let (requests, seconds) = text
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(" requests in ")?;
            let secs = rest.split(',').next()?;
            Some((n.parse::<u64>().ok()?, wrk_ms(secs) / 1e3))
        })
        .context("no request total in wrk output")?;
    let non_2xx: u64 = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket_errors: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|l| {
            l.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(WrkRun {
        mean_ms: field("Latency").map_or(0.0, |v| wrk_ms(&v)),
        row: Row {
            workload: String::new(),
            driver: "wrk".into(),
            clients: 0,
            requests_per_sec: rps,
            items_per_sec: 0.0,
            p50_ms: field("50%").map_or(0.0, |v| wrk_ms(&v)),
            p99_ms: field("99%").map_or(0.0, |v| wrk_ms(&v)),
            errors: (non_2xx + socket_errors) as usize,
        },
        acknowledged: requests.saturating_sub(non_2xx),
        seconds,
        cpu: measured.cpu,
    })
}

/// wrk prints latencies and durations as `812.00us`, `1.20ms`, `10.00s`
/// or `1.01m`.
fn wrk_ms(value: &str) -> f64 {
    let value = value.trim();
    let (number, scale) = if let Some(v) = value.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1e3)
    } else if let Some(v) = value.strip_suffix('m') {
        (v, 60e3)
    } else {
        (value, 1.0)
    };
    number.parse::<f64>().unwrap_or(0.0) * scale
}

/// Where one single-client write's time goes, as means over a wrk run at
/// one connection, from the processes' own histograms (sum and count
/// before and after). The coordinator's core times the prepare and decide
/// phases on a millisecond clock, so those two are means of rounded
/// spans; over thousands of writes the rounding averages out.
#[derive(Debug, Clone, serde::Serialize)]
struct Steps {
    client_mean_ms: f64,
    client_p50_ms: f64,
    client_p99_ms: f64,
    /// `POST /items` from the coordinator's routing to its answer.
    coordinator_request_ms: f64,
    /// Prepares sent to every vote in (the slowest counter's round trip).
    prepare_phase_ms: f64,
    /// A counter's `/internal/prepare` handler, mean of the three.
    counter_prepare_ms: f64,
    /// A counter's storage write with its fsync, mean of the three.
    counter_store_write_ms: f64,
    /// Votes in to decision durable.
    decide_phase_ms: f64,
    /// The decision log write with its fsync.
    decision_log_write_ms: f64,
    transactions: f64,
}

/// Sums and counts of the histograms [`Steps`] reads, per process.
#[derive(Debug, Clone)]
struct StepSums {
    coordinator: Vec<(f64, f64)>,
    counters: Vec<Vec<(f64, f64)>>,
}

const COORDINATOR_STEPS: [(&str, &[(&str, &str)]); 4] = [
    (
        "tally_http_request_duration_seconds",
        &[("route", "/items"), ("method", "POST")],
    ),
    ("tally_prepare_phase_seconds", &[]),
    ("tally_decide_phase_seconds", &[]),
    ("tally_decision_log_write_seconds", &[]),
];
const COUNTER_STEPS: [(&str, &[(&str, &str)]); 2] = [
    (
        "tally_http_request_duration_seconds",
        &[("route", "/internal/prepare"), ("method", "POST")],
    ),
    ("tally_store_write_seconds", &[]),
];

async fn step_sums(cluster: &LocalCluster) -> anyhow::Result<StepSums> {
    async fn read(
        url: &str,
        wanted: &[(&str, &[(&str, &str)])],
    ) -> anyhow::Result<Vec<(f64, f64)>> {
        let samples = simulate::prometheus::scrape(url)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(wanted
            .iter()
            .map(|(name, labels)| {
                let get = |suffix: &str| {
                    simulate::prometheus::try_value(&samples, &format!("{name}{suffix}"), labels)
                        .unwrap_or(0.0)
                };
                (get("_sum"), get("_count"))
            })
            .collect())
    }
    let coordinator = read(cluster.coordinator_url(), &COORDINATOR_STEPS).await?;
    let mut counters = Vec::new();
    for info in cluster.counters() {
        counters.push(read(&info.url, &COUNTER_STEPS).await?);
    }
    Ok(StepSums {
        coordinator,
        counters,
    })
}

impl Steps {
    fn between(before: &StepSums, after: &StepSums, client: &WrkRun) -> Steps {
        let mean = |b: (f64, f64), a: (f64, f64)| (a.0 - b.0) * 1e3 / (a.1 - b.1).max(1.0);
        let coordinator = |i: usize| mean(before.coordinator[i], after.coordinator[i]);
        let counters = |i: usize| {
            let n = after.counters.len().max(1) as f64;
            before
                .counters
                .iter()
                .zip(&after.counters)
                .map(|(b, a)| mean(b[i], a[i]))
                .sum::<f64>()
                / n
        };
        Steps {
            client_mean_ms: client.mean_ms,
            client_p50_ms: client.row.p50_ms,
            client_p99_ms: client.row.p99_ms,
            coordinator_request_ms: coordinator(0),
            prepare_phase_ms: coordinator(1),
            decide_phase_ms: coordinator(2),
            decision_log_write_ms: coordinator(3),
            counter_prepare_ms: counters(0),
            counter_store_write_ms: counters(1),
            transactions: after.coordinator[1].1 - before.coordinator[1].1,
        }
    }
}

fn steps_table(steps: &Steps) -> Table {
    let mut table = Table::new(["one client, single-item POST", "ms (mean unless said)"]);
    let ms = |v: f64| format!("{v:.3}");
    let rest = steps.coordinator_request_ms - steps.prepare_phase_ms - steps.decide_phase_ms;
    for (step, value) in [
        ("client sees, mean (wrk)", ms(steps.client_mean_ms)),
        ("client sees, p50 (wrk)", ms(steps.client_p50_ms)),
        ("client sees, p99 (wrk)", ms(steps.client_p99_ms)),
        (
            "coordinator: POST /items, routing to answer",
            ms(steps.coordinator_request_ms),
        ),
        (
            "  prepare round trip (send to last vote)",
            ms(steps.prepare_phase_ms),
        ),
        ("    counter: prepare handler", ms(steps.counter_prepare_ms)),
        (
            "      counter: storage write + fsync",
            ms(steps.counter_store_write_ms),
        ),
        (
            "  decide (last vote to decision durable)",
            ms(steps.decide_phase_ms),
        ),
        (
            "    decision log write + fsync",
            ms(steps.decision_log_write_ms),
        ),
        ("  body, parse, queue and reply (the rest)", ms(rest)),
        (
            "HTTP in and out: client's mean minus the coordinator's",
            ms(steps.client_mean_ms - steps.coordinator_request_ms),
        ),
        (
            "transactions in the run",
            format!("{:.0}", steps.transactions),
        ),
    ] {
        table.row([step.to_string(), value]);
    }
    table
}

fn cpu_table(rows: &[CpuRow]) -> Table {
    let mut table = Table::new([
        "CPU µs per acknowledged request",
        "clients",
        "req/s",
        "coordinator (redis-server)",
        "each counter",
        "wrk (redis-benchmark)",
        "all",
    ]);
    for r in rows {
        let counters: Vec<String> = r.counters.iter().map(|us| format!("{us:.1}")).collect();
        table.row([
            r.workload.clone(),
            r.clients.to_string(),
            format!("{:.0}", r.acknowledged_per_sec),
            format!("{:.1}", r.server),
            if counters.is_empty() {
                "–".to_string()
            } else {
                counters.join(" / ")
            },
            format!("{:.1}", r.load_generator),
            format!("{:.1}", r.total()),
        ]);
    }
    table
}

/// tally against Redis of the same run, where both were measured.
fn versus_redis_table(rows: &[Row]) -> Option<Table> {
    let find = |workload: &str, driver: &str, clients: usize| {
        rows.iter()
            .find(|r| r.workload == workload && r.driver == driver && r.clients == clients)
    };
    let pairs = [
        (
            "single-item writes/s, 64 clients",
            find("POST 1 item", "wrk", 64),
            find("SADD 1 member (AOF fsync always)", "redis-benchmark", 64),
        ),
        (
            "count reads/s, 16 clients",
            find("GET count (100k items)", "wrk", 16),
            find("SCARD", "redis-benchmark", 16),
        ),
    ];
    let mut table = Table::new(["against Redis", "tally", "p99", "Redis", "p99", "ratio"]);
    let mut any = false;
    for (what, tally, redis) in pairs {
        if let (Some(t), Some(r)) = (tally, redis) {
            any = true;
            table.row([
                what.to_string(),
                format!("{:.0}", t.requests_per_sec),
                format!("{:.2}ms", t.p99_ms),
                format!("{:.0}", r.requests_per_sec),
                format!("{:.2}ms", r.p99_ms),
                format!("{:.2}x", t.requests_per_sec / r.requests_per_sec.max(1.0)),
            ]);
        }
    }
    any.then_some(table)
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

fn redis_rows_if_installed(
    dir: &Path,
    duration: Duration,
    results: &mut Results,
) -> anyhow::Result<()> {
    if has("redis-server") && has("redis-benchmark") {
        eprintln!("redis reference (appendfsync always)");
        redis_rows(dir, duration, results)
    } else {
        eprintln!("redis-server not installed: skipping the reference rows");
        Ok(())
    }
}

/// The reference: Redis, fsync on every write, SADD of random members at
/// 64 clients and SCARD at 16, with the CPU redis-server and
/// redis-benchmark spent per request.
fn redis_rows(dir: &Path, duration: Duration, results: &mut Results) -> anyhow::Result<()> {
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
    let server = KillOnDrop(server);
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
    let n = duration.as_secs().max(1) * 20_000;
    let requests = n.to_string();
    let sadd_args = [
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
    ];
    let scard_args = ["-p", &port, "-c", "16", "-n", &requests, "scard", "bench"];
    let runs: [(&str, usize, &[&str]); 2] = [
        ("SADD 1 member (AOF fsync always)", 64, &sadd_args),
        ("SCARD", 16, &scard_args),
    ];
    for (workload, clients, args) in runs {
        let pid = [server.0.id()];
        let before = Snapshot::take(&pid)?;
        let (row, cpu) = redis_benchmark(args)?;
        let used = Snapshot::take(&pid)?.since(&before);
        results.cpu.push(cpu_row(
            workload,
            clients,
            n,
            n as f64 / row.requests_per_sec.max(1.0),
            used[0],
            &[],
            cpu,
        ));
        let items_per_sec = if clients == 64 {
            row.requests_per_sec
        } else {
            0.0
        };
        results.rows.push(Row {
            workload: workload.into(),
            clients,
            items_per_sec,
            ..row
        });
    }
    Ok(())
}

fn redis_benchmark(args: &[&str]) -> anyhow::Result<(Row, Duration)> {
    let mut all = vec!["--csv"];
    all.extend_from_slice(args);
    let measured = cpu::run_measured("redis-benchmark", &all)?;
    // --csv: a header line, then "name","rps","avg","min","p50","p95","p99","max".
    let line = measured
        .stdout
        .lines()
        .rfind(|l| !l.starts_with("\"test\""))
        .context("no redis-benchmark result")?;
    let fields: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|f| f.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    let row = Row {
        workload: String::new(),
        driver: "redis-benchmark".into(),
        clients: 0,
        requests_per_sec: fields.first().copied().unwrap_or(0.0),
        items_per_sec: 0.0,
        p50_ms: fields.get(3).copied().unwrap_or(0.0),
        p99_ms: fields.get(5).copied().unwrap_or(0.0),
        errors: 0,
    };
    Ok((row, measured.cpu))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
