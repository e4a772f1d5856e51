//! `simulate`: the operator's tool. Runs a local cluster, the walkthrough
//! scenario, bounded load with verification, chaos with a set check, the
//! benchmarks, and a status table.

mod bench;
mod coordinators_bench;
mod presence_bench;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use simulate::api::Api;
use simulate::chaos;
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::docker::DockerBackend;
use simulate::load::{self, LoadOptions};
use simulate::scenario::{self, ProcessBackend};
use simulate::table::{verdict, Table};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "simulate",
    version,
    about = "Run, exercise and measure a tally cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a coordinator and N counters as local processes until Ctrl-C.
    Cluster {
        #[arg(long, default_value_t = 3)]
        counters: usize,
        /// Coordinators that replicate the decision log (1, 3, 5 or 7); each
        /// is given every coordinator's URL as --peers, and every counter
        /// all of them.
        #[arg(long, default_value_t = 1, value_parser = coordinator_count)]
        coordinators: usize,
        /// The first coordinator's port; the other coordinators, then the
        /// counters, listen on the following ports.
        #[arg(long, default_value_t = 8080)]
        base_port: u16,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        health_interval: Duration,
    },
    /// The seven-step walkthrough scenario, every step checked.
    Scenario {
        #[arg(long, value_enum, default_value_t = BackendKind::Process)]
        backend: BackendKind,
        /// Where the process backend keeps its cluster [default: a temporary directory].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The docker backend's compose project (`make up` starts it).
        #[arg(long, env = "COMPOSE_PROJECT_NAME", default_value = "tally")]
        project: String,
        /// The docker backend's coordinator URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// Longest wait for any one step.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        step_timeout: Duration,
    },
    /// Bounded load against a coordinator, then verify every tenant's count.
    Load {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Requests per client (default 100 unless --duration is given).
        #[arg(long)]
        requests: Option<u64>,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long, default_value_t = 4)]
        tenants: usize,
        /// Items per request.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// Write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Load while killing, restarting and freezing processes; then a set check.
    Chaos {
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// The coordinator's --min-insync; 2 makes a second faulty counter
        /// abort transactions.
        #[arg(long, default_value_t = 1)]
        min_insync: usize,
        /// Let faults overlap (two counters down at once, and so on).
        #[arg(long)]
        overlapping: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// The benchmark table (coordinator and 3 counters on loopback).
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Items a restarted counter must copy in the catch-up row.
        #[arg(long, default_value_t = 1_000_000)]
        catch_up_items: usize,
        /// Where to write the results (JSON; a Markdown table beside it).
        #[arg(long, default_value = "target/bench/results.json")]
        out: PathBuf,
        /// Run only these parts, comma-separated (the default runs them
        /// all): `--only wrk,redis` measures tally's wrk rows and Redis's.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Part>,
    },
    /// One coordinator against three: write throughput, and failover
    /// from kill -9 of the leader to the next acknowledged write.
    CoordinatorsBench {
        /// Times the leader is killed.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Seconds per throughput row.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "target/bench/coordinators.json")]
        out: PathBuf,
    },
    /// A table of the cluster's counters.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        coordinator: String,
        /// First wait (up to --wait-timeout) until this many counters are
        /// live and in sync; `make up` uses it to end with a serving cluster.
        #[arg(long)]
        wait_counters: Option<usize>,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
    },
    /// The last resort for a stalled cluster whose complete copies are gone
    /// for good: make COUNTER the complete copy, giving up every commit it
    /// lacks (docs/operations.md). Refused while the cluster serves.
    Promote {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        coordinator: String,
        /// The counter to promote: the one `status` shows holding the most.
        #[arg(long)]
        counter: String,
        /// The cluster token, if one is set.
        #[arg(long, env = "TALLY_CLUSTER_TOKEN", hide_env_values = true)]
        cluster_token: Option<String>,
        /// Required: you accept that the commits the counter lacks are lost.
        #[arg(long)]
        accept_loss: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    Process,
    Docker,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Cluster {
            counters,
            coordinators,
            base_port,
            data_dir,
            health_interval,
        } => run_cluster(counters, coordinators, base_port, data_dir, health_interval).await,
        Command::Scenario {
            backend,
            data_dir,
            project,
            target,
            step_timeout,
        } => {
            if let BackendKind::Docker = backend {
                let mut backend = DockerBackend::connect(&project, &target).await?;
                return scenario::run(&mut backend, step_timeout).await;
            }
            let temp = tempdir()?;
            let dir = data_dir.unwrap_or_else(|| temp.clone());
            let mut options = ClusterOptions::new(&dir, 3);
            options.health_interval = Duration::from_millis(200);
            let cluster = LocalCluster::start(options)
                .await
                .context("cannot start the local cluster")?;
            let mut backend = ProcessBackend(cluster);
            let result = scenario::run(&mut backend, step_timeout).await;
            drop(backend);
            let _ = std::fs::remove_dir_all(&temp);
            result
        }
        Command::Load {
            clients,
            requests,
            duration,
            tenants,
            batch,
            target,
            json,
        } => {
            let api = Api::new(&target);
            api.get("/health")
                .await
                .map_err(|e| anyhow::anyhow!("coordinator at {target} does not answer: {e}"))?;
            let mut options = LoadOptions::new(clients, requests.unwrap_or(100), batch.max(1));
            if duration.is_some() {
                options.requests = requests;
                options.duration = duration;
            }
            options.tenants = tenants;
            options.progress = true;
            let report = load::run(&api, &options).await;
            print!("{}", load_table(&report).render());
            let verification = load::verify(&api, &[], &report).await;
            if let Some(path) = json {
                write_json(&path, &load_json(&report, verification.passed()))?;
            }
            finish_verification(&report, &verification)
        }
        Command::Chaos {
            duration,
            seed,
            clients,
            min_insync,
            overlapping,
            data_dir,
        } => {
            let temp = tempdir()?;
            let dir = data_dir.unwrap_or_else(|| temp.clone());
            let mut options = chaos::ChaosOptions::new(duration, seed);
            options.clients = clients;
            options.min_insync = min_insync;
            options.overlapping = overlapping;
            let result = chaos::run(&dir, &options).await;
            let _ = std::fs::remove_dir_all(&temp);
            let report = result?;
            print!("{}", report.render());
            if !report.passed() {
                bail!("chaos run lost, invented or split items, or a read went back");
            }
            Ok(())
        }
        Command::Bench {
            duration,
            catch_up_items,
            out,
            only,
        } => bench::run(duration, catch_up_items, &only, &out).await,
        Command::CoordinatorsBench {
            kills,
            duration,
            out,
        } => coordinators_bench::run(kills, duration, &out).await,
        Command::Status {
            coordinator,
            wait_counters,
            wait_timeout,
        } => {
            if let Some(n) = wait_counters {
                wait_for_counters(&coordinator, n, wait_timeout).await?;
            }
            status(&coordinator).await
        }
        Command::Promote {
            coordinator,
            counter,
            cluster_token,
            accept_loss,
        } => promote(&coordinator, &counter, cluster_token, accept_loss).await,
    }
}

async fn promote(
    coordinator: &str,
    counter: &str,
    token: Option<String>,
    accept_loss: bool,
) -> anyhow::Result<()> {
    if !accept_loss {
        bail!("a forced promotion gives up every commit {counter} lacks: add --accept-loss");
    }
    let mut request = reqwest::Client::new()
        .post(format!(
            "{}/internal/promote",
            coordinator.trim_end_matches('/')
        ))
        .json(&tally_common::api::PromoteRequest {
            counter: tally_common::CounterId(counter.to_string()),
            accept_loss,
        });
    if let Some(token) = token {
        request = request.header(tally_common::api::TOKEN_HEADER, token);
    }
    let response = request.send().await?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("promotion refused ({status}): {body}");
    }
    let report: tally_common::api::PromoteReport = serde_json::from_str(&body)?;
    println!(
        "{} promoted: it held everything up to {}; commits {}..={} are lost",
        report.counter,
        report.held_through,
        report.held_through.0 + 1,
        report.decided
    );
    Ok(())
}

/// A number of coordinators that has a majority to lose: 1, 3, 5 or 7 (the
/// coordinator refuses any other `--peers`).
fn coordinator_count(s: &str) -> Result<usize, String> {
    match s.trim().parse() {
        Ok(n @ (1 | 3 | 5 | 7)) => Ok(n),
        _ => Err(format!("{s:?}: give 1, 3, 5 or 7 coordinators")),
    }
}

async fn run_cluster(
    counters: usize,
    coordinators: usize,
    base_port: u16,
    data_dir: PathBuf,
    health_interval: Duration,
) -> anyhow::Result<()> {
    let mut options = ClusterOptions::new(&data_dir, counters);
    options.coordinators = coordinators;
    options.base_port = Some(base_port);
    options.health_interval = health_interval;
    options.inherit_output = true;
    // The processes run with a cluster token, as a deployment should: the
    // one in TALLY_CLUSTER_TOKEN, else a fresh random one, printed below
    // for a counter started by hand.
    let token = std::env::var("TALLY_CLUSTER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    options.cluster_token = Some(token.clone());
    let mut cluster = LocalCluster::spawn(options)?;
    // Up when every counter is in sync; a process that exits meanwhile is
    // reported at once (its own error is just above, on this terminal).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exited) = cluster.exited() {
            bail!("the cluster did not come up: {exited}");
        }
        match cluster.wait_all_in_sync(Duration::from_millis(500)).await {
            Ok(()) => break,
            Err(_) if std::time::Instant::now() < deadline => {}
            Err(_) => {
                let view = cluster.api().cluster().await;
                bail!(
                    "the cluster did not come up within 30 s: not every counter is live and in \
                     sync.\nThe coordinator's view: {}",
                    match view {
                        Ok(view) if view.counters.is_empty() => "no counter registered".into(),
                        Ok(view) => view
                            .counters
                            .iter()
                            .map(|c| format!(
                                "{} {:?}{}",
                                c.id.0,
                                c.state,
                                if c.in_sync {
                                    ", in sync"
                                } else {
                                    ", not in sync"
                                }
                            ))
                            .collect::<Vec<_>>()
                            .join("; "),
                        Err(e) => format!("no answer ({e})"),
                    }
                );
            }
        }
    }
    println!("\ntally is running (data in {}):", data_dir.display());
    match cluster.coordinator_urls() {
        [one] => println!("  coordinator  {one}"),
        several => {
            for (i, url) in several.iter().enumerate() {
                println!("  {:<13}  {url}", format!("coordinator-{}", i + 1));
            }
        }
    }
    for c in cluster.counters() {
        println!("  {:<11}  {}", c.id, c.url);
    }
    println!("  cluster token (TALLY_CLUSTER_TOKEN): {token}");
    println!(
        "\ntry:  curl {0}/items -d '[{{\"id\":\"item1\",\"tenant\":\"test\"}}]'\n      curl {0}/items/test/count\nCtrl-C stops everything.\n",
        cluster.coordinator_url()
    );
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    cluster.stop_all()
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-sim-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

fn load_table(report: &load::LoadReport) -> Table {
    let mut t = Table::new([
        "requests ok",
        "req/s",
        "items/s",
        "p50",
        "p90",
        "p99",
        "max",
        "errors",
    ]);
    let errors = report.errors();
    t.row([
        report.requests_ok().to_string(),
        format!("{:.0}", report.requests_per_sec()),
        format!("{:.0}", report.items_per_sec()),
        ms(report.latency(50.0)),
        ms(report.latency(90.0)),
        ms(report.latency(99.0)),
        ms(report.latency(100.0)),
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    ]);
    t
}

fn load_json(report: &load::LoadReport, verified: bool) -> serde_json::Value {
    serde_json::json!({
        "requests_ok": report.requests_ok(),
        "items_ok": report.items_ok(),
        "seconds": report.elapsed.as_secs_f64(),
        "requests_per_sec": report.requests_per_sec(),
        "items_per_sec": report.items_per_sec(),
        "p50_ms": report.latency(50.0).as_secs_f64() * 1000.0,
        "p90_ms": report.latency(90.0).as_secs_f64() * 1000.0,
        "p99_ms": report.latency(99.0).as_secs_f64() * 1000.0,
        "max_ms": report.latency(100.0).as_secs_f64() * 1000.0,
        "errors": report.errors(),
        "verified": verified,
    })
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)?;
    Ok(())
}

fn finish_verification(
    report: &load::LoadReport,
    verification: &load::Verification,
) -> anyhow::Result<()> {
    if verification.passed() {
        println!(
            "{}",
            verdict(
                true,
                &format!(
                    "verified: {} tenants hold exactly the {} acknowledged items",
                    verification.tenants,
                    report.items_ok()
                )
            )
        );
        Ok(())
    } else {
        for m in verification.mismatches.iter().take(20) {
            println!("{m}");
        }
        println!("{}", verdict(false, "verification FAILED"));
        bail!("{} count mismatches", verification.mismatches.len())
    }
}

/// Waits until the coordinator lists at least `n` counters live and in sync.
async fn wait_for_counters(coordinator: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let api = Api::new(coordinator);
    simulate::wait::until(
        &format!("{n} counters live and in sync at {coordinator}"),
        timeout,
        || async {
            let view = api.cluster().await?;
            let ready = view
                .counters
                .iter()
                .filter(|c| c.in_sync && c.state == tally_common::api::CounterState::Live)
                .count();
            if ready >= n {
                Ok(())
            } else {
                Err(format!("{ready} of {n} ready"))
            }
        },
    )
    .await
}

async fn status(coordinator: &str) -> anyhow::Result<()> {
    let api = Api::new(coordinator);
    let view = api
        .cluster()
        .await
        .map_err(|e| anyhow::anyhow!("coordinator at {coordinator} does not answer: {e}"))?;
    let mut t = Table::new([
        "id",
        "url",
        "state",
        "in sync",
        "applied",
        "lag",
        "last seen",
    ]);
    for c in &view.counters {
        t.row([
            c.id.0.clone(),
            c.url.clone(),
            format!("{:?}", c.state).to_lowercase(),
            if c.in_sync { "yes" } else { "no" }.to_string(),
            c.applied_index.to_string(),
            c.lag.to_string(),
            c.last_seen_ms_ago
                .map_or("never".to_string(), |ms| format!("{ms}ms ago")),
        ]);
    }
    print!("{}", t.render());
    println!(
        "\n{} counters, {} in sync (min {}), decided index {}",
        view.counters.len(),
        view.in_sync,
        view.min_insync,
        view.decided_index
    );
    for c in &view.counters {
        if let Some(copy) = &c.catch_up {
            println!(
                "{} copying from {}: {} of about {} items, {}/s{}",
                c.id,
                copy.peer,
                copy.copied,
                copy.total,
                copy.items_per_sec,
                copy.eta_secs
                    .map_or(String::new(), |s| format!(", about {s}s left"))
            );
        }
    }
    if let Some(problem) = &view.availability.problem {
        println!("\n{}: {problem}", view.availability.status);
    }
    Ok(())
}
