//! A cluster of real coordinator and counter processes on loopback, for
//! `simulate cluster` and for the integration tests. Each process logs to
//! a file in the cluster's directory (read it when a test fails), keeps its
//! port and data directory across restarts, and is killed when the
//! `LocalCluster` is dropped.
//!
//! One coordinator by default. With several (`ClusterOptions::coordinators`)
//! each gets its own port and data directory, `--advertise` and `--peers`
//! naming all of them, and every counter gets all their URLs; the methods
//! without an index (`kill_coordinator`, `coordinator_url`, ...) mean the
//! first one.

use crate::api::Api;
use crate::wait;
use anyhow::{bail, Context};
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tally_common::api::CounterState;

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub counters: usize,
    /// Coordinators that replicate the decision log; 1 (the default) runs
    /// one on its own, without `--peers`.
    pub coordinators: usize,
    /// The first coordinator's port; the other coordinators, then the
    /// counters, take the next ones. `None`: free ports.
    pub base_port: Option<u16>,
    /// Where data directories and logs go.
    pub dir: PathBuf,
    pub health_interval: Duration,
    /// Extra `--flag value` arguments for the coordinator.
    pub coordinator_args: Vec<String>,
    /// Extra environment for the coordinator (failpoints, say).
    pub coordinator_env: Vec<(String, String)>,
    /// The coordinator binary, if not the one next to the others.
    pub coordinator_bin: Option<PathBuf>,
    /// Inherit stdout/stderr instead of writing log files.
    pub inherit_output: bool,
    /// The cluster token every process gets (`TALLY_CLUSTER_TOKEN`).
    pub cluster_token: Option<String>,
    /// Extra environment for every counter.
    pub counter_env: Vec<(String, String)>,
    /// Extra `--flag value` arguments for every counter.
    pub counter_args: Vec<String>,
    /// URLs put before the coordinators' own in every counter's
    /// `--coordinator` list: addresses where no coordinator answers, which
    /// a counter must pass over.
    pub unreachable_coordinators: Vec<String>,
}

impl ClusterOptions {
    pub fn new(dir: impl Into<PathBuf>, counters: usize) -> Self {
        ClusterOptions {
            counters,
            coordinators: 1,
            base_port: None,
            dir: dir.into(),
            health_interval: Duration::from_millis(200),
            coordinator_args: Vec::new(),
            coordinator_env: Vec::new(),
            coordinator_bin: None,
            inherit_output: false,
            cluster_token: None,
            counter_env: Vec::new(),
            counter_args: Vec::new(),
            unreachable_coordinators: Vec::new(),
        }
    }

    /// The name of coordinator `i` (from 0), which also names its data
    /// directory and log: `coordinator` when it is the only one, else
    /// `coordinator-1`, `coordinator-2`, ...
    pub fn coordinator_name(&self, i: usize) -> String {
        if self.coordinators == 1 {
            "coordinator".to_string()
        } else {
            format!("coordinator-{}", i + 1)
        }
    }

    /// The command line of each coordinator, given their ports in order.
    /// With one, what it has always been; with several, each also gets
    /// its own `--advertise` URL and the `--peers` list of all of them.
    pub fn coordinator_command_lines(&self, ports: &[u16]) -> Vec<Vec<String>> {
        let urls: Vec<String> = ports.iter().map(|p| loopback_url(*p)).collect();
        ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let mut args = vec![
                    "--listen".to_string(),
                    format!("127.0.0.1:{port}"),
                    "--data-dir".to_string(),
                    path_arg(&self.dir.join(self.coordinator_name(i))),
                    "--health-interval".to_string(),
                    humantime::format_duration(self.health_interval).to_string(),
                ];
                if ports.len() > 1 {
                    args.extend([
                        "--advertise".to_string(),
                        urls[i].clone(),
                        "--peers".to_string(),
                        urls.join(","),
                    ]);
                }
                args.extend(self.coordinator_args.iter().cloned());
                args
            })
            .collect()
    }

    /// Counter `info`'s command line, listening on `port`, given the
    /// coordinators' URLs.
    pub fn counter_command_line(
        &self,
        info: &CounterInfo,
        port: u16,
        coordinator_urls: &[String],
    ) -> Vec<String> {
        let coordinators: Vec<&str> = self
            .unreachable_coordinators
            .iter()
            .chain(coordinator_urls)
            .map(String::as_str)
            .collect();
        vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            path_arg(&info.data_dir),
            "--coordinator".into(),
            coordinators.join(","),
            "--advertise".into(),
            info.url.clone(),
            "--id".into(),
            info.id.clone(),
        ]
        .into_iter()
        .chain(self.counter_args.iter().cloned())
        .collect()
    }
}

/// One process the cluster owns.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        if let Some(log) = &self.log {
            let file = OpenOptions::new().create(true).append(true).open(log)?;
            command.stdout(file.try_clone()?).stderr(file);
            command.env("NO_COLOR", "1");
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            bail!("{} is not running", self.name)
        };
        signal_pid(&self.name, child.id(), signal)
    }

    /// Fails if the process has exited on its own: a crash nobody asked
    /// for must not pass as the fault a test was about to inject.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("{} had already exited ({status})", self.name);
            }
        }
        Ok(())
    }

    /// kill -9 and reap; fails if it was not running or had died already.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.check_alive()?;
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name)
        };
        child
            .kill()
            .with_context(|| format!("kill -9 {}", self.name))?;
        child.wait()?;
        Ok(())
    }

    /// Waits for a process that is meant to die on its own (a failpoint)
    /// and reaps it; fails if it is still running after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(child) = &mut self.child else {
            bail!("{} is not running", self.name)
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("{} still runs after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit (kill -9 after 10 s).
    fn stop(&mut self) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        // A stopped child must be continued to exit.
        signal_pid(&self.name, child.id(), libc::SIGCONT)?;
        signal_pid(&self.name, child.id(), libc::SIGTERM)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                child.wait()?;
                bail!("{} did not stop within 10 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// How the process ended, if it was started and has exited since.
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

/// A counter's fixed identity within the cluster.
#[derive(Debug, Clone)]
pub struct CounterInfo {
    pub id: String,
    pub url: String,
    pub data_dir: PathBuf,
}

pub struct LocalCluster {
    options: ClusterOptions,
    /// In `--peers` order; the first is "the coordinator".
    coordinators: Vec<Proc>,
    coordinator_urls: Vec<String>,
    counters: Vec<Proc>,
    infos: Vec<CounterInfo>,
    api: Api,
}

/// The directory holding `coordinator` and `counter`: `TALLY_BIN_DIR`, else
/// the directory of the running executable (or its parent for test
/// executables under `deps/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("TALLY_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    if !dir.join("coordinator").exists() || !dir.join("counter").exists() {
        bail!(
            "no coordinator and counter binaries in {}: run `cargo build --release --bins` first \
             or set TALLY_BIN_DIR",
            dir.display()
        );
    }
    Ok(dir)
}

/// A port to give a process of a test cluster. Not one the kernel picks
/// for port 0: that comes from the ephemeral range, which every outgoing
/// connection also draws its local port from, so between this call and the
/// process's own bind a test's client could take it (a counter that could
/// not listen, and a cluster that never came up, in one fresh-clone run).
/// Below the ephemeral range (Linux: 32768-60999) only listeners compete;
/// each port is handed out once per test process, and checked free.
pub fn free_port() -> anyhow::Result<u16> {
    free_ports(1)
}

/// The first of `n` consecutive ports, each as [`free_port`] hands one
/// out: for a compose project that publishes its coordinators on the ports
/// after the first (scripts/compose-coordinators.sh).
pub fn free_ports(n: u16) -> anyhow::Result<u16> {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let first = 20_000 + (rand::random::<u16>() % (12_000 - n));
        let ports = first..first + n;
        if ports.clone().any(|port| handed_out.contains(&port)) {
            continue;
        }
        if ports
            .clone()
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        {
            handed_out.extend(ports);
            return Ok(first);
        }
    }
    bail!("no {n} free consecutive ports between 20000 and 32000")
}

impl LocalCluster {
    /// Starts the coordinator and the counters and waits until every counter
    /// is live and in sync.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let cluster = Self::spawn(options)?;
        cluster
            .wait_all_in_sync(Duration::from_secs(30))
            .await
            .context("cluster did not come up")?;
        Ok(cluster)
    }

    /// Starts the processes without waiting for them. With a `base_port`,
    /// every port the cluster needs must be free first: a process that
    /// cannot listen would otherwise fail in its own log, and a counter
    /// could register with whatever else answers on the coordinator's port.
    pub fn spawn(options: ClusterOptions) -> anyhow::Result<Self> {
        let bins = bin_dir()?;
        if options.coordinators == 0 {
            bail!("a cluster needs at least one coordinator");
        }
        if let Some(base) = options.base_port {
            check_ports_free(base, options.coordinators, options.counters)?;
        }
        std::fs::create_dir_all(&options.dir)?;
        let port = |i: usize| -> anyhow::Result<u16> {
            match options.base_port {
                Some(base) => Ok(base + i as u16),
                None => free_port(),
            }
        };
        let token_env: Vec<(String, String)> = options
            .cluster_token
            .iter()
            .map(|t| ("TALLY_CLUSTER_TOKEN".to_string(), t.clone()))
            .collect();
        let log =
            |name: &str| (!options.inherit_output).then(|| options.dir.join(format!("{name}.log")));
        let coordinator_ports = (0..options.coordinators)
            .map(port)
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let coordinator_urls: Vec<String> =
            coordinator_ports.iter().map(|p| loopback_url(*p)).collect();
        let mut coordinators = Vec::new();
        for (i, args) in options
            .coordinator_command_lines(&coordinator_ports)
            .into_iter()
            .enumerate()
        {
            let name = options.coordinator_name(i);
            let mut coordinator = Proc {
                program: options
                    .coordinator_bin
                    .clone()
                    .unwrap_or_else(|| bins.join("coordinator")),
                args,
                env: token_env
                    .iter()
                    .cloned()
                    .chain(options.coordinator_env.iter().cloned())
                    .collect(),
                log: log(&name),
                name,
                child: None,
            };
            coordinator.start()?;
            coordinators.push(coordinator);
        }

        let mut counters = Vec::new();
        let mut infos = Vec::new();
        for i in 1..=options.counters {
            let port = port(options.coordinators - 1 + i)?;
            let info = CounterInfo {
                id: format!("counter-{i}"),
                url: loopback_url(port),
                data_dir: options.dir.join(format!("counter-{i}")),
            };
            let mut proc = Proc {
                name: info.id.clone(),
                program: bins.join("counter"),
                args: options.counter_command_line(&info, port, &coordinator_urls),
                env: token_env
                    .iter()
                    .chain(&options.counter_env)
                    .cloned()
                    .collect(),
                log: log(&info.id),
                child: None,
            };
            proc.start()?;
            counters.push(proc);
            infos.push(info);
        }
        Ok(LocalCluster {
            api: Api::new(coordinator_urls[0].clone()),
            options,
            coordinators,
            coordinator_urls,
            counters,
            infos,
        })
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The first coordinator's URL.
    pub fn coordinator_url(&self) -> &str {
        &self.coordinator_urls[0]
    }

    /// Every coordinator's URL, in `--peers` order.
    pub fn coordinator_urls(&self) -> &[String] {
        &self.coordinator_urls
    }

    pub fn counters(&self) -> &[CounterInfo] {
        &self.infos
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Process id of the (first) coordinator, if running.
    pub fn coordinator_pid(&self) -> Option<u32> {
        self.coordinators[0].child.as_ref().map(|c| c.id())
    }

    /// Process id of counter `i` (0-based, as in `counters()`), if running.
    pub fn counter_pid(&self, i: usize) -> Option<u32> {
        self.counters.get(i)?.child.as_ref().map(|c| c.id())
    }

    /// The first process that was started and has exited since, with how
    /// it ended: a process that cannot start (bad flag, data directory
    /// locked) is reported at once instead of after a wait.
    pub fn exited(&mut self) -> Option<String> {
        let log = |p: &Proc| {
            p.log
                .as_ref()
                .map(|l| format!(" (its log: {})", l.display()))
                .unwrap_or_default()
        };
        let single = self.coordinators.len() == 1;
        for p in &mut self.coordinators {
            if let Some(status) = p.exit_status() {
                let who = if single { "the coordinator" } else { &p.name };
                return Some(format!("{who} exited: {status}{}", log(p)));
            }
        }
        self.counters.iter_mut().find_map(|p| {
            let status = p.exit_status()?;
            Some(format!("{} exited: {status}{}", p.name, log(p)))
        })
    }

    pub fn counter_running(&self, i: usize) -> bool {
        self.counters[i].running()
    }

    pub fn coordinator_running(&self) -> bool {
        self.coordinator_running_at(0)
    }

    /// Whether coordinator `i` (from 0, in `--peers` order) runs.
    pub fn coordinator_running_at(&self, i: usize) -> bool {
        self.coordinators[i].running()
    }

    pub fn kill_counter(&mut self, i: usize) -> anyhow::Result<()> {
        self.counters[i].kill()
    }

    pub fn stop_counter(&mut self, i: usize) -> anyhow::Result<Option<i32>> {
        self.counters[i].stop()
    }

    pub fn start_counter(&mut self, i: usize) -> anyhow::Result<()> {
        self.counters[i].start()
    }

    /// SIGSTOP: the process hangs with its sockets open, like a stalled host.
    pub fn freeze_counter(&self, i: usize) -> anyhow::Result<()> {
        self.counters[i].signal(libc::SIGSTOP)
    }

    pub fn thaw_counter(&self, i: usize) -> anyhow::Result<()> {
        self.counters[i].signal(libc::SIGCONT)
    }

    pub fn freeze_coordinator(&self) -> anyhow::Result<()> {
        self.freeze_coordinator_at(0)
    }

    pub fn thaw_coordinator(&self) -> anyhow::Result<()> {
        self.thaw_coordinator_at(0)
    }

    /// SIGSTOP of coordinator `i`: a leader that hangs with its sockets
    /// open, so its followers must stop waiting for it.
    pub fn freeze_coordinator_at(&self, i: usize) -> anyhow::Result<()> {
        self.coordinators[i].signal(libc::SIGSTOP)
    }

    pub fn thaw_coordinator_at(&self, i: usize) -> anyhow::Result<()> {
        self.coordinators[i].signal(libc::SIGCONT)
    }

    /// Replaces counter `i`'s program and extra environment for its next
    /// start (the failpoint build, say); `None` goes back to the plain one.
    pub fn set_counter_program(
        &mut self,
        i: usize,
        program: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let proc = &mut self.counters[i];
        proc.program = match program {
            Some(p) => p,
            None => bin_dir()?.join("counter"),
        };
        let base: Vec<(String, String)> = self
            .options
            .cluster_token
            .iter()
            .map(|t| ("TALLY_CLUSTER_TOKEN".to_string(), t.clone()))
            .chain(self.options.counter_env.iter().cloned())
            .collect();
        proc.env = base.into_iter().chain(env).collect();
        Ok(())
    }

    /// Waits until counter `i`, meant to crash (a failpoint), has exited.
    pub fn wait_counter_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.counters[i].wait_exit(timeout)
    }

    /// Waits until the coordinator, meant to crash, has exited.
    pub fn wait_coordinator_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.coordinators[0].wait_exit(timeout)
    }

    /// kill -9 of every process at once (as close together as signals go),
    /// then reaps them all: a power cut.
    pub fn kill_all(&mut self) -> anyhow::Result<()> {
        for proc in self.counters.iter_mut().chain(&mut self.coordinators) {
            proc.check_alive()?;
        }
        for proc in self.counters.iter().chain(&self.coordinators) {
            proc.signal(libc::SIGKILL)?;
        }
        for proc in self.counters.iter_mut().chain(&mut self.coordinators) {
            if let Some(mut child) = proc.child.take() {
                child.wait()?;
            }
        }
        Ok(())
    }

    /// Deletes a stopped counter's data directory: a lost disk.
    pub fn wipe_counter(&self, i: usize) -> anyhow::Result<()> {
        if self.counters[i].running() {
            bail!("stop counter {i} before wiping it");
        }
        let dir = &self.infos[i].data_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    pub fn kill_coordinator(&mut self) -> anyhow::Result<()> {
        self.kill_coordinator_at(0)
    }

    pub fn stop_coordinator(&mut self) -> anyhow::Result<Option<i32>> {
        self.stop_coordinator_at(0)
    }

    pub fn start_coordinator(&mut self) -> anyhow::Result<()> {
        self.start_coordinator_at(0)
    }

    /// kill -9 of coordinator `i` (from 0, in `--peers` order).
    pub fn kill_coordinator_at(&mut self, i: usize) -> anyhow::Result<()> {
        self.coordinators[i].kill()
    }

    /// SIGTERM to coordinator `i`, and its exit code once it stopped.
    pub fn stop_coordinator_at(&mut self, i: usize) -> anyhow::Result<Option<i32>> {
        self.coordinators[i].stop()
    }

    /// Starts coordinator `i` again, on its port and data directory.
    pub fn start_coordinator_at(&mut self, i: usize) -> anyhow::Result<()> {
        self.coordinators[i].start()
    }

    /// Deletes stopped coordinator `i`'s data directory: a lost disk.
    pub fn wipe_coordinator_at(&self, i: usize) -> anyhow::Result<()> {
        if self.coordinators[i].running() {
            bail!("stop coordinator {i} before wiping it");
        }
        let dir = self.options.dir.join(self.options.coordinator_name(i));
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// The API of coordinator `i` alone (from 0, in `--peers` order).
    pub fn coordinator_api(&self, i: usize) -> Api {
        Api::new(self.coordinator_urls[i].clone())
    }

    /// kill -9 of coordinator `i`, then the same process started again on
    /// its data directory: a crash and a supervisor's restart.
    pub fn restart_coordinator_at(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_coordinator_at(i)?;
        self.start_coordinator_at(i)
    }

    /// Everything counter `i` has logged (its runs append to one file).
    /// What coordinator `i` has logged so far.
    pub fn coordinator_log(&self, i: usize) -> String {
        let path = self
            .options
            .dir
            .join(format!("{}.log", self.options.coordinator_name(i)));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn counter_log(&self, i: usize) -> String {
        let path = self.options.dir.join(format!("{}.log", self.infos[i].id));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Sets `--flag value` on counter `i`'s command line for its next start
    /// (replacing the flag's value if it is there already).
    pub fn set_counter_arg(&mut self, i: usize, flag: &str, value: &str) {
        let args = &mut self.counters[i].args;
        match args.iter().position(|a| a == flag) {
            Some(at) => args[at + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// Sets `--flag value` on coordinator `i`'s command line for its next
    /// start.
    pub fn set_coordinator_arg(&mut self, i: usize, flag: &str, value: &str) {
        let args = &mut self.coordinators[i].args;
        match args.iter().position(|a| a == flag) {
            Some(at) => args[at + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// Replaces every coordinator's environment for its next start.
    pub fn set_coordinator_env(&mut self, env: Vec<(String, String)>) {
        for coordinator in &mut self.coordinators {
            coordinator.env = env.clone();
        }
    }

    /// Waits until every counter has applied what was decided, then checks
    /// that the coordinator and every counter give each tenant its count.
    pub async fn check_counts(&self, want: &[(&str, u64)]) -> anyhow::Result<()> {
        let urls: Vec<String> = self.infos.iter().map(|c| c.url.clone()).collect();
        self.api
            .wait_applied(&urls, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("counters did not apply what was decided: {e}"))?;
        for (tenant, want) in want {
            let got = self.api.count(tenant).await;
            if got != Ok(*want) {
                bail!("{tenant:?} via the coordinator: {got:?}, want {want}");
            }
            for c in &self.infos {
                let got = self.api.counter_count(&c.url, tenant).await;
                if got != Ok(*want) {
                    bail!("{tenant:?} at {}: {got:?}, want {want}", c.id);
                }
            }
        }
        Ok(())
    }

    /// Stops everything with SIGTERM.
    pub fn stop_all(&mut self) -> anyhow::Result<()> {
        for counter in &mut self.counters {
            counter.stop()?;
        }
        for coordinator in &mut self.coordinators {
            coordinator.stop()?;
        }
        Ok(())
    }

    /// Waits until the coordinator answers and every counter is live and in
    /// sync.
    pub async fn wait_all_in_sync(&self, timeout: Duration) -> anyhow::Result<()> {
        let ids: Vec<String> = self.infos.iter().map(|c| c.id.clone()).collect();
        self.wait_in_sync(&ids, timeout).await
    }

    /// Waits until the named counters are live and in sync.
    pub async fn wait_in_sync(&self, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
        let api = self.api.clone();
        wait::until("counters live and in sync", timeout, || {
            let api = api.clone();
            async move {
                let view = api.cluster().await?;
                let ready = ids.iter().all(|id| {
                    // A coordinator of a version without registrations
                    // reports no incarnation; it is then not waited for.
                    view.counters.iter().any(|c| {
                        &c.id.0 == id
                            && c.in_sync
                            && (c.registered || c.incarnation.is_none())
                            && c.state == CounterState::Live
                    })
                });
                if ready {
                    Ok(())
                } else {
                    Err(format!("{view:?}"))
                }
            }
        })
        .await
    }

    /// Waits until counter `i` is in `state` (and out of sync unless live).
    pub async fn wait_counter_state(
        &self,
        i: usize,
        want: &[CounterState],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let api = self.api.clone();
        let id = self.infos[i].id.clone();
        wait::until(&format!("{id} in {want:?}"), timeout, || {
            let (api, id) = (api.clone(), id.clone());
            async move {
                let view = api.cluster().await?;
                match view.counters.iter().find(|c| c.id.0 == id) {
                    Some(c) if want.contains(&c.state) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    /// Waits until counter `i` is out of the in-sync set (or gone).
    pub async fn wait_out_of_sync(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let api = self.api.clone();
        let id = self.infos[i].id.clone();
        wait::until(&format!("{id} out of sync"), timeout, || {
            let (api, id) = (api.clone(), id.clone());
            async move {
                let view = api.cluster().await?;
                match view.counters.iter().find(|c| c.id.0 == id) {
                    Some(c) if c.in_sync => Err(format!("{c:?}")),
                    _ => Ok(()),
                }
            }
        })
        .await
    }

    /// Waits until the (first) coordinator answers `/health`.
    pub async fn wait_coordinator(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_coordinator_at(0, timeout).await
    }

    /// Waits until coordinator `i` answers `/health`, whatever its role.
    pub async fn wait_coordinator_at(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let api = Api::new(self.coordinator_urls[i].clone());
        let what = format!("{} health", self.coordinators[i].name);
        wait::until(&what, timeout, || {
            let api = api.clone();
            async move {
                match api.get("/health").await {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for proc in self.counters.iter_mut().chain(&mut self.coordinators) {
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Refuses at once, naming the port and who needed it, when a port of a
/// cluster on `base` (the first coordinator), the other `coordinators`
/// after it and the `counters` ports after those is taken on 127.0.0.1 (a
/// listener on 0.0.0.0 or [::] takes it too).
pub fn check_ports_free(base: u16, coordinators: usize, counters: usize) -> anyhow::Result<()> {
    let processes = coordinators + counters;
    for i in 0..processes {
        let Some(port) = base.checked_add(i as u16) else {
            bail!(
                "--base-port {base} leaves no room for {coordinators} coordinators and \
                 {counters} counters below port 65536"
            );
        };
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            let who = match i {
                0 if coordinators == 1 => "the coordinator".to_string(),
                i if i < coordinators => format!("coordinator-{}", i + 1),
                i => format!("counter-{}", i + 1 - coordinators),
            };
            bail!(
                "port {port}, for {who}, is already in use ({e}). Another tally (make run, \
                 make up) or another program listens there: stop it, or choose other ports, \
                 e.g. make run HTTP_PORT={} (the other processes take the {} ports after it)",
                base.saturating_add(1000),
                processes - 1
            );
        }
    }
    Ok(())
}

/// kill(2), with its failure reported: a signal that did not arrive must
/// not pass for a fault injected.
fn signal_pid(name: &str, pid: u32, signal: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc != 0 {
        bail!(
            "kill({name}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn loopback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn one_coordinator_runs_alone_with_the_command_line_it_always_had() {
        let options = ClusterOptions::new("/tmp/c", 2);
        let lines = options.coordinator_command_lines(&[8080]);
        assert_eq!(
            lines,
            [[
                "--listen",
                "127.0.0.1:8080",
                "--data-dir",
                "/tmp/c/coordinator",
                "--health-interval",
                "200ms"
            ]]
        );
        let info = CounterInfo {
            id: "counter-1".into(),
            url: "http://127.0.0.1:8081".into(),
            data_dir: "/tmp/c/counter-1".into(),
        };
        let counter = options.counter_command_line(&info, 8081, &[loopback_url(8080)]);
        assert_eq!(
            flag(&counter, "--coordinator"),
            Some("http://127.0.0.1:8080")
        );
    }

    #[test]
    fn three_coordinators_each_advertise_themselves_and_name_all_peers() {
        let mut options = ClusterOptions::new("/tmp/c", 2);
        options.coordinators = 3;
        options.coordinator_args = vec!["--min-insync".into(), "2".into()];
        let lines = options.coordinator_command_lines(&[9000, 9001, 9002]);
        assert_eq!(lines.len(), 3);
        let peers = "http://127.0.0.1:9000,http://127.0.0.1:9001,http://127.0.0.1:9002";
        for (i, args) in lines.iter().enumerate() {
            let port = 9000 + i;
            assert_eq!(flag(args, "--listen"), Some(&*format!("127.0.0.1:{port}")));
            assert_eq!(
                flag(args, "--data-dir"),
                Some(&*format!("/tmp/c/coordinator-{}", i + 1))
            );
            assert_eq!(
                flag(args, "--advertise"),
                Some(&*format!("http://127.0.0.1:{port}"))
            );
            assert_eq!(flag(args, "--peers"), Some(peers));
            assert_eq!(
                flag(args, "--min-insync"),
                Some("2"),
                "extra arguments kept"
            );
        }
        let info = CounterInfo {
            id: "counter-1".into(),
            url: "http://127.0.0.1:9003".into(),
            data_dir: "/tmp/c/counter-1".into(),
        };
        let urls: Vec<String> = [9000, 9001, 9002].map(loopback_url).into();
        let counter = options.counter_command_line(&info, 9003, &urls);
        assert_eq!(flag(&counter, "--coordinator"), Some(peers));
        assert_eq!(flag(&counter, "--advertise"), Some("http://127.0.0.1:9003"));

        options.unreachable_coordinators = vec!["http://127.0.0.1:1".into()];
        let counter = options.counter_command_line(&info, 9003, &urls);
        assert_eq!(
            flag(&counter, "--coordinator"),
            Some(&*format!("http://127.0.0.1:1,{peers}"))
        );
    }

    #[test]
    fn coordinators_are_named_by_their_place_when_there_are_several() {
        let mut options = ClusterOptions::new("/tmp/c", 1);
        assert_eq!(options.coordinator_name(0), "coordinator");
        options.coordinators = 3;
        assert_eq!(options.coordinator_name(0), "coordinator-1");
        assert_eq!(options.coordinator_name(2), "coordinator-3");
    }
}
