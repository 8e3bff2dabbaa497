//! kiln-warmer binary: parses flags, sets up logging, hands over to [`kiln_warmer::run`].
//! Holds no warming logic.

use std::process::ExitCode;

use clap::Parser;
use kiln_warmer::{Args, LogFormat, Verbosity};

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    match kiln_warmer::run(&args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("warm failed: {err}");
            eprintln!("kiln-warmer: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &Args) {
    let level = match args.verbosity {
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
    match (args.log_format, args.log_timestamp) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Color, true) => builder.with_ansi(true).init(),
        (LogFormat::Color, false) => builder.with_ansi(true).without_time().init(),
        (LogFormat::Text, true) => builder.with_ansi(false).init(),
        (LogFormat::Text, false) => builder.with_ansi(false).without_time().init(),
    }
}
