//! `coordinator`: parses the command line and runs `tally_coordinator::run`.

use tally_coordinator::config::Args;

/// glibc malloc showed up at the top of profiles under load; mimalloc's
/// per-thread caches suit the many small, short-lived request buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    tally_server::disable_transparent_huge_pages();
    let args = Args::parse_checked();
    if args.process.healthcheck {
        std::process::exit(tally_server::probe(args.listen));
    }
    tally_server::init_logging(args.process.log_format);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("coordinator: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    if let Err(e) = tally_coordinator::run(args, listener, tally_server::shutdown_signal()).await {
        tracing::error!(error = %e, "coordinator failed");
        eprintln!("coordinator: {e}");
        std::process::exit(1);
    }
}
