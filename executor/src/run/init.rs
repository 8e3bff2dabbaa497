//! The run init: the single-threaded re-executed helper that reads the plan, has the sandbox
//! built (see `sandbox`; in place, `inpod`), forks the command into its PID namespace, switches
//! user, execs, and
//! waits passing signals on. It runs only in its own process (see the parent module), never in
//! the multi-threaded executor, and never returns to normal executor code.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, execve, fork, setgid, setgroups, setuid, ForkResult, Gid, Uid};

use super::{
    inpod, sandbox, ChrootPlan, FailureKind, InitFailure, InitPlan, CGROUP_PROCS_ENV, HELLO,
    STATUS_FD_ENV,
};

/// Exit code when the init fails before `exec`; the real reason travels on the status pipe.
const SETUP_FAILED: i32 = 125;

/// Signals the init parent passes on to the command instead of dying from them.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// A failure before `exec`, reported to the executor on the status pipe.
pub(super) struct Failure(InitFailure);

pub(super) fn fail(kind: FailureKind, what: impl Into<String>, errno: Errno) -> Failure {
    Failure(InitFailure {
        kind,
        what: what.into(),
        errno: errno as i32,
    })
}

pub(super) fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Entry point of the init process; returns its exit code unless it execs.
pub(super) fn main() -> i32 {
    let Some(mut status) = status_pipe() else {
        eprintln!(
            "kiln-executor: {} started without {STATUS_FD_ENV}; it is internal to `RUN`",
            super::INIT_ARG
        );
        return SETUP_FAILED;
    };
    if writeln!(status, "{HELLO}").is_err() {
        return SETUP_FAILED;
    }
    // A sandboxed step's init joins the step's cgroup first, before its plan may even exist
    // (see `pending`), and before any fork, so every process of the step is counted.
    if let Some(procs) = std::env::var_os(CGROUP_PROCS_ENV) {
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            let what = format!(
                "joining the step cgroup ({})",
                std::path::Path::new(&procs).display()
            );
            report(&mut status, fail(FailureKind::Setup, what, io_errno(&e)));
            return SETUP_FAILED;
        }
    }
    let plan = match read_plan() {
        // A spare init no step took: end-of-file before any plan.
        Ok(None) => return 0,
        Ok(Some(plan)) => plan,
        Err(e) => {
            report(
                &mut status,
                fail(
                    FailureKind::Setup,
                    format!("reading the run plan: {e}"),
                    Errno::EINVAL,
                ),
            );
            return SETUP_FAILED;
        }
    };
    if let Some(entry) = &plan.binfmt_probe {
        return match sandbox::probe_binfmt(entry) {
            Ok(()) => 0,
            Err(failure) => {
                report(&mut status, failure);
                SETUP_FAILED
            }
        };
    }
    let result = match (&plan.chroot, &plan.private) {
        (Some(chroot), _) => run_isolated(&plan, chroot, &mut status),
        (None, Some(private)) => run_private(&plan, private, &mut status),
        (None, None) => exec_command(&plan, None),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            report(&mut status, failure);
            SETUP_FAILED
        }
    }
}

/// The pipe to the executor, close-on-exec so that a successful `exec` is its end-of-file.
fn status_pipe() -> Option<File> {
    let fd: i32 = std::env::var(STATUS_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: F_GETFD only inspects the descriptor number named by our parent.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the parent passed this descriptor for our exclusive use and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(File::from(owned))
}

/// Read the JSON plan from stdin, then give the command an empty stdin as `RUN` has in Docker.
fn read_plan() -> std::io::Result<Option<InitPlan>> {
    let mut buf = Vec::new();
    std::io::stdin().lock().read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Ok(None);
    }
    let plan = serde_json::from_slice(&buf).map_err(std::io::Error::other)?;
    let null = File::open("/dev/null")?;
    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0).map_err(std::io::Error::from)?;
    Ok(Some(plan))
}

fn report(status: &mut File, failure: Failure) {
    if let Ok(line) = serde_json::to_string(&failure.0) {
        // Nothing more can be done if the executor is gone.
        let _ = writeln!(status, "{line}");
    }
}

/// Chroot mode: the step's cgroup and namespaces, then the child builds its root and execs.
fn run_isolated(plan: &InitPlan, chroot: &ChrootPlan, status: &mut File) -> Result<i32, Failure> {
    sandbox::enter_namespaces(chroot)?;
    fork_command(
        plan,
        status,
        || sandbox::enter_root(chroot),
        sandbox::confine,
    )
}

/// In place with private namespaces: the child covers the hidden paths and mounts its `/proc`.
fn run_private(
    plan: &InitPlan,
    private: &inpod::PrivatePlan,
    status: &mut File,
) -> Result<i32, Failure> {
    inpod::enter_namespaces(private)?;
    fork_command(plan, status, || inpod::hide(private), inpod::confine)
}

/// After `unshare` of a new PID namespace: fork so the child is PID 1 there (procfs must be
/// mounted from inside it); the child runs `setup`, is confined by `confine` and execs (or, for a
/// probe, ends there with 0), while this process waits and forwards signals.
fn fork_command(
    plan: &InitPlan,
    status: &mut File,
    setup: impl FnOnce() -> Result<(), Failure>,
    confine: fn() -> Result<(), Failure>,
) -> Result<i32, Failure> {
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(s);
    }
    forwarded.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut old_mask))
        .map_err(|e| fail(FailureKind::Setup, "blocking signals", e))?;

    // SAFETY: this process was started fresh by exec and never spawned a thread, so the child
    // may keep running ordinary Rust code.
    match unsafe { fork() }
        .map_err(|e| fail(FailureKind::Namespace, "fork into the new PID namespace", e))?
    {
        ForkResult::Child => {
            let result = (|| {
                sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None)
                    .map_err(|e| fail(FailureKind::Setup, "restoring the signal mask", e))?;
                // If the waiting parent is killed, the command and its namespace go with it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                    .map_err(|e| fail(FailureKind::Setup, "setting the parent-death signal", e))?;
                setup()?;
                // An insecure step keeps what the init holds: no bounding-set drop, no seccomp.
                exec_command(plan, (!plan.insecure).then_some(confine))
            })();
            let code = match result {
                Ok(code) => code,
                Err(failure) => {
                    report(status, failure);
                    SETUP_FAILED
                }
            };
            // SAFETY: _exit skips atexit handlers and buffered-stdio flushing that belong to the
            // parent's copy of the process.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            // Close our copy of the status pipe now, so the executor sees end-of-file as soon
            // as the child execs.
            if let Ok(null) = File::open("/dev/null") {
                let _ = nix::unistd::dup2(
                    std::os::fd::AsRawFd::as_raw_fd(&null),
                    std::os::fd::AsRawFd::as_raw_fd(status),
                );
            }
            Ok(wait_forwarding(child, &forwarded))
        }
    }
}

/// Wait for the command, passing on forwarded signals; exit as it did (same code or signal).
fn wait_forwarding(child: nix::unistd::Pid, set: &SigSet) -> i32 {
    loop {
        let sig = match set.wait() {
            Ok(sig) => sig,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            // PID 1 of a namespace ignores signals it has no handler for; that is the command's
            // own choice, as with `docker run` without `--init`.
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, signal, _)) => die_by(signal),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return SETUP_FAILED,
            }
        }
    }
}

/// Terminate with `signal` so the executor sees the command's own fate, without a core dump.
fn die_by(signal: Signal) -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on this process's own limits and signal disposition.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal as i32, libc::SIG_DFL);
    }
    let mut set = SigSet::empty();
    set.add(signal);
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    let _ = nix::sys::signal::raise(signal);
    std::process::exit(128 + signal as i32)
}

/// Working directory, `confine` (capabilities and seccomp, when isolated), user, then exec.
/// Returns only on failure, or with 0 right before `exec` for a probe.
fn exec_command(
    plan: &InitPlan,
    confine: Option<fn() -> Result<(), Failure>>,
) -> Result<i32, Failure> {
    chdir(Path::new(&plan.workdir))
        .map_err(|e| fail(FailureKind::Workdir, plan.workdir.clone(), e))?;
    if let Some(confine) = confine {
        confine()?;
    }
    let groups: Vec<Gid> = plan.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(|e| fail(FailureKind::Setup, "setgroups", e))?;
    setgid(Gid::from_raw(plan.gid))
        .map_err(|e| fail(FailureKind::Setup, format!("setgid {}", plan.gid), e))?;
    setuid(Uid::from_raw(plan.uid))
        .map_err(|e| fail(FailureKind::Setup, format!("setuid {}", plan.uid), e))?;
    if plan.probe {
        return Ok(0);
    }

    let program = &plan.argv[0];
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| fail(FailureKind::Spawn, program.clone(), Errno::EINVAL))
    };
    let argv = plan
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = plan
        .env
        .iter()
        .map(|e| cstr(e))
        .collect::<Result<Vec<_>, _>>()?;
    let path_var = plan
        .env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::DEFAULT_PATH);
    // Searched here rather than with execvpe, which would use this helper's (empty) PATH
    // instead of the command's.
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        path_var
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
            .collect()
    };
    let mut last = Errno::ENOENT;
    for candidate in candidates {
        let c = CString::new(candidate.as_os_str().as_bytes())
            .map_err(|_| fail(FailureKind::Spawn, program.clone(), Errno::EINVAL))?;
        match execve(&c, &argv, &envp) {
            Err(e @ (Errno::ENOENT | Errno::ENOTDIR)) => {
                // Keep a more telling error (EACCES) from an earlier candidate.
                if last == Errno::ENOENT {
                    last = e;
                }
            }
            Err(e) => last = e,
            Ok(never) => match never {},
        }
    }
    Err(fail(FailureKind::Spawn, program.clone(), last))
}
