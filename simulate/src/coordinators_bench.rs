//! What three coordinators cost and what they buy, measured in one run:
//! write throughput with one coordinator and with three (each behind the
//! same three counters, fresh clusters, the same load), and failover — from
//! kill -9 of the leader to the first write acknowledged by another
//! coordinator — over repeated kills. `make bench` runs it after the main
//! table; docs/benchmarks.md keeps the figures.

use crate::bench::{has, rows_table, timed, wrk_post_row, Row};
use anyhow::{bail, Context};
use simulate::api::{Api, WriteOutcome};
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::table::Table;
use std::path::Path;
use std::time::{Duration, Instant};
use tally_common::api::{CoordinatorRole, Health};
use tally_common::Item;

pub async fn run(kills: usize, duration: Duration, out: &Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tally-coord-bench-{:x}", rand::random::<u32>()));
    let mut rows = Vec::new();
    for coordinators in [1, 3] {
        eprintln!("{coordinators} coordinator(s): writes for {duration:?} per row");
        rows.extend(
            throughput(
                &dir.join(format!("c{coordinators}")),
                coordinators,
                duration,
            )
            .await?,
        );
    }
    eprintln!("failover: {kills} kills of the leader");
    let failovers = failover(&dir.join("failover"), kills).await?;
    let _ = std::fs::remove_dir_all(&dir);

    let table = rows_table(&rows);
    let failover_table = failover_table(&failovers);
    print!("{}\n{}", table.render(), failover_table.render());
    let json = serde_json::json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "seconds_per_row": duration.as_secs_f64(),
        "rows": rows,
        "failover_ms": failovers.iter().map(|f| f.acknowledged_ms).collect::<Vec<_>>(),
        "election_ms": failovers.iter().map(|f| f.elected_ms).collect::<Vec<_>>(),
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(
        out.with_extension("md"),
        format!("{}\n{}", table.markdown(), failover_table.markdown()),
    )?;
    println!("results written to {}", out.display());
    Ok(())
}

/// Single-item and 1,000-item writes against the leader (wrk when
/// installed, else the built-in load), each row named by the number of
/// coordinators.
async fn throughput(
    dir: &Path,
    coordinators: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Row>> {
    let mut options = ClusterOptions::new(dir, 3);
    options.coordinators = coordinators;
    options.health_interval = Duration::from_secs(1);
    let cluster = LocalCluster::start(options).await?;
    let leader = leader(&cluster, &(0..coordinators).collect::<Vec<_>>()).await?;
    let api = cluster.coordinator_api(leader);
    api.add(&[Item::new("warm", "warm")]).await;
    let label = |what: &str| format!("{what}, {coordinators} coordinator(s)");
    let mut rows = Vec::new();
    if has("wrk") {
        rows.push(wrk_post_row(
            api.base(),
            &label("POST 1 item"),
            64,
            1,
            duration,
        )?);
        rows.push(wrk_post_row(
            api.base(),
            &label("POST 1,000 items"),
            8,
            1000,
            duration,
        )?);
    } else {
        let report = timed(&api, 64, 1, duration).await;
        rows.push(Row::from_load(&label("POST 1 item"), 64, &report));
        let report = timed(&api, 8, 1000, duration).await;
        rows.push(Row::from_load(&label("POST 1,000 items"), 8, &report));
    }
    Ok(rows)
}

struct Failover {
    /// From kill -9 to a coordinator saying it leads.
    elected_ms: f64,
    /// From kill -9 to the first write acknowledged by another coordinator.
    acknowledged_ms: f64,
}

async fn failover(dir: &Path, kills: usize) -> anyhow::Result<Vec<Failover>> {
    let mut options = ClusterOptions::new(dir, 3);
    options.coordinators = 3;
    let mut cluster = LocalCluster::start(options).await?;
    let mut results = Vec::new();
    for k in 0..kills {
        let leading = leader(&cluster, &[0, 1, 2]).await?;
        let others: Vec<usize> = (0..3).filter(|i| *i != leading).collect();
        let apis: Vec<Api> = others.iter().map(|i| cluster.coordinator_api(*i)).collect();
        // Every coordinator must be up and following before the next kill.
        let killed_at = Instant::now();
        cluster.kill_coordinator_at(leading)?;
        let mut elected_ms = None;
        let mut attempt = 0usize;
        let acknowledged_ms = loop {
            if killed_at.elapsed() > Duration::from_secs(30) {
                bail!("no write acknowledged within 30 s of killing the leader");
            }
            let api = &apis[attempt % apis.len()];
            attempt += 1;
            if elected_ms.is_none() && role(api).await == Some(CoordinatorRole::Leader) {
                elected_ms = Some(killed_at.elapsed().as_secs_f64() * 1e3);
            }
            let item = Item::new(format!("failover-{k}-{attempt}"), "failover");
            if api.add(&[item]).await == WriteOutcome::Ok {
                break killed_at.elapsed().as_secs_f64() * 1e3;
            }
        };
        eprintln!(
            "kill {}: first write acknowledged after {acknowledged_ms:.0} ms",
            k + 1
        );
        results.push(Failover {
            elected_ms: elected_ms.unwrap_or(acknowledged_ms),
            acknowledged_ms,
        });
        cluster.start_coordinator_at(leading)?;
        wait_following(&cluster, leading).await?;
    }
    Ok(results)
}

fn failover_table(failovers: &[Failover]) -> Table {
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
        let worst = v.last().copied().unwrap_or(0.0);
        (median, worst)
    };
    let (ack_median, ack_worst) = stats(failovers.iter().map(|f| f.acknowledged_ms).collect());
    let (el_median, el_worst) = stats(failovers.iter().map(|f| f.elected_ms).collect());
    let mut table = Table::new([
        "failover (kill -9 of the leader)",
        "kills",
        "median",
        "worst",
    ]);
    table.row([
        "to a new leader".to_string(),
        failovers.len().to_string(),
        format!("{el_median:.0} ms"),
        format!("{el_worst:.0} ms"),
    ]);
    table.row([
        "to the first acknowledged write".to_string(),
        failovers.len().to_string(),
        format!("{ack_median:.0} ms"),
        format!("{ack_worst:.0} ms"),
    ]);
    table
}

async fn role(api: &Api) -> Option<CoordinatorRole> {
    let (status, body) = api.get("/health").await.ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Health>(&body).ok().map(|h| h.role)
}

/// The one coordinator of `candidates` that says it leads.
async fn leader(cluster: &LocalCluster, candidates: &[usize]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for i in candidates {
            if role(&cluster.coordinator_api(*i)).await == Some(CoordinatorRole::Leader) {
                leaders.push(*i);
            }
        }
        if let [one] = leaders[..] {
            return Ok(one);
        }
        if Instant::now() > deadline {
            bail!("no single leader among {candidates:?} within 30 s: {leaders:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until coordinator `i` follows a leader and is caught up.
async fn wait_following(cluster: &LocalCluster, i: usize) -> anyhow::Result<()> {
    let api = cluster.coordinator_api(i);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // It answers itself (so it runs), follows, and the leader sees it
        // caught up.
        if role(&api).await == Some(CoordinatorRole::Follower) {
            if let Ok(view) = api.cluster().await {
                let me = &view.coordinators[i];
                if me.role == CoordinatorRole::Follower && me.lag == 0 {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("coordinator {i} did not follow again"))
                .context("after a restart");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
