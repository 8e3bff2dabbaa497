//! A child cgroup per sandboxed `RUN` step with a `pids.max` limit, so that a fork bomb ends as a
//! failed step instead of a dead machine. Made and removed by the executor around the step; the
//! init only joins it. Where the machine offers no writable pids controller it says so once and
//! the step runs without a limit; it never changes a cgroup it did not create, except enabling
//! the pids controller for the children of the executor's own cgroup v2 group.
//!
//! Every step cgroup alive is also listed process-wide: an executor stopped by a signal mid-build
//! (see `crate::stop`) exits without dropping them, so it ends their processes and removes them
//! from that list before, instead of leaving them on the host.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Tasks (processes and threads) one step may have at once. Generous for parallel compilers and
/// thread-heavy build tools, small enough that a fork bomb stops long before the machine's
/// limits. A constant for now; a flag can make it configurable.
pub const PIDS_MAX: u32 = 4096;

/// Prefix of the step cgroups' names, so that a leftover one is recognisable.
pub const CGROUP_PREFIX: &str = "kiln-run-";

static STEPS: AtomicU64 = AtomicU64::new(0);
static WARNED: AtomicBool = AtomicBool::new(false);

/// How long [`StepCgroup`]'s drop waits for the kernel to release an emptied cgroup.
const RELEASE: Duration = Duration::from_secs(1);

/// The step cgroups that exist now, and whether more may be made.
struct Live {
    closed: bool,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    closed: false,
    dirs: Vec::new(),
});

fn live() -> MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One step's cgroup; removed on drop, once the step's processes are gone.
pub(super) struct StepCgroup {
    dir: PathBuf,
}

impl StepCgroup {
    /// Create the step's cgroup under the executor's own cgroup in the first hierarchy that can
    /// limit it (v2 or v1 pids). `None` when that is impossible here; the first time is logged.
    /// `None` too once the executor is stopping ([`close`]), without a word.
    pub(super) fn create() -> Option<StepCgroup> {
        match Self::try_create() {
            Ok(cgroup) => cgroup,
            Err(reason) => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "RUN steps have no process-count limit on this machine ({reason}); a fork \
                         bomb in a step is bounded only by the machine's own limits"
                    );
                }
                None
            }
        }
    }

    /// `Ok(None)` once the executor is stopping.
    fn try_create() -> Result<Option<StepCgroup>, String> {
        let mountinfo = read("/proc/self/mountinfo")?;
        let membership = read("/proc/self/cgroup")?;
        let parent = parent_dir(&mountinfo, &membership)?;
        let name = format!(
            "{CGROUP_PREFIX}{}-{}",
            std::process::id(),
            STEPS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        let cgroup = {
            // Made and listed under the lock, so that [`close`] returns every cgroup made.
            let mut live = live();
            if live.closed {
                return Ok(None);
            }
            std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            live.dirs.push(dir.clone());
            StepCgroup { dir }
        };
        let limit = cgroup.dir.join("pids.max");
        std::fs::write(&limit, PIDS_MAX.to_string())
            .map_err(|e| format!("writing {}: {e}", limit.display()))?;
        Ok(Some(cgroup))
    }

    /// The file the init writes itself into.
    pub(super) fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        // The step's processes are dead when the init has exited (the end of a PID namespace's
        // first process kills and reaps the rest), but the kernel may release the cgroup a little
        // later.
        if let Err(e) = remove_dir(&self.dir, Instant::now() + RELEASE, &mut |_| {}) {
            tracing::warn!("cannot remove the step cgroup {}: {e}", self.dir.display());
        }
        live().dirs.retain(|d| *d != self.dir);
    }
}

/// Make no more step cgroups (later steps run without one) and return those that exist: the
/// executor is stopping, ends their processes and removes them ([`remove_all`]).
pub(crate) fn close() -> Vec<PathBuf> {
    let mut live = live();
    live.closed = true;
    live.dirs.clone()
}

/// The processes in a step cgroup now, by their ids in this process's PID namespace; none once
/// it is gone.
pub(crate) fn processes(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|procs| {
            procs
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                // 0 stands for a process outside this PID namespace; it is no process to signal.
                .filter(|&pid| pid > 0)
                .collect()
        })
        .unwrap_or_default()
}

/// Remove the step cgroups `dirs` (from [`close`]), retrying each while it has processes or the
/// kernel has not released it yet, until `deadline`; `on_busy` is called with a cgroup before
/// each retry (to kill what is still in it). What it cannot remove it reports on stderr (it runs
/// while the process ends, when the log may not be written any more) and returns.
pub(crate) fn remove_all(
    dirs: &[PathBuf],
    deadline: Instant,
    mut on_busy: impl FnMut(&Path),
) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for dir in dirs {
        if let Err(e) = remove_dir(dir, deadline, &mut on_busy) {
            eprintln!(
                "kiln-executor: cannot remove the step cgroup {}: {e}",
                dir.display()
            );
            left.push(dir.clone());
        }
    }
    live().dirs.retain(|d| !dirs.contains(d));
    left
}

/// Remove one cgroup directory, retrying EBUSY until `deadline`; one already gone counts as
/// removed.
fn remove_dir(dir: &Path, deadline: Instant, on_busy: &mut dyn FnMut(&Path)) -> Result<(), String> {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() >= deadline {
                    return Err("it still has processes".into());
                }
                on_busy(dir);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

/// The directory of the executor's own cgroup in a hierarchy that has the pids controller and
/// lets it make children with it: cgroup v2 where the controller is (or can be) enabled for the
/// children, else a v1 pids hierarchy.
fn parent_dir(mountinfo: &str, membership: &str) -> Result<PathBuf, String> {
    let mut reasons = Vec::new();
    for mount in mountinfo.lines().filter_map(CgroupMount::parse) {
        let Some(own) = own_path(membership, mount.v2) else {
            continue;
        };
        let Ok(rel) = Path::new(own).strip_prefix(&mount.root) else {
            continue;
        };
        let dir = mount.point.join(rel);
        let result = if mount.v2 {
            enable_v2_pids(&dir)
        } else if mount.super_opts.split(',').any(|o| o == "pids") {
            Ok(())
        } else {
            continue;
        };
        match result {
            Ok(()) => return Ok(dir),
            Err(e) => reasons.push(e),
        }
    }
    if reasons.is_empty() {
        Err("no cgroup hierarchy with the pids controller is mounted".into())
    } else {
        Err(reasons.join("; "))
    }
}

/// The pids controller must be available in `dir` and enabled for its children; enabling it
/// fails (EBUSY) where `dir` itself holds processes and is not the root, which is left alone.
fn enable_v2_pids(dir: &Path) -> Result<(), String> {
    let has = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .map(|s| s.split_whitespace().any(|c| c == "pids"))
            .unwrap_or(false)
    };
    if !has("cgroup.controllers") {
        return Err(format!(
            "cgroup v2 at {} has no pids controller",
            dir.display()
        ));
    }
    if has("cgroup.subtree_control") {
        return Ok(());
    }
    let control = dir.join("cgroup.subtree_control");
    std::fs::write(&control, "+pids").map_err(|e| {
        format!(
            "cannot enable the pids controller in {}: {e}",
            control.display()
        )
    })
}

/// A cgroup filesystem from one `/proc/self/mountinfo` line.
struct CgroupMount {
    /// The path inside the hierarchy that is mounted.
    root: PathBuf,
    point: PathBuf,
    v2: bool,
    super_opts: String,
}

impl CgroupMount {
    fn parse(line: &str) -> Option<CgroupMount> {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split(' ');
        let v2 = match fs.next()? {
            "cgroup2" => true,
            "cgroup" => false,
            _ => return None,
        };
        let _source = fs.next()?;
        let super_opts = fs.next().unwrap_or("").to_string();
        let mut fields = mount.split(' ');
        let root = PathBuf::from(fields.nth(3)?);
        let point = PathBuf::from(fields.next()?);
        Some(CgroupMount {
            root,
            point,
            v2,
            super_opts,
        })
    }
}

/// This process's path in the v2 hierarchy (`0::/path`) or the v1 pids one (`N:…pids…:/path`).
fn own_path(membership: &str, v2: bool) -> Option<&str> {
    membership.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if v2 {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "pids")
        };
        matches.then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn own_paths_in_v1_and_v2() {
        let membership = "8:pids:/builds/a\n4:memory:/m\n0::/unified/b\n";
        assert_eq!(own_path(membership, false), Some("/builds/a"));
        assert_eq!(own_path(membership, true), Some("/unified/b"));
        assert_eq!(own_path("4:memory:/m\n", false), None);
    }

    #[test]
    fn mounts_are_parsed_from_mountinfo() {
        let mounts: Vec<CgroupMount> = HYBRID.lines().filter_map(CgroupMount::parse).collect();
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1].point, Path::new("/sys/fs/cgroup/pids"));
        assert!(!mounts[1].v2 && mounts[1].super_opts == "rw,pids");
        assert!(mounts[2].v2 && mounts[2].root == Path::new("/"));
    }

    #[test]
    fn processes_outside_this_pid_namespace_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "12\n0\n34\n").unwrap();
        assert_eq!(processes(dir.path()), vec![12, 34]);
        assert!(processes(&dir.path().join("gone")).is_empty());
    }

    #[test]
    fn removal_reports_what_it_cannot_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, full, gone) = (
            dir.path().join("kiln-run-0-0"),
            dir.path().join("kiln-run-0-1"),
            dir.path().join("kiln-run-0-2"),
        );
        std::fs::create_dir(&empty).unwrap();
        std::fs::create_dir_all(full.join("child")).unwrap();
        let dirs = [empty.clone(), full.clone(), gone];
        let left = remove_all(&dirs, Instant::now(), |_| {
            unreachable!("only EBUSY is retried")
        });
        assert_eq!(left, vec![full]);
        assert!(!empty.exists());
    }

    #[test]
    fn a_machine_without_pids_says_why() {
        let only_memory = "35 31 0:32 / /m rw - cgroup cgroup rw,memory\n";
        let err = parent_dir(only_memory, "4:memory:/\n").unwrap_err();
        assert!(err.contains("no cgroup hierarchy"), "{err}");
    }
}
