//! Three coordinators replicating the decision log with Raft
//! (docs/consensus.md), as real processes on loopback: the leader killed
//! again and again under load, frozen past an election, two of three down,
//! and one coming back on an empty disk. Clients send to every coordinator;
//! followers pass requests to the leader.

use simulate::api::{Api, WriteOutcome};
use simulate::checker;
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::load::{self, LoadOptions, LoadReport};
use simulate::readers::{self, ReadOptions, Source};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_common::api::{CoordinatorRole, Health};
use tally_common::Item;

const WAIT: Duration = Duration::from_secs(60);

async fn three_coordinators(dir: &tempfile::TempDir) -> LocalCluster {
    let mut options = ClusterOptions::new(dir.path(), 3);
    options.coordinators = 3;
    options.health_interval = Duration::from_millis(500);
    LocalCluster::start(options)
        .await
        .expect("three coordinators and three counters come up")
}

async fn health(api: &Api) -> Result<Health, String> {
    let (status, body) = api.get("/health").await?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| e.to_string())
}

/// The coordinator that leads, once exactly one of `candidates` says so and
/// the others name it.
async fn leader(cluster: &LocalCluster, candidates: &[usize]) -> usize {
    let apis: Vec<(usize, Api)> = candidates
        .iter()
        .map(|i| (*i, cluster.coordinator_api(*i)))
        .collect();
    let urls = cluster.coordinator_urls().to_vec();
    simulate::wait::until("one leader that the others follow", WAIT, || {
        let (apis, urls) = (apis.clone(), urls.clone());
        async move {
            let mut leaders = Vec::new();
            for (i, api) in &apis {
                if health(api).await?.role == CoordinatorRole::Leader {
                    leaders.push(*i);
                }
            }
            let [one] = leaders[..] else {
                return Err(format!("leaders: {leaders:?}"));
            };
            for (i, api) in &apis {
                let view = api.cluster().await?;
                if view.leader.as_deref() != Some(urls[one].as_str()) {
                    return Err(format!("coordinator {i} names {:?}", view.leader));
                }
            }
            Ok(one)
        }
    })
    .await
    .unwrap()
}

/// Writes one item through coordinator `i` until one is acknowledged.
async fn write_until_ok(api: &Api, tenant: &str, id: &str) {
    simulate::wait::until("an acknowledged write", WAIT, || async {
        match api.add(&[Item::new(id, tenant)]).await {
            WriteOutcome::Ok => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
}

fn merge(reports: Vec<LoadReport>) -> LoadReport {
    let mut all = LoadReport::default();
    for r in reports {
        all.ops.extend(r.ops);
        all.elapsed = all.elapsed.max(r.elapsed);
    }
    all
}

/// A client that writes through one coordinator and reads through another,
/// one after the other: a read that starts after a write was acknowledged
/// must count it, whichever coordinators took the two and whatever leader
/// change came between. Returns the reads that missed an acknowledged
/// write.
async fn probe_fresh_reads(apis: Vec<Api>, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let mut acknowledged = 0u64;
    let mut stale = Vec::new();
    let mut k = 0usize;
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
        k += 1;
        let (writer, reader) = (&apis[k % apis.len()], &apis[(k + 1) % apis.len()]);
        let outcome = writer
            .add(&[Item::new(format!("fresh-{k}"), "fresh")])
            .await;
        if outcome == WriteOutcome::Ok {
            acknowledged += 1;
        }
        if let Ok(count) = reader.count("fresh").await {
            if count < acknowledged {
                stale.push(format!(
                    "read {count} through {} after {acknowledged} acknowledged",
                    reader.base()
                ));
            }
        }
    }
    (acknowledged, stale)
}

/// kill -9 of whichever coordinator leads, three times, while writers send
/// to all three coordinators and readers read through all three: nothing
/// acknowledged is lost, nothing refused is counted, every request is
/// whole, no reader sees a count go down or miss a write acknowledged
/// before its read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_again_and_again_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = three_coordinators(&dir).await;
    let apis: Vec<Api> = (0..3).map(|i| cluster.coordinator_api(i)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn(probe_fresh_reads(apis.clone(), stop.clone()));
    let mut loads = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let mut options = LoadOptions::new(3, 100_000, 5);
        options.requests = None;
        options.duration = Some(Duration::from_secs(9));
        options.tenants = 0;
        options.prefix = format!("{}-via{i}", options.prefix);
        let api = api.clone();
        loads.push(tokio::spawn(async move { load::run(&api, &options).await }));
    }
    let mut reader_sets = Vec::new();
    for api in &apis {
        let options = ReadOptions {
            tenants: vec!["fresh".into()],
            multiple: 1,
            sources: vec![Source::Coordinator],
            readers_per_source: 1,
            pause: Duration::from_millis(20),
            max_reads: 5_000,
            max_time: Duration::from_secs(60),
        };
        reader_sets.push(readers::start(api, &options));
    }

    let mut killed = Vec::new();
    let mut seen = 0;
    for _ in 0..3 {
        // Writes flow again (the probe's count grows) before each kill.
        let api = apis[0].clone();
        seen = simulate::wait::until("writes to flow again", WAIT, || {
            let api = api.clone();
            async move {
                match api.count("fresh").await {
                    Ok(n) if n >= seen + 20 => Ok(n),
                    other => Err(format!("{other:?}, {seen} before")),
                }
            }
        })
        .await
        .unwrap();
        let leading = leader(&cluster, &[0, 1, 2]).await;
        cluster.kill_coordinator_at(leading).unwrap();
        killed.push(leading);
        let others: Vec<usize> = (0..3).filter(|i| *i != leading).collect();
        let next = leader(&cluster, &others).await;
        assert_ne!(next, leading);
        cluster.start_coordinator_at(leading).unwrap();
    }

    let reports = futures_util::future::join_all(loads).await;
    let report = merge(reports.into_iter().map(|r| r.unwrap()).collect());
    stop.store(true, Ordering::SeqCst);
    let (fresh_acked, stale) = probe.await.unwrap();
    let mut read_reports = Vec::new();
    for set in reader_sets {
        read_reports.push(set.finish().await);
    }

    cluster.wait_all_in_sync(WAIT).await.unwrap();
    let counters: Vec<String> = cluster.counters().iter().map(|c| c.url.clone()).collect();
    let check = checker::check(cluster.api(), &counters, &report).await;
    assert!(check.passed(), "killed {killed:?}:\n{}", check.render());
    assert!(
        check.ok > 100,
        "too few writes acknowledged to prove anything:\n{}",
        check.render()
    );
    assert!(stale.is_empty(), "stale reads: {stale:?}");
    assert!(
        fresh_acked > 10,
        "the probe got {fresh_acked} writes through"
    );
    for r in &read_reports {
        assert!(r.passed(), "{}", r.render());
        assert!(r.reads > 0, "a reader read nothing");
    }
    // The cluster counts the probe's tenant the same through each.
    let mut counts = Vec::new();
    for api in &apis {
        counts.push(api.count("fresh").await.unwrap());
    }
    assert!(counts.iter().all(|c| *c == counts[0]) && counts[0] >= fresh_acked);
}

/// SIGSTOP of the leader for longer than an election takes: the others
/// elect a new one and go on. Writes sent to the frozen one meanwhile wait
/// in its socket; after SIGCONT it must not acknowledge any of them on its
/// own authority: whatever it answers 200 is counted, and it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_acknowledges_nothing_after_it_was_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_coordinators(&dir).await;
    let old = leader(&cluster, &[0, 1, 2]).await;
    let old_api = cluster.coordinator_api(old);
    write_until_ok(&old_api, "before", "b-1").await;

    cluster.freeze_coordinator_at(old).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = leader(&cluster, &others).await;
    // Requests to the frozen leader queue up in its socket.
    let mut stuck = Vec::new();
    for k in 0..20 {
        let api = old_api.clone();
        stuck.push(tokio::spawn(async move {
            let id = format!("frozen-{k}");
            (id.clone(), api.add(&[Item::new(id, "frozen")]).await)
        }));
    }
    let new_api = cluster.coordinator_api(new);
    for k in 0..20 {
        write_until_ok(&new_api, "meanwhile", &format!("m-{k}")).await;
    }
    cluster.thaw_coordinator_at(old).unwrap();

    let mut acknowledged = 0;
    for task in stuck {
        let (_, outcome) = task.await.unwrap();
        if outcome == WriteOutcome::Ok {
            acknowledged += 1;
        }
    }
    // It rejoined as a follower of the new leader.
    assert_eq!(leader(&cluster, &[0, 1, 2]).await, new);
    let role = health(&old_api).await.unwrap().role;
    assert_eq!(role, CoordinatorRole::Follower);
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    let counted = new_api.count("frozen").await.unwrap();
    assert!(
        counted >= acknowledged,
        "{acknowledged} writes acknowledged through the old leader, {counted} counted"
    );
    assert_eq!(new_api.count("meanwhile").await.unwrap(), 20);
    assert_eq!(old_api.count("before").await.unwrap(), 1);

    // A follower exports its own metrics: its role, the term, elections.
    let (status, metrics) = old_api.get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("tally_coordinator_role{role=\"follower\"} 1"),
        "{metrics}"
    );
    let term = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_raft_term "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no tally_raft_term:\n{metrics}"));
    assert!(term >= 2.0, "a second leader means a second term: {term}");
    assert!(metrics.contains("tally_raft_elections_total"), "{metrics}");
}

/// Two of three coordinators down: no majority, so no write may be
/// acknowledged and nothing is counted; one back, and everything
/// acknowledged before is there and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_coordinators_down_refuse_writes_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = three_coordinators(&dir).await;
    let api = cluster.coordinator_api(0);
    for k in 0..30 {
        write_until_ok(&api, "kept", &format!("k-{k}")).await;
    }
    cluster.kill_coordinator_at(1).unwrap();
    cluster.kill_coordinator_at(2).unwrap();
    // Coordinator 0 alone: it may have led, but it cannot stay leader
    // without a majority, and nothing it is sent may be acknowledged.
    let survivor = cluster.coordinator_api(0);
    simulate::wait::until("the survivor to stop leading", WAIT, || async {
        match health(&survivor).await?.role {
            CoordinatorRole::Leader => Err("still leads".to_string()),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    let mut outcomes = Vec::new();
    for k in 0..10 {
        outcomes.push(
            survivor
                .add(&[Item::new(format!("x-{k}"), "refused")])
                .await,
        );
    }
    for outcome in &outcomes {
        assert!(
            matches!(outcome, WriteOutcome::Failed(503, _)),
            "without a majority a write must be refused with 503: {outcome:?}"
        );
    }

    cluster.start_coordinator_at(2).unwrap();
    leader(&cluster, &[0, 2]).await;
    write_until_ok(&survivor, "after", "a-1").await;
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    assert_eq!(survivor.count("kept").await.unwrap(), 30);
    assert_eq!(survivor.count("refused").await.unwrap(), 0);
    assert_eq!(survivor.count("after").await.unwrap(), 1);
}

/// A coordinator whose data directory is lost comes back empty: it must
/// rejoin from the others (snapshot and log) without voting first, and then
/// be able to lead with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_coordinator_catches_up_and_can_lead_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = three_coordinators(&dir).await;
    let first = leader(&cluster, &[0, 1, 2]).await;
    let victim = (first + 1) % 3;
    let api = cluster.coordinator_api(first);
    // More than a snapshot's worth of log entries (one per decision batch).
    for k in 0..1200 {
        write_until_ok(&api, "kept", &format!("k-{k}")).await;
    }
    cluster.kill_coordinator_at(victim).unwrap();
    cluster.wipe_coordinator_at(victim).unwrap();
    cluster.start_coordinator_at(victim).unwrap();
    let victim_api = cluster.coordinator_api(victim);
    // It comes back rejoining, and ends up an ordinary follower holding
    // the log up to the leader's.
    simulate::wait::until("the wiped coordinator to catch up", WAIT, || async {
        let (status, body) = victim_api.get("/internal/raft/status").await?;
        let raft: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if status != 200 || raft["has_log"] != true || raft["rejoining"] != false {
            return Err(format!("{status}: {body}"));
        }
        let view = api.cluster().await?;
        let me = &view.coordinators[victim];
        if me.role == CoordinatorRole::Follower && me.lag == 0 && me.log_index > 0 {
            Ok(())
        } else {
            Err(format!("{me:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", cluster.coordinator_log(victim)));
    let role = health(&victim_api)
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", cluster.coordinator_log(victim)))
        .role;
    assert_eq!(role, CoordinatorRole::Follower);
    assert!(
        cluster
            .coordinator_log(victim)
            .contains("rejoining (it votes again once it holds"),
        "it started as a rejoining member, not as a fresh one"
    );

    // Kill whoever leads until the wiped one does: it must be electable.
    let mut rounds = 0;
    loop {
        let leading = leader(&cluster, &[0, 1, 2]).await;
        if leading == victim {
            break;
        }
        rounds += 1;
        assert!(
            rounds < 12,
            "the rejoined coordinator never led in {rounds} elections"
        );
        cluster.kill_coordinator_at(leading).unwrap();
        let others: Vec<usize> = (0..3).filter(|i| *i != leading).collect();
        leader(&cluster, &others).await;
        cluster.start_coordinator_at(leading).unwrap();
    }
    write_until_ok(&victim_api, "after", "a-1").await;
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    assert_eq!(victim_api.count("kept").await.unwrap(), 1200);
    assert_eq!(victim_api.count("after").await.unwrap(), 1);
}
