//! Keeps only what later stages read from an earlier stage. After a stage that no later stage
//! builds FROM is finished, its root is pruned to the paths later `COPY --from` steps name (with
//! the symlinks leading to them), so a multi-stage build does not hold every stage's whole
//! filesystem. Works only on a private stage directory, never on `/`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::fsutil::resolve_in_root;

/// What must survive in a stage root: paths kept with everything below them, and paths kept
/// only as themselves (directories and symlinks on the way to the former).
#[derive(Debug, Default)]
pub struct Keep {
    whole: BTreeSet<PathBuf>,
    single: BTreeSet<PathBuf>,
}

impl Keep {
    /// Plan what to keep of `root` for the in-image `sources` later steps copy. A source with a
    /// wildcard keeps the directory that holds the wildcard, and where each symlink it matches
    /// there leads: `COPY --from` follows a matched symlink inside the root, as BuildKit does.
    pub fn for_sources(root: &Path, sources: &[String]) -> io::Result<Keep> {
        let mut keep = Keep::default();
        for source in sources {
            let literal: PathBuf = Path::new(source)
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            let mut prefix = PathBuf::from("/");
            for component in literal.components() {
                if let Component::Normal(part) = component {
                    prefix.push(part);
                    // The entry itself (perhaps a symlink) and where it leads.
                    keep.single.insert(resolve_in_root(root, &prefix, false)?);
                    keep.single.insert(resolve_in_root(root, &prefix, true)?);
                }
            }
            keep.whole.insert(resolve_in_root(root, &literal, true)?);
            keep.matched_link_targets(root, source, &literal)?;
        }
        Ok(keep)
    }

    /// For a source whose last component is a wildcard (the only place `COPY --from` accepts
    /// one) under directory `dir`, keep the targets of the symlinks it matches there.
    fn matched_link_targets(&mut self, root: &Path, source: &str, dir: &Path) -> io::Result<()> {
        let Some((parent, pattern)) = source.rsplit_once('/') else {
            return Ok(());
        };
        if !pattern.contains(['*', '?', '[']) || parent.contains(['*', '?', '[']) {
            return Ok(());
        }
        let Ok(glob) = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
        else {
            // The step reports the bad pattern itself.
            return Ok(());
        };
        let matcher = glob.compile_matcher();
        let host_dir = resolve_in_root(root, dir, true)?;
        let Ok(entries) = std::fs::read_dir(&host_dir) else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_symlink() || !matcher.is_match(entry.file_name()) {
                continue;
            }
            let in_image = Path::new("/").join(dir).join(entry.file_name());
            self.whole.insert(resolve_in_root(root, &in_image, true)?);
        }
        Ok(())
    }

    fn keeps_whole(&self, path: &Path) -> bool {
        self.whole.iter().any(|w| path.starts_with(w))
    }

    fn on_the_way(&self, path: &Path) -> bool {
        self.single.contains(path)
            || self
                .whole
                .iter()
                .chain(self.single.iter())
                .any(|k| k.starts_with(path))
    }
}

/// Remove everything under `root` that `keep` does not name, at once. Returns how many entries
/// went. The build prunes through a [`Trash`] ([`prune_into`]); the tests of what is kept use
/// this.
#[cfg(test)]
pub fn prune(root: &Path, keep: &Keep) -> io::Result<u64> {
    prune_with(root, keep, &mut |path, is_dir| remove(path, is_dir))
}

/// [`prune`], handing every entry that goes to `trash` (moved aside now, removed on its
/// thread) instead of removing it before returning.
pub fn prune_into(root: &Path, keep: &Keep, trash: &Trash) -> io::Result<u64> {
    prune_with(root, keep, &mut |path, is_dir| trash.discard(path, is_dir))
}

type Dispose<'a> = dyn FnMut(&Path, bool) -> io::Result<()> + 'a;

fn prune_with(root: &Path, keep: &Keep, dispose: &mut Dispose<'_>) -> io::Result<u64> {
    if root == Path::new("/") {
        return Err(io::Error::other("refusing to prune /"));
    }
    let mut removed = 0;
    prune_dir(root, keep, dispose, &mut removed)?;
    Ok(removed)
}

fn prune_dir(
    dir: &Path,
    keep: &Keep,
    dispose: &mut Dispose<'_>,
    removed: &mut u64,
) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if keep.keeps_whole(&path) {
            continue;
        }
        let file_type = entry.file_type()?;
        if keep.on_the_way(&path) {
            if file_type.is_dir() {
                prune_dir(&path, keep, dispose, removed)?;
            }
            continue;
        }
        dispose(&path, file_type.is_dir())?;
        *removed += 1;
    }
    Ok(())
}

fn remove(path: &Path, is_dir: bool) -> io::Result<()> {
    if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Threads of finished builds still emptying a trash under a `--kiln-dir` (see [`Trash`]).
static DETACHED: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Wait for the trash threads of earlier builds in this process: before a build clears a
/// `--kiln-dir` they may still be emptying.
pub fn wait_detached() {
    let threads = std::mem::take(&mut *DETACHED.lock().unwrap_or_else(PoisonError::into_inner));
    for thread in threads {
        let _ = thread.join();
    }
}

/// An entry moved into the trash, and whether it is a directory.
type Discarded = (PathBuf, bool);

/// What pruning takes out of stage roots: each entry is renamed into a directory of the build's
/// own (one `rename`, however big the tree) and removed there by a helper thread, so the stages
/// waiting for a pruned one start at once instead of after thousands of unlinks. An entry that
/// cannot be moved there (another filesystem) is removed at once.
///
/// Dropped at the end of a build: it then waits for the thread, unless the work directory is
/// kept (`--kiln-dir`), where the thread goes on while the build reports its result, the next
/// build in the process waits for it ([`wait_detached`]) and a new process clears what an
/// ended one left with the rest of the directory.
pub struct Trash {
    dir: PathBuf,
    /// The queue to the removing thread and the thread, both made (with `dir`) when the first
    /// entry is discarded.
    worker: Mutex<Option<(Sender<Discarded>, JoinHandle<()>)>>,
    moved: AtomicU64,
    detach: bool,
}

impl Trash {
    /// A trash in `dir` (made when first used), on the same filesystem as the stage roots.
    pub fn new(dir: PathBuf, detach: bool) -> Trash {
        Trash {
            dir,
            worker: Mutex::new(None),
            moved: AtomicU64::new(0),
            detach,
        }
    }

    /// Move `path` into the trash and have it removed there; remove it now where it cannot be
    /// moved.
    pub fn discard(&self, path: &Path, is_dir: bool) -> io::Result<()> {
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if worker.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let (tx, rx) = std::sync::mpsc::channel::<Discarded>();
            let thread = std::thread::Builder::new()
                .name("kiln-trash".into())
                .spawn(move || {
                    for (path, is_dir) in rx {
                        if let Err(e) = remove(&path, is_dir) {
                            tracing::debug!("removing {}: {e}", path.display());
                        }
                    }
                })?;
            *worker = Some((tx, thread));
        }
        let n = self.moved.fetch_add(1, Ordering::Relaxed);
        let aside = self.dir.join(n.to_string());
        if std::fs::rename(path, &aside).is_err() {
            return remove(path, is_dir);
        }
        if let Some((tx, _)) = worker.as_ref() {
            let _ = tx.send((aside, is_dir));
        }
        Ok(())
    }
}

impl Drop for Trash {
    fn drop(&mut self) {
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((queue, thread)) = worker else {
            return;
        };
        // The thread ends once the queue is closed and empty.
        drop(queue);
        if self.detach {
            DETACHED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(thread);
        } else {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn keeps_named_paths_their_parents_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["usr/bin", "usr/lib/x", "out/sub", "etc", "src"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "usr/bin/tool",
            "usr/bin/other",
            "usr/lib/x/a.so",
            "out/sub/f",
            "out/g",
            "etc/passwd",
            "src/main.c",
        ] {
            std::fs::write(root.join(f), f).unwrap();
        }
        symlink("usr/bin", root.join("bin")).unwrap();
        let keep = Keep::for_sources(
            root,
            &["/bin/tool".into(), "/out".into(), "/usr/lib/x/*.so".into()],
        )
        .unwrap();
        prune(root, &keep).unwrap();
        for kept in [
            "bin",
            "usr/bin/tool",
            "out/sub/f",
            "out/g",
            "usr/lib/x/a.so",
        ] {
            assert!(
                std::fs::symlink_metadata(root.join(kept)).is_ok(),
                "{kept} should stay"
            );
        }
        for gone in ["usr/bin/other", "etc", "src"] {
            assert!(
                std::fs::symlink_metadata(root.join(gone)).is_err(),
                "{gone} should go"
            );
        }
        assert!(prune(Path::new("/"), &keep).is_err());
    }

    /// `COPY --from=stage /dir/* /out/` follows the symlinks it matches: their targets stay.
    #[test]
    fn keeps_the_targets_of_symlinks_a_wildcard_matches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["dir", "opt/lib", "opt/other", "srv"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["dir/f", "opt/lib/a.so", "opt/other/x", "srv/y"] {
            std::fs::write(root.join(f), f).unwrap();
        }
        symlink("/opt/lib", root.join("dir/lib")).unwrap();
        symlink("../opt/other/x", root.join("dir/x.txt")).unwrap();
        symlink("/srv", root.join("dir/skipped")).unwrap();
        let keep = Keep::for_sources(root, &["/dir/*".into(), "/dir/*.txt".into()]).unwrap();
        prune(root, &keep).unwrap();
        for kept in ["dir/f", "dir/lib", "opt/lib/a.so", "opt/other/x", "srv/y"] {
            assert!(
                std::fs::symlink_metadata(root.join(kept)).is_ok(),
                "{kept} should stay"
            );
        }
        let keep = Keep::for_sources(root, &["/dir/*.txt".into()]).unwrap();
        prune(root, &keep).unwrap();
        assert!(root.join("opt/other/x").is_file());
        assert!(std::fs::symlink_metadata(root.join("srv")).is_err());
        assert!(std::fs::symlink_metadata(root.join("opt/lib")).is_err());
    }

    /// Pruning into a trash leaves the root as pruning at once does; the trash is empty once it
    /// is dropped (waiting), or once a later build waits for it (kept work directory).
    #[test]
    fn pruned_entries_go_through_the_trash() {
        for detach in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            for d in ["keep", "big/a/b", "other"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            for n in 0..200 {
                std::fs::write(root.join(format!("big/a/b/{n}")), "x").unwrap();
            }
            std::fs::write(root.join("keep/f"), "kept").unwrap();
            std::fs::write(root.join("loose"), "x").unwrap();
            symlink("/big", root.join("link")).unwrap();
            let keep = Keep::for_sources(&root, &["/keep/f".into()]).unwrap();
            let trash_dir = dir.path().join("trash");
            let trash = Trash::new(trash_dir.clone(), detach);
            assert_eq!(prune_into(&root, &keep, &trash).unwrap(), 4);
            let left: BTreeSet<_> = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, BTreeSet::from(["keep".into()]));
            assert_eq!(
                std::fs::read_to_string(root.join("keep/f")).unwrap(),
                "kept"
            );
            drop(trash);
            if detach {
                wait_detached();
            }
            assert_eq!(std::fs::read_dir(&trash_dir).unwrap().count(), 0);
        }
    }
}
