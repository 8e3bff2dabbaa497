//! Removal inside a root for the writer: what a new entry replaces, whited-out paths, and
//! whole trees, each relative to an open directory and never through a symlink; protected
//! subtrees and the directories that lead to them are spared. It creates nothing.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, OFlags};

use super::{RootWriter, Target, WriteError};
use crate::rootfs::at::{self, Follow};

impl RootWriter<'_> {
    /// Remove what is at the target unless it is a directory and the new entry is one too.
    /// Returns whether the target is free now (false: a directory was kept).
    pub(super) fn remove_existing(&self, t: &Target, new_is_dir: bool) -> Result<bool, WriteError> {
        let (dir, name) = (t.dir(), t.name.as_os_str());
        let stat = match at::lstat_at(dir, name) {
            Ok(stat) => stat,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(t.io_err("inspect", e)),
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if is_dir && new_is_dir {
            return Ok(false);
        }
        self.remove_at(dir, name, &t.host, stat)
            .map_err(|e| t.io_err(if is_dir { "remove directory" } else { "remove" }, e))?;
        Ok(true)
    }

    pub(super) fn reshape(&self) {
        self.parent_cache.borrow_mut().clear();
    }

    /// Remove `host` (a file, or a directory tree without following symlinks), sparing
    /// protected subtrees and the directories that lead to them; a missing path is no error.
    /// `host` must be reached from the root through directories (as the resolver gives it).
    pub fn remove(&self, host: &Path) -> io::Result<()> {
        if self.protected.contains(host) {
            return Ok(());
        }
        let rel = host.strip_prefix(self.root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is outside the root", host.display()),
            )
        })?;
        let Some(name) = rel.file_name() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the root itself cannot be removed",
            ));
        };
        let root = self.root_fd().map_err(io::Error::other)?;
        let parent = match root.open(
            rel.parent().unwrap_or(Path::new("")),
            OFlags::PATH | OFlags::DIRECTORY,
            Follow::Never,
        ) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let stat = match at::lstat_at(parent.as_fd(), name) {
            Ok(stat) => stat,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.remove_at(parent.as_fd(), name, host, stat)
    }

    /// Remove `name` in `dir` (host path `host`, lstat `stat`), a directory tree included,
    /// sparing protected subtrees.
    fn remove_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        host: &Path,
        stat: rustix::fs::Stat,
    ) -> io::Result<()> {
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if matches!(file_type, FileType::Directory | FileType::Symlink) {
            // Removing a file cannot change how a directory path resolves; these can.
            self.reshape();
        }
        if file_type != FileType::Directory {
            return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
        }
        let sub = at::open_subdir(dir, name)?;
        for child in at::list_dir(sub.as_fd())? {
            let child_host = host.join(&child);
            if self.protected.contains(&child_host) {
                continue;
            }
            let child_stat = match at::lstat_at(sub.as_fd(), &child) {
                Ok(stat) => stat,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            self.remove_at(sub.as_fd(), &child, &child_host, child_stat)?;
        }
        if self.protected.holds(host) {
            return Ok(());
        }
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
    }
}
