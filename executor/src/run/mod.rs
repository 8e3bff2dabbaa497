//! Runs `RUN` commands: in a sandbox built the way runc builds a container (chroot mode), or in
//! place inside a container. It must never let a command reach the host in chroot mode, and leaves
//! no mount, cgroup or file of its own behind in the build root once a command has ended.
//!
//! # Design: re-exec, not fork
//!
//! The executor is a multi-threaded tokio program, and after `fork()` in such a process only
//! async-signal-safe calls are allowed until `exec` — no allocation, no serde, no mount
//! bookkeeping. So [`run`] spawns a fresh copy of the executor binary (`/proc/self/exe`, which
//! stays valid even if the image was unpacked over the binary's path) with the hidden first
//! argument [`INIT_ARG`]. That process is single-threaded, so it may `unshare`, `fork`, mount,
//! `chroot` and switch user with ordinary Rust code. It reads its plan as JSON on stdin (no size
//! limit, unlike an environment variable) and reports back on a close-on-exec pipe: a hello line
//! first, then at most one JSON failure line. A successful `exec` of the command closes the pipe.
//!
//! **`main()` must call [`maybe_run_init`] before anything else** (before logging, before tokio):
//!
//! ```text
//! fn main() {
//!     if let Some(code) = kiln_executor::run::maybe_run_init() {
//!         std::process::exit(code);
//!     }
//!     // ... normal start-up
//! }
//! ```
//!
//! If the re-executed program does not do that, no hello arrives and [`run`] fails with
//! [`RunError::InitMissing`] instead of silently "succeeding".
//!
//! # The sandbox (chroot mode)
//!
//! Per step: its own cgroup with a `pids.max` limit where the machine allows ([`cgroup`]), joined
//! by the init before it reads its plan, so that the next step's init can be started during this
//! step ([`pending`]); new
//! mount, PID, IPC, UTS and cgroup namespaces, and a network namespace with only loopback for
//! `--network=none` (the host's network otherwise); the root bound `nodev` and entered with
//! `pivot_root`, the old root detached; runc's masked and read-only `/proc` and `/sys` paths and a
//! minimal `/dev` ([`mounts`]); Docker's default capabilities ([`caps`]) and a seccomp filter
//! against the escape syscalls ([`seccomp`]). `no_new_privs` is not set, as in Docker.
//!
//! # In place (a Pod)
//!
//! The step runs over the container's own `/`. Where the container allows it (decided once by
//! probing, see [`inpod`]), each step gets new mount and PID namespaces in which Kiln's
//! directory, the credentials and every read-only mount (Secrets, the service-account token)
//! are covered, `/proc` shows only the step's processes, and the same capability and seccomp
//! confinement as a sandboxed step keeps it from uncovering them. Otherwise it shares the
//! container with the executor, as kaniko's steps do.

mod caps;
pub(crate) mod cgroup;
pub mod emulation;
pub mod entitlements;
mod init;
mod inpod;
mod mountpoints;
mod mounts;
mod pending;
mod sandbox;
mod seccomp;
pub mod users;

#[cfg(test)]
pub(crate) use caps::{drop_effective_on_this_thread, CAP_MKNOD};
pub use cgroup::{CGROUP_PREFIX, PIDS_MAX};
pub use inpod::{prepare_in_place, InPlaceNamespaces};
pub use pending::{release_spares, spare_count, SparesReleased};

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

pub use users::{resolve_chown, resolve_user, ResolvedUser};

/// Hidden first argument that turns the executor binary into the run init.
pub const INIT_ARG: &str = "__kiln-run-init";

/// `PATH` given to a command whose environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment variable naming the status pipe's file descriptor in the init process.
const STATUS_FD_ENV: &str = "KILN_RUN_STATUS_FD";
/// First line the init writes on the status pipe, proving `main()` handed over to it.
const HELLO: &str = "kiln-run-init v1";
/// Environment variable naming the `cgroup.procs` file the init joins before it reads its plan.
const CGROUP_PROCS_ENV: &str = "KILN_RUN_CGROUP_PROCS";

/// How a `RUN` command is isolated from the machine running the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Isolation {
    /// The root is a directory; the command runs in a sandbox with it as `/` (see the module
    /// documentation): `/proc`, `/dev` (a `nodev` tmpfs with null, zero, full, random, urandom,
    /// tty bound from the host, plus `/dev/pts`, `/dev/shm` and the fd symlinks), `/sys`
    /// (read-only sysfs), and the host's `/etc/resolv.conf` and `/etc/hosts` bound read-only.
    /// Needs root.
    Chroot,
    /// Inside a container whose `/` is the build root: environment, working directory and user
    /// are applied; `root` should be `/`. Where [`prepare_in_place`] found the container allows
    /// it, each step also gets private mount and PID namespaces hiding Kiln's directory, the
    /// credentials and Secret mounts, and the executor's processes.
    InPlace,
}

/// One `RUN` command, fully expanded by the caller.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Host path of the build root (`/` for [`Isolation::InPlace`]).
    pub root: PathBuf,
    pub isolation: Isolation,
    /// The command, e.g. `["/bin/sh", "-c", "make"]`; `argv[0]` without `/` is looked up in the
    /// command's own `PATH` inside the image.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; `PATH` and `HOME` get Docker's defaults when missing.
    pub env: Vec<String>,
    /// Absolute in-image working directory; the caller creates it.
    pub workdir: String,
    /// Raw Dockerfile `USER` value: `""`, `name`, `uid`, `name:group`, `uid:gid`.
    pub user: String,
}

/// The network a step sees (`RUN --network=`). In place, `None` is honoured where the step has
/// private namespaces and the container allows a network namespace (see [`inpod`]); otherwise
/// the step has the container's network, with a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network, as `default` and `host` give (and BuildKit without CNI).
    #[default]
    Host,
    /// A network namespace of its own with only `lo`, up.
    None,
}

/// The confinement of a step (`RUN --security=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Security {
    /// Docker's default capability set and the seccomp filter (where the isolation applies them).
    #[default]
    Sandbox,
    /// Every capability the executor holds and no seccomp filter, as `docker run --privileged`
    /// (`RUN --security=insecure`, only with `--allow security.insecure`).
    Insecure,
}

/// Per-step choices beyond [`RunSpec`], kept apart so that existing `RunSpec` literals compile
/// unchanged; the default is what [`run`] uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub network: Network,
    pub security: Security,
    /// `RUN --mount`s, in order (chroot mode only).
    pub mounts: Vec<StepMount>,
    /// A foreign platform's emulator, registered in a `binfmt_misc` of the step's own user
    /// namespace (chroot mode only; see [`emulation`]).
    pub emulator: Option<emulation::BinfmtEntry>,
    /// Another sandboxed step is expected after this one: start its init (and its cgroup) while
    /// this one runs (see [`pending`]). Chroot mode only.
    pub prepare_next: bool,
}

/// A mount of `RUN --mount`, made in the step's mount namespace on a mount point that is
/// removed after the step if it had to be created (as BuildKit removes its mount stubs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMount {
    /// Absolute in-image path.
    pub target: String,
    pub kind: StepMountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepMountKind {
    /// A host file or directory (`dir`) bound `nosuid,nodev`, read-only if asked.
    Bind {
        source: PathBuf,
        readonly: bool,
        dir: bool,
    },
    /// A fresh tmpfs, `nosuid,nodev`, of `size` bytes (the kernel's default if `None`).
    Tmpfs { size: Option<u64> },
}

/// Why a `RUN` command did not succeed. The caller adds the Dockerfile line and command text.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the command exited with code {code}")]
    Exit { code: i32 },
    #[error("the command was killed by signal {signal}")]
    Signal { signal: i32 },
    #[error("cannot start {program:?}: {source}; check that it exists in the image and is executable for the build user")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the RUN command is empty; give a command or an exec-form array with at least one element"
    )]
    NoCommand,
    #[error("user {user:?} is not in the image's /etc/passwd ({}); create it in an earlier step or use a numeric uid", passwd.display())]
    User { user: String, passwd: PathBuf },
    #[error("group {group:?} is not in the image's /etc/group ({}); create it in an earlier step or use a numeric gid", group_file.display())]
    Group { group: String, group_file: PathBuf },
    #[error("invalid user {user:?}: {reason}")]
    InvalidUser { user: String, reason: String },
    #[error("cannot read the image's user database {}: {source}", path.display())]
    UserDb {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the step's namespaces (mount, PID, IPC, UTS, cgroup, network) ({source}): chroot isolation needs root or CAP_SYS_ADMIN; run the executor as root, or inside a container with --force to run steps in place")]
    Namespace {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the build root for the command: {what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot change to the working directory {workdir:?} in the image: {source}; create it with WORKDIR first")]
    Workdir {
        workdir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the run helper {}: {source}", program.display())]
    Helper {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the run helper {} did not start as the run init: its main() must call kiln_executor::run::maybe_run_init() first", program.display())]
    InitMissing { program: PathBuf },
}

/// Program re-executed as the run init; `None` means `/proc/self/exe`.
static INIT_PROGRAM: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Re-execute `program` instead of `/proc/self/exe` as the run init, for test binaries whose own
/// `main` cannot call [`maybe_run_init`] (e.g. point it at the built `kiln-executor`).
pub fn set_init_program(program: impl Into<PathBuf>) {
    let mut slot = INIT_PROGRAM.write().unwrap_or_else(|e| e.into_inner());
    *slot = Some(program.into());
}

fn init_program() -> PathBuf {
    let slot = INIT_PROGRAM.read().unwrap_or_else(|e| e.into_inner());
    slot.clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Start a spare init for the first sandboxed `RUN` of a stage while what comes before it (the
/// base image's download and unpack, cached layers, COPY steps) is still under way, so that the
/// step does not wait for its init to start (later RUNs get theirs from the step before, see
/// [`RunOptions::prepare_next`]). An init no step takes ends with the build. Nothing in place.
pub fn prepare_ahead(isolation: Isolation) {
    if isolation == Isolation::Chroot {
        pending::prepare_spare(&init_program());
    }
}

/// What the init process is told to do; every decision that can fail with a user-facing error
/// (user lookup, mount-point creation) is made before it starts.
#[derive(Debug, Serialize, Deserialize)]
struct InitPlan {
    chroot: Option<ChrootPlan>,
    /// In place with private namespaces (see [`inpod`]); never together with `chroot`.
    #[serde(default)]
    private: Option<inpod::PrivatePlan>,
    /// Set up everything, switch user, and end before `exec` (the in-place probe).
    #[serde(default)]
    probe: bool,
    /// [`Security::Insecure`]: skip the capability and seccomp confinement.
    #[serde(default)]
    insecure: bool,
    /// Only check that a user namespace can have its own `binfmt_misc` with this entry, then
    /// end (see [`probe_private_binfmt`]).
    #[serde(default)]
    binfmt_probe: Option<emulation::BinfmtEntry>,
    argv: Vec<String>,
    env: Vec<String>,
    workdir: String,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChrootPlan {
    root: PathBuf,
    /// Host paths, already resolved inside the root and existing.
    mounts: Vec<MountOp>,
    network: Network,
    /// Register this emulator in a `binfmt_misc` of the step's own user namespace.
    #[serde(default)]
    emulator: Option<emulation::BinfmtEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum MountOp {
    Proc {
        target: PathBuf,
    },
    Sys {
        target: PathBuf,
    },
    Dev {
        target: PathBuf,
    },
    BindFileReadOnly {
        source: PathBuf,
        target: PathBuf,
    },
    /// A `RUN --mount` on its host-side mount point.
    Step {
        kind: StepMountKind,
        target: PathBuf,
    },
}

/// What the init reports when it cannot get as far as `exec`.
#[derive(Debug, Serialize, Deserialize)]
struct InitFailure {
    kind: FailureKind,
    what: String,
    errno: i32,
}

#[derive(Debug, Serialize, Deserialize)]
enum FailureKind {
    Namespace,
    Setup,
    Workdir,
    Spawn,
}

impl InitFailure {
    fn into_error(self) -> RunError {
        let source = std::io::Error::from_raw_os_error(self.errno);
        match self.kind {
            FailureKind::Namespace => RunError::Namespace { source },
            FailureKind::Setup => RunError::Setup {
                what: self.what,
                source,
            },
            FailureKind::Workdir => RunError::Workdir {
                workdir: self.what,
                source,
            },
            FailureKind::Spawn => RunError::Spawn {
                program: self.what,
                source,
            },
        }
    }
}

/// Run one command and wait for it; its stdout/stderr are the executor's, its stdin is empty.
///
/// Blocks until the command ends: call it from `tokio::task::spawn_blocking`. Mount points it
/// had to create in the root are removed before it returns, whatever the outcome.
pub fn run(spec: &RunSpec) -> Result<(), RunError> {
    run_with(spec, &RunOptions::default())
}

/// [`run`] with per-step options (the network of `RUN --network=none`, the confinement of
/// `RUN --security=insecure`).
pub fn run_with(spec: &RunSpec, options: &RunOptions) -> Result<(), RunError> {
    if spec.argv.is_empty() {
        return Err(RunError::NoCommand);
    }
    let user = resolve_user(&spec.root, &spec.user)?;
    let env = command_env(&spec.env, &user.home);

    // Mount points are made from here, in the host's mount namespace, so that they can be
    // removed after the namespace (and every mount in it) is gone.
    let mut points = mountpoints::MountPoints::default();
    // A sandboxed step's init, already in the step's own cgroup (removed when the init is
    // dropped, after it and so every process of the step has ended): a spare started during
    // the step before, or one started now.
    let program = init_program();
    let init = match spec.isolation {
        Isolation::InPlace => None,
        Isolation::Chroot => Some(match pending::take_spare(&program) {
            Some(spare) => spare,
            None => pending::Pending::start(&program, cgroup::StepCgroup::create())?,
        }),
    };
    let chroot = match spec.isolation {
        Isolation::InPlace => None,
        Isolation::Chroot => match chroot_mounts(&spec.root, &mut points, &options.mounts) {
            Ok(mountpoints) => Some(ChrootPlan {
                root: spec.root.clone(),
                mounts: mountpoints,
                network: options.network,
                emulator: options.emulator.clone(),
            }),
            Err(e) => {
                points.cleanup();
                return Err(e);
            }
        },
    };
    let private = match spec.isolation {
        Isolation::InPlace => {
            let mut plan = inpod::step_plan(options.network)?;
            if !options.mounts.is_empty() {
                let Some(plan) = plan.as_mut() else {
                    return Err(RunError::Setup {
                        what: "RUN --mount with a target needs a mount namespace of the step's own, which this container does not allow (steps share its namespaces; see the warning above); give the executor Pod hostUsers: false and the SYS_ADMIN capability, or use --isolation chroot".into(),
                        source: std::io::Error::from_raw_os_error(libc::ENOTSUP),
                    });
                };
                plan.mounts = inpod::step_mounts(plan, &options.mounts, &mut points)?;
            }
            plan
        }
        Isolation::Chroot => None,
    };
    let plan = InitPlan {
        chroot,
        private,
        probe: false,
        insecure: options.security == Security::Insecure,
        binfmt_probe: None,
        argv: spec.argv.clone(),
        env,
        workdir: spec.workdir.clone(),
        uid: user.uid,
        gid: user.gid,
        groups: user.additional_gids,
    };
    let result = match init {
        Some(init) => {
            if options.prepare_next {
                pending::prepare_spare(&program);
            }
            init.finish(&plan)
        }
        None => spawn_init(&program, &plan),
    };
    points.cleanup();
    result
}

/// Whether a user namespace made here may mount its own `binfmt_misc` and register `entry` in
/// it (Linux 6.7 and later, where user namespaces may be created): done once in a throwaway
/// init, which changes nothing of the host.
pub fn probe_private_binfmt(entry: &emulation::BinfmtEntry) -> Result<(), RunError> {
    let plan = InitPlan {
        chroot: None,
        private: None,
        probe: true,
        insecure: false,
        binfmt_probe: Some(entry.clone()),
        argv: vec!["binfmt-probe".into()],
        env: Vec::new(),
        workdir: "/".into(),
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };
    spawn_init(&init_program(), &plan)
}

/// The command's environment: the spec's, plus Docker's `PATH` and `HOME` when absent.
fn command_env(env: &[String], home: &str) -> Vec<String> {
    let has = |key: &str| {
        env.iter()
            .any(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
    };
    let mut out = env.to_vec();
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

/// The mounts a chroot-mode step gets, on mount points made in the root.
fn chroot_mounts(
    root: &Path,
    points: &mut mountpoints::MountPoints,
    steps: &[StepMount],
) -> Result<Vec<MountOp>, RunError> {
    let mut mounts = vec![
        MountOp::Proc {
            target: points.dir(root, "/proc")?,
        },
        MountOp::Dev {
            target: points.dir(root, "/dev")?,
        },
        MountOp::Sys {
            target: points.dir(root, "/sys")?,
        },
    ];
    for file in ["/etc/resolv.conf", "/etc/hosts"] {
        if !Path::new(file).is_file() {
            tracing::warn!("the host has no {file}; the command runs without it");
            continue;
        }
        if let Some(target) = points.file(root, file)? {
            mounts.push(MountOp::BindFileReadOnly {
                source: PathBuf::from(file),
                target,
            });
        }
    }
    for step in steps {
        mounts.push(step_mount_op(root, points, step)?);
    }
    Ok(mounts)
}

/// A `RUN --mount` on its mount point in `root`, made if missing and removed after the step with
/// the missing parents made for it, as BuildKit's mount stub cleaner does. buildah 1.28 keeps
/// those parents in the layer; BuildKit is the reference here (the differential case
/// `run-mounts` names the difference).
fn step_mount_op(
    root: &Path,
    points: &mut mountpoints::MountPoints,
    step: &StepMount,
) -> Result<MountOp, RunError> {
    let target = if step.kind.is_dir() {
        points.dir(root, &step.target)?
    } else {
        points
            .file(root, &step.target)?
            .ok_or_else(|| RunError::Setup {
                what: format!(
                    "mount target {} exists in the image but is not a regular file",
                    step.target
                ),
                source: std::io::Error::from_raw_os_error(libc::EISDIR),
            })?
    };
    Ok(MountOp::Step {
        kind: step.kind.clone(),
        target,
    })
}

impl StepMountKind {
    /// Whether the mount point is a directory (else a regular file).
    fn is_dir(&self) -> bool {
        !matches!(self, StepMountKind::Bind { dir: false, .. })
    }
}

fn spawn_init(program: &Path, plan: &InitPlan) -> Result<(), RunError> {
    pending::Pending::start(program, None)?.finish(plan)
}

/// Call first thing in `main()`: when this process was started as the run init, do that job and
/// return the exit code to end with; otherwise return `None` at once and touch nothing.
pub fn maybe_run_init() -> Option<i32> {
    if std::env::args_os().nth(1).as_deref() != Some(std::ffi::OsStr::new(INIT_ARG)) {
        return None;
    }
    Some(init::main())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_and_home_only_when_missing() {
        let env = command_env(&["A=1".into()], "/home/u");
        assert_eq!(
            env,
            vec![
                "A=1".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/home/u".into()
            ]
        );
        let env = command_env(&["PATH=/x".into(), "HOME=/h".into()], "/home/u");
        assert_eq!(env, vec!["PATH=/x".to_string(), "HOME=/h".into()]);
        // A variable whose name merely starts with PATH is not PATH.
        assert!(command_env(&["PATHX=1".into()], "/").contains(&format!("PATH={DEFAULT_PATH}")));
    }

    #[test]
    fn empty_command_is_refused() {
        let spec = RunSpec {
            root: PathBuf::from("/nonexistent"),
            isolation: Isolation::Chroot,
            argv: vec![],
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
        };
        assert!(matches!(run(&spec), Err(RunError::NoCommand)));
    }

    #[test]
    fn a_helper_that_is_not_the_init_is_detected() {
        // The unit-test binary's main() does not call maybe_run_init(); /bin/true stands in for it.
        let plan = InitPlan {
            chroot: None,
            private: None,
            probe: false,
            insecure: false,
            binfmt_probe: None,
            argv: vec!["true".into()],
            env: vec![],
            workdir: "/".into(),
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        let err = spawn_init(Path::new("/bin/true"), &plan).unwrap_err();
        assert!(matches!(err, RunError::InitMissing { .. }), "{err}");
    }
}
