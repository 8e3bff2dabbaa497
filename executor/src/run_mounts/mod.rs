//! `RUN --mount`: turns a step's mount specs into host-side sources (a secret file Kiln writes
//! under its work directory, a persistent cache directory (seeded from a stage or an image with
//! `from=`), a copy of the build context, an earlier stage's or an image's files) and mounts for
//! the run sandbox, which mounts them in the step's private mount namespace only. What
//! this prepares lives outside the build root and is removed (or, for caches, unlocked) when the
//! [`StepMounts`] is dropped, after the step; the mount points the sandbox made are gone before
//! the snapshot, so no mount target's contents reach a layer.
//!
//! Secrets come from `--secret`, never from the Dockerfile: the cache key holds the mount spec
//! as written, not the secret's value, and nothing here logs a value.

mod from;
pub mod spec;
mod ssh;
pub mod ssh_keys;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::context::IgnoreMatcher;
use crate::run::{StepMount, StepMountKind};
pub use from::{mount_froms, FromRoot};
pub use spec::{parse_mount, MountSpec, Sharing};

/// BuildKit's limit on a secret's size (`secretsprovider.MaxSecretSize`).
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// Where a `--secret` is read from when a step mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// What a `--ssh` id serves: an agent's socket, forwarded, or key files, served by Kiln's own
/// agent.
#[derive(Debug, Clone)]
pub enum SshSource {
    Agent(PathBuf),
    Keys(Arc<ssh_keys::Keyring>),
}

/// What `RUN --mount` needs from the build: its flags and where to keep things.
#[derive(Debug, Clone, Default)]
pub struct MountEnv {
    /// `--secret`, by id.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--mount-cache-dir`, or the default (see the README).
    pub cache_dir: PathBuf,
    /// Scratch space of the build for secret files and context copies.
    pub work_dir: PathBuf,
    /// The build context's directory and `.dockerignore` rules.
    pub context: Option<(PathBuf, IgnoreMatcher)>,
    /// Roots of the earlier stages and images the step mounts (`from=` as written).
    pub froms: BTreeMap<String, FromRoot>,
    /// `--ssh`, by id.
    pub ssh: BTreeMap<String, SshSource>,
}

/// Read one `--ssh` value as docker buildx does: `ID` (the agent at `$SSH_AUTH_SOCK`) or
/// `ID=PATH[,PATH...]`, each path an agent's socket or a private key file, as BuildKit reads them:
/// one socket, or any number of key files (read now, so that a bad one fails the build at once),
/// never both.
pub fn parse_ssh_flag(value: &str) -> Result<(String, SshSource), String> {
    let (id, paths) = match value.split_once('=') {
        Some((id, paths)) => (id.to_string(), paths.to_string()),
        None => (
            value.to_string(),
            std::env::var("SSH_AUTH_SOCK").map_err(|_| {
                format!("--ssh {value}: SSH_AUTH_SOCK is not set: give the agent socket or key files as --ssh {value}=<path>[,<path>...]")
            })?,
        ),
    };
    if id.is_empty() || paths.is_empty() {
        return Err(format!(
            "--ssh {value:?}: give ID or ID=<agent socket or key file>[,<key file>...]"
        ));
    }
    use std::os::unix::fs::FileTypeExt;
    let mut socket = None;
    let mut keys = Vec::new();
    for path in paths.split(',') {
        if path.is_empty() {
            return Err(format!("--ssh {id}: an empty path in {paths:?}"));
        }
        if socket.is_some() {
            return Err(format!(
                "--ssh {id}: one agent socket only, and no key files beside it"
            ));
        }
        let meta = std::fs::metadata(path).map_err(|e| format!("--ssh {id}: {path}: {e}"))?;
        if meta.file_type().is_socket() {
            if !keys.is_empty() {
                return Err(format!(
                    "--ssh {id}: {path} is an agent socket beside key files: give one socket or key files"
                ));
            }
            socket = Some(PathBuf::from(path));
            continue;
        }
        keys.push(ssh_keys::load_key(Path::new(path)).map_err(|e| format!("--ssh {id}: {e}"))?);
    }
    let source = match socket {
        Some(socket) => SshSource::Agent(socket),
        None => SshSource::Keys(Arc::new(
            ssh_keys::Keyring::new(keys).map_err(|e| format!("--ssh {id}: {e}"))?,
        )),
    };
    Ok((id, source))
}

/// Read one `--secret` value as docker buildx does (`id=ID[,src=PATH|,env=VAR][,type=file|env]`);
/// with neither `src` nor `env`, BuildKit's rule: the variable `ID` if set, else the file `ID`.
pub fn parse_secret_flag(value: &str) -> Result<(String, SecretSource), String> {
    let mut id = String::new();
    let mut file = None;
    let mut env = None;
    let mut kind = None;
    for (key, v) in kiln_dockerfile::mount_fields(value).map_err(|e| format!("--secret: {e}"))? {
        let Some(v) = v else {
            return Err(format!("--secret: field {key:?} must be a key=value pair"));
        };
        match key.as_str() {
            "type" if v == "file" || v == "env" => kind = Some(v),
            "type" => {
                return Err(format!(
                    "--secret: unsupported secret type {v:?}: use file or env"
                ))
            }
            "id" => id = v,
            "source" | "src" => file = Some(v),
            "env" => env = Some(v),
            other => {
                return Err(format!(
                    "--secret: unexpected key {other:?}: use id, src, env or type"
                ))
            }
        }
    }
    if kind.as_deref() == Some("env") && env.is_none() {
        env = file.take();
    }
    if id.is_empty() {
        return Err("--secret: the secret id is missing: give id=<id>".into());
    }
    let source = match (file, env) {
        (Some(f), _) if !f.is_empty() => SecretSource::File(PathBuf::from(f)),
        (_, Some(e)) if !e.is_empty() => SecretSource::Env(e),
        _ if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        _ => SecretSource::File(PathBuf::from(&id)),
    };
    if let SecretSource::File(path) = &source {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("--secret id={id}: cannot read {}: {e}", path.display()))?;
        if meta.len() > MAX_SECRET_SIZE {
            return Err(format!(
                "--secret id={id}: {} is larger than {MAX_SECRET_SIZE} bytes",
                path.display()
            ));
        }
    }
    Ok((id, source))
}

/// The mounts and variables of one step; what it made is removed when dropped.
#[derive(Default)]
pub struct StepMounts {
    pub mounts: Vec<StepMount>,
    /// `KEY=VALUE` of secrets given to variables.
    pub env: Vec<String>,
    /// The target of the step's first ssh mount.
    pub ssh_auth_sock: Option<String>,
    /// Agent proxies, stopped when the step is over.
    _agents: Vec<ssh::AgentProxy>,
    temp: Vec<PathBuf>,
    /// Cache locks, held for the step.
    _locks: Vec<File>,
}

impl Drop for StepMounts {
    fn drop(&mut self) {
        for path in self.temp.drain(..).rev() {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }
}

/// A mount spec read and with its target made absolute against `workdir`.
pub fn prepare(
    env: &MountEnv,
    specs: &[(MountSpec, Option<String>)],
) -> Result<StepMounts, String> {
    let mut out = StepMounts::default();
    for (n, (spec, target)) in specs.iter().enumerate() {
        match spec {
            MountSpec::Secret {
                id,
                env: var,
                required,
                mode,
                uid,
                gid,
                ..
            } => {
                let Some(value) = secret_value(env, id)? else {
                    if *required {
                        return Err(format!(
                            "secret {id:?} is required but not given: pass --secret id={id},src=<file> or --secret id={id},env=<variable>"
                        ));
                    }
                    // BuildKit skips an optional secret that was not given.
                    continue;
                };
                if let Some(var) = var {
                    let text = String::from_utf8(value.clone()).map_err(|_| {
                        format!("secret {id:?} is not UTF-8 text and cannot go to variable {var}")
                    })?;
                    out.env.push(format!("{var}={text}"));
                }
                if let Some(target) = target {
                    let dir = out.temp_dir(env, &format!("secret-{n}"))?;
                    let file = dir.join("secret");
                    write_secret(&file, &value, *mode, *uid, *gid)
                        .map_err(|e| format!("writing secret {id:?} for the step: {e}"))?;
                    out.mounts.push(StepMount {
                        target: target.clone(),
                        kind: StepMountKind::Bind {
                            source: file,
                            readonly: true,
                            dir: false,
                        },
                    });
                }
            }
            MountSpec::Cache {
                id,
                from,
                source,
                sharing,
                readonly,
                mode,
                uid,
                gid,
                ..
            } => {
                let seed = match from {
                    Some(from) => {
                        let root = from_root(env, from, "cache")?;
                        let seed = root.resolve(from, source)?;
                        let identity = root.identity(from, source).map_err(|e| e.to_string())?;
                        Some((identity, seed))
                    }
                    None => None,
                };
                let source = out.cache(env, n, id, seed, *sharing, *mode, *uid, *gid)?;
                out.mounts.push(StepMount {
                    target: target.clone().unwrap_or_default(),
                    kind: StepMountKind::Bind {
                        source,
                        readonly: *readonly,
                        dir: true,
                    },
                });
            }
            MountSpec::Tmpfs { size, .. } => out.mounts.push(StepMount {
                target: target.clone().unwrap_or_default(),
                kind: StepMountKind::Tmpfs { size: *size },
            }),
            MountSpec::Bind {
                from: Some(from),
                source,
                readonly,
                ..
            } => {
                let root = from_root(env, from, "bind")?;
                let what = root.describe(from);
                let from_path = root.resolve(from, source)?;
                let meta = std::fs::metadata(&from_path)
                    .map_err(|e| format!("bind source {source:?} in {what}: {e}"))?;
                // Read-only, the stage's or image's files are mounted as they are; `rw` gets a
                // copy (owners kept), so that writes are discarded.
                let source = if *readonly {
                    from_path
                } else {
                    let copy = out.temp_dir(env, &format!("bind-{n}"))?.join("src");
                    if meta.is_dir() {
                        copy_tree(&from_path, &copy, &|_| false, true)
                    } else {
                        copy_file(&from_path, &copy)
                    }
                    .map_err(|e| format!("copying bind source {source:?} of {what}: {e}"))?;
                    copy
                };
                out.mounts.push(StepMount {
                    target: target.clone().unwrap_or_default(),
                    kind: StepMountKind::Bind {
                        source,
                        readonly: *readonly,
                        dir: meta.is_dir(),
                    },
                });
            }
            MountSpec::Bind {
                from: None,
                source,
                readonly,
                ..
            } => {
                let copy = out.context_copy(env, n, source)?;
                let dir = copy.is_dir();
                out.mounts.push(StepMount {
                    target: target.clone().unwrap_or_default(),
                    kind: StepMountKind::Bind {
                        source: copy,
                        readonly: *readonly,
                        dir,
                    },
                });
            }
            MountSpec::Ssh {
                id,
                required,
                mode,
                uid,
                gid,
                ..
            } => {
                let Some(agent) = env.ssh.get(id) else {
                    if *required {
                        return Err(format!(
                            "ssh agent {id:?} is required but not given: pass --ssh {id}=<agent socket or key file>"
                        ));
                    }
                    continue;
                };
                let sock = out.temp_dir(env, &format!("ssh-{n}"))?.join("agent.sock");
                let proxy = ssh::AgentProxy::start(agent, &sock, *mode, *uid, *gid)
                    .map_err(|e| format!("forwarding ssh agent {id:?}: {e}"))?;
                out._agents.push(proxy);
                let target = target.clone().unwrap_or_default();
                out.ssh_auth_sock.get_or_insert(target.clone());
                out.mounts.push(StepMount {
                    target,
                    kind: StepMountKind::Bind {
                        source: sock,
                        readonly: false,
                        dir: false,
                    },
                });
            }
        }
    }
    Ok(out)
}

/// The root `from` names: an earlier stage or an image the builder read for the step.
fn from_root<'a>(env: &'a MountEnv, from: &str, kind: &str) -> Result<&'a FromRoot, String> {
    env.froms.get(from).ok_or_else(|| {
        format!(
            "RUN --mount=type={kind},from={from}: names neither an earlier stage nor an image the build read (from= is taken as written: variables are not expanded in it, as in BuildKit)"
        )
    })
}

fn secret_value(env: &MountEnv, id: &str) -> Result<Option<Vec<u8>>, String> {
    match env.secrets.get(id) {
        None => Ok(None),
        Some(SecretSource::Env(var)) => Ok(std::env::var_os(var).map(|v| {
            use std::os::unix::ffi::OsStrExt;
            v.as_bytes().to_vec()
        })),
        Some(SecretSource::File(path)) => {
            let data = std::fs::read(path)
                .map_err(|e| format!("reading secret {id:?} from {}: {e}", path.display()))?;
            if data.len() as u64 > MAX_SECRET_SIZE {
                return Err(format!(
                    "secret {id:?} is larger than {MAX_SECRET_SIZE} bytes"
                ));
            }
            Ok(Some(data))
        }
    }
}

fn write_secret(path: &Path, value: &[u8], mode: u32, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

impl StepMounts {
    /// A fresh directory of this step's, only root may enter, removed after the step.
    fn temp_dir(&mut self, env: &MountEnv, name: &str) -> Result<PathBuf, String> {
        let base = env
            .work_dir
            .join(format!("run-mounts-{}", std::process::id()));
        std::fs::create_dir_all(&base)
            .and_then(|()| std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("creating {}: {e}", base.display()))?;
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if self.temp.is_empty() {
            self.temp.push(base);
        }
        self.temp.push(dir.clone());
        Ok(dir)
    }

    /// The directory of cache `id`, created with `mode`, `uid`, `gid` the first time, and locked
    /// as `sharing` says: shared steps hold a shared lock, `locked` an exclusive one (waiting for
    /// it), `private` an exclusive one without waiting, and a fresh directory when busy. With a
    /// `seed` (the identity of a `from=` and the directory it names), the directory is that of
    /// the id and the identity, and a new one starts as a copy of the seed's directory (its own
    /// mode and owner, as BuildKit's; `mode`, `uid`, `gid` are for an empty cache).
    #[allow(clippy::too_many_arguments)]
    fn cache(
        &mut self,
        env: &MountEnv,
        n: usize,
        id: &str,
        seed: Option<(String, PathBuf)>,
        sharing: Sharing,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<PathBuf, String> {
        let root = &env.cache_dir;
        std::fs::create_dir_all(root)
            .and_then(|()| std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("creating the mount cache directory {}: {e}", root.display()))?;
        let name = from::cache_dir_name(id, seed.as_ref().map(|(identity, _)| identity.as_str()));
        let dir = root.join(&name);
        let lock_path = root.join(format!("{name}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
        let how = match sharing {
            Sharing::Shared => libc::LOCK_SH,
            Sharing::Locked => libc::LOCK_EX,
            Sharing::Private => libc::LOCK_EX | libc::LOCK_NB,
        };
        // SAFETY: flock on a descriptor this function owns.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), how) } == 0;
        let dir = if locked {
            self._locks.push(lock);
            dir
        } else if sharing == Sharing::Private {
            tracing::info!("cache {id:?} is in use: this step gets a fresh one (sharing=private)");
            self.temp_dir(env, &format!("cache-{n}"))?.join("cache")
        } else {
            return Err(format!(
                "locking cache {id:?} ({}): {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            ));
        };
        if let (Some((_, seed)), false) = (&seed, dir.exists()) {
            // The seed is copied outside the build root: it never reaches a layer.
            from::seed_cache(seed, &dir).map_err(|e| {
                format!(
                    "seeding cache {id:?} in {} from {}: {e}",
                    dir.display(),
                    seed.display()
                )
            })?;
        } else if !dir.exists() {
            std::fs::create_dir(&dir)
                .and_then(|()| std::os::unix::fs::chown(&dir, Some(uid), Some(gid)))
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| format!("creating cache {id:?} in {}: {e}", dir.display()))?;
        }
        Ok(dir)
    }

    /// A copy of `source` in the build context without what `.dockerignore` excludes (as
    /// BuildKit's context is), mounted instead of the context itself so that the step sees
    /// neither excluded files nor, with `rw`, a way to change the context.
    fn context_copy(&mut self, env: &MountEnv, n: usize, source: &str) -> Result<PathBuf, String> {
        let Some((root, ignore)) = &env.context else {
            return Err("RUN --mount=type=bind needs a build context".into());
        };
        let from = crate::fsutil::resolve_in_root(root, Path::new(source), true)
            .map_err(|e| format!("bind source {source:?} in the build context: {e}"))?;
        let meta = std::fs::metadata(&from)
            .map_err(|e| format!("bind source {source:?} in the build context: {e}"))?;
        let dir = self.temp_dir(env, &format!("bind-{n}"))?;
        let to = dir.join("src");
        let exclude = |host: &Path| match host.strip_prefix(root) {
            Ok(rel) => crate::context::excluded_under(root, ignore, rel),
            Err(_) => false,
        };
        if meta.is_dir() {
            copy_tree(&from, &to, &exclude, false)
        } else {
            std::fs::copy(&from, &to).map(|_| ())
        }
        .map_err(|e| format!("copying bind source {source:?} from the build context: {e}"))?;
        Ok(to)
    }
}

/// Copy a directory tree, keeping modes and symlinks as they are (and, with `owners`, owners),
/// skipping excluded paths.
fn copy_tree(
    from: &Path,
    to: &Path,
    exclude: &dyn Fn(&Path) -> bool,
    owners: bool,
) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if exclude(&path) {
            continue;
        }
        let dest = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&path)?, &dest)?;
        } else if kind.is_dir() {
            copy_tree(&path, &dest, exclude, owners)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &dest)?;
        } else {
            continue;
        }
        if owners && !kind.is_dir() {
            keep_owner(&path, &dest)?;
        }
    }
    let mode = std::fs::metadata(from)?.permissions().mode();
    if owners {
        keep_owner(from, to)?;
    }
    // After the chown, which clears set-id bits.
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
}

/// Copy a file with its mode and owner.
fn copy_file(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to)?;
    keep_owner(from, to)?;
    let mode = std::fs::metadata(from)?.permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
}

/// Give `to` the owner of `from` (a symlink itself, not what it points to). A file's set-id
/// bits, which the chown clears, are put back.
fn keep_owner(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(from)?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if meta.is_file() && meta.mode() & 0o6000 != 0 {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_flags_read_as_buildx_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "s3cr3t").unwrap();
        let src = format!("id=tok,src={}", file.display());
        assert_eq!(
            parse_secret_flag(&src).unwrap(),
            ("tok".into(), SecretSource::File(file.clone()))
        );
        assert_eq!(
            parse_secret_flag("id=tok,env=MY_TOKEN").unwrap(),
            ("tok".into(), SecretSource::Env("MY_TOKEN".into()))
        );
        assert_eq!(
            parse_secret_flag("type=env,id=tok,src=MY_TOKEN").unwrap(),
            ("tok".into(), SecretSource::Env("MY_TOKEN".into()))
        );
        // Alone, the id names a variable if one is set (PATH always is), else a file.
        assert_eq!(
            parse_secret_flag("id=PATH").unwrap(),
            ("PATH".into(), SecretSource::Env("PATH".into()))
        );
        let err = parse_secret_flag("id=kiln-no-such-secret-file").unwrap_err();
        assert!(
            err.contains("cannot read kiln-no-such-secret-file"),
            "{err}"
        );
        for (bad, why) in [
            ("src=/x", "the secret id is missing"),
            ("id=a,colour=red", "unexpected key \"colour\""),
            ("id=a,type=ssh", "unsupported secret type"),
            ("id=a,required", "must be a key=value pair"),
        ] {
            let err = parse_secret_flag(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        std::fs::write(&file, vec![b'x'; MAX_SECRET_SIZE as usize + 1]).unwrap();
        assert!(parse_secret_flag(&src).unwrap_err().contains("larger than"));
    }

    #[test]
    fn ssh_flags_name_an_agent_socket_or_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let value = format!("default={}", sock.display());
        match parse_ssh_flag(&value).unwrap() {
            (id, SshSource::Agent(path)) => {
                assert_eq!((id.as_str(), path), ("default", sock.clone()))
            }
            other => panic!("{other:?}"),
        }
        let keygen = |name: &str| ssh_keys::tests::keygen(dir.path(), name, &["-t", "ed25519"], "");
        let (k1, k2) = (keygen("one"), keygen("two"));
        match parse_ssh_flag(&format!("gh={},{}", k1.display(), k2.display())).unwrap() {
            (id, SshSource::Keys(ring)) => assert_eq!((id.as_str(), ring.len()), ("gh", 2)),
            other => panic!("{other:?}"),
        }
        let not_key = dir.path().join("id_ed25519");
        std::fs::write(&not_key, "key").unwrap();
        for (bad, why) in [
            (format!("gh={}", not_key.display()), "is not a private key"),
            (
                format!("gh={},{}", sock.display(), k1.display()),
                "one agent socket only",
            ),
            (
                format!("gh={},{}", k1.display(), sock.display()),
                "an agent socket beside key files",
            ),
            (format!("gh={},", k1.display()), "an empty path"),
            ("=x".to_string(), "give ID or ID=<agent socket or key file>"),
            (
                "gh=/nonexistent/kiln.sock".to_string(),
                "/nonexistent/kiln.sock",
            ),
        ] {
            let err = parse_ssh_flag(&bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn optional_missing_secrets_are_skipped_required_ones_fail() {
        let dir = tempfile::tempdir().unwrap();
        let env = MountEnv {
            work_dir: dir.path().into(),
            cache_dir: dir.path().join("cache"),
            ..Default::default()
        };
        let spec = |s: &str| {
            (
                parse_mount(s, &|v| Ok(v.into())).unwrap(),
                Some("/run/secrets/x".to_string()),
            )
        };
        let skipped = prepare(&env, &[spec("type=secret,id=x")]).unwrap();
        assert!(skipped.mounts.is_empty() && skipped.env.is_empty());
        let err = prepare(&env, &[spec("type=secret,id=x,required")])
            .err()
            .unwrap();
        assert!(err.contains("secret \"x\" is required"), "{err}");
    }

    #[test]
    fn cache_locking_follows_sharing() {
        let dir = tempfile::tempdir().unwrap();
        let env = MountEnv {
            work_dir: dir.path().join("work"),
            cache_dir: dir.path().join("cache"),
            ..Default::default()
        };
        let mut first = StepMounts::default();
        let held = first
            .cache(&env, 0, "/c", None, Sharing::Locked, 0o755, 0, 0)
            .unwrap();
        // Busy: a private step gets another directory, removed with its step.
        let mut second = StepMounts::default();
        let fresh = second
            .cache(&env, 0, "/c", None, Sharing::Private, 0o755, 0, 0)
            .unwrap();
        assert_ne!(held, fresh);
        drop(second);
        assert!(!fresh.exists());
        drop(first);
        let mut third = StepMounts::default();
        assert_eq!(
            third
                .cache(&env, 0, "/c", None, Sharing::Private, 0o755, 0, 0)
                .unwrap(),
            held
        );
        assert!(held.is_dir());
    }
}
