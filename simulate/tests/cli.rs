//! The `simulate` binary as an operator runs it: each subcommand against a
//! real local cluster, and each one failing loudly when the cluster is not
//! there (a check that cannot fail is no check).

use simulate::cluster::{bin_dir, ClusterOptions, LocalCluster};
use std::process::{Command, Output};

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simulate"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("simulate runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn scenario_passes_every_step() {
    let output = simulate(&["scenario"]);
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("  ok").count(), 7, "{text}");
    assert!(text.contains("scenario passed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_verifies_exact_counts_and_status_lists_every_counter() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterOptions::new(dir.path(), 3))
        .await
        .unwrap();
    let json = dir.path().join("load.json");
    let output = simulate(&[
        "load",
        "--clients",
        "4",
        "--requests",
        "50",
        "--batch",
        "3",
        "--target",
        cluster.coordinator_url(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("verified: 4 tenants hold exactly the 600 acknowledged items"),
        "{out}"
    );
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(figures["requests_ok"], 200);
    assert_eq!(figures["verified"], true);

    let output = simulate(&["status", "--coordinator", cluster.coordinator_url()]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    for c in cluster.counters() {
        let line = out
            .lines()
            .find(|l| l.starts_with(&c.id))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("live") && line.contains("yes"), "{line}");
    }
    assert!(out.contains("3 counters, 3 in sync"), "{out}");
}

#[test]
fn chaos_with_a_fixed_seed_loses_nothing() {
    // simulate/tests/chaos.rs runs the seeds; this checks the subcommand.
    let output = simulate(&["chaos", "--duration", "8s", "--seed", "7"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("set check passed"), "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {name} row in {out}"))
            .to_string()
    };
    assert_eq!(row("lost"), "0");
    assert_eq!(row("unexpected"), "0");
    assert_ne!(row("ok"), "0");
}

#[test]
fn a_dead_cluster_fails_load_status_and_scenario_clearly() {
    let port = simulate::cluster::free_port().unwrap();
    let target = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["load", "--requests", "1", "--target", &target],
        vec!["status", "--coordinator", &target],
    ] {
        let output = simulate(&args);
        let out = text(&output);
        assert!(!output.status.success(), "{args:?}: {out}");
        assert!(out.contains("does not answer"), "{args:?}: {out}");
    }

    // Counters that die at once: the scenario cannot get past its first step.
    let bins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        bin_dir().unwrap().join("coordinator"),
        bins.path().join("coordinator"),
    )
    .unwrap();
    let broken = bins.path().join("counter");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_simulate"))
        .args(["scenario", "--step-timeout", "3s"])
        .env("TALLY_BIN_DIR", bins.path())
        .output()
        .unwrap();
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(out.contains("did not come up"), "{out}");
}
