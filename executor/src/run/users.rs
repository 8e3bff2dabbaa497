//! Resolves Dockerfile `USER` and `COPY --chown` values to numeric ids from the image's own
//! `/etc/passwd` and `/etc/group`, read only through [`resolve_in_root`]; it never reads the host's
//! user database and never writes anything.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::fsutil::resolve_in_root;

use super::RunError;

/// Passwd and group files larger than this are refused: a hostile image must not make us read
/// gigabytes to look up one user.
const MAX_DB_BYTES: u64 = 16 * 1024 * 1024;

/// A `USER` value turned into what the kernel needs, as runc's `GetExecUser` does it for Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every `/etc/group` entry listing the user by name, only when the
    /// `USER` value names no group (runc's rule).
    pub additional_gids: Vec<u32>,
    /// Home directory from passwd, `/` when the user has no passwd entry (Docker's default).
    pub home: String,
}

#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolve a raw `USER` value (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...) against the
/// image under `root`.
///
/// A numeric uid without passwd entry is allowed (gid 0, home `/`), as in Docker; a name that is
/// not in passwd, or a group name not in `/etc/group`, is an error.
pub fn resolve_user(root: &Path, user: &str) -> Result<ResolvedUser, RunError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // Docker treats an empty USER as root, and `:group` as root with that group.
    let user_part = if user_part.is_empty() {
        "root"
    } else {
        user_part
    };
    let numeric_uid = user_part.parse::<u32>().ok();

    let passwd_path = db_path(root, "/etc/passwd")?;
    let passwd = parse_passwd(&read_db(&passwd_path)?);
    // runc matches an entry by name or, for a numeric value, by uid; the first match wins.
    let entry = passwd
        .iter()
        .find(|e| e.name == user_part || Some(e.uid) == numeric_uid)
        .cloned();
    let mut resolved = match (entry.as_ref(), numeric_uid) {
        (Some(e), _) => ResolvedUser {
            uid: e.uid,
            gid: e.gid,
            additional_gids: Vec::new(),
            home: e.home.clone(),
        },
        (None, Some(uid)) => ResolvedUser {
            uid,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/".to_string(),
        },
        (None, None) if user_part == "root" => ResolvedUser {
            // An image without passwd (scratch, distroless-like) still runs as root by default.
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/root".to_string(),
        },
        (None, None) => {
            return Err(RunError::User {
                user: user.to_string(),
                passwd: passwd_path,
            })
        }
    };

    let group_path = db_path(root, "/etc/group")?;
    match group_part.filter(|g| !g.is_empty()) {
        Some(group) => {
            resolved.gid = lookup_group(&group_path, group)?;
        }
        None => {
            if let Some(e) = entry {
                let groups = parse_group(&read_db(&group_path)?);
                for g in groups {
                    if g.members.contains(&e.name) && !resolved.additional_gids.contains(&g.gid) {
                        resolved.additional_gids.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(resolved)
}

/// Resolve a `COPY --chown`/`ADD --chown` value to `(uid, gid)` under `root`.
///
/// The documented Dockerfile rule: "Providing a username without groupname or a UID without GID
/// will use the same numeric UID as the GID", with names translated through the image's
/// `/etc/passwd` and `/etc/group` and the build failing when they are missing. BuildKit
/// implements "username without groupname" as the user's primary gid from passwd (its
/// `readUser`), and a bare uid as gid = uid; we follow BuildKit, which is what users get today.
pub fn resolve_chown(root: &Path, spec: &str) -> Result<(u32, u32), RunError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(RunError::InvalidUser {
            user: spec.to_string(),
            reason: "the user part is empty; write --chown=<user>[:<group>]".to_string(),
        });
    }
    let (uid, mut gid) = match user_part.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let passwd_path = db_path(root, "/etc/passwd")?;
            let passwd = parse_passwd(&read_db(&passwd_path)?);
            match passwd.iter().find(|e| e.name == user_part) {
                Some(e) => (e.uid, e.gid),
                None => {
                    return Err(RunError::User {
                        user: user_part.to_string(),
                        passwd: passwd_path,
                    })
                }
            }
        }
    };
    if let Some(group) = group_part {
        if group.is_empty() {
            return Err(RunError::InvalidUser {
                user: spec.to_string(),
                reason:
                    "the group after ':' is empty; write --chown=<user>:<group> or --chown=<user>"
                        .to_string(),
            });
        }
        gid = lookup_group(&db_path(root, "/etc/group")?, group)?;
    }
    Ok((uid, gid))
}

/// A group name or numeric gid; a numeric gid need not exist in `/etc/group`.
fn lookup_group(group_path: &Path, group: &str) -> Result<u32, RunError> {
    let numeric = group.parse::<u32>().ok();
    let groups = parse_group(&read_db(group_path)?);
    if let Some(g) = groups
        .iter()
        .find(|g| g.name == group || Some(g.gid) == numeric)
    {
        return Ok(g.gid);
    }
    numeric.ok_or_else(|| RunError::Group {
        group: group.to_string(),
        group_file: group_path.to_path_buf(),
    })
}

fn db_path(root: &Path, path: &str) -> Result<PathBuf, RunError> {
    resolve_in_root(root, Path::new(path), true).map_err(|source| RunError::UserDb {
        path: root.join(path.trim_start_matches('/')),
        source,
    })
}

/// The file's text; a missing file reads as empty (runc does the same), anything but a regular
/// file is refused so a FIFO planted by the image cannot block the build.
fn read_db(path: &Path) -> Result<String, RunError> {
    let err = |source| RunError::UserDb {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(err(e)),
    };
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(MAX_DB_BYTES)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok(text)
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped, as libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f
                    .get(5)
                    .map(|s| s.to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/".to_string()),
            })
        })
        .collect()
}

/// `name:password:gid:member,member`; malformed lines are skipped.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\nbroken line\nnohome:x:1001:1002:::/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nwheel:x:10:root,builder\nbuilder:x:1000:\naudio:x:29:builder\nstaff:x:50:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn user_by_name_gets_home_and_supplementary_groups() {
        let img = image();
        let u = resolve_user(img.path(), "builder").unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29],
                home: "/home/builder".into()
            }
        );
        let root = resolve_user(img.path(), "").unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        assert_eq!(root.additional_gids, vec![10]);
    }

    #[test]
    fn numeric_users_and_explicit_groups() {
        let img = image();
        // A uid in passwd takes its gid and home; one that is not gets gid 0 and home /.
        let u = resolve_user(img.path(), "1000").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str()),
            (1000, 1000, "/home/builder")
        );
        let u = resolve_user(img.path(), "4242").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str(), u.additional_gids.len()),
            (4242, 0, "/", 0)
        );
        // An explicit group replaces the primary gid and drops supplementary groups (runc).
        let u = resolve_user(img.path(), "builder:staff").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids.len()), (1000, 50, 0));
        let u = resolve_user(img.path(), "4242:4343").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
        let u = resolve_user(img.path(), "nohome").unwrap();
        assert_eq!((u.gid, u.home.as_str()), (1002, "/"));
    }

    #[test]
    fn unknown_names_are_errors_that_say_where_we_looked() {
        let img = image();
        let err = resolve_user(img.path(), "nobody").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"nobody\"") && msg.contains("/etc/passwd"),
            "{msg}"
        );
        let err = resolve_user(img.path(), "builder:nogroup").unwrap_err();
        assert!(err.to_string().contains("\"nogroup\""), "{err}");
        assert!(resolve_chown(img.path(), "ghost").is_err());
        assert!(resolve_chown(img.path(), "builder:ghosts").is_err());
    }

    #[test]
    fn chown_follows_buildkit() {
        let img = image();
        assert_eq!(resolve_chown(img.path(), "builder").unwrap(), (1000, 1000));
        assert_eq!(resolve_chown(img.path(), "nohome").unwrap(), (1001, 1002));
        assert_eq!(resolve_chown(img.path(), "55").unwrap(), (55, 55));
        assert_eq!(resolve_chown(img.path(), "55:staff").unwrap(), (55, 50));
        assert_eq!(resolve_chown(img.path(), "builder:29").unwrap(), (1000, 29));
        assert_eq!(resolve_chown(img.path(), "10:11").unwrap(), (10, 11));
    }

    #[test]
    fn user_database_is_read_inside_the_root() {
        // The image's /etc/passwd climbs out with `..` towards a passwd file outside the root:
        // resolution must stay in the root, where that path does not exist.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "daemon:x:1:1::/:/bin/sh\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let climb = format!("../../../../../../../..{}/passwd", outside.path().display());
        std::os::unix::fs::symlink(&climb, dir.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(dir.path(), "daemon").is_err());
        assert_eq!(resolve_user(dir.path(), "root").unwrap().uid, 0);
    }
}
