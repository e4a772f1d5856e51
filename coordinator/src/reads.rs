//! Count reads. Each read carries the fence (the durable decided index at
//! the moment it starts) to one in-sync counter, and falls over to the next
//! one if that counter fails.
//!
//! Concurrent reads of one tenant share a single trip to a counter when the
//! trip in flight carries a fence at least as high as theirs: its answer
//! then includes every commit their own fence would, so it is as fresh as
//! theirs would have been, and counts never go down. Under a read-heavy
//! load this turns N identical counter calls into one.

use crate::error::Error;
use crate::state::Shared;
use std::collections::HashMap;
use std::sync::Mutex;
use tally_common::CommitIndex;
use tokio::sync::watch;

type Answer = Option<Result<u64, String>>;

/// Reads in flight, by tenant, with the fence they carry.
#[derive(Default)]
pub struct ReadsInFlight {
    by_tenant: Mutex<HashMap<String, (CommitIndex, watch::Receiver<Answer>)>>,
}

/// The tenant's count, fresh as of the moment of the call.
pub async fn count(shared: &Shared, tenant: &str) -> Result<u64, Error> {
    let fence = shared.fence();
    let joined = {
        let by_tenant = shared.reads.by_tenant.lock().expect("poisoned");
        by_tenant
            .get(tenant)
            .filter(|(carried, _)| *carried >= fence)
            .map(|(_, rx)| rx.clone())
    };
    if let Some(mut rx) = joined {
        if let Ok(answer) = rx.wait_for(Option::is_some).await {
            return answer
                .clone()
                .expect("waited for Some")
                .map_err(Error::Unavailable);
        }
        // The leading read was dropped (its client went away): read anew.
    }

    let (tx, rx) = watch::channel(None);
    shared
        .reads
        .by_tenant
        .lock()
        .expect("poisoned")
        .insert(tenant.to_string(), (fence, rx.clone()));
    let answer = read_from_counters(shared, tenant, fence).await;
    let _ = tx.send(Some(answer.clone()));
    let mut by_tenant = shared.reads.by_tenant.lock().expect("poisoned");
    if by_tenant
        .get(tenant)
        .is_some_and(|(_, current)| current.same_channel(&rx))
    {
        by_tenant.remove(tenant);
    }
    answer.map_err(Error::Unavailable)
}

/// Tries each readable counter once, starting from a different one each
/// time so reads spread across replicas.
async fn read_from_counters(
    shared: &Shared,
    tenant: &str,
    fence: CommitIndex,
) -> Result<u64, String> {
    let mut readable = {
        let cluster = shared.cluster.lock().expect("poisoned");
        let readable = cluster.readable();
        if readable.is_empty() {
            let why = cluster.availability().problem.unwrap_or_default();
            return Err(format!("no in-sync counter can answer: {why}"));
        }
        readable
    };
    let start = shared.next_read_start() % readable.len();
    readable.rotate_left(start);
    let mut last_error = String::new();
    for (id, url) in readable {
        match shared
            .counters
            .count(
                &url,
                &id,
                tenant,
                fence,
                shared.epoch(),
                shared.settings.read_timeout,
            )
            .await
        {
            Ok(count) => return Ok(count),
            Err(e) => {
                tracing::debug!(counter = %id, error = %e, "read failed, trying another counter");
                last_error = format!("{id}: {e}");
            }
        }
    }
    Err(format!("no in-sync counter answered (last: {last_error})"))
}
