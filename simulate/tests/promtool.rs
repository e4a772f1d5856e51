//! What a Prometheus user runs: `promtool check metrics` against the
//! coordinator's and a counter's `/metrics` after writes, reads and a count
//! stream (so every metric has samples), and the example alerting rules
//! (deploy/prometheus/alerts.yml) checked against the names the processes
//! really export. promtool comes from Debian's prometheus package:
//! scripts/install-deploy-deps.sh (make test-deps) unpacks it into
//! target/tools/bin.

use futures_util::StreamExt;
use simulate::cluster::{ClusterOptions, LocalCluster};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use tally_common::Item;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// promtool from target/tools/bin, else the PATH; a clear failure without.
fn promtool() -> PathBuf {
    let unpacked = repo().join("target/tools/bin/promtool");
    if unpacked.exists() {
        return unpacked;
    }
    let on_path = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        on_path,
        "promtool not found: run scripts/install-deploy-deps.sh (make test-deps)"
    );
    PathBuf::from("promtool")
}

/// `promtool check metrics` on `text`: its complaints, empty when clean.
fn check_metrics(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        String::new()
    } else {
        format!("exit {:?}: {said}", output.status.code())
    }
}

async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Metric families declared in a Prometheus text (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn promtool_refuses_what_the_processes_used_to_export() {
    // The check below is only as good as promtool's lint: it must refuse a
    // metric without HELP and a gauge named like a Prometheus type.
    let said = check_metrics("# TYPE tally_counter_lag gauge\ntally_counter_lag 0\n");
    assert!(said.contains("no help text"), "{said}");
    assert!(said.contains("should not include type"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_passes_promtool_and_the_alerts_use_real_names() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterOptions::new(dir.path(), 2))
        .await
        .expect("cluster starts");
    let api = cluster.api();
    // A count stream open while writes land, so its gauge has a sample.
    let stream = reqwest::get(format!(
        "{}/items/metered/count/stream",
        cluster.coordinator_url()
    ))
    .await
    .unwrap();
    let mut events = stream.bytes_stream();
    for batch in 0..5 {
        let items: Vec<Item> = (0..20)
            .map(|i| Item {
                id: format!("{batch}-{i}"),
                tenant: "metered".into(),
            })
            .collect();
        assert_eq!(api.add(&items).await, simulate::api::WriteOutcome::Ok);
    }
    assert_eq!(api.count("metered").await, Ok(100));
    assert!(events.next().await.is_some());
    cluster
        .check_counts(&[("metered", 100)])
        .await
        .expect("counts agree");

    let coordinator = metrics_text(cluster.coordinator_url()).await;
    let counter = metrics_text(&cluster.counters()[0].url).await;
    drop(events);
    for (who, text) in [("coordinator", &coordinator), ("counter", &counter)] {
        let said = check_metrics(text);
        assert!(
            said.is_empty(),
            "promtool check metrics on the {who}: {said}\n{text}"
        );
        // Every family has HELP text (promtool says so too; this names it).
        for family in families(text) {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{who}: {family} has no HELP"
            );
        }
    }

    // Every tally metric an alert uses is one the processes export.
    let exported: BTreeSet<String> = families(&coordinator)
        .into_iter()
        .chain(families(&counter))
        .collect();
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    // The expressions: from each `expr:` to the rule's `for:`.
    let mut exprs = String::new();
    let mut inside = false;
    for line in rules.lines() {
        let line = line.trim();
        inside = (inside || line.starts_with("expr:")) && !line.starts_with("for:");
        if inside {
            exprs.push_str(line);
            exprs.push('\n');
        }
    }
    let mut used = BTreeSet::new();
    for word in exprs.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("tally_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .filter(|b| exported.contains(*b))
                .unwrap_or(word);
            used.insert(base.to_string());
        }
    }
    assert!(used.len() >= 5, "{used:?}");
    for name in &used {
        assert!(
            exported.contains(name),
            "alerts.yml uses {name}, which no process exports: {exported:?}"
        );
    }
    let output = Command::new(promtool())
        .args(["check", "rules"])
        .arg(repo().join("deploy/prometheus/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
