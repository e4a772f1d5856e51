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
mod forward;
mod http;
mod log;
mod metrics;
mod notices;
mod openapi;
mod presence;
mod reads;
mod replication;
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
        return serve_presence_only(args, primary, listener, shutdown).await;
    }
    let metrics = metrics::install()?;
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
    let peers = args.cluster_peers();
    let advertise = peers.my_url().to_string();
    let brain = if peers.is_single() {
        {
            let (log, mut restored) = log::DecisionLog::open(&args.data_dir)?;
            if let Some(index) = args.recover_decided_index {
                restored = log::recover_decided(&log, restored, tally_common::CommitIndex(index))?;
            }
            tracing::info!(
                epoch = restored.epoch, decided = %restored.decided,
                counters = restored.members.len(),
                pending_commits = restored.decisions.len(), "coordinator starting"
            );
            let core = CoordinatorCore::recover(args.core(restored.epoch), restored, Millis(0));
            driver::Brain::Single {
                core: Box::new(core),
                log,
            }
        }
    } else {
        {
            let (disk, restored) = replication::disk::RaftDisk::open(&args.data_dir)?;
            tracing::info!(
                me = %advertise, coordinators = peers.peers.len(),
                term = restored.hard_state.term, entries = restored.entries.len(),
                "coordinator starting as one of several (Raft)"
            );
            let (replica, outputs) =
                replication::Replica::new(peers, args.core(0), restored, Millis(0))?;
            driver::Brain::Replicated {
                replica: Box::new(replica),
                outputs,
                disk,
            }
        }
    };
    let (driver, driver_task) = driver::Driver::start(
        brain,
        driver::Start {
            counters: counters.clone(),
            settings: settings.clone(),
            peers: args.cluster_peers(),
            token: token.get().map(str::to_string),
        },
    );
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
        advertise: Some(advertise),
        forwarder: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Io(format!("the HTTP client: {e}")))?,
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

/// A presence-only frontend: serves the presence endpoints (and
/// `GET /health`) on `listener`, following the membership of the
/// coordinator at `primary`, until `shutdown` resolves.
async fn serve_presence_only(
    args: config::Args,
    primary: String,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let token = tally_server::ClusterToken::new(args.cluster_token.as_deref());
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(1))
        .build()
        .map_err(|e| Error::Io(format!("the HTTP client: {e}")))?;
    let source = presence::OwnerSource::Remote {
        cluster_url: format!("{}/cluster", primary.trim_end_matches('/')),
        http,
    };
    let started = presence::start(
        &args.presence,
        source,
        token.get().map(str::to_string),
        args.serve.client_idle_timeout(),
        args.settings().item_limits,
    )?;
    tally_server::raise_open_file_limit(args.serve.max_connections + args.presence.max_sockets);
    let app = presence::router(started.frontend.clone())
        .route(
            "/health",
            axum::routing::get(|| async {
                axum::Json(tally_common::api::Message::new("presence frontend"))
            }),
        )
        .method_not_allowed_fallback(tally_server::method_not_allowed)
        .fallback(|| async { Error::NotFound("no such path".into()) })
        .layer(axum::middleware::from_fn(tally_server::track_requests));
    tracing::info!(listen = ?listener.local_addr().ok(), %primary, "presence-only frontend serving");
    let shutdown = started.then_stop(shutdown);
    let served = tally_server::serve(listener, app, &args.serve, shutdown).await;
    started.stop().await;
    served.map_err(|e| Error::Io(e.to_string()))
}
