//! `simulate chaos`: load while processes are killed, restarted and frozen
//! on a schedule drawn from a seed (the same seed replays the same
//! schedule), then the cluster is healed and checked:
//!
//! - the set checker reads every request's fate from every replica (each
//!   request writes its own tenants, several per request);
//! - a second load writes shared tenants, 5 new items to each tenant of a
//!   request, while readers (through the coordinator and at each counter)
//!   flag any count that is not a multiple of 5 and any reader whose count
//!   goes down.

use crate::checker::{self, SetCheck};
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::load::{self, LoadOptions, LoadReport, Verification};
use crate::readers::{self, ReadOptions, ReadReport, Source};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

/// One fault, at an offset from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillCounter(usize),
    FreezeCounter(usize),
    KillCoordinator,
    FreezeCoordinator,
}

impl Fault {
    /// The process it hits: counters by index, the coordinator as `None`.
    fn target(self) -> Option<usize> {
        match self {
            Fault::KillCounter(i) | Fault::FreezeCounter(i) => Some(i),
            Fault::KillCoordinator | Fault::FreezeCoordinator => None,
        }
    }
}

/// How to run a chaos session.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub duration: Duration,
    pub seed: u64,
    /// Clients of the checked load (each request its own tenants).
    pub clients: usize,
    /// The coordinator's `--min-insync`: above 1, a fault on a second
    /// counter makes transactions abort, some after a partial prepare.
    pub min_insync: usize,
    /// Let faults overlap (two counters down at once, a counter frozen
    /// while the coordinator restarts); otherwise each is healed before
    /// the next.
    pub overlapping: bool,
    /// Requests per load client at most, whatever the duration.
    pub max_requests_per_client: u64,
}

impl ChaosOptions {
    pub fn new(duration: Duration, seed: u64) -> Self {
        ChaosOptions {
            duration,
            seed,
            clients: 8,
            min_insync: 1,
            overlapping: false,
            max_requests_per_client: 20_000,
        }
    }
}

/// Everything a chaos session saw.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    pub faults: Vec<(Duration, Fault, Duration)>,
    /// The checked load, request by request.
    pub check: SetCheck,
    /// The shared-tenant load against the final counts.
    pub shared: Verification,
    pub shared_load: LoadReport,
    /// What the readers saw during the run.
    pub reads: ReadReport,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.check.passed() && self.shared.passed() && self.reads.passed()
    }

    pub fn render(&self) -> String {
        let mut out = self.check.render();
        out.push_str(&format!(
            "shared tenants: {} requests, {} acknowledged, {} mismatches {:?}\n",
            self.shared_load.ops.len(),
            self.shared_load.requests_ok(),
            self.shared.mismatches.len(),
            self.shared.mismatches.iter().take(5).collect::<Vec<_>>(),
        ));
        out.push_str(&self.reads.render());
        out
    }

    /// Whether at some moment two counters were both under a fault.
    pub fn two_counters_at_once(&self) -> bool {
        overlaps(&self.faults, |a, b| {
            a.target().is_some() && b.target().is_some() && a.target() != b.target()
        })
    }

    pub fn kills_coordinator(&self) -> bool {
        self.faults
            .iter()
            .any(|(_, f, _)| *f == Fault::KillCoordinator)
    }
}

fn overlaps(faults: &[(Duration, Fault, Duration)], pair: impl Fn(Fault, Fault) -> bool) -> bool {
    faults.iter().enumerate().any(|(i, (a_at, a, a_lasts))| {
        faults[i + 1..].iter().any(|(b_at, b, b_lasts)| {
            pair(*a, *b) && *b_at < *a_at + *a_lasts && *a_at < *b_at + *b_lasts
        })
    })
}

/// The schedule for `seed`. Without overlap: a fault every 0.6–1.8 s, each
/// healed before the next one starts, so every fault meets a cluster that
/// had a moment to recover. With overlap: a fault starts every 0.2–0.8 s
/// and lasts 0.3–2 s, on any process not already under one.
pub fn schedule(
    seed: u64,
    duration: Duration,
    counters: usize,
    overlapping: bool,
) -> Vec<(Duration, Fault, Duration)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = Duration::from_millis(500);
    let mut faults = Vec::new();
    // When each process is free again: counters, then the coordinator.
    let mut busy_until = vec![Duration::ZERO; counters + 1];
    while at < duration.saturating_sub(Duration::from_secs(1)) {
        let fault = match rng.random_range(0..10) {
            0..=3 => Fault::KillCounter(rng.random_range(0..counters)),
            4..=6 => Fault::FreezeCounter(rng.random_range(0..counters)),
            7..=8 => Fault::KillCoordinator,
            _ => Fault::FreezeCoordinator,
        };
        if !overlapping {
            let lasts = Duration::from_millis(rng.random_range(200..1200));
            faults.push((at, fault, lasts));
            at += lasts + Duration::from_millis(rng.random_range(300..900));
            continue;
        }
        let lasts = Duration::from_millis(rng.random_range(300..2000));
        let slot = fault.target().unwrap_or(counters);
        if busy_until[slot] <= at {
            // Heal before the run ends, so the load's last seconds see a
            // whole cluster.
            let lasts = lasts.min(duration.saturating_sub(at + Duration::from_millis(500)));
            busy_until[slot] = at + lasts;
            faults.push((at, fault, lasts));
        }
        at += Duration::from_millis(rng.random_range(200..800));
    }
    faults
}

/// One step of carrying out a schedule.
#[derive(Debug, Clone, Copy)]
enum Step {
    Begin(Fault),
    Heal(Fault),
}

/// Runs a chaos session on a fresh 3-counter cluster in `dir`.
pub async fn run(dir: &Path, chaos: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let mut options = ClusterOptions::new(dir, 3);
    options.health_interval = Duration::from_millis(200);
    options.coordinator_args = vec![
        "--prepare-timeout".into(),
        "500ms".into(),
        "--min-insync".into(),
        chaos.min_insync.to_string(),
    ];
    let mut cluster = LocalCluster::start(options).await?;
    let api = cluster.api().clone();
    let faults = schedule(chaos.seed, chaos.duration, 3, chaos.overlapping);
    println!(
        "chaos: seed {}, {} faults over {}, min-insync {}, {}",
        chaos.seed,
        faults.len(),
        humantime::format_duration(chaos.duration),
        chaos.min_insync,
        if chaos.overlapping {
            "overlapping"
        } else {
            "one at a time"
        }
    );

    // The checked load: every request its own two tenants, 3 items each.
    let mut checked = LoadOptions::new(chaos.clients, chaos.max_requests_per_client, 3);
    checked.duration = Some(chaos.duration);
    checked.tenants = 0;
    checked.spread = 2;
    let load_api = api.clone();
    let checked = tokio::spawn(async move { load::run(&load_api, &checked).await });

    // The shared tenants: every request 5 new items to each of two.
    let mut shared = LoadOptions::new(2, chaos.max_requests_per_client, 5);
    shared.duration = Some(chaos.duration);
    shared.tenants = 3;
    shared.spread = 2;
    let tenants: Vec<String> = (0..shared.tenants)
        .map(|n| format!("{}-t{n}", shared.prefix))
        .collect();
    let load_api = api.clone();
    let shared = tokio::spawn(async move { load::run(&load_api, &shared).await });
    let mut sources = vec![Source::Coordinator];
    sources.extend(
        cluster
            .counters()
            .iter()
            .map(|c| Source::Counter(c.url.clone())),
    );
    let watching = readers::start(
        &api,
        &ReadOptions {
            tenants,
            multiple: 5,
            sources,
            readers_per_source: 1,
            pause: Duration::from_millis(5),
            max_reads: 100_000,
            max_time: chaos.duration + Duration::from_secs(30),
        },
    );

    let mut steps: Vec<(Duration, Step)> = Vec::new();
    for &(at, fault, lasts) in &faults {
        steps.push((at, Step::Begin(fault)));
        steps.push((at + lasts, Step::Heal(fault)));
    }
    // Stable: a heal and a begin at the same instant keep schedule order.
    steps.sort_by_key(|(at, _)| *at);
    let started = Instant::now();
    for (at, step) in steps {
        tokio::time::sleep_until((started + at).into()).await;
        println!("  {:>6.2}s  {step:?}", at.as_secs_f64());
        match step {
            Step::Begin(Fault::KillCounter(i)) => cluster.kill_counter(i)?,
            Step::Heal(Fault::KillCounter(i)) => cluster.start_counter(i)?,
            Step::Begin(Fault::FreezeCounter(i)) => cluster.freeze_counter(i)?,
            Step::Heal(Fault::FreezeCounter(i)) => cluster.thaw_counter(i)?,
            Step::Begin(Fault::KillCoordinator) => cluster.kill_coordinator()?,
            Step::Heal(Fault::KillCoordinator) => cluster.start_coordinator()?,
            Step::Begin(Fault::FreezeCoordinator) => cluster.freeze_coordinator()?,
            Step::Heal(Fault::FreezeCoordinator) => cluster.thaw_coordinator()?,
        }
    }
    let checked = checked.await.context("the checked load")?;
    let shared_load = shared.await.context("the shared load")?;
    println!(
        "load: {} requests, {} acknowledged; {} on shared tenants, {} acknowledged; healing",
        checked.ops.len(),
        checked.requests_ok(),
        shared_load.ops.len(),
        shared_load.requests_ok()
    );
    cluster
        .wait_all_in_sync(Duration::from_secs(60))
        .await
        .context("the cluster did not heal")?;
    let reads = watching.finish().await;
    let urls: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    let check = checker::check(&api, &urls, &checked).await;
    let shared = load::verify(&api, &urls, &shared_load).await;
    Ok(ChaosReport {
        faults,
        check,
        shared,
        shared_load,
        reads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        for overlapping in [false, true] {
            let a = format!("{:?}", schedule(7, Duration::from_secs(20), 3, overlapping));
            let b = format!("{:?}", schedule(7, Duration::from_secs(20), 3, overlapping));
            let c = format!("{:?}", schedule(8, Duration::from_secs(20), 3, overlapping));
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }

    #[test]
    fn overlapping_faults_never_hit_one_process_twice_at_once() {
        for seed in 0..50 {
            let faults = schedule(seed, Duration::from_secs(20), 3, true);
            assert!(
                !overlaps(&faults, |a, b| a.target() == b.target()),
                "seed {seed}: {faults:?}"
            );
            let last_heal = faults.iter().map(|(at, _, l)| *at + *l).max().unwrap();
            assert!(last_heal <= Duration::from_secs(20), "seed {seed}");
        }
    }

    #[test]
    fn one_at_a_time_means_no_overlap() {
        for seed in 0..50 {
            let faults = schedule(seed, Duration::from_secs(20), 3, false);
            assert!(!overlaps(&faults, |_, _| true), "seed {seed}");
        }
    }
}
