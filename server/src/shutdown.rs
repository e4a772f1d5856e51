//! The stop signal both binaries obey.

/// Resolves on SIGINT or SIGTERM. The server then stops accepting and gives
/// open requests (and so their transactions) `--shutdown-grace` to finish;
/// every acknowledged write is already durable, so that is all stopping
/// has to do.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
