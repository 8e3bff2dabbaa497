//! Git build contexts: fetch one revision of a remote repository with gitoxide (no `git` binary,
//! which the executor image does not have) and write its tree into a fresh directory. Never runs
//! hooks, filters or any program from the repository, and never logs credentials.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;

use super::{ContextError, GitCredentials, GitOptions};

pub mod ssh;
mod submodule;

/// What to fetch: the parsed `<url>#<ref>#<commit>` of a git context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitSource {
    /// The URL handed to the transport (`https://`, `http://`, `git://`, `file://`).
    pub url: String,
    /// A branch or tag name, a full ref (`refs/heads/main`, `refs/pull/1/head`), a commit id, or
    /// `None` for the remote HEAD.
    pub reference: Option<String>,
    /// A commit to check out after fetching `reference` (kaniko's third `#` part).
    pub commit: Option<String>,
}

impl GitSource {
    /// Split `url#ref#commit` (the scheme already resolved by the caller); empty parts count as absent.
    pub fn parse(url_with_fragment: &str) -> GitSource {
        let mut parts = url_with_fragment.splitn(3, '#');
        let url = parts.next().unwrap_or_default().to_string();
        let non_empty = |p: Option<&str>| p.filter(|s| !s.is_empty()).map(str::to_string);
        let reference = non_empty(parts.next());
        let commit = non_empty(parts.next());
        GitSource {
            url,
            reference,
            commit,
        }
    }

    /// How the source is named in messages: the URL and the ref, never credentials (the URL of a
    /// context is given without them; `GIT_*` variables carry those).
    fn describe(&self) -> String {
        match (&self.reference, &self.commit) {
            (Some(r), Some(c)) => format!("{}#{r}#{c}", self.url),
            (Some(r), None) => format!("{}#{r}", self.url),
            (None, Some(c)) => format!("{}##{c}", self.url),
            (None, None) => self.url.clone(),
        }
    }
}

fn is_full_hex_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetch `source` and write the tree of the selected commit into `dest` (an empty directory),
/// with its submodules when `options.recurse_submodules` is set. The git databases live in
/// temporary directories under `scratch` and are removed after. Returns the commit checked out
/// (full hex id).
pub(crate) fn checkout(
    source: &GitSource,
    options: &GitOptions,
    scratch: &Path,
    dest: &Path,
) -> Result<String, ContextError> {
    checkout_at_depth(source, options, scratch, dest, 0, false)
}

/// [`checkout`] that also keeps the fetched repository as `dest/.git` (`ADD --keep-git-dir`): the
/// shallow clone of the ref, made a non-bare repository with an index of the checked-out tree, so
/// `git log` and `git status` work in the image.
pub(crate) fn checkout_keeping_git_dir(
    source: &GitSource,
    options: &GitOptions,
    scratch: &Path,
    dest: &Path,
) -> Result<String, ContextError> {
    checkout_at_depth(source, options, scratch, dest, 0, true)
}

/// [`checkout`] of a repository `depth` submodule levels below the context's own.
fn checkout_at_depth(
    source: &GitSource,
    options: &GitOptions,
    scratch: &Path,
    dest: &Path,
    depth: usize,
    keep_git_dir: bool,
) -> Result<String, ContextError> {
    let fail = |message: String| ContextError::Git {
        url: source.describe(),
        message,
    };
    let db = tempfile::Builder::new()
        .prefix("git-")
        .tempdir_in(scratch)
        .map_err(|e| {
            fail(format!(
                "creating a directory under {}: {e}",
                scratch.display()
            ))
        })?;
    let (repo, commit_hex) = fetch_commit(source, options, &db.path().join("repo.git"))?;
    let id = gix::ObjectId::from_hex(commit_hex.as_bytes())
        .map_err(|e| fail(format!("\"{commit_hex}\" is not a full commit id: {e}")))?;
    let object = repo.find_object(id).map_err(|_| {
        fail(format!(
            "commit {commit_hex} is not in what the server sent; check that it exists on the given ref"
        ))
    })?;
    let tree_id = object
        .peel_to_tree()
        .map_err(|e| fail(format!("{commit_hex} does not name a commit: {e}")))?
        .id;
    let mut gitlinks = Vec::new();
    write_tree(&repo, tree_id, dest, Path::new(""), &mut gitlinks).map_err(&fail)?;
    tracing::info!("checked out {} at commit {commit_hex}", source.describe());
    if keep_git_dir {
        keep_repository(&repo, &source.url, db.path(), id, tree_id, dest).map_err(&fail)?;
    }
    if !options.recurse_submodules || gitlinks.is_empty() {
        return Ok(commit_hex);
    }
    let modules = submodule::Modules::read(&repo, tree_id).map_err(&fail)?;
    // This repository's database is not needed any more: free its disk before the submodules'.
    drop((repo, db));
    for link in &gitlinks {
        let Some(sub) = modules
            .resolve(link, source, options, depth)
            .map_err(&fail)?
        else {
            continue;
        };
        let sub_dest = dest.join(&link.path);
        checkout_at_depth(
            &sub.source,
            &sub.options,
            scratch,
            &sub_dest,
            depth + 1,
            false,
        )?;
    }
    Ok(commit_hex)
}

/// Move the bare clone under `db` to `dest/.git` as a non-bare repository checked out at `commit`,
/// as BuildKit's `--keep-git-dir` checkout: HEAD on the fetched branch when the ref is one,
/// detached otherwise; an index listing `tree`; the `origin` URL without credentials.
fn keep_repository(
    repo: &gix::Repository,
    url: &str,
    db: &Path,
    commit: gix::ObjectId,
    tree: gix::ObjectId,
    dest: &Path,
) -> Result<(), String> {
    let index = repo
        .index_from_tree(&tree)
        .map_err(|e| format!("building the index of {tree}: {e}"))?;
    let on_branch = repo
        .head_name()
        .ok()
        .flatten()
        .is_some_and(|name| name.as_bstr().starts_with(b"refs/heads/"))
        && repo.head_id().ok().map(|id| id.detach()) == Some(commit);
    let git_dir = dest.join(".git");
    fs::rename(db.join("repo.git"), &git_dir)
        .map_err(|e| format!("moving the repository to {}: {e}", git_dir.display()))?;
    let config = git_dir.join("config");
    let mut text = fs::read_to_string(&config)
        .map_err(|e| format!("reading {}: {e}", config.display()))?
        .replace("bare = true", "bare = false");
    let mut parsed =
        gix::url::parse(url.as_bytes().as_bstr()).map_err(|e| format!("invalid URL: {e}"))?;
    if parsed.user().is_some() || parsed.password().is_some() {
        parsed.set_user(None);
        parsed.set_password(None);
        text = text.replace(url, &parsed.to_bstring().to_string());
        if text.contains(url) || !text.contains("url = ") {
            return Err("cannot remove the credentials of the URL from .git/config".into());
        }
    }
    fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
    if !on_branch {
        let head = git_dir.join("HEAD");
        fs::write(&head, format!("{commit}\n"))
            .map_err(|e| format!("writing {}: {e}", head.display()))?;
    }
    let out =
        fs::File::create(git_dir.join("index")).map_err(|e| format!("writing the index: {e}"))?;
    index
        .write_to(
            std::io::BufWriter::new(out),
            gix::index::write::Options::default(),
        )
        .map_err(|e| format!("writing the index: {e}"))?;
    Ok(())
}

/// Fetch what `source` names into a bare repository at `repo_dir`; returns it with the full id of
/// the commit to check out.
fn fetch_commit(
    source: &GitSource,
    options: &GitOptions,
    repo_dir: &Path,
) -> Result<(gix::Repository, String), ContextError> {
    let fail = |message: String| ContextError::Git {
        url: source.describe(),
        message,
    };
    // `--git branch=` overrides the ref of the URL, as in kaniko.
    let reference = options.branch.clone().or_else(|| source.reference.clone());
    let wanted_commit = source
        .commit
        .clone()
        .or_else(|| reference.clone().filter(|r| is_full_hex_id(r)));

    // A bare commit id is fetched directly (servers speaking protocol v2 allow it); when the server
    // refuses, fall back to the full history of every branch and look the commit up there.
    let (repo, tip_id) = if let Some(commit) = reference.as_deref().filter(|r| is_full_hex_id(r)) {
        match fetch(source, options, repo_dir, Want::Revision(commit), true) {
            Ok(repo) => (repo, commit.to_string()),
            Err(first) => {
                let _ = fs::remove_dir_all(repo_dir);
                tracing::debug!(
                    "fetching commit {commit} directly failed ({first}); fetching all branches"
                );
                let repo =
                    fetch(source, options, repo_dir, Want::AllBranches, false).map_err(&fail)?;
                (repo, commit.to_string())
            }
        }
    } else {
        // A third `#<commit>` part needs the history of the ref, so only then is the fetch deep.
        let shallow = source.commit.is_none();
        let want = match reference.as_deref() {
            Some(r) => Want::Ref(r),
            None => Want::Head,
        };
        let repo = fetch(source, options, repo_dir, want, shallow).map_err(|message| {
            match reference.as_deref() {
                Some(r) if message.contains("didn't have any ref") => fail(format!(
                    "{message}; no branch, tag or ref named \"{r}\" exists there (looked for {r}, refs/heads/{r}, refs/tags/{r})"
                )),
                _ => fail(message),
            }
        })?;
        let head = repo
            .head_id()
            .map_err(|e| fail(format!("the fetched repository has no HEAD: {e}")))?
            .detach()
            .to_string();
        (repo, head)
    };
    Ok((repo, wanted_commit.unwrap_or(tip_id)))
}

enum Want<'a> {
    Head,
    Ref(&'a str),
    Revision(&'a str),
    AllBranches,
}

/// One clone (bare, nothing checked out) of what `want` names.
fn fetch(
    source: &GitSource,
    options: &GitOptions,
    repo_dir: &Path,
    want: Want<'_>,
    shallow: bool,
) -> Result<gix::Repository, String> {
    let mut prepare = gix::prepare_clone_bare(source.url.as_str(), repo_dir)
        .map_err(|e| format!("invalid repository URL: {e}"))?;
    if shallow {
        prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
            std::num::NonZeroU32::MIN,
        ));
    }
    prepare = match want {
        Want::Head | Want::AllBranches => prepare,
        Want::Ref(name) => prepare
            .with_ref_name(Some(name))
            .map_err(|e| format!("\"{name}\" is not a valid ref name: {e}"))?,
        Want::Revision(rev) => prepare
            .with_revision(Some(rev))
            .map_err(|e| format!("\"{rev}\" is not a valid revision: {e}"))?,
    };
    let mut ssh_helper = None;
    if source.url.starts_with("ssh://") {
        // gitoxide runs an ssh program: the executor itself, under the helper's name, with the
        // Secret's key and known_hosts (never without them: host keys are always checked).
        let Some(auth) = &options.ssh else {
            return Err(
                "an ssh repository needs --git-secret-dir with ssh-privatekey and known_hosts (a kubernetes.io/ssh-auth Secret plus the server's host key line)"
                    .into(),
            );
        };
        let helper_dir = repo_dir.with_extension("ssh");
        let program = ssh::install(auth, &helper_dir)?;
        ssh_helper = Some(program.clone());
        prepare = prepare.with_in_memory_config_overrides([
            format!(
                "gitoxide.ssh.commandWithoutShellFallback={}",
                program.display()
            ),
            "ssh.variant=ssh".to_string(),
        ]);
    }
    let credentials = options.credentials.clone();
    if credentials.is_some() && source.url.starts_with("http://") {
        // As git, go-git (kaniko) and BuildKit do; said, since anyone on the path can read them.
        tracing::warn!(
            "sending the git credentials to {} in clear text (plain http): use an https URL where the server has one",
            source.describe()
        );
    }
    let insecure = options.insecure_skip_tls;
    let is_http = source.url.starts_with("http://") || source.url.starts_with("https://");
    prepare = prepare.configure_connection(move |connection| {
        if let Some(creds) = credentials.clone() {
            connection.set_credentials(move |action| credential_answer(&creds, action));
        }
        if is_http {
            connection.set_transport_options(Box::new(http_options(insecure)));
        }
        Ok(())
    });
    let interrupt = AtomicBool::new(false);
    let (repo, _outcome) = prepare
        .fetch_only(gix::progress::Discard, &interrupt)
        .map_err(|e| {
            // The ssh helper's reason (a host key it refused, a key the server refused) says
            // more than gitoxide's broken handshake.
            ssh_helper
                .as_deref()
                .and_then(ssh::take_error)
                .unwrap_or_else(|| describe_gix_error(&e.to_string(), &format!("{e:?}")))
        })?;
    Ok(repo)
}

/// gitoxide's top-level message is often generic ("fetch failed"); its debug form carries the
/// chain of causes. Keep the first line plus the causes, on one line.
fn describe_gix_error(display: &str, debug: &str) -> String {
    let causes: Vec<&str> = debug
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != display && *l != "Caused by:")
        .map(|l| match l.split_once(": ") {
            // Drop the "0: ", "1: " numbering of the cause chain.
            Some((n, rest)) if n.bytes().all(|b| b.is_ascii_digit()) => rest,
            _ => l,
        })
        .collect();
    if causes.is_empty() {
        display.to_string()
    } else {
        format!("{display}: {}", causes.join(": "))
    }
}

fn credential_answer(
    creds: &GitCredentials,
    action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    use gix::credentials::helper::Action;
    match action {
        Action::Get(ctx) => Ok(Some(gix::credentials::protocol::Outcome {
            identity: gix::sec::identity::Account {
                username: creds.username.clone(),
                password: creds.password.clone(),
                oauth_refresh_token: None,
            },
            next: ctx.into(),
        })),
        Action::Store(_) | Action::Erase(_) => Ok(None),
    }
}

fn http_options(insecure: bool) -> gix::protocol::transport::client::blocking_io::http::Options {
    use gix::protocol::transport::client::blocking_io::http;
    let mut backend = http::reqwest::Options::default();
    if insecure {
        backend.configure_client = Some(Box::new(|builder| {
            Ok(builder.danger_accept_invalid_certs(true))
        }));
    }
    http::Options {
        user_agent: Some(concat!("kiln-executor/", env!("CARGO_PKG_VERSION")).to_string()),
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        ssl_verify: !insecure,
        backend: Some(Arc::new(Mutex::new(backend))),
        ..Default::default()
    }
}

/// Write the tree `id` under `dir` (which exists). Modes follow git: 0644 files, 0755 executables,
/// symlinks as links, submodules as empty directories (collected in `gitlinks`).
fn write_tree(
    repo: &gix::Repository,
    id: gix::ObjectId,
    dir: &Path,
    rel: &Path,
    gitlinks: &mut Vec<submodule::Gitlink>,
) -> Result<(), String> {
    let tree = repo
        .find_tree(id)
        .map_err(|e| format!("reading tree {id}: {e}"))?;
    let decoded = tree
        .decode()
        .map_err(|e| format!("decoding tree {id}: {e}"))?;
    for entry in &decoded.entries {
        let name = entry
            .filename
            .to_str()
            .map_err(|_| format!("{}: a file name is not UTF-8", rel.display()))?;
        // A hostile repository must not write outside the checkout or into a `.git` directory.
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
            || name.eq_ignore_ascii_case(".git")
        {
            return Err(format!(
                "refusing the tree entry {:?} under {:?}",
                name,
                rel.display().to_string()
            ));
        }
        let host: PathBuf = dir.join(name);
        let rel_child = rel.join(name);
        let oid = entry.oid.to_owned();
        match entry.mode.kind() {
            EntryKind::Tree => {
                fs::create_dir(&host).map_err(|e| format!("creating {}: {e}", host.display()))?;
                write_tree(repo, oid, &host, &rel_child, gitlinks)?;
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                let mode = if entry.mode.kind() == EntryKind::BlobExecutable {
                    0o755
                } else {
                    0o644
                };
                let blob = repo
                    .find_object(oid)
                    .map_err(|e| format!("reading {}: {e}", rel_child.display()))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&host)
                    .map_err(|e| format!("creating {}: {e}", host.display()))?;
                file.write_all(&blob.data)
                    .map_err(|e| format!("writing {}: {e}", host.display()))?;
            }
            EntryKind::Link => {
                let blob = repo
                    .find_object(oid)
                    .map_err(|e| format!("reading {}: {e}", rel_child.display()))?;
                let target = blob
                    .data
                    .to_str()
                    .map_err(|_| format!("{}: symlink target is not UTF-8", rel_child.display()))?;
                symlink(target, &host)
                    .map_err(|e| format!("creating symlink {}: {e}", host.display()))?;
            }
            EntryKind::Commit => {
                fs::create_dir(&host).map_err(|e| format!("creating {}: {e}", host.display()))?;
                gitlinks.push(submodule::Gitlink {
                    path: rel_child,
                    commit: oid,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_split_like_kaniko() {
        assert_eq!(
            GitSource::parse("https://h/r.git"),
            GitSource {
                url: "https://h/r.git".into(),
                reference: None,
                commit: None
            }
        );
        let s = GitSource::parse("https://h/r.git#refs/heads/main#0123");
        assert_eq!(s.reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(s.commit.as_deref(), Some("0123"));
        let s = GitSource::parse("https://h/r.git#");
        assert_eq!(s.reference, None);
        assert!(is_full_hex_id("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_full_hex_id("main"));
    }
}
