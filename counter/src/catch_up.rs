//! Copying what a counter misses from in-sync peers, until the coordinator
//! says it is in sync.
//!
//! A pass copies everything a peer logged above the counter's own applied
//! index (its *pass start*), whatever order that peer applied commits in,
//! and only the peer's end marker proves the range (docs/protocol.md,
//! "Catch-up"). Importing is idempotent (an item already held is not
//! counted again). A cut stream resumes where the imported entries end,
//! but never above the `until` it was asked to prove, and only from the
//! same peer's same disk: another peer may log an item under a different
//! index, so a new peer starts a new pass.

use crate::coordinator_client::{self, Backoff};
use crate::error::Error;
use crate::replica::QueuedImport;
use crate::state::AppState;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use tally_common::api::{
    CatchUpRequest, CaughtUpRequest, CopyProgress, ExportEntry, ExportFrame, JoinPlan,
    INCARNATION_HEADER, ITEMS_HEADER, TOKEN_HEADER,
};
use tally_common::export_stream::{self, FrameReader};
use tally_common::{CommitIndex, Incarnation};

/// Items per import handed to the writer. Two are in memory at a time (one
/// being written, one being read off the stream), which bounds memory while
/// copying a large data set; the writer itself writes them in smaller
/// slices between 2PC operations.
const IMPORT_BATCH_ITEMS: usize = 5_000;

/// Starts copying in the background, as the coordinator's join plan says,
/// unless a copy is running already or the plan says in sync.
pub fn start(state: &Arc<AppState>, plan: JoinPlan) {
    state.tasks.spawn("catch-up", run(state.clone(), plan));
}

/// The coordinator's `POST /internal/catchup`: copy up to `request.until`.
pub fn requested(state: &Arc<AppState>, request: CatchUpRequest) {
    start(
        state,
        JoinPlan {
            in_sync: false,
            until: request.until,
            peers: request.peers,
            epoch: 0,
            registration: request.registration,
        },
    );
}

/// Copies from peers until the coordinator says this counter is in sync.
async fn run(state: Arc<AppState>, mut plan: JoinPlan) {
    if plan.in_sync || !state.replica.begin_catch_up() {
        return;
    }
    let mut backoff = Backoff::new();
    let mut pass: Option<Pass> = None;
    loop {
        let start = state.replica.applied();
        if start < plan.until {
            for peer in &plan.peers {
                match copy_from(&state, peer, plan.until, &mut pass).await {
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
            incarnation: state.replica.status().incarnation,
            // The latest registration's name: a re-registration (a new
            // coordinator, say) does not restart a copy of the same disk.
            registration: state.replica.registration().number(),
            applied_index: state.replica.applied(),
        };
        match coordinator_client::caught_up(&state, &request).await {
            Ok(next) if next.in_sync => {
                state
                    .replica
                    .update_registration(|r| r.registered(next.epoch, true));
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
                // The coordinator forgot us, or restarted: register again.
                tracing::warn!("the coordinator does not know this counter: registering again");
                state.register_again.notify_one();
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot report progress to the coordinator");
                backoff.wait().await;
            }
        }
    }
    state.replica.set_copy_progress(None);
    state.replica.end_catch_up();
}

/// One pass of copying from one peer's disk: what it must prove, and how
/// far the entries imported so far go, so a cut stream can resume.
struct Pass {
    peer: String,
    incarnation: Incarnation,
    /// The counter's applied index when the pass began: the pass proves
    /// `(start, until]` when the peer's end marker arrives.
    start: CommitIndex,
    /// Every entry of the peer at or below this is imported and durable.
    /// Never above the `until` of the stream that was cut: the peer held
    /// every commit up to it when it began streaming, so its log below it
    /// was whole in the stream; above it, the peer may apply a commit out
    /// of order after its stream went past that index, and resuming past
    /// the gap would prove a commit that no stream carried.
    next: CommitIndex,
    /// For the progress estimate: items the peer holds, and the counter
    /// held, when the pass began.
    peer_items: u64,
    own_items: u64,
    copied: u64,
    began: Instant,
}

impl Pass {
    fn progress(&self) -> CopyProgress {
        let total = self
            .peer_items
            .saturating_sub(self.own_items)
            .max(self.copied);
        let secs = self.began.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            (self.copied as f64 / secs) as u64
        } else {
            0
        };
        CopyProgress {
            peer: self.peer.clone(),
            copied: self.copied,
            total,
            items_per_sec: rate,
            eta_secs: (rate > 0).then(|| (total - self.copied) / rate),
        }
    }
}

/// Streams from one peer everything it logged above the pass start (or,
/// resuming a cut pass from the same disk, above what was imported), and
/// imports it as it goes. The pass counts as proof of `(start, until]` only
/// when the stream ends with its end marker.
async fn copy_from(
    state: &AppState,
    peer: &str,
    until: CommitIndex,
    pass: &mut Option<Pass>,
) -> Result<(), Error> {
    let resuming = pass.as_ref().filter(|p| p.peer == peer).map(|p| p.next);
    let since = resuming.unwrap_or_else(|| state.replica.applied());
    let response = export_request(state, peer, since, until).await?;
    let incarnation = Incarnation(header_u64(&response, INCARNATION_HEADER)?);
    let peer_items = header_u64(&response, ITEMS_HEADER)?;
    let response = match pass {
        Some(p) if resuming.is_some() && p.incarnation == incarnation => {
            tracing::info!(peer, since = %since, pass_start = %p.start, "resuming a cut copy");
            response
        }
        _ => {
            let response = if resuming.is_some() {
                // Another disk at the same address: its log may list items
                // elsewhere, so the imported entries prove nothing.
                tracing::info!(
                    peer,
                    "peer has a new data directory: copying from the start again"
                );
                drop(response);
                None
            } else {
                Some(response)
            };
            let start = state.replica.applied();
            *pass = Some(Pass {
                peer: peer.to_string(),
                incarnation,
                start,
                next: start,
                peer_items,
                own_items: state.replica.total_items(),
                copied: 0,
                began: Instant::now(),
            });
            match response {
                Some(response) => response,
                None => export_request(state, peer, start, until).await?,
            }
        }
    };
    let p = pass.as_mut().expect("set above");
    tracing::info!(peer, since = %p.next, %until, "copying from peer");
    metrics::gauge!("tally_catchup_target_index").set(until.0 as f64);
    let streamed = stream_into(state, response, p, until).await;
    state.replica.set_copy_progress(Some(p.progress()));
    match streamed {
        Ok(()) => {
            tracing::info!(peer, since = %p.start, %until, items = p.copied, "copied from peer");
            *pass = None;
            Ok(())
        }
        Err(e) => {
            tracing::info!(peer, imported_through = %p.next, "copy cut; it resumes from there if the peer comes back");
            Err(e)
        }
    }
}

async fn export_request(
    state: &AppState,
    peer: &str,
    since: CommitIndex,
    until: CommitIndex,
) -> Result<reqwest::Response, Error> {
    let mut request = state
        .http
        .get(format!("{peer}/internal/export"))
        .query(&[("since", since.0), ("until", until.0)]);
    if let Some(token) = state.token.get() {
        request = request.header(TOKEN_HEADER, token);
    }
    let idle = state.settings.copy_idle_timeout;
    let response = tokio::time::timeout(idle, request.send())
        .await
        .map_err(|_| copy_failed(format!("{peer} did not answer within {idle:?}")))??
        .error_for_status()?;
    check_format(&response, peer)?;
    Ok(response)
}

fn header_u64(response: &reqwest::Response, name: &str) -> Result<u64, Error> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| copy_failed(format!("the export lacks a valid {name} header")))
}

/// Reads the stream into the writer, moving `pass.next` as imports become
/// durable. On any failure the import in progress is finished first, so
/// `pass.next` is exact.
async fn stream_into(
    state: &AppState,
    response: reqwest::Response,
    pass: &mut Pass,
    until: CommitIndex,
) -> Result<(), Error> {
    let mut stream = response.bytes_stream();
    let mut frames = FrameReader::new();
    let mut batch: Vec<ExportEntry> = Vec::new();
    let mut batch_items = 0;
    let mut importing = Importing::default();
    let idle = state.settings.copy_idle_timeout;
    let result: Result<(), Error> = async {
        loop {
            let chunk = tokio::time::timeout(idle, stream.next())
                .await
                .map_err(|_| copy_failed(format!("no data from the peer for {idle:?}")))?;
            let Some(chunk) = chunk else {
                return Err(copy_failed("the stream ended before its end marker".into()));
            };
            frames.push(&chunk?);
            while let Some(frame) = frames.next_frame() {
                match frame? {
                    ExportFrame::Entry(entry) => {
                        batch_items += entry.items.len();
                        pass.copied += entry.items.len() as u64;
                        metrics::counter!("tally_catchup_items_copied_total")
                            .increment(entry.items.len() as u64);
                        batch.push(entry);
                        if batch_items >= IMPORT_BATCH_ITEMS {
                            let last = batch.last().map(|e| e.index);
                            importing
                                .hand_over(state, std::mem::take(&mut batch), None, last)
                                .await?;
                            pass.next = resume_point(pass, importing.durable_through, until);
                            state.replica.set_copy_progress(Some(pass.progress()));
                            batch_items = 0;
                        }
                    }
                    ExportFrame::End { through } => {
                        if through != until {
                            return Err(copy_failed(format!(
                                "the stream proves {through}, not {until}"
                            )));
                        }
                        let last = batch.last().map(|e| e.index);
                        let range = Some((pass.start, through));
                        importing
                            .hand_over(state, std::mem::take(&mut batch), range, last)
                            .await?;
                        importing.finish().await?;
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    if result.is_err() {
        // Entries already handed over still count toward a resumed pass.
        importing.finish().await?;
        pass.next = resume_point(pass, importing.durable_through, until);
    }
    result
}

/// Where a cut pass resumes: after the entries imported, but not above the
/// `until` the stream was asked to prove (see [`Pass::next`]).
fn resume_point(pass: &Pass, imported: CommitIndex, until: CommitIndex) -> CommitIndex {
    pass.next.max(imported).min(until.max(pass.start))
}

fn copy_failed(reason: String) -> Error {
    Error::CopyFailed(reason)
}

/// Refuses a stream in a format this counter cannot read: a peer of
/// another version, met during a rolling upgrade.
fn check_format(response: &reqwest::Response, peer: &str) -> Result<(), Error> {
    let format = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if format != export_stream::CONTENT_TYPE {
        return Err(copy_failed(format!(
            "{peer} exports as {format}, this counter reads {}: another version?",
            export_stream::CONTENT_TYPE
        )));
    }
    Ok(())
}

/// The import the writer is working on while the next one is read off the
/// stream: reading and writing overlap, yet at most two batches are held.
#[derive(Default)]
struct Importing {
    in_progress: Option<(QueuedImport, Option<CommitIndex>)>,
    /// The last entry index of every import known durable.
    durable_through: CommitIndex,
}

impl Importing {
    /// Waits for the previous import to be durable, then queues `entries`,
    /// whose last index is `last`.
    async fn hand_over(
        &mut self,
        state: &AppState,
        entries: Vec<ExportEntry>,
        through: Option<(CommitIndex, CommitIndex)>,
        last: Option<CommitIndex>,
    ) -> Result<(), Error> {
        self.finish().await?;
        if !entries.is_empty() || through.is_some() {
            self.in_progress = Some((state.replica.queue_import(entries, through)?, last));
        }
        Ok(())
    }

    /// Waits for the import in progress, if any.
    async fn finish(&mut self) -> Result<(), Error> {
        if let Some((import, last)) = self.in_progress.take() {
            import.durable().await?;
            if let Some(last) = last {
                self.durable_through = self.durable_through.max(last);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(start: u64) -> Pass {
        Pass {
            peer: "sim://c2".into(),
            incarnation: Incarnation(7),
            start: CommitIndex(start),
            next: CommitIndex(start),
            peer_items: 0,
            own_items: 0,
            copied: 0,
            began: Instant::now(),
        }
    }

    #[test]
    fn a_cut_copy_resumes_no_higher_than_the_index_its_stream_was_to_prove() {
        // The peer held 1..=3 and had applied 5 out of order: a stream for
        // until 3 carried 1, 2, 3 and 5, and was cut. The peer applies 4
        // later; a copy resumed above 5 would never carry it.
        let mut p = pass(0);
        p.next = resume_point(&p, CommitIndex(5), CommitIndex(3));
        assert_eq!(p.next, CommitIndex(3));
        // A later stream, for until 7, cut after 6: resumes after 6.
        p.next = resume_point(&p, CommitIndex(6), CommitIndex(7));
        assert_eq!(p.next, CommitIndex(6));
        // Nothing imported yet: it stays at the pass start.
        let q = pass(4);
        assert_eq!(
            resume_point(&q, CommitIndex(0), CommitIndex(9)),
            CommitIndex(4)
        );
    }
}
