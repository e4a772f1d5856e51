//! `simulate bench --only presence`: presence sockets held per coordinator,
//! the time from a connect to every other socket of the key seeing the new
//! total, and the coordinator's memory per socket. On loopback only, and
//! bounded: a fixed number of sockets and rounds, each phase with a
//! deadline.
//!
//! Each key has sockets on the cluster's coordinator (10,000 in all) and on
//! a presence-only frontend (1,000), so the latency is measured both for
//! sockets on the frontend the client joined (no network hop: `others +
//! local`) and on the other one (a report to the key's owner and its push
//! back).

use anyhow::{bail, Context};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use simulate::cluster::{bin_dir, ClusterOptions, LocalCluster};
use simulate::presence::{socket_url, wait_all_show, PresenceFrontend, PresenceSocket};
use simulate::table::Table;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sockets held by the coordinator (the goal: 10,000 on one process).
const SOCKETS: usize = 10_000;
/// Sockets held by the presence-only frontend, the other side of the
/// latency measurement.
const SECOND_SOCKETS: usize = 1_000;
/// Keys they are spread over.
const KEYS: usize = 100;
/// Connects in flight at once while filling.
const CONNECT_PARALLEL: usize = 64;
/// Latency rounds: one join on one key each, keys taken in turn.
const ROUNDS: usize = 100;
/// Deadline of each phase.
const PHASE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize)]
pub struct PresenceResult {
    pub sockets: usize,
    pub second_frontend_sockets: usize,
    pub keys: usize,
    pub connect_secs: f64,
    pub all_settled_secs: f64,
    pub same_frontend_p50_ms: f64,
    pub same_frontend_p99_ms: f64,
    pub other_frontend_p50_ms: f64,
    pub other_frontend_p99_ms: f64,
    pub samples_per_side: usize,
    pub coordinator_rss_before_mib: f64,
    pub coordinator_rss_after_mib: f64,
    pub bytes_per_socket: f64,
}

/// Raises this process's open-file limit to its hard limit: the bench
/// holds one descriptor per socket, as the servers do.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Resident memory of `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

pub async fn run(dir: &Path) -> anyhow::Result<PresenceResult> {
    let files = raise_open_files();
    let total = SOCKETS + SECOND_SOCKETS;
    if files < (total as u64 + 2048) {
        bail!("the open-file limit ({files}) is below {total} sockets plus headroom");
    }
    let mut options = ClusterOptions::new(dir, 3);
    let server_args = vec![
        "--presence-max-sockets".to_string(),
        SOCKETS.to_string(),
        "--presence-max-per-key".to_string(),
        SOCKETS.to_string(),
    ];
    options.coordinator_args = server_args.clone();
    let cluster = LocalCluster::start(options).await?;
    let pid = cluster.coordinator_pid().context("coordinator pid")?;
    let second = PresenceFrontend::start(
        &bin_dir()?,
        cluster.coordinator_url(),
        None,
        &server_args,
        &dir.join("frontend-2.log"),
    )
    .await?;
    let bases = [
        cluster.coordinator_url().to_string(),
        second.url().to_string(),
    ];
    // Let the coordinator settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss(pid)?;

    eprintln!(
        "presence: opening {SOCKETS} sockets on the coordinator and {SECOND_SOCKETS} on a \
         second frontend, over {KEYS} keys"
    );
    let started = Instant::now();
    let side_of = |i: usize| usize::from(i >= SOCKETS);
    let plan: Vec<(usize, String)> = (0..total)
        .map(|i| {
            let key = i % KEYS;
            (
                key,
                socket_url(&bases[side_of(i)], "bench", &format!("key-{key}")),
            )
        })
        .collect();
    let opened: Vec<(usize, usize, anyhow::Result<PresenceSocket>)> = tokio::time::timeout(
        PHASE,
        stream::iter(plan.into_iter().enumerate())
            .map(|(i, (key, url))| async move {
                let socket = match PresenceSocket::connect(&url).await {
                    Ok(Ok(socket)) => Ok(socket),
                    Ok(Err(refused)) => Err(anyhow::anyhow!("refused {}", refused.status)),
                    Err(e) => Err(e),
                };
                (key, side_of(i), socket)
            })
            .buffer_unordered(CONNECT_PARALLEL)
            .collect(),
    )
    .await
    .context("opening the sockets took too long")?;
    let connect_secs = started.elapsed().as_secs_f64();
    // by_key[key][side]: the sockets of a key on each frontend.
    let mut by_key: Vec<[Vec<PresenceSocket>; 2]> = (0..KEYS).map(|_| [vec![], vec![]]).collect();
    for (key, side, socket) in opened {
        by_key[key][side].push(socket?);
    }
    let per_key = (total / KEYS) as u64;
    for (key, sides) in by_key.iter().enumerate() {
        let all: Vec<&PresenceSocket> = sides.iter().flatten().collect();
        wait_all_show(&format!("key-{key} settled"), &all, per_key, PHASE).await?;
    }
    let all_settled_secs = started.elapsed().as_secs_f64();
    let rss_after = rss(pid)?;
    let on_coordinator: usize = by_key.iter().map(|s| s[0].len()).sum();
    eprintln!(
        "presence: {total} open in {connect_secs:.1} s, all settled in {all_settled_secs:.1} s"
    );

    // Latency: a client joins key k on frontend 1; when does each socket
    // of k see the new total? Keys are taken in turn, so no socket is
    // inside its 100 ms send throttle from the previous round.
    let mut same = Vec::new();
    let mut other = Vec::new();
    for round in 0..ROUNDS {
        let key = round % KEYS;
        let t0 = Instant::now();
        let joiner =
            PresenceSocket::connect(&socket_url(&bases[1], "bench", &format!("key-{key}")))
                .await?
                .map_err(|r| anyhow::anyhow!("refused {}", r.status))?;
        let sides = &by_key[key];
        let all: Vec<&PresenceSocket> = sides.iter().flatten().collect();
        wait_all_show("the join seen", &all, per_key + 1, PHASE).await?;
        for (side, samples) in [(1, &mut same), (0, &mut other)] {
            for socket in &sides[side] {
                let (_, at) = socket.last().context("a count")?;
                samples.push(at.saturating_duration_since(t0));
            }
        }
        joiner.close().await;
        wait_all_show("the leave seen", &all, per_key, PHASE).await?;
    }
    same.sort();
    other.sort();
    let result = PresenceResult {
        sockets: on_coordinator,
        second_frontend_sockets: total - on_coordinator,
        keys: KEYS,
        connect_secs,
        all_settled_secs,
        same_frontend_p50_ms: percentile(&same, 50.0),
        same_frontend_p99_ms: percentile(&same, 99.0),
        other_frontend_p50_ms: percentile(&other, 50.0),
        other_frontend_p99_ms: percentile(&other, 99.0),
        samples_per_side: same.len().min(other.len()),
        coordinator_rss_before_mib: rss_before as f64 / (1 << 20) as f64,
        coordinator_rss_after_mib: rss_after as f64 / (1 << 20) as f64,
        bytes_per_socket: rss_after.saturating_sub(rss_before) as f64 / on_coordinator as f64,
    };
    drop(by_key);
    drop(second);
    drop(cluster);
    Ok(result)
}

/// The result as a two-column table.
pub fn table(r: &PresenceResult) -> Table {
    let mut table = Table::new(["presence", "value"]);
    let rows = [
        (
            "sockets held by the coordinator (+ a second frontend)".to_string(),
            format!(
                "{} (+ {}) over {} keys",
                r.sockets, r.second_frontend_sockets, r.keys
            ),
        ),
        (
            "time to open them (64 connects at a time)".into(),
            format!("{:.1} s", r.connect_secs),
        ),
        (
            "connect → sockets on the same frontend see it, p50 / p99".into(),
            format!(
                "{:.2} / {:.2} ms",
                r.same_frontend_p50_ms, r.same_frontend_p99_ms
            ),
        ),
        (
            "connect → sockets on the other frontend see it, p50 / p99".into(),
            format!(
                "{:.2} / {:.2} ms",
                r.other_frontend_p50_ms, r.other_frontend_p99_ms
            ),
        ),
        (
            "coordinator RSS before → with its sockets".into(),
            format!(
                "{:.1} → {:.1} MiB",
                r.coordinator_rss_before_mib, r.coordinator_rss_after_mib
            ),
        ),
        (
            "coordinator memory per socket".into(),
            format!("{:.1} KiB", r.bytes_per_socket / 1024.0),
        ),
    ];
    for (name, value) in rows {
        table.row([name, value]);
    }
    table
}
