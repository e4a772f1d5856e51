//! The cluster in containers: a docker-compose project (docker-compose.yml)
//! driven with the docker CLI. Containers are found by the labels compose
//! puts on them (project, service, replica number), which both compose v1
//! (`docker-compose`) and v2 (`docker compose`) write, so nothing depends
//! on how either spells container names.
//!
//! The host reaches each counter at its IP on the project's bridge network
//! (Linux routes to user-defined bridges), so a counter's own count is read
//! without publishing its port. [`DockerBackend`] runs the walkthrough scenario on
//! a running project; [`ComposeProject`] starts a private project for the
//! tests and removes it, volumes included, when dropped.

use crate::api::Api;
use crate::scenario::{Backend, BoxFuture};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The port counters listen on inside their containers (docker-compose.yml).
pub const COUNTER_PORT: u16 = 8081;

/// The port coordinators listen on inside their containers.
pub const COORDINATOR_PORT: u16 = 8080;

/// Runs `docker ARGS` and returns its trimmed stdout; fails with its stderr.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new("docker");
    command.args(args);
    run(command).await
}

async fn run(command: Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let output = tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Whether a Docker engine answers (`docker info`).
pub fn engine_reachable() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The compose command line: the v2 plugin (`docker compose`) when it is
/// installed, else the standalone v1 `docker-compose`.
pub fn compose_command() -> anyhow::Result<Vec<String>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("docker", &["compose", "version"]) {
        Ok(vec!["docker".into(), "compose".into()])
    } else if works("docker-compose", &["version"]) {
        Ok(vec!["docker-compose".into()])
    } else {
        bail!("neither `docker compose` nor `docker-compose` is installed")
    }
}

/// One container of a compose project, as `docker inspect` shows it now.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The container's host name: a counter's member id and advertised host.
    pub host_name: String,
    /// Compose's replica number (1, 2, ...).
    pub number: u32,
    pub running: bool,
    /// Network name → IP address, for the networks it is attached to.
    pub networks: Vec<(String, String)>,
}

impl Container {
    /// The container's IP on `network`, or on its only network.
    pub fn ip(&self, network: Option<&str>) -> Option<&str> {
        self.networks
            .iter()
            .find(|(n, ip)| network.is_none_or(|want| want == n) && !ip.is_empty())
            .map(|(_, ip)| ip.as_str())
    }

    /// Where the host reaches this counter's HTTP API.
    pub fn counter_url(&self) -> Option<String> {
        self.ip(None)
            .map(|ip| format!("http://{ip}:{COUNTER_PORT}"))
    }

    /// Where the host reaches this coordinator's HTTP API, across the
    /// project's network rather than a published port: after a
    /// `docker network disconnect` and `connect` the container has a new
    /// address, and this follows it.
    pub fn coordinator_url(&self) -> Option<String> {
        self.ip(None)
            .map(|ip| format!("http://{ip}:{COORDINATOR_PORT}"))
    }
}

/// The containers of `service` in compose `project`, running or not, in
/// replica order.
pub async fn containers(project: &str, service: &str) -> anyhow::Result<Vec<Container>> {
    let ids = docker(&[
        "ps",
        "-a",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])
    .await?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let mut found = Vec::new();
    for id in ids {
        found.push(inspect(id).await?);
    }
    found.sort_by_key(|c| c.number);
    Ok(found)
}

/// One container's current state (its IP changes when it restarts).
pub async fn inspect(id: &str) -> anyhow::Result<Container> {
    const FORMAT: &str = concat!(
        "{{.Id}}|{{.Name}}|{{.Config.Hostname}}|",
        "{{index .Config.Labels \"com.docker.compose.container-number\"}}|{{.State.Running}}|",
        "{{range $n, $e := .NetworkSettings.Networks}}{{$n}}={{$e.IPAddress}} {{end}}"
    );
    let line = docker(&["inspect", "--format", FORMAT, id]).await?;
    let fields: Vec<&str> = line.splitn(6, '|').collect();
    let [id, name, host_name, number, running, networks] = fields[..] else {
        bail!("unexpected docker inspect output: {line}");
    };
    Ok(Container {
        id: id.to_string(),
        name: name.trim_start_matches('/').to_string(),
        host_name: host_name.to_string(),
        number: number.parse().unwrap_or(0),
        running: running == "true",
        networks: networks
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(n, ip)| (n.to_string(), ip.to_string()))
            .collect(),
    })
}

/// The walkthrough scenario's backend on a running compose project: counters are
/// stopped (SIGTERM) and started again with the docker CLI, which keeps
/// each container, its host name and so its member id and data volume.
pub struct DockerBackend {
    api: Api,
    counters: Vec<Container>,
}

impl DockerBackend {
    /// Attaches to `project`, whose coordinator answers at `coordinator`.
    pub async fn connect(project: &str, coordinator: &str) -> anyhow::Result<Self> {
        let counters = containers(project, "counter").await?;
        if counters.is_empty() {
            bail!("compose project {project} has no counter containers: run `make up` first");
        }
        Ok(DockerBackend {
            api: Api::new(coordinator),
            counters,
        })
    }

    pub fn counters(&self) -> &[Container] {
        &self.counters
    }
}

impl Backend for DockerBackend {
    fn api(&self) -> &Api {
        &self.api
    }

    fn counter_ids(&self) -> Vec<String> {
        self.counters.iter().map(|c| c.host_name.clone()).collect()
    }

    fn stop_counter(&mut self, i: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            docker(&["stop", "-t", "20", &self.counters[i].id])
                .await
                .map(drop)
        })
    }

    fn start_counter(&mut self, i: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { docker(&["start", &self.counters[i].id]).await.map(drop) })
    }

    fn counter_count<'a>(
        &'a self,
        i: usize,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let now = inspect(&self.counters[i].id)
                .await
                .map_err(|e| e.to_string())?;
            let url = now
                .counter_url()
                .ok_or_else(|| format!("{} has no IP (stopped?)", now.name))?;
            self.api.counter_count(&url, tenant).await
        })
    }
}

/// A private compose project on docker-compose.yml, for tests: its own
/// project name (so its own network, containers and volumes), its own
/// settings file, the coordinator published on a free loopback port.
/// Dropping it runs `down -v`, so nothing is left behind even when a test
/// panics.
pub struct ComposeProject {
    compose: Vec<String>,
    pub project: String,
    /// docker-compose.yml, then the file of the extra coordinators if any.
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    pub http_port: u16,
}

impl ComposeProject {
    /// `file`: docker-compose.yml; `env_file`: the containers' settings;
    /// `image`: an image built from Dockerfile.dev or Dockerfile.
    pub fn new(project: &str, file: &Path, env_file: &Path, image: &str) -> anyhow::Result<Self> {
        Self::on_port(project, file, env_file, image, crate::cluster::free_port()?)
    }

    /// The same with `coordinators` coordinators (3, 5 or 7) that
    /// replicate the decision log: on top of `file`, the compose file that
    /// `make up COORDINATORS=n` uses, written by
    /// scripts/compose-coordinators.sh (beside `file`) into `dir`. Each
    /// coordinator is published on loopback, on consecutive free ports.
    pub fn with_coordinators(
        project: &str,
        file: &Path,
        env_file: &Path,
        image: &str,
        coordinators: u16,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let http_port = crate::cluster::free_ports(coordinators)?;
        let script = file
            .parent()
            .context("docker-compose.yml has no directory")?
            .join("scripts/compose-coordinators.sh");
        let output = Command::new(&script)
            .arg(coordinators.to_string())
            .arg(format!("127.0.0.1:{http_port}"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let extra = dir.join("coordinators.yml");
        std::fs::write(&extra, &output.stdout)
            .with_context(|| format!("cannot write {}", extra.display()))?;
        let mut project = Self::on_port(project, file, env_file, image, http_port)?;
        project.files.push(extra);
        Ok(project)
    }

    /// The project with its first coordinator published on
    /// `127.0.0.1:http_port`.
    fn on_port(
        project: &str,
        file: &Path,
        env_file: &Path,
        image: &str,
        http_port: u16,
    ) -> anyhow::Result<Self> {
        let env = vec![
            ("IMAGE".to_string(), image.to_string()),
            ("ENV_FILE".to_string(), env_file.display().to_string()),
            ("HTTP_PORT".to_string(), format!("127.0.0.1:{http_port}")),
            ("CONTAINER_HEALTH_INTERVAL".to_string(), "500ms".to_string()),
        ];
        Ok(ComposeProject {
            compose: compose_command()?,
            project: project.to_string(),
            files: vec![file.to_path_buf()],
            env,
            http_port,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .arg("-p")
            .arg(&self.project);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command.args(args);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    /// Runs a compose subcommand in this project.
    pub async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(args)).await
    }

    /// Starts (or scales to) `counters` counters and the coordinator,
    /// without building: the image must exist.
    pub async fn up(&self, counters: usize) -> anyhow::Result<()> {
        let scale = format!("counter={counters}");
        self.compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", &scale])
            .await
            .map(drop)
    }

    /// The coordinator's URL on the host.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The first coordinator (the `coordinator` service).
    pub async fn coordinator(&self) -> anyhow::Result<Container> {
        self.container("coordinator").await
    }

    /// The one container of `service` (`coordinator-2`, ...).
    pub async fn container(&self, service: &str) -> anyhow::Result<Container> {
        containers(&self.project, service)
            .await?
            .into_iter()
            .next()
            .with_context(|| format!("no {service} container"))
    }

    pub async fn counters(&self) -> anyhow::Result<Vec<Container>> {
        containers(&self.project, "counter").await
    }

    /// The project's network (compose's `<project>_default`).
    pub async fn network(&self) -> anyhow::Result<String> {
        let coordinator = self.coordinator().await?;
        coordinator
            .networks
            .first()
            .map(|(n, _)| n.clone())
            .context("the coordinator is on no network")
    }

    /// Every container's log, for a failing test's output.
    pub fn logs(&self) -> String {
        self.command(&["logs", "--no-color", "--tail", "200"])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- logs of compose project {} ---\n{}",
                self.project,
                self.logs()
            );
        }
        // compose refuses to run without the env file, which may be gone
        // by now (a temporary directory dropped first): any file will do
        // for `down`, and .env.dist sits beside the compose file.
        let mut down = self.command(&["down", "-v", "--remove-orphans", "-t", "5"]);
        if let Some(dir) = self.files[0].parent() {
            down.env("ENV_FILE", dir.join(".env.dist"));
        }
        let _ = down
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
