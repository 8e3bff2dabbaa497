//! `ADD <git URL>`: a repository named as BuildKit recognises one (`git://`, or an `http(s)://`
//! URL whose path ends in `.git`), with a `#ref:subdir` fragment, is checked out (without `.git`
//! unless `--keep-git-dir`) and copied like a directory of the context.

use std::path::Path;

use crate::commands::{CommandError, StageState};
use crate::copier::Source;

/// A parsed `ADD` git source.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct GitAdd {
    pub url: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
}

/// `Some` when `source` names a git repository the way BuildKit's `ParseGitRef` tells one from
/// a plain download; an error for git forms Kiln does not fetch.
pub(super) fn parse(source: &str) -> Result<Option<GitAdd>, CommandError> {
    let fail = |what: &str| {
        Err(CommandError::Invalid(format!(
            "ADD {source}: {what} is not supported by kiln-executor"
        )))
    };
    let (url, fragment) = source.split_once('#').unwrap_or((source, ""));
    let is_git = if url.starts_with("git@") || url.starts_with("ssh://") {
        return fail("a git URL over ssh");
    } else if url.starts_with("git://") {
        true
    } else if url.starts_with("http://") || url.starts_with("https://") {
        url.split('?').next().unwrap_or(url).ends_with(".git")
    } else {
        false
    };
    if !is_git {
        return Ok(None);
    }
    if url.contains('?') {
        return fail("a query (?ref=, ?subdir=) in a git URL; use #ref:subdir");
    }
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(Some(GitAdd {
        url: url.to_string(),
        reference: non_empty(reference),
        subdir: non_empty(subdir.trim_matches('/')),
    }))
}

/// Check the repository out under the stage scratch (kept alive by the returned guard) and name
/// the directory to copy: the whole tree, or `subdir` inside it (symlinks resolved inside it).
/// With `keep_git_dir` the tree's root holds the clone as `.git`.
pub(super) fn checkout(
    git: &GitAdd,
    keep_git_dir: bool,
    state: &StageState,
) -> Result<(tempfile::TempDir, Source), CommandError> {
    let dir = tempfile::Builder::new()
        .prefix("add-git-")
        .tempdir_in(&state.scratch)
        .map_err(|e| {
            CommandError::io(
                format!("creating a directory under {}", state.scratch.display()),
                e,
            )
        })?;
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree)
        .map_err(|e| CommandError::io(format!("creating {}", tree.display()), e))?;
    crate::context::checkout_git(
        &git.url,
        git.reference.as_deref(),
        keep_git_dir,
        dir.path(),
        &tree,
    )?;
    let path = Path::new(git.subdir.as_deref().unwrap_or(""));
    let name = path.file_name().unwrap_or_default().to_os_string();
    let source = Source::in_root(&tree, path, &name);
    let resolved = crate::fsutil::resolve_in_root(&tree, path, true)
        .map_err(|e| CommandError::io(format!("ADD {}: subdir", git.url), e))?;
    if !resolved.is_dir() {
        return Err(CommandError::Invalid(format!(
            "ADD {}: {} is not a directory of the repository",
            git.url,
            path.display()
        )));
    }
    Ok((dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_are_told_from_downloads_as_buildkit_does() {
        let git = |s: &str| parse(s).unwrap();
        assert_eq!(git("https://h/file.tar.gz"), None);
        assert_eq!(git("https://h/page"), None);
        assert_eq!(
            git("https://h/r.git#v1:sub/dir/"),
            Some(GitAdd {
                url: "https://h/r.git".into(),
                reference: Some("v1".into()),
                subdir: Some("sub/dir".into()),
            })
        );
        assert_eq!(
            git("git://h/r"),
            Some(GitAdd {
                url: "git://h/r".into(),
                reference: None,
                subdir: None,
            })
        );
        assert_eq!(
            git("http://h/r.git#:docs").unwrap().subdir.as_deref(),
            Some("docs")
        );
        for refused in [
            "git@github.com:o/r.git",
            "ssh://h/r.git",
            "https://h/r.git?ref=main",
        ] {
            let err = parse(refused).unwrap_err().to_string();
            assert!(err.contains("not supported"), "{err}");
        }
    }
}
