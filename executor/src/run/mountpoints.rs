//! Creates the files and directories that chroot mounts need inside the build root, and removes
//! exactly those it created once the command is over so the snapshot never sees them. It must not
//! modify or remove anything that was already in the image.

use std::path::{Path, PathBuf};

use filetime::FileTime;

use crate::fsutil::resolve_in_root;

use super::RunError;

/// Entries created for one run, in creation order, and the times of the existing directory each
/// new chain was created in (restored after removal, so that directory does not look modified).
#[derive(Default)]
pub(super) struct MountPoints {
    created: Vec<(PathBuf, bool)>,
    parent_times: Vec<(PathBuf, FileTime, FileTime)>,
}

impl MountPoints {
    /// A directory to mount on at in-image `path`; created (with missing parents) when absent.
    pub(super) fn dir(&mut self, root: &Path, path: &str) -> Result<PathBuf, RunError> {
        let target = resolve(root, path)?;
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => return Ok(target),
            Ok(_) => {
                return Err(RunError::Setup {
                    what: format!(
                        "{path} exists in the image but is not a directory ({})",
                        target.display()
                    ),
                    source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(setup(path, &target, source)),
        }
        self.create_parents(root, path, &target)?;
        std::fs::create_dir(&target).map_err(|e| setup(path, &target, e))?;
        self.created.push((target.clone(), true));
        Ok(target)
    }

    /// A regular file to bind-mount on at in-image `path` (following a final symlink, as a bind
    /// mount does). `None` when the image has something else there, which is left alone.
    pub(super) fn file(&mut self, root: &Path, path: &str) -> Result<Option<PathBuf>, RunError> {
        let target = resolve(root, path)?;
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_file() => return Ok(Some(target)),
            Ok(_) => {
                tracing::warn!(
                    "{path} in the image is not a regular file ({}); the host's is not provided",
                    target.display()
                );
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(setup(path, &target, source)),
        }
        self.create_parents(root, path, &target)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| setup(path, &target, e))?;
        self.created.push((target.clone(), false));
        Ok(Some(target))
    }

    /// Create the missing directories above `target`, remembering the times of the first
    /// existing ancestor before it is modified.
    fn create_parents(&mut self, root: &Path, path: &str, target: &Path) -> Result<(), RunError> {
        let mut missing = Vec::new();
        let mut cur = target.parent();
        while let Some(dir) = cur {
            if dir.symlink_metadata().is_ok() || dir == root {
                break;
            }
            missing.push(dir.to_path_buf());
            cur = dir.parent();
        }
        let existing = cur.unwrap_or(root);
        let meta = existing
            .symlink_metadata()
            .map_err(|e| setup(path, existing, e))?;
        if !meta.is_dir() {
            return Err(RunError::Setup {
                what: format!(
                    "cannot create {path}: {} is not a directory",
                    existing.display()
                ),
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        self.parent_times.push((
            existing.to_path_buf(),
            FileTime::from_last_access_time(&meta),
            FileTime::from_last_modification_time(&meta),
        ));
        for dir in missing.into_iter().rev() {
            std::fs::create_dir(&dir).map_err(|e| setup(path, &dir, e))?;
            self.created.push((dir, true));
        }
        Ok(())
    }

    /// Remove what was created, newest first, then restore the parents' times. Something the
    /// command put into a directory we created keeps that directory (it belongs to the step).
    pub(super) fn cleanup(&mut self) {
        for (path, is_dir) in self.created.drain(..).rev() {
            let res = if is_dir {
                std::fs::remove_dir(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    "cannot remove mount point {} made for the run: {e}",
                    path.display()
                ),
            }
        }
        for (dir, atime, mtime) in self.parent_times.drain(..).rev() {
            match filetime::set_symlink_file_times(&dir, atime, mtime) {
                Ok(()) => {}
                // A directory made for an earlier mount point of this run, removed above.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot restore the times of {}: {e}", dir.display()),
            }
        }
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn resolve(root: &Path, path: &str) -> Result<PathBuf, RunError> {
    resolve_in_root(root, Path::new(path), true).map_err(|source| RunError::Setup {
        what: format!("resolving {path} under {}", root.display()),
        source,
    })
}

fn setup(path: &str, host: &Path, source: std::io::Error) -> RunError {
    RunError::Setup {
        what: format!("mount point for {path} ({})", host.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_points_are_removed_and_existing_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("proc")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), "mine").unwrap();
        std::os::unix::fs::symlink("../run/resolv/resolv.conf", root.join("etc/resolv.conf"))
            .unwrap();
        let old = FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(root, old, old).unwrap();

        let mut points = MountPoints::default();
        assert_eq!(points.dir(root, "/proc").unwrap(), root.join("proc"));
        assert_eq!(points.dir(root, "/sys").unwrap(), root.join("sys"));
        assert_eq!(
            points.file(root, "/etc/hosts").unwrap(),
            Some(root.join("etc/hosts"))
        );
        // A symlinked resolv.conf is followed inside the root; its missing target is created.
        assert_eq!(
            points.file(root, "/etc/resolv.conf").unwrap(),
            Some(root.join("run/resolv/resolv.conf"))
        );
        assert!(root.join("sys").is_dir() && root.join("run/resolv/resolv.conf").is_file());
        points.cleanup();

        assert!(root.join("proc").is_dir());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "mine"
        );
        assert!(!root.join("sys").exists() && !root.join("run").exists());
        assert!(root
            .join("etc/resolv.conf")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
        let meta = root.metadata().unwrap();
        assert_eq!(FileTime::from_last_modification_time(&meta), old);
    }

    #[test]
    fn an_empty_root_is_left_empty_with_its_times() {
        // FROM scratch: /etc is made for the first file and is the existing parent of the
        // second; both are gone afterwards and the root's times are the old ones.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let old = FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(root, old, old).unwrap();
        let mut points = MountPoints::default();
        points.file(root, "/etc/hosts").unwrap();
        points.file(root, "/etc/resolv.conf").unwrap();
        assert!(root.join("etc/resolv.conf").is_file());
        points.cleanup();
        assert_eq!(std::fs::read_dir(root).unwrap().count(), 0);
        let meta = root.metadata().unwrap();
        assert_eq!(FileTime::from_last_modification_time(&meta), old);
    }

    #[test]
    fn a_file_where_a_directory_is_needed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("proc"), "").unwrap();
        let mut points = MountPoints::default();
        assert!(points.dir(dir.path(), "/proc").is_err());
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::create_dir(dir.path().join("etc/hosts")).unwrap();
        assert_eq!(points.file(dir.path(), "/etc/hosts").unwrap(), None);
    }
}
