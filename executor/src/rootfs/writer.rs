//! The one writer of untrusted entries into a root: creates or replaces files, directories,
//! symlinks, hardlinks and device nodes, settles their owner, mode, xattrs and times, and sets
//! directory times last. Every path it writes was resolved inside the root, nothing is written
//! through a symlink, and protected subtrees are never removed. Each entry is created relative
//! to its parent directory's descriptor ([`super::at`]), so a symlink swapped into the path
//! after it was resolved cannot redirect the write. It decides nothing about what to write:
//! layers, archives and COPY bring their own semantics.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use filetime::FileTime;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::at::{self, Follow, Resolution, RootFd};
use super::resolve::resolve_in_root;
use super::Protected;

mod remove;

const COPY_BUFFER: usize = 256 * 1024;

/// Parent directories kept open between entries. Entries of a tree come mostly grouped by
/// directory, so a hundred or so cover the working set while staying far below a process's
/// descriptor limit.
const MAX_OPEN_DIRS: usize = 128;

/// Why the writer could not write an entry. `rel` is the in-root path asked for, `path` the host
/// path acted on.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        rel: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the content for /{}: {source}", rel.display())]
    Content {
        rel: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create directory /{} in the image: a non-directory is in the way", rel.display())]
    NotADirectory { rel: PathBuf },
    #[error("{} resolves outside the root; refusing to write there", rel.display())]
    Outside { rel: PathBuf },
    /// `mknod` of a character or block device answered `EPERM`: this process may not create
    /// device nodes (no `CAP_MKNOD`, as in Kiln's hardened Pods, or a user namespace, where the
    /// kernel never allows it). The callers that apply layers and archives skip such entries.
    #[error("cannot create device node {}: {source}", path.display())]
    DeviceNotPermitted {
        rel: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Owner, mode, times and xattrs to give an entry.
#[derive(Debug, Clone)]
pub struct Meta {
    pub mode: u32,
    /// `None`: leave the owner the entry was created with (the caller's).
    pub owner: Option<(u32, u32)>,
    pub atime: FileTime,
    pub mtime: FileTime,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A device node or fifo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// How directories that entries need but do not describe (missing parents) are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImpliedDirs {
    /// Mode 0777 less the umask, the caller's owner, not recorded (layers).
    Umask,
    /// Mode 0755 and this owner, recorded as written (COPY, ADD, contexts; as buildah does).
    Owned((u32, u32)),
}

/// What a failure to set an extended attribute does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrFailures {
    /// Unsupported or not permitted: warn and go on; anything else fails the write (layers).
    WarnUnsupported,
    /// Never fatal (COPY, as buildah: a filesystem without xattrs, `security.*` unprivileged).
    Ignore,
}

/// Which time a directory written more than once keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirTimes {
    /// The last write's (layers).
    LastWins,
    /// The first write's (COPY, ADD, contexts).
    FirstWins,
}

/// The per-caller choices of a [`RootWriter`]; see the module documentation of
/// [`crate::rootfs`] for which caller takes which and why.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub implied_dirs: ImpliedDirs,
    pub xattr_failures: XattrFailures,
    pub dir_times: DirTimes,
    /// Keep the host path of every entry and implied directory written, for [`RootWriter::finish`].
    pub record: bool,
}

/// Where one entry goes: its clean in-root path and the host path it resolved to. The parent
/// directory is followed through symlinks inside the root; the entry itself never is.
#[derive(Debug, Clone)]
pub struct Target {
    rel: PathBuf,
    parent_rel: PathBuf,
    parent: PathBuf,
    host: PathBuf,
    /// The entry's name in its parent (empty for the root itself).
    name: OsString,
    /// The parent directory, open, once it exists (made, or remembered from an earlier entry).
    dir: Option<Rc<OwnedFd>>,
}

impl Target {
    /// The host path the entry is written at.
    pub fn host(&self) -> &Path {
        &self.host
    }

    /// The host path of the directory that holds the entry.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    fn is_root(&self) -> bool {
        self.name.is_empty()
    }

    /// The open parent directory; only called after [`RootWriter::prepare`].
    fn dir(&self) -> BorrowedFd<'_> {
        self.dir
            .as_deref()
            .expect("the target was prepared")
            .as_fd()
    }

    fn io_err(&self, action: &'static str, source: io::Error) -> WriteError {
        WriteError::Io {
            action,
            rel: self.rel.clone(),
            path: self.host.clone(),
            source,
        }
    }
}

/// What a file's content comes from.
pub enum Content<'c> {
    /// Any stream (a tar entry), copied through the writer's buffer.
    Stream(&'c mut dyn Read),
    /// A host file (COPY), which the kernel may copy without passing through user space.
    File(&'c mut File),
}

/// Writes entries into one root; see the module documentation.
pub struct RootWriter<'r> {
    root: &'r Path,
    resolution: Resolution,
    /// The root, opened on first use.
    root_fd: OnceCell<RootFd>,
    opts: WriterOptions,
    protected: Protected,
    /// Parent directories resolved, created and opened so far, in-root path → host path and
    /// descriptor: resolving costs an lstat per component, and a tree has far fewer directories
    /// than entries. Every component a remembered resolution went through exists (as a
    /// directory, or a symlink it followed), so only removing a directory or a symlink can
    /// change one: creating an entry where one exists goes through such a removal. Emptied on
    /// every such removal, and when it holds [`MAX_OPEN_DIRS`] directories.
    parent_cache: RefCell<HashMap<PathBuf, (PathBuf, Rc<OwnedFd>)>>,
    /// Directory host paths with their times, set last so that writing children does not
    /// disturb them.
    dir_times: Vec<(PathBuf, FileTime, FileTime)>,
    written: Vec<PathBuf>,
    buf: Vec<u8>,
}

impl<'r> RootWriter<'r> {
    /// A writer into `root` that opens paths as the process does ([`Resolution::detect`]).
    pub fn new(root: &'r Path, protected: Protected, opts: WriterOptions) -> Self {
        RootWriter {
            root,
            resolution: Resolution::detect(),
            root_fd: OnceCell::new(),
            opts,
            protected,
            parent_cache: RefCell::new(HashMap::new()),
            dir_times: Vec::new(),
            written: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// The same writer opening paths with `resolution` (tests run both).
    pub fn with_resolution(mut self, resolution: Resolution) -> Self {
        self.resolution = resolution;
        self.root_fd = OnceCell::new();
        self
    }

    pub fn root(&self) -> &Path {
        self.root
    }

    pub fn protected(&self) -> &Protected {
        &self.protected
    }

    /// The root, open; made first when it does not exist yet (it is the caller's directory).
    fn root_fd(&self) -> Result<&RootFd, WriteError> {
        if let Some(fd) = self.root_fd.get() {
            return Ok(fd);
        }
        let err = |source| WriteError::Io {
            action: "open the root",
            rel: PathBuf::new(),
            path: self.root.to_path_buf(),
            source,
        };
        let fd = match RootFd::new(self.root, self.resolution) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(self.root).map_err(err)?;
                RootFd::new(self.root, self.resolution)
            }
            other => other,
        }
        .map_err(err)?;
        Ok(self.root_fd.get_or_init(|| fd))
    }

    /// Resolve an in-root directory path to a host path, following symlinks inside the root
    /// only (the last component too).
    pub fn resolve_dir(&self, rel: &Path) -> Result<PathBuf, WriteError> {
        let resolved =
            resolve_in_root(self.root, &Path::new("/").join(rel), true).map_err(|source| {
                WriteError::Io {
                    action: "resolve",
                    rel: rel.to_path_buf(),
                    path: rel.to_path_buf(),
                    source,
                }
            })?;
        if !resolved.starts_with(self.root) {
            // resolve_in_root guarantees this; checked again because a mistake here is an escape.
            return Err(WriteError::Outside {
                rel: rel.to_path_buf(),
            });
        }
        Ok(resolved)
    }

    /// Where the entry at clean relative path `rel` goes (the empty path is the root itself).
    /// Nothing is created yet: see [`RootWriter::prepare`].
    pub fn locate(&self, rel: &Path) -> Result<Target, WriteError> {
        debug_assert!(rel.is_relative(), "{}", rel.display());
        let Some(name) = rel.file_name() else {
            return Ok(Target {
                rel: PathBuf::new(),
                parent_rel: PathBuf::new(),
                parent: self.root.to_path_buf(),
                host: self.root.to_path_buf(),
                name: OsString::new(),
                dir: None,
            });
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let cached = self.parent_cache.borrow().get(parent_rel).cloned();
        let (parent, dir) = match cached {
            Some((parent, fd)) => (parent, Some(fd)),
            None => (self.resolve_dir(parent_rel)?, None),
        };
        Ok(Target {
            host: parent.join(name),
            parent,
            parent_rel: parent_rel.to_path_buf(),
            rel: rel.to_path_buf(),
            name: name.to_os_string(),
            dir,
        })
    }

    /// Create the target's missing parent directories (see [`ImpliedDirs`]) and open the one
    /// that holds it.
    pub fn prepare(&mut self, t: &mut Target) -> Result<(), WriteError> {
        if t.dir.is_some() || t.is_root() {
            return Ok(());
        }
        let fd = self.make_dirs(&t.parent, &t.parent_rel)?;
        self.remember(t.parent_rel.clone(), t.parent.clone(), fd.clone());
        t.dir = Some(fd);
        Ok(())
    }

    fn remember(&self, rel: PathBuf, host: PathBuf, fd: Rc<OwnedFd>) {
        let mut cache = self.parent_cache.borrow_mut();
        if cache.len() >= MAX_OPEN_DIRS {
            cache.clear();
        }
        cache.insert(rel, (host, fd));
    }

    /// Make sure in-root directory `rel` exists, following symlinks inside the root (the last
    /// component too); missing directories are made as [`ImpliedDirs`] says, existing ones are
    /// left untouched. Returns its host path.
    pub fn ensure_dir(&mut self, rel: &Path) -> Result<PathBuf, WriteError> {
        let host = self.resolve_dir(rel)?;
        let fd = self.make_dirs(&host, rel)?;
        self.remember(rel.to_path_buf(), host.clone(), fd);
        Ok(host)
    }

    /// Create `host` (a resolved path, so free of symlinks) and its missing ancestors, and open
    /// it. Under the kernel's resolution an existing directory is opened in one call; otherwise,
    /// and to create what is missing, the path is walked one directory at a time, never through
    /// a symlink.
    fn make_dirs(&mut self, host: &Path, rel: &Path) -> Result<Rc<OwnedFd>, WriteError> {
        let io_err = |action, path: &Path, source| WriteError::Io {
            action,
            rel: rel.to_path_buf(),
            path: path.to_path_buf(),
            source,
        };
        let host_rel = host
            .strip_prefix(self.root)
            .map_err(|_| WriteError::Outside {
                rel: rel.to_path_buf(),
            })?;
        let root = self.root_fd()?;
        if root.resolution() == Resolution::Kernel {
            match root.open_dir(host_rel) {
                Ok(fd) => return Ok(Rc::new(fd)),
                // A missing directory is made below; a non-directory is named there.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
                Err(e) => return Err(io_err("open directory", host, e)),
            }
        }
        let root_fd = root
            .fd()
            .try_clone_to_owned()
            .map_err(|e| io_err("open directory", host, e))?;
        let mut current = root_fd;
        let mut path = self.root.to_path_buf();
        let mut created = Vec::new();
        for part in host_rel.iter() {
            path.push(part);
            let open = |at: BorrowedFd<'_>| {
                rustix::fs::openat(
                    at,
                    part,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            };
            current = match open(current.as_fd()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let mode = match self.opts.implied_dirs {
                        ImpliedDirs::Umask => 0o777,
                        ImpliedDirs::Owned(_) => 0o700,
                    };
                    rustix::fs::mkdirat(current.as_fd(), part, Mode::from_raw_mode(mode))
                        .map_err(|e| io_err("create directory", &path, e.into()))?;
                    if let ImpliedDirs::Owned((uid, gid)) = self.opts.implied_dirs {
                        let made = at::open_subdir(current.as_fd(), part)
                            .map_err(|e| io_err("open directory", &path, e))?;
                        rustix::fs::fchmod(&made, Mode::from_raw_mode(0o755))
                            .map_err(|e| io_err("chmod", &path, e.into()))?;
                        std::os::unix::fs::fchown(&made, Some(uid), Some(gid))
                            .map_err(|e| io_err("chown", &path, e))?;
                        created.push(path.clone());
                    }
                    open(current.as_fd()).map_err(|e| io_err("open directory", &path, e.into()))?
                }
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    return Err(WriteError::NotADirectory {
                        rel: path.strip_prefix(self.root).unwrap_or(&path).to_path_buf(),
                    })
                }
                Err(e) => return Err(io_err("open directory", &path, e.into())),
            };
        }
        for dir in created {
            self.record(dir);
        }
        Ok(Rc::new(current))
    }

    fn record(&mut self, host: PathBuf) {
        if self.opts.record {
            self.written.push(host);
        }
    }

    /// Write a regular file with `content`, replacing whatever is at the target. Returns the
    /// number of bytes written.
    pub fn file(
        &mut self,
        t: &mut Target,
        content: Content<'_>,
        meta: &Meta,
    ) -> Result<u64, WriteError> {
        if t.is_root() {
            return Err(t.io_err("create file", io::Error::from_raw_os_error(libc::EISDIR)));
        }
        self.prepare(t)?;
        // O_EXCL fails on whatever is there, a symlink included (never followed). Created with
        // the entry's permission bits (less the umask) and without setuid/setgid/sticky, which
        // only the chmod below sets, after the content and the owner.
        let open = || {
            rustix::fs::openat(
                t.dir(),
                &t.name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(meta.mode & 0o777),
            )
        };
        let fd = match open() {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                self.remove_existing(t, false)?;
                open().map_err(|e| t.io_err("create file", e.into()))?
            }
            Err(e) => return Err(t.io_err("create file", e.into())),
        };
        let mut file = File::from(fd);
        let bytes = match content {
            Content::File(source) => {
                io::copy(source, &mut file).map_err(|e| t.io_err("write", e))?
            }
            Content::Stream(source) => self.stream(t, source, &mut file)?,
        };
        // Through the open handle: no path lookup, so nothing can be swapped underneath. The
        // new file's owner and mode are read back (no journal write, unlike chown and chmod,
        // which ext4 journals even when they change nothing): most entries already have both.
        let made = rustix::fs::fstat(&file).map_err(|e| t.io_err("stat", e.into()))?;
        if let Some((uid, gid)) = meta.owner {
            if (made.st_uid, made.st_gid) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(|e| t.io_err("chown", e))?;
            }
        }
        // After chown, which clears setuid/setgid bits (the file was made without them, so the
        // chown left the mode read above as it was).
        if made.st_mode & 0o7777 != meta.mode & 0o7777 {
            file.set_permissions(fs::Permissions::from_mode(meta.mode))
                .map_err(|e| t.io_err("chmod", e))?;
        }
        for (key, value) in &meta.xattrs {
            let key = OsStr::from_bytes(key);
            if let Err(e) = xattr::FileExt::set_xattr(&file, key, value) {
                self.xattr_failed(t, key, e)?;
            }
        }
        filetime::set_file_handle_times(&file, Some(meta.atime), Some(meta.mtime))
            .map_err(|e| t.io_err("set times of", e))?;
        self.record(t.host.clone());
        Ok(bytes)
    }

    fn stream(
        &mut self,
        t: &Target,
        source: &mut dyn Read,
        file: &mut File,
    ) -> Result<u64, WriteError> {
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_BUFFER];
        }
        let mut bytes = 0u64;
        loop {
            let n = match source.read(&mut self.buf) {
                Ok(0) => return Ok(bytes),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(WriteError::Content {
                        rel: t.rel.clone(),
                        source,
                    })
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| t.io_err("write", e))?;
            bytes += n as u64;
        }
    }

    /// Create a directory, or merge into the one there (which takes the new metadata); anything
    /// else there, a symlink included, is replaced. Its times are set by [`RootWriter::finish`].
    pub fn dir(&mut self, t: &mut Target, meta: &Meta) -> Result<(), WriteError> {
        if !t.is_root() {
            self.prepare(t)?;
            self.create_replacing(t, true, "create directory", || {
                rustix::fs::mkdirat(t.dir(), &t.name, Mode::from_raw_mode(0o700))
            })?;
            // A real directory now (made, or an existing one checked with lstat), so the
            // entries below it need not resolve or create it again.
            let fd = rustix::fs::openat(
                t.dir(),
                &t.name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| t.io_err("open directory", e.into()))?;
            self.remember(t.rel.clone(), t.host.clone(), Rc::new(fd));
        }
        self.settle(t, meta, Settle::Dir)?;
        self.dir_times
            .push((t.host.clone(), meta.atime, meta.mtime));
        if !t.is_root() {
            self.record(t.host.clone());
        }
        Ok(())
    }

    /// Create a symlink to `link`, stored as given: a symlink is only dangerous when followed,
    /// and nothing here follows one out of the root.
    pub fn symlink(&mut self, t: &mut Target, link: &OsStr, meta: &Meta) -> Result<(), WriteError> {
        if t.is_root() {
            return Err(t.io_err("create symlink", io::Error::from_raw_os_error(libc::EEXIST)));
        }
        self.prepare(t)?;
        self.create_replacing(t, false, "create symlink", || {
            rustix::fs::symlinkat(link, t.dir(), &t.name)
        })?;
        self.settle(t, meta, Settle::Symlink)?;
        self.record(t.host.clone());
        Ok(())
    }

    /// The host path of in-root path `rel` (not empty) as a hardlink target: its parent is
    /// followed inside the root, its last component is not (link(2) links a symlink itself).
    pub fn link_target(&self, rel: &Path) -> Result<PathBuf, WriteError> {
        let name = rel.file_name().ok_or_else(|| WriteError::Outside {
            rel: rel.to_path_buf(),
        })?;
        Ok(self
            .resolve_dir(rel.parent().unwrap_or(Path::new("")))?
            .join(name))
    }

    /// Hardlink the target to `existing`, a host path inside the root (from
    /// [`RootWriter::link_target`] or an earlier write) that must still be reached from the root
    /// through directories; linking a path to itself does nothing.
    pub fn hardlink(&mut self, t: &mut Target, existing: &Path) -> Result<(), WriteError> {
        let outside = || WriteError::Outside {
            rel: existing.to_path_buf(),
        };
        let rel = existing.strip_prefix(self.root).map_err(|_| outside())?;
        if t.host == existing {
            return Ok(());
        }
        let name = rel.file_name().ok_or_else(outside)?;
        if t.is_root() {
            return Err(t.io_err(
                "create hardlink",
                io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        // `existing` may have been resolved long before (COPY remembers where a multiply-linked
        // file was first written): link(2) would follow a parent replaced since by a symlink,
        // out of the root. Only a path still reached through directories is linked, and the
        // directory holding it is opened (without any symlink) before linking from it.
        let moved = || {
            let text = format!(
                "{} is no longer reached inside the root",
                existing.display()
            );
            t.io_err(
                "create hardlink",
                io::Error::new(io::ErrorKind::NotFound, text),
            )
        };
        let from = self
            .root_fd()?
            .open(
                rel.parent().unwrap_or(Path::new("")),
                OFlags::PATH | OFlags::DIRECTORY,
                Follow::Never,
            )
            .map_err(|_| moved())?;
        self.prepare(t)?;
        self.create_replacing(t, false, "create hardlink", || {
            rustix::fs::linkat(&from, name, t.dir(), &t.name, AtFlags::empty())
        })?;
        self.record(t.host.clone());
        Ok(())
    }

    /// Create a device node or fifo (`rdev` is ignored for a fifo).
    pub fn node(
        &mut self,
        t: &mut Target,
        kind: NodeKind,
        rdev: u64,
        meta: &Meta,
    ) -> Result<(), WriteError> {
        let (file_type, rdev) = match kind {
            NodeKind::Char => (FileType::CharacterDevice, rdev),
            NodeKind::Block => (FileType::BlockDevice, rdev),
            NodeKind::Fifo => (FileType::Fifo, 0),
        };
        if t.is_root() {
            return Err(t.io_err(
                "create device node",
                io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        self.prepare(t)?;
        let created = self.create_replacing(t, false, "create device node", || {
            rustix::fs::mknodat(
                t.dir(),
                &t.name,
                file_type,
                Mode::from_raw_mode(0o600),
                rdev,
            )
        });
        match created {
            // A fifo needs no capability, so its EPERM is a real failure.
            Err(WriteError::Io { source, .. })
                if kind != NodeKind::Fifo && source.raw_os_error() == Some(libc::EPERM) =>
            {
                return Err(WriteError::DeviceNotPermitted {
                    rel: t.rel.clone(),
                    path: t.host.clone(),
                    source,
                });
            }
            other => other?,
        }
        self.settle(t, meta, Settle::Node)?;
        self.record(t.host.clone());
        Ok(())
    }

    /// Owner, mode, xattrs and (except for directories) times of a just-created entry that is
    /// not a regular file, each set relative to the open parent without following the entry.
    fn settle(&self, t: &Target, meta: &Meta, kind: Settle) -> Result<(), WriteError> {
        if t.is_root() {
            return self.settle_root(t, meta);
        }
        let (dir, name) = (t.dir(), t.name.as_os_str());
        if let Some((uid, gid)) = meta.owner {
            // A new symlink usually has its owner already; lstat writes nothing, while lchown
            // is journalled even when it changes nothing.
            let owned = kind == Settle::Symlink
                && at::lstat_at(dir, name).is_ok_and(|st| (st.st_uid, st.st_gid) == (uid, gid));
            if !owned {
                at::lchown_at(dir, name, uid, gid).map_err(|e| t.io_err("chown", e))?;
            }
        }
        if kind != Settle::Symlink {
            at::chmod_at(dir, name, meta.mode).map_err(|e| t.io_err("chmod", e))?;
        }
        if !meta.xattrs.is_empty() {
            // `xattr::set` uses lsetxattr: never through the entry, and the parent is named
            // through its descriptor.
            let path = at::path_in(dir, name, &t.host);
            for (key, value) in &meta.xattrs {
                let key = OsStr::from_bytes(key);
                if let Err(e) = xattr::set(&path, key, value) {
                    self.xattr_failed(t, key, e)?;
                }
            }
        }
        if kind != Settle::Dir {
            // Never a call that opens the entry: opening a fifo blocks.
            at::set_times_at(dir, name, meta.atime, meta.mtime)
                .map_err(|e| t.io_err("set times of", e))?;
        }
        Ok(())
    }

    /// The root directory's own metadata (a layer's `./` entry), set through its path: the
    /// root is the caller's directory, not something an entry made.
    fn settle_root(&self, t: &Target, meta: &Meta) -> Result<(), WriteError> {
        let root = self.root;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::chown(root, Some(uid), Some(gid))
                .map_err(|e| t.io_err("chown", e))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| t.io_err("chmod", e))?;
        for (key, value) in &meta.xattrs {
            let key = OsStr::from_bytes(key);
            if let Err(e) = xattr::set(root, key, value) {
                self.xattr_failed(t, key, e)?;
            }
        }
        Ok(())
    }

    fn xattr_failed(&self, t: &Target, key: &OsStr, e: io::Error) -> Result<(), WriteError> {
        match self.opts.xattr_failures {
            XattrFailures::Ignore => {
                tracing::debug!(attr = ?key, path = %t.host.display(), error = %e, "could not copy xattr");
                Ok(())
            }
            XattrFailures::WarnUnsupported => match e.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::EPERM) => {
                    tracing::warn!(entry = %t.rel.display(), xattr = ?key, error = %e, "cannot set extended attribute; skipped");
                    Ok(())
                }
                _ => Err(t.io_err("set extended attribute on", e)),
            },
        }
    }

    /// Create an entry with `create`; when something is already at the target, replace it (see
    /// `remove_existing`) and create again, unless it is a directory and so is the new entry.
    /// Each entry is created where it goes and only when something is already there is that
    /// looked at: most entries are new, and this saves an lstat for each of them.
    fn create_replacing(
        &self,
        t: &Target,
        new_is_dir: bool,
        action: &'static str,
        create: impl Fn() -> rustix::io::Result<()>,
    ) -> Result<(), WriteError> {
        match create() {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                if self.remove_existing(t, new_is_dir)? {
                    create().map_err(|e| t.io_err(action, e.into()))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(t.io_err(action, e.into())),
        }
    }

    /// Set directory times, now that every entry is written, and return the host paths written
    /// (empty unless recording). A directory that was replaced since is left alone, and so is
    /// one no longer reached without a symlink: a parent replaced by a symlink out of the root
    /// must not lead the time change outside. Each directory is reached again from the root's
    /// descriptor through directories only.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, WriteError> {
        let times = std::mem::take(&mut self.dir_times);
        let mut ordered = times;
        if self.opts.dir_times == DirTimes::FirstWins {
            ordered.reverse();
        }
        let mut parents: HashMap<PathBuf, Option<OwnedFd>> = HashMap::new();
        for (dir, atime, mtime) in ordered {
            let err = |source| WriteError::Io {
                action: "set times of",
                rel: dir.strip_prefix(self.root).unwrap_or(&dir).to_path_buf(),
                path: dir.clone(),
                source,
            };
            let Ok(rel) = dir.strip_prefix(self.root) else {
                continue;
            };
            let Some(name) = rel.file_name() else {
                filetime::set_symlink_file_times(self.root, atime, mtime).map_err(err)?;
                continue;
            };
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            if !parents.contains_key(parent_rel) {
                if parents.len() >= MAX_OPEN_DIRS {
                    parents.clear();
                }
                let fd = self
                    .root_fd()?
                    .open(parent_rel, OFlags::PATH | OFlags::DIRECTORY, Follow::Never)
                    .ok();
                parents.insert(parent_rel.to_path_buf(), fd);
            }
            let Some(Some(parent)) = parents.get(parent_rel) else {
                continue;
            };
            match at::lstat_at(parent.as_fd(), name) {
                Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {}
                _ => continue,
            }
            at::set_times_at(parent.as_fd(), name, atime, mtime).map_err(err)?;
        }
        Ok(self.written)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Dir,
    Symlink,
    Node,
}
