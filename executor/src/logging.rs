//! Logging set-up shared by the `kiln-executor` and `kiln-warmer` binaries: level from
//! `--verbosity` (or `KILN_LOG`), format from `--log-format`, to stderr. Configures only.

use crate::cli::{LogFormat, Verbosity};

/// Install the global tracing subscriber. Call once, at the start of `main`.
pub fn init(verbosity: Verbosity, format: LogFormat, timestamps: bool) {
    let level = match verbosity {
        Verbosity::Panic | Verbosity::Fatal | Verbosity::Error => "error",
        Verbosity::Warn => "warn",
        Verbosity::Info => "info",
        Verbosity::Debug => "debug",
        Verbosity::Trace => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "kiln_executor={level},kiln_warmer={level},warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match (format, timestamps) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Color, true) => builder.with_ansi(true).init(),
        (LogFormat::Color, false) => builder.with_ansi(true).without_time().init(),
        (LogFormat::Text, true) => builder.with_ansi(false).init(),
        (LogFormat::Text, false) => builder.with_ansi(false).without_time().init(),
    }
}
