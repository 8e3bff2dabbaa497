//! The mounts of a sandboxed `RUN` step, made by the init in the step's private mount namespace
//! before `pivot_root`: the root bound onto itself `nodev`, a fresh `/proc` with Docker's masked
//! and read-only paths, a read-only `/sys` with its masked paths, a minimal `/dev`, and read-only
//! binds of the host's resolver files. Everything here dies with the namespace; nothing may be
//! mounted outside it, and nothing is created in the root except inside these fresh mounts.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use super::init::{fail, io_errno, Failure};
use super::{FailureKind, MountOp, StepMountKind};

/// Docker's masked paths (moby `oci/defaults.go`), relative to `/proc` and `/sys`: a file is
/// covered with `/dev/null`, a directory with an empty read-only tmpfs. Host details (keys,
/// kernel memory, timers, hardware) that a build has no use for and an attacker does.
const PROC_MASKED: [&str; 10] = [
    "acpi",
    "asound",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];
const SYS_MASKED: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// Docker's read-only paths under `/proc`: kernel tunables and triggers (core_pattern, sysrq)
/// that act on the whole machine.
const PROC_READ_ONLY: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// Harmless character devices bound from the host into the private `/dev` (runc's list).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Bind the root onto itself, which `pivot_root` needs (its new root must be a mount), and make
/// that mount `nodev` so a device node created in the image (`mknod` stays allowed, as in Docker)
/// cannot be opened. Not `nosuid`: builds run setuid programs (`su`, `sudo`) legitimately. The
/// flags the underlying mount already has are kept: a bind remount replaces them all.
pub(super) fn bind_root_nodev(root: &Path) -> Result<(), Failure> {
    mnt(
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let current = statvfs(root).map_err(|e| {
        fail(
            FailureKind::Setup,
            format!("reading the mount flags of {}", root.display()),
            e,
        )
    })?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV;
    let f = current.flags();
    for (have, keep) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            flags |= keep;
        }
    }
    // Without an atime flag the kernel would switch the mount to relatime.
    if !f.intersects(FsFlags::ST_NOATIME | FsFlags::ST_RELATIME) {
        flags |= MsFlags::MS_STRICTATIME;
    }
    mnt(None::<&str>, root, None, flags, None)
}

pub(super) fn do_mount(op: &MountOp) -> Result<(), Failure> {
    match op {
        MountOp::Proc { target } => {
            mnt(
                Some("proc"),
                target,
                Some("proc"),
                NOSUID_NODEV_NOEXEC,
                None,
            )?;
            mask(target, &PROC_MASKED)?;
            for name in PROC_READ_ONLY {
                let path = target.join(name);
                if path.symlink_metadata().is_ok() {
                    bind_read_only(&path, &path, MsFlags::MS_REC)?;
                }
            }
            Ok(())
        }
        MountOp::Sys { target } => {
            let ro = NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY;
            // A fresh sysfs is refused where we do not own the network namespace (a nested
            // container); a read-only bind of the host's /sys is the fallback. Not recursive:
            // the host's writable submounts (cgroup hierarchies) stay out of the step.
            if mount(Some("sysfs"), target, Some("sysfs"), ro, None::<&str>).is_err() {
                // In a user namespace of the step's own (an emulated step) the host's /sys
                // cannot be bound without its submounts (the kernel locks them together), and
                // with them the cgroup hierarchies would be writable: an empty read-only /sys.
                if bind_read_only(Path::new("/sys"), target, MsFlags::empty()).is_err() {
                    return mnt(
                        Some("tmpfs"),
                        target,
                        Some("tmpfs"),
                        ro,
                        Some("mode=755,size=0"),
                    );
                }
            }
            mask(target, &SYS_MASKED)
        }
        MountOp::Dev { target } => mount_dev(target),
        MountOp::BindFileReadOnly { source, target } => {
            bind_read_only(source, target, MsFlags::empty())
        }
        MountOp::Step { kind, target } => step_mount(kind, target),
    }
}

/// A `RUN --mount`: `nosuid,nodev` like the root, so that a device node or setuid file a step
/// leaves in a cache cannot be used by a later one.
fn step_mount(kind: &StepMountKind, target: &Path) -> Result<(), Failure> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match kind {
        StepMountKind::Tmpfs { size } => {
            let data = match size {
                Some(size) => format!("mode=1777,size={size}"),
                None => "mode=1777".to_string(),
            };
            mnt(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                nosuid_nodev,
                Some(&data),
            )
        }
        StepMountKind::Bind {
            source, readonly, ..
        } => {
            mnt(Some(source.as_path()), target, None, MsFlags::MS_BIND, None)?;
            let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | nosuid_nodev;
            if *readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            mnt(None::<&str>, target, None, flags, None)
        }
    }
}

/// Bind `source` on `target`, then make the bind read-only: a bind mount ignores `MS_RDONLY`
/// when it is created, so that needs a remount.
fn bind_read_only(source: &Path, target: &Path, extra: MsFlags) -> Result<(), Failure> {
    mnt(Some(source), target, None, MsFlags::MS_BIND | extra, None)?;
    mnt(
        None::<&str>,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
        None,
    )
}

/// Cover the `names` under `dir` that exist on this kernel, as runc does.
fn mask(dir: &Path, names: &[&str]) -> Result<(), Failure> {
    for name in names {
        let path = dir.join(name);
        match path.symlink_metadata() {
            Ok(meta) if meta.is_dir() => mnt(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
                Some("mode=755,size=0"),
            )?,
            Ok(_) => mnt(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None)?,
            Err(_) => continue,
        }
    }
    Ok(())
}

fn mnt<S: nix::NixPath + ?Sized>(
    source: Option<&S>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Failure> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        fail(
            FailureKind::Setup,
            format!(
                "mounting {} on {}",
                fstype.unwrap_or("a bind mount"),
                target.display()
            ),
            e,
        )
    })
}

/// A private `/dev`: a small `nodev` tmpfs with the host's harmless character devices bound in
/// (each bind keeps the host mount's permission to open devices), a fresh devpts instance and a
/// `/dev/shm`. Binding the whole host `/dev` would expose its disks; `nodev` makes a node that
/// the command creates here as useless as one in the root.
fn mount_dev(target: &Path) -> Result<(), Failure> {
    mnt(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let host = PathBuf::from("/dev").join(name);
        // A minimal host (itself a container) may lack one, e.g. /dev/tty; the rest still help.
        if !host.exists() {
            continue;
        }
        let node = target.join(name);
        File::create(&node).map_err(|e| {
            fail(
                FailureKind::Setup,
                format!("creating {}", node.display()),
                io_errno(&e),
            )
        })?;
        mnt(Some(host.as_path()), &node, None, MsFlags::MS_BIND, None)?;
    }
    let pts = target.join("pts");
    let shm = target.join("shm");
    for dir in [&pts, &shm] {
        std::fs::create_dir(dir).map_err(|e| {
            fail(
                FailureKind::Setup,
                format!("creating {}", dir.display()),
                io_errno(&e),
            )
        })?;
    }
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mnt(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        NOSUID_NODEV_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = target.join(link);
        std::os::unix::fs::symlink(to, &path).map_err(|e| {
            fail(
                FailureKind::Setup,
                format!("creating {}", path.display()),
                io_errno(&e),
            )
        })?;
    }
    Ok(())
}
