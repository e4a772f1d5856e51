//! How a counter gets (back) into the cluster: resolve transactions left
//! prepared by a crash, register with the coordinator, copy what it misses
//! from in-sync peers, and report when it holds everything.
//!
//! Copying is resumable by construction: importing is idempotent (an item
//! already held is not counted again), and every pass starts from the
//! replica's own applied index, which moves only when a stream ended
//! complete; a peer dying mid-stream costs reading again, never counting
//! twice.

use crate::http::AppState;
use crate::replica::QueuedImport;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tally_common::api::{
    CatchUpRequest, CaughtUpRequest, ExportEntry, ExportFrame, JoinPlan, Outcome, RegisterRequest,
    TOKEN_HEADER,
};
use tally_common::export_stream::{self, FrameReader};
use tally_common::{CommitIndex, TxnId};

/// Items per import handed to the writer. Two are in memory at a time (one
/// being written, one being read off the stream), which bounds memory while
/// copying a large data set; the writer itself writes them in smaller
/// slices between 2PC operations.
const IMPORT_BATCH_ITEMS: usize = 5_000;

/// How long a prepared transaction may wait for its outcome before the
/// counter asks the coordinator for it.
const IN_DOUBT_AFTER: Duration = Duration::from_secs(3);

/// Start-up: settle in-doubt transactions, then register and catch up.
pub async fn join(state: Arc<AppState>, advertise: String) {
    resolve_in_doubt(&state, Duration::ZERO).await;
    let plan = register(&state, &advertise).await;
    run(state, plan).await;
}

/// Starts a catch-up in the background unless one is running.
pub fn spawn(state: Arc<AppState>, request: CatchUpRequest) {
    tokio::spawn(run(
        state,
        JoinPlan {
            in_sync: false,
            until: request.until,
            peers: request.peers,
        },
    ));
}

/// Registers, retrying with backoff until the coordinator answers.
pub async fn register(state: &AppState, advertise: &str) -> JoinPlan {
    let mut backoff = Backoff::new();
    loop {
        let request = RegisterRequest {
            id: state.replica.id().clone(),
            url: advertise.to_string(),
            applied_index: state.replica.applied(),
        };
        match post::<_, JoinPlan>(state, "/internal/register", &request).await {
            Ok(plan) => {
                tracing::info!(
                    in_sync = plan.in_sync,
                    until = %plan.until,
                    applied = %request.applied_index,
                    "registered with the coordinator"
                );
                return plan;
            }
            Err(e) => {
                tracing::warn!(error = %e, coordinator = %state.coordinator, "registration failed, retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    state: &AppState,
    path: &str,
    body: &B,
) -> Result<R, reqwest::Error> {
    let mut request = state
        .http
        .post(format!("{}{path}", state.coordinator))
        .json(body);
    if let Some(token) = state.token.get() {
        request = request.header(TOKEN_HEADER, token);
    }
    request.send().await?.error_for_status()?.json().await
}

/// Copies from peers until the coordinator says this counter is in sync.
async fn run(state: Arc<AppState>, mut plan: JoinPlan) {
    if plan.in_sync || !state.replica.begin_catch_up() {
        return;
    }
    let mut backoff = Backoff::new();
    loop {
        let start = state.replica.applied();
        if start < plan.until {
            for peer in &plan.peers {
                match copy_from(&state, peer, plan.until).await {
                    Ok(()) if state.replica.applied() >= plan.until => break,
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(peer = %peer, error = %e, "copy from peer failed, trying another")
                    }
                }
            }
        }
        let request = CaughtUpRequest {
            id: state.replica.id().clone(),
            applied_index: state.replica.applied(),
        };
        match post::<_, JoinPlan>(&state, "/internal/caught-up", &request).await {
            Ok(next) if next.in_sync => {
                tracing::info!(applied = %request.applied_index, "caught up and in sync");
                break;
            }
            Ok(next) => {
                if state.replica.applied() <= start {
                    backoff.wait().await;
                }
                plan = next;
            }
            Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
                // The coordinator forgot us: the rejoin watchdog registers again.
                tracing::warn!("coordinator does not know this counter");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot report progress to the coordinator");
                backoff.wait().await;
            }
        }
    }
    state.replica.end_catch_up();
}

/// Streams `(applied, until]` from one peer, importing as it goes. The
/// range counts as applied only when the stream ends complete: entries are
/// what the *peer* saw first at each index, so a cut stream may lack items
/// that a later entry of the same peer would have carried.
async fn copy_from(state: &AppState, peer: &str, until: CommitIndex) -> anyhow::Result<()> {
    let since = state.replica.applied();
    let mut request = state
        .http
        .get(format!("{peer}/internal/export"))
        .query(&[("since", since.0), ("until", until.0)]);
    if let Some(token) = state.token.get() {
        request = request.header(TOKEN_HEADER, token);
    }
    let response = request.send().await?.error_for_status()?;
    check_format(&response, peer)?;
    tracing::info!(peer, %since, %until, "copying from peer");
    metrics::gauge!("tally_catchup_target_index").set(until.0 as f64);
    let mut stream = response.bytes_stream();
    let mut frames = FrameReader::new();
    let mut batch: Vec<ExportEntry> = Vec::new();
    let mut batch_items = 0;
    let mut copied = 0usize;
    let mut importing = Importing::default();
    while let Some(chunk) = stream.next().await {
        frames.push(&chunk?);
        while let Some(frame) = frames.next_frame() {
            match frame? {
                ExportFrame::Entry(entry) => {
                    batch_items += entry.items.len();
                    copied += entry.items.len();
                    metrics::counter!("tally_catchup_items_copied_total")
                        .increment(entry.items.len() as u64);
                    batch.push(entry);
                    if batch_items >= IMPORT_BATCH_ITEMS {
                        importing
                            .hand_over(state, std::mem::take(&mut batch), None)
                            .await?;
                        batch_items = 0;
                    }
                }
                ExportFrame::End { through } => {
                    importing
                        .hand_over(state, std::mem::take(&mut batch), Some((since, through)))
                        .await?;
                    importing.finish().await?;
                    tracing::info!(peer, %since, %through, items = copied, "copied from peer");
                    return Ok(());
                }
            }
        }
    }
    importing.hand_over(state, batch, None).await?;
    importing.finish().await?;
    anyhow::bail!("the stream from {peer} ended before its end marker")
}

/// Refuses a stream in a format this counter cannot read: a peer of
/// another version, met during a rolling upgrade.
fn check_format(response: &reqwest::Response, peer: &str) -> anyhow::Result<()> {
    let format = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if format != export_stream::CONTENT_TYPE {
        anyhow::bail!(
            "{peer} exports as {format}, this counter reads {}: another version?",
            export_stream::CONTENT_TYPE
        );
    }
    Ok(())
}

/// The import the writer is working on while the next one is read off the
/// stream: reading and writing overlap, yet at most two batches are held.
#[derive(Default)]
struct Importing(Option<QueuedImport>);

impl Importing {
    /// Waits for the previous import to be durable, then queues `entries`.
    async fn hand_over(
        &mut self,
        state: &AppState,
        entries: Vec<ExportEntry>,
        through: Option<(CommitIndex, CommitIndex)>,
    ) -> Result<(), crate::error::Error> {
        self.finish().await?;
        if !entries.is_empty() || through.is_some() {
            self.0 = Some(state.replica.queue_import(entries, through)?);
        }
        Ok(())
    }

    /// Waits for the import in progress, if any.
    async fn finish(&mut self) -> Result<(), crate::error::Error> {
        match self.0.take() {
            Some(import) => import.durable().await,
            None => Ok(()),
        }
    }
}

/// Asks the coordinator for the outcome of every transaction that has been
/// prepared for longer than `age`, and applies it. Presumed abort: the
/// coordinator answers aborted for any transaction it has no decision for.
pub async fn resolve_in_doubt(state: &AppState, age: Duration) {
    let mut backoff = Backoff::new();
    loop {
        let txns = state.replica.in_doubt(age);
        if txns.is_empty() {
            return;
        }
        let mut unresolved = 0;
        for txn in txns {
            match outcome(state, txn).await {
                Ok(Outcome::Committed { index }) => {
                    tracing::info!(%txn, %index, "in-doubt transaction committed");
                    if let Err(e) = state.replica.commit(txn, index).await {
                        tracing::error!(%txn, error = %e, "cannot apply in-doubt commit");
                    }
                }
                Ok(Outcome::Aborted) => {
                    tracing::info!(%txn, "in-doubt transaction aborted");
                    let _ = state.replica.abort(txn).await;
                }
                Ok(Outcome::Pending) => unresolved += 1,
                Err(e) => {
                    tracing::warn!(%txn, error = %e, "cannot ask the coordinator about a prepared transaction");
                    unresolved += 1;
                }
            }
        }
        // Start-up must settle everything before registering; the periodic
        // resolver just tries again on its next tick.
        if unresolved == 0 || !age.is_zero() {
            return;
        }
        backoff.wait().await;
    }
}

async fn outcome(state: &AppState, txn: TxnId) -> Result<Outcome, reqwest::Error> {
    let mut request = state
        .http
        .get(format!("{}/internal/outcome/{}", state.coordinator, txn.0));
    if let Some(token) = state.token.get() {
        request = request.header(TOKEN_HEADER, token);
    }
    request.send().await?.error_for_status()?.json().await
}

/// Background duties: settle old prepared transactions, and register again
/// if the coordinator has not called for `rejoin_after` (it forgot us).
pub async fn maintain(state: Arc<AppState>, advertise: String, rejoin_after: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        resolve_in_doubt(&state, IN_DOUBT_AFTER).await;
        let silent = state.last_contact.lock().expect("poisoned").elapsed();
        if silent >= rejoin_after {
            tracing::warn!(silent = ?silent, "no word from the coordinator, registering again");
            *state.last_contact.lock().expect("poisoned") = std::time::Instant::now();
            let plan = register(&state, &advertise).await;
            tokio::spawn(run(state.clone(), plan));
        }
    }
}

/// Exponential backoff from 100 ms to 2 s between retries.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}
