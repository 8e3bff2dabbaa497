//! Build contexts (directory, tarball, https tarball, stdin, git repository, object-store
//! tarball) and `.dockerignore`.
//! Never modifies the context: anything fetched or extracted goes into a fresh directory of our
//! own, and a directory context is only read.

pub mod git;
mod http;
mod ignore;
mod object_store;
mod source;

pub use ignore::{IgnoreMatcher, PatternError};
pub use object_store::CloudEnv;
pub use source::{git_secret_from_dir, ContextOptions, GitCredentials, GitOptions, PullMethod};

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use tempfile::TempDir;

/// Why a build context could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context scheme \"{scheme}\" is not supported; use a directory (dir:///path or a plain path), a tarball (tar:///path/ctx.tar.gz, tar://stdin, https://host/ctx.tar.gz), an object-store tarball (s3://bucket/ctx.tar.gz, gs://bucket/ctx.tar.gz, https://account.blob.core.windows.net/container/ctx.tar.gz) or a git repository (git://host/repo.git#ref, ssh://git@host/repo.git#ref)")]
    UnsupportedScheme { scheme: String },
    #[error("fetching {location}: {message}")]
    ObjectStore { location: String, message: String },
    #[error("git context {url}: {message}")]
    Git { url: String, message: String },
    #[error("downloading build context {url}: {message}")]
    Download { url: String, message: String },
    #[error("build context tar://stdin: standard input was empty; pipe a tar (or tar.gz) of the context into kiln-executor")]
    EmptyStdin,
    #[error("--context-sub-path {sub_path}: {message}")]
    SubPath { sub_path: String, message: String },
    #[error("build context {path}: {source}; check that the directory exists and is readable")]
    Open { path: PathBuf, source: io::Error },
    #[error("build context {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("extracting build context tarball {path}: {message}")]
    Extract { path: PathBuf, message: String },
    #[error("reading {path}: {source}")]
    ReadIgnore { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    BadIgnorePattern { path: PathBuf, source: PatternError },
    #[error("COPY source {0} is outside the build context")]
    OutsideContext(String),
    #[error("{0}: not found in build context or excluded by .dockerignore")]
    NotFound(String),
    #[error("COPY source {pattern}: invalid wildcard pattern ({reason})")]
    BadSourcePattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("reading build context at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// [`BuildContext::is_excluded`] for a context directory `root` with rules `ignore`.
pub fn excluded_under(root: &Path, ignore: &IgnoreMatcher, rel: &Path) -> bool {
    let rel_str = rel_to_slash(rel);
    if rel_str == "." || !ignore.matches(&rel_str) {
        return false;
    }
    let is_dir = fs::symlink_metadata(root.join(rel))
        .map(|m| m.is_dir())
        .unwrap_or(false);
    !(is_dir && ignore.may_reinclude_under(&rel_str))
}

/// A build context ready to be read: a directory on the host plus its `.dockerignore` rules.
#[derive(Debug)]
pub struct BuildContext {
    root: PathBuf,
    ignore: IgnoreMatcher,
    /// Keeps an extracted tarball alive for as long as the context is used; removed on drop.
    _extracted: Option<TempDir>,
    /// The commit of a git context (full hex id).
    commit: Option<String>,
}

impl BuildContext {
    /// Open a context from a `--context` value with default options: see [`BuildContext::open_with`].
    pub fn open(spec: &str, work_dir: &Path) -> Result<BuildContext, ContextError> {
        BuildContext::open_with(spec, work_dir, &ContextOptions::default())
    }

    /// Open a context from a `--context` value: `dir:///abs/path` or a plain path (read in place),
    /// `tar:///path/ctx.tar[.gz|.zst]`, `tar://stdin`, an `https://` (or `http://`) tarball URL, an
    /// object-store tarball (`s3://`, `gs://`, Azure Blob), or a git repository (`git://host/repo.git#ref#commit`, `https://host/repo.git#ref`,
    /// `git+https://...`). Everything fetched or extracted lands in a new directory under
    /// `work_dir`, removed when the context is dropped. `options.sub_path` then selects a
    /// sub-directory of the context as its root.
    pub fn open_with(
        spec: &str,
        work_dir: &Path,
        options: &ContextOptions,
    ) -> Result<BuildContext, ContextError> {
        let context = match source::Source::parse(spec, options)? {
            source::Source::Dir(path) => BuildContext::from_dir(&path)?,
            source::Source::Tarball(path) => BuildContext::from_tarball(&path, work_dir)?,
            source::Source::Stdin => {
                let scratch = scratch_dir(work_dir, Path::new("tar://stdin"))?;
                let file = source::stdin_to_file(scratch.path())?;
                BuildContext::from_tarball(&file, work_dir)?
            }
            source::Source::Url(url) => {
                let scratch = scratch_dir(work_dir, Path::new(&url))?;
                let file = source::download(&url, scratch.path())?;
                BuildContext::from_download(&file, work_dir, |message| ContextError::Download {
                    url: url.clone(),
                    message: format!("the body is {message}"),
                })?
            }
            source::Source::Object(object) => {
                let location = object.describe();
                let scratch = scratch_dir(work_dir, Path::new(&location))?;
                let file = object.download(&options.cloud, scratch.path())?;
                BuildContext::from_download(&file, work_dir, |message| ContextError::ObjectStore {
                    location: location.clone(),
                    message: format!("the object is {message}"),
                })?
            }
            source::Source::Git(git_source) => {
                let dir = scratch_dir(work_dir, Path::new(&git_source.url))?;
                let commit = git::checkout(&git_source, &options.git, work_dir, dir.path())?;
                let mut context = BuildContext::from_extracted(dir)?;
                context.commit = Some(commit);
                context
            }
        };
        context.with_sub_path(&options.sub_path)
    }

    /// The commit a git context was checked out at (full hex id); `None` for other contexts.
    pub fn commit(&self) -> Option<&str> {
        self.commit.as_deref()
    }

    /// Narrow the context to `sub_path` (relative, may not climb out, symlinks may not escape).
    fn with_sub_path(mut self, sub_path: &str) -> Result<BuildContext, ContextError> {
        if sub_path.is_empty() {
            return Ok(self);
        }
        let fail = |message: String| ContextError::SubPath {
            sub_path: sub_path.to_string(),
            message,
        };
        let rel = source::clean_sub_path(sub_path)
            .ok_or_else(|| fail("climbs out of the build context with \"..\"".to_string()))?;
        let joined = self.root.join(&rel);
        let real = fs::canonicalize(&joined)
            .map_err(|e| fail(format!("{e}; it must name a directory inside the context")))?;
        if !real.starts_with(&self.root) {
            return Err(fail(
                "resolves (through a symlink) to a path outside the build context".to_string(),
            ));
        }
        if !real.is_dir() {
            return Err(fail("is not a directory in the build context".to_string()));
        }
        self.root = real;
        Ok(self)
    }

    /// A context whose files were written into `dir`, which the context then owns.
    fn from_extracted(dir: TempDir) -> Result<BuildContext, ContextError> {
        let root = fs::canonicalize(dir.path()).map_err(|source| ContextError::Open {
            path: dir.path().to_path_buf(),
            source,
        })?;
        Ok(BuildContext {
            root,
            ignore: IgnoreMatcher::default(),
            _extracted: Some(dir),
            commit: None,
        })
    }

    fn from_dir(path: &Path) -> Result<BuildContext, ContextError> {
        // Canonical so that symlink-escape checks compare like with like.
        let root = fs::canonicalize(path).map_err(|source| ContextError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(ContextError::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        Ok(BuildContext {
            root,
            ignore: IgnoreMatcher::default(),
            _extracted: None,
            commit: None,
        })
    }

    fn from_tarball(path: &Path, work_dir: &Path) -> Result<BuildContext, ContextError> {
        let extract_err = |message: String| ContextError::Extract {
            path: path.to_path_buf(),
            message,
        };
        let dir = scratch_dir(work_dir, path)?;
        let file = fs::File::open(path).map_err(|source| ContextError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = crate::rootfs::open_archive(file, "build context")
            .map_err(|e| extract_err(e.to_string()))?;
        crate::rootfs::extract_archive(reader, dir.path(), "/", crate::rootfs::ArchiveOwner::Root)
            .map_err(|e| extract_err(e.to_string()))?;
        BuildContext::from_extracted(dir)
    }

    /// A downloaded tarball (unpacked like `tar://`); `not_a_tar` turns an extraction failure into
    /// an error that names the download rather than the scratch file.
    fn from_download(
        file: &Path,
        work_dir: &Path,
        not_a_tar: impl FnOnce(String) -> ContextError,
    ) -> Result<BuildContext, ContextError> {
        BuildContext::from_tarball(file, work_dir).map_err(|e| match e {
            ContextError::Extract { message, .. } => {
                not_a_tar(format!("not a (gzip, zstd or plain) tar: {message}"))
            }
            other => other,
        })
    }

    /// The context directory on the host (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `.dockerignore` rules in effect.
    pub fn ignore_rules(&self) -> &IgnoreMatcher {
        &self.ignore
    }

    /// Load the ignore rules for `dockerfile`: `<dockerfile>.dockerignore` next to it when present
    /// (BuildKit's per-Dockerfile ignore file), else `<context>/.dockerignore`, else none.
    pub fn load_ignore(&mut self, dockerfile: &Path) -> Result<(), ContextError> {
        let mut specific = dockerfile.as_os_str().to_os_string();
        specific.push(".dockerignore");
        let specific = PathBuf::from(specific);
        let candidates = [specific, self.root.join(".dockerignore")];
        for path in candidates {
            match fs::read_to_string(&path) {
                Ok(text) => {
                    self.ignore = IgnoreMatcher::parse(&text).map_err(|source| {
                        ContextError::BadIgnorePattern {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ContextError::ReadIgnore { path, source }),
            }
        }
        self.ignore = IgnoreMatcher::default();
        Ok(())
    }

    /// Whether `rel` (relative to the context root) is excluded by `.dockerignore`. An excluded
    /// directory is still reported as included when a later `!` pattern may re-include something
    /// inside it, so that walkers descend into it and test its children one by one.
    pub fn is_excluded(&self, rel: &Path) -> bool {
        excluded_under(&self.root, &self.ignore, rel)
    }

    /// Like [`BuildContext::is_excluded`] but for a host path under the root (the copier's
    /// `exclude` callback); paths outside the root are never excluded.
    pub fn is_excluded_host(&self, host: &Path) -> bool {
        match host.strip_prefix(&self.root) {
            Ok(rel) => self.is_excluded(rel),
            Err(_) => false,
        }
    }

    /// Resolve COPY/ADD sources to absolute host paths inside the context. Each source is relative
    /// to the context root (a leading `/` too); wildcards are expanded per path component against
    /// the context minus ignored paths. Symlinks are not resolved in the returned paths (the copier
    /// follows a top-level symlink itself), but every source is checked to stay inside the context.
    pub fn resolve_sources(&self, raw: &[String]) -> Result<Vec<PathBuf>, ContextError> {
        let mut out = Vec::new();
        for source in raw {
            let rel =
                lexical_rel(source).ok_or_else(|| ContextError::OutsideContext(source.clone()))?;
            if has_wildcard(&rel) {
                let matches = self.expand(source, &rel)?;
                if matches.is_empty() {
                    // BuildKit copies nothing for a wildcard that matches nothing and goes on
                    // (the classic builder failed when no source at all matched).
                    tracing::warn!(
                        "COPY/ADD source {source}: no file in the build context matches; nothing is copied for it (as BuildKit does)"
                    );
                    continue;
                }
                for m in matches {
                    self.check_inside(source, &m)?;
                    out.push(self.root.join(m));
                }
            } else {
                let rel_path = PathBuf::from(if rel.is_empty() { "." } else { rel.as_str() });
                self.check_inside(source, &rel_path)?;
                if rel_path != Path::new(".") && self.is_excluded(&rel_path) {
                    return Err(ContextError::NotFound(source.clone()));
                }
                out.push(if rel.is_empty() {
                    self.root.clone()
                } else {
                    self.root.join(&rel_path)
                });
            }
        }
        Ok(out)
    }

    /// Fail unless `rel` exists and, with every symlink followed, still lies inside the root.
    fn check_inside(&self, source: &str, rel: &Path) -> Result<(), ContextError> {
        let host = self.root.join(rel);
        let real = match fs::canonicalize(&host) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink whose target would be outside is still an escape attempt.
                if let Ok(meta) = fs::symlink_metadata(&host) {
                    if meta.file_type().is_symlink() && !self.link_target_inside(&host) {
                        return Err(ContextError::OutsideContext(source.to_string()));
                    }
                }
                return Err(ContextError::NotFound(source.to_string()));
            }
            Err(source_err) => {
                return Err(ContextError::Io {
                    path: host,
                    source: source_err,
                })
            }
        };
        let Ok(real_rel) = real.strip_prefix(&self.root) else {
            return Err(ContextError::OutsideContext(source.to_string()));
        };
        // The target of a symlink must not be something .dockerignore hides.
        if !real_rel.as_os_str().is_empty() && self.is_excluded(real_rel) {
            return Err(ContextError::NotFound(source.to_string()));
        }
        Ok(())
    }

    fn link_target_inside(&self, link: &Path) -> bool {
        let Ok(target) = fs::read_link(link) else {
            return false;
        };
        let base = link.parent().unwrap_or(&self.root);
        let joined = if target.is_absolute() {
            target
        } else {
            base.join(target)
        };
        let cleaned = crate::fsutil::clean_abs(&joined.to_string_lossy());
        Path::new(&cleaned).starts_with(&self.root)
    }

    /// Expand a wildcard source component by component (Go `filepath.Glob` semantics), skipping
    /// ignored paths. Results are relative to the root, sorted within each directory.
    fn expand(&self, source: &str, rel: &str) -> Result<Vec<PathBuf>, ContextError> {
        let mut current: Vec<PathBuf> = vec![PathBuf::new()];
        for part in rel.split('/') {
            let mut next = Vec::new();
            if !has_wildcard(part) {
                let lit = unescape(part);
                for base in &current {
                    let candidate = base.join(&lit);
                    if fs::symlink_metadata(self.root.join(&candidate)).is_ok()
                        && !self.is_excluded(&candidate)
                    {
                        next.push(candidate);
                    }
                }
            } else {
                validate_glob(part).map_err(|reason| ContextError::BadSourcePattern {
                    pattern: source.to_string(),
                    reason,
                })?;
                for base in &current {
                    let dir = self.root.join(base);
                    // Only directories can hold matches; a symlink to a directory counts but must
                    // itself stay inside the context.
                    if !dir.is_dir() {
                        continue;
                    }
                    if !base.as_os_str().is_empty() {
                        self.check_inside(source, base)?;
                    }
                    let entries = fs::read_dir(&dir).map_err(|source| ContextError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                    let mut names = Vec::new();
                    for entry in entries {
                        let entry = entry.map_err(|source| ContextError::Io {
                            path: dir.clone(),
                            source,
                        })?;
                        names.push(entry.file_name());
                    }
                    names.sort();
                    for name in names {
                        let Some(name_str) = name.to_str() else {
                            continue;
                        };
                        if glob_match(part, name_str) {
                            let candidate = base.join(&name);
                            if !self.is_excluded(&candidate) {
                                next.push(candidate);
                            }
                        }
                    }
                }
            }
            current = next;
            if current.is_empty() {
                break;
            }
        }
        Ok(current)
    }
}

/// A new, empty directory under `work_dir` for the context named `what` (named in errors).
fn scratch_dir(work_dir: &Path, what: &Path) -> Result<TempDir, ContextError> {
    let fail = |message: String| ContextError::Extract {
        path: what.to_path_buf(),
        message,
    };
    fs::create_dir_all(work_dir)
        .map_err(|e| fail(format!("creating work dir {}: {e}", work_dir.display())))?;
    tempfile::Builder::new()
        .prefix("context-")
        .tempdir_in(work_dir)
        .map_err(|e| {
            fail(format!(
                "creating a directory under {}: {e}",
                work_dir.display()
            ))
        })
}

fn rel_to_slash(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// Clean a raw source into a `/`-joined path relative to the root ("" for the root itself);
/// `None` when `..` climbs above the root.
fn lexical_rel(raw: &str) -> Option<String> {
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
    Some(parts.join("/"))
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Go `filepath.Match` syntax check for one component.
fn validate_glob(pattern: &str) -> Result<(), &'static str> {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err("trailing backslash");
                }
                i += 2;
            }
            '[' => i = class_end(&p, i + 1).ok_or("unterminated character class")?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Index just after the `]` closing a class whose content starts at `i`.
fn class_end(p: &[char], mut i: usize) -> Option<usize> {
    if p.get(i) == Some(&'^') {
        i += 1;
    }
    let mut first = true;
    loop {
        let c = *p.get(i)?;
        if c == ']' && !first {
            return Some(i + 1);
        }
        first = false;
        i += if c == '\\' { 2 } else { 1 };
    }
}

/// Go `filepath.Match` for a single path component (no `/` in `name`).
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    glob_rec(&p, &s)
}

fn glob_rec(p: &[char], s: &[char]) -> bool {
    let Some(&c) = p.first() else {
        return s.is_empty();
    };
    match c {
        '*' => (0..=s.len()).any(|n| glob_rec(&p[1..], &s[n..])),
        '?' => !s.is_empty() && glob_rec(&p[1..], &s[1..]),
        '\\' => match (p.get(1), s.first()) {
            (Some(a), Some(b)) if a == b => glob_rec(&p[2..], &s[1..]),
            _ => false,
        },
        '[' => {
            let Some(end) = class_end(p, 1) else {
                return false;
            };
            let Some(&ch) = s.first() else { return false };
            let mut i = 1;
            let negated = p.get(1) == Some(&'^');
            if negated {
                i += 1;
            }
            let mut hit = false;
            while i < end - 1 {
                let mut lo = p[i];
                if lo == '\\' {
                    i += 1;
                    lo = p[i];
                }
                i += 1;
                let mut hi = lo;
                if p.get(i) == Some(&'-') && i + 1 < end - 1 {
                    i += 1;
                    hi = p[i];
                    if hi == '\\' {
                        i += 1;
                        hi = p[i];
                    }
                    i += 1;
                }
                if lo <= ch && ch <= hi {
                    hit = true;
                }
            }
            hit != negated && glob_rec(&p[end..], &s[1..])
        }
        lit => s.first() == Some(&lit) && glob_rec(&p[1..], &s[1..]),
    }
}

/// `ADD <git URL>`: fetch `url` (`https://`, `http://`, `git://`) at `reference` (the remote
/// HEAD when `None`) without credentials, and write its tree into the empty directory `dest`:
/// without `.git`, or with `keep_git_dir` the shallow clone as `dest/.git`; git databases live
/// under `scratch` meanwhile.
pub(crate) fn checkout_git(
    url: &str,
    reference: Option<&str>,
    keep_git_dir: bool,
    scratch: &Path,
    dest: &Path,
) -> Result<(), ContextError> {
    let source = git::GitSource {
        url: url.to_string(),
        reference: reference.map(str::to_string),
        commit: None,
    };
    if keep_git_dir {
        git::checkout_keeping_git_dir(&source, &GitOptions::default(), scratch, dest)?;
    } else {
        git::checkout(&source, &GitOptions::default(), scratch, dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
