//! The one writer of untrusted entries into a root: creates or replaces files, directories,
//! symlinks, hardlinks and device nodes, settles their owner, mode, xattrs and times, and sets
//! directory times last. Every path it writes was resolved inside the root, nothing is written
//! through a symlink, and protected subtrees are never removed. It decides nothing about what
//! to write: layers, archives and COPY bring their own semantics.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::resolve::resolve_in_root;
use super::Protected;

const COPY_BUFFER: usize = 256 * 1024;

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
    /// The parent exists as a directory (made, or remembered from an earlier entry).
    ready: bool,
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
    opts: WriterOptions,
    protected: Protected,
    /// Parent directories resolved and created so far, in-root path → host path: resolving
    /// costs an lstat per component, and a tree has far fewer directories than entries. Every
    /// component a remembered resolution went through exists (as a directory, or a symlink it
    /// followed), so only removing a directory or a symlink can change one: creating an entry
    /// where one exists goes through such a removal. Emptied on every such removal.
    parent_cache: RefCell<HashMap<PathBuf, PathBuf>>,
    /// How many directory times were recorded when a directory or symlink was last removed:
    /// only a path resolved before such a removal can lead somewhere else now.
    reshaped_at: Cell<usize>,
    /// Directory host paths with their times, set last so that writing children does not
    /// disturb them.
    dir_times: Vec<(PathBuf, FileTime, FileTime)>,
    written: Vec<PathBuf>,
    buf: Vec<u8>,
}

impl<'r> RootWriter<'r> {
    pub fn new(root: &'r Path, protected: Protected, opts: WriterOptions) -> Self {
        RootWriter {
            root,
            opts,
            protected,
            parent_cache: RefCell::new(HashMap::new()),
            reshaped_at: Cell::new(0),
            dir_times: Vec::new(),
            written: Vec::new(),
            buf: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.root
    }

    pub fn protected(&self) -> &Protected {
        &self.protected
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
                ready: true,
            });
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let cached = self.parent_cache.borrow().get(parent_rel).cloned();
        let (parent, ready) = match cached {
            Some(parent) => (parent, true),
            None => (self.resolve_dir(parent_rel)?, false),
        };
        Ok(Target {
            host: parent.join(name),
            parent,
            parent_rel: parent_rel.to_path_buf(),
            rel: rel.to_path_buf(),
            ready,
        })
    }

    /// Create the target's missing parent directories (see [`ImpliedDirs`]).
    pub fn prepare(&mut self, t: &mut Target) -> Result<(), WriteError> {
        if t.ready {
            return Ok(());
        }
        self.make_dirs(&t.parent, &t.parent_rel)?;
        self.parent_cache
            .borrow_mut()
            .insert(t.parent_rel.clone(), t.parent.clone());
        t.ready = true;
        Ok(())
    }

    /// Make sure in-root directory `rel` exists, following symlinks inside the root (the last
    /// component too); missing directories are made as [`ImpliedDirs`] says, existing ones are
    /// left untouched. Returns its host path.
    pub fn ensure_dir(&mut self, rel: &Path) -> Result<PathBuf, WriteError> {
        let host = self.resolve_dir(rel)?;
        self.make_dirs(&host, rel)?;
        self.parent_cache
            .borrow_mut()
            .insert(rel.to_path_buf(), host.clone());
        Ok(host)
    }

    /// Create `host` (a resolved path, so free of symlinks) and its missing ancestors.
    fn make_dirs(&mut self, host: &Path, rel: &Path) -> Result<(), WriteError> {
        let io_err = |action, path: &Path, source| WriteError::Io {
            action,
            rel: rel.to_path_buf(),
            path: path.to_path_buf(),
            source,
        };
        let owner = match self.opts.implied_dirs {
            ImpliedDirs::Umask => {
                return fs::create_dir_all(host)
                    .map_err(|e| io_err("create parent directories", host, e));
            }
            ImpliedDirs::Owned(owner) => owner,
        };
        let mut missing = Vec::new();
        let mut dir = host;
        while dir != self.root {
            match fs::symlink_metadata(dir) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(WriteError::NotADirectory {
                        rel: dir.strip_prefix(self.root).unwrap_or(dir).to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(dir),
                Err(e) => return Err(io_err("inspect", dir, e)),
            }
            dir = match dir.parent() {
                Some(parent) => parent,
                None => break,
            };
        }
        for dir in missing.into_iter().rev() {
            fs::create_dir(dir).map_err(|e| io_err("create directory", dir, e))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| io_err("chmod", dir, e))?;
            std::os::unix::fs::lchown(dir, Some(owner.0), Some(owner.1))
                .map_err(|e| io_err("chown", dir, e))?;
            self.record(dir.to_path_buf());
        }
        Ok(())
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
        self.prepare(t)?;
        // O_EXCL fails on whatever is there, a symlink included (never followed).
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&t.host)
        };
        let mut file = match open() {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(t, false)?;
                open().map_err(|e| t.io_err("create file", e))?
            }
            Err(e) => return Err(t.io_err("create file", e)),
        };
        let bytes = match content {
            Content::File(source) => {
                io::copy(source, &mut file).map_err(|e| t.io_err("write", e))?
            }
            Content::Stream(source) => self.stream(t, source, &mut file)?,
        };
        // Through the open handle: no path lookup, so nothing can be swapped underneath.
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| t.io_err("chown", e))?;
        }
        // After chown, which clears setuid/setgid bits.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| t.io_err("chmod", e))?;
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
        if t.host != self.root {
            self.prepare(t)?;
            self.create_replacing(t, true, "create directory", || {
                fs::DirBuilder::new().mode(0o700).create(&t.host)
            })?;
            // A real directory now (made, or an existing one checked with lstat), so the
            // entries below it need not resolve or create it again.
            self.parent_cache
                .borrow_mut()
                .insert(t.rel.clone(), t.host.clone());
        }
        self.settle(t, meta, Settle::Dir)?;
        self.dir_times
            .push((t.host.clone(), meta.atime, meta.mtime));
        if t.host != self.root {
            self.record(t.host.clone());
        }
        Ok(())
    }

    /// Create a symlink to `link`, stored as given: a symlink is only dangerous when followed,
    /// and nothing here follows one out of the root.
    pub fn symlink(&mut self, t: &mut Target, link: &OsStr, meta: &Meta) -> Result<(), WriteError> {
        self.prepare(t)?;
        self.create_replacing(t, false, "create symlink", || {
            std::os::unix::fs::symlink(link, &t.host)
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
        if !existing.starts_with(self.root) {
            return Err(WriteError::Outside {
                rel: existing.to_path_buf(),
            });
        }
        if t.host == existing {
            return Ok(());
        }
        // `existing` may have been resolved long before (COPY remembers where a multiply-linked
        // file was first written): link(2) would follow a parent replaced since by a symlink,
        // out of the root. Only a path still reached through directories is linked.
        let rel = existing.strip_prefix(self.root).unwrap_or(existing);
        match resolve_in_root(self.root, rel, false) {
            Ok(resolved) if resolved == existing => {}
            _ => {
                let moved = format!(
                    "{} is no longer reached inside the root",
                    existing.display()
                );
                return Err(t.io_err(
                    "create hardlink",
                    io::Error::new(io::ErrorKind::NotFound, moved),
                ));
            }
        }
        self.prepare(t)?;
        self.create_replacing(t, false, "create hardlink", || {
            fs::hard_link(existing, &t.host)
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
        use nix::sys::stat::SFlag;
        let sflag = match kind {
            NodeKind::Char => SFlag::S_IFCHR,
            NodeKind::Block => SFlag::S_IFBLK,
            NodeKind::Fifo => SFlag::S_IFIFO,
        };
        self.prepare(t)?;
        self.create_replacing(t, false, "create device node", || {
            nix::sys::stat::mknod(
                &t.host,
                sflag,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                rdev,
            )
            .map_err(io::Error::from)
        })?;
        self.settle(t, meta, Settle::Node)?;
        self.record(t.host.clone());
        Ok(())
    }

    /// Owner, mode, xattrs and (except for directories) times of a just-created entry that is
    /// not a regular file.
    fn settle(&self, t: &Target, meta: &Meta, kind: Settle) -> Result<(), WriteError> {
        let host = &t.host;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::lchown(host, Some(uid), Some(gid))
                .map_err(|e| t.io_err("chown", e))?;
        }
        if kind != Settle::Symlink {
            // `host` was just created or checked to be a non-symlink, so this does not follow one.
            fs::set_permissions(host, fs::Permissions::from_mode(meta.mode))
                .map_err(|e| t.io_err("chmod", e))?;
        }
        for (key, value) in &meta.xattrs {
            let key = OsStr::from_bytes(key);
            // `xattr::set` uses lsetxattr: never through a symlink.
            if let Err(e) = xattr::set(host, key, value) {
                self.xattr_failed(t, key, e)?;
            }
        }
        if kind != Settle::Dir {
            // Never a call that opens the path: opening a fifo blocks.
            filetime::set_symlink_file_times(host, meta.atime, meta.mtime)
                .map_err(|e| t.io_err("set times of", e))?;
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
        create: impl Fn() -> io::Result<()>,
    ) -> Result<(), WriteError> {
        match create() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if self.remove_existing(t, new_is_dir)? {
                    create().map_err(|e| t.io_err(action, e))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(t.io_err(action, e)),
        }
    }

    /// Remove what is at the target unless it is a directory and the new entry is one too.
    /// Returns whether the target is free now (false: a directory was kept).
    fn remove_existing(&self, t: &Target, new_is_dir: bool) -> Result<bool, WriteError> {
        let host = &t.host;
        let meta = match fs::symlink_metadata(host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(t.io_err("inspect", e)),
        };
        if meta.is_dir() && new_is_dir {
            return Ok(false);
        }
        if meta.is_dir() || meta.file_type().is_symlink() {
            // Removing a file cannot change how a directory path resolves; these can.
            self.reshape();
        }
        if meta.is_dir() {
            self.remove_tree(host)
                .map_err(|e| t.io_err("remove directory", e))?;
        } else {
            fs::remove_file(host).map_err(|e| t.io_err("remove", e))?;
        }
        Ok(true)
    }

    fn reshape(&self) {
        self.parent_cache.borrow_mut().clear();
        self.reshaped_at.set(self.dir_times.len());
    }

    /// Remove `host` (a file, or a directory tree without following symlinks), sparing
    /// protected subtrees and the directories that lead to them; a missing path is no error.
    pub fn remove(&self, host: &Path) -> io::Result<()> {
        if self.protected.contains(host) {
            return Ok(());
        }
        let meta = match fs::symlink_metadata(host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.is_dir() || meta.file_type().is_symlink() {
            // As in `remove_existing`: only these change how a path resolves.
            self.reshape();
        }
        if meta.is_dir() {
            self.remove_tree(host)
        } else {
            fs::remove_file(host)
        }
    }

    fn remove_tree(&self, dir: &Path) -> io::Result<()> {
        if !self.protected.holds(dir) {
            // std's remove_dir_all never follows symlinks inside the tree.
            return fs::remove_dir_all(dir);
        }
        for child in fs::read_dir(dir)? {
            self.remove(&child?.path())?;
        }
        Ok(())
    }

    /// Set directory times, now that every entry is written, and return the host paths written
    /// (empty unless recording). A directory that was replaced since is left alone, and so is
    /// one no longer reached without a symlink: a parent replaced by a symlink out of the root
    /// must not lead the time change outside.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, WriteError> {
        let times = std::mem::take(&mut self.dir_times);
        let stale = self.reshaped_at.get();
        let mut ordered: Vec<_> = times.into_iter().enumerate().collect();
        if self.opts.dir_times == DirTimes::FirstWins {
            ordered.reverse();
        }
        for (index, (dir, atime, mtime)) in ordered {
            if !self.still_a_dir(&dir, index < stale) {
                continue;
            }
            filetime::set_symlink_file_times(&dir, atime, mtime).map_err(|source| {
                WriteError::Io {
                    action: "set times of",
                    rel: dir.strip_prefix(self.root).unwrap_or(&dir).to_path_buf(),
                    path: dir.clone(),
                    source,
                }
            })?;
        }
        Ok(self.written)
    }

    /// Whether `dir` (a host path that was resolved inside the root) is still a directory
    /// reached from the root through directories only; `recheck` when something was removed
    /// after it was written.
    fn still_a_dir(&self, dir: &Path, recheck: bool) -> bool {
        if recheck {
            // A component of `dir` may be a symlink now.
            let rel = dir.strip_prefix(self.root).unwrap_or(dir);
            match resolve_in_root(self.root, rel, true) {
                Ok(resolved) if resolved == dir => {}
                _ => return false,
            }
        }
        fs::symlink_metadata(dir)
            .map(|m| m.is_dir())
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Dir,
    Symlink,
    Node,
}
