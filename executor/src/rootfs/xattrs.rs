//! Which extended attributes recorded in a layer (PAX `SCHILY.xattr.*`) are applied to the
//! root: `user.*` and `security.capability` only, and of those only what the kernel accepts
//! (the writer warns about and skips what it refuses). It decides; it writes nothing.
//!
//! Why a list at all: the executor unpacks as root with CAP_SYS_ADMIN, so the kernel accepts
//! nearly anything it is given. `trusted.*` is meant for privileged host software (overlayfs
//! keeps its opaque and redirect markers there: `trusted.overlay.*`), `security.selinux`,
//! `security.ima`, `security.evm` and `security.apparmor` are policy labels of the host's
//! security modules, and `system.*` is kernel-interpreted (POSIX ACLs, NFSv4 ACLs). None of
//! them is an image's to set on the build machine.
//!
//! What others do: containerd's `archive/tar.go` (`createTarFile`, which BuildKit's and
//! containerd's layer appliers use) sets every `SCHILY.xattr.` record and only skips those the
//! kernel refuses with ENOTSUP (and EPERM for `user.*` on special files), leaving the filtering
//! to the kernel's permission checks, which a root builder passes. moby's archive package writes
//! only `security.capability` into the layers Docker builds (`ReadSecurityXattrToTarHeader`),
//! so images from Docker carry nothing this list drops; POSIX ACLs that buildah or BuildKit
//! recorded in a layer are not restored from it. COPY is not affected: it copies a source's
//! attributes (default ACLs included) itself, not through this list.

/// Whether an extended attribute recorded in a layer is applied.
pub fn applied(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// Drops from `xattrs` (an entry's, for messages `entry`) those that are not applied, each
/// logged at debug, and returns how many were dropped.
pub fn retain_applied(xattrs: &mut Vec<(Vec<u8>, Vec<u8>)>, entry: &str) -> u64 {
    let before = xattrs.len();
    xattrs.retain(|(name, _)| {
        let keep = applied(name);
        if !keep {
            tracing::debug!(
                entry,
                xattr = %String::from_utf8_lossy(name),
                "extended attribute not applied (only user.* and security.capability are)"
            );
        }
        keep
    });
    (before - xattrs.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_and_file_capabilities_are_applied() {
        for name in ["user.kiln", "user.mime_type", "security.capability"] {
            assert!(applied(name.as_bytes()), "{name}");
        }
        for name in [
            "trusted.overlay.opaque",
            "trusted.kiln",
            "security.selinux",
            "security.ima",
            "security.evm",
            "security.capability2",
            "system.posix_acl_access",
            "system.posix_acl_default",
            "system.nfs4_acl",
            "user",
            "users.kiln",
            "",
        ] {
            assert!(!applied(name.as_bytes()), "{name}");
        }
        let mut x = vec![
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"trusted.b".to_vec(), b"2".to_vec()),
            (b"security.selinux".to_vec(), b"3".to_vec()),
            (b"security.capability".to_vec(), b"4".to_vec()),
        ];
        assert_eq!(retain_applied(&mut x, "e"), 2);
        let names: Vec<&[u8]> = x.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, [&b"user.a"[..], b"security.capability"]);
    }
}
