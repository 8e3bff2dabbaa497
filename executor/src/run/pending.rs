//! An init started before its plan is known, and the spare inits kept for the next sandboxed
//! step.
//!
//! Starting an init costs an `exec` of the executor binary and, for a sandboxed step, joining the
//! step's new cgroup. Moving a process into a cgroup waits for an RCU grace period in the kernel
//! (the cgroup core's thread-group lock): 7–20 ms measured on a two-core machine, more than the
//! rest of the sandbox's set-up. A stage whose next step is also a `RUN` therefore starts that
//! step's init during this one ([`RunOptions::prepare_next`](super::RunOptions)): it joins its own
//! fresh cgroup and then waits for a plan, so the next step only sends it. Each step still has a
//! cgroup, a `pids.max` and an init of its own; a spare that is never used reads end-of-file as
//! its plan, ends without doing anything, and its cgroup is removed ([`release_spares`], called
//! when a build ends).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use super::cgroup::StepCgroup;
use super::{InitFailure, InitPlan, RunError, CGROUP_PROCS_ENV, HELLO, INIT_ARG, STATUS_FD_ENV};

/// Spares kept at most: one per stage building at the same time is the use; more would only
/// hold cgroups.
const MAX_SPARES: usize = 2;

static SPARES: Mutex<Vec<Pending>> = Mutex::new(Vec::new());

/// A started init waiting for its plan on stdin (see the module documentation).
pub(super) struct Pending {
    program: PathBuf,
    child: Child,
    /// `None` once the plan is sent (the init reads to end-of-file).
    stdin: Option<ChildStdin>,
    status: File,
    /// Removed after the init has ended (it is dropped after [`Drop::drop`] waited).
    _cgroup: Option<StepCgroup>,
}

impl Pending {
    /// Start `program` as an init that joins `cgroup` (when given) at once, then waits for its
    /// plan.
    pub(super) fn start(program: &Path, cgroup: Option<StepCgroup>) -> Result<Pending, RunError> {
        let helper_err = |source| RunError::Helper {
            program: program.to_path_buf(),
            source,
        };
        let (status_read, status_write): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| helper_err(e.into()))?;
        let write_fd = status_write.as_raw_fd();

        let mut cmd = Command::new(program);
        cmd.arg(INIT_ARG)
            .env_clear()
            .env(STATUS_FD_ENV, write_fd.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if let Some(cgroup) = &cgroup {
            cmd.env(CGROUP_PROCS_ENV, cgroup.procs_file());
        }
        // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and touches
        // only the child's copy of the descriptor, so the pipe is inherited by this one child and
        // no other process the executor spawns concurrently.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(write_fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(helper_err)?;
        if crate::stop::stopping() {
            // Started after the signal thread began the stop (see `crate::stop`), which may
            // have signalled the processes before this one existed, or not know it at all
            // (no cgroup is made any more): it ends here.
            let _ = child.kill();
            let _ = child.wait();
            crate::stop::wait_for_exit();
        }
        drop(status_write);
        let stdin = child.stdin.take();
        Ok(Pending {
            program: program.to_path_buf(),
            child,
            stdin,
            status: File::from(status_read),
            _cgroup: cgroup,
        })
    }

    /// Send the plan, wait for the init to end, and turn its report and exit into the step's
    /// result.
    pub(super) fn finish(mut self, plan: &InitPlan) -> Result<(), RunError> {
        let program = self.program.clone();
        let helper_err = |source| RunError::Helper {
            program: program.clone(),
            source,
        };
        let payload = serde_json::to_vec(plan).map_err(|e| helper_err(std::io::Error::other(e)))?;
        // The init reads its whole plan before doing anything, so this cannot deadlock on a full
        // pipe.
        if let Some(mut stdin) = self.stdin.take() {
            // A failed write means the init died early; its status below tells why.
            let _ = stdin.write_all(&payload);
        }
        let mut report = String::new();
        let read_result = self.status.read_to_string(&mut report);
        let waited = self.child.wait();
        if crate::stop::stopping() {
            // The stop ended this step (as PID 1 the signal thread may even have reaped the
            // init, so `waited` fails): it removes the step's cgroup and exits with the signal's
            // code; reporting the step's failure would end the build first with another.
            crate::stop::wait_for_exit();
        }
        let status = waited.map_err(helper_err)?;
        read_result.map_err(helper_err)?;

        let mut lines = report.lines();
        if lines.next() != Some(HELLO) {
            return Err(RunError::InitMissing { program });
        }
        if let Some(line) = lines.next() {
            let failure: InitFailure = serde_json::from_str(line).map_err(|e| {
                helper_err(std::io::Error::other(format!(
                    "unreadable report {line:?}: {e}"
                )))
            })?;
            return Err(failure.into_error());
        }
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(code), _) => Err(RunError::Exit { code }),
            (None, Some(signal)) => Err(RunError::Signal { signal }),
            (None, None) => Err(RunError::Exit { code: -1 }),
        }
    }
}

impl Drop for Pending {
    /// An init never given a plan reads end-of-file and ends; one that ran is reaped already
    /// (`wait` returns its status again). Its cgroup goes after it.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A spare init for a sandboxed step, started earlier by [`prepare_spare`] with `program`.
pub(super) fn take_spare(program: &Path) -> Option<Pending> {
    let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
    let at = spares.iter().position(|s| s.program == program)?;
    Some(spares.swap_remove(at))
}

/// Start a spare init for the next sandboxed step, in a cgroup of its own where the machine
/// allows one. A failure here is not the step's: the step that would have used the spare starts
/// its own init and reports what goes wrong then.
pub(super) fn prepare_spare(program: &Path) {
    if SPARES.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_SPARES {
        return;
    }
    match Pending::start(program, StepCgroup::create()) {
        Ok(spare) => SPARES.lock().unwrap_or_else(|e| e.into_inner()).push(spare),
        Err(e) => tracing::debug!("no spare init for the next RUN step: {e}"),
    }
}

/// End the spare inits no step took and remove their cgroups. [`SparesReleased`] does it when
/// a build ends.
pub fn release_spares() {
    let spares = std::mem::take(&mut *SPARES.lock().unwrap_or_else(|e| e.into_inner()));
    drop(spares);
}

/// How many spare inits are waiting (for tests).
#[doc(hidden)]
pub fn spare_count() -> usize {
    SPARES.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Releases the spare inits when dropped: held by a build for its whole length, so that an
/// early return or a panic leaves no init or cgroup behind either.
pub struct SparesReleased;

impl Drop for SparesReleased {
    fn drop(&mut self) {
        release_spares();
    }
}
