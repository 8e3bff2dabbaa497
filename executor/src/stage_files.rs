//! Keeps only what later stages read from an earlier stage. After a stage that no later stage
//! builds FROM is finished, its root is pruned to the paths later `COPY --from` steps name (with
//! the symlinks leading to them), so a multi-stage build does not hold every stage's whole
//! filesystem. Works only on a private stage directory, never on `/`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};

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

/// Remove everything under `root` that `keep` does not name. Returns how many entries went.
pub fn prune(root: &Path, keep: &Keep) -> io::Result<u64> {
    if root == Path::new("/") {
        return Err(io::Error::other("refusing to prune /"));
    }
    let mut removed = 0;
    prune_dir(root, keep, &mut removed)?;
    Ok(removed)
}

fn prune_dir(dir: &Path, keep: &Keep, removed: &mut u64) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if keep.keeps_whole(&path) {
            continue;
        }
        let file_type = entry.file_type()?;
        if keep.on_the_way(&path) {
            if file_type.is_dir() {
                prune_dir(&path, keep, removed)?;
            }
            continue;
        }
        if file_type.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        *removed += 1;
    }
    Ok(())
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
}
