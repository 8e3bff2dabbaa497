//! Comparing what two builders made: flattened file trees (path by path, the root included, never
//! timestamps), image configs (the fields a Dockerfile controls), and the corpus cases of
//! `testdata/corpus` that the differential test builds. It reads trees and configs only; it must
//! not build or fetch images.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{repo_root, run_ok};

/// The kind of a filesystem entry, as compared between builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, sha256: String },
    Symlink { target: String },
    CharDev { rdev: u64 },
    BlockDev { rdev: u64 },
    Fifo,
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Dir => write!(f, "dir"),
            Kind::File { size, sha256 } => write!(f, "file size={size} sha256={}", &sha256[..12]),
            Kind::Symlink { target } => write!(f, "symlink -> {target}"),
            Kind::CharDev { rdev } => write!(f, "char device {rdev:#x}"),
            Kind::BlockDev { rdev } => write!(f, "block device {rdev:#x}"),
            Kind::Fifo => write!(f, "fifo"),
            Kind::Socket => write!(f, "socket"),
        }
    }
}

/// Extended attributes of an entry by name (`security.capability`, `user.*`, ...).
pub type Xattrs = BTreeMap<String, Vec<u8>>;

/// One path of a flattened image, with everything builders must agree on (no timestamps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For files with other hardlinks inside the tree: the smallest path of the link group.
    pub hardlink_group: Option<String>,
    /// Every extended attribute, file capabilities included.
    pub xattrs: Xattrs,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode={:04o} owner={}:{}",
            self.kind, self.mode, self.uid, self.gid
        )?;
        if let Some(g) = &self.hardlink_group {
            write!(f, " hardlinked-with={g}")?;
        }
        if !self.xattrs.is_empty() {
            write!(f, " xattrs={}", show_xattrs(&self.xattrs))?;
        }
        Ok(())
    }
}

/// `{name=value, ...}` with printable values as text and others (capabilities) as hex.
fn show_xattrs(x: &Xattrs) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| match std::str::from_utf8(v) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{k}={s:?}"),
            _ => format!("{k}=0x{}", hex::encode(v)),
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// A flattened tree: path relative to the root (with a leading `/`; the root itself is `/`) to
/// its entry.
pub type Tree = BTreeMap<String, Entry>;

pub(crate) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Every extended attribute of `path`, not following a symlink. A filesystem without xattr
/// support has none, which is what an image without them flattens to.
fn read_xattrs(path: &Path) -> io::Result<Xattrs> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Xattrs::new()),
        Err(e) => return Err(e),
    };
    let mut out = Xattrs::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.insert(name.to_string_lossy().into_owned(), value);
        }
    }
    Ok(out)
}

/// Walks `root` without following symlinks and records every entry, the root itself included as
/// `/`: an image's layers may set its mode and owner (a `./` entry), and both sides of a
/// comparison are unpacked by the same tool, so where no layer sets it both get the same default.
pub fn scan_tree(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(io::Error::other)?;
        let rel = item
            .path()
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_string_lossy()
            .into_owned();
        let path = format!("/{rel}");
        let md = fs::symlink_metadata(item.path())?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink {
                target: fs::read_link(item.path())?.to_string_lossy().into_owned(),
            }
        } else if ft.is_file() {
            if md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(path.clone());
            }
            Kind::File {
                size: md.len(),
                sha256: sha256_file(item.path())?,
            }
        } else if ft.is_char_device() {
            Kind::CharDev { rdev: md.rdev() }
        } else if ft.is_block_device() {
            Kind::BlockDev { rdev: md.rdev() }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        tree.insert(
            path,
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                hardlink_group: None,
                xattrs: read_xattrs(item.path())?,
            },
        );
    }
    for paths in inodes.values().filter(|p| p.len() > 1) {
        let first = paths.iter().min().cloned();
        for p in paths {
            if let Some(e) = tree.get_mut(p) {
                e.hardlink_group = first.clone();
            }
        }
    }
    Ok(tree)
}

/// What about a path differs; an allowlist tolerates differences aspect by aspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aspect {
    /// The path exists on one side only.
    Presence,
    /// Type, link target or device number.
    Kind,
    /// Size or content of a file that is a file on both sides.
    Content,
    Mode,
    Owner,
    Hardlinks,
    Xattrs,
}

/// How one path differs between an expected and an actual tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathDiff {
    Missing(String, Entry),
    Extra(String, Entry),
    /// The path, and for each differing aspect a description `expected != actual`.
    Differs(String, Vec<(Aspect, String)>),
}

impl PathDiff {
    pub fn path(&self) -> &str {
        match self {
            PathDiff::Missing(p, _) | PathDiff::Extra(p, _) | PathDiff::Differs(p, _) => p,
        }
    }

    pub fn aspects(&self) -> Vec<Aspect> {
        match self {
            PathDiff::Missing(..) | PathDiff::Extra(..) => vec![Aspect::Presence],
            PathDiff::Differs(_, what) => what.iter().map(|(a, _)| *a).collect(),
        }
    }

    /// This difference without the aspects in `tolerated`; `None` when nothing is left.
    pub fn without(&self, tolerated: &[Aspect]) -> Option<PathDiff> {
        match self {
            PathDiff::Differs(p, what) => {
                let left: Vec<_> = what
                    .iter()
                    .filter(|(a, _)| !tolerated.contains(a))
                    .cloned()
                    .collect();
                (!left.is_empty()).then(|| PathDiff::Differs(p.clone(), left))
            }
            _ => (!tolerated.contains(&Aspect::Presence)).then(|| self.clone()),
        }
    }
}

impl fmt::Display for PathDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathDiff::Missing(p, e) => write!(f, "  missing  {p}: {e}"),
            PathDiff::Extra(p, a) => write!(f, "  extra    {p}: {a}"),
            PathDiff::Differs(p, what) => {
                let what: Vec<&str> = what.iter().map(|(_, w)| w.as_str()).collect();
                write!(f, "  differs  {p}: {}", what.join("; "))
            }
        }
    }
}

/// Compares two trees path by path, in path order.
pub fn tree_differences(expected: &Tree, actual: &Tree) -> Vec<PathDiff> {
    let mut out = Vec::new();
    let mut paths: Vec<&String> = expected.keys().chain(actual.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        match (expected.get(p), actual.get(p)) {
            (Some(e), None) => out.push(PathDiff::Missing(p.clone(), e.clone())),
            (None, Some(a)) => out.push(PathDiff::Extra(p.clone(), a.clone())),
            (Some(e), Some(a)) if e != a => {
                let mut what = Vec::new();
                if e.kind != a.kind {
                    let aspect = match (&e.kind, &a.kind) {
                        (Kind::File { .. }, Kind::File { .. }) => Aspect::Content,
                        _ => Aspect::Kind,
                    };
                    what.push((aspect, format!("{} != {}", e.kind, a.kind)));
                }
                if e.mode != a.mode {
                    what.push((
                        Aspect::Mode,
                        format!("mode {:04o} != {:04o}", e.mode, a.mode),
                    ));
                }
                if (e.uid, e.gid) != (a.uid, a.gid) {
                    what.push((
                        Aspect::Owner,
                        format!("owner {}:{} != {}:{}", e.uid, e.gid, a.uid, a.gid),
                    ));
                }
                if e.hardlink_group != a.hardlink_group {
                    what.push((
                        Aspect::Hardlinks,
                        format!(
                            "hardlink group {:?} != {:?}",
                            e.hardlink_group, a.hardlink_group
                        ),
                    ));
                }
                if e.xattrs != a.xattrs {
                    what.push((
                        Aspect::Xattrs,
                        format!(
                            "xattrs {} != {}",
                            show_xattrs(&e.xattrs),
                            show_xattrs(&a.xattrs)
                        ),
                    ));
                }
                out.push(PathDiff::Differs(p.clone(), what));
            }
            _ => {}
        }
    }
    out
}

/// A path (or a whole subtree, when it ends with `/`) where builders legitimately differ, with
/// the reason, so every exception is visible in the test source.
pub struct Allowed {
    pub path: &'static str,
    pub why: &'static str,
}

impl Allowed {
    pub fn matches(&self, path: &str) -> bool {
        path_matches(self.path, path)
    }
}

/// Whether `path` is `pattern`, or, for a pattern ending with `/`, that directory or anything
/// under it.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('/') {
        Some(dir) => path == dir || path.starts_with(pattern),
        None => path == pattern,
    }
}

/// Compares two trees; returns one human-readable line per difference, in path order, leaving
/// out every aspect of the paths in `allow`.
pub fn diff_trees(expected: &Tree, actual: &Tree, allow: &[Allowed]) -> Vec<String> {
    tree_differences(expected, actual)
        .into_iter()
        .filter(|d| !allow.iter().any(|a| a.matches(d.path())))
        .map(|d| d.to_string())
        .collect()
}

/// The config fields a Dockerfile controls. History, timestamps and layer digests are left out:
/// builders legitimately differ there.
pub const CONFIG_FIELDS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
    "ArgsEscaped",
];

/// null, an empty list, an empty map and an absent field all mean "not set" to a runtime, and
/// builders pick different ones; compare them as the same.
fn normalize(v: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(a)) if a.is_empty() => None,
        Some(serde_json::Value::Object(o)) if o.is_empty() => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(v.clone()),
    }
}

/// Compares the `config` sections (and `os`/`architecture`) of two image configs.
/// `ignore_labels` lists label-name prefixes that one builder adds on its own.
pub fn diff_configs(
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    ignore_labels: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    for top in ["os", "architecture"] {
        if expected.get(top) != actual.get(top) {
            out.push(format!(
                "  {top}: {} != {}",
                show(expected.get(top)),
                show(actual.get(top))
            ));
        }
    }
    let strip = |cfg: Option<&serde_json::Value>, field: &str| {
        let mut v = normalize(cfg.and_then(|c| c.get(field)));
        if field == "Labels" {
            if let Some(serde_json::Value::Object(m)) = v.as_mut() {
                m.retain(|k, _| !ignore_labels.iter().any(|p| k.starts_with(p)));
            }
            v = normalize(v.as_ref());
        }
        v
    };
    for field in CONFIG_FIELDS {
        let mut e = strip(expected.get("config"), field);
        let mut a = strip(actual.get("config"), field);
        if *field == "Env" {
            // Runtimes read Env as a map; buildah re-appends a variable set again (PATH) where
            // Docker replaces it in place, so compare the sets of variables, not their order.
            for v in [&mut e, &mut a].into_iter().flatten() {
                if let serde_json::Value::Array(items) = v {
                    items.sort_by_key(|x| x.to_string());
                }
            }
        }
        if e != a {
            out.push(format!(
                "  config.{field}: {} != {}",
                show(e.as_ref()),
                show(a.as_ref())
            ));
        }
    }
    out
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map_or_else(|| "(unset)".to_string(), |v| v.to_string())
}

/// The registry the corpus Dockerfiles name in `FROM`; [`Case::materialize`] rewrites it to the
/// test registry actually in use, so the cases stay plain Dockerfiles that build by hand.
pub const CORPUS_REGISTRY: &str = "127.0.0.1:5000";

/// One case of `testdata/corpus`: its directory, build args and target.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub build_args: Vec<(String, String)>,
    pub target: Option<String>,
    /// A case whose pushed images this case builds FROM (from the `requires` file).
    pub requires: Option<String>,
    /// The target platform both builders are given (from the `platform` file).
    pub platform: Option<String>,
}

impl Case {
    pub fn dockerfile(&self) -> PathBuf {
        self.dir.join("Dockerfile")
    }

    /// Build args for one side (`buildah` or `kiln`): the case's own, plus `DIFF_SIDE` for cases
    /// that build FROM another case's image.
    pub fn build_args_for(&self, side: &str) -> Vec<(String, String)> {
        let mut args = self.build_args.clone();
        if self.requires.is_some() {
            args.push(("DIFF_SIDE".to_string(), side.to_string()));
        }
        args
    }

    /// The Dockerfile the reference builder gets: `Dockerfile.buildah` when the case needs syntax
    /// that buildah 1.28 lacks (heredocs), the case's Dockerfile otherwise.
    pub fn reference_dockerfile(&self) -> PathBuf {
        let alt = self.dir.join("Dockerfile.buildah");
        if alt.exists() {
            alt
        } else {
            self.dockerfile()
        }
    }

    /// Whether a build arg value uses `placeholder` (a service the harness must start first).
    pub fn uses(&self, placeholder: &str) -> bool {
        self.build_args.iter().any(|(_, v)| v.contains(placeholder))
    }

    /// A copy of the case under `into` that both builders read, so neither ever touches the
    /// checked-in files: the Dockerfiles name `registry` instead of [`CORPUS_REGISTRY`], build
    /// arg values have each `(placeholder, value)` substituted, and the extended attributes
    /// listed in the case's `xattrs` file are set (git cannot store them).
    pub fn materialize(
        &self,
        into: &Path,
        registry: &str,
        substitutions: &[(&str, String)],
    ) -> Result<Case, String> {
        let dir = into.join("context");
        run_ok(
            Command::new("cp").arg("-a").arg(&self.dir).arg(&dir),
            Duration::from_secs(120),
        )
        .map_err(|e| format!("cannot copy the case {}: {e}", self.name))?;
        for name in ["Dockerfile", "Dockerfile.buildah"] {
            let path = dir.join(name);
            if let Ok(text) = fs::read_to_string(&path) {
                fs::write(&path, text.replace(CORPUS_REGISTRY, registry))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
        set_xattrs(&dir)?;
        let build_args = self
            .build_args
            .iter()
            .map(|(k, v)| {
                let v = substitutions
                    .iter()
                    .fold(v.clone(), |v, (from, to)| v.replace(from, to));
                (k.clone(), v)
            })
            .collect();
        Ok(Case {
            dir,
            build_args,
            ..self.clone()
        })
    }
}

/// Sets the extended attributes the case's `xattrs` file lists, one `path name value` a line
/// (`#` comments allowed), the value as text or as `0x` and hex digits.
fn set_xattrs(dir: &Path) -> Result<(), String> {
    let spec = match fs::read_to_string(dir.join("xattrs")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}/xattrs: {e}", dir.display())),
    };
    for line in spec
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.split_whitespace();
        let (Some(path), Some(name), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("xattrs: `{line}` is not `path name value`"));
        };
        let value = match value.strip_prefix("0x") {
            Some(h) => hex::decode(h).map_err(|e| format!("xattrs: `{line}`: {e}"))?,
            None => value.as_bytes().to_vec(),
        };
        let target = dir.join(path.trim_start_matches('/'));
        xattr::set(&target, name, &value)
            .map_err(|e| format!("cannot set {name} on {}: {e}", target.display()))?;
    }
    Ok(())
}

/// All corpus cases in name order, or only those that `KILN_DIFF_CASES=a,b` selects (see
/// [`select_cases`]).
pub fn corpus_cases() -> Result<Vec<Case>, String> {
    let root = repo_root().join("testdata/corpus");
    let mut cases = Vec::new();
    let entries =
        fs::read_dir(&root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", root.display()))?;
        let dir = entry.path();
        if !dir.join("Dockerfile").is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let build_args = match fs::read_to_string(dir.join("args")) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("{name}/args: `{l}` is not KEY=VALUE"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {name}/args: {e}")),
        };
        let target = fs::read_to_string(dir.join("target"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let requires = fs::read_to_string(dir.join("requires"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let platform = fs::read_to_string(dir.join("platform"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        cases.push(Case {
            name,
            dir,
            build_args,
            target,
            requires,
            platform,
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    if cases.is_empty() {
        return Err(format!("{} holds no cases", root.display()));
    }
    for c in &cases {
        if let Some(r) = &c.requires {
            // Cases run in name order, so a required case must sort first.
            if !cases.iter().any(|o| &o.name == r && o.name < c.name) {
                return Err(format!(
                    "{}/requires names `{r}`, which is not a case that sorts before it",
                    c.name
                ));
            }
        }
    }
    select_cases(cases, std::env::var("KILN_DIFF_CASES").ok().as_deref())
}

/// The cases a `KILN_DIFF_CASES` filter (`a,b`) selects, plus the cases they require; all of
/// them without a filter. A filter that names an unknown case, or no case at all (an empty
/// value), is an error naming the filter and the known cases: a run must never compare nothing.
pub fn select_cases(mut cases: Vec<Case>, filter: Option<&str>) -> Result<Vec<Case>, String> {
    let Some(filter) = filter else {
        return Ok(cases);
    };
    let known = || {
        cases
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let wanted: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if wanted.is_empty() {
        return Err(format!(
            "KILN_DIFF_CASES={filter:?} names no case; unset it to run every case, or name some \
             of the known cases: {}",
            known()
        ));
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !cases.iter().any(|c| c.name == *w))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "KILN_DIFF_CASES={filter:?} names {}, which {} not a directory of testdata/corpus; \
             known cases: {}",
            unknown.join(", "),
            if unknown.len() == 1 { "is" } else { "are" },
            known()
        ));
    }
    // Keep what the wanted cases require, so a subset still builds their parents.
    let required: Vec<String> = cases
        .iter()
        .filter(|c| wanted.contains(&c.name.as_str()))
        .filter_map(|c| c.requires.clone())
        .collect();
    cases.retain(|c| wanted.contains(&c.name.as_str()) || required.contains(&c.name));
    Ok(cases)
}
