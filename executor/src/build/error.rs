//! Why a build failed. Each variant says what failed and on what (a path, an image reference, a
//! layer digest, a Dockerfile line) and keeps the underlying error as its source; only flag
//! problems are [`BuildError::Usage`].

use std::path::PathBuf;

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
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: ParseError,
    },
    #[error("the Dockerfile has no FROM")]
    NoStages,
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
    #[error("Dockerfile line {line}: {instruction}: {source}")]
    Step {
        line: usize,
        instruction: String,
        #[source]
        source: CommandError,
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
    #[error("stage {stage} (FROM {base}) needs stage {parent}, which was not built")]
    BaseNotBuilt {
        stage: usize,
        base: String,
        parent: usize,
    },
    #[error("COPY --from={from}: stage {stage} was not built (is it after this stage?)")]
    CopyFromNotBuilt { from: String, stage: usize },
    #[error("COPY --from={from}: a stage can only copy from stages before it")]
    CopyFromLater { from: String },
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

impl BuildError {
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
