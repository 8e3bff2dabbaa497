//! Stopping on SIGTERM and SIGINT: the executor ends its RUN steps, removes their cgroups and
//! exits as a process killed by the signal reports it (128 + the signal's number). It must not
//! signal a process that is not its own: as PID 1, every other process of its PID namespace is;
//! elsewhere only the processes in its step cgroups are.
//!
//! A thread of its own waits for the signal (caught by a handler). As PID 1, as in its
//! container in a Pod, the kernel delivers only the signals it has a handler for, so without one
//! the kubelet's SIGTERM (an ImageBuild deleted, a Pod evicted or past its deadline) was ignored
//! until the SIGKILL at the end of the grace period; there it passes the signal on to every other
//! process of the container (the steps' inits pass it to their commands) and reaps them as they
//! end. Elsewhere the default action ended the executor alone: a step's command ran on and the
//! step cgroups stayed on the host; there it signals the processes in the step cgroups (a step
//! without one, in place or where the machine gives none, is not reached and runs on as before).
//! What has not ended after a grace period is killed. A RUN step ended by the stop does not end
//! the build (and the process, with another code) with its failure meanwhile: its thread waits
//! for the exit ([`wait_for_exit`]). The signals are caught, not blocked, so every process the
//! executor starts gets them with their default action ([`stop_on_signals`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::run::cgroup;

/// How long the steps get to end after the signal is passed on, before they are killed.
const GRACE: Duration = Duration::from_secs(2);

/// How long killed steps get to go and their cgroups to be released by the kernel.
const CLEANUP: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(10);

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether a signal is stopping the executor: its signal thread will exit the process.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// For a thread whose work the stop ended (a RUN step's processes signalled, its init reaped by
/// the signal thread, or the build that failed because of it): wait for the exit the signal
/// thread makes, instead of reporting a failure that would end the build, and the process, first
/// with another exit code.
pub fn wait_for_exit() -> ! {
    loop {
        std::thread::park();
    }
}

/// Call once, early in `main`: from then on SIGTERM and SIGINT stop the build as the module
/// documentation says. The signals are caught by a handler (tokio's, which only writes to a pipe
/// the thread `kiln-signals` reads), not blocked: a blocked signal would stay blocked in every
/// process the executor starts (the mask is inherited through `fork` and `exec`, and
/// `std::process::Command` keeps it), so a RUN step's command, a credential helper or git could
/// not be stopped by it. A process started after `exec` has the default action again.
pub fn stop_on_signals() {
    let pid1 = std::process::id() == 1;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kiln-executor: cannot start the signal handler: {e}");
            return;
        }
    };
    // Registered here, before any step can start, so that a PID 1 never ignores them.
    let streams = {
        let _entered = runtime.enter();
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    let (mut term, mut int) = match streams {
        Ok(streams) => streams,
        Err(e) => {
            eprintln!("kiln-executor: cannot handle SIGTERM and SIGINT: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || {
            let signal = runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => Signal::SIGTERM,
                    _ = int.recv() => Signal::SIGINT,
                }
            });
            eprintln!("kiln-executor: {signal} received: stopping the build");
            // Before the cgroups are listed: a step whose init starts after this sees it and
            // ends that init itself (see `run::pending`).
            STOPPING.store(true, Ordering::SeqCst);
            let cgroups = cgroup::close();
            if pid1 {
                end_namespace(signal);
            } else {
                end_steps(&cgroups, signal);
            }
            cgroup::remove_all(&cgroups, Instant::now() + CLEANUP, |dir| {
                signal_cgroup(dir, Signal::SIGKILL, &mut HashSet::new());
            });
            std::process::exit(128 + signal as i32);
        });
    if let Err(e) = spawned {
        eprintln!("kiln-executor: cannot start the signal handler: {e}");
    }
}

/// As PID 1: pass `signal` on to every other process of the namespace, and kill them at the end
/// of the grace period; returns when none is left or the time is up.
fn end_namespace(signal: Signal) {
    // -1: every process this one may signal but itself, in its PID namespace.
    let _ = kill(Pid::from_raw(-1), signal);
    if poll_until(Instant::now() + GRACE, reap_all) {
        return;
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    poll_until(Instant::now() + CLEANUP, reap_all);
}

/// Reap the children that have ended; whether none is left. As PID 1 this process is also the
/// parent of every orphan of its namespace, so none left means the namespace holds no other
/// process, and the step cgroups are empty.
///
/// This takes the exit statuses that the threads running RUN steps wait for too (theirs see
/// ECHILD). Those steps are abandoned by the stop: their threads wait for the exit instead of
/// reporting anything ([`wait_for_exit`]). Without reaping here, the orphaned processes of the
/// steps would stay zombies until the exit.
fn reap_all() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return true,
            Err(_) => return false,
        }
    }
}

/// Outside PID 1: pass `signal` on to the processes in the step cgroups (a step's init passes it
/// to its command; a spare init ends), until they are empty or the grace period is over.
/// The removal of the cgroups kills what is left.
fn end_steps(cgroups: &[PathBuf], signal: Signal) {
    let mut signalled = HashSet::new();
    // Read again while waiting: an init started just before the stop may join its cgroup later.
    poll_until(Instant::now() + GRACE, || {
        let mut empty = true;
        for dir in cgroups {
            empty &= signal_cgroup(dir, signal, &mut signalled);
        }
        empty
    });
}

/// Send `signal` to each process in the step cgroup `dir` that `signalled` does not hold yet;
/// whether the cgroup was empty.
///
/// By pid: a process read from `cgroup.procs` could, in theory, end, be reaped and have its
/// number given to an unrelated process before the signal; the kernel reuses a pid only after
/// going through the others up to `pid_max`, which does not happen in that instant.
fn signal_cgroup(dir: &Path, signal: Signal, signalled: &mut HashSet<i32>) -> bool {
    let pids = cgroup::processes(dir);
    for &pid in &pids {
        if signalled.insert(pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
    pids.is_empty()
}

/// Call `done` every few milliseconds until it holds or `deadline` passes; whether it held.
fn poll_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_ends_when_done_or_at_the_deadline() {
        let mut calls = 0;
        assert!(poll_until(Instant::now() + CLEANUP, || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let start = Instant::now();
        assert!(!poll_until(start + Duration::from_millis(30), || false));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_cgroup_that_is_gone_holds_nothing_to_signal() {
        let gone = Path::new("/nonexistent/kiln-run-0-0");
        assert!(signal_cgroup(gone, Signal::SIGKILL, &mut HashSet::new()));
    }
}
