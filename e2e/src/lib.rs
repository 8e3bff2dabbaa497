//! Harness of the end-to-end tests: `kubectl` against the real cluster and the registry checks of
//! the results.
//! It must never touch anything outside the test namespace, the local registry and its own
//! temporary directories.

pub mod examples;
pub mod git;
pub mod kubectl;
pub mod tools;

use std::time::{Duration, Instant};

/// Polls `f` every 500 ms until it returns `Some`, or fails after `timeout` saying what was
/// awaited and the last state seen (so a timeout explains itself).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<(Option<T>, String)>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok((Some(v), _)) => return Ok(v),
            Ok((None, state)) => state,
            Err(e) => format!("error: {e:#}"),
        };
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
