//! kiln-executor binary: parses flags, sets up logging, hands over to the library.
//! Holds no build logic.

use std::process::ExitCode;

use kiln_executor::cli::Options;

fn main() -> ExitCode {
    // RUN steps re-execute this binary as the namespace init; that path must run before anything else.
    if let Some(code) = kiln_executor::run::maybe_run_init() {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    // gitoxide's ssh program for ssh:// contexts (this binary under another name).
    if let Some(code) = kiln_executor::context::git::ssh::maybe_run_helper() {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    // Before any thread and any read of the environment: may re-execute this process once.
    let args = match kiln_executor::credentials::protect_environment() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("kiln-executor: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = match Options::parse_kaniko(args, |name| std::env::var(name).ok()) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("kiln-executor: {e}");
            return ExitCode::from(2);
        }
    };
    // Before the build can start a step: from then on SIGTERM and SIGINT stop it.
    kiln_executor::stop::stop_on_signals();
    opts.logging.init();
    kiln_executor::cli::kaniko::log_notes(&opts);
    match kiln_executor::build::run_build(&opts) {
        Ok(result) => {
            println!("{}", result.digest);
            ExitCode::SUCCESS
        }
        Err(_) if kiln_executor::stop::stopping() => {
            // The stop ended what the build waited for (a step, git, a helper): the signal
            // thread reports the stop and exits with 128 + the signal.
            kiln_executor::stop::wait_for_exit()
        }
        Err(err) => {
            // Printed once, as one bounded line that already holds the causes: the last lines
            // of the log are what Kubernetes reports when the build fails.
            eprintln!("kiln-executor: {}", err.report());
            ExitCode::FAILURE
        }
    }
}
