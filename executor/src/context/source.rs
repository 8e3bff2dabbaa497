//! Where a context comes from: parse a `--context` value into a source, read `--git`, the
//! `GIT_*` variables and the object stores' variables into options, and bring https tarballs and
//! stdin to a local file. Never logs credentials, and never extracts anything itself (the caller
//! does, safely).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::git::GitSource;
use super::http;
use super::object_store::{CloudEnv, ObjectSource};
use super::ContextError;

/// How to fetch a context, besides its URL: kaniko's `--context-sub-path` and `--git` flags, its
/// `GIT_USERNAME` / `GIT_PASSWORD` / `GIT_TOKEN` / `GIT_PULL_METHOD` variables, and the
/// variables of the object stores (`AWS_*`, `S3_*`, `GOOGLE_APPLICATION_CREDENTIALS`, ...).
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Sub-directory of the fetched context to use as its root ("" for the whole context).
    pub sub_path: String,
    pub git: GitOptions,
    /// What `s3://`, `gs://` and Azure Blob contexts read from the environment.
    pub cloud: CloudEnv,
}

/// Options of git contexts (kaniko's `--git key=value,...` plus credentials from the environment).
#[derive(Debug, Clone)]
pub struct GitOptions {
    /// `branch=`: a branch or tag to fetch instead of the URL's `#ref`.
    pub branch: Option<String>,
    /// `single-branch=`: accepted for kaniko compatibility; only one ref is ever fetched.
    pub single_branch: bool,
    /// `recurse-submodules=`: fetch submodules (recursively, at the commits the tree records);
    /// when false their directories stay empty, as in git and kaniko.
    pub recurse_submodules: bool,
    /// `insecure-skip-tls=`: accept any TLS certificate from the git server.
    pub insecure_skip_tls: bool,
    /// The protocol a `git://` context is fetched over: kaniko's `GIT_PULL_METHOD` (`https`, the
    /// default, or `http`), plus `git` for the native git protocol (port 9418).
    pub pull_method: PullMethod,
    pub credentials: Option<GitCredentials>,
    /// The private key and `known_hosts` for `ssh://` repositories (`--git-secret-dir`).
    pub ssh: Option<super::git::ssh::SshAuth>,
}

impl Default for GitOptions {
    fn default() -> Self {
        GitOptions {
            branch: None,
            single_branch: false,
            recurse_submodules: false,
            insecure_skip_tls: false,
            pull_method: PullMethod::Https,
            credentials: None,
            ssh: None,
        }
    }
}

/// The transport used for `git://host/repo` contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMethod {
    Https,
    Http,
    Git,
}

/// HTTP basic credentials for a git server. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl GitCredentials {
    /// kaniko's convention: `GIT_TOKEN` wins (as the user name, empty password), else
    /// `GIT_USERNAME` / `GIT_PASSWORD`; `None` when none is set.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<GitCredentials> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        if let Some(token) = non_empty("GIT_TOKEN") {
            return Some(GitCredentials {
                username: token,
                password: String::new(),
            });
        }
        let username = non_empty("GIT_USERNAME");
        let password = non_empty("GIT_PASSWORD");
        if username.is_none() && password.is_none() {
            return None;
        }
        Some(GitCredentials {
            username: username.unwrap_or_default(),
            password: password.unwrap_or_default(),
        })
    }
}

/// The most a credential file may hold: a token or a password is far smaller.
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

impl GitCredentials {
    /// The credentials in `dir` as a Kubernetes Secret volume holds them: `token` (used as the
    /// user name with an empty password, as `GIT_TOKEN`), else `username` and `password` (the
    /// keys of a `kubernetes.io/basic-auth` Secret). A trailing line break is not part of a
    /// value. Errors name the file, never its content.
    pub fn from_dir(dir: &Path) -> Result<GitCredentials, String> {
        let read = |name: &str| -> Result<Option<String>, String> {
            let path = dir.join(name);
            let file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("--git-secret-dir: reading {}: {e}", path.display())),
            };
            let mut bytes = Vec::new();
            io::Read::read_to_end(
                &mut io::Read::take(file, MAX_CREDENTIAL_FILE + 1),
                &mut bytes,
            )
            .map_err(|e| format!("--git-secret-dir: reading {}: {e}", path.display()))?;
            if bytes.len() as u64 > MAX_CREDENTIAL_FILE {
                return Err(format!(
                    "--git-secret-dir: {} is larger than {MAX_CREDENTIAL_FILE} bytes: not a git credential",
                    path.display()
                ));
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("--git-secret-dir: {} is not UTF-8 text", path.display()))?;
            let text = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text)
                .to_string();
            Ok(Some(text).filter(|t| !t.is_empty()))
        };
        Self::from_files(read)?.ok_or_else(|| {
            format!(
                "--git-secret-dir {}: no token, username, password or ssh-privatekey file (a kubernetes.io/basic-auth Secret has username and password; a token Secret a key named token; a kubernetes.io/ssh-auth Secret ssh-privatekey, with known_hosts beside it)",
                dir.display()
            )
        })
    }

    /// The token or user name and password among the files `read` finds, if any.
    fn from_files(
        read: impl Fn(&str) -> Result<Option<String>, String>,
    ) -> Result<Option<GitCredentials>, String> {
        if let Some(token) = read("token")? {
            return Ok(Some(GitCredentials {
                username: token,
                password: String::new(),
            }));
        }
        let (username, password) = (read("username")?, read("password")?);
        if username.is_none() && password.is_none() {
            return Ok(None);
        }
        Ok(Some(GitCredentials {
            username: username.unwrap_or_default(),
            password: password.unwrap_or_default(),
        }))
    }
}

/// What a git Secret mounted at `dir` (`--git-secret-dir`) holds: HTTP credentials (`token`, or
/// `username` and `password`) and/or an ssh key (`ssh-privatekey`, the key of a
/// `kubernetes.io/ssh-auth` Secret), which needs `known_hosts` beside it: ssh host keys are always
/// checked. Errors name the file, never its content.
pub fn git_secret_from_dir(
    dir: &Path,
) -> Result<(Option<GitCredentials>, Option<super::git::ssh::SshAuth>), String> {
    let key = dir.join("ssh-privatekey");
    let ssh = if key.exists() {
        let known_hosts = dir.join("known_hosts");
        if !known_hosts.exists() {
            return Err(format!(
                "--git-secret-dir {}: ssh-privatekey without known_hosts: add a key named known_hosts to the Secret with the git server's host key line (for example from ssh-keyscan); Kiln never connects to an ssh server whose key it cannot check",
                dir.display()
            ));
        }
        Some(super::git::ssh::SshAuth {
            private_key: key,
            known_hosts,
            helper_exe: None,
        })
    } else {
        None
    };
    match GitCredentials::from_dir(dir) {
        Ok(c) => Ok((Some(c), ssh)),
        Err(_) if ssh.is_some() => Ok((None, ssh)),
        Err(e) => Err(e),
    }
}

impl ContextOptions {
    /// Build options from the command line (`--context-sub-path`, `--git`) and the process
    /// environment. Errors name the bad `--git` item.
    pub fn from_flags(sub_path: &str, git_flag: Option<&str>) -> Result<ContextOptions, String> {
        let env = |k: &str| std::env::var(k).ok();
        ContextOptions::from_flags_with_env(sub_path, git_flag, env)
    }

    /// [`ContextOptions::from_flags`] with the environment given as a lookup function.
    pub fn from_flags_with_env(
        sub_path: &str,
        git_flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ContextOptions, String> {
        let mut git = GitOptions {
            credentials: GitCredentials::from_lookup(&env),
            ..GitOptions::default()
        };
        git.pull_method = match env("GIT_PULL_METHOD").as_deref() {
            Some("http") => PullMethod::Http,
            Some("git") => PullMethod::Git,
            // kaniko falls back to https for anything it does not know.
            _ => PullMethod::Https,
        };
        for item in git_flag
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
        {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                format!("--git {item:?}: expected key=value (branch, single-branch, recurse-submodules, insecure-skip-tls)")
            })?;
            let flag = |v: &str| -> Result<bool, String> {
                match v {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(format!("--git {key}={v}: expected true or false")),
                }
            };
            match key {
                "branch" => git.branch = Some(value.to_string()).filter(|v| !v.is_empty()),
                "single-branch" => git.single_branch = flag(value)?,
                "recurse-submodules" => git.recurse_submodules = flag(value)?,
                "insecure-skip-tls" => git.insecure_skip_tls = flag(value)?,
                other => {
                    return Err(format!(
                        "--git {other}: unknown key; use branch, single-branch, recurse-submodules or insecure-skip-tls"
                    ))
                }
            }
        }
        Ok(ContextOptions {
            sub_path: sub_path.to_string(),
            git,
            cloud: CloudEnv::from_lookup(&env),
        })
    }
}

/// A parsed `--context` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Dir(PathBuf),
    Tarball(PathBuf),
    Stdin,
    Url(String),
    Git(GitSource),
    Object(ObjectSource),
}

impl Source {
    /// kaniko's prefixes: `dir://`, `tar://` (`tar://stdin`), `git://` (fetched over
    /// `GIT_PULL_METHOD`), `s3://`, `gs://`, Azure Blob `https://` URLs, `https://`/`http://`
    /// tarballs. Kiln also takes `git+https://` and `git+http://`, treats an http(s) URL as a git
    /// repository when its path ends in `.git` or it carries a `#ref`, and any URL under
    /// `KILN_AZURE_BLOB_ENDPOINT` as an Azure blob.
    pub fn parse(spec: &str, options: &ContextOptions) -> Result<Source, ContextError> {
        let pull_method = options.git.pull_method;
        let Some((scheme, rest)) = spec.split_once("://") else {
            if let Some(url) = scp_like_ssh(spec) {
                return Ok(Source::Git(GitSource::parse(&url)));
            }
            return Ok(Source::Dir(PathBuf::from(spec)));
        };
        // Before the tarball and git forms of https URLs, as in kaniko.
        if let Some(blob) = ObjectSource::parse_azure(spec, &options.cloud) {
            return Ok(Source::Object(blob));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "dir" => Ok(Source::Dir(PathBuf::from(rest))),
            "tar" if rest == "stdin" => Ok(Source::Stdin),
            "tar" => Ok(Source::Tarball(PathBuf::from(rest))),
            "git" => {
                let method = match pull_method {
                    PullMethod::Https => "https",
                    PullMethod::Http => "http",
                    PullMethod::Git => "git",
                };
                Ok(Source::Git(GitSource::parse(&format!("{method}://{rest}"))))
            }
            "ssh" | "git+ssh" => Ok(Source::Git(GitSource::parse(&format!("ssh://{rest}")))),
            "git+https" | "git+http" => {
                let scheme = &scheme["git+".len()..];
                Ok(Source::Git(GitSource::parse(&format!("{scheme}://{rest}"))))
            }
            "s3" | "gs" => Ok(Source::Object(ObjectSource::parse_bucket_url(
                &scheme.to_ascii_lowercase(),
                rest,
            )?)),
            "https" | "http" => {
                let (path, fragment) = match rest.split_once('#') {
                    Some((p, f)) => (p, Some(f)),
                    None => (rest, None),
                };
                let path = path.split('?').next().unwrap_or(path);
                let looks_git = path.trim_end_matches('/').ends_with(".git") || fragment.is_some();
                if looks_git {
                    Ok(Source::Git(GitSource::parse(spec)))
                } else {
                    Ok(Source::Url(spec.to_string()))
                }
            }
            other => Err(ContextError::UnsupportedScheme {
                scheme: format!("{other}://"),
            }),
        }
    }
}

/// git's scp-like form `user@host:path` as an `ssh://` URL (`path` relative to the user's home
/// unless it starts with `/`, as git reads it); `None` for anything else. The user is required,
/// so a local directory name with a colon is never taken for a repository.
fn scp_like_ssh(spec: &str) -> Option<String> {
    let (user, rest) = spec.split_once('@')?;
    let (host, path) = rest.split_once(':')?;
    let name_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !name_ok(user) || !name_ok(host) || path.is_empty() {
        return None;
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/~/{path}")
    };
    Some(format!("ssh://{user}@{host}{path}"))
}

/// Download `url` into a new file under `dir`, streaming (memory stays flat, size bounded), and
/// return its path.
pub(crate) fn download(url: &str, dir: &Path) -> Result<PathBuf, ContextError> {
    let fail = |message: String| ContextError::Download {
        url: url.to_string(),
        message,
    };
    let response = http::client()
        .map_err(fail)?
        .get(url)
        .send()
        .map_err(|e| fail(format!("request failed: {}", http::error_chain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!(
            "the server answered HTTP {status}; check the URL and that the tarball is readable without credentials"
        )));
    }
    let path = dir.join("context-download.tar");
    http::save_body(response, &path).map_err(fail)?;
    Ok(path)
}

/// Copy standard input (a plain or compressed tar) into a new file under `dir`.
pub(crate) fn stdin_to_file(dir: &Path) -> Result<PathBuf, ContextError> {
    let path = dir.join("context-stdin.tar");
    let mut file = fs::File::create(&path).map_err(|source| ContextError::Io {
        path: path.clone(),
        source,
    })?;
    let copied =
        io::copy(&mut io::stdin().lock(), &mut file).map_err(|source| ContextError::Io {
            path: PathBuf::from("<stdin>"),
            source,
        })?;
    if copied == 0 {
        return Err(ContextError::EmptyStdin);
    }
    Ok(path)
}

/// Clean a `--context-sub-path` into a relative path; `None` when it climbs out of the context.
pub(crate) fn clean_sub_path(raw: &str) -> Option<PathBuf> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_map_to_sources() {
        let https = ContextOptions::default();
        assert_eq!(
            Source::parse("/ws", &https).unwrap(),
            Source::Dir("/ws".into())
        );
        assert_eq!(Source::parse("tar://stdin", &https).unwrap(), Source::Stdin);
        assert_eq!(
            Source::parse("tar:///c.tgz", &https).unwrap(),
            Source::Tarball("/c.tgz".into())
        );
        assert_eq!(
            Source::parse("https://h/c.tar.gz", &https).unwrap(),
            Source::Url("https://h/c.tar.gz".into())
        );
        let Source::Git(g) = Source::parse("git://h/o/r.git#refs/heads/main", &https).unwrap()
        else {
            panic!("git:// is a git source")
        };
        assert_eq!(g.url, "https://h/o/r.git");
        assert_eq!(g.reference.as_deref(), Some("refs/heads/main"));
        let mut native = ContextOptions::default();
        native.git.pull_method = PullMethod::Git;
        let Source::Git(g) = Source::parse("git://h/o/r.git", &native).unwrap() else {
            panic!("git:// is a git source")
        };
        assert_eq!(g.url, "git://h/o/r.git");
        for spec in ["https://h/r.git", "http://h/r#main", "git+https://h/r"] {
            assert!(
                matches!(Source::parse(spec, &https).unwrap(), Source::Git(_)),
                "{spec}"
            );
        }
        // ssh: the URL forms git takes, scp-like paths relative to the user's home.
        for (spec, url, reference) in [
            (
                "ssh://git@h:2222/o/r.git#main",
                "ssh://git@h:2222/o/r.git",
                Some("main"),
            ),
            ("git+ssh://git@h/o/r.git", "ssh://git@h/o/r.git", None),
            (
                "git@h.example:o/r.git#v1",
                "ssh://git@h.example/~/o/r.git",
                Some("v1"),
            ),
            ("git@h:/srv/r.git", "ssh://git@h/srv/r.git", None),
        ] {
            let Source::Git(g) = Source::parse(spec, &https).unwrap() else {
                panic!("{spec} is a git source")
            };
            assert_eq!(
                (g.url.as_str(), g.reference.as_deref()),
                (url, reference),
                "{spec}"
            );
        }
        // A directory is still a directory: no user, or no colon.
        for spec in ["ctx", "my:dir", "a@b", "/srv/ctx@2:x"] {
            assert!(
                matches!(Source::parse(spec, &https).unwrap(), Source::Dir(_)),
                "{spec}"
            );
        }
        for spec in [
            "s3://b/k",
            "gs://b",
            "https://acct.blob.core.windows.net/c/ctx.tar.gz",
        ] {
            assert!(
                matches!(Source::parse(spec, &https).unwrap(), Source::Object(_)),
                "{spec}"
            );
        }
        let azurite = ContextOptions::from_flags_with_env("", None, |k| {
            (k == "KILN_AZURE_BLOB_ENDPOINT").then(|| "http://127.0.0.1:10000/acct".to_string())
        })
        .unwrap();
        assert!(matches!(
            Source::parse("http://127.0.0.1:10000/acct/c/b", &azurite).unwrap(),
            Source::Object(_)
        ));
        assert!(matches!(
            Source::parse("http://127.0.0.1:10000/acct/c/b", &https).unwrap(),
            Source::Url(_)
        ));
        assert!(Source::parse("ftp://b/k", &https).is_err());
    }

    #[test]
    fn git_flag_and_env() {
        let env = |k: &str| match k {
            "GIT_USERNAME" => Some("u".to_string()),
            "GIT_PASSWORD" => Some("p".to_string()),
            "GIT_PULL_METHOD" => Some("http".to_string()),
            _ => None,
        };
        let o = ContextOptions::from_flags_with_env(
            "sub",
            Some("branch=dev,single-branch=true,recurse-submodules=false,insecure-skip-tls=true"),
            env,
        )
        .unwrap();
        assert_eq!(o.sub_path, "sub");
        assert_eq!(o.git.branch.as_deref(), Some("dev"));
        assert!(o.git.single_branch && o.git.insecure_skip_tls && !o.git.recurse_submodules);
        assert_eq!(o.git.pull_method, PullMethod::Http);
        let creds = o.git.credentials.unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("u", "p")
        );
        assert!(!format!("{creds:?}").contains("\"p\""));
        let token = GitCredentials::from_lookup(|k| (k == "GIT_TOKEN").then(|| "t".to_string()));
        assert_eq!(token.unwrap().username, "t");
        assert!(ContextOptions::from_flags_with_env("", Some("depth=1"), |_| None).is_err());
        assert!(
            ContextOptions::from_flags_with_env("", Some("single-branch=yes"), |_| None).is_err()
        );
    }

    #[test]
    fn sub_paths_stay_inside() {
        assert_eq!(clean_sub_path("a/./b/"), Some(PathBuf::from("a/b")));
        assert_eq!(clean_sub_path("/a/b"), Some(PathBuf::from("a/b")));
        assert_eq!(clean_sub_path("a/../b"), Some(PathBuf::from("b")));
        assert_eq!(clean_sub_path("../x"), None);
        assert_eq!(clean_sub_path("a/../../x"), None);
    }

    #[test]
    fn git_credentials_from_a_secret_volume() {
        let dir = tempfile::tempdir().unwrap();
        let err = GitCredentials::from_dir(dir.path()).unwrap_err();
        assert!(
            err.contains("no token, username, password or ssh-privatekey"),
            "{err}"
        );
        fs::write(dir.path().join("username"), "builder").unwrap();
        fs::write(dir.path().join("password"), "s3cret\n").unwrap();
        let c = GitCredentials::from_dir(dir.path()).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("builder", "s3cret")
        );
        fs::write(dir.path().join("token"), "tok\r\n").unwrap();
        let c = GitCredentials::from_dir(dir.path()).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("tok", ""));
        fs::write(dir.path().join("token"), vec![b'x'; 70 * 1024]).unwrap();
        let err = GitCredentials::from_dir(dir.path()).unwrap_err();
        assert!(err.contains("larger than") && !err.contains("xxx"), "{err}");
    }
}
