//! `counter`: one replica. Opens its store, serves HTTP, then registers
//! with the coordinator and catches up from its peers.

mod catchup;
mod config;
mod error;
mod healthcheck;
mod http;
mod metrics;
mod replica;
mod store;

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
    let args = config::Args::parse();
    if args.healthcheck {
        std::process::exit(healthcheck::probe(args.listen));
    }
    init_logging(&args.log_format);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let id = CounterId(args.id.clone().unwrap_or_else(config::host_name));
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}:{port}", config::host_name()));

    let store = store::FjallStore::open(&args.data_dir)
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    let replica = replica::Replica::start(id.clone(), Arc::new(store))?;
    tracing::info!(
        %id, %advertise, applied = %replica.applied(), data_dir = %args.data_dir.display(),
        "counter starting"
    );

    let state = Arc::new(http::AppState {
        replica,
        coordinator: args.coordinator.trim_end_matches('/').to_string(),
        token: args.cluster_token.clone().filter(|t| !t.is_empty()),
        fence_timeout: args.fence_timeout,
        http: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
        last_contact: Mutex::new(Instant::now()),
        metrics: metrics::install()?,
    });

    tokio::spawn(catchup::join(state.clone(), advertise.clone()));
    tokio::spawn(catchup::maintain(
        state.clone(),
        advertise,
        args.rejoin_after,
    ));

    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("counter stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. Every acknowledged write is already
/// durable, so stopping only has to let in-flight requests finish.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}
