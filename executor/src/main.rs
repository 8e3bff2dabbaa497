//! kiln-executor binary: parses flags, sets up logging, hands over to the library.
//! Holds no build logic.

use std::process::ExitCode;

use clap::Parser;
use kiln_executor::cli::{LogFormat, Options, Verbosity};

fn main() -> ExitCode {
    // RUN steps re-execute this binary as the namespace init; that path must run before anything else.
    if let Some(code) = kiln_executor::run::maybe_run_init() {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let opts = Options::parse();
    init_logging(&opts);
    match kiln_executor::build::run_build(&opts) {
        Ok(result) => {
            println!("{}", result.digest);
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("build failed: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                tracing::error!("  caused by: {cause}");
                source = cause.source();
            }
            eprintln!("kiln-executor: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(opts: &Options) {
    let level = match opts.verbosity {
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
    match (opts.log_format, opts.log_timestamp) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Color, true) => builder.with_ansi(true).init(),
        (LogFormat::Color, false) => builder.with_ansi(true).without_time().init(),
        (LogFormat::Text, true) => builder.with_ansi(false).init(),
        (LogFormat::Text, false) => builder.with_ansi(false).without_time().init(),
    }
}
