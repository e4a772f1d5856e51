//! Log setup: `RUST_LOG` filters (default `info`), `--log-format json` for
//! log shippers, colours only on a terminal.

use clap::Args;

/// Flags about the process rather than the service.
#[derive(Debug, Clone, Args)]
pub struct ProcessArgs {
    /// Log format: `compact` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "compact")]
    pub log_format: String,
    /// Check the health of the server these flags describe and exit 0 or 1
    /// (the container health check; no environment variable on purpose).
    #[arg(long)]
    pub healthcheck: bool,
}

pub fn init_logging(format: &str) {
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
