//! Runs one docker credential helper (`docker-credential-<name> get`, the protocol of
//! github.com/docker/docker-credential-helpers) and reads its answer. It must never put the
//! helper's stdout (where the secret is) in a message or a log, never let the helper write to the
//! executor's own stdout or stderr, and never keep an answer on disk.
//!
//! Written by hand rather than with a crate: the protocol is one process call, and what matters
//! here (a time limit, bounded output, a redacted error) no crate offers.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::auth::Credentials;
use super::cloud::GitLabCi;

/// How long a helper may take to answer (a cloud helper may exchange a token over the network).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of a helper's stdout read: an answer is a small JSON object (cloud tokens are a few
/// KiB); more is refused.
const MAX_STDOUT: usize = 256 * 1024;
/// The most of a helper's stderr kept (the rest is read and dropped, so the helper never blocks).
const MAX_STDERR_KEPT: usize = 4096;
/// The most of that shown in an error.
const MAX_STDERR_SHOWN: usize = 400;
/// What every helper built on docker-credential-helpers prints (on stdout, exit status 1) when
/// it holds nothing for the server: Docker then goes on without credentials.
const NOT_FOUND_MESSAGE: &str = "credentials not found in native keychain";
/// The username a helper answers with when its secret is an identity (refresh) token.
const TOKEN_USERNAME: &str = "<token>";

/// Where credential helpers are looked for and how they run. `Default`: every `$PATH`
/// directory, no working directory of their own, [`DEFAULT_TIMEOUT`], GitLab CI's variables
/// from this process's environment.
#[derive(Debug, Clone)]
pub struct HelperSettings {
    /// The search path (`PATH` syntax); `None`: the program's `$PATH`.
    pub path: Option<OsString>,
    /// Only `$PATH` directories under one of these are searched; empty: every one. An in-place
    /// build sets the directories it keeps (`/kiln`, `/kaniko`): elsewhere `/` becomes the
    /// build's root, whose files are not the executor image's.
    pub only_under: Vec<PathBuf>,
    /// The helpers' working directory, also given to ecr-login as `AWS_ECR_CACHE_DIR` (it logs
    /// there), so that a helper that writes next to itself does not write into a build's root.
    pub work_dir: Option<PathBuf>,
    /// How long one helper call may take.
    pub timeout: Duration,
    /// GitLab CI's registry credentials (`CI_REGISTRY`, …), kaniko's last keychain.
    pub gitlab_ci: Option<GitLabCi>,
}

impl Default for HelperSettings {
    fn default() -> Self {
        HelperSettings {
            path: None,
            only_under: Vec::new(),
            work_dir: None,
            timeout: DEFAULT_TIMEOUT,
            gitlab_ci: GitLabCi::from_env(),
        }
    }
}

impl HelperSettings {
    /// The directories searched for a helper, in order: `$PATH`'s absolute entries, filtered by
    /// [`HelperSettings::only_under`].
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let path = match &self.path {
            Some(p) => p.clone(),
            None => std::env::var_os("PATH").unwrap_or_default(),
        };
        std::env::split_paths(&path)
            // Like Go's exec.LookPath since Go 1.19: a relative entry is never used.
            .filter(|d| d.is_absolute())
            .filter(|d| {
                self.only_under.is_empty() || self.only_under.iter().any(|r| d.starts_with(r))
            })
            .collect()
    }
}

/// What a helper said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Found(Credentials),
    /// It holds nothing for the server: access is anonymous, as Docker's is.
    NotFound,
}

/// Why a helper gave no answer. The text never holds the helper's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

/// `docker-credential-<name>` found in `dirs`, or why not.
pub fn locate(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, Failure> {
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('-')
        || name.chars().any(char::is_control)
    {
        return Err(Failure(format!(
            "{name:?} is not a credential helper name (docker-credential-<name> must be a file \
             name on PATH)"
        )));
    }
    let file = format!("docker-credential-{name}");
    for dir in dirs {
        let candidate = dir.join(&file);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    let searched = if dirs.is_empty() {
        "no directory (PATH has none that may hold one)".to_string()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    Err(Failure(format!(
        "{file} is not an executable file in {searched}"
    )))
}

#[derive(Deserialize)]
struct Response {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `helper get` with `server` on stdin and reads its answer, within `settings.timeout`.
/// `secrets` are removed from the helper's stderr before any of it goes into a [`Failure`].
pub async fn get(
    helper: &Path,
    server: &str,
    settings: &HelperSettings,
    secrets: &[String],
) -> Result<Answer, Failure> {
    let mut cmd = tokio::process::Command::new(helper);
    cmd.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that a timeout also ends what the helper started.
        .process_group(0)
        // ecr-login keeps a credential cache on disk unless told not to; answers stay in memory.
        .env("AWS_ECR_DISABLE_CACHE", "true");
    if let Some(dir) = &settings.work_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure(format!(
                "cannot create its directory {}: {e}",
                dir.display()
            ))
        })?;
        cmd.current_dir(dir);
        if std::env::var_os("AWS_ECR_CACHE_DIR").is_none() {
            cmd.env("AWS_ECR_CACHE_DIR", dir.join("ecr"));
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure(format!("cannot start {}: {e}", helper.display())))?;
    let pid = child.id();
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Failure("its standard streams could not be opened".into()));
    };
    let run = async {
        // Docker writes the server without a newline and closes stdin. A helper that exits
        // without reading it makes this write fail, which its exit status then explains.
        let _ = stdin.write_all(server.as_bytes()).await;
        drop(stdin);
        let (out, err) = tokio::join!(
            read_bounded(stdout, MAX_STDOUT, true),
            read_bounded(stderr, MAX_STDERR_KEPT, false)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(settings.timeout, run).await {
        Ok(v) => v,
        Err(_) => {
            kill_group(pid);
            let t = settings.timeout;
            let limit = if t.subsec_nanos() == 0 {
                format!("{} s", t.as_secs())
            } else {
                format!("{} ms", t.as_millis())
            };
            return Err(Failure(format!(
                "it did not answer within {limit} and was killed"
            )));
        }
    };
    let (stdout, too_long) = out.map_err(|e| Failure(format!("reading its output: {e}")))?;
    let stderr = err.map(|(bytes, _)| bytes).unwrap_or_default();
    if too_long {
        return Err(Failure(format!(
            "its answer is longer than {} KiB; refusing it",
            MAX_STDOUT / 1024
        )));
    }
    let status = status.map_err(|e| Failure(format!("waiting for it: {e}")))?;
    interpret(status, &stdout, &stderr, secrets)
}

/// The answer a finished helper gave.
fn interpret(
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
    secrets: &[String],
) -> Result<Answer, Failure> {
    if !status.success() {
        // The protocol puts the reason on stdout; only the one standard message is read from it.
        if String::from_utf8_lossy(stdout).trim() == NOT_FOUND_MESSAGE {
            return Ok(Answer::NotFound);
        }
        let mut detail = format!("it exited with {status}");
        let excerpt = stderr_excerpt(stderr, secrets);
        if !excerpt.is_empty() {
            detail.push_str(&format!("; its stderr: {excerpt}"));
        }
        return Err(Failure(detail));
    }
    let response: Response = serde_json::from_slice(stdout).map_err(|e| {
        // serde's message may quote the answer; keep only where it failed.
        Failure(format!(
            "its answer is not the protocol's JSON object {{ServerURL, Username, Secret}} \
             (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    Ok(match (response.username, response.secret) {
        (u, s) if u.is_empty() && s.is_empty() => Answer::NotFound,
        (u, token) if u == TOKEN_USERNAME => Answer::Found(Credentials::IdentityToken {
            username: String::new(),
            token,
        }),
        (username, password) => Answer::Found(Credentials::Basic { username, password }),
    })
}

/// Up to `limit` bytes of `stream` and whether there was more; with `stop`, reading ends there
/// (the writer then gets `EPIPE`), else the rest is read and dropped.
async fn read_bounded(
    mut stream: impl AsyncRead + Unpin,
    limit: usize,
    stop: bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut more = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, more));
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        more |= n > room;
        if more && stop {
            return Ok((kept, more));
        }
    }
}

/// The end of a helper's stderr for an error message: known secrets removed, control characters
/// replaced, the last [`MAX_STDERR_SHOWN`] bytes of the last three non-empty lines.
fn stderr_excerpt(stderr: &[u8], secrets: &[String]) -> String {
    let text = super::error::redact(&String::from_utf8_lossy(stderr), secrets);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        })
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(3)..].join(" | ");
    match joined.char_indices().rev().nth(MAX_STDERR_SHOWN) {
        Some((i, _)) => format!("...{}", &joined[i + 1..]),
        None => joined,
    }
}

/// SIGKILL to the helper's process group (it leads one: `process_group(0)`).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
        // SAFETY: kill(2) with a negative pid signals the group this module created for the
        // helper; it touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn ok() -> ExitStatus {
        ExitStatus::from_raw(0)
    }
    fn failed() -> ExitStatus {
        ExitStatus::from_raw(1 << 8)
    }

    #[test]
    fn answers_follow_dockers_reading() {
        let basic = interpret(
            ok(),
            br#"{"ServerURL":"r","Username":"u","Secret":"s3"}"#,
            b"",
            &[],
        );
        assert_eq!(
            basic,
            Ok(Answer::Found(Credentials::Basic {
                username: "u".into(),
                password: "s3".into()
            }))
        );
        let token = interpret(ok(), br#"{"Username":"<token>","Secret":"rt"}"#, b"", &[]);
        assert_eq!(
            token,
            Ok(Answer::Found(Credentials::IdentityToken {
                username: String::new(),
                token: "rt".into()
            }))
        );
        assert_eq!(
            interpret(
                ok(),
                br#"{"ServerURL":"r","Username":"","Secret":""}"#,
                b"",
                &[]
            ),
            Ok(Answer::NotFound)
        );
        assert_eq!(
            interpret(
                failed(),
                b"credentials not found in native keychain\n",
                b"",
                &[]
            ),
            Ok(Answer::NotFound)
        );
    }

    #[test]
    fn failures_show_neither_stdout_nor_secrets() {
        let e = interpret(
            failed(),
            b"stdout-secret-xyz",
            b"line one\nkey=known-secret-1\n\x1b[31mlast\x07 line\n",
            &["known-secret-1".to_string()],
        )
        .unwrap_err()
        .0;
        assert!(!e.contains("stdout-secret-xyz"), "{e}");
        assert!(!e.contains("known-secret-1"), "{e}");
        assert!(e.contains("exited with exit status: 1"), "{e}");
        assert!(
            e.contains("line one | key=<redacted> | [31mlast  line"),
            "{e}"
        );
        let e = interpret(ok(), br#"{"Username": "u", "Secret": 12345678}"#, b"", &[])
            .unwrap_err()
            .0;
        assert!(!e.contains("12345678") && e.contains("line 1"), "{e}");
        let long = "x".repeat(5000);
        let e = interpret(failed(), b"", long.as_bytes(), &[])
            .unwrap_err()
            .0;
        assert!(e.len() < MAX_STDERR_SHOWN + 100, "{}", e.len());
    }

    #[test]
    fn names_and_search_dirs() {
        for bad in ["", "../x", "a/b", "-x", "a\nb"] {
            assert!(locate(bad, &[]).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker-credential-t");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let e = locate("t", &dirs).unwrap_err().0;
        assert!(e.contains("not an executable file in"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(locate("t", &dirs).unwrap(), file);

        let settings = HelperSettings {
            only_under: vec!["/kiln".into(), "/kaniko".into()],
            ..HelperSettings::default()
        };
        for d in settings.search_dirs() {
            assert!(d.starts_with("/kiln") || d.starts_with("/kaniko"), "{d:?}");
        }
    }
}
