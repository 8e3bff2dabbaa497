//! A git repository served over smart HTTP (the git CLI's `git http-backend` through the test
//! kit's server) on an address the cluster's Pods reach: the stand-in for a team's repository in
//! the git-source scenarios. Made with the `git` CLI, never by Kiln's own git code.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context};
use kiln_testkit::GitHttpServer;

/// A repository with one commit on `main`, tagged, served until dropped.
pub struct ServedRepo {
    _dir: tempfile::TempDir,
    _server: GitHttpServer,
    /// `http://<bind>:<port>/git/<name>.git`
    pub url: String,
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=kiln-e2e",
            "-c",
            "user.email=e2e@kiln.invalid",
        ])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .context("run the git CLI")?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Commits `files` (path relative to the repository, content) on `main`, tags the commit `tag`
/// and serves the repository as `<name>.git` on `bind` (an address of this machine), requiring
/// basic auth `user:password` when `auth` is given.
pub fn serve(
    bind: &str,
    name: &str,
    files: &[(String, String)],
    tag: &str,
    auth: Option<&str>,
) -> anyhow::Result<ServedRepo> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    for (path, content) in files {
        let p = work.join(path);
        fs::create_dir_all(p.parent().context("a file path has a parent")?)?;
        fs::write(&p, content)?;
    }
    git(&work, &["init", "-q"])?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "examples"])?;
    git(&work, &["tag", "-a", tag, "-m", tag])?;
    let base = dir.path().join("srv");
    fs::create_dir_all(base.join("git"))?;
    let bare = base.join("git").join(format!("{name}.git"));
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &work.to_string_lossy(),
            &bare.to_string_lossy(),
        ],
    )?;
    let server = GitHttpServer::start(&base, bind, auth, None);
    let url = format!("http://{bind}:{}/git/{name}.git", server.port);
    Ok(ServedRepo {
        _dir: dir,
        _server: server,
        url,
    })
}
