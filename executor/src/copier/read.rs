//! The read side of COPY: a source opened inside the directory it is confined to (the build
//! context, a stage's or image's root) and walked by descriptor. The source path is resolved
//! inside that directory ([`resolve_in_root`]: symlinks, absolute ones included, lead nowhere
//! above it), opened from the directory's descriptor ([`RootFd`]), and everything below a
//! directory is opened relative to its parent with `O_NOFOLLOW`, so no symlink in the source is
//! ever followed by the kernel, and nothing swapped in meanwhile is either. It writes nothing.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, Stat};

use crate::fsutil::resolve_in_root;
use crate::rootfs::{Follow, Resolution, RootFd};

/// One COPY source: the directory it may not leave, the path inside it, and the name it takes.
#[derive(Debug, Clone)]
pub struct Source {
    /// The directory the source is confined to: the build context, the root of a stage or
    /// image, or `/` for a host file of the executor's own (a heredoc, a download).
    pub root: PathBuf,
    /// The source inside `root`, as asked for: its symlinks are resolved inside `root`, the
    /// last one too (COPY copies what a top-level symlink points to).
    pub path: PathBuf,
    /// The name a file source takes inside a destination directory: the name asked for or
    /// matched, not that of a symlink's target (BuildKit names it after the source path).
    pub name: OsString,
    /// The path the source was named by on the host, for `.dockerignore` and messages; entries
    /// below a directory source are shown below it.
    pub shown: PathBuf,
}

impl Source {
    /// A source inside `root` at in-root path `path`, named `name`.
    pub fn in_root(root: &Path, path: &Path, name: &OsStr) -> Source {
        let mut shown = root.to_path_buf();
        shown.extend(path.iter().filter(|c| *c != OsStr::new("/")));
        Source {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
            name: name.to_os_string(),
            shown,
        }
    }
}

/// A host path of the executor's own, resolved as the kernel would (inside `/`).
impl From<PathBuf> for Source {
    fn from(path: PathBuf) -> Source {
        Source {
            root: PathBuf::from("/"),
            name: path.file_name().unwrap_or_default().to_os_string(),
            shown: path.clone(),
            path,
        }
    }
}

impl From<&Path> for Source {
    fn from(path: &Path) -> Source {
        Source::from(path.to_path_buf())
    }
}

/// An entry of a source, opened for copying.
pub(super) enum Opened {
    /// A directory, readable (its entries and xattrs are read through it).
    Dir(File),
    /// A regular file, readable.
    File(File),
    Symlink(OsString),
    /// A device node, fifo or socket: copied from its lstat alone, never opened.
    Other,
}

/// Open `src` for copying: its lstat (after resolution) and the opened entry. A path that
/// resolves to nothing is a NotFound error.
pub(super) fn open_source(src: &Source, resolution: Resolution) -> io::Result<(Stat, Opened)> {
    let resolved = resolve_in_root(&src.root, &src.path, true)?;
    let rel = resolved.strip_prefix(&src.root).map_err(|_| {
        io::Error::other(format!(
            "{} resolves outside {}",
            src.path.display(),
            src.root.display()
        ))
    })?;
    let root = RootFd::new(&src.root, resolution)?;
    let Some(name) = rel.file_name() else {
        let dir = File::from(root.open(
            Path::new(""),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Follow::InRoot,
        )?);
        let stat = rustix::fs::fstat(&dir)?;
        return Ok((stat, Opened::Dir(dir)));
    };
    let parent = root.open_dir(rel.parent().unwrap_or(Path::new("")))?;
    let stat = crate::rootfs::lstat_at(parent.as_fd(), name)?;
    if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
        // The resolver followed every symlink: one here was put there since.
        return Err(changed(&src.shown));
    }
    let opened = open_entry(parent.as_fd(), name, &stat, &src.shown)?;
    Ok((stat, opened))
}

/// Open `name` in `dir`, whose lstat is `stat`, as its type asks; never through a symlink, and
/// only if it is still the entry that was looked at.
pub(super) fn open_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    stat: &Stat,
    shown: &Path,
) -> io::Result<Opened> {
    let reopen = |flags: OFlags| -> io::Result<File> {
        let fd = rustix::fs::openat(
            dir,
            name,
            flags | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let now = rustix::fs::fstat(&fd)?;
        if (now.st_dev, now.st_ino) != (stat.st_dev, stat.st_ino) {
            return Err(changed(shown));
        }
        Ok(File::from(fd))
    };
    Ok(match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => Opened::Dir(reopen(OFlags::RDONLY | OFlags::DIRECTORY)?),
        // O_NONBLOCK: were it swapped for a fifo, the open would not hang (the check above
        // then refuses it); reads of a regular file ignore the flag.
        FileType::RegularFile => Opened::File(reopen(OFlags::RDONLY | OFlags::NONBLOCK)?),
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
            Opened::Symlink(OsString::from_vec(target.into_bytes()))
        }
        _ => Opened::Other,
    })
}

fn changed(shown: &Path) -> io::Error {
    io::Error::other(format!(
        "{} changed while it was being copied",
        shown.display()
    ))
}
