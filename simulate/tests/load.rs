//! Concurrent writers, with and without kill -9 of a counter or of the
//! coordinator in the middle: afterwards every acknowledged item is counted
//! by the coordinator and by every in-sync counter, and nothing else is.

use simulate::api::{Api, WriteOutcome};
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::load::{self, LoadOptions, LoadReport};
use std::time::Duration;
use tally_common::Item;

/// Counters index new keys every 1,000 instead of every million, so that
/// these loads go through indexing many times, and a counter killed
/// mid-load has keys to reload from its commit log.
async fn cluster(dir: &tempfile::TempDir) -> LocalCluster {
    let mut options = ClusterOptions::new(dir.path(), 3);
    options
        .counter_env
        .push(("TALLY_INDEX_BATCH_KEYS".into(), "1000".into()));
    LocalCluster::start(options).await.expect("cluster starts")
}

/// Starts 16 clients × 500 single-item requests in the background.
fn start_load(api: &Api) -> tokio::task::JoinHandle<LoadReport> {
    let api = api.clone();
    tokio::spawn(async move {
        let options = LoadOptions::new(16, 500, 1);
        load::run(&api, &options).await
    })
}

/// Waits until the coordinator has decided at least `index` transactions,
/// i.e. the load is well under way.
async fn wait_for_progress(api: &Api, index: u64) {
    simulate::wait::until("load progress", Duration::from_secs(60), || async {
        let view = api.cluster().await?;
        if view.decided_index.0 >= index {
            Ok(())
        } else {
            Err(format!("decided {}", view.decided_index))
        }
    })
    .await
    .unwrap();
}

fn urls(cluster: &LocalCluster, which: &[usize]) -> Vec<String> {
    which
        .iter()
        .map(|&i| cluster.counters()[i].url.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    let singles = start_load(&api);
    let bulk = {
        let api = api.clone();
        tokio::spawn(async move { load::run(&api, &LoadOptions::new(4, 5, 1000)).await })
    };
    let singles = singles.await.unwrap();
    let bulk = bulk.await.unwrap();
    assert_eq!(singles.requests_ok(), 16 * 500, "{:?}", singles.errors());
    assert_eq!(bulk.items_ok(), 4 * 5 * 1000, "{:?}", bulk.errors());

    let all = urls(&cluster, &[0, 1, 2]);
    for report in [&singles, &bulk] {
        let verification = load::verify(&api, &all, report).await;
        assert!(verification.passed(), "{:?}", verification.mismatches);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_counter_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    let running = start_load(&api);
    wait_for_progress(&api, 20).await;
    cluster.kill_counter(0).unwrap();
    let report = running.await.unwrap();
    assert!(report.requests_ok() > 0);
    let survivors = urls(&cluster, &[1, 2]);
    let verification = load::verify(&api, &survivors, &report).await;
    assert!(verification.passed(), "{:?}", verification.mismatches);

    // Back on the same data directory, it catches up and agrees exactly.
    cluster.start_counter(0).unwrap();
    cluster
        .wait_all_in_sync(Duration::from_secs(60))
        .await
        .unwrap();
    let all = urls(&cluster, &[0, 1, 2]);
    let verification = load::verify(&api, &all, &report).await;
    assert!(verification.passed(), "{:?}", verification.mismatches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_coordinator_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    let running = start_load(&api);
    wait_for_progress(&api, 20).await;
    cluster.kill_coordinator().unwrap();
    // Requests now fail to connect; start it again on the same data.
    cluster.start_coordinator().unwrap();
    let report = running.await.unwrap();
    cluster
        .wait_all_in_sync(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(report.requests_ok() > 0);

    // Acknowledged items are all counted; 503s never; unknowns either way.
    let all = urls(&cluster, &[0, 1, 2]);
    let verification = load::verify(&api, &all, &report).await;
    assert!(verification.passed(), "{:?}", verification.mismatches);

    // And the cluster takes writes again.
    let item = [Item::new("after-restart", "post-crash")];
    assert_eq!(api.add(&item).await, WriteOutcome::Ok);
    assert_eq!(api.count("post-crash").await, Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api = cluster.api().clone();
    let running = start_load(&api);
    wait_for_progress(&api, 20).await;
    assert_eq!(
        cluster.stop_counter(2).unwrap(),
        Some(0),
        "counter exit code"
    );
    assert_eq!(
        cluster.stop_coordinator().unwrap(),
        Some(0),
        "coordinator exit code"
    );
    cluster.start_coordinator().unwrap();
    cluster.start_counter(2).unwrap();
    let report = running.await.unwrap();
    cluster
        .wait_all_in_sync(Duration::from_secs(60))
        .await
        .unwrap();
    // A clean stop answers every request it took: none is left without an
    // answer (refused connections while it was down are definite failures).
    let unknown: Vec<&str> = report
        .ops
        .iter()
        .filter_map(|o| match &o.outcome {
            WriteOutcome::Unknown(e) => Some(e.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "a request in flight at SIGTERM got no answer: {unknown:?} ({:?})",
        report.errors()
    );
    assert!(report.requests_ok() > 0);
    let all = urls(&cluster, &[0, 1, 2]);
    let verification = load::verify(&api, &all, &report).await;
    assert!(verification.passed(), "{:?}", verification.mismatches);
}
