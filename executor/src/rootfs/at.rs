//! Descriptor-relative access inside a root: the root held open, directories inside it opened so
//! that no symlink can lead out, and the `*at` calls that act on one name in such a directory.
//! Once a directory is open, a symlink swapped into its path afterwards (by a process a RUN step
//! left running, say) cannot redirect what is done in it. Paths come from the userspace resolver
//! ([`super::resolve_in_root`]); this module only opens them, with `openat2(RESOLVE_IN_ROOT)`
//! where the kernel has it (Linux 5.6 and later) and an `O_NOFOLLOW` descent elsewhere. It
//! decides nothing about what to write.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Uid, CWD};
use rustix::io::Errno;

/// Set to `1`, the executor opens paths inside a root with the userspace fallback even where
/// the kernel has `openat2` (tests run both ways through it).
pub const FORCE_FALLBACK_ENV: &str = "KILN_FORCE_RESOLVE_FALLBACK";

/// `openat2` can answer EAGAIN when a rename elsewhere races a `..` lookup; tried this often
/// before the descent takes over.
const OPENAT2_ATTEMPTS: usize = 8;

/// How paths inside a root are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `openat2` with `RESOLVE_IN_ROOT` (or `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): the
    /// kernel confines the whole lookup, whatever is swapped meanwhile.
    Kernel,
    /// One component at a time with `O_NOFOLLOW` from the root's descriptor: a symlink swapped
    /// into the (symlink-free) path meanwhile fails the open instead of being followed.
    Userspace,
}

impl Resolution {
    /// The process's choice: [`Resolution::Userspace`] when [`FORCE_FALLBACK_ENV`] is `1` or the
    /// kernel lacks `openat2` (ENOSYS, or EPERM from a seccomp profile that predates it), else
    /// [`Resolution::Kernel`]. Decided once (a unit test may choose for its own thread: see
    /// [`with_resolution`]).
    pub fn detect() -> Resolution {
        #[cfg(test)]
        if let Some(forced) = FORCED.with(std::cell::Cell::get) {
            return forced;
        }
        static DETECTED: OnceLock<Resolution> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if std::env::var_os(FORCE_FALLBACK_ENV).is_some_and(|v| v == "1") {
                tracing::info!(
                    "{FORCE_FALLBACK_ENV}=1: paths inside roots are opened without openat2"
                );
                return Resolution::Userspace;
            }
            if Resolution::kernel_has_openat2() {
                Resolution::Kernel
            } else {
                Resolution::Userspace
            }
        })
    }

    /// Whether this kernel (and seccomp profile) lets `openat2` with `RESOLVE_IN_ROOT` through.
    pub fn kernel_has_openat2() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            match rustix::fs::openat2(
                CWD,
                "/",
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT,
            ) {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "openat2 is not available; opening paths inside roots one component at a time");
                    false
                }
            }
        })
    }

    /// Every resolution this machine can run: the fallback, and the kernel's where it has it.
    pub fn available() -> Vec<Resolution> {
        let mut all = vec![Resolution::Userspace];
        if Resolution::kernel_has_openat2() {
            all.push(Resolution::Kernel);
        }
        all
    }
}

#[cfg(test)]
thread_local! {
    static FORCED: std::cell::Cell<Option<Resolution>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with [`Resolution::detect`] answering `resolution` on this thread: how a unit test
/// runs every caller of the writer (layers, archives, COPY) under both without an environment
/// variable.
#[cfg(test)]
pub fn with_resolution<T>(resolution: Resolution, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Resolution>);
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(FORCED.with(|c| c.replace(Some(resolution))));
    f()
}

/// Which symlinks an open inside the root may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Any, resolved as if the root were `/` (the kernel path only; the descent follows none).
    InRoot,
    /// None: the path must be reached through real directories, and its last component is not
    /// followed either (with `O_PATH` a symlink there is opened itself; otherwise refused).
    Never,
}

/// A root directory held open; every path inside it is opened relative to this descriptor.
#[derive(Debug)]
pub struct RootFd {
    fd: OwnedFd,
    resolution: Resolution,
}

impl RootFd {
    /// Open `root` itself (through symlinks: it is the caller's directory, not the image's).
    pub fn new(root: &Path, resolution: Resolution) -> io::Result<RootFd> {
        let fd = rustix::fs::openat(
            CWD,
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(RootFd { fd, resolution })
    }

    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open `rel`, a path inside the root (normal components only; the empty path is the root)
    /// with `flags`. [`Follow::Never`] refuses a symlink anywhere on the way and does not follow
    /// the last component; [`Follow::InRoot`] lets the kernel follow symlinks inside the root, while the
    /// fallback, which is given paths the userspace resolver already freed of symlinks, still
    /// follows none.
    pub fn open(&self, rel: &Path, flags: OFlags, follow: Follow) -> io::Result<OwnedFd> {
        let parts: Vec<&OsStr> = normal_components(rel)?;
        let flags = flags | OFlags::CLOEXEC;
        if parts.is_empty() {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, Mode::empty())?);
        }
        if self.resolution == Resolution::Kernel {
            let (resolve, flags) = match follow {
                Follow::InRoot => (ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS, flags),
                Follow::Never => (
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                    flags | OFlags::NOFOLLOW,
                ),
            };
            for _ in 0..OPENAT2_ATTEMPTS {
                match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
                    Err(Errno::AGAIN) => continue,
                    other => return Ok(other?),
                }
            }
        }
        self.descend(&parts, flags)
    }

    /// The fallback: each directory opened in the one before with `O_NOFOLLOW`.
    fn descend(&self, parts: &[&OsStr], flags: OFlags) -> io::Result<OwnedFd> {
        let (last, dirs) = parts.split_last().expect("not the root itself");
        let mut current: Option<OwnedFd> = None;
        for part in dirs {
            let at = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            current = Some(rustix::fs::openat(
                at,
                *part,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        let at = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        Ok(rustix::fs::openat(
            at,
            *last,
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
        )?)
    }

    /// Open directory `rel` as a directory to act in (`O_PATH`), following symlinks inside the
    /// root as [`RootFd::open`] with [`Follow::InRoot`] does.
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open(rel, OFlags::PATH | OFlags::DIRECTORY, Follow::InRoot)
    }
}

/// The normal components of a clean relative path; anything else is refused, since the callers
/// only ever hand over paths they resolved.
fn normal_components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a clean path inside the root", rel.display()),
            )),
        })
        .collect()
}

/// Whether `/proc/self/fd` can name open descriptors (it can wherever procfs is mounted).
fn proc_fd_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// A path naming `name` in the directory open as `dir` without any lookup above it:
/// `/proc/self/fd/<dir>/<name>`, or `fallback` where procfs is not mounted.
pub fn path_in(dir: BorrowedFd<'_>, name: &OsStr, fallback: &Path) -> PathBuf {
    if proc_fd_available() {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        p.push(name);
        p
    } else {
        fallback.to_path_buf()
    }
}

/// `lstat` of `name` in `dir`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<rustix::fs::Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// `lchown` of `name` in `dir` (never through a symlink). An id of `u32::MAX` leaves it as is.
pub fn lchown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw_unchecked(uid)),
        Some(Gid::from_raw_unchecked(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Set the mode of `name` in `dir`, which must not be a symlink (symlinks have no mode of their
/// own; a symlink found there is left alone, never followed). The entry is pinned with an
/// `O_PATH` descriptor and changed through its `/proc/self/fd` link, so a swap cannot redirect
/// the change; without procfs the name is changed directly after the check.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let mode = Mode::from_raw_mode(mode);
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
        return Ok(());
    }
    if proc_fd_available() {
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        return Ok(rustix::fs::chmod(link.as_str(), mode)?);
    }
    Ok(rustix::fs::chmodat(dir, name, mode, AtFlags::empty())?)
}

/// Set the times of `name` in `dir` without following a symlink.
pub fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: filetime::FileTime,
    mtime: filetime::FileTime,
) -> io::Result<()> {
    let spec = |t: filetime::FileTime| rustix::fs::Timespec {
        tv_sec: t.unix_seconds(),
        tv_nsec: t.nanoseconds().into(),
    };
    let times = rustix::fs::Timestamps {
        last_access: spec(atime),
        last_modification: spec(mtime),
    };
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &times,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// The names in the directory open (readable) as `dir`, without `.` and `..`, sorted bytewise.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Open `name` in `dir` as a readable directory, never through a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn roots(dir: &Path) -> Vec<RootFd> {
        Resolution::available()
            .into_iter()
            .map(|r| RootFd::new(dir, r).unwrap())
            .collect()
    }

    #[test]
    fn opens_never_leave_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        symlink("../../..", root.join("a/up")).unwrap();
        for r in roots(root) {
            let mode = r.resolution();
            assert!(r.open_dir(Path::new("a/b")).is_ok(), "{mode:?}");
            // Never: no symlink at all, whatever it points to.
            for path in ["out", "out/secret", "a/up"] {
                let flags = OFlags::PATH | OFlags::DIRECTORY;
                assert!(
                    r.open(Path::new(path), flags, Follow::Never).is_err(),
                    "{mode:?} {path}"
                );
            }
            // InRoot: the kernel resolves `out/secret` as `<root>/<outside>/secret`, which does
            // not exist; the descent refuses the symlink. Neither opens the host's file.
            let secret = r.open(Path::new("out/secret"), OFlags::RDONLY, Follow::InRoot);
            assert!(secret.is_err(), "{mode:?}");
            // `a/up` leads to the root itself under the kernel; the descent opens the symlink
            // itself (`O_PATH`) and follows it nowhere.
            let fd = r
                .open(Path::new("a/up"), OFlags::PATH, Follow::InRoot)
                .unwrap();
            let st = rustix::fs::fstat(&fd).unwrap();
            if mode == Resolution::Kernel {
                let root_st = rustix::fs::stat(root).unwrap();
                assert_eq!((st.st_dev, st.st_ino), (root_st.st_dev, root_st.st_ino));
            } else {
                assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::Symlink);
            }
            assert!(r
                .open(Path::new("../x"), OFlags::PATH, Follow::InRoot)
                .is_err());
        }
    }

    #[test]
    fn chmod_at_never_follows_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "v").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(&victim, dir.path().join("l")).unwrap();
        let r = RootFd::new(dir.path(), Resolution::Userspace).unwrap();
        chmod_at(r.fd(), OsStr::new("l"), 0o777).unwrap();
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
