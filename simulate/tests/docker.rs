//! The cluster in containers, across a real bridge network: the
//! walkthrough scenario with the docker backend, a network partition, `docker kill` of
//! the coordinator, and scaling from 3 to 5 counters, each under load; and
//! three coordinators whose leader is cut off from the network.
//!
//! Each test runs its own compose project (own network, containers and
//! volumes, removed by a drop guard even on failure) from the image that
//! `make docker-images` builds from Dockerfile.dev. Without a Docker engine,
//! or without `docker compose` / `docker-compose`, each test says on one
//! line that it is skipped and passes, unless `TALLY_REQUIRE_DOCKER=1`.

use simulate::api::{Api, WriteOutcome};
use simulate::docker::{self, ComposeProject, DockerBackend};
use simulate::load::{self, LoadOptions, LoadReport};
use simulate::scenario;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_common::api::{ClusterView, CoordinatorRole, CounterState, Health};
use tally_common::Item;

const WAIT: Duration = Duration::from_secs(90);
const IMAGE: &str = "tally:dev";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the development image once if it is missing (`make test` builds
/// it before the tests, from the current binaries).
fn ensure_image() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return;
    }
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let bins = simulate::cluster::bin_dir().expect("release binaries");
        let context = repo().join("target/docker");
        let status = std::process::Command::new(repo().join("scripts/docker-context.sh"))
            .arg(&bins)
            .arg(&context)
            .status()
            .expect("scripts/docker-context.sh runs");
        assert!(status.success());
        let status = std::process::Command::new("docker")
            .args(["build", "-q", "-t", IMAGE, "-f"])
            .arg(context.join("Dockerfile.dev"))
            .arg(&context)
            .status()
            .expect("docker build runs");
        assert!(status.success());
    }
    *built = true;
}

/// A compose project and its settings file. Fields drop in order: the
/// project (`down -v`) before the directory.
struct Project {
    compose: ComposeProject,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Project {
    type Target = ComposeProject;
    fn deref(&self) -> &ComposeProject {
        &self.compose
    }
}

/// Why the Docker tests cannot run here, if they cannot: no engine, or an
/// engine but neither `docker compose` nor `docker-compose`.
fn missing_docker() -> Option<String> {
    if !docker::engine_reachable() {
        return Some("no Docker engine reachable".into());
    }
    docker::compose_command().err().map(|e| format!("{e}"))
}

/// A fresh compose project named after the test, or `None` (after saying
/// so on one line) when Docker or compose is missing. With
/// `TALLY_REQUIRE_DOCKER=1` (CI sets it) a missing piece fails the test
/// instead: a machine meant to run them must not pass by skipping.
async fn project(test: &str, counters: usize) -> Option<Project> {
    project_of(test, 1, counters).await
}

/// The same with `coordinators` coordinators (1, or 3, 5 or 7 from the
/// compose file `make up COORDINATORS=n` uses), once one of them leads and
/// every counter is in sync.
async fn project_of(test: &str, coordinators: u16, counters: usize) -> Option<Project> {
    if let Some(why) = missing_docker() {
        if std::env::var("TALLY_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
            panic!("{test}: {why}, and TALLY_REQUIRE_DOCKER=1 requires the Docker tests");
        }
        // Straight to stderr, past the test harness's capture, so the
        // skip shows in `make test`'s output.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
        return None;
    }
    ensure_image();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("test.env");
    // The coordinator checks counters every 200 ms, so failures and
    // recoveries show within a second; a counter cut off stays in the
    // cluster view for 50 checks (10 s), as it would for 50 s by default.
    // A token as `make up` generates one: every internal call between the
    // containers must carry it for the cluster to come up at all.
    std::fs::write(
        &env_file,
        format!(
            "TALLY_HEALTH_INTERVAL=200ms\nTALLY_REMOVE_AFTER=50\nRUST_LOG=info\nTALLY_CLUSTER_TOKEN={:032x}\n",
            rand::random::<u128>()
        ),
    )
    .unwrap();
    let name = format!(
        "tallytest{}{:x}",
        test.replace('_', ""),
        rand::random::<u16>()
    );
    let file = repo().join("docker-compose.yml");
    let compose = if coordinators == 1 {
        ComposeProject::new(&name, &file, &env_file, IMAGE)
    } else {
        ComposeProject::with_coordinators(&name, &file, &env_file, IMAGE, coordinators, dir.path())
    }
    .unwrap();
    // The guard exists before anything starts, so a failed `up` is
    // cleaned up too.
    let project = Project { compose, _dir: dir };
    project.up(counters).await.expect("compose up");
    if coordinators > 1 {
        wait_leader(&Api::new(project.url()), None).await;
    }
    wait_in_sync(&project, counters).await;
    Some(project)
}

/// Waits until the coordinator lists `n` counters, every one live and in
/// sync, and returns their ids (host names).
async fn wait_in_sync(project: &ComposeProject, n: usize) -> Vec<String> {
    wait_in_sync_at(&Api::new(project.url()), n).await
}

/// The same through the coordinator behind `api`.
async fn wait_in_sync_at(api: &Api, n: usize) -> Vec<String> {
    simulate::wait::until(&format!("{n} counters in sync"), WAIT, || async {
        let view = api.cluster().await?;
        let ready: Vec<String> = view
            .counters
            .iter()
            .filter(|c| c.in_sync && c.state == CounterState::Live)
            .map(|c| c.id.0.clone())
            .collect();
        if ready.len() == n && view.counters.len() == n {
            Ok(ready)
        } else {
            Err(format!("{view:?}"))
        }
    })
    .await
    .unwrap()
}

/// Counter URLs as the host reaches them now (IPs change on restart).
async fn counter_urls(project: &ComposeProject) -> Vec<String> {
    project
        .counters()
        .await
        .unwrap()
        .iter()
        .map(|c| c.counter_url().expect("running counter has an IP"))
        .collect()
}

fn start_load(
    api: &Api,
    clients: usize,
    batch: usize,
    seconds: u64,
) -> tokio::task::JoinHandle<LoadReport> {
    let api = api.clone();
    tokio::spawn(async move {
        let mut options = LoadOptions::new(clients, 0, batch);
        options.requests = None;
        options.duration = Some(Duration::from_secs(seconds));
        load::run(&api, &options).await
    })
}

/// Waits until the coordinator's decided index reaches `index`.
async fn wait_decided(api: &Api, index: u64) {
    simulate::wait::until(&format!("decided index {index}"), WAIT, || async {
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

async fn decided(api: &Api) -> u64 {
    api.cluster().await.unwrap().decided_index.0
}

/// Every acknowledged item is counted by the coordinator and by each
/// counter, and the counters agree exactly with each other.
async fn assert_converged(api: &Api, urls: &[String], report: &LoadReport) {
    let verification = load::verify(api, urls, report).await;
    assert!(verification.passed(), "{:?}", verification.mismatches);
    for tenant in report.acknowledged_per_tenant().keys() {
        let mut counts = Vec::new();
        for url in urls {
            counts.push(api.counter_count(url, tenant).await.unwrap());
        }
        assert!(
            counts.windows(2).all(|w| w[0] == w[1]),
            "{tenant}: counters disagree: {counts:?}"
        );
    }
}

async fn started_at(container: &str) -> String {
    docker::docker(&["inspect", "-f", "{{.State.StartedAt}}", container])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_scenario_holds_in_containers() {
    let Some(project) = project("scenario", 3).await else {
        return;
    };
    let mut backend = DockerBackend::connect(&project.project, &project.url())
        .await
        .unwrap();
    assert_eq!(backend.counters().len(), 3);
    scenario::run(&mut backend, Duration::from_secs(60))
        .await
        .expect("every step of the walkthrough scenario holds in containers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_counter_leaves_the_in_sync_set_and_converges_after_reconnect() {
    let Some(project) = project("partition", 3).await else {
        return;
    };
    let api = Api::new(project.url());
    let network = project.network().await.unwrap();
    let victim = project.counters().await.unwrap().remove(0);
    let writer = start_load(&api, 8, 5, 12);
    wait_decided(&api, 20).await;

    docker::docker(&["network", "disconnect", &network, &victim.id])
        .await
        .unwrap();
    simulate::wait::until("partitioned counter out of sync", WAIT, || async {
        let view = api.cluster().await?;
        match view.counters.iter().find(|c| c.id.0 == victim.host_name) {
            Some(c) if c.in_sync || c.state == CounterState::Live => Err(format!("{c:?}")),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    // Writes go on without it.
    let at_partition = decided(&api).await;
    wait_decided(&api, at_partition + 20).await;
    // No read goes to it: a read sent there would wait for a connect
    // timeout on an address that is gone; every read answers quickly.
    for _ in 0..30 {
        let started = Instant::now();
        api.count("anything").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a read took {:?}",
            started.elapsed()
        );
    }
    let view = api.cluster().await.unwrap();
    let cut_off = view.counters.iter().find(|c| c.id.0 == victim.host_name);
    assert!(cut_off.is_none_or(|c| !c.in_sync), "{cut_off:?}");

    // Reconnect under the same DNS names (its host name and the service).
    docker::docker(&[
        "network",
        "connect",
        "--alias",
        &victim.host_name,
        "--alias",
        "counter",
        &network,
        &victim.id,
    ])
    .await
    .unwrap();
    let report = writer.await.unwrap();
    assert!(report.requests_ok() > 100, "{:?}", report.errors());
    wait_in_sync(&project, 3).await;
    assert_converged(&api, &counter_urls(&project).await, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_docker_kill_of_the_coordinator() {
    let Some(project) = project("kill", 3).await else {
        return;
    };
    let api = Api::new(project.url());
    let coordinator = project.coordinator().await.unwrap();
    let writer = start_load(&api, 8, 1, 12);
    wait_decided(&api, 30).await;

    let first_start = started_at(&coordinator.id).await;
    docker::docker(&["kill", &coordinator.id]).await.unwrap();
    let killed = Instant::now();
    // `restart: on-failure` may already have restarted it; start is then
    // a no-op.
    docker::docker(&["start", &coordinator.id]).await.unwrap();
    simulate::wait::until("coordinator back", WAIT, || async {
        match api.get("/health").await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    eprintln!("coordinator back after {:?}", killed.elapsed());
    assert_ne!(
        started_at(&coordinator.id).await,
        first_start,
        "it was restarted"
    );
    let after_restart = decided(&api).await;
    let report = writer.await.unwrap();
    assert!(
        decided(&api).await > after_restart,
        "writes resumed after the restart"
    );
    assert!(report.requests_ok() > 100, "{:?}", report.errors());
    wait_in_sync(&project, 3).await;
    assert_converged(&api, &counter_urls(&project).await, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_scaled_from_3_to_5_during_load_catch_up_exactly() {
    let Some(project) = project("scale", 3).await else {
        return;
    };
    let api = Api::new(project.url());
    let writer = start_load(&api, 8, 5, 12);
    wait_decided(&api, 30).await;

    project.up(5).await.expect("scale to 5");
    let report = writer.await.unwrap();
    assert!(report.requests_ok() > 100, "{:?}", report.errors());
    let ids = wait_in_sync(&project, 5).await;
    let hosts: Vec<String> = project
        .counters()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.host_name)
        .collect();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    let mut sorted_hosts = hosts.clone();
    sorted_hosts.sort();
    assert_eq!(sorted_ids, sorted_hosts, "member ids are the host names");
    let urls = counter_urls(&project).await;
    assert_eq!(urls.len(), 5);
    assert_converged(&api, &urls, &report).await;
}

/// Waits until the coordinator behind `api` names a leader (other than
/// `not`) and sees every other coordinator follow it, and returns its
/// view.
async fn wait_leader(api: &Api, not: Option<&str>) -> ClusterView {
    simulate::wait::until("a leader followed by every coordinator", WAIT, || async {
        let view = api.cluster().await?;
        let settled = view.coordinators.iter().all(|c| {
            let leads = view.leader.as_deref() == Some(c.url.as_str());
            c.role
                == if leads {
                    CoordinatorRole::Leader
                } else {
                    CoordinatorRole::Follower
                }
        });
        match view.leader.as_deref() {
            Some(leader) if settled && not != Some(leader) => Ok(view),
            _ => Err(format!("leader {:?}, {:?}", view.leader, view.coordinators)),
        }
    })
    .await
    .unwrap()
}

/// A coordinator's compose service from its advertised URL
/// (`http://coordinator-2:8080` is service `coordinator-2`).
fn service_of(url: &str) -> &str {
    url.trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or_default()
}

/// Where the host reaches `service`'s coordinator now, at its address on
/// the project's network (it changes when the container reconnects).
async fn coordinator_api(project: &ComposeProject, service: &str) -> Api {
    let container = project.container(service).await.unwrap();
    Api::new(
        container
            .coordinator_url()
            .expect("a connected coordinator has an IP"),
    )
}

fn items(tenant: &str, prefix: &str, n: usize) -> Vec<Item> {
    (0..n)
        .map(|k| Item::new(format!("{prefix}-{k}"), tenant))
        .collect()
}

/// Sends `items` through `api` until they are acknowledged, and returns
/// the answers before that. A retry is safe: an item is counted once
/// however often it is sent.
async fn write_acknowledged(api: &Api, what: &str, items: &[Item]) -> Vec<String> {
    let refused = Mutex::new(Vec::new());
    simulate::wait::until(what, WAIT, || async {
        let started = Instant::now();
        match api.add(items).await {
            WriteOutcome::Ok => Ok(()),
            other => {
                let seen = format!("{other:?} after {:?}", started.elapsed());
                refused.lock().unwrap().push(seen.clone());
                Err(seen)
            }
        }
    })
    .await
    .unwrap();
    refused.into_inner().unwrap()
}

/// Three coordinators in containers; the leader's container is taken off
/// the network. The other two elect a leader among themselves and keep
/// acknowledging writes; the old leader, connected again, follows the new
/// one, and every coordinator reads every acknowledged item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_keep_writing_when_the_leader_is_disconnected_and_it_rejoins_as_follower(
) {
    let Some(project) = project_of("leadercut", 3, 3).await else {
        return;
    };
    let services = ["coordinator", "coordinator-2", "coordinator-3"];
    let network = project.network().await.unwrap();
    let view = wait_leader(&Api::new(project.url()), None).await;
    assert_eq!(view.coordinators.len(), 3, "{view:?}");
    let old_leader = view.leader.clone().unwrap();
    let old_service = service_of(&old_leader);
    assert!(services.contains(&old_service), "{old_leader}");
    let survivor = *services.iter().find(|s| **s != old_service).unwrap();
    let victim = project.container(old_service).await.unwrap();

    // Written before the cut, through the leader.
    let tenant = "cut";
    let leader_api = coordinator_api(&project, old_service).await;
    for batch in 0..5 {
        let before = items(tenant, &format!("before-{batch}"), 20);
        write_acknowledged(&leader_api, "a write through the leader", &before).await;
    }
    let mut acknowledged = 100;

    docker::docker(&["network", "disconnect", &network, &victim.id])
        .await
        .unwrap();
    let cut = Instant::now();
    // Through another coordinator, which forwards to whichever leads: the
    // first write is acknowledged once the two left elected one of them.
    let api = coordinator_api(&project, survivor).await;
    let refused = write_acknowledged(
        &api,
        "the first write after the cut",
        &items(tenant, "after-0", 20),
    )
    .await;
    eprintln!(
        "first write acknowledged {:?} after the cut; before it: {refused:?}",
        cut.elapsed()
    );
    // A write forwarded to the old leader must not wait out the client's
    // whole timeout (15 s): the forward ends when leadership moves. The
    // first write has landed 0.4 s after the cut in some runs and about
    // 10 s after it in others, with the followers still naming the cut-off
    // leader meanwhile; why the election waits that long in containers is
    // not understood yet (docs/consensus.md, "Limits"). The bound catches
    // the hang, not that.
    assert!(
        cut.elapsed() < Duration::from_secs(14),
        "{:?}: {refused:?}",
        cut.elapsed()
    );
    acknowledged += 20;
    // A new leader, which no longer hears the old one.
    simulate::wait::until("the old leader unreachable", WAIT, || async {
        let view = api.cluster().await?;
        let old = view.coordinators.iter().find(|c| c.url == old_leader);
        match (view.leader.as_deref(), old.map(|c| c.role)) {
            (Some(leader), Some(CoordinatorRole::Unreachable)) if leader != old_leader => Ok(()),
            _ => Err(format!("leader {:?}, {:?}", view.leader, view.coordinators)),
        }
    })
    .await
    .unwrap();
    for batch in 1..10 {
        let after = items(tenant, &format!("after-{batch}"), 20);
        assert_eq!(api.add(&after).await, WriteOutcome::Ok, "batch {batch}");
        acknowledged += 20;
    }

    // Connected again under the names the others reach it by.
    docker::docker(&[
        "network",
        "connect",
        "--alias",
        old_service,
        "--alias",
        &victim.host_name,
        &network,
        &victim.id,
    ])
    .await
    .unwrap();
    let rejoined = coordinator_api(&project, old_service).await;
    simulate::wait::until("the old leader a follower", WAIT, || async {
        let (status, body) = rejoined.get("/health").await?;
        let health: Health = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        match (status, health.role) {
            (200, CoordinatorRole::Follower) => Ok(()),
            _ => Err(format!("{status} {body}")),
        }
    })
    .await
    .unwrap();
    // It caught up: the leader sees it following with nothing missing.
    let view = wait_leader(&api, Some(&old_leader)).await;
    simulate::wait::until("the old leader caught up", WAIT, || async {
        let view = api.cluster().await?;
        let old = view
            .coordinators
            .iter()
            .find(|c| c.url == old_leader)
            .unwrap();
        if old.role == CoordinatorRole::Follower && old.lag == 0 {
            Ok(())
        } else {
            Err(format!("{view:?}"))
        }
    })
    .await
    .unwrap();
    eprintln!("after the reconnect: leader {:?}", view.leader);

    // Every acknowledged item, read through each coordinator, the one that
    // was cut off included; and every counter holds them.
    for service in services {
        let api = coordinator_api(&project, service).await;
        let count = simulate::wait::until(&format!("a count through {service}"), WAIT, || {
            let api = api.clone();
            async move { api.count(tenant).await }
        })
        .await
        .unwrap();
        assert_eq!(count, acknowledged, "through {service}");
    }
    wait_in_sync_at(&api, 3).await;
    for url in counter_urls(&project).await {
        assert_eq!(
            api.counter_count(&url, tenant).await,
            Ok(acknowledged),
            "counter at {url}"
        );
    }
}
