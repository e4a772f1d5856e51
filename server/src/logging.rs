//! Log setup: `RUST_LOG` filters (default `info`), `--log-format json` for
//! log shippers, colours only on a terminal.

use clap::{Args, ValueEnum};

/// How log lines are written. An unknown name is refused at start-up, so a
/// typo cannot leave a log shipper reading text it cannot parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people.
    Compact,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Flags about the process rather than the service.
#[derive(Debug, Clone, Args)]
pub struct ProcessArgs {
    /// Log format.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Compact)]
    pub log_format: LogFormat,
    /// Check the health of the server these flags describe and exit 0 or 1
    /// (the container health check; no environment variable on purpose).
    #[arg(long)]
    pub healthcheck: bool,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Compact => builder.compact().init(),
    }
}
