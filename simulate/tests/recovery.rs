//! Recovery after lost disks, restarts of everything and long copies: the
//! cases where a counter could be trusted for data it no longer has, or a
//! cluster could wait for ever. Each test here failed against the version
//! before the fix it guards (docs/testing.md says how that was checked).

use simulate::api::{Api, WriteOutcome};
use simulate::cluster::{ClusterOptions, LocalCluster};
use std::time::Duration;
use tally_common::api::{CounterState, PromoteReport};
use tally_common::{CommitIndex, Item};

const WAIT: Duration = Duration::from_secs(60);

async fn cluster(dir: &tempfile::TempDir, counters: usize) -> LocalCluster {
    LocalCluster::start(ClusterOptions::new(dir.path(), counters))
        .await
        .expect("cluster starts")
}

/// Single-item writes, one after another; how many were acknowledged.
async fn write_singles(api: &Api, tenant: &str, n: usize) -> Vec<WriteOutcome> {
    let mut outcomes = Vec::new();
    for k in 0..n {
        outcomes.push(api.add(&[Item::new(format!("{tenant}-{k}"), tenant)]).await);
    }
    outcomes
}

fn acknowledged(outcomes: &[WriteOutcome]) -> usize {
    outcomes.iter().filter(|o| **o == WriteOutcome::Ok).count()
}

/// Waits until counter `i` itself answers its `/health`.
async fn wait_counter_up(cluster: &LocalCluster, i: usize) {
    let (api, url) = (cluster.api().clone(), cluster.counters()[i].url.clone());
    simulate::wait::until("counter answers", WAIT, || async {
        api.counter_health(&url).await.map(drop)
    })
    .await
    .unwrap();
}

/// Everything stops; one counter's disk is lost; it comes back first, alone,
/// and the coordinator restarts with the in-sync set it persisted. The
/// counter must not vote as the member it was: before the fix it did, 27
/// writes were acknowledged by it alone, and the cluster then refused every
/// read and write for ever, since nobody held everything decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_on_an_empty_disk_never_votes_for_the_member_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 3).await;
    let api = cluster.api().clone();
    api.add_bulk("kept", "before", 2000).await.unwrap();
    cluster.check_counts(&[("kept", 2000)]).await.unwrap();

    cluster.kill_coordinator().unwrap();
    for i in 0..3 {
        cluster.kill_counter(i).unwrap();
    }
    cluster.wipe_counter(0).unwrap();
    cluster.start_counter(0).unwrap();
    wait_counter_up(&cluster, 0).await;
    cluster.start_coordinator().unwrap();
    cluster.wait_coordinator(WAIT).await.unwrap();

    // Only the wiped counter runs: nothing may be acknowledged.
    let outcomes = write_singles(&api, "window", 30).await;
    assert_eq!(
        acknowledged(&outcomes),
        0,
        "a counter on an empty disk voted as an in-sync member: {outcomes:?}"
    );
    let health = api.get("/health").await.unwrap().1;
    assert!(health.contains("stalled"), "{health}");

    cluster.start_counter(1).unwrap();
    cluster.start_counter(2).unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster
        .check_counts(&[("kept", 2000), ("window", 0)])
        .await
        .unwrap();
    let view = api.cluster().await.unwrap();
    assert_eq!(view.availability.status, "ok", "{view:?}");
    assert!(cluster.counter_log(0).contains("since=0"));
}

/// A dead counter restarted on an empty disk answers health checks but
/// never registers (here: it is pointed at the wrong coordinator). Before
/// the fix, a health answer kept the larger of the old and new applied
/// index and promoted it: it then voted alone for writes that no other
/// counter held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_answer_from_an_empty_disk_promotes_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 3);
    // Keep the dead counter in the view, so that health checks reach it.
    options.coordinator_args = vec!["--remove-after".into(), "100000".into()];
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let api = cluster.api().clone();
    api.add_bulk("kept", "before", 1000).await.unwrap();
    cluster.check_counts(&[("kept", 1000)]).await.unwrap();
    let old_disk = api
        .counter_health(&cluster.counters()[0].url)
        .await
        .unwrap();

    cluster.kill_counter(0).unwrap();
    cluster
        .wait_counter_state(0, &[CounterState::Dead], WAIT)
        .await
        .unwrap();
    cluster.wipe_counter(0).unwrap();
    cluster.set_counter_arg(0, "--coordinator", "http://127.0.0.1:9");
    cluster.start_counter(0).unwrap();
    wait_counter_up(&cluster, 0).await;
    let new_disk = api
        .counter_health(&cluster.counters()[0].url)
        .await
        .unwrap();
    // The coordinator sees it through health checks only.
    simulate::wait::until(
        "the counter answering health checks again",
        WAIT,
        || async {
            let view = api.cluster().await?;
            match view.counters.iter().find(|c| c.id.0 == "counter-1") {
                Some(c) if c.state != CounterState::Dead => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let view = api.cluster().await.unwrap();
    let c = view
        .counters
        .iter()
        .find(|c| c.id.0 == "counter-1")
        .unwrap();
    assert!(!c.in_sync, "promoted on a health answer: {c:?}");
    assert!(!c.registered, "{c:?}");
    assert_ne!(old_disk.incarnation, new_disk.incarnation);
    assert_eq!(c.incarnation, Some(new_disk.incarnation), "{c:?}");

    // With the other two gone, nothing can be acknowledged.
    cluster.kill_counter(1).unwrap();
    cluster.kill_counter(2).unwrap();
    let outcomes = write_singles(&api, "alone", 10).await;
    assert_eq!(acknowledged(&outcomes), 0, "{outcomes:?}");

    cluster.start_counter(1).unwrap();
    cluster.start_counter(2).unwrap();
    cluster
        .wait_in_sync(&["counter-2".to_string(), "counter-3".to_string()], WAIT)
        .await
        .unwrap();
    // Pointed at the coordinator, it registers, copies and joins.
    cluster.kill_counter(0).unwrap();
    let coordinator = cluster.coordinator_url().to_string();
    cluster.set_counter_arg(0, "--coordinator", &coordinator);
    cluster.start_counter(0).unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster
        .check_counts(&[("kept", 1000), ("alone", 0)])
        .await
        .unwrap();
}

/// A counter's disk restored from an older copy keeps its incarnation, so
/// only what it holds can give it away. With the coordinator restarted in
/// between (so it remembers no applied index), the trim point and the
/// re-sent commits must: the restored counter never serves alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_restored_from_an_old_copy_never_serves_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 2).await;
    let api = cluster.api().clone();
    api.add_bulk("t", "old", 100).await.unwrap();
    cluster.check_counts(&[("t", 100)]).await.unwrap();
    assert_eq!(cluster.stop_counter(0).unwrap(), Some(0));
    let data = cluster.counters()[0].data_dir.clone();
    let backup = dir.path().join("backup");
    copy_dir(&data, &backup);
    cluster.start_counter(0).unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    api.add_bulk("t", "new", 100).await.unwrap();
    cluster.check_counts(&[("t", 200)]).await.unwrap();

    cluster.kill_coordinator().unwrap();
    cluster.kill_counter(0).unwrap();
    cluster.kill_counter(1).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    cluster.start_coordinator().unwrap();
    cluster.start_counter(0).unwrap();
    cluster.wait_coordinator(WAIT).await.unwrap();
    wait_counter_up(&cluster, 0).await;
    // It registers at once; give the re-sent commits their round too.
    simulate::wait::until("counter-1 registered", WAIT, || async {
        let view = api.cluster().await?;
        match view.counters.iter().find(|c| c.id.0 == "counter-1") {
            Some(c) if c.registered && !c.in_sync => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(api.count("t").await.is_err(), "a stale read was served");
    assert_eq!(acknowledged(&write_singles(&api, "alone", 5).await), 0);

    cluster.start_counter(1).unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster
        .check_counts(&[("t", 200), ("alone", 0)])
        .await
        .unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy that takes far longer than any timeout involved, cut in the
/// middle by a kill -9 of the only peer it can copy from. Before the fix
/// the counter's client gave every call 30 s in all, the copy's stream
/// included, and a cut copy started again from its first entry: a copy
/// over 30 s never finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_longer_than_every_timeout_and_cut_midway_finishes() {
    const ITEMS: usize = 300_000;
    const RATE: u64 = 8_000; // items/s: about 38 s for the whole copy
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 2);
    options.counter_args = vec!["--catch-up-rate".into(), RATE.to_string()];
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let api = cluster.api().clone();
    cluster.kill_counter(1).unwrap();
    cluster.wipe_counter(1).unwrap();
    api.add_bulk("big", "item", ITEMS).await.unwrap();
    cluster.start_counter(1).unwrap();

    // Wait until a third has arrived, noting the progress the cluster
    // view shows for the copy meanwhile.
    let joiner_url = cluster.counters()[1].url.clone();
    let progress = std::sync::Arc::new(std::sync::Mutex::new(None));
    simulate::wait::until("a third of the copy", WAIT, || {
        let (api, joiner_url, seen) = (api.clone(), joiner_url.clone(), progress.clone());
        async move {
            let view = api.cluster().await?;
            let joiner = view.counters.iter().find(|c| c.id.0 == "counter-2");
            if let Some(p) = joiner.and_then(|c| c.catch_up.clone()) {
                *seen.lock().unwrap() = Some(p);
            }
            match api.counter_count(&joiner_url, "big").await? {
                n if n >= ITEMS as u64 / 3 => Ok(()),
                n => Err(format!("{n} items copied")),
            }
        }
    })
    .await
    .unwrap();

    // Cut it: the source dies, and comes back on the same disk.
    cluster.kill_counter(0).unwrap();
    cluster.start_counter(0).unwrap();
    simulate::wait::until("the copy finished", Duration::from_secs(120), || async {
        let view = api.cluster().await?;
        match view.counters.iter().find(|c| c.id.0 == "counter-2") {
            Some(c) if c.in_sync && c.state == CounterState::Live => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    cluster
        .check_counts(&[("big", ITEMS as u64)])
        .await
        .unwrap();
    let progress = progress.lock().unwrap().clone();
    let progress = progress.expect("the cluster view showed the copy's progress");
    assert_eq!(progress.peer, cluster.counters()[0].url);
    assert!(
        progress.total >= ITEMS as u64 && progress.total < ITEMS as u64 * 11 / 10,
        "{progress:?}"
    );
    assert!(progress.copied > 0 && progress.items_per_sec > 0 && progress.eta_secs.is_some());
    let log = cluster.counter_log(1);
    assert!(log.contains("resuming a cut copy"), "{log}");
}

/// Every complete copy is gone for good: the cluster says it is stalled and
/// why, and an operator may promote the most complete counter, giving up
/// what it lacks. Never automatic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_cluster_says_why_and_an_operator_can_promote_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 2).await;
    let api = cluster.api().clone();
    api.add_bulk("t", "both", 100).await.unwrap();
    cluster.check_counts(&[("t", 100)]).await.unwrap();
    cluster.kill_counter(1).unwrap();
    // Acknowledged by counter-1 alone.
    let outcomes = write_singles(&api, "t", 50).await;
    assert_eq!(acknowledged(&outcomes), 50, "{outcomes:?}");
    let decided = api.cluster().await.unwrap().decided_index;

    // counter-1's disk is lost: nobody holds the last 50 writes.
    cluster.kill_counter(0).unwrap();
    cluster.wipe_counter(0).unwrap();
    cluster.start_counter(0).unwrap();
    cluster.start_counter(1).unwrap();
    let problem = simulate::wait::until("a stall reported", WAIT, || async {
        let (_, body) = api.get("/health").await?;
        let health: tally_common::api::Health =
            serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let view = api.cluster().await?;
        // Both back: a dead member keeps its registration mark until it
        // answers again, so "registered" alone can be the old one.
        let back = view
            .counters
            .iter()
            .all(|c| c.registered && c.state != CounterState::Dead);
        match health.problem {
            Some(p) if health.status == "stalled" && back => Ok(p),
            _ => Err(body),
        }
    })
    .await
    .unwrap();
    assert!(problem.contains("no counter can prove"), "{problem}");
    assert!(
        problem.contains("counter-2 (joining, holds up to "),
        "{problem}"
    );
    assert!(problem.contains(&format!("needs {decided}")), "{problem}");
    assert_eq!(acknowledged(&write_singles(&api, "refused", 3).await), 0);
    assert!(api.count("t").await.is_err(), "no read while stalled");

    // Refused without the explicit acknowledgement of the loss.
    let promote = |accept_loss: bool| {
        let url = format!("{}/internal/promote", cluster.coordinator_url());
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&serde_json::json!({"counter": "counter-2", "accept_loss": accept_loss}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(promote(false).await.status(), 409);
    let response = promote(true).await;
    assert_eq!(response.status(), 200);
    let report: PromoteReport = response.json().await.unwrap();
    assert_eq!(report.decided, decided);
    assert!(report.held_through < decided, "{report:?}");
    assert!(report.held_through >= CommitIndex(1), "{report:?}");

    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster.check_counts(&[("t", 100)]).await.unwrap();
    assert_eq!(acknowledged(&write_singles(&api, "after", 5).await), 5);
    cluster
        .check_counts(&[("t", 100), ("after", 5)])
        .await
        .unwrap();
    assert_eq!(promote(true).await.status(), 409, "nothing to promote now");
}

/// The only coordinator's decision log is lost for good. Started on an
/// empty directory with `--recover-decided-index` at the highest index a
/// counter applied, it lets the counters register again; the cluster says
/// it is stalled until an operator promotes the most complete counter, and
/// then every acknowledged write is counted and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_decision_log_is_recovered_from_the_counters() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 2).await;
    let api = cluster.api().clone();
    api.add_bulk("t", "bulk", 500).await.unwrap();
    assert_eq!(acknowledged(&write_singles(&api, "t", 20).await), 20);
    cluster.check_counts(&[("t", 520)]).await.unwrap();
    let urls: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    api.wait_applied(&urls, WAIT).await.unwrap();

    cluster.kill_coordinator().unwrap();
    std::fs::remove_dir_all(dir.path().join("coordinator")).unwrap();
    // What the operator reads off each counter (docs/operations.md).
    let mut highest = 0;
    for url in &urls {
        highest = highest.max(api.counter_health(url).await.unwrap().applied_index.0);
    }
    assert!(highest > 0);
    cluster.set_coordinator_arg(0, "--recover-decided-index", &highest.to_string());
    cluster.start_coordinator().unwrap();
    cluster.wait_coordinator(WAIT).await.unwrap();
    // A new coordinator knows no counter to call: restarted, each
    // registers at once (or by itself after --rejoin-after).
    for i in 0..2 {
        cluster.kill_counter(i).unwrap();
        cluster.start_counter(i).unwrap();
    }
    simulate::wait::until("the counters registered again", WAIT, || async {
        let view = api.cluster().await?;
        if view.counters.len() == 2 && view.counters.iter().all(|c| c.registered) {
            Ok(())
        } else {
            Err(format!("{view:?}"))
        }
    })
    .await
    .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/internal/promote", cluster.coordinator_url()))
        .json(&serde_json::json!({"counter": "counter-1", "accept_loss": true}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    // Either the promotion was needed and done, or the counters already
    // proved they hold everything decided.
    assert!(
        status == 200 || body.contains("nothing to promote"),
        "{status}: {body}"
    );
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    cluster.check_counts(&[("t", 520)]).await.unwrap();
    assert_eq!(acknowledged(&write_singles(&api, "after", 5).await), 5);
    cluster
        .check_counts(&[("t", 520), ("after", 5)])
        .await
        .unwrap();
}

/// A process at a counter's address that answers reads in another
/// counter's name is not read from: before the fix the coordinator
/// checked the answering id on prepare, commit and status, but not on
/// reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answered_in_another_counters_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir, 0).await;
    let epoch = 1; // the coordinator's first run
    let status = serde_json::json!({
        "id": "reader", "incarnation": 5, "registered_epoch": epoch, "applied_index": 0,
        "catching_up": false, "prepared": 0,
    });
    let count = serde_json::json!({"id": "someone-else", "count": 999});
    let (status, count) = (status.to_string(), count.to_string());
    let url = simulate::fake::fake_counter(move |request| {
        if request.contains("/internal/count") {
            count.clone()
        } else {
            status.clone()
        }
    })
    .await;
    let register =
        serde_json::json!({"id": "reader", "url": url, "incarnation": 5, "applied_index": 0});
    let response = reqwest::Client::new()
        .post(format!("{}/internal/register", cluster.coordinator_url()))
        .json(&register)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let view = cluster.api().cluster().await.unwrap();
    assert!(view.counters[0].in_sync, "{view:?}");
    for _ in 0..5 {
        let read = cluster.api().count("t").await;
        assert!(read.is_err(), "a read answered by someone else: {read:?}");
    }
}
