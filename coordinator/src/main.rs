//! `coordinator`: restores the decision log and membership, then serves the
//! public API while its tasks batch writes, decide, health-check and sweep.
//!
//! The write path, in order: `http.rs` (`add_items`) → `batcher.rs` →
//! `txn.rs` → `decider.rs` → the counters' `replica.rs` and `store.rs`.

mod batcher;
mod client;
mod config;
mod dashboard;
mod decider;
mod error;
mod health;
mod http;
mod log;
mod metrics;
mod openapi;
mod reads;
mod state;
mod stream;
mod txn;

use anyhow::Context;
use std::sync::Arc;
use std::time::Instant;
use tally_common::items::ItemLimits;
use tally_common::membership::{Cluster, MembershipConfig};

/// glibc malloc showed up at the top of profiles under load; mimalloc's
/// per-thread caches suit the many small, short-lived request buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tally_server::disable_transparent_huge_pages();
    let args = config::Args::parse_checked();
    if args.process.healthcheck {
        std::process::exit(tally_server::probe(args.listen));
    }
    tally_server::init_logging(args.process.log_format);
    let metrics = metrics::install()?;

    let (log, restored) = log::DecisionLog::open(&args.data_dir).with_context(|| {
        format!(
            "cannot open the decision log in {}",
            args.data_dir.display()
        )
    })?;
    let membership = MembershipConfig {
        dead_after: args.dead_after,
        remove_after: args.remove_after,
        min_insync: args.min_insync,
    };
    let mut cluster = Cluster::restore(membership, restored.members, restored.decided);
    // Every index below the oldest decision still logged was trimmed, so
    // every counter in sync then had applied it.
    cluster.note_trimmed(
        restored
            .decisions
            .first()
            .map_or(restored.decided, |(_, index)| {
                tally_common::CommitIndex(index.0 - 1)
            }),
    );
    tracing::info!(
        epoch = restored.epoch, decided = %restored.decided, counters = cluster.members().count(),
        pending_commits = restored.decisions.len(), "coordinator starting"
    );
    let settings = state::Settings {
        prepare_timeout: args.prepare_timeout,
        commit_timeout: args.prepare_timeout.max(std::time::Duration::from_secs(2)),
        read_timeout: args.read_timeout,
        health_interval: args.health_interval,
        max_body_bytes: args.max_body_bytes,
        body_read_timeout: args.body_read_timeout,
        item_limits: ItemLimits {
            max_items: args.max_items,
            ..ItemLimits::default()
        },
    };
    let token = tally_server::ClusterToken::new(args.cluster_token.as_deref());
    if token.get().is_none() {
        tracing::warn!(
            "no cluster token (--cluster-token / TALLY_CLUSTER_TOKEN): the internal endpoints \
             are open, and anyone who can reach this port can register a counter or decide a \
             transaction's outcome; set the same token on the coordinator and every counter"
        );
    }
    let (decider, decider_task) = decider::Decider::new();
    let shared = Arc::new(state::Shared::new(
        settings,
        cluster,
        log,
        restored.epoch,
        client::CounterClient::new(
            token.get().map(str::to_string),
            args.serve.client_idle_timeout(),
        ),
        decider,
    ));
    // Commits logged before a restart go out again to every counter; a
    // counter that already applied one just acknowledges it.
    {
        let everyone: std::collections::BTreeSet<_> = shared
            .cluster
            .lock()
            .expect("poisoned")
            .members()
            .map(|m| m.id.clone())
            .collect();
        let mut pending = shared.pending.lock().expect("poisoned");
        let long_ago = Instant::now() - std::time::Duration::from_secs(60);
        for (txn, index) in restored.decisions {
            pending.insert(
                index,
                decider::Pending {
                    txn,
                    waiting: everyone.clone(),
                    since: long_ago,
                },
            );
        }
    }

    tokio::spawn(decider_task.run(shared.clone()));
    tokio::spawn(health::run_checks(shared.clone()));
    tokio::spawn(health::run_sweeper(shared.clone()));
    let batcher = batcher::Batcher::start(
        shared.clone(),
        args.max_queued_writes,
        args.max_txn_items,
        args.max_inflight_txns,
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "coordinator serving");
    let app = http::router(http::AppState {
        shared,
        batcher,
        token,
        metrics,
    });
    tally_server::serve(listener, app, &args.serve, tally_server::shutdown_signal()).await?;
    tracing::info!("coordinator stopped");
    Ok(())
}
