//! kaniko's rules that apply after its flags are parsed, as kaniko v1.24's `cmd/executor/cmd/
//! root.go` applies them: its deprecated spellings, its environment variables (`KANIKO_NO_PUSH`,
//! `KANIKO_REGISTRY_MIRROR`, `KANIKO_REGISTRY_MAP`), the hidden `--bucket`, and the default
//! base-image cache `/cache`; and the notes that say where Kiln differs by design. Reads the
//! environment only through the lookup it is given and opens nothing.

use std::ffi::OsString;

use super::Options;
use kiln_common::goflag;

/// kaniko's default `--cache-dir`: read when it exists and no `--cache-dir` is given.
pub const DEFAULT_CACHE_DIR: &str = "/cache";

/// kaniko's environment variables that Kiln reads nowhere else, each with what Kiln does about
/// it (logged once when the variable is set). The README's table has a row for each.
pub const IGNORED_ENV: &[(&str, &str)] = &[
    (
        "BENCHMARK_FILE",
        "Kiln writes no timing file; every step's duration is in the log",
    ),
    (
        "SNAPSHOT_TIMEOUT_DURATION",
        "Kiln's snapshots have no time limit; bound the build with the Pod's activeDeadlineSeconds",
    ),
    (
        "UPSTREAM_CLIENT_TYPE",
        "Kiln's registry requests say `User-Agent: kiln/<version>` and nothing else",
    ),
];

/// The deprecated spellings kaniko defines as the same flag as another (one variable, so the
/// last one given wins): parsed as clap aliases, named here only to warn about them.
const DEPRECATED_ALIASES: &[(&str, &str)] = &[
    (
        "--whitelist-var-run",
        "Flag --whitelist-var-run has been deprecated, Please use ignore-var-run instead.",
    ),
    ("--tarPath", "Flag --tarPath is deprecated. Use: --tar-path"),
];

/// A message for the log, emitted once per build after logging is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A deprecated spelling was used (kaniko warns too).
    Warn(String),
    /// A flag or variable Kiln honours differently by design, or an environment variable that
    /// changed a flag.
    Info(String),
}

impl Options {
    /// Parse a kaniko command line, then apply kaniko's rules with the environment `env`.
    /// Exits with clap's usage message on an invalid flag (status 2), like `parse_from`.
    pub fn parse_kaniko(
        args: Vec<OsString>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Options, String> {
        use clap::Parser;
        let mut opts = Options::parse_from(&args);
        opts.note_deprecated_aliases(&args);
        opts.resolve_default_cache_dir(DEFAULT_CACHE_DIR);
        opts.apply_kaniko_rules(env)?;
        Ok(opts)
    }

    fn note_deprecated_aliases(&mut self, args: &[OsString]) {
        for arg in args.iter().skip(1).map(|a| a.to_string_lossy()) {
            if arg == "--" {
                break;
            }
            for (spelling, warning) in DEPRECATED_ALIASES {
                let name = arg.split('=').next().unwrap_or("");
                if name == *spelling && !self.notes.contains(&Note::Warn(warning.to_string())) {
                    self.notes.push(Note::Warn(warning.to_string()));
                }
            }
        }
    }

    /// kaniko's `checkNoDeprecatedFlags` and `validateFlags`, in its order: a non-empty
    /// `--customPlatform` or `--snapshotMode` replaces the new spelling; `KANIKO_REGISTRY_MIRROR`
    /// adds one mirror (the whole value, after those of `--registry-mirror`);
    /// `KANIKO_NO_PUSH` (Go's boolean spellings) replaces `--no-push`, either way;
    /// `KANIKO_REGISTRY_MAP` adds `--registry-map` entries (`ORIG=REMAP` pairs separated by `;`).
    /// kaniko silently reads a `KANIKO_NO_PUSH` that is not a boolean as `false` (and pushes);
    /// Kiln refuses it, naming the variable. An empty mirror or map is ignored.
    pub fn apply_kaniko_rules(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        if let Some(p) = self
            .custom_platform_deprecated
            .take()
            .filter(|p| !p.is_empty())
        {
            self.notes.push(Note::Warn(
                "Flag --customPlatform is deprecated. Use: --custom-platform".into(),
            ));
            self.custom_platform = Some(p);
        }
        if let Some(mode) = self.snapshot_mode_deprecated.take() {
            self.notes.push(Note::Warn(
                "Flag --snapshotMode is deprecated. Use: --snapshot-mode".into(),
            ));
            self.snapshot_mode = Some(mode);
        }
        if let Some(mirror) = env("KANIKO_REGISTRY_MIRROR").filter(|m| !m.is_empty()) {
            self.notes.push(Note::Info(format!(
                "KANIKO_REGISTRY_MIRROR: adding registry mirror {mirror}"
            )));
            self.registry.registry_mirrors.push(mirror);
        }
        if let Some(value) = env("KANIKO_NO_PUSH") {
            let no_push =
                goflag::parse_bool(&value).map_err(|e| format!("invalid KANIKO_NO_PUSH: {e}"))?;
            if no_push != self.no_push {
                self.notes.push(Note::Info(format!(
                    "KANIKO_NO_PUSH={value} overrides --no-push={}",
                    self.no_push
                )));
            }
            self.no_push = no_push;
        }
        if let Some(map) = env("KANIKO_REGISTRY_MAP").filter(|m| !m.is_empty()) {
            self.notes.push(Note::Info(format!(
                "KANIKO_REGISTRY_MAP: adding registry map {map}"
            )));
            self.registry_map.push(map);
        }
        for (name, what) in IGNORED_ENV {
            if env(name).is_some() {
                self.notes
                    .push(Note::Info(format!("{name} is set: {what}")));
            }
        }
        Ok(())
    }

    /// The build context: `--context`, unless it is empty or has a scheme and `--bucket` is
    /// given (kaniko's `resolveSourceContext`): then the bucket, as `gs://NAME` when it has no
    /// scheme. Kiln reads no cloud-storage context, so such a context then fails naming it.
    pub fn effective_context(&self) -> String {
        match &self.bucket {
            Some(bucket)
                if !bucket.is_empty()
                    && (self.context.is_empty() || self.context.contains("://")) =>
            {
                if bucket.contains("://") {
                    bucket.clone()
                } else {
                    format!("gs://{bucket}")
                }
            }
            _ => self.context.clone(),
        }
    }

    /// `--cache-dir`, or kaniko's default `/cache` when it is a directory (see
    /// [`Options::resolve_default_cache_dir`]).
    pub fn base_cache_dir(&self) -> Option<String> {
        self.cache_dir
            .clone()
            .or_else(|| self.cache_dir_default.clone())
    }

    /// kaniko reads base images from `--cache-dir`, `/cache` by default, and pulls those it does
    /// not find there: without `--cache-dir`, Kiln reads `dir` (normally [`DEFAULT_CACHE_DIR`])
    /// when it is a directory. The only filesystem access of the command line.
    pub fn resolve_default_cache_dir(&mut self, dir: &str) {
        if self.cache_dir.is_none() && std::path::Path::new(dir).is_dir() {
            self.cache_dir_default = Some(dir.to_string());
            self.notes.push(Note::Info(format!(
                "reading base images from kaniko's default --cache-dir {dir}"
            )));
        }
    }

    /// The deprecation warnings and the differences by design that apply to this command line,
    /// each said once, in the order of the flags.
    pub fn compat_notes(&self) -> Vec<Note> {
        let mut notes = self.notes.clone();
        let info = |s: &str| Note::Info(s.to_string());
        if let Some(mode) = self.snapshot_mode {
            notes.push(Note::Info(format!(
                "--snapshot-mode={}: Kiln has one change detection, whatever the mode: it compares each \
                 file's lstat (type, mode, owner, size, mtime, ctime, inode, link target) with the last \
                 step's, never re-reading unchanged files; it sees every change kaniko's `full` sees",
                match mode {
                    super::SnapshotMode::Full => "full",
                    super::SnapshotMode::Redo => "redo",
                    super::SnapshotMode::Time => "time",
                }
            )));
        }
        if self.skip_unused_stages.is_none() {
            notes.push(info(
                "building only the stages the target needs (Kiln's default; kaniko builds every stage \
                 unless --skip-unused-stages, pass --skip-unused-stages=false for that)",
            ));
        }
        if self.use_new_run {
            notes.push(info(
                "--use-new-run: Kiln has one way to run a step and find its changes; the flag changes nothing",
            ));
        }
        if !self.compressed_caching {
            notes.push(info(
                "--compressed-caching=false: Kiln never keeps layers in memory; the flag changes nothing",
            ));
        }
        if self.cleanup {
            notes.push(info(
                "--cleanup: Kiln clears the root filesystem before each in-place build rather than \
                 after it, so the container can build again either way",
            ));
        }
        if let Some(skip) = self.skip_push_permission_check {
            notes.push(Note::Info(format!(
                "--skip-push-permission-check={skip}: Kiln never checks push permission before \
                 building; a refused push fails the build when it pushes"
            )));
        }
        notes
    }
}

/// Log `opts`' notes once (after logging is set up).
pub fn log_notes(opts: &Options) {
    for note in opts.compat_notes() {
        match note {
            Note::Warn(m) => tracing::warn!("{m}"),
            Note::Info(m) => tracing::info!("{m}"),
        }
    }
}
