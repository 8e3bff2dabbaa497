//! Stopping on SIGTERM and SIGINT when the executor is PID 1, as it is in its container in a Pod.
//! The kernel delivers to a PID 1 only the signals it has a handler for, so without one the
//! kubelet's SIGTERM (an ImageBuild deleted, a Pod evicted or past its deadline) was ignored and
//! the build went on until the SIGKILL at the end of the grace period. Here a thread of its own
//! waits for the signal (blocked in every other thread), passes it on to every other process of
//! the container (the RUN steps' inits pass it to their commands), gives them a moment to end and
//! exits as a process killed by that signal reports it (128 + the signal's number). Outside PID 1
//! nothing changes: the default action already ends the executor.

use std::time::Duration;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// How long the steps get to end after the signal is passed on.
const GRACE: Duration = Duration::from_secs(2);

/// Call once, before any other thread starts (the signal mask is inherited by threads).
pub fn stop_on_signals_as_pid1() {
    if std::process::id() != 1 {
        return;
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = set.thread_block() {
        eprintln!("kiln-executor: cannot block SIGTERM for its handler: {e}");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || {
            let Ok(signal) = set.wait() else { return };
            eprintln!("kiln-executor: {signal} received: stopping the build");
            // -1: every process this one may signal but itself, in its PID namespace.
            let _ = kill(Pid::from_raw(-1), signal);
            std::thread::sleep(GRACE);
            std::process::exit(128 + signal as i32);
        });
    if let Err(e) = spawned {
        eprintln!("kiln-executor: cannot start the signal handler: {e}");
    }
}
