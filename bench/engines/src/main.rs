//! engine-bench: picks the embedded storage engine for a tally counter
//! replica by running the replica's own write path on redb and on fjall.
//!
//! Why this exists: a counter replica's cost is dominated by durable commits.
//! Each commit is one fsync'd write transaction that (a) checks every
//! (tenant, id) key and inserts the new ones, (b) bumps a per-tenant count in
//! a second table, and (c) appends one log record (keyed by a u64 commit
//! index) holding the newly added items. Generic key-value benchmarks do not
//! show how an engine behaves on exactly that shape, so this one does, and
//! nothing else.
//!
//! What it measures, per engine, each run in a fresh temporary directory:
//! - commits of 1, 100 and 1,000 items (2,000 / 500 / 200 commits):
//!   items/s, commits/s, p50/p99 commit latency, bytes written per commit;
//! - on the store left by the 1,000-item run (200,000 offered items):
//!   tenant-count point lookups (one read transaction each), full scans of
//!   the log that decode every item, and the disk size after a clean close;
//! - a sustained run of 1,000 commits of 1,000 items, long enough that
//!   fjall has to flush its default 64 MiB memtable once and redb's B-tree
//!   grows to ~900,000 keys, so deferred or growing costs are not hidden.
//!
//! Engines run back to back within each phase (alternating who goes first)
//! so outside load on a shared machine lands on both alike; one pass takes
//! about a minute on 2 cores. The item stream is deterministic (fixed
//! seed): 16 tenants, 16-byte ids, and about 10% of items re-send an id seen
//! earlier, so the existence check both hits and misses. Batches are built
//! before the clock starts, and every run checks that the counts and the log
//! agree with what the commits reported.
//!
//! Usage: `engine-bench [--out PATH] [--dir PARENT] [--engine redb|fjall]
//! [--quick]` (`--out` defaults to `target/engine-bench.json` under the cwd;
//! `--dir` picks where the temporary stores live, default the system temp
//! dir; `--quick` divides every count by 10 for a smoke test).

mod engines;

use engines::{Engine, Fjall, Item, Redb, Res, ITEM_LEN};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TENANTS: u32 = 16;
const DUP_PERCENT: u64 = 10;
const SEED: u64 = 0x7a11_7a11_0000_0001;
/// (items per commit, commits). The last one is the 200,000-item load that
/// the read figures and the disk size are taken from.
const BATCHES: [(usize, usize); 3] = [(1, 2_000), (100, 500), (1_000, 200)];
/// A longer run that crosses fjall's default 64 MiB memtable size.
const SUSTAINED: (usize, usize) = (1_000, 1_000);
const LOOKUPS: usize = 200_000;
const SCANS: usize = 5;

/// splitmix64: tiny, deterministic, good enough for ids.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Builds `commits` batches of `size` items, ~DUP_PERCENT% of them re-sends.
fn make_batches(size: usize, commits: usize, seed: u64) -> Vec<Vec<Item>> {
    let mut rng = Rng(seed);
    let mut seen: Vec<Item> = Vec::with_capacity(size * commits);
    (0..commits)
        .map(|_| {
            (0..size)
                .map(|_| {
                    if !seen.is_empty() && rng.next() % 100 < DUP_PERCENT {
                        return seen[(rng.next() % seen.len() as u64) as usize];
                    }
                    let mut item = [0u8; ITEM_LEN];
                    let tenant = (rng.next() % TENANTS as u64) as u32;
                    item[..4].copy_from_slice(&tenant.to_be_bytes());
                    item[4..12].copy_from_slice(&rng.next().to_le_bytes());
                    item[12..].copy_from_slice(&rng.next().to_le_bytes());
                    seen.push(item);
                    item
                })
                .collect()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
fn disk_usage(dir: &Path) -> Res<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path())?;
            apparent += a;
            allocated += b;
        } else {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    Ok((apparent, allocated))
}

struct Row {
    engine: &'static str,
    workload: String,
    figure: String,
}

struct Opts {
    out: PathBuf,
    parent: Option<PathBuf>,
    engine: Option<String>,
    scale: usize,
}

fn tempdir(opts: &Opts) -> Res<tempfile::TempDir> {
    Ok(match &opts.parent {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    })
}

/// Bytes this process (all threads, so background flushes and compactions
/// too) has sent towards the block layer so far, from /proc/self/io.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

struct Load<E> {
    dir: tempfile::TempDir,
    store: E,
    items: usize,
    added: usize,
    secs: f64,
    lat: Vec<Duration>,
    written: u64,
}

/// Opens a fresh store and times `commits` commits of `size` items each.
fn load<E: Engine>(opts: &Opts, size: usize, commits: usize, seed: u64) -> Res<Load<E>> {
    let batches = make_batches(size, commits, seed);
    let dir = tempdir(opts)?;
    let mut store = E::open(dir.path())?;

    let mut lat = Vec::with_capacity(commits);
    let mut added = 0usize;
    let written_before = written_bytes();
    let start = Instant::now();
    for (index, batch) in batches.iter().enumerate() {
        let t = Instant::now();
        added += store.commit(index as u64, batch)?;
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    let written = written_bytes() - written_before;

    // Correctness: counts and log must agree with what commit reported.
    let total: u64 = (0..TENANTS).map(|t| store.count(t)).sum::<Res<u64>>()?;
    let (records, logged, _) = store.scan_log()?;
    assert_eq!(total, added as u64, "{}: counts disagree", E::NAME);
    assert_eq!(logged, added as u64, "{}: log disagrees", E::NAME);
    assert_eq!(records, commits as u64, "{}: log records", E::NAME);

    Ok(Load {
        dir,
        store,
        items: size * commits,
        added,
        secs,
        lat,
        written,
    })
}

/// One phase of the benchmark. Phases run in order, and within each phase
/// the engines run back to back (alternating which goes first), so a burst
/// of outside load on this shared 2-core machine hits both alike.
#[derive(Clone, Copy)]
enum Phase {
    /// BATCHES[i]; the last one also runs the reads and the disk-size check.
    Batch(usize),
    Sustained,
}

fn run_phase<E: Engine>(
    opts: &Opts,
    phase: Phase,
    rows: &mut Vec<Row>,
) -> Res<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let mut row = |workload: String, figure: String| {
        rows.push(Row {
            engine: E::NAME,
            workload,
            figure,
        })
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);

    match phase {
        Phase::Batch(i) => {
            let (size, commits) = BATCHES[i];
            let commits = (commits / opts.scale).max(1);
            let mut run = load::<E>(opts, size, commits, SEED + i as u64)?;
            run.lat.sort();
            let (secs, items) = (run.secs, run.items);
            let (cps, ips) = (commits as f64 / secs, items as f64 / secs);
            let (p50, p99) = (percentile(&run.lat, 0.50), percentile(&run.lat, 0.99));
            let kib_per_commit = run.written as f64 / 1024.0 / commits as f64;
            row(
                format!("commit, {size} item(s) each"),
                format!(
                    "{ips:>10.0} items/s  {cps:>6.0} commits/s  p50 {p50:.2} ms  p99 {p99:.2} ms  \
                     {kib_per_commit:.0} KiB written/commit"
                ),
            );
            out.push((
                format!("batch_{size}"),
                json!({
                    "items_per_commit": size, "commits": commits, "items_offered": items,
                    "items_new": run.added, "secs": secs, "commits_per_s": cps,
                    "items_per_s": ips, "commit_p50_ms": p50, "commit_p99_ms": p99,
                    "bytes_written": run.written,
                }),
            ));
            eprintln!("  {} size {size}: {secs:.1} s", E::NAME);
            if i + 1 < BATCHES.len() {
                run.store.close()?;
                return Ok(out);
            }

            // Reads on the loaded store (the 200,000-item run).
            let Load {
                dir,
                store,
                added: distinct,
                ..
            } = run;
            let lookups = (LOOKUPS / opts.scale).max(1);
            let mut rng = Rng(SEED ^ 0xfeed);
            let tenants: Vec<u32> = (0..lookups)
                .map(|_| (rng.next() % TENANTS as u64) as u32)
                .collect();
            let start = Instant::now();
            let mut checksum = 0u64;
            for &t in &tenants {
                checksum = checksum.wrapping_add(store.count(t)?);
            }
            let lookup_secs = start.elapsed().as_secs_f64();
            std::hint::black_box(checksum);
            let rps = lookups as f64 / lookup_secs;
            row(
                "tenant-count lookup".into(),
                format!("{rps:>10.0} reads/s  (1 read txn + 1 get each)"),
            );
            out.push((
                "count_lookup".into(),
                json!({ "lookups": lookups, "secs": lookup_secs, "reads_per_s": rps }),
            ));

            // Scan repeatedly (at least SCANS times and at least 1 s) and take
            // the median, so a millisecond-scale scan is not one noisy reading.
            let mut scan_secs = Vec::new();
            let mut scanned = 0;
            let scan_start = Instant::now();
            while scan_secs.len() < SCANS || scan_start.elapsed() < Duration::from_secs(1) {
                let start = Instant::now();
                let (_, items, sum) = store.scan_log()?;
                scan_secs.push(start.elapsed().as_secs_f64());
                std::hint::black_box(sum);
                scanned = items;
            }
            scan_secs.sort_by(f64::total_cmp);
            let scan_median = scan_secs[scan_secs.len() / 2];
            let sips = scanned as f64 / scan_median;
            row(
                "full log scan".into(),
                format!(
                    "{sips:>10.0} items/s  ({scanned} items, median of {} scans)",
                    scan_secs.len()
                ),
            );
            out.push((
                "log_scan".into(),
                json!({
                    "items": scanned, "runs": scan_secs.len(), "median_secs": scan_median,
                    "items_per_s": sips,
                }),
            ));

            store.close()?;
            let (apparent, allocated) = disk_usage(dir.path())?;
            row(
                "disk size after load".into(),
                format!(
                    "{:>10.1} MiB allocated  ({:.1} MiB apparent; {distinct} distinct items, \
                     {:.0} B/item)",
                    mib(allocated),
                    mib(apparent),
                    allocated as f64 / distinct as f64
                ),
            );
            out.push((
                "disk".into(),
                json!({
                    "items_distinct": distinct, "apparent_bytes": apparent,
                    "allocated_bytes": allocated,
                }),
            ));
        }
        Phase::Sustained => {
            // A longer 1,000-item run into a fresh store, so that work an
            // engine defers (fjall flushes its 64 MiB items memtable once, near
            // the end) or that grows with the data (redb's B-tree depth and
            // pages touched per commit) lands inside the timed window.
            let (size, commits) = SUSTAINED;
            let commits = (commits / opts.scale).max(10);
            let run = load::<E>(opts, size, commits, SEED + 100)?;
            let tail = commits / 10;
            let mut tail_lat = run.lat[commits - tail..].to_vec();
            let tail_secs: f64 = tail_lat.iter().map(Duration::as_secs_f64).sum();
            tail_lat.sort();
            let ips = run.items as f64 / run.secs;
            let tail_ips = (tail * size) as f64 / tail_secs;
            let tail_p99 = percentile(&tail_lat, 0.99);
            let Load {
                dir,
                store,
                items,
                added,
                secs,
                written,
                ..
            } = run;
            store.close()?;
            let (_, allocated) = disk_usage(dir.path())?;
            row(
                format!("sustained, {commits} x {size}"),
                format!(
                    "{ips:>10.0} items/s  last 10%: {tail_ips:.0} items/s, p99 {tail_p99:.2} ms  \
                     {:.0} KiB written/commit  {:.1} MiB on disk",
                    written as f64 / 1024.0 / commits as f64,
                    mib(allocated)
                ),
            );
            out.push((
                "sustained".into(),
                json!({
                    "items_per_commit": size, "commits": commits, "items_offered": items,
                    "items_new": added, "secs": secs, "items_per_s": ips,
                    "last_tenth_items_per_s": tail_ips, "last_tenth_commit_p99_ms": tail_p99,
                    "bytes_written": written, "allocated_bytes_after_close": allocated,
                }),
            ));
            eprintln!("  {} sustained: {secs:.1} s", E::NAME);
        }
    }
    Ok(out)
}

fn sys_info() -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .ok()
    };
    json!({
        "nproc": std::thread::available_parallelism().map(usize::from).ok(),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "loadavg": read("/proc/loadavg"),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok(),
    })
}

/// The engine's version as resolved in this project's Cargo.lock.
fn locked_version(name: &str) -> String {
    let lock = include_str!("../Cargo.lock");
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .and_then(|i| lock[i + needle.len()..].split('"').next())
        .unwrap_or("unknown")
        .to_string()
}

fn parse_args() -> Res<Opts> {
    let mut opts = Opts {
        out: PathBuf::from("target/engine-bench.json"),
        parent: None,
        engine: None,
        scale: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => opts.out = PathBuf::from(value()?),
            "--dir" => opts.parent = Some(PathBuf::from(value()?)),
            "--engine" => opts.engine = Some(value()?),
            "--quick" => opts.scale = 10,
            "-h" | "--help" => {
                println!(
                    "engine-bench [--out PATH] [--dir PARENT] [--engine redb|fjall] [--quick]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(opts)
}

fn main() -> Res<()> {
    let opts = parse_args()?;
    let engines: Vec<&str> = [Redb::NAME, Fjall::NAME]
        .into_iter()
        .filter(|name| opts.engine.as_deref().is_none_or(|e| e == *name))
        .collect();
    if engines.is_empty() {
        return Err("no engine selected (use redb or fjall)".into());
    }
    let before = sys_info();

    let phases: Vec<Phase> = (0..BATCHES.len())
        .map(Phase::Batch)
        .chain([Phase::Sustained])
        .collect();
    let mut rows = Vec::new();
    let mut results = serde_json::Map::new();
    for name in &engines {
        results.insert(name.to_string(), json!({ "version": locked_version(name) }));
    }
    for (n, &phase) in phases.iter().enumerate() {
        let mut order = engines.clone();
        if n % 2 == 1 {
            order.reverse();
        }
        for name in order {
            let figures = match name {
                "redb" => run_phase::<Redb>(&opts, phase, &mut rows)?,
                _ => run_phase::<Fjall>(&opts, phase, &mut rows)?,
            };
            let entry = results[name].as_object_mut().expect("object");
            entry.extend(figures);
        }
    }

    // Table: grouped by workload, engines in a fixed order within each group.
    let mut order: Vec<&String> = Vec::new();
    for r in &rows {
        if !order.contains(&&r.workload) {
            order.push(&r.workload);
        }
    }
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| {
        let w = order.iter().position(|w| *w == &r.workload);
        (w, engines.iter().position(|e| *e == r.engine))
    });
    let w_engine = rows
        .iter()
        .map(|r| r.engine.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let w_work = rows
        .iter()
        .map(|r| r.workload.len())
        .max()
        .unwrap_or(0)
        .max(8);
    println!("{:<w_engine$}  {:<w_work$}  figure", "engine", "workload");
    println!("{}", "-".repeat(w_engine + w_work + 100));
    for r in sorted {
        println!(
            "{:<w_engine$}  {:<w_work$}  {}",
            r.engine, r.workload, r.figure
        );
    }

    let report = json!({
        "config": {
            "tenants": TENANTS, "item_key_bytes": ITEM_LEN, "duplicate_percent": DUP_PERCENT,
            "scale_divisor": opts.scale,
            "durability": {
                "redb": "Durability::Immediate (default)",
                "fjall": "SingleWriterTxDatabase, write_tx durability Some(PersistMode::SyncAll)",
            },
        },
        "system_before": before,
        "system_after": sys_info(),
        "results": results,
    });
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", opts.out.display());
    Ok(())
}
