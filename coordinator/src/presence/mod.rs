//! Presence, the frontend side: live counts of clients connected to a key
//! over WebSocket. This coordinator holds the sockets and counts them per
//! key (`hub`); each key's owner, one of the live counters chosen by
//! rendezvous hashing (`tally_common::presence`), sums every frontend's
//! counts and streams back the others' sums (`link`, one task per owner).
//! Which counters own keys comes from the membership (`owners`). Nothing
//! here is durable or touches two-phase commit. docs/presence.md has the
//! design and its reasons.
//!
//! A coordinator started with `--presence-frontend-of URL` is a frontend
//! only (`serve_presence_only` in lib.rs): it serves these endpoints and follows the
//! membership of the coordinator at URL.

pub(crate) mod http;
mod hub;
mod link;
mod owners;
mod socket;

pub use owners::OwnerSource;

use crate::error::Error;
use axum::routing::get;
use axum::Router;
use hub::Hub;
use link::LinkClient;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally_common::items::ItemLimits;
use tally_common::presence::{FrontendId, Owner};
use tally_common::CounterId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// This coordinator as a presence frontend; shared by its handlers.
pub struct Frontend {
    hub: Arc<Hub>,
    link: LinkClient,
    limits: ItemLimits,
    ping_interval: Duration,
    /// Set when the coordinator stops: sockets close with 1001 and the
    /// owner task ends.
    stopping: watch::Sender<bool>,
}

/// The running frontend: its handle and the task that follows the owners.
pub struct Started {
    pub frontend: Arc<Frontend>,
    task: JoinHandle<()>,
}

impl Started {
    /// `shutdown`, followed by closing every socket (1001) and stopping
    /// the links, so sockets are told while the server still drains.
    pub fn then_stop(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let stopping = self.frontend.stopping.clone();
        async move {
            shutdown.await;
            stopping.send_replace(true);
        }
    }

    /// Closes every socket, stops the links, and waits for them.
    pub async fn stop(self) {
        self.frontend.stopping.send_replace(true);
        let _ = self.task.await;
    }
}

/// Starts the frontend: the owner-following task and, through it, one
/// link per owning counter.
pub fn start(
    args: &crate::config::PresenceArgs,
    source: OwnerSource,
    token: Option<String>,
    client_idle: Duration,
    limits: ItemLimits,
) -> Result<Started, Error> {
    let id = FrontendId(format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let http = reqwest::Client::builder()
        .pool_idle_timeout(client_idle)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| Error::Io(format!("the presence HTTP client: {e}")))?;
    let frontend = Arc::new(Frontend {
        hub: Arc::new(Hub::new(
            id.clone(),
            args.lease,
            args.max_sockets,
            args.max_per_key,
        )),
        link: LinkClient { http, token },
        limits,
        ping_interval: args.ping_interval,
        stopping: watch::channel(false).0,
    });
    tracing::info!(frontend = %id.0, max_sockets = args.max_sockets, "presence frontend starting");
    let task = tokio::spawn(follow_owners(frontend.clone(), source));
    Ok(Started { frontend, task })
}

/// The public presence routes.
pub fn router<S>(frontend: Arc<Frontend>) -> Router<S> {
    Router::new()
        .route("/presence/{tenant}/{key}", get(http::join))
        .route("/presence/{tenant}/{key}/count", get(http::count))
        .with_state(frontend)
}

/// Reads the owner set every poll interval; starts a link for each new
/// owner and stops the link of each one that left. Ends, with every link,
/// when the frontend stops.
async fn follow_owners(frontend: Arc<Frontend>, source: OwnerSource) {
    let mut links: HashMap<CounterId, (String, JoinHandle<()>)> = HashMap::new();
    let mut stopping = frontend.stopping.subscribe();
    loop {
        if let Some(owners) = source.owners().await {
            reconcile(&frontend, &owners, &mut links);
            if frontend.hub.set_owners(owners.clone()) {
                tracing::info!(
                    owners = ?owners.iter().map(|o| o.id.0.as_str()).collect::<Vec<_>>(),
                    "presence owners changed"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(source.poll_interval()) => {}
            () = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        }
    }
    for (_, (_, task)) in links.drain() {
        task.abort();
    }
}

fn reconcile(
    frontend: &Arc<Frontend>,
    owners: &[Owner],
    links: &mut HashMap<CounterId, (String, JoinHandle<()>)>,
) {
    links.retain(|id, (url, task)| {
        let keep = owners.iter().any(|o| &o.id == id && &o.url == url);
        if !keep {
            task.abort();
        }
        keep
    });
    for owner in owners {
        if !links.contains_key(&owner.id) {
            let task = tokio::spawn(link::run(
                frontend.hub.clone(),
                owner.clone(),
                frontend.link.clone(),
            ));
            links.insert(owner.id.clone(), (owner.url.clone(), task));
        }
    }
}
