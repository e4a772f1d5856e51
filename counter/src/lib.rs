//! One counter replica: its store, its single writer, its HTTP surface, and
//! the background work that keeps it in the cluster.
//!
//! A request travels `http` → `replica` (the writer thread and its 2PC
//! participant) → `store`. Around it: `register` gets the counter into the
//! cluster and back after the coordinator restarts, `in_doubt` settles
//! prepared transactions whose outcome never came, `catch_up` copies what
//! it missed from peers, all calling the coordinator through
//! `coordinator_client` (to whichever of several answers, `coordinators`). `presence` sums the coordinators' presence
//! sockets for the keys this counter owns (nothing durable, nothing of the
//! replica). `state` is what they share, including the
//! background tasks, which [`run`] stops and joins before it returns.
//!
//! Modules depend on each other in one direction only (no cycles); the
//! test `tests/module_graph.rs` checks it.

mod catch_up;
pub mod config;
mod coordinator_client;
mod coordinators;
mod error;
mod http;
mod import_queue;
mod in_doubt;
mod metrics;
mod presence;
mod register;
mod replica;
mod state;
mod store;

pub use config::Args;
pub use error::Error;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tally_common::CounterId;

/// Runs a counter on `listener` until `shutdown` resolves: opens the store,
/// starts the writer, serves HTTP, and registers with the coordinator in
/// the background. On shutdown it stops accepting, lets in-flight requests
/// finish, stops and joins every background task, and waits for the
/// writer's last batch to be durable.
pub async fn run(
    args: Args,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let settings = config::Settings::from_args(&args);
    let port = listener
        .local_addr()
        .map_err(|e| Error::process("the listening socket", e))?
        .port();
    let id = CounterId(args.id.clone().unwrap_or_else(config::host_name));
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}:{port}", config::host_name()));

    let options = store::StoreOptions {
        item_filter_bytes: args.item_filter_mb << 20,
        index_batch_keys: args.index_batch_keys,
    };
    let store = store::FjallStore::open_with(&args.data_dir, options)?;
    let (replica, writer) =
        replica::Replica::start(id.clone(), Arc::new(store), settings.in_doubt)?;
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
    // No total timeout here: each call to the coordinator sets its own,
    // and a copy from a peer has an idle timeout instead (catch_up.rs).
    let http = reqwest::Client::builder()
        .pool_idle_timeout(settings.client_idle_timeout)
        .connect_timeout(settings.connect_timeout)
        .build()
        .map_err(|e| Error::process("the HTTP client", e))?;
    let state = Arc::new(state::AppState {
        replica,
        token: tally_server::ClusterToken::new(args.cluster_token.as_deref()),
        advertise,
        http,
        coordinators: coordinators::Coordinators::new(settings.coordinators.clone()),
        last_contact: Mutex::new(Instant::now()),
        register_again: tokio::sync::Notify::new(),
        metrics: metrics::install().map_err(|e| Error::process("the metrics recorder", e))?,
        tasks: state::Tasks::default(),
        presence: Default::default(),
        settings,
    });

    state.tasks.spawn("register", register::join(state.clone()));
    state.tasks.spawn(
        "presence leases",
        presence::expire_leases(state.presence.clone()),
    );
    let served = tally_server::serve(listener, http::router(state.clone()), &args.serve, shutdown)
        .await
        .map_err(|e| Error::process("the HTTP server", e));
    state.tasks.stop().await;
    let grace = state.settings.writer_stop_grace;
    // The last handle on the replica, unless a connection outlived the
    // server's grace period: the writer ends once all are gone.
    drop(state);
    if let Err(e) = writer.join(grace).await {
        // Everything acknowledged is durable already; the process exits
        // all the same.
        tracing::warn!(error = %e, "the writer did not end cleanly");
    }
    served?;
    tracing::info!("counter stopped");
    Ok(())
}
