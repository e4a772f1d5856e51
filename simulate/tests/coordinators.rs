//! Counters given several coordinator URLs, and what a coordinator says of
//! the group of coordinators (`GET /cluster`, `GET /health`). A coordinator
//! alone leads its group of one.

use simulate::api::{Api, WriteOutcome};
use simulate::cluster::{free_port, ClusterOptions, LocalCluster};
use std::time::Duration;
use tally_common::api::{ClusterView, CoordinatorRole, Health};
use tally_common::Item;

const WAIT: Duration = Duration::from_secs(30);

async fn health(api: &Api) -> Health {
    let (status, body) = api.get("/health").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn items(tenant: &str, prefix: &str, n: usize) -> Vec<Item> {
    (0..n)
        .map(|k| Item::new(format!("{prefix}-{k}"), tenant))
        .collect()
}

/// Each counter is told of a coordinator where nothing listens before the
/// real one: it passes over it to register, the cluster serves, and after
/// the real coordinator restarts the counters find it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_pass_over_a_dead_coordinator_and_the_cluster_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 2);
    let dead = format!("http://127.0.0.1:{}", free_port().unwrap());
    options.unreachable_coordinators = vec![dead.clone()];
    let mut cluster = LocalCluster::start(options)
        .await
        .expect("counters register past the dead coordinator");
    let api = cluster.api().clone();
    assert_eq!(api.add(&items("t", "a", 10)).await, WriteOutcome::Ok);
    cluster.check_counts(&[("t", 10)]).await.unwrap();

    // A new coordinator epoch: each counter registers again, and neither
    // the dead address nor the one that stopped answering a moment ago
    // keeps it from the coordinator that is back.
    cluster.kill_coordinator().unwrap();
    cluster.start_coordinator().unwrap();
    cluster.wait_coordinator(WAIT).await.unwrap();
    cluster.wait_all_in_sync(WAIT).await.unwrap();
    let outcome = simulate::wait::until("a write after the restart", WAIT, || {
        let api = api.clone();
        async move {
            match api.add(&items("t", "b", 5)).await {
                WriteOutcome::Ok => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    outcome.unwrap();
    cluster.check_counts(&[("t", 15)]).await.unwrap();
    for i in 0..2 {
        let log = cluster.counter_log(i);
        let registrations = log.matches("registered with the coordinator").count();
        assert!(registrations >= 2, "{registrations} registrations:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_coordinator_is_the_leader_of_its_group_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterOptions::new(dir.path(), 1))
        .await
        .unwrap();
    let api = cluster.api();
    assert_eq!(api.add(&items("t", "a", 3)).await, WriteOutcome::Ok);
    let view: ClusterView = api.cluster().await.unwrap();
    let me = cluster.coordinator_url();
    assert_eq!(view.leader.as_deref(), Some(me), "{view:?}");
    let [only] = view.coordinators.as_slice() else {
        panic!("one coordinator expected: {view:?}")
    };
    assert_eq!(only.url, me);
    assert_eq!(only.role, CoordinatorRole::Leader);
    assert_eq!(only.log_index, view.decided_index.0);
    assert!(only.log_index > 0, "a write was decided: {view:?}");
    assert_eq!(only.lag, 0);
    assert_eq!(health(api).await.role, CoordinatorRole::Leader);

    // On the wire: the names an operator's script reads.
    let (_, body) = api.get("/cluster").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["leader"], me);
    assert_eq!(json["coordinators"][0]["role"], "leader");
    let (_, body) = api.get("/health").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["role"], "leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertised_coordinator_names_itself_by_that_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 1);
    options.coordinator_args = vec![
        "--advertise".into(),
        "http://tally-coordinator:8080/".into(),
    ];
    let cluster = LocalCluster::start(options).await.unwrap();
    let view = cluster.api().cluster().await.unwrap();
    assert_eq!(
        view.leader.as_deref(),
        Some("http://tally-coordinator:8080")
    );
    assert_eq!(view.coordinators[0].url, "http://tally-coordinator:8080");
}
