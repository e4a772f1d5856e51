//! The accept loop. `axum::serve` has no connection bound, no header
//! deadline and no header size cap, so both binaries serve through this
//! instead: hyper's HTTP/1 connection driven directly, one task per
//! connection, each holding a permit of the connection bound.

use crate::limits::ServeLimits;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tally_common::api::Message;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a stopping server keeps serving the connections it has, with
/// `Connection: close` on every answer, before it closes the idle ones.
/// Closing an idle keep-alive connection races with a client that is just
/// sending a request on it: the client gets "connection closed before
/// message completed" and cannot know whether the request was done. Under
/// load a client reuses its connection within microseconds of an answer;
/// after one answer that says close, it opens a new one, which is refused
/// (a definite failure). In the SIGTERM test, closing idle connections at
/// once left 1-5 of 16 clients without an answer in half the runs.
const DRAIN: Duration = Duration::from_millis(250);

/// Serves `app` on `listener` within `limits` until `shutdown` resolves,
/// then stops accepting, answers what arrives on open connections for
/// [`DRAIN`] (each answer closing its connection), and waits up to
/// `limits.shutdown_grace` for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    raise_open_file_limit(limits.max_connections);
    let draining = Arc::new(AtomicBool::new(false));
    let gate = Gate {
        in_flight: Arc::new(Semaphore::new(limits.max_inflight_requests)),
        draining: draining.clone(),
    };
    let app = app.layer(middleware::from_fn_with_state(gate, shed_or_close));
    let connections = Arc::new(Semaphore::new(limits.max_connections));

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        // Headers are capped above; this bounds how much of a body one
        // read takes in, so a connection's buffer never grows past it.
        .max_buf_size((limits.max_header_bytes * 2).max(256 * 1024));

    // hyper-util's GracefulShutdown does not take a connection with
    // upgrades (a WebSocket handshake), so connections watch this instead.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Dropping closes it: the client learns at once, and the bound
            // on memory and descriptors holds whatever arrives.
            metrics::counter!("tally_http_connections_refused_total").increment(1);
            tracing::debug!("connection refused: at --max-connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // With upgrades, so a WebSocket handshake can take the connection
        // over; once it has, the connection no longer counts here.
        let conn = http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()))
            .with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            metrics::gauge!("tally_http_connections").increment(1.0);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    // Finish the request in hand, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                // Timeouts, resets and malformed requests end up here; they
                // are the client's business, not an operator's.
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics::gauge!("tally_http_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    draining.store(true, Ordering::SeqCst);
    tokio::time::sleep(DRAIN.min(limits.shutdown_grace)).await;
    stop_tx.send_replace(true);
    // Every connection holds a permit until it ends: all of them back
    // means every connection has ended.
    tokio::select! {
        _ = connections.acquire_many(limits.max_connections as u32) => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "connections still open at the end of the grace period");
        }
    }
    Ok(())
}

/// What every request passes before the router: the bound on requests in
/// hand, and whether the server is stopping.
#[derive(Clone)]
struct Gate {
    in_flight: Arc<Semaphore>,
    draining: Arc<AtomicBool>,
}

/// Middleware, both of the serving path's checks in one (each middleware
/// layer boxes the request's future once more, per request):
/// - a request beyond `--max-inflight-requests` is answered 503 at once,
///   without reading its body;
/// - while the server stops, every answer closes its connection, so no
///   client sends another request on a connection about to close.
async fn shed_or_close(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let Ok(_permit) = gate.in_flight.try_acquire() else {
        metrics::counter!("tally_http_requests_shed_total").increment(1);
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(Message::new("too many requests in flight, retry later")),
        )
            .into_response();
        close_if_draining(&gate, &mut response);
        return response;
    };
    let mut response = next.run(request).await;
    close_if_draining(&gate, &mut response);
    response
}

fn close_if_draining(gate: &Gate, response: &mut Response) {
    if gate.draining.load(Ordering::SeqCst) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
}

/// Errors on accept are about one connection (reset before accept) or about
/// the process (out of descriptors). The latter needs a pause, or the loop
/// spins at full speed while nothing can be accepted.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Each connection is a descriptor: make sure the soft limit allows
/// `--max-connections` (or more, for a caller that holds other sockets
/// too) plus headroom for files and peers, up to the hard
/// limit the administrator set.
pub fn raise_open_file_limit(max_connections: usize) {
    let wanted = max_connections as u64 + 1024;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return;
        }
    }
    if limit.rlim_cur < wanted {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_connections,
            "the open-file limit is below --max-connections plus headroom"
        );
    }
}
