//! Builds a sandboxed `RUN` step's isolation inside the init, the way runc builds a container:
//! its cgroup and namespaces (before the fork into the new PID namespace), its root (mounts and
//! `pivot_root`, in the forked child), and the last confinement before the user switch and `exec`
//! (bounding set, seccomp, capabilities). It runs only in the single-threaded init, never in the
//! executor, and must leave the process no path back to the host's root.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, fchdir, pivot_root, ForkResult};

use super::init::{fail, io_errno, Failure};
use super::{caps, mounts, seccomp, ChrootPlan, FailureKind, Network};

/// The step's hostname: resolvable through any `/etc/hosts` (the host's is bound into the step,
/// unchanged), and it tells nothing about the machine.
pub(super) const HOSTNAME: &str = "localhost";

/// In the init, before it forks (it joined the step's cgroup already): for `--network=none` a network
/// namespace with only loopback, then new mount, PID, IPC, UTS and cgroup namespaces. The mount
/// namespace is made private first, so no mount of the step ever propagates to the host.
pub(super) fn enter_namespaces(plan: &ChrootPlan) -> Result<(), Failure> {
    if plan.network == Network::None {
        enter_loopback_network()?;
    }
    if plan.emulator.is_some() {
        // First, so that the namespaces below are the user namespace's own.
        enter_user_namespace()?;
    }
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(flags).map_err(|e| fail(FailureKind::Namespace, "unshare", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail(FailureKind::Namespace, "making / private", e))?;
    nix::unistd::sethostname(HOSTNAME)
        .map_err(|e| fail(FailureKind::Setup, "setting the hostname", e))?;
    if let Some(entry) = &plan.emulator {
        register_binfmt(entry)?;
    }
    Ok(())
}

/// The binfmt probe (see `probe_private_binfmt`): what a foreign step's init does up to the
/// registration, in namespaces that end with this process.
pub(super) fn probe_binfmt(entry: &super::emulation::BinfmtEntry) -> Result<(), Failure> {
    enter_user_namespace()?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail(FailureKind::Namespace, "unshare", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail(FailureKind::Namespace, "making / private", e))?;
    register_binfmt(entry)
}

/// A new user namespace for this process with every uid and gid mapped to itself, so files,
/// owners and the build user mean what they mean outside. The maps must be written by a process
/// holding `CAP_SETUID`/`CAP_SETGID` in the parent namespace: a child forked before the
/// `unshare` writes them, then ends.
fn enter_user_namespace() -> Result<(), Failure> {
    let what = "creating the step's user namespace (for a binfmt_misc of its own)";
    let setup = |e| fail(FailureKind::Setup, what, e);
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup)?;
    let (done_r, done_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup)?;
    let me = nix::unistd::getpid();
    // SAFETY: the init is single-threaded (see the module documentation of `run`); the child
    // only reads, writes two files and exits.
    match unsafe { nix::unistd::fork() }.map_err(setup)? {
        ForkResult::Child => {
            drop((go_w, done_r));
            let mut byte = [0u8; 1];
            let errno = match nix::unistd::read(go_r.as_raw_fd(), &mut byte) {
                Ok(1) if byte[0] == 0 => {
                    let map = "0 0 4294967295\n";
                    match std::fs::write(format!("/proc/{me}/uid_map"), map)
                        .and_then(|()| std::fs::write(format!("/proc/{me}/gid_map"), map))
                    {
                        Ok(()) => 0,
                        Err(e) => e.raw_os_error().unwrap_or(libc::EIO) as u8,
                    }
                }
                _ => libc::EIO as u8,
            };
            let _ = nix::unistd::write(&done_w, &[errno]);
            // SAFETY: _exit skips the parent's atexit handlers and stdio buffers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop((go_r, done_w));
            let unshared = unshare(CloneFlags::CLONE_NEWUSER);
            let _ = nix::unistd::write(&go_w, &[u8::from(unshared.is_err())]);
            let mut byte = [0u8; 1];
            let written = nix::unistd::read(done_r.as_raw_fd(), &mut byte);
            let _ = nix::sys::wait::waitpid(child, None);
            unshared.map_err(setup)?;
            match written {
                Ok(1) if byte[0] == 0 => Ok(()),
                Ok(1) => Err(setup(Errno::from_raw(i32::from(byte[0])))),
                Ok(_) => Err(setup(Errno::EIO)),
                Err(e) => Err(setup(e)),
            }
        }
    }
}

/// Mounts this user namespace's own `binfmt_misc` (over the host's directory, in this mount
/// namespace only) and registers `entry` there. The instance lives as long as the mount: an open
/// file of it is kept (close-on-exec) until this process ends, also after the step's root
/// replaced `/`.
fn register_binfmt(entry: &super::emulation::BinfmtEntry) -> Result<(), Failure> {
    const DIR: &str = "/proc/sys/fs/binfmt_misc";
    let setup = |what: String, e| fail(FailureKind::Setup, what, e);
    mount(
        Some("binfmt_misc"),
        DIR,
        Some("binfmt_misc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        setup(
            "mounting a binfmt_misc of the step's own (Linux 6.7 or later)".into(),
            e,
        )
    })?;
    std::fs::write(format!("{DIR}/register"), &entry.line).map_err(|e| {
        setup(
            format!("registering the emulator {} in it", entry.name),
            io_errno(&e),
        )
    })?;
    let keep = std::fs::File::open(format!("{DIR}/status"))
        .map_err(|e| setup("holding the binfmt_misc instance".into(), io_errno(&e)))?;
    std::mem::forget(keep);
    Ok(())
}

/// `RUN --network=none` (in the sandbox, and in place with private namespaces): a new network
/// namespace with only `lo`, up. Called before the PID namespace is unshared, because the helper
/// it may fork would otherwise become PID 1 of that namespace and take it down when it ends.
///
/// Bringing `lo` up needs `CAP_NET_ADMIN` over the namespace's owning user namespace, which a
/// Pod's default and hardened capability sets lack. Then the namespace is made by a short-lived
/// child in a user namespace of its own, which this process created and so has every capability
/// in (the kernel grants them to the creator's euid in the parent namespace): this process joins
/// that network namespace (`CAP_SYS_ADMIN`, which the private branch has) and brings `lo` up.
pub(super) fn enter_loopback_network() -> Result<(), Failure> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
        fail(
            FailureKind::Setup,
            "creating a network namespace for --network=none",
            e,
        )
    })?;
    let what = "bringing up the loopback interface";
    match loopback_up() {
        Ok(()) => return Ok(()),
        Err(Errno::EPERM) => {}
        Err(e) => return Err(fail(FailureKind::Setup, what, e)),
    }
    join_network_of_own_user_namespace()?;
    loopback_up().map_err(|e| fail(FailureKind::Setup, what, e))
}

/// Join a new network namespace owned by a new user namespace, both made by a child that waits
/// until this process has joined and then ends. Nothing ever runs in that user namespace.
fn join_network_of_own_user_namespace() -> Result<(), Failure> {
    let what = "creating a network namespace owned by a user namespace of its own";
    let setup = |e| fail(FailureKind::Setup, what, e);
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup)?;
    let (hold_r, hold_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup)?;
    // SAFETY: the init is single-threaded (see the module documentation of `run`), so the child
    // may run ordinary code; it only unshares, writes, reads and exits.
    match unsafe { nix::unistd::fork() }.map_err(setup)? {
        ForkResult::Child => {
            drop((ready_r, hold_w));
            let errno = match unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET) {
                Ok(()) => 0,
                // Every errno fits in a byte.
                Err(e) => e as i32 as u8,
            };
            let _ = nix::unistd::write(&ready_w, &[errno]);
            // Until the parent has joined (or died): then its end of the pipe closes.
            let mut byte = [0u8; 1];
            let _ = nix::unistd::read(hold_r.as_raw_fd(), &mut byte);
            // SAFETY: _exit skips the parent's atexit handlers and stdio buffers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop((ready_w, hold_r));
            let mut byte = [0u8; 1];
            let joined = match nix::unistd::read(ready_r.as_raw_fd(), &mut byte) {
                Ok(1) if byte[0] == 0 => join_network_of(child),
                Ok(1) => Err(Errno::from_raw(i32::from(byte[0]))),
                Ok(_) => Err(Errno::EIO),
                Err(e) => Err(e),
            };
            drop(hold_w);
            let _ = nix::sys::wait::waitpid(child, None);
            joined.map_err(setup)
        }
    }
}

fn join_network_of(pid: nix::unistd::Pid) -> Result<(), Errno> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| io_errno(&e))?;
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
}

/// A new network namespace starts with `lo` down; programs expect 127.0.0.1 to work.
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which outlives both calls; the
    // flags member of the union is the one these requests use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(Errno::last());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// In the forked child (PID 1 of the new namespace, so that `/proc` shows it): mount the root
/// and everything in it, then make it `/` with the old root detached.
pub(super) fn enter_root(plan: &ChrootPlan) -> Result<(), Failure> {
    mounts::bind_root_nodev(&plan.root)?;
    for op in &plan.mounts {
        mounts::do_mount(op)?;
    }
    pivot_into(&plan.root)
}

/// `pivot_root(".", ".")` stacks the old root on top of the new one at `/`; detaching it leaves
/// the new root alone, with no directory to put the old root in (runc's way), so nothing is
/// created in the build root and nothing can be left behind there. Unlike `chroot`, no
/// reference to the host's tree remains, so a second `chroot` cannot climb out.
fn pivot_into(root: &Path) -> Result<(), Failure> {
    let setup = |what: &str, e| {
        fail(
            FailureKind::Setup,
            format!("{what} ({})", root.display()),
            e,
        )
    };
    let new_root =
        std::fs::File::open(root).map_err(|e| setup("opening the root", io_errno(&e)))?;
    fchdir(new_root.as_raw_fd()).map_err(|e| setup("entering the root", e))?;
    pivot_root(".", ".").map_err(|e| setup("pivot_root into the root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| setup("detaching the old root", e))?;
    chdir("/").map_err(|e| setup("chdir / in the root", e))?;
    Ok(())
}

/// The last steps before the user switch, in this order because each needs what the next takes
/// away: dropping the bounding set needs `CAP_SETPCAP`; installing the seccomp filter needs
/// `CAP_SYS_ADMIN`, since `no_new_privs` is deliberately not set (setuid programs must keep
/// working, as in Docker); then effective and permitted shrink to Docker's set, which still
/// holds `CAP_SETUID`/`CAP_SETGID` for the switch to the build user that follows.
pub(super) fn confine() -> Result<(), Failure> {
    caps::drop_bounding().map_err(|e| {
        fail(
            FailureKind::Setup,
            "dropping the capability bounding set",
            io_errno(&e),
        )
    })?;
    seccomp::install().map_err(|e| {
        fail(
            FailureKind::Setup,
            "installing the seccomp filter",
            io_errno(&e),
        )
    })?;
    caps::restrict().map_err(|e| {
        fail(
            FailureKind::Setup,
            "reducing the capabilities",
            io_errno(&e),
        )
    })
}
