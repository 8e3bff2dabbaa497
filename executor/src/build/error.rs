//! Why a build failed. Each variant says what failed and on what (a path, an image reference, a
//! layer digest, a Dockerfile line) and keeps the underlying error as its source; only flag
//! problems are [`BuildError::Usage`]. Dockerfile text is quoted only as bounded excerpts
//! ([`kiln_dockerfile::excerpt`]), and [`BuildError::report`] is the one line a failed build
//! prints.

use std::path::PathBuf;

use kiln_dockerfile::excerpt::{bounded, excerpt};
use kiln_dockerfile::ParseError;
use kiln_oci::registry::{LayoutError, RegistryError};

use crate::cache::key::FileHashError;
use crate::cache::layer::LayerCacheError;
use crate::commands::CommandError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Flags that cannot be parsed or do not go together.
    #[error("{0}")]
    Usage(String),
    #[error("Dockerfile {flag} not found (looked in the context {} and the current directory); set --dockerfile", context.display())]
    DockerfileNotFound { flag: String, context: PathBuf },
    #[error("reading the Dockerfile {path}: {source}")]
    Dockerfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path` is the Dockerfile's path, or what else was parsed (an ONBUILD trigger).
    #[error("{}: {source}", bounded(path, 400))]
    Parse {
        path: String,
        #[source]
        source: ParseError,
    },
    #[error("the Dockerfile has no FROM")]
    NoStages,
    /// One platform's build of a multi-platform build stopped because another's failed.
    #[error("stopped: the build for another platform failed")]
    SiblingFailed,
    /// A stage built at the same time as another stopped because the other failed.
    #[error("stopped: another stage of the build failed")]
    StageFailed,
    #[error("--target {target}: no stage of that name (stages: {})", stages.join(", "))]
    UnknownTarget { target: String, stages: Vec<String> },
    #[error("build context: {0}")]
    Context(#[from] crate::context::ContextError),
    #[error("{action}: {source}")]
    Registry {
        /// What was being done, naming the reference.
        action: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("Dockerfile line {line}: {}: {source}", excerpt(instruction))]
    Step {
        line: usize,
        instruction: String,
        #[source]
        source: CommandError,
    },
    /// A FROM or `COPY --from` that names no usable stage or image.
    #[error("Dockerfile line {line}: {}: {problem}", excerpt(instruction))]
    Reference {
        line: usize,
        instruction: String,
        #[source]
        problem: ReferenceProblem,
    },
    /// A stage's `FROM --platform` that does not name a platform.
    #[error(
        "Dockerfile line {line}: {}: invalid --platform {}: {detail}",
        excerpt(instruction),
        excerpt(platform)
    )]
    StagePlatform {
        line: usize,
        instruction: String,
        /// The expanded `--platform` value.
        platform: String,
        detail: String,
    },
    /// A RUN in a stage whose platform this machine cannot run, and no emulator for it.
    #[error("Dockerfile line {line}: {}: cannot run a step of a stage for platform {platform} on this {host} machine: {why}", excerpt(instruction))]
    ForeignPlatform {
        line: usize,
        instruction: String,
        platform: String,
        host: String,
        why: String,
    },
    #[error("line {line}: {source}")]
    CacheKey {
        line: usize,
        #[source]
        source: FileHashError,
    },
    #[error("{action} cached layer {digest}: {source}")]
    CachedLayer {
        action: &'static str,
        digest: String,
        #[source]
        source: Box<LayerCacheError>,
    },
    #[error("the {}config of {reference} ({digest}) is not valid JSON: {source}", if *cached { "cached " } else { "" })]
    ImageConfig {
        reference: String,
        digest: String,
        /// Read from the base-image cache rather than the registry.
        cached: bool,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: the manifest lists {layers} layers but the config {diff_ids} diff_ids")]
    LayerCount {
        reference: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("layer {digest} is neither on disk nor known in any repository")]
    LayerNowhere { digest: String },
    #[error("unpacking layer {digest} of {image}: {source}")]
    Unpack {
        digest: String,
        image: String,
        #[source]
        source: Box<crate::unpack::UnpackError>,
    },
    #[error(
        "stage {stage} (FROM {}) needs stage {parent}, which was not built",
        excerpt(base)
    )]
    BaseNotBuilt {
        stage: usize,
        base: String,
        parent: usize,
    },
    #[error("Dockerfile line {line}: COPY --from={}: stage {stage} was not built (is it after this stage?)", excerpt(from))]
    CopyFromNotBuilt {
        line: usize,
        from: String,
        stage: usize,
    },
    #[error(
        "Dockerfile line {line}: COPY --from={}: a stage can only copy from stages before it",
        excerpt(from)
    )]
    CopyFromLater { line: usize, from: String },
    #[error(
        "Dockerfile line {line}: RUN --mount=...,from={}: {problem}",
        excerpt(from)
    )]
    MountFrom {
        line: usize,
        from: String,
        problem: String,
    },
    #[error("snapshotting the filesystem: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("serialising the {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the OCI layout at {path}: {source}")]
    Layout {
        path: String,
        #[source]
        source: LayoutError,
    },
}

/// What is wrong with a stage or image a FROM or `COPY --from` names. Names and references
/// are excerpts (see [`kiln_dockerfile::excerpt`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceProblem {
    #[error("`{name}` is this stage itself: a stage cannot start from or copy from itself")]
    SameStage { name: String },
    #[error("stage `{name}` is defined later (line {stage_line}): a stage can only use stages defined before it")]
    LaterStage { name: String, stage_line: usize },
    #[error("`{reference}` is not a valid image reference ({reason}): write e.g. registry.example/name:tag")]
    BadImage { reference: String, reason: String },
}

/// How long the one line a failed build prints may get (the kubelet keeps the last 2 KiB of a
/// failed container's log as its termination message).
pub const REPORT_BYTES: usize = 2000;

impl BuildError {
    /// The one line a failed build prints: this error's message followed by each cause whose
    /// text the message does not already hold (most variants quote their source), with
    /// control characters escaped and at most [`REPORT_BYTES`] bytes.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        bounded(&text, REPORT_BYTES)
    }

    /// A registry error, with what was being done.
    pub fn registry(action: impl Into<String>) -> impl FnOnce(RegistryError) -> BuildError {
        let action = action.into();
        move |source| BuildError::Registry {
            action,
            source: Box::new(source),
        }
    }
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_is_reported_once_and_short() {
        let text = format!("{} tail-of-the-line\n", "X".repeat(10 << 20));
        let err = BuildError::Parse {
            path: "/ctx/Dockerfile".into(),
            source: kiln_dockerfile::parse(&text).unwrap_err(),
        };
        let report = err.report();
        assert!(report.len() < 1024, "{} bytes", report.len());
        assert!(report.starts_with("/ctx/Dockerfile: line 1: unknown instruction: XXX"));
        assert_eq!(report.matches("line 1:").count(), 1, "{report}");
        assert!(!report.contains("tail-of-the-line"));
    }

    #[test]
    fn causes_missing_from_the_message_are_added_on_the_same_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("root cause\nwith a second line")]
        struct Inner;

        let err = BuildError::Io {
            what: "reading x".into(),
            source: std::io::Error::other(Outer(Inner)),
        };
        assert_eq!(
            err.report(),
            r"reading x: outer: root cause\nwith a second line"
        );
        let long = BuildError::Usage("u".repeat(100_000));
        assert!(long.report().len() <= REPORT_BYTES + '…'.len_utf8());
    }
}
