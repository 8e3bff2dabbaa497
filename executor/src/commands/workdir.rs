//! `WORKDIR`: sets the working directory (relative paths join the previous one) and creates it
//! in the root when missing, as Docker does, so the change lands in a layer. Directories it
//! creates belong to the current USER (BuildKit's and buildah's behaviour).

use std::path::Path;

use super::{Cacheable, Command, CommandError, CopySource, InstructionError, Outcome, StageState};
use crate::fsutil::resolve_in_root;
use crate::rootfs::{DirTimes, ImpliedDirs, Protected, RootWriter, WriterOptions, XattrFailures};

pub struct Workdir<'a>(pub &'a str);

impl Workdir<'_> {
    /// The new working directory. Docker keeps an absolute WORKDIR exactly as written (`/opt/`
    /// stays `/opt/`) and joins and cleans a relative one onto the current directory.
    fn path(&self, state: &StageState) -> Result<String, InstructionError> {
        let path = state.expand(self.0)?;
        if path.is_empty() {
            return Err(InstructionError::Invalid("WORKDIR requires a path".into()));
        }
        if path.starts_with('/') {
            return Ok(path);
        }
        let joined = state.in_image_path(&path);
        let trimmed = joined.trim_end_matches('/');
        Ok(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        })
    }
}

impl Command for Workdir<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        state.config.config.working_dir = Some(self.path(state)?);
        Ok(())
    }

    fn execute(
        &self,
        state: &mut StageState,
        _source: Option<CopySource<'_>>,
    ) -> Result<Outcome, CommandError> {
        self.configure(state)?;
        let abs = state.workdir();
        let owner = match state
            .config
            .config
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
        {
            Some(user) => {
                // BuildKit owns the directories as its file operations chown (a name through
                // passwd with its primary gid, a bare uid with gid = uid, then the group), not as
                // RUN's process user, which has gid 0 for a uid without a passwd entry.
                // `root` on an image without passwd (scratch) is only known to RUN's resolution.
                let as_run =
                    || crate::run::users::resolve_user(&state.root, user).map(|r| (r.uid, r.gid));
                let resolved = if user.starts_with(':') {
                    as_run()
                } else {
                    crate::run::users::resolve_chown(&state.root, user).or_else(|_| as_run())
                };
                Some(resolved.map_err(|e| {
                    CommandError::Invalid(format!(
                        "WORKDIR {abs}: cannot create it for USER {user}: {e}"
                    ))
                })?)
            }
            None => None,
        };
        if ensure_dir_owned(&state.root, &abs, owner)? {
            Ok(Outcome::Filesystem)
        } else {
            Ok(Outcome::ConfigOnly)
        }
    }

    fn writes_root(&self) -> bool {
        true
    }

    fn needs_root(&self, _cacheable: Cacheable) -> Option<&'static str> {
        Some("WORKDIR creates its directory in the image")
    }
}

/// Create an in-image directory (and missing parents, mode 0755, owned by root) under `root`.
/// Returns whether anything was created.
pub fn ensure_dir(root: &Path, in_image: &str) -> Result<bool, CommandError> {
    ensure_dir_owned(root, in_image, None)
}

/// Like [`ensure_dir`], giving every directory it creates to `owner` (uid, gid) when set.
pub fn ensure_dir_owned(
    root: &Path,
    in_image: &str,
    owner: Option<(u32, u32)>,
) -> Result<bool, CommandError> {
    let host = resolve_in_root(root, Path::new(in_image), true)
        .map_err(|e| CommandError::io(format!("resolving {in_image} in the image"), e))?;
    if host.is_dir() {
        return Ok(false);
    }
    // Through the root writer: each missing directory is made relative to its parent's
    // descriptor, never through a symlink swapped in meanwhile. Without an owner they are made
    // as `mkdir -p` makes them (0777 less the umask, the executor's owner).
    let opts = WriterOptions {
        implied_dirs: match owner {
            Some(owner) => ImpliedDirs::Owned(owner),
            None => ImpliedDirs::Umask,
        },
        xattr_failures: XattrFailures::Ignore,
        dir_times: DirTimes::FirstWins,
        record: false,
    };
    let mut w = RootWriter::new(root, Protected::none(), opts);
    let rel = host.strip_prefix(root).unwrap_or(Path::new(""));
    w.ensure_dir(rel).and_then(|_| w.finish()).map_err(|e| {
        CommandError::io(
            format!("creating directory {in_image}"),
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::state;

    #[test]
    fn relative_workdirs_join_and_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        assert_eq!(
            Workdir("/app").execute(&mut st, None).unwrap(),
            Outcome::Filesystem
        );
        assert_eq!(
            Workdir("sub/../src/").execute(&mut st, None).unwrap(),
            Outcome::Filesystem
        );
        assert_eq!(st.config.config.working_dir.as_deref(), Some("/app/src"));
        assert_eq!(
            Workdir("/opt/").execute(&mut st, None).unwrap(),
            Outcome::Filesystem
        );
        assert_eq!(st.config.config.working_dir.as_deref(), Some("/opt/"));
        assert!(dir.path().join("app/src").is_dir());
        assert_eq!(
            Workdir("/app").execute(&mut st, None).unwrap(),
            Outcome::ConfigOnly
        );
    }

    #[test]
    fn created_directories_belong_to_the_user() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\napp:x:1001:\n").unwrap();
        let mut st = state(dir.path());
        st.config.config.user = Some("app".into());
        Workdir("/srv/a").execute(&mut st, None).unwrap();
        for p in ["srv", "srv/a"] {
            let meta = std::fs::metadata(dir.path().join(p)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1000, 1001), "{p}");
        }
        assert_eq!(std::fs::metadata(dir.path().join("etc")).unwrap().uid(), 0);
    }

    #[test]
    fn a_bare_uid_without_passwd_entry_owns_as_uid_uid() {
        use std::os::unix::fs::MetadataExt;
        // No /etc/passwd (FROM scratch): BuildKit chowns `USER 9999` directories 9999:9999.
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        st.config.config.user = Some("9999".into());
        Workdir("/w/uid").execute(&mut st, None).unwrap();
        st.config.config.user = Some("9998:7".into());
        Workdir("/w/uid_gid").execute(&mut st, None).unwrap();
        let owner = |p: &str| {
            let m = std::fs::metadata(dir.path().join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner("w"), (9999, 9999));
        assert_eq!(owner("w/uid"), (9999, 9999));
        assert_eq!(owner("w/uid_gid"), (9998, 7));
        st.config.config.user = Some("root".into());
        Workdir("/w/root").execute(&mut st, None).unwrap();
        assert_eq!(owner("w/root"), (0, 0));
    }
}
