//! Container mode: knowing whether Kiln runs inside a container, which paths an in-place build
//! must never snapshot or overwrite there (its own directory, kernel filesystems, mount points),
//! and clearing the root between stages (kaniko's `DeleteFilesystem`), optionally moving what a
//! later stage still reads aside first. Never touches an ignored path or crosses a mount point.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::rootfs::Protected;

/// Why Kiln believes it is inside a disposable container, or `None`.
///
/// Only explicit signals count, because building in place overwrites `/`: `KILN_CONTAINER=1|0`
/// (set to 1 in Kiln's executor image; 0 forces "not a container"), a Kubernetes Pod
/// (`KUBERNETES_SERVICE_HOST`), or the `container` variable podman and systemd-nspawn set.
/// Marker files such as `/.dockerenv` are deliberately not trusted: development VMs and CI
/// machines built from container images carry them too.
pub fn detect() -> Option<String> {
    detect_from(|name| std::env::var(name).ok())
}

fn detect_from(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(v) = env("KILN_CONTAINER") {
        return match v.as_str() {
            "1" | "true" => Some("KILN_CONTAINER is set".into()),
            _ => None,
        };
    }
    if env("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()) {
        return Some("KUBERNETES_SERVICE_HOST is set (running in a Pod)".into());
    }
    match env("container") {
        Some(v) if !v.is_empty() => Some(format!("the container environment variable says {v}")),
        _ => None,
    }
}

/// Mount points listed in a mountinfo text (field 5), unescaped (`\040` is a space).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

/// Mount points of a mountinfo text that are read-only, by their own options (field 6) or their
/// filesystem's (the last field): in a Pod these are the Secret, ConfigMap, projected
/// service-account token and read-only volume mounts.
pub fn read_only_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let is_ro = |opts: &str| opts.split(',').any(|o| o == "ro");
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4)?;
            let mount_opts = fields.get(5)?;
            // The optional fields end at "-"; then type, source and the superblock's options.
            let dash = fields.iter().position(|f| *f == "-")?;
            let super_opts = fields.get(dash + 3).copied().unwrap_or_default();
            (is_ro(mount_opts) || is_ro(super_opts)).then(|| PathBuf::from(unescape_octal(point)))
        })
        .collect()
}

fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Paths an in-place build leaves alone: Kiln's directory, `/proc`, `/sys`, `/dev`, every mount
/// point except `/` (Secrets, ConfigMaps, volumes, the service-account token) and `/var/run`
/// unless `--ignore-var-run=false`.
pub fn in_place_ignore_paths(work_dir: &Path, ignore_var_run: bool) -> Vec<PathBuf> {
    // `/kaniko` too: Kiln's image links `/kaniko/executor` there for pipelines written for kaniko,
    // keeps credential helpers there, and kaniko-style Pod specs mount their docker config below
    // it. `/busybox`: the debug image's shell, which a CI job's script runs in (kaniko's debug
    // image declares it a volume for the same effect).
    let mut paths: Vec<PathBuf> = vec![
        "/proc".into(),
        "/sys".into(),
        "/dev".into(),
        "/kiln".into(),
        "/kaniko".into(),
        "/busybox".into(),
        work_dir.to_path_buf(),
    ];
    if ignore_var_run {
        paths.push("/var/run".into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    paths.extend(
        mount_points(&mountinfo)
            .into_iter()
            .filter(|p| p != Path::new("/")),
    );
    paths.sort();
    paths.dedup();
    paths
}

/// Empty `root` of everything but the ignored paths (absolute in-image paths) and the directories
/// leading to them, so that a base image unpacked next replaces the files that were there.
///
/// With `save_to`, every removed entry is moved there instead (same tree, same metadata), so an
/// earlier stage's files stay readable for a later `COPY --from`. Moving is a rename on one
/// filesystem; across filesystems the entry is copied, then removed.
pub fn clear_root(
    root: &Path,
    ignore: &[PathBuf],
    save_to: Option<&Path>,
) -> io::Result<ClearStats> {
    let mut clearer = Clearer {
        ignore: Protected::new(root, ignore),
        stats: ClearStats::default(),
        links: HashMap::new(),
    };
    if let Some(dest) = save_to {
        std::fs::create_dir_all(dest)?;
    }
    clearer.clear_dir(root, save_to)?;
    Ok(clearer.stats)
}

/// What [`clear_root`] did, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClearStats {
    /// Top-most entries removed or moved (a whole directory counts once).
    pub entries: u64,
    /// Entries that had to be copied because they were on another filesystem than the save dir.
    pub copied: u64,
}

struct Clearer {
    /// The ignored paths as host paths under the root, the subtrees the root writer protects.
    ignore: Protected,
    stats: ClearStats,
    /// Hardlinked files already copied, by (device, inode), so links stay links in a copy.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Clearer {
    fn clear_dir(&mut self, dir: &Path, save_to: Option<&Path>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if self.ignore.contains(&path) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            let dest = save_to.map(|d| d.join(entry.file_name()));
            if meta.is_dir() && self.ignore.holds(&path) {
                // Keep the directory (an ignored path lies below it); clear what else is in it.
                if let Some(dest) = &dest {
                    std::fs::create_dir_all(dest)?;
                }
                self.clear_dir(&path, dest.as_deref())?;
                if let Some(dest) = &dest {
                    copy_metadata(&path, dest, &meta)?;
                }
                continue;
            }
            self.stats.entries += 1;
            match &dest {
                None => remove_any(&path, &meta)?,
                Some(dest) => match std::fs::rename(&path, dest) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                        self.stats.copied += 1;
                        self.copy_tree(&path, dest)?;
                        remove_any(&path, &meta)?;
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// Copy an entry with its type, content, owner, mode, xattrs and mtime, never following symlinks.
    fn copy_tree(&mut self, src: &Path, dst: &Path) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(src)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(dst)?;
            for entry in std::fs::read_dir(src)? {
                let entry = entry?;
                self.copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
            }
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    return std::fs::hard_link(first, dst);
                }
                self.links
                    .insert((meta.dev(), meta.ino()), dst.to_path_buf());
            }
            std::fs::copy(src, dst)?;
        } else {
            // Devices, FIFOs and sockets: recreate the node.
            let mode = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
            let sflag = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            nix::sys::stat::mknod(dst, sflag, mode, meta.rdev()).map_err(io::Error::from)?;
        }
        copy_metadata(src, dst, &meta)
    }
}

fn remove_any(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        // std's remove_dir_all never follows symlinks; no mount point lies below (they are ignored).
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Owner, mode, xattrs and times of `src` onto `dst` (a symlink gets only its owner and times).
fn copy_metadata(src: &Path, dst: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        // After chown, which clears setuid/setgid bits.
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        if let Ok(names) = xattr::list(src) {
            for name in names {
                if let Ok(Some(value)) = xattr::get(src, &name) {
                    // Best effort: some filesystems refuse some namespaces (e.g. security.*).
                    let _ = xattr::set(dst, &name, &value);
                }
            }
        }
    }
    let atime = filetime::FileTime::from_last_access_time(meta);
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    filetime::set_symlink_file_times(dst, atime, mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_explicit_signals_mean_container() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(detect_from(env(&[])).is_none());
        assert!(detect_from(env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")])).is_some());
        assert!(detect_from(env(&[("container", "podman")])).is_some());
        assert!(detect_from(env(&[("KILN_CONTAINER", "1")])).is_some());
        assert!(detect_from(env(&[
            ("KILN_CONTAINER", "0"),
            ("KUBERNETES_SERVICE_HOST", "x")
        ]))
        .is_none());
    }

    #[test]
    fn mountinfo_mount_points() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 22 0:5 / /var/run/secrets/kubernetes.io/serviceaccount ro - tmpfs tmpfs ro\n\
                    31 22 0:6 / /my\\040dir rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(text),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"),
                PathBuf::from("/my dir")
            ]
        );
    }

    #[test]
    fn read_only_mounts_by_mount_or_superblock_options() {
        let text = "95 71 254:0 /x / rw,relatime - ext4 /dev/vda rw\n\
                    106 95 254:0 /s /kiln/.docker/config.json ro,relatime - ext4 /dev/vda rw\n\
                    30 22 0:5 / /var/run/secrets/kubernetes.io/serviceaccount rw shared:5 - tmpfs tmpfs ro,size=1k\n\
                    31 22 0:6 / /my\\040vol ro - tmpfs tmpfs rw\n\
                    32 22 0:7 / /cache rw,nosuid - ext4 /dev/vdb rw,errors=remount-ro\n";
        assert_eq!(
            read_only_mount_points(text),
            vec![
                PathBuf::from("/kiln/.docker/config.json"),
                PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"),
                PathBuf::from("/my vol"),
            ]
        );
    }

    #[test]
    fn ignore_list_has_kernel_and_own_paths() {
        let paths = in_place_ignore_paths(Path::new("/kiln/build"), true);
        for p in [
            "/proc", "/sys", "/dev", "/kiln", "/kaniko", "/busybox", "/var/run",
        ] {
            assert!(
                paths.contains(&PathBuf::from(p)),
                "{p} missing from {paths:?}"
            );
        }
        assert!(!paths.contains(&PathBuf::from("/")));
        assert!(!in_place_ignore_paths(Path::new("/kiln/build"), false)
            .contains(&PathBuf::from("/var/run")));
    }

    fn tree(root: &Path) -> Vec<String> {
        let mut out: Vec<String> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let m = e.path().symlink_metadata().unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                let extra = if m.file_type().is_symlink() {
                    format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
                } else if m.is_file() {
                    std::fs::read_to_string(e.path()).unwrap()
                } else {
                    String::new()
                };
                format!("{rel} {:o} {} {extra}", m.mode(), m.mtime())
            })
            .collect();
        out.sort();
        out
    }

    fn populate(root: &Path) {
        std::fs::create_dir_all(root.join("etc/ssl")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0").unwrap();
        std::fs::write(root.join("etc/hosts"), "mounted").unwrap();
        std::fs::write(root.join("etc/ssl/cert"), "pem").unwrap();
        std::fs::set_permissions(
            root.join("etc/ssl/cert"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::fs::create_dir_all(root.join("kiln/build")).unwrap();
        std::fs::write(root.join("kiln/executor"), "binary").unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/sh"), "shell").unwrap();
        std::fs::hard_link(root.join("bin/sh"), root.join("bin/ash")).unwrap();
        // Fixed times, so trees populated a second apart compare equal.
        let t = filetime::FileTime::from_unix_time(1000, 0);
        for e in walkdir::WalkDir::new(root).contents_first(true) {
            filetime::set_symlink_file_times(e.unwrap().path(), t, t).unwrap();
        }
    }

    #[test]
    fn clear_root_spares_ignored_paths_and_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        populate(root);
        let ignore = vec![PathBuf::from("/kiln"), PathBuf::from("/etc/hosts")];
        let stats = clear_root(root, &ignore, None).unwrap();
        assert_eq!(stats.entries, 4, "etc/passwd, etc/ssl, link, bin");
        let left = tree(root);
        let names: Vec<&str> = left.iter().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(
            names,
            vec!["etc", "etc/hosts", "kiln", "kiln/build", "kiln/executor"]
        );
    }

    #[test]
    fn clear_root_can_move_the_tree_aside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let reference = dir.path().join("reference");
        populate(&root);
        populate(&reference);
        std::fs::remove_file(reference.join("etc/hosts")).unwrap();
        std::fs::remove_dir_all(reference.join("kiln")).unwrap();
        filetime::set_file_mtime(
            reference.join("etc"),
            filetime::FileTime::from_unix_time(1000, 0),
        )
        .unwrap();
        let saved = root.join("kiln/build/saved");
        let ignore = vec![PathBuf::from("/kiln"), PathBuf::from("/etc/hosts")];
        clear_root(&root, &ignore, Some(&saved)).unwrap();
        assert_eq!(tree(&saved), tree(&reference));
        assert!(root.join("etc/hosts").exists());
        assert!(!root.join("bin").exists());
    }

    #[test]
    fn copy_keeps_types_metadata_and_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        populate(&src);
        let mut clearer = Clearer {
            ignore: Protected::none(),
            stats: ClearStats::default(),
            links: HashMap::new(),
        };
        let dst = dir.path().join("dst");
        clearer.copy_tree(&src, &dst).unwrap();
        assert_eq!(tree(&src), tree(&dst));
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&dst.join("bin/sh")), ino(&dst.join("bin/ash")));
    }
}
