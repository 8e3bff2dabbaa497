//! Path resolution confined to a root directory: the first step of every write into a root, so
//! that `..` and symlinks (absolute or relative) can never lead outside it. This module only
//! computes paths; it does not create or modify files.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (Linux's own limit is 40).
const MAX_SYMLINKS: usize = 255;

/// Resolve `path` (absolute or relative, as seen from inside the image) to a host path under `root`.
///
/// Symlinks met on the way are resolved as if `root` were `/`: an absolute target restarts from
/// `root`, `..` never climbs above `root`. The last component is followed only when `follow_final`
/// is true (unpacking replaces it; COPY writes through it). Components that do not exist are kept
/// literally, so the result may name a file that is yet to be created.
pub fn resolve_in_root(root: &Path, path: &Path, follow_final: bool) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0usize;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let is_final = pending.is_empty();
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&part);
        if is_final && !follow_final {
            resolved.push(part);
            break;
        }
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving {} under {}",
                        path.display(),
                        root.display()
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut target_parts = components(&target);
                target_parts.reverse();
                pending.extend(target_parts);
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(out)
}

/// Normal components of `path`, with `.`, root and prefix dropped and `..` kept for the resolver.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Lexically clean an in-image path to an absolute form without `.`/`..` (`..` stops at `/`).
pub fn clean_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn dotdot_and_absolute_links_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("/usr/bin", root.join("bin")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("/", root.join("usr/rootlink")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/bin/sh"), true).unwrap(),
            root.join("usr/bin/sh")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("../../x"), true).unwrap(),
            root.join("x")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/usr/escape/passwd"), true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/usr/rootlink/etc"), true).unwrap(),
            root.join("etc")
        );
        // The final component is left alone unless asked to follow it.
        assert_eq!(
            resolve_in_root(root, Path::new("/bin"), false).unwrap(),
            root.join("bin")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/bin"), true).unwrap(),
            root.join("usr/bin")
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        assert!(resolve_in_root(dir.path(), Path::new("/a/x"), true).is_err());
    }

    #[test]
    fn clean_abs_paths() {
        assert_eq!(clean_abs("a/./b/../c"), "/a/c");
        assert_eq!(clean_abs("/../.."), "/");
        assert_eq!(clean_abs(""), "/");
    }
}
