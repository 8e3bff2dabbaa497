//! Knowing whether Kiln runs inside a container, and which paths an in-place build must never
//! snapshot or overwrite there (its own directory, kernel filesystems, mount points).
//! Reads /proc and the environment only; changes nothing.

use std::path::{Path, PathBuf};

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

fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
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
    let mut paths: Vec<PathBuf> = vec!["/proc".into(), "/sys".into(), "/dev".into(), "/kiln".into(), work_dir.to_path_buf()];
    if ignore_var_run {
        paths.push("/var/run".into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    paths.extend(mount_points(&mountinfo).into_iter().filter(|p| p != Path::new("/")));
    paths.sort();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_explicit_signals_mean_container() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(detect_from(env(&[])).is_none());
        assert!(detect_from(env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")])).is_some());
        assert!(detect_from(env(&[("container", "podman")])).is_some());
        assert!(detect_from(env(&[("KILN_CONTAINER", "1")])).is_some());
        assert!(detect_from(env(&[("KILN_CONTAINER", "0"), ("KUBERNETES_SERVICE_HOST", "x")])).is_none());
    }

    #[test]
    fn mountinfo_mount_points() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 22 0:5 / /var/run/secrets/kubernetes.io/serviceaccount ro - tmpfs tmpfs ro\n\
                    31 22 0:6 / /my\\040dir rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(text),
            vec![PathBuf::from("/"), PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"), PathBuf::from("/my dir")]
        );
    }

    #[test]
    fn ignore_list_has_kernel_and_own_paths() {
        let paths = in_place_ignore_paths(Path::new("/kiln/build"), true);
        for p in ["/proc", "/sys", "/dev", "/kiln", "/var/run"] {
            assert!(paths.contains(&PathBuf::from(p)), "{p} missing from {paths:?}");
        }
        assert!(!paths.contains(&PathBuf::from("/")));
        assert!(!in_place_ignore_paths(Path::new("/kiln/build"), false).contains(&PathBuf::from("/var/run")));
    }
}
