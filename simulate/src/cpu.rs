//! CPU time of processes, for the benchmark's "CPU per acknowledged
//! request" table: the servers' from `/proc/PID/stat` before and after a
//! run, a load generator's from the kernel's account when it is reaped.
//! Throughput on a shared 2-core machine moves with whatever else runs;
//! CPU per request moves much less, so it is what a change is judged by.

use anyhow::{bail, Context};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// User plus system time `pid` has used so far, all its threads together
/// (`utime` + `stime` of `/proc/PID/stat`, in clock ticks of 10 ms on
/// Linux, so a run should use seconds of CPU).
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

/// The CPU time in one `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after the
/// last `)`: the state is field 3, `utime` 14 and `stime` 15.
fn parse_stat(stat: &str) -> Option<Duration> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// CPU time of several processes, read together.
#[derive(Debug, Clone)]
pub struct Snapshot(Vec<Duration>);

impl Snapshot {
    pub fn take(pids: &[u32]) -> anyhow::Result<Self> {
        pids.iter()
            .map(|&pid| process_cpu(pid))
            .collect::<anyhow::Result<_>>()
            .map(Snapshot)
    }

    /// CPU used by each process since `earlier`, in the same order.
    pub fn since(&self, earlier: &Snapshot) -> Vec<Duration> {
        self.0
            .iter()
            .zip(&earlier.0)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect()
    }
}

/// What a measured program printed and the CPU it used.
#[derive(Debug)]
pub struct Measured {
    pub stdout: String,
    pub stderr: String,
    pub cpu: Duration,
}

/// Runs `program` to its end and returns its output and the user plus
/// system time it and its reaped children used (`wait4`'s rusage, in
/// microseconds). Fails if it does not exit with status 0.
pub fn run_measured(program: &str, args: &[&str]) -> anyhow::Result<Measured> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut stderr_pipe = child.stderr.take().context("stderr pipe")?;
    // Read stderr beside stdout, so neither pipe fills and stalls it.
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("stdout pipe")?
        .read_to_string(&mut stdout)?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let (status, cpu) = reap(child.id())?;
    // Reaped above: `child` must not be waited for again.
    drop(child);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{program} failed (wait status {status}): {stdout}{stderr}");
    }
    Ok(Measured {
        stdout,
        stderr,
        cpu,
    })
}

/// Waits for the child `pid` and returns its wait status and CPU time.
fn reap(pid: u32) -> anyhow::Result<(i32, Duration)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, writing into the two locals.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if rc == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    let cpu = Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime));
    Ok((status, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a thread may have.
        let stat = "4242 (tokio (rt) w 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    9 0 1234 0 0";
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            parse_stat(stat),
            Some(Duration::from_nanos(300 * 1_000_000_000 / ticks))
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn a_measured_program_reports_its_output_and_cpu() {
        let busy = run_measured(
            "sh",
            &[
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done",
            ],
        )
        .unwrap();
        assert_eq!(busy.stdout.trim(), "done");
        assert!(busy.cpu > Duration::ZERO, "{busy:?}");
        assert!(run_measured("sh", &["-c", "exit 3"]).is_err());
    }

    #[test]
    fn a_busy_process_is_seen_using_cpu() {
        let me = [std::process::id()];
        let before = Snapshot::take(&me).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut x = 0u64;
        let used = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let used = Snapshot::take(&me).unwrap().since(&before)[0];
            if used > Duration::ZERO || std::time::Instant::now() > deadline {
                break used;
            }
        };
        assert!(used > Duration::ZERO, "no CPU seen in 5 s of spinning");
    }
}
