//! Where the files of a COPY/ADD come from: context sources, `COPY --from` paths and globs
//! resolved inside the source root (as BuildKit reads them), and heredoc sources written to a
//! scratch directory under checked names. It only names and prepares sources; the copier reads
//! and writes them.

use std::path::{Path, PathBuf};

use super::StageState;
use crate::commands::CommandError;
use crate::copier::{is_archive, Source};
use crate::fsutil::{clean_abs, resolve_in_root};
use crate::rootfs::{list_dir, Follow, Resolution, RootFd};

/// The copier's view of context sources: each confined to the context, at its real path there
/// (the context checked that every symlink on the way stays inside), under the name it was
/// given.
pub(super) fn context_sources(
    ctx: &crate::context::BuildContext,
    raw: &[String],
) -> Result<Vec<Source>, CommandError> {
    let mut out = Vec::new();
    for path in ctx.resolve_sources(raw)? {
        let real = std::fs::canonicalize(&path)
            .map_err(|e| CommandError::io(format!("reading {}", path.display()), e))?;
        let rel = real.strip_prefix(ctx.root()).map_err(|_| {
            CommandError::Context(crate::context::ContextError::OutsideContext(
                path.display().to_string(),
            ))
        })?;
        let name = path.file_name().unwrap_or_default();
        let mut src = Source::in_root(ctx.root(), rel, name);
        src.shown = path;
        out.push(src);
    }
    Ok(out)
}

/// Whether ADD unpacks `path` (a regular file, never through a symlink, that holds an archive).
pub(super) fn is_archive_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) && is_archive(path)
}

/// The sources a `COPY --from` path names inside another root (a stage's or an image's), as
/// BuildKit reads them: every symlink is resolved inside that root, absolute ones included, so
/// `/x/a -> /etc/shadow` names the root's own `/etc/shadow` and never the host's; `*`/`?`/`[...]`
/// in the last component are matched against the directory's entries, and each match keeps its
/// own name. A path, or a match, that resolves to nothing in the root is an error naming it.
pub(super) fn root_sources(
    root: &Path,
    src: &str,
    name: &str,
) -> Result<Vec<Source>, CommandError> {
    let fail = |what: String| CommandError::Invalid(format!("{name} --from source {src}: {what}"));
    let has_glob = src.contains(['*', '?', '[']);
    let mut in_root: Vec<PathBuf> = Vec::new();
    if !has_glob {
        in_root.push(PathBuf::from(clean_abs(src)));
    } else {
        let (dir, pattern) = match src.rsplit_once('/') {
            Some((d, p)) => (if d.is_empty() { "/" } else { d }, p),
            None => (".", src),
        };
        if dir.contains(['*', '?', '[']) {
            return Err(fail(
                "wildcards are supported in the last path component only".to_string(),
            ));
        }
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| fail(format!("bad pattern: {e}")))?
            .compile_matcher();
        let dir = PathBuf::from(clean_abs(dir));
        // A directory that is not there holds no match, as in the build context.
        let entries = match list_in_root(root, &dir) {
            Ok(entries) => entries,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Vec::new()
            }
            Err(e) => return Err(CommandError::io(format!("{name} --from source {src}"), e)),
        };
        for entry in entries {
            if matcher.is_match(&entry) {
                in_root.push(dir.join(entry));
            }
        }
        if in_root.is_empty() {
            // As for context sources: BuildKit copies nothing for an empty match and goes on.
            tracing::warn!(
                "{name} --from source {src}: no file matches; nothing is copied for it (as BuildKit does)"
            );
        }
    }
    let mut out = Vec::new();
    for path in in_root {
        let resolved = resolve_in_root(root, &path, true)
            .map_err(|e| CommandError::io(format!("{name} --from source {src}"), e))?;
        if std::fs::symlink_metadata(&resolved).is_err() {
            let target = crate::rootfs::image_path(root, &resolved);
            let what = if has_glob || target != path.to_string_lossy() {
                format!(
                    "{} resolves to {target}, which does not exist there (symlinks in a --from \
                     source are followed inside its root)",
                    path.display()
                )
            } else {
                "no such file or directory".to_string()
            };
            return Err(fail(what));
        }
        let file_name = path.file_name().unwrap_or_default().to_os_string();
        out.push(Source::in_root(root, &path, &file_name));
    }
    Ok(out)
}

/// The names in in-root directory `dir` of `root` (symlinks on the way resolved inside it),
/// sorted; the directory is opened from the root's descriptor, never through a host path.
fn list_in_root(root: &Path, dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    let resolved = resolve_in_root(root, dir, true)?;
    let rel = resolved
        .strip_prefix(root)
        .map_err(|_| std::io::Error::other("the directory resolves outside the root"))?;
    let fd = RootFd::new(root, Resolution::detect())?.open(
        rel,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        Follow::InRoot,
    )?;
    list_dir(std::os::fd::AsFd::as_fd(&fd))
}

/// The sources a `COPY --from` path names inside another root (see [`root_sources`]), each as
/// the name it takes in the destination and its host path with symlinks resolved inside that
/// root, for the cache key to read: the name counts because a renamed symlink to the same file
/// copies a file of another name.
pub(crate) fn resolve_root_source(
    root: &Path,
    src: &str,
    name: &str,
) -> Result<Vec<(std::ffi::OsString, PathBuf)>, CommandError> {
    root_sources(root, src, name)?
        .into_iter()
        .map(|s| {
            resolve_in_root(root, &s.path, true)
                .map(|host| (s.name, host))
                .map_err(|e| CommandError::io(format!("{name} --from source {src}"), e))
        })
        .collect()
}

/// A new directory for this COPY's heredoc files, removed when it is dropped.
pub(super) fn heredoc_scratch(state: &StageState) -> Result<tempfile::TempDir, CommandError> {
    let parent = state.scratch.join("heredocs");
    std::fs::create_dir_all(&parent)
        .map_err(|e| CommandError::io(format!("creating {}", parent.display()), e))?;
    tempfile::Builder::new()
        .prefix("copy-")
        .tempdir_in(&parent)
        .map_err(|e| CommandError::io(format!("creating a directory in {}", parent.display()), e))
}

/// Why a heredoc name cannot name a file: it is the file's name in the destination, so it must
/// be one path component. (BuildKit cleans it as a path inside an empty directory instead, so
/// `../../x` becomes `x` and `a/b` fails for want of `a`; refusing both says what is wrong.)
fn heredoc_name_problem(doc_name: &str) -> Option<&'static str> {
    if doc_name.is_empty() {
        Some("it is empty")
    } else if doc_name == "." || doc_name == ".." {
        Some("it is \".\" or \"..\"")
    } else if doc_name.contains('/') {
        Some("it contains \"/\"")
    } else if doc_name.contains('\0') {
        Some("it contains a NUL character")
    } else {
        None
    }
}

/// Write heredoc `doc_name` (the `index`th source) into `dir`, a fresh directory of this COPY:
/// the name is checked to be one path component, and the file is created new, never through a
/// symlink.
pub(super) fn write_heredoc_file(
    dir: &tempfile::TempDir,
    index: usize,
    doc_name: &str,
    content: &str,
    instruction: &str,
) -> Result<PathBuf, CommandError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(problem) = heredoc_name_problem(doc_name) {
        return Err(CommandError::Invalid(format!(
            "{instruction} <<{doc_name:?}: the heredoc name is the file's name in the destination \
             and must be a single file name, but {problem}"
        )));
    }
    // One directory per source: two heredocs of one COPY may share a name.
    let sub = dir.path().join(index.to_string());
    std::fs::create_dir(&sub)
        .map_err(|e| CommandError::io(format!("creating {}", sub.display()), e))?;
    let path = sub.join(doc_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| CommandError::io(format!("writing heredoc {doc_name}"), e))?;
    file.write_all(content.as_bytes())
        .map_err(|e| CommandError::io(format!("writing heredoc {doc_name}"), e))?;
    // Whatever the umask, as Docker writes it.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| CommandError::io(format!("setting mode of heredoc {doc_name}"), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::*;
    use crate::commands::test_support::state;
    use crate::commands::{CopySource, Outcome};
    use crate::rootfs::{with_resolution, Resolution};
    use kiln_dockerfile::CopyArgs;
    use kiln_dockerfile::Heredoc;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A host directory the copies must never read: a marker file with unique content.
    struct Host {
        dir: tempfile::TempDir,
        marker: PathBuf,
        content: String,
    }

    fn host() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let content = format!("host-secret-{}", std::process::id());
        let marker = dir.path().join("marker");
        fs::write(&marker, &content).unwrap();
        fs::create_dir(dir.path().join("subdir")).unwrap();
        fs::write(dir.path().join("subdir/inner"), &content).unwrap();
        Host {
            dir,
            marker,
            content,
        }
    }

    /// A stage root whose `/x` holds symlinks out (absolute, relative, to a directory, a loop)
    /// and whose own `/etc/f` an absolute link may name.
    fn stage(host: &Host) -> tempfile::TempDir {
        let stage = tempfile::tempdir().unwrap();
        let s = stage.path();
        fs::create_dir_all(s.join("x")).unwrap();
        fs::create_dir_all(s.join("etc")).unwrap();
        fs::write(s.join("etc/f"), "stage's own").unwrap();
        symlink(&host.marker, s.join("x/abs")).unwrap();
        let up = "../".repeat(s.components().count() + 2);
        let rel = format!("{up}{}", host.marker.strip_prefix("/").unwrap().display());
        symlink(rel, s.join("x/rel")).unwrap();
        symlink(host.dir.path().join("subdir"), s.join("x/dir")).unwrap();
        symlink("loop2", s.join("x/loop1")).unwrap();
        symlink("loop1", s.join("x/loop2")).unwrap();
        symlink("/etc/f", s.join("x/own")).unwrap();
        stage
    }

    fn copy_from(
        root: &Path,
        stage: &Path,
        sources: &[&str],
        dest: &str,
    ) -> Result<Outcome, CommandError> {
        let mut st = state(root);
        let args = CopyArgs {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            dest: dest.to_string(),
            ..Default::default()
        };
        execute(&args, &mut st, Some(CopySource::Root(stage)), false)
    }

    /// Every file under `dir`, read.
    fn contents(dir: &Path) -> String {
        let mut all = String::new();
        for e in walkdir::WalkDir::new(dir).follow_links(false) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                all.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }

    #[test]
    fn glob_matches_are_resolved_inside_the_source_root() {
        let host = host();
        let stage = stage(&host);
        for resolution in Resolution::available() {
            with_resolution(resolution, || {
                let root = tempfile::tempdir().unwrap();
                // The link to the stage's own file copies that file, under the link's name.
                copy_from(root.path(), stage.path(), &["/x/o*"], "/out/").unwrap();
                assert_eq!(
                    fs::read_to_string(root.path().join("out/own")).unwrap(),
                    "stage's own"
                );
                // A link whose target is not in the stage fails, naming both.
                for (pattern, entry) in [("/x/a*", "/x/abs"), ("/x/r*", "/x/rel")] {
                    let err = copy_from(root.path(), stage.path(), &[pattern], "/out/")
                        .unwrap_err()
                        .to_string();
                    assert!(
                        err.contains(entry) && err.contains("does not exist"),
                        "{resolution:?} {pattern}: {err}"
                    );
                }
                let err = copy_from(root.path(), stage.path(), &["/x/d*"], "/out/")
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("/x/dir"), "{err}");
                let err = copy_from(root.path(), stage.path(), &["/x/loop*"], "/out/")
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("too many levels"), "{err}");
                assert!(!contents(root.path()).contains(&host.content));
            });
        }
    }

    /// BuildKit's rule: a wildcard that matches nothing (its directory missing included) copies
    /// nothing and the other sources are copied; if nothing matched at all, the step changes
    /// nothing, not even the destination. A plain path that is missing still fails.
    #[test]
    fn empty_wildcards_copy_nothing_and_the_rest() {
        let host = host();
        let stage = stage(&host);
        let root = tempfile::tempdir().unwrap();
        copy_from(
            root.path(),
            stage.path(),
            &["/x/nomatch*", "/x/o*", "/missing/*.txt"],
            "/out/",
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("out/own")).unwrap(),
            "stage's own"
        );
        copy_from(root.path(), stage.path(), &["/x/nomatch*"], "/none/").unwrap();
        assert!(!root.path().join("none").exists());
        let err = copy_from(
            root.path(),
            stage.path(),
            &["/x/nomatch*", "/x/nope"],
            "/out/",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/x/nope"), "{err}");
    }

    #[test]
    fn directories_and_plain_sources_copy_links_as_links() {
        let host = host();
        let stage = stage(&host);
        // The stage holds what the links name inside it: then they resolve there.
        let inside = stage.path().join(host.marker.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::write(&inside, "stage's marker").unwrap();
        for resolution in Resolution::available() {
            with_resolution(resolution, || {
                let root = tempfile::tempdir().unwrap();
                // A directory copies its symlinks as symlinks, never what they point to.
                copy_from(root.path(), stage.path(), &["/x"], "/tree").unwrap();
                for link in ["abs", "rel", "dir", "loop1", "own"] {
                    assert!(root.path().join("tree").join(link).is_symlink(), "{link}");
                }
                // A named source and a glob match follow the link inside the stage.
                copy_from(root.path(), stage.path(), &["/x/abs"], "/one/").unwrap();
                copy_from(root.path(), stage.path(), &["/x/*s"], "/glob/").unwrap();
                for copy in ["one/abs", "glob/abs"] {
                    assert_eq!(
                        fs::read_to_string(root.path().join(copy)).unwrap(),
                        "stage's marker",
                        "{resolution:?} {copy}"
                    );
                }
                assert!(!contents(root.path()).contains(&host.content));
            });
        }
        assert_eq!(fs::read_to_string(&host.marker).unwrap(), host.content);
    }

    #[test]
    fn heredoc_names_must_be_one_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let mut st = state(&root);
        for bad in ["../../x", "a/b", "..", ".", ""] {
            let args = CopyArgs {
                sources: vec![bad.to_string()],
                dest: "/d/".to_string(),
                heredocs: vec![Heredoc {
                    name: bad.to_string(),
                    content: "pwned\n".to_string(),
                    expand: false,
                    fd: 0,
                }],
                ..Default::default()
            };
            let err = execute(&args, &mut st, None, false)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("single file name"),
                "{bad}: {err}"
            );
        }
        assert!(!dir.path().join("x").exists());
        // A good name, twice in one COPY and again in the next, is written each time.
        for _ in 0..2 {
            let doc = Heredoc {
                name: "EOF".to_string(),
                content: "hello\n".to_string(),
                expand: false,
                fd: 0,
            };
            let args = CopyArgs {
                sources: vec!["EOF".to_string(), "EOF".to_string()],
                dest: "/d/".to_string(),
                heredocs: vec![doc],
                ..Default::default()
            };
            execute(&args, &mut st, None, false).unwrap();
        }
        assert_eq!(fs::read_to_string(root.join("d/EOF")).unwrap(), "hello\n");
    }

    /// The whole context, through a link inside it, with `.dockerignore`: copied from the
    /// context's own descriptor, links as links, ignored paths left out; a link out is refused.
    #[test]
    fn context_sources_stay_in_the_context() {
        let host = host();
        let dir = tempfile::tempdir().unwrap();
        let ctx_dir = dir.path().join("ctx");
        fs::create_dir_all(ctx_dir.join("d/sub")).unwrap();
        fs::write(ctx_dir.join("d/sub/f"), "f").unwrap();
        fs::write(ctx_dir.join("d/skip.log"), "ignored").unwrap();
        fs::write(ctx_dir.join(".dockerignore"), "**/*.log\n").unwrap();
        symlink("d", ctx_dir.join("dlink")).unwrap();
        symlink(&host.marker, ctx_dir.join("out")).unwrap();
        let work = dir.path().join("work");
        let mut ctx = crate::context::BuildContext::open(ctx_dir.to_str().unwrap(), &work).unwrap();
        ctx.load_ignore(&ctx_dir.join("Dockerfile")).unwrap();
        for resolution in Resolution::available() {
            with_resolution(resolution, || {
                let root = tempfile::tempdir().unwrap();
                let copy = |sources: &[&str], dest: &str| {
                    let mut st = state(root.path());
                    let args = CopyArgs {
                        sources: sources.iter().map(|s| s.to_string()).collect(),
                        dest: dest.to_string(),
                        ..Default::default()
                    };
                    execute(&args, &mut st, Some(CopySource::Context(&ctx)), false)
                };
                copy(&["."], "/all/").unwrap();
                assert_eq!(
                    fs::read_to_string(root.path().join("all/d/sub/f")).unwrap(),
                    "f"
                );
                assert!(root.path().join("all/dlink").is_symlink());
                assert!(root.path().join("all/out").is_symlink());
                assert!(!root.path().join("all/d/skip.log").exists());
                copy(&["dlink"], "/via-link").unwrap();
                assert!(root.path().join("via-link/sub/f").is_file());
                assert!(!root.path().join("via-link/skip.log").exists());
                let err = copy(&["out"], "/x").unwrap_err().to_string();
                assert!(err.contains("outside the build context"), "{err}");
                assert!(!contents(root.path()).contains(&host.content));
            });
        }
    }
}
