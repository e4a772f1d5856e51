//! `simulate chaos`: load while processes are killed, restarted and frozen
//! on a schedule drawn from a seed (the same seed replays the same
//! schedule), then the cluster is healed and the set checker reads every
//! request's fate from every replica.

use crate::checker::{self, SetCheck};
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::load::{self, LoadOptions};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

/// One fault, at an offset from the start of the run.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillCounter(usize),
    FreezeCounter(usize),
    KillCoordinator,
    FreezeCoordinator,
}

/// The schedule for `seed`: a fault every 0.6–1.8 s, each healed before
/// the next one starts, so every fault meets a cluster that had a moment
/// to recover.
fn schedule(seed: u64, duration: Duration, counters: usize) -> Vec<(Duration, Fault, Duration)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = Duration::from_millis(500);
    let mut faults = Vec::new();
    while at < duration.saturating_sub(Duration::from_secs(1)) {
        let fault = match rng.random_range(0..10) {
            0..=3 => Fault::KillCounter(rng.random_range(0..counters)),
            4..=6 => Fault::FreezeCounter(rng.random_range(0..counters)),
            7..=8 => Fault::KillCoordinator,
            _ => Fault::FreezeCoordinator,
        };
        let lasts = Duration::from_millis(rng.random_range(200..1200));
        faults.push((at, fault, lasts));
        at += lasts + Duration::from_millis(rng.random_range(300..900));
    }
    faults
}

/// Runs a chaos session on a fresh 3-counter cluster in `dir`.
pub async fn run(
    dir: &Path,
    duration: Duration,
    seed: u64,
    clients: usize,
) -> anyhow::Result<SetCheck> {
    let mut options = ClusterOptions::new(dir, 3);
    options.health_interval = Duration::from_millis(200);
    options.coordinator_args = vec!["--prepare-timeout".into(), "500ms".into()];
    let mut cluster = LocalCluster::start(options).await?;
    let api = cluster.api().clone();
    let faults = schedule(seed, duration, 3);
    println!(
        "chaos: seed {seed}, {} faults over {}",
        faults.len(),
        humantime::format_duration(duration)
    );

    let mut load_options = LoadOptions::new(clients, 0, 3);
    load_options.requests = None;
    load_options.duration = Some(duration);
    load_options.tenants = 0;
    let load_api = api.clone();
    let load = tokio::spawn(async move { load::run(&load_api, &load_options).await });

    let started = Instant::now();
    for (at, fault, lasts) in faults {
        tokio::time::sleep_until((started + at).into()).await;
        println!("  {:>6.1}s  {fault:?} for {lasts:?}", at.as_secs_f64());
        match fault {
            Fault::KillCounter(i) => {
                cluster.kill_counter(i)?;
                tokio::time::sleep(lasts).await;
                cluster.start_counter(i)?;
            }
            Fault::FreezeCounter(i) => {
                cluster.freeze_counter(i)?;
                tokio::time::sleep(lasts).await;
                cluster.thaw_counter(i)?;
            }
            Fault::KillCoordinator => {
                cluster.kill_coordinator()?;
                tokio::time::sleep(lasts).await;
                cluster.start_coordinator()?;
            }
            Fault::FreezeCoordinator => {
                let pid = cluster
                    .coordinator_pid()
                    .context("coordinator not running")?;
                // SAFETY: signals to the coordinator process this cluster spawned.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
                tokio::time::sleep(lasts).await;
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
            }
        }
    }
    let report = load.await?;
    println!(
        "load: {} requests, {} acknowledged; healing the cluster",
        report.ops.len(),
        report.requests_ok()
    );
    cluster
        .wait_all_in_sync(Duration::from_secs(60))
        .await
        .context("the cluster did not heal")?;
    let urls: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    Ok(checker::check(&api, &urls, &report).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        let a = format!("{:?}", schedule(7, Duration::from_secs(20), 3));
        let b = format!("{:?}", schedule(7, Duration::from_secs(20), 3));
        let c = format!("{:?}", schedule(8, Duration::from_secs(20), 3));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
