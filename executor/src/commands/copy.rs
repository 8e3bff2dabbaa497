//! `COPY` and `ADD`: copy files from the build context, an earlier stage or an image into the
//! stage root (ADD also unpacks local archives). Sources are confined to their origin and writes
//! to the root; ownership, modes and heredoc sources follow Docker's rules.

use std::path::{Path, PathBuf};

use super::{
    CacheFlags, Cacheable, Command, CommandError, CopySource, FilesRead, InstructionError,
    KeyParts, Outcome, Reads, StageState,
};
use crate::copier::{add_archive_into_root, copy_into_root, is_archive, CopyOptions, Source};
use crate::fsutil::{clean_abs, resolve_in_root};
use crate::rootfs::{list_dir, Follow, Resolution, RootFd};
use kiln_dockerfile::CopyArgs;

/// `COPY` or (with `is_add`) `ADD`.
pub struct Copy<'a> {
    pub args: &'a CopyArgs,
    pub is_add: bool,
}

impl Copy<'_> {
    fn name(&self) -> &'static str {
        if self.is_add {
            "ADD"
        } else {
            "COPY"
        }
    }
}

impl Command for Copy<'_> {
    fn execute(
        &self,
        state: &mut StageState,
        source: Option<CopySource<'_>>,
    ) -> Result<Outcome, CommandError> {
        execute(self.args, state, source, self.is_add)
    }

    fn cacheable(&self, flags: CacheFlags) -> Cacheable {
        let args = self.args;
        // What a URL serves can change without the Dockerfile changing: only a pinned checksum
        // makes such an ADD cacheable.
        if self.is_add && args.checksum.is_none() && args.sources.iter().any(|s| s.contains("://"))
        {
            Cacheable::No
        } else if flags.copy {
            Cacheable::Yes
        } else {
            Cacheable::Disabled
        }
    }

    /// The expanded arguments, and the files read: heredoc sources with their content as the
    /// copy writes it (variables expanded as the step sees them), the other sources expanded.
    fn key_parts(&self, state: &StageState, _text: &str) -> Result<KeyParts, InstructionError> {
        let args = self.args;
        let expand_opt = |v: &Option<String>| v.as_ref().map(|t| state.expand(t)).transpose();
        let mut inline = Vec::new();
        let mut sources = Vec::new();
        for raw in &args.sources {
            if let Some(doc) = args.heredocs.iter().find(|d| &d.name == raw) {
                let content = if doc.expand {
                    // The key sees the body and every variable its expansion can use.
                    format!("{}\0{}", doc.content, state.run_env().join("\n"))
                } else {
                    doc.content.clone()
                };
                inline.push((doc.name.clone(), content));
            } else {
                sources.push(state.expand(raw)?);
            }
        }
        let expanded = serde_json::json!({
            "kind": self.name(),
            "sources": sources,
            "dest": state.in_image_path(&state.expand(&args.dest)?),
            "from": args.from,
            "chown": expand_opt(&args.chown)?,
            "chmod": expand_opt(&args.chmod)?,
            "link": args.link,
            "checksum": args.checksum,
            "keep_git_dir": args.keep_git_dir,
            "exclude": args.exclude,
            "parents": args.parents,
        });
        Ok(KeyParts {
            instruction: expanded.to_string(),
            visible_env: Vec::new(),
            files: Some(FilesRead {
                is_add: self.is_add,
                inline,
                sources,
            }),
        })
    }

    fn reads(&self) -> Option<Reads<'_>> {
        Some(Reads {
            from: self.args.from.as_deref(),
            sources: &self.args.sources,
        })
    }

    fn writes_root(&self) -> bool {
        true
    }

    fn needs_root(&self, cacheable: Cacheable) -> Option<&'static str> {
        if cacheable != Cacheable::Yes {
            Some("a step that is not cached")
        } else if self.args.chown.is_some() {
            Some("--chown resolves names in the image")
        } else {
            None
        }
    }
}

fn execute(
    args: &CopyArgs,
    state: &mut StageState,
    source: Option<CopySource<'_>>,
    is_add: bool,
) -> Result<Outcome, CommandError> {
    let name = if is_add { "ADD" } else { "COPY" };
    let dest_raw = state.expand(&args.dest)?;
    let dest = state.in_image_path(&dest_raw);
    let chown = match &args.chown {
        Some(spec) => {
            let spec = state.expand(spec)?;
            Some(
                crate::run::users::resolve_chown(&state.root, &spec)
                    .map_err(|e| CommandError::Invalid(format!("{name} --chown={spec}: {e}")))?,
            )
        }
        None => None,
    };
    let chmod = match &args.chmod {
        Some(text) => {
            let text = state.expand(text)?;
            Some(
                u32::from_str_radix(&text, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        CommandError::Invalid(format!(
                            "{name} --chmod={text}: expected an octal mode such as 0755"
                        ))
                    })?,
            )
        }
        None => None,
    };

    let mut sources: Vec<Source> = Vec::new();
    let mut origin_sources: Vec<String> = Vec::new();
    // Heredoc files live here until the copy is done.
    let mut heredoc_dir = None;
    for (index, raw) in args.sources.iter().enumerate() {
        if let Some(doc) = args.heredocs.iter().find(|d| &d.name == raw) {
            let content = if doc.expand {
                state.expand_heredoc(&doc.content)
            } else {
                doc.content.clone()
            };
            let dir = match &heredoc_dir {
                Some(dir) => dir,
                None => heredoc_dir.insert(heredoc_scratch(state)?),
            };
            let path = write_heredoc_file(dir, index, &doc.name, &content, name)?;
            sources.push(Source::from(path));
        } else {
            origin_sources.push(state.expand(raw)?);
        }
    }
    let (urls, local): (Vec<String>, Vec<String>) =
        origin_sources.into_iter().partition(|s| is_url(s));
    let origin_sources = local;
    if let Some(url) = urls.first() {
        if !is_add {
            return Err(CommandError::Invalid(format!(
                "COPY {url}: COPY does not accept URLs; use ADD"
            )));
        }
    }
    for url in &urls {
        sources.push(Source::from(download(
            url,
            args.checksum.as_deref(),
            state,
        )?));
    }

    let mut written_archives = false;
    let preserve_owner;
    match (&source, origin_sources.is_empty()) {
        (_, true) => preserve_owner = false,
        (Some(CopySource::Context(ctx)), false) => {
            preserve_owner = false;
            for src in context_sources(ctx, &origin_sources)? {
                let real = src.root.join(&src.path);
                if is_add && is_archive_file(&real) {
                    add_archive_into_root(&real, &state.root, &dest, chown)?;
                    written_archives = true;
                } else {
                    sources.push(src);
                }
            }
        }
        (Some(CopySource::Root(root)), false) => {
            preserve_owner = true;
            for src in &origin_sources {
                sources.extend(root_sources(root, src, name)?);
            }
        }
        (None, false) => {
            return Err(CommandError::Invalid(format!(
                "{name} has no source to copy from"
            )));
        }
    }

    if !sources.is_empty() {
        let exclude_fn = |p: &Path| -> bool {
            match &source {
                Some(CopySource::Context(ctx)) => p
                    .strip_prefix(ctx.root())
                    .map(|rel| ctx.is_excluded(rel))
                    .unwrap_or(false),
                _ => false,
            }
        };
        let opts = CopyOptions {
            chown,
            chmod,
            exclude: &exclude_fn,
            preserve_owner,
        };
        copy_into_root(&sources, &state.root, &dest, &opts)?;
    } else if !written_archives {
        return Err(CommandError::Invalid(format!(
            "{name}: no source files were specified"
        )));
    }
    Ok(Outcome::Filesystem)
}

/// The copier's view of context sources: each confined to the context, at its real path there
/// (the context checked that every symlink on the way stays inside), under the name it was
/// given.
fn context_sources(
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
fn is_archive_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) && is_archive(path)
}

fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// `ADD <url>`: download into the stage scratch under the URL's file name, as Docker does: mode
/// 0600, the modification time from `Last-Modified` when the server sends it, never unpacked;
/// with `--checksum=sha256:…` the content must match.
fn download(
    url: &str,
    checksum: Option<&str>,
    state: &StageState,
) -> Result<PathBuf, CommandError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let fail = |message: String| CommandError::Invalid(format!("ADD {url}: {message}"));
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("download");
    let dir = state.scratch.join(format!(
        "downloads/{}",
        hex::encode(Sha256::digest(url.as_bytes()))
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CommandError::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(name);
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| fail(format!("cannot start an HTTP client: {e}")))?;
    let mut response = client
        .get(url)
        .send()
        .map_err(|e| fail(format!("download failed: {e}")))?;
    if !response.status().is_success() {
        return Err(fail(format!("the server answered {}", response.status())));
    }
    let modified = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok());
    let mut file = std::fs::File::create(&path)
        .map_err(|e| CommandError::io(format!("writing {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = response
            .read(&mut buf)
            .map_err(|e| fail(format!("download interrupted: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| CommandError::io(format!("writing {}", path.display()), e))?;
    }
    drop(file);
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(want) = checksum {
        if want != got {
            return Err(fail(format!(
                "--checksum={want} does not match the downloaded content ({got})"
            )));
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| CommandError::io(format!("setting the mode of {}", path.display()), e))?;
    if let Some(time) = modified {
        let mtime = filetime::FileTime::from_unix_time(time.timestamp(), 0);
        filetime::set_file_mtime(&path, mtime)
            .map_err(|e| CommandError::io(format!("setting the time of {}", path.display()), e))?;
    }
    Ok(path)
}

/// The sources a `COPY --from` path names inside another root (a stage's or an image's), as
/// BuildKit reads them: every symlink is resolved inside that root, absolute ones included, so
/// `/x/a -> /etc/shadow` names the root's own `/etc/shadow` and never the host's; `*`/`?`/`[...]`
/// in the last component are matched against the directory's entries, and each match keeps its
/// own name. A path, or a match, that resolves to nothing in the root is an error naming it.
pub(crate) fn root_sources(
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
        for entry in list_in_root(root, &dir)
            .map_err(|e| CommandError::io(format!("{name} --from source {src}"), e))?
        {
            if matcher.is_match(&entry) {
                in_root.push(dir.join(entry));
            }
        }
        if in_root.is_empty() {
            return Err(fail("no files match".to_string()));
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

/// Host paths of a `COPY --from` source inside another root (see [`root_sources`]), each with
/// its symlinks resolved inside that root, for the cache key to read.
pub(crate) fn resolve_root_source(
    root: &Path,
    src: &str,
    name: &str,
) -> Result<Vec<PathBuf>, CommandError> {
    root_sources(root, src, name)?
        .into_iter()
        .map(|s| {
            resolve_in_root(root, &s.path, true)
                .map_err(|e| CommandError::io(format!("{name} --from source {src}"), e))
        })
        .collect()
}

/// A new directory for this COPY's heredoc files, removed when it is dropped.
fn heredoc_scratch(state: &StageState) -> Result<tempfile::TempDir, CommandError> {
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
fn write_heredoc_file(
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

impl StageState {
    /// Expand variables in an unquoted heredoc body (`$V`, `${V}`, `${V:-x}`, `${V:+x}` and the
    /// colon-less forms), keeping quotes and everything else literal as BuildKit does; `\$` is a
    /// literal dollar.
    fn expand_heredoc(&self, body: &str) -> String {
        expand_heredoc_text(body, &|name: &str| self.lookup(name))
    }
}

fn expand_heredoc_text(body: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            if let Some(close) = chars[i + 2..].iter().position(|&c| c == '}') {
                let inner: String = chars[i + 2..i + 2 + close].iter().collect();
                let name_len = inner.chars().take_while(|&c| is_name(c)).count();
                let (name, op) = inner.split_at(name_len);
                let value = lookup(name);
                let expanded = match op {
                    "" => value.unwrap_or_default(),
                    _ if op.starts_with(":-") => value
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| op[2..].to_string()),
                    _ if op.starts_with(":+") => value
                        .filter(|v| !v.is_empty())
                        .map(|_| op[2..].to_string())
                        .unwrap_or_default(),
                    _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
                    _ if op.starts_with('+') => {
                        value.map(|_| op[1..].to_string()).unwrap_or_default()
                    }
                    _ => format!("${{{inner}}}"),
                };
                out.push_str(&expanded);
                i += close + 3;
                continue;
            }
        }
        let name_len = chars[i + 1..].iter().take_while(|&&c| is_name(c)).count();
        if name_len == 0 {
            out.push('$');
            i += 1;
            continue;
        }
        let name: String = chars[i + 1..i + 1 + name_len].iter().collect();
        out.push_str(&lookup(&name).unwrap_or_default());
        i += 1 + name_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredoc_expansion_keeps_quotes() {
        let lookup = |n: &str| match n {
            "A" => Some("1".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand_heredoc_text("a=$A '$A' \"${A}\"\n", &lookup),
            "a=1 '1' \"1\"\n"
        );
        assert_eq!(
            expand_heredoc_text("${B:-def} ${E:-x} ${E-y} ${A:+set} \\$A $", &lookup),
            "def x  set $A $"
        );
    }
}

#[cfg(test)]
mod download_tests {
    use super::*;
    use crate::commands::test_support::state;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    /// Serve one HTTP response per connection on loopback, `count` times, then stop.
    fn serve(status: &'static str, body: &'static [u8], count: usize) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(count) {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn add_url_downloads_with_docker_metadata_and_checks_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let base = serve("200 OK", b"payload\n", 2);
        let path = download(&format!("{base}/files/tool.sh?x=1"), None, &st).unwrap();
        assert_eq!(path.file_name().unwrap(), "tool.sh");
        assert_eq!(std::fs::read(&path).unwrap(), b"payload\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(
            filetime::FileTime::from_last_modification_time(&meta).unix_seconds(),
            1445412480
        );
        let err = download(&format!("{base}/tool.sh"), Some("sha256:0000"), &st).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn add_url_reports_http_errors() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let base = serve("404 Not Found", b"", 1);
        let err = download(&format!("{base}/missing.tar.gz"), None, &st).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("404") && text.contains("missing.tar.gz"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod confinement_tests {
    use super::*;
    use crate::commands::test_support::state;
    use crate::rootfs::{with_resolution, Resolution};
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
}
