//! `counter`: one replica. Opens its store, serves HTTP, then registers
//! with the coordinator and catches up from its peers.

mod catchup;
mod config;
mod error;
mod http;
mod import_queue;
mod item_filter;
mod metrics;
mod replica;
mod store;
mod unindexed;

use anyhow::Context;
use clap::Parser;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tally_common::CounterId;

/// glibc malloc showed up at the top of profiles under load; mimalloc's
/// per-thread caches suit the many small, short-lived request buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tally_server::disable_transparent_huge_pages();
    let args = config::Args::parse();
    if args.process.healthcheck {
        std::process::exit(tally_server::probe(args.listen));
    }
    tally_server::init_logging(args.process.log_format);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let id = CounterId(args.id.clone().unwrap_or_else(config::host_name));
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}:{port}", config::host_name()));

    let options = store::StoreOptions {
        item_filter_bytes: args.item_filter_mb << 20,
        index_batch_keys: args.index_batch_keys,
    };
    let store = store::FjallStore::open_with(&args.data_dir, options)
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    let replica = replica::Replica::start(id.clone(), Arc::new(store), Default::default())?;
    tracing::info!(
        %id, %advertise, applied = %replica.applied(), data_dir = %args.data_dir.display(),
        "counter starting"
    );

    if args.cluster_token.as_deref().unwrap_or("").is_empty() {
        tracing::warn!(
            "no cluster token (--cluster-token / TALLY_CLUSTER_TOKEN): the internal endpoints \
             are open to anyone who can reach this port; set the coordinator's token here too"
        );
    }
    let state = Arc::new(http::AppState {
        replica,
        coordinator: args.coordinator.trim_end_matches('/').to_string(),
        token: tally_server::ClusterToken::new(args.cluster_token.as_deref()),
        fence_timeout: args.fence_timeout,
        catch_up_rate: args.catch_up_rate,
        // No total timeout here: each call to the coordinator sets its own,
        // and a copy from a peer has an idle timeout instead (catchup.rs).
        http: reqwest::Client::builder()
            .pool_idle_timeout(args.serve.client_idle_timeout())
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()?,
        last_contact: Mutex::new(Instant::now()),
        register_again: tokio::sync::Notify::new(),
        metrics: metrics::install()?,
    });

    tokio::spawn(catchup::join(state.clone(), advertise, args.rejoin_after));

    tally_server::serve(
        listener,
        http::router(state),
        &args.serve,
        tally_server::shutdown_signal(),
    )
    .await?;
    tracing::info!("counter stopped");
    Ok(())
}
