//! What the HTTP handlers and the background tasks share: the replica, the
//! settings, the HTTP client for the coordinator and peers, and the owned
//! set of background tasks that shutdown stops and joins.

use crate::config::Settings;
use crate::coordinators::Coordinators;
use crate::error::lock;
use crate::replica::Replica;
use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;
use tally_server::ClusterToken;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// What every handler and task needs.
pub struct AppState {
    pub replica: Replica,
    pub settings: Settings,
    pub token: ClusterToken,
    /// The URL the coordinator and peers reach this counter at.
    pub advertise: String,
    pub http: reqwest::Client,
    /// The coordinators to call, and which one answered last.
    pub coordinators: Coordinators,
    /// When the coordinator last reached us: a counter it forgot re-registers.
    pub last_contact: Mutex<Instant>,
    /// Woken when this counter must register again now: a coordinator of
    /// another epoch called, or the coordinator no longer knows it.
    pub register_again: Notify,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub tasks: Tasks,
    /// The presence sums of the keys this counter owns (not durable).
    pub presence: std::sync::Arc<crate::presence::Presence>,
}

impl AppState {
    /// When the coordinator (or a peer) last reached this counter.
    pub fn last_contact(&self) -> Instant {
        *lock(&self.last_contact, "the last contact")
    }

    pub fn note_contact(&self, at: Instant) {
        *lock(&self.last_contact, "the last contact") = at;
    }
}

/// The counter's background tasks (registration and maintenance, the
/// in-doubt clock, copies from peers). Each is owned here rather than
/// detached, so that shutdown can stop them all and wait until they have
/// ended: none is left holding the replica while the writer finishes.
#[derive(Default)]
pub struct Tasks {
    running: Mutex<JoinSet<()>>,
    stopping: StopSignal,
}

/// Tells every task that shutdown has begun.
struct StopSignal(watch::Sender<bool>);

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal(watch::channel(false).0)
    }
}

impl Tasks {
    /// Runs `task` until it ends or shutdown stops it. Every task here may
    /// be stopped at any `.await`: what it does is durable through the
    /// writer, or redone after a restart (a copy resumes, an in-doubt
    /// transaction is asked about again). Once shutdown has begun, nothing
    /// new starts.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.stopping.0.subscribe();
        let mut running = lock(&self.running, "the task set");
        // Finished tasks keep their result until joined: reap them here.
        while running.try_join_next().is_some() {}
        if *stop.borrow() {
            return;
        }
        running.spawn(async move {
            tokio::select! {
                () = task => {}
                _ = stop.wait_for(|stopping| *stopping) => {
                    tracing::debug!(task = name, "stopped for shutdown");
                }
            }
        });
    }

    /// Stops every task and waits until each has ended.
    pub async fn stop(&self) {
        self.stopping.0.send_replace(true);
        let mut running = std::mem::take(&mut *lock(&self.running, "the task set"));
        while let Some(ended) = running.join_next().await {
            if let Err(e) = ended {
                if e.is_panic() {
                    tracing::error!(error = %e, "a background task panicked");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_ends_every_task_and_starts_no_new_one() {
        let tasks = Tasks::default();
        let dropped = Arc::new(AtomicBool::new(false));
        struct Guard(Arc<AtomicBool>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let guard = Guard(dropped.clone());
        tasks.spawn("forever", async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        tasks.stop().await;
        assert!(dropped.load(Ordering::SeqCst), "the task was dropped");
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        tasks.spawn("late", async move { flag.store(true, Ordering::SeqCst) });
        tokio::task::yield_now().await;
        assert!(!started.load(Ordering::SeqCst), "nothing starts after stop");
    }
}
