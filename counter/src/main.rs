//! `counter`: one replica. Parses its flags and runs [`tally_counter::run`]
//! until SIGINT or SIGTERM.

use clap::Parser;
use std::process::ExitCode;
use tally_counter::Args;

/// glibc malloc showed up at the top of profiles under load; mimalloc's
/// per-thread caches suit the many small, short-lived request buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally_server::disable_transparent_huge_pages();
    let args = Args::parse();
    if args.process.healthcheck {
        std::process::exit(tally_server::probe(args.listen));
    }
    tally_server::init_logging(args.process.log_format);

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = args.data_dir.clone();
    match tally_counter::run(args, listener, tally_server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, data_dir = %data_dir.display(), "counter failed");
            ExitCode::FAILURE
        }
    }
}
