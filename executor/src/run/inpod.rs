//! In-place `RUN` steps, where the Pod's container is the build root: decides once, by probing,
//! whether each step can have private mount and PID namespaces, and plans what a step hides in
//! them (Kiln's directory, the docker config in use, the context, the Secret and
//! service-account mounts, every other read-only mount), with `/proc` mounted anew so that the
//! executor's processes are out of sight, and for `RUN --network=none` (probed at the first
//! such step) a network namespace with only loopback. Where the Pod does not allow private
//! namespaces, it warns once and changes nothing: the steps then see what kaniko's do (and
//! `--network=none` steps the container's network, with a warning). It never mounts anything in the
//! executor's own namespace; the init makes the mounts, in the step's namespace only.
//!
//! # Why a probe, not a setting
//!
//! Whether `unshare(CLONE_NEWNS | CLONE_NEWPID)` and a fresh procfs are allowed depends on the
//! Pod's user namespace, capabilities, seccomp and LSM profiles, which the executor cannot read
//! reliably. So the init is started once with the real plan and stops just before `exec`: if
//! that works, every step can have it; if not, its error is the reason given in the warning.
//!
//! # Why held descriptors, not paths
//!
//! A step as root may rename a directory above a hidden one (`mv /var /v`): in that step the
//! hidden directory stays covered (a mount follows its dentry), but the next step would cover
//! the old path and leave the new one open. The executor keeps an `O_PATH` descriptor of every
//! fixed hidden path and asks the kernel where it is now before each step. Read-only mounts are
//! read from `/proc/self/mountinfo` before each step for the same reason.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::{Deserialize, Serialize};

use super::init::{fail, io_errno, Failure};
use super::mountpoints::MountPoints;
use super::{
    caps, mounts, sandbox, seccomp, FailureKind, InitPlan, MountOp, Network, RunError, StepMount,
    StepMountKind,
};

/// Hidden whenever they exist: Kiln's and kaniko's directories (binaries, work directory,
/// `/kiln/.docker` where Kiln's Pods mount the push Secret, `/kaniko/.docker` where kaniko-style
/// Pods do), the service-account token's directory and Docker's secrets directory.
const ALWAYS_HIDDEN: [&str; 4] = ["/kiln", "/kaniko", "/var/run/secrets", "/run/secrets"];

/// Read-only mounts that stay visible: kernel filesystems, and the runtime's resolver files,
/// which a step needs and which hold nothing of the Pod's.
const KEPT_UNDER: [&str; 3] = ["/proc", "/sys", "/dev"];
const KEPT_FILES: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

/// One path a step must not see, and how it is covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Hide {
    /// An empty read-only tmpfs over a directory.
    Dir(PathBuf),
    /// A read-only bind of `/dev/null` over a file (runc's way of masking one).
    File(PathBuf),
}

/// What the init of an in-place step does in its private namespaces.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct PrivatePlan {
    pub hide: Vec<Hide>,
    /// [`Network::None`]: a network namespace of the step's own with only `lo`, as in the
    /// sandbox; only planned once [`network_none_works`] found the container allows it.
    #[serde(default)]
    pub network: Network,
    /// `RUN --mount`s ([`MountOp::Step`]), made after the hidden paths are covered.
    #[serde(default)]
    pub mounts: Vec<MountOp>,
}

/// How in-place `RUN` steps are isolated in this container, as [`prepare_in_place`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InPlaceNamespaces {
    /// Each step runs in its own mount and PID namespaces with these paths covered (and any
    /// read-only mount found before the step).
    Private { hidden: Vec<PathBuf> },
    /// Steps share the container's namespaces with the executor; `reason` is why the probe failed.
    Shared { reason: String },
}

/// The decision, made once per process.
struct Decision {
    namespaces: InPlaceNamespaces,
    fixed: Vec<HeldPath>,
    /// Whether a `--network=none` step can have a network namespace of its own: probed at the
    /// first such step (most builds have none), in the private branch only; `Err` is why not.
    network_none: OnceLock<Result<(), String>>,
}

static DECISION: OnceLock<Decision> = OnceLock::new();

/// A hidden path, followed through renames by an `O_PATH` descriptor.
struct HeldPath {
    fd: OwnedFd,
}

impl HeldPath {
    fn open(path: &Path) -> Option<HeldPath> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        Some(HeldPath { fd: file.into() })
    }

    /// Where the path is now; `None` once it has been removed (its content went with it).
    fn current(&self) -> Option<PathBuf> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).ok()?;
        let text = link.to_str()?;
        (!text.ends_with(" (deleted)") && link.is_absolute()).then_some(link)
    }
}

/// Decide, once per process and before the first in-place step, how in-place steps are isolated:
/// probe for private namespaces hiding [`ALWAYS_HIDDEN`], `extra` (Kiln's work directory, the
/// context, the docker config's directory) and the read-only mounts; log the outcome (a warning,
/// once, when the steps will share the container). Also makes the executor non-dumpable, so
/// that a step sharing its PID namespace cannot read its memory or `/proc/<pid>/environ`
/// without `CAP_SYS_PTRACE`, which no default container has.
pub fn prepare_in_place(extra: &[PathBuf]) -> InPlaceNamespaces {
    DECISION.get_or_init(|| decide(extra)).namespaces.clone()
}

fn decide(extra: &[PathBuf]) -> Decision {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot make the executor non-dumpable ({e}); RUN steps that share its PID namespace can read its memory");
    }
    let mut candidates: Vec<PathBuf> = ALWAYS_HIDDEN.iter().map(PathBuf::from).collect();
    candidates.extend(extra.iter().cloned());
    let fixed: Vec<HeldPath> = candidates
        .iter()
        .filter(|p| hideable(p))
        .filter_map(|p| HeldPath::open(p))
        .collect();
    let outcome = plan_for(&fixed).and_then(|plan| probe(&plan).map(|()| plan));
    match outcome {
        Ok(plan) => {
            let hidden: Vec<PathBuf> = plan.hide.iter().map(|h| h.path().to_path_buf()).collect();
            tracing::info!(
                "RUN steps run in place, each in private mount and PID namespaces hiding {}",
                hidden
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Decision {
                namespaces: InPlaceNamespaces::Private { hidden },
                fixed,
                network_none: OnceLock::new(),
            }
        }
        Err(e) => {
            let reason = probe_reason(&e);
            tracing::warn!("{}", shared_warning(&reason));
            Decision {
                namespaces: InPlaceNamespaces::Shared { reason },
                fixed: Vec::new(),
                network_none: OnceLock::new(),
            }
        }
    }
}

/// The one-line warning for steps that share the container with the executor.
fn shared_warning(reason: &str) -> String {
    format!(
        "RUN steps run in place in this container without private namespaces ({reason}): like \
         kaniko's, they can read /kiln with the push credentials (/kiln/.docker/config.json), \
         every mounted Secret and the service-account token, and see the container's other \
         processes; to hide them, run the Pod with hostUsers: false and the SYS_ADMIN \
         capability (see \"What a RUN step can and cannot see\" in the README)"
    )
}

fn probe_reason(e: &RunError) -> String {
    match e {
        RunError::Namespace { source } => {
            format!("unshare of the mount and PID namespaces: {source}")
        }
        RunError::Setup { what, source } => format!("{what}: {source}"),
        other => other.to_string(),
    }
}

/// The plan for the next in-place step: `None` where steps share the container (or no decision
/// was made, as in tests that run a step in place directly). A `--network=none` step gets a
/// network namespace with only `lo` where the private branch allows one; otherwise it shares the
/// container's network, with a warning each time.
pub(super) fn step_plan(network: Network) -> Result<Option<PrivatePlan>, RunError> {
    let Some(decision) = DECISION
        .get()
        .filter(|d| matches!(d.namespaces, InPlaceNamespaces::Private { .. }))
    else {
        if network == Network::None {
            tracing::warn!("{}", shared_network_warning(None));
        }
        return Ok(None);
    };
    let mut plan = plan_for(&decision.fixed)?;
    if network == Network::None {
        match network_none_works(decision, &plan) {
            Ok(()) => plan.network = Network::None,
            Err(reason) => tracing::warn!("{}", shared_network_warning(Some(reason))),
        }
    }
    Ok(Some(plan))
}

/// Probe, once, a step of `plan` with a network namespace of its own (see
/// `sandbox::enter_loopback_network`): it needs `CAP_SYS_ADMIN` and a kernel, seccomp profile
/// and LSM that let the init create a user namespace when the Pod lacks `CAP_NET_ADMIN`.
fn network_none_works<'d>(decision: &'d Decision, plan: &PrivatePlan) -> Result<(), &'d str> {
    decision
        .network_none
        .get_or_init(|| {
            let with_network = PrivatePlan {
                network: Network::None,
                ..plan.clone()
            };
            match probe(&with_network) {
                Ok(()) => {
                    tracing::info!(
                        "RUN --network=none steps run in place in a network namespace of their \
                         own with only lo"
                    );
                    Ok(())
                }
                Err(e) => Err(probe_reason(&e)),
            }
        })
        .as_ref()
        .copied()
        .map_err(String::as_str)
}

/// The warning for a `--network=none` step that shares the container's network; `reason` is why
/// the private branch could not give it a network namespace, `None` in the shared branch.
fn shared_network_warning(reason: Option<&str>) -> String {
    match reason {
        None => "RUN --network=none: this step runs in place in the container and shares its \
                 network, as every in-place step here shares the container's namespaces; run the \
                 executor Pod with hostUsers: false and the SYS_ADMIN capability, or use \
                 --isolation chroot, for a step without network"
            .to_string(),
        Some(reason) => format!(
            "RUN --network=none: this step runs in place and shares the container's network: a \
             network namespace of its own could not be made ({reason})"
        ),
    }
}

fn plan_for(fixed: &[HeldPath]) -> Result<PrivatePlan, RunError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| RunError::Setup {
            what: "reading /proc/self/mountinfo".into(),
            source,
        })?;
    let mut paths: Vec<PathBuf> = fixed.iter().filter_map(HeldPath::current).collect();
    paths.extend(crate::container::read_only_mount_points(&mountinfo));
    paths.retain(|p| hideable(p));
    Ok(PrivatePlan {
        hide: hide_ops(paths, |p| std::fs::metadata(p).ok().map(|m| m.is_dir())),
        network: Network::Host,
        mounts: Vec::new(),
    })
}

/// The mounts of a step's `RUN --mount`s. A target under a covered directory (the default
/// `/run/secrets/<id>` is one) gets its mount point in the cover, made by the init; any other
/// target gets one on `/` like a sandboxed step's, removed after the step.
pub(super) fn step_mounts(
    plan: &PrivatePlan,
    steps: &[StepMount],
    points: &mut MountPoints,
) -> Result<Vec<MountOp>, RunError> {
    steps
        .iter()
        .map(|step| {
            let target = Path::new(&step.target);
            if covering_dir(plan, target).is_some() {
                Ok(MountOp::Step {
                    kind: step.kind.clone(),
                    target: target.to_path_buf(),
                })
            } else {
                super::step_mount_op(Path::new("/"), points, step)
            }
        })
        .collect()
}

/// The covered directory `path` is under, if any.
fn covering_dir<'p>(plan: &'p PrivatePlan, path: &Path) -> Option<&'p Path> {
    plan.hide.iter().find_map(|h| match h {
        Hide::Dir(dir) if path.starts_with(dir) && path != dir => Some(dir.as_path()),
        _ => None,
    })
}

/// Whether `path` may be covered: absolute, not `/`, not a kernel filesystem or resolver file.
fn hideable(path: &Path) -> bool {
    path.is_absolute()
        && path != Path::new("/")
        && !KEPT_UNDER.iter().any(|k| path.starts_with(k))
        && !KEPT_FILES.iter().any(|f| path == Path::new(f))
}

/// Sorted, without paths below another one (covered with it) or that no longer exist; `is_dir`
/// follows symlinks, as the mount that covers the path will.
fn hide_ops(mut paths: Vec<PathBuf>, is_dir: impl Fn(&Path) -> Option<bool>) -> Vec<Hide> {
    paths.sort();
    paths.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in paths {
        if kept.iter().any(|k| path.starts_with(k)) {
            continue;
        }
        kept.push(path);
    }
    kept.into_iter()
        .filter_map(|p| match is_dir(&p)? {
            true => Some(Hide::Dir(p)),
            false => Some(Hide::File(p)),
        })
        .collect()
}

impl Hide {
    fn path(&self) -> &Path {
        match self {
            Hide::Dir(p) | Hide::File(p) => p,
        }
    }
}

/// Start the init with `plan` as a real step would, up to the user switch, and stop before `exec`.
fn probe(plan: &PrivatePlan) -> Result<(), RunError> {
    let init = InitPlan {
        chroot: None,
        private: Some(plan.clone()),
        probe: true,
        insecure: false,
        binfmt_probe: None,
        argv: vec!["/nonexistent/kiln-probe".into()],
        env: Vec::new(),
        workdir: "/".into(),
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };
    super::spawn_init(&super::init_program(), &init)
}

/// In the init, before it forks: for `--network=none` a network namespace with only `lo` (the
/// sandbox's own way), then new mount and PID namespaces, the mount namespace made private so
/// that nothing mounted for the step reaches the container's.
pub(super) fn enter_namespaces(plan: &PrivatePlan) -> Result<(), Failure> {
    if plan.network == Network::None {
        sandbox::enter_loopback_network()?;
    }
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
        .map_err(|e| fail(FailureKind::Namespace, "unshare", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail(FailureKind::Namespace, "making / private", e))
}

const RO_NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In the forked child, PID 1 of the new PID namespace: cover every hidden path, then mount a
/// `/proc` of the new namespace (with Docker's masked and read-only paths) over the container's.
/// The confinement that follows ([`confine`]: seccomp against `mount` and `umount2`) keeps the
/// step from uncovering them.
pub(super) fn hide(plan: &PrivatePlan) -> Result<(), Failure> {
    // The sources of `RUN --mount`s live in Kiln's (covered) directory: held open from here,
    // and mounted through /proc/self/fd once everything is covered.
    let held = hold_sources(&plan.mounts)?;
    for op in &plan.hide {
        match op {
            Hide::Dir(path) => cover_dir(plan, path)?,
            Hide::File(path) => {
                let what = || format!("hiding {}", path.display());
                mount(
                    Some("/dev/null"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| fail(FailureKind::Setup, what(), e))?;
                mount(
                    None::<&str>,
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | RO_NOSUID_NODEV_NOEXEC,
                    None::<&str>,
                )
                .map_err(|e| fail(FailureKind::Setup, what(), e))?;
            }
        }
    }
    mounts::do_mount(&MountOp::Proc {
        target: PathBuf::from("/proc"),
    })?;
    for (op, fd) in plan.mounts.iter().zip(&held) {
        let op = match (op, fd) {
            (
                MountOp::Step {
                    kind: StepMountKind::Bind { readonly, dir, .. },
                    target,
                },
                Some(fd),
            ) => MountOp::Step {
                kind: StepMountKind::Bind {
                    source: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                    readonly: *readonly,
                    dir: *dir,
                },
                target: target.clone(),
            },
            (op, _) => op.clone(),
        };
        mounts::do_mount(&op)?;
    }
    drop(held);
    Ok(())
}

/// An `O_PATH` descriptor of the source of every bind in `ops`.
fn hold_sources(ops: &[MountOp]) -> Result<Vec<Option<File>>, Failure> {
    ops.iter()
        .map(|op| match op {
            MountOp::Step {
                kind: StepMountKind::Bind { source, .. },
                ..
            } => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(source)
                .map(Some)
                .map_err(|e| {
                    fail(
                        FailureKind::Setup,
                        format!("opening the mount source {}", source.display()),
                        io_errno(&e),
                    )
                }),
            _ => Ok(None),
        })
        .collect()
}

/// Cover `dir` with an empty read-only tmpfs; the mount points of the step's mounts under it
/// are made first, while it is still writable.
fn cover_dir(plan: &PrivatePlan, dir: &Path) -> Result<(), Failure> {
    let what = || format!("hiding {}", dir.display());
    let stubs: Vec<(&Path, bool)> = plan
        .mounts
        .iter()
        .filter_map(|op| match op {
            MountOp::Step { kind, target } if covering_dir(plan, target) == Some(dir) => {
                Some((target.as_path(), kind.is_dir()))
            }
            _ => None,
        })
        .collect();
    let flags = if stubs.is_empty() {
        RO_NOSUID_NODEV_NOEXEC
    } else {
        RO_NOSUID_NODEV_NOEXEC.difference(MsFlags::MS_RDONLY)
    };
    mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some("mode=755"))
        .map_err(|e| fail(FailureKind::Setup, what(), e))?;
    if stubs.is_empty() {
        return Ok(());
    }
    for (target, is_dir) in stubs {
        let made = match target.parent() {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        }
        .and_then(|()| {
            if is_dir {
                std::fs::create_dir_all(target)
            } else {
                File::create(target).map(drop)
            }
        });
        made.map_err(|e| {
            fail(
                FailureKind::Setup,
                format!("creating the mount point {}", target.display()),
                io_errno(&e),
            )
        })?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_REMOUNT | RO_NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| fail(FailureKind::Setup, what(), e))
}

/// The last steps before the user switch. Where the Pod granted `CAP_SETPCAP` (Docker's and
/// containerd's default sets do), as for a sandboxed step (see `sandbox::confine`): bounding set,
/// seccomp filter, then effective and permitted reduced to Docker's set, so `SYS_ADMIN` is gone.
/// Without it (Kiln's hardened executor Pods) the bounding set cannot shrink, and shrinking only
/// the permitted set would make a root step's `exec` regain the bounding set: the kernel then
/// runs it in secure mode (`AT_SECURE`), in which the C library drops `LD_LIBRARY_PATH` and
/// friends from the environment. So there the step keeps the Pod's capabilities, as an in-place
/// step always has, and the seccomp filter alone, which no capability lifts, refuses `mount`,
/// `umount2`, `unshare`, `setns`, `pivot_root` and the new mount API: nothing that covers a
/// hidden path can be undone.
pub(super) fn confine() -> Result<(), Failure> {
    let setup = |what: &str, e: &std::io::Error| fail(FailureKind::Setup, what, io_errno(e));
    let has_setpcap =
        caps::effective(caps::CAP_SETPCAP).map_err(|e| setup("reading the capabilities", &e))?;
    if has_setpcap {
        caps::drop_bounding().map_err(|e| setup("dropping the capability bounding set", &e))?;
    }
    seccomp::install().map_err(|e| setup("installing the seccomp filter", &e))?;
    if has_setpcap {
        caps::restrict().map_err(|e| setup("reducing the capabilities", &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_are_covered_once_and_missing_ones_dropped() {
        let paths = vec![
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"),
            PathBuf::from("/kiln/.docker/config.json"),
            PathBuf::from("/kiln"),
            PathBuf::from("/var/run/secrets"),
            PathBuf::from("/gone"),
            PathBuf::from("/etc/app.conf"),
            PathBuf::from("/kiln"),
            PathBuf::from("/kilned"),
        ];
        let ops = hide_ops(paths, |p| match p.to_str() {
            Some("/gone") => None,
            Some("/etc/app.conf") => Some(false),
            _ => Some(true),
        });
        assert_eq!(
            ops,
            vec![
                Hide::File("/etc/app.conf".into()),
                Hide::Dir("/kiln".into()),
                Hide::Dir("/kilned".into()),
                Hide::Dir("/var/run/secrets".into()),
            ]
        );
    }

    #[test]
    fn kernel_filesystems_resolver_files_and_root_stay() {
        for kept in [
            "/",
            "/proc/acpi",
            "/sys/firmware",
            "/dev/termination-log",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "relative",
        ] {
            assert!(!hideable(Path::new(kept)), "{kept}");
        }
        for hidden in ["/kiln", "/etc/hosts.d", "/workspace", "/devices"] {
            assert!(hideable(Path::new(hidden)), "{hidden}");
        }
    }

    #[test]
    fn a_held_path_follows_renames_and_ends_with_removal() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("secret")).unwrap();
        let held = HeldPath::open(&a.join("secret")).unwrap();
        assert_eq!(held.current(), Some(a.join("secret")));
        let b = dir.path().join("b");
        std::fs::rename(&a, &b).unwrap();
        assert_eq!(held.current(), Some(b.join("secret")));
        std::fs::remove_dir(b.join("secret")).unwrap();
        assert_eq!(held.current(), None);
    }

    #[test]
    fn the_warning_is_one_line_naming_the_exposure_and_the_remedy() {
        let w = shared_warning("unshare: Operation not permitted (os error 1)");
        assert!(!w.contains('\n'));
        for part in [
            "/kiln/.docker/config.json",
            "service-account token",
            "hostUsers: false",
            "SYS_ADMIN",
            "Operation not permitted",
        ] {
            assert!(w.contains(part), "{part} missing from {w}");
        }
    }
}
