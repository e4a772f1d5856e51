//! Presence with real processes and real WebSocket clients: two frontends
//! (the coordinator and a presence-only coordinator) in front of three
//! counters. Totals add up across frontends; leaving, a cut connection and
//! a frozen client lower them; the owning counter killed with -9, a counter
//! joining, and a frontend killed with -9 all leave the totals right within
//! a bounded time; bounds and bad input are refused as documented.

use simulate::cluster::{bin_dir, ClusterOptions, LocalCluster};
use simulate::presence::{socket_url, wait_all_show, PresenceFrontend, PresenceSocket};
use std::time::{Duration, Instant};
use tally_common::api::{CounterState, TOKEN_HEADER};
use tally_common::presence::{owner_of, owners_from_view, Owner, PresenceKey};

const TOKEN: &str = "presence-test-token";
const WAIT: Duration = Duration::from_secs(20);
const PING: Duration = Duration::from_millis(300);
const LEASE: Duration = Duration::from_millis(1500);

fn presence_args(health: Option<Duration>) -> Vec<String> {
    let mut args = vec![
        "--presence-ping-interval".to_string(),
        humantime::format_duration(PING).to_string(),
        "--presence-lease".to_string(),
        humantime::format_duration(LEASE).to_string(),
    ];
    if let Some(health) = health {
        args.extend([
            "--health-interval".to_string(),
            humantime::format_duration(health).to_string(),
        ]);
    }
    args
}

/// A cluster of three counters with the token set, and a presence-only
/// frontend in front of it.
async fn two_frontends(
    dir: &tempfile::TempDir,
    health_interval: Duration,
    remove_after: u32,
) -> (LocalCluster, PresenceFrontend) {
    let mut options = ClusterOptions::new(dir.path(), 3);
    options.cluster_token = Some(TOKEN.into());
    options.health_interval = health_interval;
    options.coordinator_args = presence_args(None);
    options
        .coordinator_args
        .extend(["--remove-after".into(), remove_after.to_string()]);
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    let second = PresenceFrontend::start(
        &bin_dir().unwrap(),
        cluster.coordinator_url(),
        Some(TOKEN),
        &presence_args(None),
        &dir.path().join("frontend-2.log"),
    )
    .await
    .expect("the second frontend starts");
    (cluster, second)
}

async fn open(base: &str, tenant: &str, key: &str) -> PresenceSocket {
    PresenceSocket::connect(&socket_url(base, tenant, key))
        .await
        .expect("connects")
        .expect("upgrades")
}

async fn owners(cluster: &LocalCluster) -> Vec<Owner> {
    owners_from_view(&cluster.api().cluster().await.expect("cluster view"))
}

/// The total a counter holds for `key`, asked on its internal endpoint.
async fn owner_total(owner: &Owner, key: &PresenceKey) -> Result<u64, String> {
    let answer = reqwest::Client::new()
        .get(format!("{}/internal/presence/count", owner.url))
        .query(&[("tenant", &key.tenant), ("key", &key.key)])
        .header(TOKEN_HEADER, TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let count: tally_common::api::Count = answer.json().await.map_err(|e| e.to_string())?;
    Ok(count.count)
}

async fn public_count(base: &str, tenant: &str, key: &str) -> (u16, String) {
    let answer = reqwest::get(format!("{base}/presence/{tenant}/{key}/count"))
        .await
        .expect("count answers");
    (answer.status().as_u16(), answer.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sockets_see_their_totals_across_two_frontends() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, mut second) = two_frontends(&dir, Duration::from_millis(200), 5).await;
    let frontends = [
        cluster.coordinator_url().to_string(),
        second.url().to_string(),
    ];

    // 200 sockets over 4 keys, 50 each, alternating between frontends: a
    // key's total exists only at its owner.
    let keys = ["alpha", "beta", "gamma", "delta"];
    let mut sockets: Vec<Vec<PresenceSocket>> = Vec::new();
    for key in keys {
        let mut of_key = Vec::new();
        for i in 0..50 {
            of_key.push(open(&frontends[i % 2], "room", key).await);
        }
        sockets.push(of_key);
    }
    for (key, of_key) in keys.iter().zip(&sockets) {
        let all: Vec<&PresenceSocket> = of_key.iter().collect();
        wait_all_show(&format!("50 on {key}"), &all, 50, WAIT)
            .await
            .unwrap();
    }
    for base in &frontends {
        assert_eq!(
            public_count(base, "room", "alpha").await,
            (200, r#"{"count":50}"#.into())
        );
        // A key with no socket here is asked of its owner.
        assert_eq!(
            public_count(base, "room", "nobody").await,
            (200, r#"{"count":0}"#.into())
        );
    }
    let alpha = PresenceKey::new("room", "alpha");
    let owner = owner_of(&alpha, &owners(&cluster).await).unwrap().clone();
    assert_eq!(owner_total(&owner, &alpha).await, Ok(50));

    // Closing 20 sockets of alpha (10 on each frontend) lowers it to 30.
    let rest = sockets[0].split_off(20);
    for socket in std::mem::replace(&mut sockets[0], rest) {
        socket.close().await;
    }
    let all: Vec<&PresenceSocket> = sockets[0].iter().collect();
    wait_all_show("30 on alpha after 20 closed", &all, 30, WAIT)
        .await
        .unwrap();

    // 5 connections of beta cut without a close frame: dropped at once.
    let rest = sockets[1].split_off(5);
    for socket in std::mem::replace(&mut sockets[1], rest) {
        socket.cut().await;
    }
    let all: Vec<&PresenceSocket> = sockets[1].iter().collect();
    wait_all_show("45 on beta after 5 cut", &all, 45, WAIT)
        .await
        .unwrap();

    // 5 clients of gamma that stop answering: dropped by the pings, within
    // two ping intervals (one to send a ping, one to see no answer).
    let frozen = sockets[2].split_off(45);
    for socket in &frozen {
        socket.freeze();
    }
    let started = Instant::now();
    let all: Vec<&PresenceSocket> = sockets[2].iter().collect();
    wait_all_show("45 on gamma after 5 froze", &all, 45, WAIT)
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("frozen clients dropped after {took:?} (ping interval {PING:?})");
    assert!(
        took < 2 * PING + Duration::from_secs(1),
        "frozen clients took {took:?} to drop"
    );
    drop(frozen);

    // The second frontend dies with its 25 delta sockets: once its lease
    // runs out the owner drops them, and the first frontend's 25 remain.
    let started = Instant::now();
    second.kill().unwrap();
    let local: Vec<&PresenceSocket> = sockets[3].iter().step_by(2).collect();
    wait_all_show("25 on delta after a frontend died", &local, 25, WAIT)
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("a dead frontend's sockets dropped after {took:?} (lease {LEASE:?})");
    assert!(took < LEASE + Duration::from_secs(1), "took {took:?}");

    // The owners' endpoints want the cluster token.
    let refused = reqwest::get(format!(
        "{}/internal/presence/count?tenant=room&key=alpha",
        owner.url
    ))
    .await
    .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_moves_when_it_is_killed_and_when_a_counter_joins() {
    let health = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    // Dead counters stay in the view (as dead) so the join below is one.
    let (mut cluster, second) = two_frontends(&dir, health, 100_000).await;
    let (a, b) = (
        cluster.coordinator_url().to_string(),
        second.url().to_string(),
    );

    // --- kill -9 of the owner ---
    let key = PresenceKey::new("game", "room-1");
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..10 {
        on_a.push(open(&a, "game", "room-1").await);
        on_b.push(open(&b, "game", "room-1").await);
    }
    let all: Vec<&PresenceSocket> = on_a.iter().chain(&on_b).collect();
    wait_all_show("20 on room-1", &all, 20, WAIT).await.unwrap();
    let before = owners(&cluster).await;
    let owner = owner_of(&key, &before).unwrap().clone();
    let index = cluster
        .counters()
        .iter()
        .position(|c| c.id == owner.id.0)
        .unwrap();
    cluster.kill_counter(index).unwrap();
    let killed = Instant::now();
    // While the owner is gone, 5 more join on b: a's sockets can only see
    // 25 through the new owner.
    for _ in 0..5 {
        on_b.push(open(&b, "game", "room-1").await);
    }
    let left: Vec<Owner> = before.into_iter().filter(|o| o.id != owner.id).collect();
    let new_owner = owner_of(&key, &left).unwrap().clone();
    let all_a: Vec<&PresenceSocket> = on_a.iter().collect();
    wait_all_show("25 on a after the owner died", &all_a, 25, WAIT)
        .await
        .unwrap();
    simulate::wait::until("the new owner's total", WAIT, || async {
        match owner_total(&new_owner, &key).await {
            Ok(25) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    eprintln!("owner killed: right again after {took:?} (health interval {health:?})");
    assert!(
        took < health + Duration::from_secs(1),
        "after the owner's kill -9 the total took {took:?}"
    );

    // --- a counter joins and takes over keys ---
    // The killed counter comes back: it rejoins the owner set, and takes
    // back the keys rendezvous hashing gives it.
    let joiner_keys: Vec<PresenceKey> = (0..200)
        .map(|i| PresenceKey::new("game", format!("hall-{i}")))
        .filter(|k| {
            owner_of(k, &[left.clone(), vec![owner.clone()]].concat())
                .unwrap()
                .id
                == owner.id
        })
        .take(3)
        .collect();
    assert_eq!(joiner_keys.len(), 3);
    let mut hall = Vec::new();
    for k in &joiner_keys {
        let mut of_key = vec![
            open(&a, "game", &k.key).await,
            open(&b, "game", &k.key).await,
        ];
        of_key.push(open(&b, "game", &k.key).await);
        hall.push(of_key);
    }
    for of_key in &hall {
        let all: Vec<&PresenceSocket> = of_key.iter().collect();
        wait_all_show("3 on a hall", &all, 3, WAIT).await.unwrap();
    }
    cluster.start_counter(index).unwrap();
    cluster
        .wait_counter_state(index, &[CounterState::Joining, CounterState::Live], WAIT)
        .await
        .unwrap();
    let joined = Instant::now();
    // One more on b for each hall key: a sees 4 only through the joiner.
    for (k, of_key) in joiner_keys.iter().zip(&mut hall) {
        of_key.push(open(&b, "game", &k.key).await);
    }
    for (k, of_key) in joiner_keys.iter().zip(&hall) {
        wait_all_show("4 on a hall after the join", &[&of_key[0]], 4, WAIT)
            .await
            .unwrap();
        simulate::wait::until("the joiner's total", WAIT, || async {
            match owner_total(&owner, k).await {
                Ok(4) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap();
    }
    let took = joined.elapsed();
    eprintln!("counter joined: its keys right after {took:?}");
    assert!(took < health + Duration::from_secs(1), "took {took:?}");
    // room-1's total stayed right throughout the move back.
    let all_a: Vec<&PresenceSocket> = on_a.iter().collect();
    wait_all_show("25 on room-1 after the join", &all_a, 25, WAIT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_and_bad_input_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 1);
    options.coordinator_args = vec![
        "--presence-max-sockets".into(),
        "5".into(),
        "--presence-max-per-key".into(),
        "3".into(),
    ];
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    let base = cluster.coordinator_url().to_string();

    // Bad tenant or key: the item API's 400, on the socket and the count.
    let long = "x".repeat(257);
    for (tenant, key) in [("t", long.as_str()), (long.as_str(), "k"), ("t", "%FF")] {
        let (status, body) = public_count(&base, tenant, key).await;
        assert_eq!(status, 400, "{tenant:.10}/{key:.10}: {body}");
        assert!(body.starts_with(r#"{"message":"#), "{body}");
        let refused = PresenceSocket::connect(&socket_url(&base, tenant, key))
            .await
            .unwrap()
            .err()
            .expect("refused");
        assert_eq!(refused.status, 400, "{}", refused.body);
    }
    let (status, body) = public_count(&base, "t", "").await;
    assert_eq!(status, 400, "an empty key: {body}");
    // Not a WebSocket request: a JSON refusal, not a hang.
    let plain = reqwest::get(format!("{base}/presence/t/k")).await.unwrap();
    assert!(plain.status().is_client_error(), "{}", plain.status());
    assert!(plain.text().await.unwrap().contains("WebSocket"));
    // Unknown paths stay 404.
    for path in ["/presence/t/k/other", "/presence/t", "/presence"] {
        let answer = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(answer.status().as_u16(), 404, "{path}");
    }

    // Per key: the fourth socket of a key is closed with 1013.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open(&base, "t", "a").await);
    }
    let fourth = open(&base, "t", "a").await;
    simulate::wait::until("the close frame", WAIT, || async {
        fourth.close_frame().ok_or_else(|| "none yet".to_string())
    })
    .await
    .map(|(code, reason)| {
        assert_eq!(code, 1013);
        assert!(reason.contains("this key"), "{reason}");
    })
    .unwrap();
    // Per coordinator: the sixth socket in all is closed with 1013.
    held.push(open(&base, "t", "b").await);
    held.push(open(&base, "t", "c").await);
    let sixth = open(&base, "t", "d").await;
    simulate::wait::until("the close frame", WAIT, || async {
        sixth.close_frame().ok_or_else(|| "none yet".to_string())
    })
    .await
    .map(|(code, reason)| {
        assert_eq!(code, 1013);
        assert!(reason.contains("coordinator"), "{reason}");
    })
    .unwrap();
    let all: Vec<&PresenceSocket> = held[..3].iter().collect();
    wait_all_show("3 on a", &all, 3, WAIT).await.unwrap();
    // A place freed is a place to take.
    held.pop().unwrap().close().await;
    let again = open(&base, "t", "d").await;
    wait_all_show("1 on d", &[&again], 1, WAIT).await.unwrap();
    assert!(!again.ended());
}
