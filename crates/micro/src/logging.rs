//! Logging for services and the server: to stderr, filtered by `MICRO_LOG_LEVEL` (default `info`), with colour
//! only on a terminal.

use micro_core::env;

/// The log filter: `MICRO_LOG_LEVEL` (tracing's `EnvFilter` syntax), else `info`; an invalid filter is `info`.
pub fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(env::var(env::MICRO_LOG_LEVEL).unwrap_or_else(|| "info".into()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Sets up logging (to stderr; `MICRO_LOG_LEVEL`, default `info`). Call it first in `main`; a second call does
/// nothing.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
