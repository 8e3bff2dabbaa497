//! kiln-warmer binary: parses flags, sets up logging, hands over to [`kiln_warmer::run`].
//! Holds no warming logic.

use std::process::ExitCode;

use clap::Parser;
use kiln_warmer::Args;

fn main() -> ExitCode {
    let mut args = Args::parse();
    args.apply_env(|name| std::env::var(name).ok());
    args.logging.init();
    match kiln_warmer::run(&args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("warm failed: {err}");
            eprintln!("kiln-warmer: {err}");
            ExitCode::FAILURE
        }
    }
}
