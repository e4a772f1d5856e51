//! Counters fail, stall, lose their disks and come back; the coordinator
//! crashes between deciding and telling. Through all of it the cluster
//! serves correct counts and every replica converges.

use simulate::api::WriteOutcome;
use simulate::cluster::{bin_dir, ClusterOptions, LocalCluster};
use simulate::load::{self, LoadOptions, LoadReport};
use simulate::scenario::{self, ProcessBackend};
use std::time::{Duration, Instant};
use tally_common::api::CounterState;
use tally_common::Item;

const WAIT: Duration = Duration::from_secs(60);

async fn cluster(dir: &tempfile::TempDir) -> LocalCluster {
    LocalCluster::start(ClusterOptions::new(dir.path(), 3))
        .await
        .expect("cluster starts")
}

fn all_urls(cluster: &LocalCluster) -> Vec<String> {
    cluster.counters().iter().map(|c| c.url.clone()).collect()
}

/// `(since, items)` of each completed copy ("copied from peer") in the
/// log of a counter's latest run.
fn copies_since_last_start(log: &str) -> Vec<(u64, u64)> {
    let run = log.rsplit("counter starting").next().unwrap_or("");
    let field = |line: &str, name: &str| -> u64 {
        let at = line.find(&format!(" {name}=")).expect(name) + name.len() + 2;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect(name)
    };
    run.lines()
        .filter(|l| l.contains("copied from peer"))
        .map(|l| (field(l, "since"), field(l, "items")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_scenario_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = ProcessBackend(cluster(&dir).await);
    scenario::run(&mut backend, Duration::from_secs(30))
        .await
        .expect("every step of the walkthrough scenario holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_that_missed_20000_items_catches_up_with_only_the_delta() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    api.add_bulk("catch", "before", 1000).await.unwrap();
    let decided_before = api.cluster().await.unwrap().decided_index.0;
    assert!(decided_before > 0);
    // Clients hear of a commit before counters apply it; wait until this
    // counter holds it, so what it misses is exactly what comes next.
    simulate::wait::until("counter 3 applied the first batch", WAIT, || async {
        let view = api.cluster().await?;
        match view.counters.iter().find(|c| c.id.0 == "counter-3") {
            Some(c) if c.applied_index.0 >= decided_before => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    cluster.kill_counter(2).unwrap();
    api.add_bulk("catch", "while-down", 20_000).await.unwrap();
    cluster.start_counter(2).unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster.check_counts(&[("catch", 21_000)]).await.unwrap();
    // Every copy since the restart starts where this counter stood and,
    // together, copies exactly the 20,000 items it missed.
    let log = cluster.counter_log(2);
    let copies = copies_since_last_start(&log);
    assert!(!copies.is_empty(), "no copy logged:\n{log}");
    for (since, _) in &copies {
        assert_eq!(
            *since, decided_before,
            "copied from the wrong index:\n{log}"
        );
    }
    let copied: u64 = copies.iter().map(|(_, items)| items).sum();
    assert_eq!(copied, 20_000, "items copied:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_with_a_wiped_disk_copies_everything_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    api.add_bulk("wipe", "before", 5000).await.unwrap();
    cluster.kill_counter(1).unwrap();
    cluster.wipe_counter(1).unwrap();
    api.add_bulk("wipe", "while-down", 20_000).await.unwrap();
    cluster.start_counter(1).unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster.check_counts(&[("wipe", 25_000)]).await.unwrap();
    let log = cluster.counter_log(1);
    let copies = copies_since_last_start(&log);
    assert!(copies.iter().all(|(since, _)| *since == 0), "{log}");
    let copied: u64 = copies.iter().map(|(_, items)| items).sum();
    assert_eq!(copied, 25_000, "a wiped counter copies everything:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_counter_leaves_the_in_sync_set_and_rejoins_after_thaw() {
    let dir = tempfile::tempdir().unwrap();
    // A read sent to the frozen counter would wait the whole read timeout;
    // 10 s sets it far from an answer that never went there.
    let mut options = ClusterOptions::new(dir.path(), 3);
    options.coordinator_args = vec!["--read-timeout".into(), "10s".into()];
    let cluster = LocalCluster::start(options).await.unwrap();
    let api = cluster.api().clone();
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut options = LoadOptions::new(8, 0, 5);
            options.requests = None;
            options.duration = Some(Duration::from_secs(6));
            load::run(&api, &options).await
        })
    };
    cluster.freeze_counter(0).unwrap();
    cluster.wait_out_of_sync(0, WAIT).await.unwrap();
    // Reads never wait on the frozen counter: one that went there would
    // take the 10 s read timeout; on two loaded cores an answer from a
    // live counter takes well under half of that.
    for _ in 0..30 {
        let started = Instant::now();
        api.count("anything").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a read took {:?}",
            started.elapsed()
        );
    }
    cluster.thaw_counter(0).unwrap();
    let report: LoadReport = writer.await.unwrap();
    assert!(
        report.requests_ok() > 100,
        "writes went on: {:?}",
        report.errors()
    );
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    let verification = load::verify(&api, &all_urls(&cluster), &report).await;
    assert!(verification.passed(), "{:?}", verification.mismatches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_counter_down_nothing_is_served_or_counted_until_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    api.add_bulk("outage", "before", 10).await.unwrap();
    for i in 0..3 {
        cluster.kill_counter(i).unwrap();
    }
    for i in 0..3 {
        cluster
            .wait_counter_state(i, &[CounterState::Dead], WAIT)
            .await
            .unwrap();
    }
    let refused = api.add(&[Item::new("refused", "outage")]).await;
    assert!(
        matches!(refused, WriteOutcome::Failed(503, _)),
        "{refused:?}"
    );
    let read = api.count("outage").await;
    assert!(
        read.as_ref().is_err_and(|e| e.starts_with("503")),
        "{read:?}"
    );

    for i in 0..3 {
        cluster.start_counter(i).unwrap();
    }
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster.check_counts(&[("outage", 10)]).await.unwrap();
    assert_eq!(
        api.add(&[Item::new("after", "outage")]).await,
        WriteOutcome::Ok
    );
    cluster.check_counts(&[("outage", 11)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_logged_before_a_coordinator_crash_reaches_every_counter() {
    let dir = tempfile::tempdir().unwrap();
    let failpoint_bin = bin_dir().unwrap().join("coordinator-failpoints");
    assert!(
        failpoint_bin.exists(),
        "{} is missing: `make build` builds it",
        failpoint_bin.display()
    );
    let mut options = ClusterOptions::new(dir.path(), 3);
    options.coordinator_bin = Some(failpoint_bin);
    options.coordinator_env = vec![("TALLY_FAILPOINT".into(), "after-decision".into())];
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let api = cluster.api().clone();

    // The coordinator logs the commit, then dies before sending it.
    let outcome = api.add(&[Item::new("in-doubt", "crash")]).await;
    assert!(matches!(outcome, WriteOutcome::Unknown(_)), "{outcome:?}");
    for c in cluster.counters() {
        assert_eq!(api.counter_count(&c.url, "crash").await, Ok(0), "not yet");
    }
    let status = cluster.wait_coordinator_exit(WAIT).unwrap();
    assert!(!status.success(), "the failpoint aborts: {status}");
    cluster.set_coordinator_env(vec![]);
    cluster.start_coordinator().unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    for c in cluster.counters() {
        let url = c.url.clone();
        simulate::wait::until("commit applied", WAIT, || {
            let (api, url) = (api.clone(), url.clone());
            async move {
                match api.counter_count(&url, "crash").await {
                    Ok(1) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
        .unwrap();
    }
    assert_eq!(api.count("crash").await, Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_that_missed_only_repeated_items_still_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    api.add_bulk("repeat", "same", 100).await.unwrap();
    cluster.kill_counter(0).unwrap();
    // Client retries: every commit while it is down adds nothing new, so
    // no peer logs an entry for those indexes.
    for _ in 0..5 {
        api.add_bulk("repeat", "same", 100).await.unwrap();
    }
    cluster.start_counter(0).unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster.check_counts(&[("repeat", 100)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_peer_dies_mid_transfer_continues_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 3);
    // Peers send at most 10,000 items/s, so copying 60,000 takes about
    // 6 s: time enough to see which peer it copies from and kill that one
    // mid-stream.
    options.counter_env = vec![("TALLY_CATCH_UP_RATE".into(), "10000".into())];
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let api = cluster.api().clone();
    cluster.stop_counter(2).unwrap();
    cluster
        .wait_out_of_sync(2, Duration::from_secs(10))
        .await
        .unwrap();
    api.add_bulk("relay", "r", 60_000).await.unwrap();
    cluster.start_counter(2).unwrap();
    let peer = simulate::wait::until("copy started", Duration::from_secs(20), || async {
        let log = cluster.counter_log(2);
        let line = log
            .lines()
            .find(|l| l.contains("copying from peer"))
            .ok_or_else(|| "no copy yet".to_string())?;
        (0..2)
            .find(|&i| line.contains(&cluster.counters()[i].url))
            .ok_or_else(|| format!("no known peer in {line}"))
    })
    .await
    .unwrap();
    cluster.kill_counter(peer).unwrap();
    simulate::wait::until("copy failed over", Duration::from_secs(30), || async {
        let log = cluster.counter_log(2);
        let failed = log.contains("copy from peer failed");
        let done = log.contains("copied from peer");
        if failed && done {
            Ok(())
        } else {
            Err(format!("failed: {failed}, done: {done}"))
        }
    })
    .await
    .unwrap();
    let survivor = cluster.counters()[1 - peer].id.clone();
    let joiner = cluster.counters()[2].id.clone();
    cluster
        .wait_in_sync(&[survivor, joiner], Duration::from_secs(60))
        .await
        .unwrap();
    cluster.start_counter(peer).unwrap();
    cluster
        .wait_all_in_sync(Duration::from_secs(60))
        .await
        .unwrap();
    cluster.check_counts(&[("relay", 60_000)]).await.unwrap();
}
