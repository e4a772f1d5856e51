//! Readers that run while a load and faults go on, and check what a user
//! can read at every moment rather than only the healed end state:
//!
//! - **whole requests**: on tenants that every request gives exactly
//!   `multiple` new items, a count that is not a multiple of it shows part
//!   of a request. A counter that flags its own answer as partial (it is
//!   catching up) is exempt, and such answers are tallied apart.
//! - **monotonic reads**: each reader's own successive counts of a tenant
//!   from one source never go down, across counter kills, coordinator
//!   restarts and catch-ups.
//!
//! Every reader is bounded in reads and in time.

use crate::api::Api;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a reader reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `GET /items/{tenant}/count` through the coordinator.
    Coordinator,
    /// A counter's own `GET /items/{tenant}/count`.
    Counter(String),
}

#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub tenants: Vec<String>,
    /// Every count must be a multiple of this (1 to check nothing).
    pub multiple: u64,
    pub sources: Vec<Source>,
    /// Readers per source, each with its own sequence of reads.
    pub readers_per_source: usize,
    /// Pause between one reader's reads.
    pub pause: Duration,
    /// Bounds on each reader.
    pub max_reads: u64,
    pub max_time: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// Answers read (every source).
    pub reads: u64,
    /// Answers through the coordinator.
    pub coordinator_reads: u64,
    /// Requests that got no count (a process down, a 503).
    pub errors: u64,
    /// Counter answers flagged partial.
    pub flagged_partial: u64,
    /// Of those, how many were indeed not a multiple.
    pub flagged_and_split: u64,
    /// Counts showing part of a request, unflagged.
    pub split: Vec<String>,
    /// A reader's count lower than its previous one.
    pub decreases: Vec<String>,
}

impl ReadReport {
    pub fn passed(&self) -> bool {
        self.split.is_empty() && self.decreases.is_empty()
    }

    fn merge(&mut self, other: ReadReport) {
        self.reads += other.reads;
        self.coordinator_reads += other.coordinator_reads;
        self.errors += other.errors;
        self.flagged_partial += other.flagged_partial;
        self.flagged_and_split += other.flagged_and_split;
        self.split.extend(other.split);
        self.decreases.extend(other.decreases);
    }

    pub fn render(&self) -> String {
        let list = |v: &Vec<String>| v.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        format!(
            "reads: {} ({} through the coordinator), {} errors, {} flagged partial by a \
             catching-up counter ({} of them split a request); {} unflagged split counts [{}]; \
             {} decreases [{}]\n",
            self.reads,
            self.coordinator_reads,
            self.errors,
            self.flagged_partial,
            self.flagged_and_split,
            self.split.len(),
            list(&self.split),
            self.decreases.len(),
            list(&self.decreases),
        )
    }
}

/// Running readers; [`Readers::finish`] stops them and gathers the report.
pub struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<ReadReport>>,
}

/// Starts the readers.
pub fn start(api: &Api, options: &ReadOptions) -> Readers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for source in &options.sources {
        for _ in 0..options.readers_per_source {
            let (api, options, source, stop) =
                (api.clone(), options.clone(), source.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                read_loop(&api, &options, &source, &stop).await
            }));
        }
    }
    Readers { stop, tasks }
}

impl Readers {
    /// Stops every reader and returns what they saw. A reader that
    /// panicked panics the caller.
    pub async fn finish(self) -> ReadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = ReadReport::default();
        for task in self.tasks {
            match task.await {
                Ok(r) => report.merge(r),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("a reader was cancelled: {e}"),
            }
        }
        report
    }
}

async fn read_loop(
    api: &Api,
    options: &ReadOptions,
    source: &Source,
    stop: &AtomicBool,
) -> ReadReport {
    let started = Instant::now();
    let mut report = ReadReport::default();
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut attempt = 0u64;
    while !stop.load(Ordering::SeqCst)
        && attempt < options.max_reads
        && started.elapsed() < options.max_time
    {
        let tenant = options.tenants[(attempt as usize) % options.tenants.len()].as_str();
        attempt += 1;
        let answer = match source {
            Source::Coordinator => api.count(tenant).await.map(|n| (n, false)),
            Source::Counter(url) => api
                .counter_count_detail(url, tenant)
                .await
                .map(|c| (c.count, c.partial)),
        };
        let (count, partial) = match answer {
            Ok(answer) => answer,
            Err(_) => {
                report.errors += 1;
                tokio::time::sleep(options.pause.max(Duration::from_millis(50))).await;
                continue;
            }
        };
        report.reads += 1;
        if *source == Source::Coordinator {
            report.coordinator_reads += 1;
        }
        let split = count % options.multiple != 0;
        if partial {
            report.flagged_partial += 1;
            report.flagged_and_split += split as u64;
        } else if split {
            report.split.push(format!(
                "{tenant} at {source:?}: {count}, not a multiple of {}",
                options.multiple
            ));
        }
        if let Some(&before) = last.get(tenant) {
            if count < before {
                report.decreases.push(format!(
                    "{tenant} at {source:?}: {before} then {count} (read {attempt} of this reader)"
                ));
            }
        }
        last.insert(tenant, count);
        tokio::time::sleep(options.pause).await;
    }
    report
}
