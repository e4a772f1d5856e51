//! `GET /items/{tenant}/count/stream`: Server-Sent Events carrying the
//! tenant's count (`event: count`, `data: {"count":N}`) whenever it grows.
//!
//! Each stream is one task-free `unfold` over a small loop: re-read the
//! count through `reads::count` (so it is fenced and fresh, and concurrent
//! streams of one tenant share one counter call), at most once per
//! `MIN_GAP` so a busy tenant costs at most 10 reads and events a second,
//! woken early when the durable decided index moves, since only a new
//! decision can change a count. The first event is the current value; after
//! that a value is sent only if it is larger than the last one sent, so a
//! client never sees its count go down, even if two reads race.

use crate::state::Shared;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tally_common::api::Count;
use tally_common::coordinator::ReadView;
use tokio::sync::watch;
use tokio::time::Instant;

/// Shortest time between two reads of one stream: at most 10 events/s.
const MIN_GAP: Duration = Duration::from_millis(100);
/// Longest time between two reads when nothing is decided, so a stream
/// whose read failed (no counter live) recovers without a new decision.
const MAX_GAP: Duration = Duration::from_secs(2);

struct Subscription {
    shared: Arc<Shared>,
    tenant: String,
    decided: watch::Receiver<ReadView>,
    last_sent: Option<u64>,
    last_read: Option<Instant>,
    _gauge: SubscriberGauge,
}

/// Keeps `tally_count_streams` right however the stream ends (the client
/// going away drops it).
struct SubscriberGauge;

impl SubscriberGauge {
    fn new() -> Self {
        metrics::gauge!("tally_count_streams").increment(1.0);
        SubscriberGauge
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!("tally_count_streams").decrement(1.0);
    }
}

/// The SSE response for `tenant`; the tenant is validated by the caller.
pub fn count_stream(
    shared: Arc<Shared>,
    tenant: String,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let decided = shared.driver.watch_view();
    let subscription = Subscription {
        shared,
        tenant,
        decided,
        last_sent: None,
        last_read: None,
        _gauge: SubscriberGauge::new(),
    };
    let events = futures_util::stream::unfold(subscription, |mut sub| async move {
        let count = sub.next_count().await;
        let event = Event::default()
            .event("count")
            .json_data(Count { count })
            .expect("a count always serialises");
        Some((Ok(event), sub))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

impl Subscription {
    /// Waits for the next value worth sending: the first one, or a larger one.
    async fn next_count(&mut self) -> u64 {
        loop {
            self.wait_turn().await;
            self.last_read = Some(Instant::now());
            // Mark the current decided index as seen before reading, so a
            // decision made during the read wakes the next round.
            self.decided.borrow_and_update();
            match self.shared.count(&self.tenant).await {
                Ok(count) if self.last_sent.is_none_or(|last| count > last) => {
                    self.last_sent = Some(count);
                    return count;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(tenant = %self.tenant, error = %e, "stream read failed; retrying")
                }
            }
        }
    }

    /// Returns when the next read may start: at once for the first, then
    /// on a new decision (or after `MAX_GAP`), never sooner than `MIN_GAP`
    /// after the previous read.
    async fn wait_turn(&mut self) {
        let Some(last) = self.last_read else { return };
        let _ = tokio::time::timeout_at(last + MAX_GAP, self.decided.changed()).await;
        tokio::time::sleep_until(last + MIN_GAP).await;
    }
}
