//! `COPY` and `ADD`: copy files from the build context, an earlier stage or an image into the
//! stage root (ADD also unpacks local archives). Sources are confined to their origin and writes
//! to the root; ownership, modes and heredoc sources follow Docker's rules.

use std::path::{Path, PathBuf};

use super::{
    CacheFlags, Cacheable, Command, CommandError, CopySource, FilesRead, InstructionError,
    KeyParts, Outcome, Reads, StageState,
};
use crate::context::IgnoreMatcher;
use crate::copier::{add_archive_into_root, copy_into_root, Chmod, CopyOptions, Source};

mod git;
mod parents;
mod sources;

use kiln_dockerfile::CopyArgs;
pub(crate) use sources::resolve_root_source;
use sources::{
    context_sources, heredoc_scratch, is_archive_file, root_sources, write_heredoc_file,
};

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
            Some(Chmod::parse(&text).map_err(|e| {
                CommandError::Invalid(format!(
                    "{name} --chmod={text}: {e} (an octal mode such as 0755, or a symbolic one such as u+x,g-w)"
                ))
            })?)
        }
        None => None,
    };

    let exclude_patterns = if args.exclude.is_empty() {
        None
    } else {
        let patterns = args
            .exclude
            .iter()
            .map(|p| state.expand(p))
            .collect::<Result<Vec<_>, _>>()?;
        Some(IgnoreMatcher::new(&patterns).map_err(|e| {
            CommandError::Invalid(format!("{name} --exclude={}: {}", e.pattern, e.reason))
        })?)
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
    if let Some(source) = local.first().or(args.heredocs.first().map(|d| &d.name)) {
        refuse_keep_git_dir(args, name, source)?;
    }
    let origin_sources = local;
    if let Some(url) = urls.first() {
        if !is_add {
            return Err(CommandError::Invalid(format!(
                "COPY {url}: COPY does not accept URLs; use ADD"
            )));
        }
    }
    // Checked-out repositories live until the copy is done.
    let mut checkouts = Vec::new();
    for url in &urls {
        if let Some(repo) = git::parse(url)? {
            if args.checksum.is_some() {
                return Err(CommandError::Invalid(format!(
                    "ADD --checksum with the git URL {url} is not supported by kiln-executor"
                )));
            }
            let (guard, src) = git::checkout(&repo, args.keep_git_dir, state)?;
            checkouts.push(guard);
            sources.push(src);
            continue;
        }
        refuse_keep_git_dir(args, name, url)?;
        sources.push(Source::from(download(
            url,
            args.checksum.as_deref(),
            state,
        )?));
    }

    let mut written_archives = false;
    // `--parents`: each origin source with the directory it is copied into.
    let mut parented: Vec<(Source, String)> = Vec::new();
    let preserve_owner;
    match (&source, origin_sources.is_empty()) {
        (_, true) => preserve_owner = false,
        (Some(CopySource::Context(ctx)), false) => {
            preserve_owner = false;
            for raw in &origin_sources {
                let pivot = parents_pivot(args, raw, name)?;
                for src in context_sources(ctx, std::slice::from_ref(raw))? {
                    let real = src.root.join(&src.path);
                    if let Some(pivot) = &pivot {
                        if is_add && is_archive_file(&real) {
                            return Err(CommandError::Invalid(format!(
                                "ADD --parents with the local archive {}: not supported",
                                src.path.display()
                            )));
                        }
                        let rel = src
                            .shown
                            .strip_prefix(ctx.root())
                            .unwrap_or(&src.path)
                            .to_string_lossy()
                            .into_owned();
                        let target = parents::target(&dest, pivot, &rel, real.is_dir(), name)
                            .map_err(CommandError::Invalid)?;
                        parented.push((src, target));
                        continue;
                    }
                    if is_add && is_archive_file(&real) {
                        if exclude_patterns.is_some() {
                            return Err(CommandError::Invalid(format!(
                            "ADD --exclude with the local archive {}: excluding archive members is not supported",
                            src.path.display()
                        )));
                        }
                        add_archive_into_root(&real, &state.root, &dest, chown)?;
                        written_archives = true;
                    } else {
                        sources.push(src);
                    }
                }
            }
        }
        (Some(CopySource::Root(root)), false) => {
            preserve_owner = true;
            for raw in &origin_sources {
                let pivot = parents_pivot(args, raw, name)?;
                for src in root_sources(root, raw, name)? {
                    match &pivot {
                        Some(pivot) => {
                            let host = crate::fsutil::resolve_in_root(root, &src.path, true)
                                .map_err(|e| {
                                    CommandError::io(format!("{name} --from source {raw}"), e)
                                })?;
                            let rel = src.path.to_string_lossy().into_owned();
                            let target = parents::target(&dest, pivot, &rel, host.is_dir(), name)
                                .map_err(CommandError::Invalid)?;
                            parented.push((src, target));
                        }
                        None => sources.push(src),
                    }
                }
            }
        }
        (None, false) => {
            return Err(CommandError::Invalid(format!(
                "{name} has no source to copy from"
            )));
        }
    }

    if !sources.is_empty() || !parented.is_empty() {
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
            exclude_patterns: exclude_patterns.as_ref(),
            preserve_owner,
        };
        if !sources.is_empty() {
            copy_into_root(&sources, &state.root, &dest, &opts)?;
        }
        for (src, target) in parented {
            copy_into_root(&[src], &state.root, &target, &opts)?;
        }
    } else if !written_archives {
        // Every source was a wildcard that matched nothing (each warned): BuildKit copies
        // nothing, creates no destination and goes on.
        tracing::warn!("{name}: no source matched any file; the step changes nothing");
    }
    Ok(Outcome::Filesystem)
}

/// `--keep-git-dir` keeps the `.git` of a git URL's checkout; BuildKit ignores it for other
/// sources, Kiln refuses it there so that it never goes unused. `--link` needs nothing: it
/// changes how BuildKit stacks the layer, not its content.
fn refuse_keep_git_dir(args: &CopyArgs, name: &str, source: &str) -> Result<(), CommandError> {
    if args.keep_git_dir {
        return Err(CommandError::Invalid(format!(
            "{name} --keep-git-dir applies to git URLs only, and {source} is not one"
        )));
    }
    Ok(())
}

/// With `--parents`, the pivot of raw source `raw` (see [`parents`]); `None` without it.
fn parents_pivot(args: &CopyArgs, raw: &str, name: &str) -> Result<Option<String>, CommandError> {
    if !args.parents {
        return Ok(None);
    }
    parents::pivot(raw, name)
        .map(Some)
        .map_err(CommandError::Invalid)
}

/// A remote source: a download, or a git repository (see [`git::parse`]).
fn is_url(source: &str) -> bool {
    ["http://", "https://", "git://", "ssh://", "git@"]
        .iter()
        .any(|scheme| source.starts_with(scheme))
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
