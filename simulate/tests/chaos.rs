//! Jepsen-style runs on real processes: load with readers watching while
//! processes are killed, frozen and restarted, then a check of every
//! request's fate at every replica. Also the power cut (every process
//! killed at once) and a counter dying at its worst moment.
//!
//! `make test` runs a few seeds for seconds each; `make chaos-long` runs
//! many for longer (`TALLY_CHAOS_SEEDS`, `TALLY_CHAOS_DURATION`).

use simulate::api::WriteOutcome;
use simulate::chaos::{self, ChaosOptions, ChaosReport};
use simulate::checker;
use simulate::cluster::{bin_dir, ClusterOptions, LocalCluster};
use simulate::load::{self, LoadOptions};
use simulate::readers::{self, ReadOptions, Source};
use std::time::Duration;
use tally_common::api::CounterState;
use tally_common::Item;

const WAIT: Duration = Duration::from_secs(60);

/// Seeds from `TALLY_CHAOS_SEEDS` ("1,2,3" or "1-20"), else `default`.
fn seeds(default: &[u64]) -> Vec<u64> {
    let Ok(text) = std::env::var("TALLY_CHAOS_SEEDS") else {
        return default.to_vec();
    };
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => seeds.extend(a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap()),
            None => seeds.push(part.parse().unwrap()),
        }
    }
    seeds
}

fn default_seeds() -> bool {
    std::env::var("TALLY_CHAOS_SEEDS").is_err()
}

/// Run length from `TALLY_CHAOS_DURATION` (humantime, "30s"), else `default`.
fn duration(default: Duration) -> Duration {
    std::env::var("TALLY_CHAOS_DURATION")
        .map(|d| humantime::parse_duration(&d).expect("TALLY_CHAOS_DURATION"))
        .unwrap_or(default)
}

/// What every chaos run must show, whatever its faults.
fn assert_sound(report: &ChaosReport, seed: u64, run: Duration) {
    println!("seed {seed}:\n{}", report.render());
    let check = &report.check;
    assert!(check.passed(), "seed {seed}: set check failed");
    assert!(
        report.shared.passed(),
        "seed {seed}: shared tenants {:?}",
        report.shared.mismatches
    );
    assert!(
        report.reads.split.is_empty(),
        "seed {seed}: a reader saw part of a request: {:?}",
        report.reads.split
    );
    assert!(
        report.reads.decreases.is_empty(),
        "seed {seed}: a read went back: {:?}",
        report.reads.decreases
    );
    // Volume: the faults leave most of the run writable. On two loaded
    // cores the checked load acknowledges several hundred requests a
    // second of calm; 10 a second of run is a floor far below that.
    let floor = 10 * run.as_secs() as usize;
    assert!(
        check.ok >= floor,
        "seed {seed}: only {} acknowledged, want at least {floor}",
        check.ok
    );
    // Readers through the coordinator measured 30 to 65 answers a second
    // (they wait out freezes and restarts); 3 a second shows they read.
    assert!(
        report.reads.coordinator_reads >= 3 * run.as_secs(),
        "seed {seed}: only {} reads through the coordinator",
        report.reads.coordinator_reads
    );
    // Every unknown outcome is settled one way, the same at every replica.
    assert_eq!(
        check.resolved(),
        check.unknown,
        "seed {seed}: unknown outcomes left unsettled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fault_at_a_time_loses_splits_and_invents_nothing() {
    let run = duration(Duration::from_secs(10));
    // The default seeds each kill the coordinator at least once, so some
    // outcomes are unknown.
    for seed in seeds(&[1, 3, 4]) {
        let dir = tempfile::tempdir().unwrap();
        let report = chaos::run(dir.path(), &ChaosOptions::new(run, seed))
            .await
            .unwrap();
        assert_sound(&report, seed, run);
        if default_seeds() {
            assert!(report.kills_coordinator(), "seed {seed} was chosen for it");
        }
        if report.kills_coordinator() {
            assert!(
                report.check.unknown > 0,
                "seed {seed}: a coordinator kill under load leaves some outcome unknown"
            );
        }
    }
}

/// With `--min-insync 2`, a second counter under a fault makes
/// transactions abort, some after one counter already voted yes: those
/// 503s must leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_under_overlapping_faults_leave_no_phantom_items() {
    let run = duration(Duration::from_secs(12));
    for seed in seeds(&[5]) {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ChaosOptions::new(run, seed);
        options.min_insync = 2;
        options.overlapping = true;
        let report = chaos::run(dir.path(), &options).await.unwrap();
        assert_sound(&report, seed, run);
        if default_seeds() {
            assert!(
                report.two_counters_at_once(),
                "seed {seed} was chosen for it"
            );
        }
        if report.two_counters_at_once() {
            assert!(
                report.check.failed_503 > 0,
                "seed {seed}: two counters down with min-insync 2, yet no request failed"
            );
        }
    }
}

/// Every process killed at once (kill -9), under load, twice; all
/// restarted on the same data directories. Nothing acknowledged is lost,
/// nothing refused appears, and every request is whole or absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_of_every_process_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(ClusterOptions::new(dir.path(), 3))
        .await
        .unwrap();
    let api = cluster.api().clone();
    let mut options = LoadOptions::new(8, 2_000, 3);
    options.duration = Some(Duration::from_secs(12));
    options.tenants = 0;
    options.spread = 2;
    let load_api = api.clone();
    let running = tokio::spawn(async move { load::run(&load_api, &options).await });
    // Monotonic reads through the coordinator over the restarts: each
    // reader's own sequence, on tenants the load does not write (their
    // count is fixed) plus one that grows.
    for k in 0..20 {
        assert_eq!(
            api.add(&[Item::new(format!("steady-{k}"), "steady")]).await,
            WriteOutcome::Ok
        );
    }
    let watching = readers::start(
        &api,
        &ReadOptions {
            tenants: vec!["steady".into()],
            multiple: 1,
            sources: vec![Source::Coordinator],
            readers_per_source: 2,
            pause: Duration::from_millis(10),
            max_reads: 20_000,
            max_time: Duration::from_secs(60),
        },
    );

    for cut in 0..2 {
        let before = api.cluster().await.unwrap().decided_index.0;
        simulate::wait::until("load under way", WAIT, || async {
            let view = api.cluster().await?;
            if view.decided_index.0 >= before + 50 {
                Ok(())
            } else {
                Err(format!("decided {}", view.decided_index))
            }
        })
        .await
        .unwrap();
        cluster.kill_all().unwrap();
        println!("power cut {cut} at decided index {before}+");
        cluster.start_coordinator().unwrap();
        for i in 0..3 {
            cluster.start_counter(i).unwrap();
        }
        cluster.wait_all_in_sync(WAIT).await.unwrap();
    }
    let report = running.await.unwrap();
    let reads = watching.finish().await;
    println!("{}", reads.render());
    assert!(reads.passed(), "{}", reads.render());
    assert!(reads.coordinator_reads > 0);
    assert_eq!(api.count("steady").await, Ok(20));

    let urls: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    let check = checker::check(&api, &urls, &report).await;
    println!("{}", check.render());
    assert!(check.passed());
    assert!(check.ok >= 100, "only {} acknowledged", check.ok);
    // Requests in flight at the cut had no answer; each is settled now.
    assert!(
        check.unknown > 0,
        "a cut under load leaves outcomes unknown"
    );
    assert_eq!(check.resolved(), check.unknown);
    // Requests while everything was down, or before the restarted counters
    // had registered again, failed definitely: refused connections or 503s,
    // depending on how quickly the coordinator came back.
    assert!(
        check.not_sent + check.failed > 0,
        "requests while everything was down"
    );
}

/// Every counter votes yes, the coordinator logs the commit and tells the
/// client, and every counter dies before applying it (the counter's
/// `before-commit` failpoint); then the coordinator is killed too. After
/// all restart, the in-doubt resolution at start-up applies the commit
/// everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_every_counter_died_before_applying_survives_a_restart_of_all() {
    let dir = tempfile::tempdir().unwrap();
    let failpoint_bin = bin_dir().unwrap().join("counter-failpoints");
    assert!(
        failpoint_bin.exists(),
        "{} is missing: `make build` builds it",
        failpoint_bin.display()
    );
    let mut options = ClusterOptions::new(dir.path(), 3);
    // Stopping three counters one after another can take longer than the
    // 1 s (five 200 ms checks) after which a dead counter leaves the view,
    // and the waits below need to see each one dead: keep them in it.
    options.coordinator_args = vec!["--remove-after".into(), "100000".into()];
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let api = cluster.api().clone();
    let before: Vec<Item> = (0..5)
        .map(|k| Item::new(format!("b{k}"), "worst"))
        .collect();
    assert_eq!(api.add(&before).await, WriteOutcome::Ok);
    cluster.check_counts(&[("worst", 5)]).await.unwrap();

    // Counters back on the failpoint build, on the same data.
    let failpoint = vec![("TALLY_FAILPOINT".to_string(), "before-commit".to_string())];
    // All stopped and seen dead first, so that "all in sync" below can
    // only be the restarted processes.
    for i in 0..3 {
        assert_eq!(cluster.stop_counter(i).unwrap(), Some(0));
        cluster
            .set_counter_program(i, Some(failpoint_bin.clone()), failpoint.clone())
            .unwrap();
    }
    for i in 0..3 {
        cluster
            .wait_counter_state(i, &[CounterState::Dead], WAIT)
            .await
            .unwrap();
    }
    for i in 0..3 {
        cluster.start_counter(i).unwrap();
    }
    cluster.wait_all_in_sync(WAIT).await.unwrap();

    let items: Vec<Item> = (0..5)
        .map(|k| Item::new(format!("w{k}"), "worst"))
        .collect();
    assert_eq!(
        api.add(&items).await,
        WriteOutcome::Ok,
        "the decision is durable before the client hears"
    );
    for i in 0..3 {
        let status = cluster.wait_counter_exit(i, WAIT).unwrap_or_else(|e| {
            let log = |name: &str| {
                std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default()
            };
            panic!(
                "{e}\ncoordinator:\n{}\ncounter:\n{}",
                log("coordinator"),
                log(&format!("counter-{}", i + 1))
            )
        });
        assert!(!status.success(), "counter {i} crashed: {status}");
        let log =
            std::fs::read_to_string(dir.path().join(format!("{}.log", cluster.counters()[i].id)))
                .unwrap();
        assert!(
            log.contains("failpoint before-commit"),
            "counter {i}: {log}"
        );
    }
    cluster.kill_coordinator().unwrap();

    cluster.start_coordinator().unwrap();
    for i in 0..3 {
        cluster.set_counter_program(i, None, Vec::new()).unwrap();
        cluster.start_counter(i).unwrap();
    }
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster.check_counts(&[("worst", 10)]).await.unwrap();
    for c in cluster.counters() {
        let own = api.counter_count_detail(&c.url, "worst").await.unwrap();
        assert!(!own.partial, "{}: in sync, yet {own:?}", c.id);
    }
}
