//! Context sources against real servers on loopback: a repository made with the `git` CLI and
//! served by `git daemon` (git://) and by `git http-backend` behind a small HTTP server (smart
//! HTTP, with basic auth), tarballs served over HTTP, and `tar://stdin` and a git context through
//! the real `kiln-executor` binary. The `git` CLI is used by the tests only, never by the executor.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_executor::context::git::ssh::SshAuth;
use kiln_executor::context::{
    git_secret_from_dir, BuildContext, ContextOptions, GitCredentials, PullMethod,
};
use kiln_testkit::{
    free_port, require_tools, self_signed_cert, ssh_keygen, wait_for_port, GitHttpServer,
    GitSshServer, KillOnDrop,
};

/// A server process for one test, killed when the test ends, pass or fail.
struct Server {
    _child: KillOnDrop,
    port: u16,
}

/// The tools every test here uses: the git CLI makes and serves the repositories, python3 serves
/// HTTP, openssl makes the certificate of the HTTPS server.
fn tools_present() -> bool {
    require_tools(&["git", "python3", "openssl"])
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(["-c", "init.defaultBranch=main", "-c", "protocol.version=2"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("the git CLI is installed for these tests");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

/// A bare repository `<base>/repo.git` with history:
/// c1 (tag v1, annotated): version=1, sub/app.txt=app-1
/// c2 (main):               version=2, sub/app.txt=app-2
/// c3 (branch feature, from c1): version=feature
struct Repo {
    _dir: tempfile::TempDir,
    base: PathBuf,
    c1: String,
    c2: String,
}

fn make_repo() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(
        &work.join("Dockerfile"),
        "FROM scratch\nCOPY version /version\n",
    );
    write(&work.join("version"), "1\n");
    write(
        &work.join("sub/Dockerfile"),
        "FROM scratch\nCOPY app.txt /app.txt\n",
    );
    write(&work.join("sub/app.txt"), "app-1\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "one"]);
    let c1 = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["tag", "-a", "v1", "-m", "version one"]);
    git(&work, &["checkout", "-qb", "feature"]);
    write(&work.join("version"), "feature\n");
    git(&work, &["commit", "-qam", "feature"]);
    git(&work, &["checkout", "-q", "main"]);
    write(&work.join("version"), "2\n");
    write(&work.join("sub/app.txt"), "app-2\n");
    git(&work, &["commit", "-qam", "two"]);
    let c2 = git(&work, &["rev-parse", "HEAD"]);
    Repo {
        base: serve_bare(dir.path(), &work),
        _dir: dir,
        c1,
        c2,
    }
}

/// Clones the repository at `work` bare into `<dir>/srv/git/repo.git`, where the servers
/// export it; returns `<dir>/srv`.
fn serve_bare(dir: &Path, work: &Path) -> PathBuf {
    serve_bare_as(dir, work, "repo.git")
}

/// [`serve_bare`] under another name: `<dir>/srv/git/<name>`.
fn serve_bare_as(dir: &Path, work: &Path, name: &str) -> PathBuf {
    let base = dir.join("srv");
    let git_dir = base.join("git");
    fs::create_dir_all(&git_dir).unwrap();
    git(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            git_dir.join(name).to_str().unwrap(),
        ],
    );
    base
}

fn git_daemon(repo: &Repo) -> Server {
    git_daemon_at(&repo.base)
}

/// `git daemon` exporting every repository under `<base>/git`.
fn git_daemon_at(base: &Path) -> Server {
    let port = free_port();
    let git_dir = base.join("git");
    // Run git-daemon itself: `git daemon` forks it as a grandchild that would outlive the test.
    let exec_path = git(base, &["--exec-path"]);
    let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .arg("--export-all")
        .arg("--reuseaddr")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", git_dir.display()))
        .arg(&git_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start git daemon");
    wait_for_port(port, &mut child);
    Server {
        _child: KillOnDrop(child),
        port,
    }
}

fn http_server(base: &Path, auth: Option<&str>) -> GitHttpServer {
    http_server_with(base, auth, None)
}

fn http_server_with(base: &Path, auth: Option<&str>, tls: Option<(&Path, &Path)>) -> GitHttpServer {
    GitHttpServer::start(base, "127.0.0.1", auth, tls)
}

fn git_opts(method: PullMethod) -> ContextOptions {
    let mut o = ContextOptions::default();
    o.git.pull_method = method;
    o
}

fn read(ctx: &BuildContext, rel: &str) -> String {
    fs::read_to_string(ctx.root().join(rel))
        .unwrap_or_else(|e| panic!("{rel} in context {}: {e}", ctx.root().display()))
}

fn open(spec: &str, opts: &ContextOptions) -> Result<(tempfile::TempDir, BuildContext), String> {
    let work = tempfile::tempdir().unwrap();
    BuildContext::open_with(spec, work.path(), opts)
        .map(|c| (work, c))
        .map_err(|e| e.to_string())
}

#[test]
fn git_protocol_branch_tag_commit_and_sub_path() {
    if !tools_present() {
        return;
    }
    let repo = make_repo();
    let daemon = git_daemon(&repo);
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    let opts = git_opts(PullMethod::Git);
    let cases = [
        (url.clone(), "version", "2\n"),
        (format!("{url}#main"), "version", "2\n"),
        (format!("{url}#refs/heads/feature"), "version", "feature\n"),
        (format!("{url}#feature"), "version", "feature\n"),
        (format!("{url}#v1"), "version", "1\n"),
        (format!("{url}#refs/tags/v1"), "version", "1\n"),
        (format!("{url}#{}", repo.c1), "version", "1\n"),
        (format!("{url}#main#{}", repo.c1), "version", "1\n"),
    ];
    for (spec, file, want) in &cases {
        let (_work, ctx) = open(spec, &opts).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(&read(&ctx, file), want, "{spec}");
        assert!(
            !ctx.root().join(".git").exists(),
            "{spec}: no git database in the context"
        );
    }

    let mut sub = git_opts(PullMethod::Git);
    sub.sub_path = "sub".into();
    let (_work, ctx) = open(&format!("{url}#v1"), &sub).unwrap();
    assert_eq!(read(&ctx, "app.txt"), "app-1\n");
    assert!(ctx.root().ends_with("sub"));

    // kaniko's --git branch= overrides the ref in the URL.
    let mut branch = git_opts(PullMethod::Git);
    branch.git.branch = Some("feature".into());
    let (_work, ctx) = open(&format!("{url}#main"), &branch).unwrap();
    assert_eq!(read(&ctx, "version"), "feature\n");

    let err = open(&format!("{url}#no-such-branch"), &opts).unwrap_err();
    assert!(
        err.contains("no-such-branch") && err.contains(&url),
        "error names the ref and the URL: {err}"
    );
    let missing_commit = "0123456789abcdef0123456789abcdef01234567";
    let err = open(&format!("{url}#{missing_commit}"), &opts).unwrap_err();
    assert!(
        err.contains(missing_commit) && err.contains(&url),
        "error names the commit and the URL: {err}"
    );
    let err = open(&format!("git://127.0.0.1:{}/nope.git", daemon.port), &opts).unwrap_err();
    assert!(err.contains("nope.git"), "{err}");
}

/// ssh options for `server`: its client key, `known_hosts` with the given line, and the built
/// kiln-executor as the ssh program.
fn ssh_opts(server: &GitSshServer, dir: &Path, known_hosts: &str) -> ContextOptions {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("known_hosts"), format!("{known_hosts}\n")).unwrap();
    let mut o = ContextOptions::default();
    o.git.ssh = Some(SshAuth {
        private_key: server.client_key.clone(),
        known_hosts: dir.join("known_hosts"),
        helper_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_kiln-executor"))),
    });
    o
}

#[test]
fn ssh_with_a_key_and_checked_host_keys() {
    if !tools_present() || !require_tools(&["sshd", "ssh-keygen"]) {
        return;
    }
    let repo = make_repo();
    let server = GitSshServer::start(&repo.base);
    let repo_path = repo.base.join("git/repo.git");
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        server.user,
        server.port,
        repo_path.display()
    );
    let keys = tempfile::tempdir().unwrap();
    // The host's key listed: fetched, at a branch, a tag and a commit, as over the other transports.
    let good = ssh_opts(&server, &keys.path().join("good"), &server.known_hosts_line);
    for (spec, want) in [
        (url.clone(), "2\n"),
        (format!("{url}#feature"), "feature\n"),
        (format!("{url}#v1"), "1\n"),
        (format!("{url}#main#{}", repo.c1), "1\n"),
        (format!("git+{url}#main"), "2\n"),
    ] {
        let (_work, ctx) = open(&spec, &good).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(read(&ctx, "version"), want, "{spec}");
        assert!(!ctx.root().join(".git").exists(), "{spec}");
    }

    // Another host's line only: refused before any key is offered, saying which key it saw.
    let other = ssh_keygen(&keys.path().join("other_host"));
    let unknown = ssh_opts(
        &server,
        &keys.path().join("unknown"),
        &format!("[127.0.0.1]:{} {other}", server.port + 1),
    );
    let err = open(&url, &unknown).unwrap_err();
    let mut seen = vec![err.clone()];
    assert!(
        err.contains("host key verification failed") && err.contains("does not list"),
        "{err}"
    );
    assert!(
        err.contains("SHA256:"),
        "the error names the offered key: {err}"
    );
    // Another key recorded for this very host: refused as a changed key.
    let changed = ssh_opts(
        &server,
        &keys.path().join("changed"),
        &format!("[127.0.0.1]:{} {other}", server.port),
    );
    let err = open(&url, &changed).unwrap_err();
    seen.push(err.clone());
    assert!(err.contains("records another"), "{err}");

    // A key the server does not accept.
    let mut stranger = ssh_opts(
        &server,
        &keys.path().join("stranger"),
        &server.known_hosts_line,
    );
    ssh_keygen(&keys.path().join("stranger_key"));
    stranger.git.ssh.as_mut().unwrap().private_key = keys.path().join("stranger_key");
    let err = open(&url, &stranger).unwrap_err();
    seen.push(err.clone());
    assert!(err.contains("Permission denied"), "{err}");

    // No key at all: said at once, nothing is tried.
    let err = open(&url, &ContextOptions::default()).unwrap_err();
    seen.push(err.clone());
    assert!(err.contains("ssh-privatekey and known_hosts"), "{err}");
    // Nothing of the key in any message.
    let key_text = fs::read_to_string(&server.client_key).unwrap();
    let body = key_text.lines().nth(1).unwrap();
    for e in &seen {
        assert!(!e.contains(body), "{e}");
    }
}

#[test]
fn ssh_secret_volume_needs_known_hosts() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ssh-privatekey"), "not read yet\n").unwrap();
    let err = git_secret_from_dir(dir.path()).unwrap_err();
    assert!(
        err.contains("known_hosts") && err.contains("never connects"),
        "{err}"
    );
    fs::write(dir.path().join("known_hosts"), "h ssh-ed25519 AAAA\n").unwrap();
    let (creds, ssh) = git_secret_from_dir(dir.path()).unwrap();
    assert!(creds.is_none());
    let ssh = ssh.unwrap();
    assert_eq!(ssh.private_key, dir.path().join("ssh-privatekey"));
    assert_eq!(ssh.known_hosts, dir.path().join("known_hosts"));
    // A basic-auth Secret still works as before; an empty one is an error naming every key.
    let basic = tempfile::tempdir().unwrap();
    fs::write(basic.path().join("username"), "u").unwrap();
    fs::write(basic.path().join("password"), "p").unwrap();
    let (creds, ssh) = git_secret_from_dir(basic.path()).unwrap();
    assert_eq!(creds.unwrap().username, "u");
    assert!(ssh.is_none());
    let empty = tempfile::tempdir().unwrap();
    let err = git_secret_from_dir(empty.path()).unwrap_err();
    assert!(err.contains("ssh-privatekey"), "{err}");
}

#[test]
fn smart_https_with_credentials() {
    if !tools_present() {
        return;
    }
    let repo = make_repo();
    let (cert, key) = self_signed_cert(&repo.base);
    let server = http_server_with(&repo.base, Some("builder:s3cret"), Some((&cert, &key)));
    let url = format!("https://127.0.0.1:{}/git/repo.git", server.port);

    let mut opts = ContextOptions::default();
    opts.git.insecure_skip_tls = true;
    opts.git.credentials = Some(GitCredentials {
        username: "builder".into(),
        password: "s3cret".into(),
    });
    let (_work, ctx) = open(&format!("{url}#feature"), &opts).unwrap();
    assert_eq!(read(&ctx, "version"), "feature\n");
    let (_work, ctx) = open(&format!("git+{url}#{}", repo.c2), &opts).unwrap();
    assert_eq!(read(&ctx, "version"), "2\n");
    // kaniko's meaning of git://: the same repository over https (GIT_PULL_METHOD's default).
    let spec = format!("git://127.0.0.1:{}/git/repo.git#v1", server.port);
    let (_work, ctx) = open(&spec, &opts).unwrap();
    assert_eq!(read(&ctx, "version"), "1\n");

    // The self-signed certificate is refused unless insecure-skip-tls=true.
    let mut verify = opts.clone();
    verify.git.insecure_skip_tls = false;
    let err = open(&format!("{url}#feature"), &verify).unwrap_err();
    assert!(err.contains(&url), "{err}");
    // No credentials, and wrong ones: clear errors that never show the password.
    let mut anonymous = opts.clone();
    anonymous.git.credentials = None;
    let err = open(&format!("{url}#feature"), &anonymous).unwrap_err();
    assert!(err.contains(&url), "{err}");
    let mut wrong = opts.clone();
    wrong.git.credentials = Some(GitCredentials {
        username: "builder".into(),
        password: "wrong-password".into(),
    });
    let err = open(&format!("{url}#feature"), &wrong).unwrap_err();
    assert!(
        err.contains(&url) && !err.contains("wrong-password"),
        "{err}"
    );
}

#[test]
fn smart_http_without_tls() {
    if !tools_present() {
        return;
    }
    let repo = make_repo();
    let server = http_server(&repo.base, None);
    let url = format!("http://127.0.0.1:{}/git/repo.git", server.port);
    let (_work, ctx) = open(&format!("{url}#refs/tags/v1"), &ContextOptions::default()).unwrap();
    assert_eq!(read(&ctx, "version"), "1\n");
    // Credentials given for a plain-http repository are sent (as git, go-git and BuildKit do;
    // the executor warns that they travel in clear text), and wrong ones fail without echoing
    // them.
    let protected = http_server(&repo.base, Some("builder:s3cret"));
    let mut opts = ContextOptions::default();
    opts.git.credentials = Some(GitCredentials {
        username: "builder".into(),
        password: "s3cret".into(),
    });
    let url = format!("http://127.0.0.1:{}/git/repo.git", protected.port);
    let (_work, ctx) = open(&format!("{url}#main"), &opts).unwrap();
    assert_eq!(read(&ctx, "version"), "2\n");
    opts.git.credentials = Some(GitCredentials {
        username: "builder".into(),
        password: "wrong-pass".into(),
    });
    let err = open(&format!("{url}#main"), &opts).unwrap_err();
    assert!(!err.contains("wrong-pass"), "{err}");
}

#[test]
fn tarball_urls_and_sub_path_escapes() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = http_server(dir.path(), None);
    fs::write(
        dir.path().join("files/ctx.tar.gz"),
        support::tar_gz(&[("Dockerfile", "FROM scratch\n"), ("app/main.txt", "hi\n")]),
    )
    .unwrap();
    fs::write(dir.path().join("files/not-a-tar.tar.gz"), "hello").unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);

    let (_work, ctx) = open(&format!("{base}/ctx.tar.gz"), &ContextOptions::default()).unwrap();
    assert_eq!(read(&ctx, "app/main.txt"), "hi\n");

    let sub = ContextOptions {
        sub_path: "app".into(),
        ..ContextOptions::default()
    };
    let (_work, ctx) = open(&format!("{base}/ctx.tar.gz"), &sub).unwrap();
    assert_eq!(read(&ctx, "main.txt"), "hi\n");

    let missing = format!("{base}/missing.tar.gz");
    let err = open(&missing, &ContextOptions::default()).unwrap_err();
    assert!(
        err.contains(&missing) && err.contains("404"),
        "error names the URL and status: {err}"
    );
    let bad = format!("{base}/not-a-tar.tar.gz");
    let err = open(&bad, &ContextOptions::default()).unwrap_err();
    assert!(err.contains(&bad), "{err}");

    // --context-sub-path never leaves the context, lexically or through a symlink.
    let local = tempfile::tempdir().unwrap();
    fs::create_dir_all(local.path().join("ctx/inner")).unwrap();
    std::os::unix::fs::symlink("/etc", local.path().join("ctx/link")).unwrap();
    let spec = local.path().join("ctx");
    for escape in ["..", "inner/../..", "link", "inner/nope"] {
        let o = ContextOptions {
            sub_path: escape.into(),
            ..ContextOptions::default()
        };
        let err = open(spec.to_str().unwrap(), &o).unwrap_err();
        assert!(err.contains("--context-sub-path"), "{escape}: {err}");
    }
}

#[test]
fn executor_builds_from_stdin_and_git() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tarball = support::tar_gz(&[
        (
            "ctx/Dockerfile",
            "FROM scratch\nCOPY hello.txt /hello.txt\n",
        ),
        ("ctx/hello.txt", "from stdin\n"),
    ]);
    let layout = dir.path().join("stdin-layout");
    let (ok, log) = support::run_executor(
        &[
            "--context",
            "tar://stdin",
            "--context-sub-path",
            "ctx",
            "--no-push",
            "--oci-layout-path",
            layout.to_str().unwrap(),
        ],
        &[],
        Some(tarball),
    );
    assert!(ok, "build from tar://stdin failed:\n{log}");
    assert_eq!(
        support::layout_entry(&layout, "/hello.txt").as_deref(),
        Some("from stdin\n")
    );

    let (ok, log) = support::run_executor(
        &["--context", "tar://stdin", "--no-push"],
        &[],
        Some(Vec::new()),
    );
    assert!(
        !ok && log.contains("stdin"),
        "empty stdin must fail clearly:\n{log}"
    );

    let repo = make_repo();
    let daemon = git_daemon(&repo);
    let layout = dir.path().join("git-layout");
    let termination = dir.path().join("termination");
    fs::write(&termination, "").unwrap();
    let context = format!("git://127.0.0.1:{}/repo.git#refs/tags/v1", daemon.port);
    let (ok, log) = support::run_executor(
        &[
            "--context",
            &context,
            "--context-sub-path",
            "sub",
            "--git",
            "single-branch=true,recurse-submodules=false",
            "--no-push",
            "--oci-layout-path",
            layout.to_str().unwrap(),
        ],
        &[
            ("GIT_PULL_METHOD", "git"),
            ("KILN_TERMINATION_LOG", termination.to_str().unwrap()),
        ],
        None,
    );
    assert!(ok, "build from {context} failed:\n{log}");
    assert_eq!(
        support::layout_entry(&layout, "/app.txt").as_deref(),
        Some("app-1\n")
    );
    // The termination message (what the operator reports as status.source.commit) names the
    // commit the tag points at.
    let message: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&termination).unwrap()).unwrap();
    assert_eq!(message["commit"], repo.c1.as_str(), "{message}");
}

/// The executor takes `GIT_TOKEN` out of its environment block at start (re-executing itself,
/// see `kiln_executor::credentials`) and must still use it: an https repository that accepts only
/// the token builds, and the token is in neither the log nor the image.
#[test]
fn executor_uses_git_token_from_its_environment() {
    if !tools_present() {
        return;
    }
    let repo = make_repo();
    let (cert, key) = self_signed_cert(&repo.base);
    let token = format!("tok-{}-Qw7", std::process::id());
    // kaniko's convention: the token is the user name, the password empty.
    let server = http_server_with(&repo.base, Some(&format!("{token}:")), Some((&cert, &key)));
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let context = format!(
        "https://127.0.0.1:{}/git/repo.git#refs/tags/v1",
        server.port
    );
    let args = [
        "--context",
        &context,
        "--context-sub-path",
        "sub",
        "--git",
        "insecure-skip-tls=true",
        "--no-push",
        "--oci-layout-path",
        layout.to_str().unwrap(),
    ];
    let (ok, log) = support::run_executor(&args, &[("GIT_TOKEN", &token)], None);
    assert!(ok, "build from {context} with GIT_TOKEN failed:\n{log}");
    assert_eq!(
        support::layout_entry(&layout, "/app.txt").as_deref(),
        Some("app-1\n")
    );
    assert!(!log.contains(&token), "the token is in the log:\n{log}");
    let (found, files) = support::scan_files(&layout, &[("GIT_TOKEN", &token)]);
    assert!(found.is_empty() && files > 0, "{found:?} ({files} files)");
    // Without the token the same build is refused: the build above did use it.
    let (ok, log) = support::run_executor(&args, &[], None);
    assert!(
        !ok,
        "the repository accepted a build without the token:\n{log}"
    );
}

#[test]
fn checkout_keeps_modes_and_links_and_refuses_unknown_submodules() {
    if !tools_present() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(&work.join("run.sh"), "#!/bin/sh\n");
    fs::set_permissions(work.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&work.join("data/plain.txt"), "plain\n");
    std::os::unix::fs::symlink("data/plain.txt", work.join("link")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "files"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    // A gitlink (submodule entry) without fetching anything for it.
    git(
        &work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{head},vendor/lib"),
        ],
    );
    git(&work, &["commit", "-qm", "submodule"]);
    let repo = Repo {
        base: serve_bare(dir.path(), &work),
        _dir: dir,
        c1: head.clone(),
        c2: head,
    };
    let daemon = git_daemon(&repo);
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);

    let (_work, ctx) = open(&url, &git_opts(PullMethod::Git)).unwrap();
    let mode = |rel: &str| {
        fs::symlink_metadata(ctx.root().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("data/plain.txt"), 0o644);
    assert_eq!(
        fs::read_link(ctx.root().join("link")).unwrap(),
        PathBuf::from("data/plain.txt")
    );
    assert!(ctx.root().join("vendor/lib").is_dir());

    // A gitlink that .gitmodules does not name has no URL: git fails, and so does Kiln.
    let mut recurse = git_opts(PullMethod::Git);
    recurse.git.recurse_submodules = true;
    let err = open(&url, &recurse).unwrap_err();
    assert!(
        err.contains(".gitmodules") && err.contains("vendor/lib"),
        "{err}"
    );
}

/// Adds a gitlink `path` -> `commit` with `.gitmodules` naming `url` for it, and commits.
fn add_submodule(work: &Path, name: &str, path: &str, url: &str, commit: &str) {
    let modules = work.join(".gitmodules");
    let mut text = fs::read_to_string(&modules).unwrap_or_default();
    text.push_str(&format!(
        "[submodule \"{name}\"]\n\tpath = {path}\n\turl = {url}\n"
    ));
    write(&modules, &text);
    git(work, &["add", ".gitmodules"]);
    git(
        work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{path}"),
        ],
    );
    git(work, &["commit", "-qm", &format!("submodule {name}")]);
}

/// A work tree `<dir>/<name>` with one commit of `files`; returns its path and the commit.
fn work_repo(dir: &Path, name: &str, files: &[(&str, &str)]) -> (PathBuf, String) {
    let work = dir.join(name);
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    for (path, content) in files {
        write(&work.join(path), content);
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", name]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    (work, head)
}

/// `--git recurse-submodules=true`: submodules (relative URLs, nested) are fetched at the commits
/// the superproject records, not their branches' tips; without it their directories stay empty.
#[test]
fn submodules_are_fetched_recursively_at_recorded_commits() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (leaf, leaf1) = work_repo(d, "leaf", &[("leaf.txt", "leaf-1\n")]);
    write(&leaf.join("leaf.txt"), "leaf-2\n");
    git(&leaf, &["commit", "-qam", "leaf two"]);
    let (sub, _) = work_repo(d, "sub", &[("sub.txt", "sub-1\n")]);
    add_submodule(&sub, "deep", "deep", "../leaf.git", &leaf1);
    let sub1 = git(&sub, &["rev-parse", "HEAD"]);
    write(&sub.join("sub.txt"), "sub-2\n");
    git(&sub, &["commit", "-qam", "sub two"]);
    let (top, _) = work_repo(
        d,
        "top",
        &[("Dockerfile", "FROM scratch\nCOPY vendor/lib /lib/\n")],
    );
    add_submodule(&top, "lib", "vendor/lib", "../sub.git", &sub1);
    let base = serve_bare_as(d, &leaf, "leaf.git");
    serve_bare_as(d, &sub, "sub.git");
    serve_bare_as(d, &top, "top.git");
    let daemon = git_daemon_at(&base);
    let url = format!("git://127.0.0.1:{}/top.git", daemon.port);

    let mut recurse = git_opts(PullMethod::Git);
    recurse.git.recurse_submodules = true;
    let (_work, ctx) = open(&url, &recurse).unwrap();
    assert_eq!(read(&ctx, "vendor/lib/sub.txt"), "sub-1\n");
    assert_eq!(read(&ctx, "vendor/lib/deep/leaf.txt"), "leaf-1\n");
    assert!(!ctx.root().join("vendor/lib/.git").exists());

    let (_work, ctx) = open(&url, &git_opts(PullMethod::Git)).unwrap();
    let entries = fs::read_dir(ctx.root().join("vendor/lib")).unwrap().count();
    assert_eq!(
        entries, 0,
        "recurse-submodules=false leaves the directory empty"
    );

    // The same through the executor and its --git flag.
    let layout = d.join("layout");
    let (ok, log) = support::run_executor(
        &[
            "--context",
            &url,
            "--git",
            "recurse-submodules=true",
            "--no-push",
            "--oci-layout-path",
            layout.to_str().unwrap(),
        ],
        &[("GIT_PULL_METHOD", "git")],
        None,
    );
    assert!(ok, "build from {url} with submodules failed:\n{log}");
    assert_eq!(
        support::layout_entry(&layout, "/lib/deep/leaf.txt").as_deref(),
        Some("leaf-1\n")
    );

    // A submodule may not point the fetch at a path on the build machine.
    let (local, _) = work_repo(d, "local", &[("x", "x\n")]);
    add_submodule(&local, "etc", "etc", leaf.to_str().unwrap(), &leaf1);
    serve_bare_as(d, &local, "local.git");
    let err = open(
        &format!("git://127.0.0.1:{}/local.git", daemon.port),
        &recurse,
    )
    .unwrap_err();
    assert!(err.contains("only https://"), "{err}");
}

/// `ADD <git URL>#ref:subdir` checks the repository out (no `.git`) and copies it like a
/// directory, over the git protocol and smart HTTP; with `--keep-git-dir` the `.git` of the
/// shallow clone comes along, a repository `git log` and `git status` read.
#[test]
fn add_git_url_copies_a_ref_and_subdir() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo();
    let daemon = git_daemon(&repo);
    let http = http_server(&repo.base, None);
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let build = |dockerfile: String| {
        let file = dir.path().join("Dockerfile");
        fs::write(&file, dockerfile).unwrap();
        let layout = dir.path().join("layout");
        let _ = fs::remove_dir_all(&layout);
        let (ok, log) = support::run_executor(
            &[
                "--context",
                ctx.to_str().unwrap(),
                "--dockerfile",
                file.to_str().unwrap(),
                "--no-push",
                "--oci-layout-path",
                layout.to_str().unwrap(),
            ],
            &[],
            None,
        );
        (ok, log, layout)
    };
    let git_url = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    let http_url = format!("http://127.0.0.1:{}/git/repo.git", http.port);
    let (ok, log, layout) = build(format!(
        "FROM scratch\nADD {git_url}#v1:sub /app/\nADD {git_url} /whole/\nADD {http_url}#feature /feature/\n"
    ));
    assert!(ok, "{log}");
    let entry = |p: &str| support::layout_entry(&layout, p);
    assert_eq!(entry("/app/app.txt").as_deref(), Some("app-1\n"));
    assert_eq!(entry("/app/version"), None);
    assert_eq!(entry("/whole/version").as_deref(), Some("2\n"));
    assert_eq!(entry("/whole/sub/app.txt").as_deref(), Some("app-2\n"));
    assert_eq!(entry("/whole/.git"), None);
    assert_eq!(entry("/feature/version").as_deref(), Some("feature\n"));

    let (ok, log, layout) = build(format!(
        "FROM scratch\nADD --keep-git-dir {http_url}#feature /k/\nADD --keep-git-dir {git_url}#v1:sub /s/\n"
    ));
    assert!(ok, "{log}");
    let root = dir.path().join("root");
    support::layout_unpack(&layout, &root);
    let kept = root.join("k");
    assert_eq!(
        fs::read_to_string(kept.join("version")).unwrap(),
        "feature\n"
    );
    assert_eq!(git(&kept, &["log", "--format=%s"]), "feature");
    assert_eq!(git(&kept, &["status", "--porcelain"]), "");
    // A branch is checked out as that branch, as BuildKit's `git checkout <branch>`.
    assert_eq!(
        git(&kept, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "feature"
    );
    assert_eq!(
        git(&kept, &["config", "remote.origin.url"]),
        http_url.as_str()
    );
    assert_eq!(
        git(&kept, &["rev-parse", "HEAD"]),
        git(&repo.base.join("git/repo.git"), &["rev-parse", "feature"])
    );
    // A subdir of the checkout is copied without the repository's `.git`.
    assert!(root.join("s/app.txt").is_file() && !root.join("s/.git").exists());
    let (ok, log, _) = build("FROM scratch\nADD --keep-git-dir Dockerfile /k/\n".into());
    assert!(!ok && log.contains("git URLs only"), "{log}");
    let (ok, log, _) = build(format!("FROM scratch\nADD {git_url}#v1:missing /m/\n"));
    assert!(!ok && log.contains("missing"), "{log}");
}
