//! Count reads. Each read carries the fence (the durable decided index at
//! the moment it starts) to one in-sync counter, and falls over to the next
//! one if that counter fails.
//!
//! Concurrent reads of one tenant share a single trip to a counter when the
//! trip in flight carries a fence at least as high as theirs: its answer
//! then includes every commit their own fence would, so it is as fresh as
//! theirs would have been, and counts never go down. Under a read-heavy
//! load this turns N identical counter calls into one.

use crate::client::CounterClient;
use crate::driver::Driver;
use crate::error::{lock, Error};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tally_common::coordinator::ReadView;
use tally_common::CommitIndex;
use tokio::sync::watch;

type Answer = Option<Result<u64, String>>;

/// Reads in flight, by tenant, with the fence they carry.
#[derive(Default)]
pub struct ReadsInFlight {
    by_tenant: Mutex<HashMap<String, (CommitIndex, watch::Receiver<Answer>)>>,
    /// Which counter the next read starts with.
    cursor: AtomicUsize,
}

/// A read that goes to a counter itself; others may wait on its answer.
struct Leader {
    tx: watch::Sender<Answer>,
    rx: watch::Receiver<Answer>,
}

impl ReadsInFlight {
    /// The answer of a read in flight for `tenant` whose fence is at least
    /// `fence`, if there is one: its answer includes every commit this
    /// read's own fence would. `None` when there is no such read, or when
    /// the one joined was dropped before answering (its client went away).
    async fn join(&self, tenant: &str, fence: CommitIndex) -> Option<Result<u64, String>> {
        let mut rx = {
            let by_tenant = lock(&self.by_tenant, "the reads in flight");
            by_tenant
                .get(tenant)
                .filter(|(carried, _)| *carried >= fence)
                .map(|(_, rx)| rx.clone())?
        };
        let answer = rx.wait_for(Option::is_some).await.ok()?;
        Some(answer.clone().expect("waited for Some"))
    }

    /// Registers a read of `tenant` at `fence` that later reads may join.
    /// It replaces a read in flight with a lower fence, which goes on for
    /// those already waiting on it.
    fn lead(&self, tenant: &str, fence: CommitIndex) -> Leader {
        let (tx, rx) = watch::channel(None);
        lock(&self.by_tenant, "the reads in flight")
            .insert(tenant.to_string(), (fence, rx.clone()));
        Leader { tx, rx }
    }

    /// Hands the leader's answer to the reads that joined it, and stops
    /// new ones joining (unless a newer read has taken its place).
    fn finish(&self, tenant: &str, leader: Leader, answer: &Result<u64, String>) {
        let _ = leader.tx.send(Some(answer.clone()));
        let mut by_tenant = lock(&self.by_tenant, "the reads in flight");
        if by_tenant
            .get(tenant)
            .is_some_and(|(_, current)| current.same_channel(&leader.rx))
        {
            by_tenant.remove(tenant);
        }
    }
}

/// The tenant's count, fresh as of the moment of the call: it includes
/// every write acknowledged before the call, because the fence is the
/// durable decided index at its start.
pub async fn count(
    reads: &ReadsInFlight,
    driver: &Driver,
    counters: &CounterClient,
    timeout: Duration,
    tenant: &str,
) -> Result<u64, Error> {
    let view = driver.read_view().await?;
    if let Some(answer) = reads.join(tenant, view.fence).await {
        return answer.map_err(Error::Unavailable);
    }
    let leader = reads.lead(tenant, view.fence);
    let start = reads.cursor.fetch_add(1, Ordering::Relaxed);
    let answer = read_from_counters(view, start, counters, timeout, tenant, driver).await;
    reads.finish(tenant, leader, &answer);
    answer.map_err(Error::Unavailable)
}

/// Tries each readable counter once, starting from a different one each
/// time so reads spread across replicas.
async fn read_from_counters(
    view: ReadView,
    start: usize,
    counters: &CounterClient,
    timeout: Duration,
    tenant: &str,
    driver: &Driver,
) -> Result<u64, String> {
    let mut readable = view.readable;
    if readable.is_empty() {
        let why = driver
            .inspect(|core, _| core.cluster().availability().problem)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        return Err(format!("no in-sync counter can answer: {why}"));
    }
    let start = start % readable.len();
    readable.rotate_left(start);
    let mut last_error = String::new();
    for target in readable {
        match counters
            .count(
                &target.url,
                &target.id,
                tenant,
                view.fence,
                view.epoch,
                timeout,
            )
            .await
        {
            Ok(count) => return Ok(count),
            Err(e) => {
                tracing::debug!(counter = %target.id, error = %e, "read failed, trying another counter");
                last_error = format!("{}: {e}", target.id);
            }
        }
    }
    Err(format!("no in-sync counter answered (last: {last_error})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_read_joins_one_in_flight_with_a_higher_fence_and_gets_its_answer() {
        let reads = Arc::new(ReadsInFlight::default());
        let leader = reads.lead("t", CommitIndex(10));
        let joiner = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.join("t", CommitIndex(7)).await })
        };
        tokio::task::yield_now().await;
        assert!(!joiner.is_finished(), "it waits for the leader's answer");
        reads.finish("t", leader, &Ok(42));
        let joined = tokio::time::timeout(WAIT, joiner).await.unwrap().unwrap();
        assert_eq!(joined, Some(Ok(42)));
    }

    #[tokio::test]
    async fn a_read_joins_one_with_an_equal_fence() {
        let reads = ReadsInFlight::default();
        let leader = reads.lead("t", CommitIndex(7));
        let _ = leader.tx.send(Some(Ok(3)));
        assert_eq!(reads.join("t", CommitIndex(7)).await, Some(Ok(3)));
    }

    /// The read in flight may predate commits this read must see: joining
    /// it could answer a count lower than one a client already read.
    #[tokio::test]
    async fn a_read_never_joins_one_with_a_lower_fence() {
        let reads = ReadsInFlight::default();
        let leader = reads.lead("t", CommitIndex(5));
        let _ = leader.tx.send(Some(Ok(1)));
        assert_eq!(reads.join("t", CommitIndex(6)).await, None);
    }

    #[tokio::test]
    async fn reads_of_other_tenants_are_not_joined() {
        let reads = ReadsInFlight::default();
        let leader = reads.lead("a", CommitIndex(5));
        let _ = leader.tx.send(Some(Ok(1)));
        assert_eq!(reads.join("b", CommitIndex(1)).await, None);
    }

    #[tokio::test]
    async fn a_failed_answer_is_shared_too() {
        let reads = ReadsInFlight::default();
        let leader = reads.lead("t", CommitIndex(5));
        let _ = leader.tx.send(Some(Err("no counter".into())));
        assert_eq!(
            reads.join("t", CommitIndex(5)).await,
            Some(Err("no counter".into()))
        );
    }

    /// A leader whose client went away never answers: those that joined
    /// read anew rather than wait for ever.
    #[tokio::test]
    async fn a_dropped_leader_sends_its_joiners_to_read_anew() {
        let reads = Arc::new(ReadsInFlight::default());
        let leader = reads.lead("t", CommitIndex(5));
        let joiner = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.join("t", CommitIndex(5)).await })
        };
        tokio::task::yield_now().await;
        drop(leader);
        let joined = tokio::time::timeout(WAIT, joiner).await.unwrap().unwrap();
        assert_eq!(joined, None);
    }

    /// A newer read with a higher fence takes the slot; the older one
    /// finishing must not remove it, or later reads could not join it.
    #[tokio::test]
    async fn an_older_leader_finishing_leaves_the_newer_one_joinable() {
        let reads = ReadsInFlight::default();
        let old = reads.lead("t", CommitIndex(5));
        let new = reads.lead("t", CommitIndex(9));
        reads.finish("t", old, &Ok(1));
        let _ = new.tx.send(Some(Ok(2)));
        assert_eq!(reads.join("t", CommitIndex(9)).await, Some(Ok(2)));
    }

    #[tokio::test]
    async fn a_finished_read_is_not_joined_by_later_ones() {
        let reads = ReadsInFlight::default();
        let leader = reads.lead("t", CommitIndex(5));
        reads.finish("t", leader, &Ok(1));
        assert_eq!(reads.join("t", CommitIndex(1)).await, None);
    }

    /// One client's reads of a tenant, one after another, while other
    /// reads are in flight. Fences only grow, so a read in flight carries
    /// a fence at most the client's current one, and may be a slow one
    /// from long ago. The client's counts must never go down and must
    /// always include everything up to its own fence (a counter's answer
    /// at fence N is modelled as the commits up to N: N * 10 items).
    #[tokio::test]
    async fn joined_answers_are_fresh_and_never_go_back_in_a_sequence_of_reads() {
        let reads = ReadsInFlight::default();
        let mut last = 0;
        // (fence of a read in flight, this read's fence)
        for (carried, mine) in [(1, 1), (2, 3), (3, 3), (4, 4), (2, 6), (6, 6), (9, 9)] {
            let leader = reads.lead("t", CommitIndex(carried));
            let _ = leader.tx.send(Some(Ok(carried * 10)));
            let answer = match reads.join("t", CommitIndex(mine)).await {
                Some(answer) => answer.unwrap(),
                None => mine * 10,
            };
            assert!(answer >= mine * 10, "{answer} misses commits up to {mine}");
            assert!(answer >= last, "{answer} after {last}");
            last = answer;
            reads.finish("t", leader, &Ok(carried * 10));
        }
    }
}
