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

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn make(args: &[&str]) -> Output {
    Command::new("make")
        .arg("--no-print-directory")
        .arg("-C")
        .arg(repo())
        .args(args)
        .output()
        .expect("make runs")
}

#[test]
fn a_taken_port_stops_simulate_cluster_at_once_naming_it() {
    for (held, who) in [(0u16, "the coordinator"), (2, "counter-2")] {
        // Two free ports in a row are not guaranteed: retry a few bases.
        let (base, _holder) = (0..20)
            .find_map(|_| {
                let base = simulate::cluster::free_port().ok()?;
                let holder = std::net::TcpListener::bind(("127.0.0.1", base + held)).ok()?;
                let rest_free = (0..=2u16)
                    .filter(|i| *i != held)
                    .all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
                rest_free.then_some((base, holder))
            })
            .expect("three ports in a row");
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let output = simulate(&[
            "cluster",
            "--counters",
            "2",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        let out = text(&output);
        assert!(!output.status.success(), "{out}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}: {out}",
            started.elapsed()
        );
        let port = base + held;
        assert!(
            out.contains(&format!("port {port}, for {who}, is already in use")),
            "{out}"
        );
        assert!(out.contains("HTTP_PORT="), "{out}");
        // Nothing was started: the data directory stays empty.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{out}");
    }
}

#[test]
fn make_run_and_status_use_http_port() {
    let output = make(&["-n", "run", "HTTP_PORT=9123", "COUNTERS=2"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("simulate cluster --counters 2 --base-port 9123"),
        "{out}"
    );
    assert!(out.contains("--coordinators 1"), "{out}");
    let output = make(&["-n", "run", "HTTP_PORT=9123", "COORDINATORS=3"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("--coordinators 3"), "{out}");
    // status builds simulate first, then asks the coordinator on HTTP_PORT.
    let output = make(&["-n", "status", "HTTP_PORT=9123"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    let build = out.find("cargo build").expect("status builds first");
    let status = out
        .find("simulate status --coordinator http://127.0.0.1:9123")
        .expect("status asks HTTP_PORT");
    assert!(build < status, "{out}");
}

#[test]
fn make_alone_prints_the_help_listing_every_target() {
    let alone = make(&[]);
    let help = make(&["help"]);
    assert!(alone.status.success() && help.status.success());
    let listed = String::from_utf8_lossy(&help.stdout).to_string();
    assert_eq!(String::from_utf8_lossy(&alone.stdout), listed);
    // Every target declared .PHONY has a line of its own.
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let phony = makefile.split(".PHONY:").nth(1).unwrap();
    let phony = &phony[..phony.find("\n\n").unwrap()];
    let targets: Vec<&str> = phony.split_whitespace().filter(|t| *t != "\\").collect();
    assert!(targets.len() > 20, "{targets:?}");
    for target in targets {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["make", target])),
            "make help does not list {target}:\n{listed}"
        );
    }
}

/// Runs a binary until it exits (it should: every case is refused).
fn refused(binary: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = simulate::cluster::free_port().unwrap();
    let mut command = Command::new(bin_dir().unwrap().join(binary));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(args)
        .env("NO_COLOR", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} {env:?} was not refused: it is still running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{binary} {args:?} {env:?}");
    text(&output)
}

#[test]
fn unusable_settings_are_refused_at_start_up_naming_the_flag() {
    for (binary, args, env, said) in [
        (
            "coordinator",
            &["--dead-after", "0"][..],
            &[][..],
            "--dead-after",
        ),
        (
            "coordinator",
            &[][..],
            &[("TALLY_MIN_INSYNC", "0")][..],
            "--min-insync",
        ),
        (
            "coordinator",
            &["--dead-after", "4", "--remove-after", "3"][..],
            &[][..],
            "--remove-after (3) must be at least --dead-after (4)",
        ),
        (
            "coordinator",
            &["--health-interval", "0s"][..],
            &[][..],
            "--health-interval",
        ),
        (
            "coordinator",
            &[][..],
            &[("TALLY_LOG_FORMAT", "jsn")][..],
            "--log-format",
        ),
        (
            "counter",
            &[][..],
            &[("TALLY_LOG_FORMAT", "xml")][..],
            "--log-format",
        ),
        (
            "counter",
            &["--index-batch-keys", "0"][..],
            &[][..],
            "--index-batch-keys",
        ),
        (
            "counter",
            &["--max-connections", "0"][..],
            &[][..],
            "--max-connections",
        ),
        (
            "coordinator",
            &[][..],
            &[(
                "TALLY_PEERS",
                "http://c1:8080,http://c2:8080,http://c3:8080",
            )][..],
            "--peers needs --advertise",
        ),
        (
            "coordinator",
            &[
                "--advertise",
                "http://c1:8080",
                "--peers",
                "http://c1:8080,http://c2:8080",
            ][..],
            &[][..],
            "--peers lists 2 coordinators",
        ),
        (
            "counter",
            &["--coordinator", "http://c1:8080,c2:8080"][..],
            &[][..],
            "--coordinator",
        ),
    ] {
        let out = refused(binary, args, env);
        assert!(out.contains(said), "{binary} {args:?} {env:?}: {out}");
    }
}

/// Starts `binary` with only environment variables, waits for `/health` on
/// `port`, and returns the child and its log file.
fn start_from_env(
    binary: &str,
    dir: &std::path::Path,
    port: u16,
    env: &[(&str, String)],
) -> (std::process::Child, std::path::PathBuf) {
    let log = dir.join(format!("{binary}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(bin_dir().unwrap().join(binary));
    command
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{binary} does not listen on {port}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_read_tally_prefixed_variables_and_warn_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (port, decoy, counter_port) = (
        simulate::cluster::free_port().unwrap(),
        simulate::cluster::free_port().unwrap(),
        simulate::cluster::free_port().unwrap(),
    );
    // Unprefixed names, as a user's shell may have them, are ignored.
    let (mut coordinator, coordinator_log) = start_from_env(
        "coordinator",
        dir.path(),
        port,
        &[
            ("TALLY_LISTEN", format!("127.0.0.1:{port}")),
            ("LISTEN", format!("127.0.0.1:{decoy}")),
            ("TALLY_DATA_DIR", dir.path().join("c").display().to_string()),
            ("TALLY_HEALTH_INTERVAL", "200ms".into()),
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let (mut counter, counter_log) = start_from_env(
        "counter",
        dir.path(),
        counter_port,
        &[
            ("TALLY_LISTEN", format!("127.0.0.1:{counter_port}")),
            ("TALLY_DATA_DIR", dir.path().join("k").display().to_string()),
            ("TALLY_COORDINATOR", url.clone()),
            ("TALLY_ID", "from-env".into()),
            ("ID", "not-this".into()),
            (
                "TALLY_ADVERTISE",
                format!("http://127.0.0.1:{counter_port}"),
            ),
        ],
    );
    let api = simulate::api::Api::new(url);
    let joined = simulate::wait::until(
        "the counter named by TALLY_ID in sync",
        std::time::Duration::from_secs(20),
        || async {
            let view = api.cluster().await?;
            match view.counters.as_slice() {
                [c] if c.id.0 == "from-env" && c.in_sync => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let _ = (coordinator.kill(), counter.kill());
    let _ = (coordinator.wait(), counter.wait());
    joined.unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", decoy)).is_err());
    for log in [coordinator_log, counter_log] {
        let text = std::fs::read_to_string(&log).unwrap();
        let warning = text
            .lines()
            .find(|l| l.contains("no cluster token"))
            .unwrap_or_else(|| panic!("{}: no warning about the token:\n{text}", log.display()));
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains("internal endpoints"), "{warning}");
    }

    // With a token, no warning.
    let port = simulate::cluster::free_port().unwrap();
    let (mut coordinator, log) = start_from_env(
        "coordinator",
        dir.path(),
        port,
        &[
            ("TALLY_LISTEN", format!("127.0.0.1:{port}")),
            (
                "TALLY_DATA_DIR",
                dir.path().join("c2").display().to_string(),
            ),
            ("TALLY_CLUSTER_TOKEN", "secret".into()),
        ],
    );
    // The port accepts connections from the moment it is bound, a little
    // before the start-up lines are written: wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("coordinator serving") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(text.contains("coordinator serving"), "{text}");
    assert!(!text.contains("no cluster token"), "{text}");
}

#[test]
fn simulate_cluster_runs_with_a_token_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (base, counter) = (0..20)
        .find_map(|_| {
            let base = simulate::cluster::free_port().ok()?;
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            (free(base) && free(base + 1)).then_some((base, base + 1))
        })
        .expect("two ports in a row");
    let log = dir.path().join("out.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_simulate"))
        .args([
            "cluster",
            "--counters",
            "1",
            "--base-port",
            &base.to_string(),
        ])
        .args(["--health-interval", "200ms", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NO_COLOR", "1")
        .env_remove("TALLY_CLUSTER_TOKEN")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let banner = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Ctrl-C stops everything") {
            break text;
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("simulate cluster did not come up:\n{text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}\n{text}");
    assert!(
        banner.contains(&format!("counter-1    http://127.0.0.1:{counter}")),
        "{banner}"
    );
    let token = banner
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("cluster token (TALLY_CLUSTER_TOKEN): ")
        })
        .unwrap_or_else(|| panic!("no token in the banner:\n{banner}"));
    assert_eq!(token.len(), 32, "{banner}");
    assert!(!text.contains("no cluster token"), "{text}");
}

#[test]
fn simulate_cluster_refuses_a_coordinator_count_without_a_majority() {
    for n in ["0", "2", "4", "9"] {
        let output = simulate(&["cluster", "--coordinators", n]);
        let out = text(&output);
        assert!(!output.status.success(), "{n}: {out}");
        assert!(out.contains("give 1, 3, 5 or 7 coordinators"), "{n}: {out}");
    }
}

/// The compose file `make up COORDINATORS=3` writes is one compose accepts
/// on top of docker-compose.yml: three coordinators, each advertising
/// itself and naming all three, and counters given all three URLs. Checked
/// with `config`, which starts and pulls nothing.
#[test]
fn the_compose_file_of_three_coordinators_is_valid_and_names_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("coordinators.yml");
    let output = Command::new(repo().join("scripts/compose-coordinators.sh"))
        .args(["3", "9100"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    std::fs::write(&overlay, &output.stdout).unwrap();
    for refused in [&["2"][..], &["1"], &["3", "65535"], &["3", "port"]] {
        let output = Command::new(repo().join("scripts/compose-coordinators.sh"))
            .args(refused)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{refused:?}: {}",
            text(&output)
        );
    }

    // The tool the make targets use: the v2 plugin, else docker-compose.
    let tools: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    let Some(tool) = tools.into_iter().find(|tool| {
        Command::new(tool[0])
            .args(&tool[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        println!("SKIPPED the_compose_file_of_three_coordinators_is_valid: no compose tool");
        return;
    };
    let mut compose = Command::new(tool[0]);
    compose.args(&tool[1..]);
    let output = compose
        .current_dir(repo())
        .env("ENV_FILE", repo().join(".env.dist"))
        .args(["-p", "tallyconfigcheck", "-f", "docker-compose.yml", "-f"])
        .arg(&overlay)
        .args(["config"])
        .output()
        .unwrap();
    let config = text(&output);
    assert!(output.status.success(), "{config}");
    let peers = "http://coordinator:8080,http://coordinator-2:8080,http://coordinator-3:8080";
    for want in [
        "TALLY_ADVERTISE: http://coordinator:8080",
        "TALLY_ADVERTISE: http://coordinator-2:8080",
        "TALLY_ADVERTISE: http://coordinator-3:8080",
        &format!("TALLY_PEERS: {peers}"),
        &format!("TALLY_COORDINATOR: {peers}"),
        "coordinator-3-data:/data",
        "published: 9102",
    ] {
        assert!(config.contains(want), "no {want:?} in:\n{config}");
    }
    assert_eq!(
        config.matches(&format!("TALLY_PEERS: {peers}")).count(),
        3,
        "{config}"
    );
}
