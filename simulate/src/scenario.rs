//! The seven-step walkthrough scenario of `make simulate`, with every step checked:
//! start, add an item, stop counter 1, restart it, stop counters 2 and 3,
//! add two items with only counter 1 alive, restart 2 and 3. At the end
//! every counter must return the same, correct count.
//!
//! The steps drive a [`Backend`], so the same scenario runs against local
//! processes and against containers.

use crate::api::{Api, WriteOutcome};
use crate::table::verdict;
use crate::wait;
use anyhow::{bail, Context};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tally_common::api::CounterState;
use tally_common::Item;

/// What the scenario needs from a running cluster.
pub trait Backend {
    fn api(&self) -> &Api;
    /// Ids of the counters, in order.
    fn counter_ids(&self) -> Vec<String>;
    fn stop_counter(&mut self, i: usize) -> BoxFuture<'_, anyhow::Result<()>>;
    fn start_counter(&mut self, i: usize) -> BoxFuture<'_, anyhow::Result<()>>;
    /// The count of `tenant` as counter `i` itself answers it.
    fn counter_count<'a>(&'a self, i: usize, tenant: &'a str)
        -> BoxFuture<'a, Result<u64, String>>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs the seven steps, printing each with what it expected and got.
/// Fails on the first step that does not hold.
pub async fn run(backend: &mut dyn Backend, timeout: Duration) -> anyhow::Result<()> {
    let ids = backend.counter_ids();
    if ids.len() < 3 {
        bail!(
            "the scenario needs 3 counters, the cluster has {}",
            ids.len()
        );
    }
    let tenant = format!("scenario-{:x}", rand::random::<u32>());
    let mut step = Steps::default();

    step.begin("start the cluster", "every counter live and in sync");
    wait_states(backend, &ids, &[0, 1, 2], State::InSync, timeout).await?;
    step.pass("3 counters live and in sync");

    step.begin("add an item", "200 and a count of 1 on every counter");
    add(backend.api(), &tenant, &["item1"]).await?;
    expect_counts(backend, &tenant, &[0, 1, 2], 1, timeout).await?;
    step.pass("count 1 everywhere");

    step.begin("stop counter 1", "counter 1 dead, reads still served");
    backend.stop_counter(0).await?;
    wait_states(backend, &ids, &[0], State::Dead, timeout).await?;
    expect_coordinator_count(backend.api(), &tenant, 1).await?;
    step.pass("counter 1 dead, count 1");

    step.begin("restart counter 1", "counter 1 back in sync with count 1");
    backend.start_counter(0).await?;
    wait_states(backend, &ids, &[0], State::InSync, timeout).await?;
    expect_counts(backend, &tenant, &[0, 1, 2], 1, timeout).await?;
    step.pass("counter 1 in sync, count 1 everywhere");

    step.begin(
        "stop counters 2 and 3",
        "both dead, counter 1 alone in sync",
    );
    backend.stop_counter(1).await?;
    backend.stop_counter(2).await?;
    wait_states(backend, &ids, &[1, 2], State::Dead, timeout).await?;
    wait_states(backend, &ids, &[0], State::InSync, timeout).await?;
    step.pass("counters 2 and 3 dead");

    step.begin(
        "add two items",
        "200 and a count of 3 with only counter 1 alive",
    );
    add(backend.api(), &tenant, &["item2", "item3"]).await?;
    expect_counts(backend, &tenant, &[0], 3, timeout).await?;
    expect_coordinator_count(backend.api(), &tenant, 3).await?;
    step.pass("count 3 on counter 1 and the coordinator");

    step.begin(
        "restart counters 2 and 3",
        "both catch up: count 3 on every counter",
    );
    backend.start_counter(1).await?;
    backend.start_counter(2).await?;
    wait_states(backend, &ids, &[0, 1, 2], State::InSync, timeout).await?;
    expect_counts(backend, &tenant, &[0, 1, 2], 3, timeout).await?;
    expect_coordinator_count(backend.api(), &tenant, 3).await?;
    step.pass("count 3 everywhere");

    println!("{}", verdict(true, "scenario passed: all 7 steps hold"));
    Ok(())
}

#[derive(Default)]
struct Steps {
    n: usize,
}

impl Steps {
    fn begin(&mut self, what: &str, expect: &str) {
        self.n += 1;
        println!("step {}: {what}\n        expect: {expect}", self.n);
    }

    fn pass(&self, got: &str) {
        println!("        got:    {got}  {}", verdict(true, "ok"));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    InSync,
    Dead,
}

async fn add(api: &Api, tenant: &str, ids: &[&str]) -> anyhow::Result<()> {
    let items: Vec<Item> = ids.iter().map(|id| Item::new(*id, tenant)).collect();
    match api.add(&items).await {
        WriteOutcome::Ok => Ok(()),
        other => {
            println!("        got:    {other:?}  {}", verdict(false, "FAILED"));
            bail!("adding {ids:?} failed: {other:?}")
        }
    }
}

async fn wait_states(
    backend: &dyn Backend,
    ids: &[String],
    which: &[usize],
    want: State,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = backend.api().clone();
    let wanted: Vec<String> = which.iter().map(|&i| ids[i].clone()).collect();
    let result = wait::until(&format!("{wanted:?} {want:?}"), timeout, || {
        let (api, wanted) = (api.clone(), wanted.clone());
        async move {
            let view = api.cluster().await?;
            let holds = wanted.iter().all(|id| {
                let c = view.counters.iter().find(|c| &c.id.0 == id);
                match want {
                    State::InSync => c.is_some_and(|c| c.in_sync && c.state == CounterState::Live),
                    State::Dead => c.is_none_or(|c| c.state == CounterState::Dead && !c.in_sync),
                }
            });
            let states: Vec<String> = view
                .counters
                .iter()
                .map(|c| {
                    format!(
                        "{}={:?}{}",
                        c.id,
                        c.state,
                        if c.in_sync { "+isr" } else { "" }
                    )
                })
                .collect();
            if holds {
                Ok(())
            } else {
                Err(states.join(" "))
            }
        }
    })
    .await;
    if let Err(e) = &result {
        println!("        got:    {e}  {}", verdict(false, "FAILED"));
    }
    result
}

/// Waits until each counter in `which` has applied everything decided so
/// far (a state, polled), then reads its count once: a counter is told of
/// a commit after the client, but once it has applied it, a wrong or
/// failed read is a failure, not something to retry.
async fn expect_counts(
    backend: &dyn Backend,
    tenant: &str,
    which: &[usize],
    want: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = backend.api().clone();
    let ids = backend.counter_ids();
    let decided = api
        .cluster()
        .await
        .map_err(|e| anyhow::anyhow!("/cluster: {e}"))?
        .decided_index;
    for &i in which {
        let id = ids[i].clone();
        let applied = wait::until(
            &format!("counter {} applied {decided}", i + 1),
            timeout,
            || {
                let (api, id) = (api.clone(), id.clone());
                async move {
                    let view = api.cluster().await?;
                    match view.counters.iter().find(|c| c.id.0 == id) {
                        Some(c) if c.applied_index >= decided => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
        let result = match applied {
            Err(e) => Err(e),
            Ok(()) => match backend.counter_count(i, tenant).await {
                Ok(n) if n == want => Ok(()),
                Ok(n) => Err(anyhow::anyhow!("count {n}, want {want}")),
                Err(e) => Err(anyhow::anyhow!("read failed: {e}")),
            },
        };
        if let Err(e) = &result {
            println!("        got:    {e}  {}", verdict(false, "FAILED"));
        }
        result.with_context(|| format!("counter {} disagrees", i + 1))?;
    }
    Ok(())
}

/// One read through the coordinator, which is fenced: right after an
/// acknowledged write it must already include it.
async fn expect_coordinator_count(api: &Api, tenant: &str, want: u64) -> anyhow::Result<()> {
    let result = match api.count(tenant).await {
        Ok(n) if n == want => Ok(()),
        Ok(n) => Err(anyhow::anyhow!("coordinator count {n}, want {want}")),
        Err(e) => Err(anyhow::anyhow!("coordinator read failed: {e}")),
    };
    if let Err(e) = &result {
        println!("        got:    {e}  {}", verdict(false, "FAILED"));
    }
    result
}

/// The scenario's backend on a [`crate::cluster::LocalCluster`].
pub struct ProcessBackend(pub crate::cluster::LocalCluster);

impl Backend for ProcessBackend {
    fn api(&self) -> &Api {
        self.0.api()
    }

    fn counter_ids(&self) -> Vec<String> {
        self.0.counters().iter().map(|c| c.id.clone()).collect()
    }

    fn stop_counter(&mut self, i: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { self.0.stop_counter(i).map(drop) })
    }

    fn start_counter(&mut self, i: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { self.0.start_counter(i) })
    }

    fn counter_count<'a>(
        &'a self,
        i: usize,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let url = self.0.counters()[i].url.clone();
            self.0.api().counter_count(&url, tenant).await
        })
    }
}
