//! The coordinator: restores the decision log and membership, starts the
//! driver that runs the protocol core, then serves the public API.
//!
//! The write path, in order: `http.rs` (`add_items`) → `driver.rs` (hands
//! the write to the core) → `tally_common::coordinator` (group commit,
//! prepare, decide, log, answer) → `driver.rs` (carries out the prepare,
//! log write and commit) → the counters' `replica.rs`. docs/architecture.md
//! walks it file by file.

mod client;
pub mod config;
mod dashboard;
mod driver;
mod error;
mod http;
mod log;
mod metrics;
mod notices;
mod openapi;
mod presence;
mod reads;
mod schema;
mod state;
mod stream;

pub use error::Error;

use std::future::Future;
use std::sync::Arc;
use tally_common::coordinator::{CoordinatorCore, Millis};

/// Runs a coordinator on `listener` until `shutdown` resolves, then stops
/// serving, stops the driver and waits for it.
pub async fn run(
    args: config::Args,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Some(primary) = args.presence.frontend_of.clone() {
        return presence::serve_only(args, primary, listener, shutdown).await;
    }
    let metrics = metrics::install()?;
    let (log, restored) = log::DecisionLog::open(&args.data_dir)?;
    tracing::info!(
        epoch = restored.epoch, decided = %restored.decided, counters = restored.members.len(),
        pending_commits = restored.decisions.len(), "coordinator starting"
    );
    let core = CoordinatorCore::recover(args.core(restored.epoch), restored, Millis(0));
    let token = tally_server::ClusterToken::new(args.cluster_token.as_deref());
    if token.get().is_none() {
        tracing::warn!(
            "no cluster token (--cluster-token / TALLY_CLUSTER_TOKEN): the internal endpoints \
             are open, and anyone who can reach this port can register a counter or decide a \
             transaction's outcome; set the same token on the coordinator and every counter"
        );
    }
    let settings = args.settings();
    let counters = client::CounterClient::new(token.get().map(str::to_string), &settings);
    let (driver, driver_task) =
        driver::Driver::start(core, log, counters.clone(), settings.clone());
    let presence = presence::start(
        &args.presence,
        presence::OwnerSource::Driver(driver.clone()),
        token.get().map(str::to_string),
        args.serve.client_idle_timeout(),
        settings.item_limits,
    )?;
    tally_server::raise_open_file_limit(args.serve.max_connections + args.presence.max_sockets);
    let shared = Arc::new(state::Shared {
        settings,
        driver: driver.clone(),
        counters,
        reads: Default::default(),
    });
    tracing::info!(listen = ?listener.local_addr().ok(), "coordinator serving");
    let openapi = Arc::new(openapi::document(shared.settings.item_limits));
    let app = http::router(http::AppState {
        shared,
        openapi,
        token,
        metrics,
        presence: presence.frontend.clone(),
    });
    let shutdown = presence.then_stop(shutdown);
    let served = tally_server::serve(listener, app, &args.serve, shutdown).await;
    presence.stop().await;
    driver.stop();
    let _ = driver_task.await;
    served.map_err(|e| Error::Io(e.to_string()))?;
    tracing::info!("coordinator stopped");
    Ok(())
}
