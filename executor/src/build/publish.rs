//! Publishing the built image: early uploads of the target stage's layers while the build goes
//! on, then the config and manifest, pushed to every destination (copying or mounting the layers
//! the build never downloaded), written as an OCI layout and a docker archive, and the result
//! files a pipeline reads (digest files, the termination message). Builds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::base::BaseImages;
use super::error::io_err;
use super::request::BuildRequest;
use super::request::ImageFormat;
use super::{secs, timestamp, BuildError, BuildResult, BuiltStage};
use crate::cache::prefetch::LOOKUP_CONCURRENCY;
use crate::layer::LayerFile;
use crate::output;
use crate::snapshot::{BlobWatch, GrowingBlob};
use kiln_oci::image::{
    sha256_digest, Descriptor, Manifest, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST,
};
use kiln_oci::registry::{
    Blob, BlobSource, Registry, RegistryError, MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX,
    STREAM_PIECE,
};

/// The media types `--image-format` writes.
impl ImageFormat {
    pub fn manifest_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => MEDIA_TYPE_OCI_MANIFEST,
            ImageFormat::Docker => MEDIA_TYPE_DOCKER_MANIFEST,
        }
    }

    pub fn config_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => MEDIA_TYPE_OCI_CONFIG,
            ImageFormat::Docker => MEDIA_TYPE_DOCKER_CONFIG,
        }
    }

    /// An image index, or Docker's manifest list.
    pub fn index_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => MEDIA_TYPE_OCI_INDEX,
            ImageFormat::Docker => MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        }
    }

    /// A layer's media type in this format (layers are always stored under their OCI type);
    /// `None` for one Docker's format cannot name (zstd).
    pub fn layer_type(self, oci: &str) -> Option<String> {
        match self {
            ImageFormat::Oci => Some(oci.to_string()),
            ImageFormat::Docker => match oci {
                MEDIA_TYPE_LAYER_GZIP => Some(kiln_oci::image::MEDIA_TYPE_DOCKER_LAYER_GZIP.into()),
                MEDIA_TYPE_LAYER_TAR => Some("application/vnd.docker.image.rootfs.diff.tar".into()),
                t if t.starts_with("application/vnd.docker.") => Some(t.to_string()),
                _ => None,
            },
        }
    }
}

/// A layer file that reaches this size while it is written is uploaded as it grows (in
/// [`STREAM_PIECE`] pieces) rather than after it is finished: big layers then upload beside
/// their compression. Smaller ones are not worth an upload session of their own.
pub const STREAM_FROM: u64 = 2 * STREAM_PIECE as u64;

/// Early uploads of the target stage's new layers to the destinations.
pub struct Publisher<'a> {
    registry: Arc<Registry>,
    runtime: &'a tokio::runtime::Runtime,
    /// Where to upload; empty with `--no-push`.
    destinations: Vec<String>,
    /// Uploads and checks awaited before the image is pushed.
    pending: Vec<std::thread::JoinHandle<()>>,
}

impl<'a> Publisher<'a> {
    pub fn new(
        req: &BuildRequest,
        registry: Arc<Registry>,
        runtime: &'a tokio::runtime::Runtime,
    ) -> Publisher<'a> {
        Publisher {
            registry,
            runtime,
            destinations: if req.no_push {
                Vec::new()
            } else {
                req.destinations.clone()
            },
            pending: Vec::new(),
        }
    }

    /// Start uploading a new layer of the target stage to the destinations from the `skip`th on
    /// (the first ones having been given the layer by [`Self::stream_ahead`]) while the build
    /// goes on, so that the final push has only the config and manifest left to send. Failures
    /// are only logged: the final push uploads whatever is missing and reports its own errors.
    pub fn push_ahead_from(&mut self, layer: &LayerFile, skip: usize) {
        for dest in self.destinations.iter().skip(skip) {
            let registry = Arc::clone(&self.registry);
            let runtime = self.runtime.handle().clone();
            let dest = dest.clone();
            let blob = Blob {
                digest: layer.digest.clone(),
                size: layer.size,
                source: BlobSource::File(layer.path.clone()),
                mount_from: None,
                fresh: true,
            };
            // Like cache stores, on a thread of its own: the upload future is not `Send`.
            let spawned = std::thread::Builder::new()
                .name("kiln-push-ahead".into())
                .spawn(move || {
                    if let Err(e) = runtime.block_on(registry.push_blob_ahead(&dest, &blob)) {
                        tracing::debug!(
                            "early upload of {} to {dest} failed, the push will retry: {e}",
                            blob.digest
                        );
                    }
                });
            match spawned {
                Ok(handle) => self.pending.push(handle),
                Err(e) => tracing::debug!("could not start an early upload: {e}"),
            }
        }
    }

    /// Start asking the destinations whether they hold `layers` (the target stage's base
    /// layers, a cache hit's layer), while the build goes on: the push then neither asks again
    /// nor sends the ones they hold. Failures are left to the push.
    pub fn check_ahead(&mut self, layers: &[LayerFile]) {
        if layers.is_empty() {
            return;
        }
        for dest in &self.destinations {
            let registry = Arc::clone(&self.registry);
            let runtime = self.runtime.handle().clone();
            let dest = dest.clone();
            let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
            // Like the uploads, on a thread of its own: the registry's futures are not `Send`.
            let spawned = std::thread::Builder::new()
                .name("kiln-check-ahead".into())
                .spawn(move || runtime.block_on(registry.check_blobs(&dest, digests)));
            match spawned {
                Ok(handle) => self.pending.push(handle),
                Err(e) => tracing::debug!("could not start an early check: {e}"),
            }
        }
    }

    /// Start uploading the next layer of the target stage to the first destination while it is
    /// written, for the snapshot to report its progress on the returned watch. A layer that
    /// stays under [`STREAM_FROM`] bytes, or whose upload as it is written fails, is uploaded
    /// from its finished file instead (as [`Self::push_ahead_from`] does), unless no layer
    /// follows it (`layers_follow` false): the push, which waits for early uploads, starts right
    /// after, and uploads it beside the config and the other blobs' checks. Other destinations
    /// get [`Self::push_ahead_from`] once the layer is finished. `None` with `--no-push`.
    pub fn stream_ahead(&mut self, layers_follow: bool) -> Option<BlobWatch> {
        let dest = self.destinations.first()?.clone();
        let registry = Arc::clone(&self.registry);
        let runtime = self.runtime.handle().clone();
        let (watch, mut progress) = tokio::sync::watch::channel(GrowingBlob::default());
        let upload = async move {
            // Stream only a layer that grows past STREAM_FROM before it is finished.
            let stream = loop {
                {
                    let blob = progress.borrow_and_update();
                    if blob.digest.is_some() {
                        break false;
                    }
                    if blob.written >= STREAM_FROM {
                        break true;
                    }
                }
                if progress.changed().await.is_err() {
                    break false;
                }
            };
            if stream {
                match registry.push_growing_blob(&dest, progress.clone()).await {
                    Ok(digest) => {
                        tracing::debug!("{digest} uploaded to {dest} while it was written");
                        return;
                    }
                    Err(e) => tracing::debug!(
                        "upload of a layer to {dest} while it was written failed, uploading the finished file: {e}"
                    ),
                }
            }
            if !stream && !layers_follow {
                return;
            }
            // The finished file (none when the writer stopped without one).
            let finished = loop {
                {
                    let blob = progress.borrow_and_update();
                    if let (Some(digest), Some(path)) = (&blob.digest, &blob.path) {
                        break Some(Blob {
                            digest: digest.clone(),
                            size: blob.written,
                            source: BlobSource::File(path.clone()),
                            mount_from: None,
                            fresh: true,
                        });
                    }
                }
                if progress.changed().await.is_err() && progress.borrow().digest.is_none() {
                    break None;
                }
            };
            if let Some(blob) = finished {
                if let Err(e) = registry.push_blob_ahead(&dest, &blob).await {
                    tracing::debug!(
                        "early upload of {} to {dest} failed, the push will retry: {e}",
                        blob.digest
                    );
                }
            }
        };
        let spawned = std::thread::Builder::new()
            .name("kiln-push-ahead".into())
            .spawn(move || runtime.block_on(upload));
        match spawned {
            Ok(handle) => {
                self.pending.push(handle);
                Some(watch)
            }
            Err(e) => {
                tracing::debug!("could not start an early upload: {e}");
                None
            }
        }
    }

    /// Wait for the early layer uploads before the image itself is pushed.
    pub fn finish_early_pushes(&mut self) {
        for handle in std::mem::take(&mut self.pending) {
            if handle.join().is_err() {
                warn!("an early layer upload panicked; the push uploads the layer itself");
            }
        }
    }
}

/// A build that fails drops the publisher with uploads still running: they are awaited here, so
/// that none is cut off by the shutdown of the runtime it runs on (which made its thread panic).
impl Drop for Publisher<'_> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            tracing::debug!(
                "waiting for {} early layer upload(s) to end",
                self.pending.len()
            );
        }
        self.finish_early_pushes();
    }
}

/// The image config and manifest of the target stage, serialised.
struct Assembled {
    /// The manifest's media type.
    media_type: &'static str,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
    digest: String,
}

/// Assemble config and manifest, then push to every destination and write the requested files.
pub fn write_outputs(
    req: &BuildRequest,
    bases: &BaseImages<'_>,
    runtime: &tokio::runtime::Runtime,
    stage: BuiltStage,
    annotations: BTreeMap<String, String>,
) -> Result<BuildResult, BuildError> {
    let image = assemble(req, &stage, annotations)?;
    let mut references = Vec::new();
    if !req.no_push {
        for dest in &req.destinations {
            // One platform's image of an index: by digest only; the index gets the tag.
            let target = if req.index_member {
                format!("{}@{}", output::strip_tag(dest), image.digest)
            } else {
                dest.clone()
            };
            push(
                bases,
                runtime,
                &target,
                &stage.layers,
                &image,
                req.ignore_immutable_tag_errors,
            )?;
            references.push(format!("{dest}@{}", image.digest));
        }
    } else if !req.destinations.is_empty() {
        info!("--no-push: not pushing to {}", req.destinations.join(", "));
    }
    if let Some(path) = &req.outputs.oci_layout_path {
        write_layout(req, bases, path, &stage.layers, &image)?;
    }
    let size = image.config.len() as u64 + stage.layers.iter().map(|l| l.size).sum::<u64>();
    if let Some(path) = &req.outputs.tar_path {
        let layers: Vec<output::ArchiveLayer> = stage
            .layers
            .iter()
            .map(|l| {
                // A layer the build skipped (base or cache hit) is fetched for the archive.
                bases.ensure_local(l)?;
                Ok(output::ArchiveLayer {
                    digest: l.digest.clone(),
                    path: bases.checked_path(l)?,
                })
            })
            .collect::<Result<_, BuildError>>()?;
        let tags = output::repo_tags(&req.destinations);
        output::write_docker_archive(Path::new(path), &image.config, &layers, &tags)
            .map_err(io_err(format!("writing --tar-path {path}")))?;
        info!(
            "wrote docker archive {path} (tags: {})",
            if tags.is_empty() {
                "none".to_string()
            } else {
                tags.join(", ")
            }
        );
    }
    Ok(BuildResult {
        digest: image.digest,
        references,
        manifest: image.manifest,
        config: image.config,
        commit: None,
        cache: None,
        size,
    })
}

/// The final config (creation time, diff_ids, platform, `--label`s) and the manifest.
fn assemble(
    req: &BuildRequest,
    stage: &BuiltStage,
    annotations: BTreeMap<String, String>,
) -> Result<Assembled, BuildError> {
    let mut config = stage.config.clone();
    config.created = Some(timestamp(req));
    config.rootfs.diff_ids = stage.layers.iter().map(|l| l.diff_id.clone()).collect();
    let target = &req.platform;
    if req.platform_explicit {
        // BuildKit's rule for an explicit target platform: it replaces the base's, the variant
        // too when the target names one or the OS/architecture changed.
        let same = config.os == target.os && config.architecture == target.architecture;
        config.os = target.os.clone();
        config.architecture = target.architecture.clone();
        if target.variant.is_some() || !same {
            config.variant = target.variant.clone();
        }
    }
    if config.architecture.is_empty() {
        config.architecture = target.architecture.clone();
    }
    if config.os.is_empty() {
        config.os = target.os.clone();
    }
    for label in &req.labels {
        let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
        config
            .config
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_string(), v.to_string());
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|source| BuildError::Serialize {
        what: "image config",
        source,
    })?;
    let config_digest = sha256_digest(&config_bytes);
    let format = req.image_format;
    let layers = stage
        .layers
        .iter()
        .map(|l| {
            let mut d = l.descriptor();
            d.media_type = format.layer_type(&d.media_type).ok_or_else(|| {
                BuildError::Usage(format!(
                    "--image-format=docker: layer {} is {}, which Docker's image format cannot \
                     name (use --image-format=oci)",
                    l.digest, d.media_type
                ))
            })?;
            Ok(d)
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    if format == ImageFormat::Docker && !annotations.is_empty() {
        warn!("--image-format=docker: Docker's manifest has no annotations; they are left out");
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: format.manifest_type().to_string(),
        config: Descriptor {
            media_type: format.config_type().to_string(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
            annotations: None,
        },
        layers,
        annotations: (format == ImageFormat::Oci && !annotations.is_empty()).then_some(annotations),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|source| BuildError::Serialize {
        what: "manifest",
        source,
    })?;
    Ok(Assembled {
        media_type: format.manifest_type(),
        digest: sha256_digest(&manifest_bytes),
        config: config_bytes,
        config_digest,
        manifest: manifest_bytes,
    })
}

/// Push the image to one destination.
fn push(
    bases: &BaseImages<'_>,
    runtime: &tokio::runtime::Runtime,
    dest: &str,
    layers: &[LayerFile],
    image: &Assembled,
    ignore_immutable_tag: bool,
) -> Result<(), BuildError> {
    let registry = bases.registry();
    let started = Instant::now();
    // Layers the build never downloaded (base layers it did not need, cache hits) go to the
    // destination only when it lacks them. On the same registry they are named as mount
    // sources, and the push (which checks every blob, several at a time) skips or mounts them;
    // from elsewhere they are fetched now and uploaded unless the destination already has them.
    // Layers in the base-image cache are read (and so verified) only when the destination
    // lacks them.
    let ask: Vec<String> = layers
        .iter()
        .filter(|l| bases.is_cached(l) || bases.origin(l).is_some_and(|o| !same_registry(&o, dest)))
        .map(|l| l.digest.clone())
        .collect();
    let present = blobs_present(registry, runtime, dest, ask);
    let mut blobs: Vec<Blob> = Vec::new();
    let mut unfetched = false;
    for l in layers {
        let mut mount_from = None;
        let mut path = l.path.clone();
        // A layer with no repository behind it was written by this build's steps.
        let mut fresh = false;
        if let Some(origin) = bases.origin(l) {
            if same_registry(&origin, dest) {
                mount_from = Some(origin);
                unfetched = true;
            } else if present.contains(&l.digest) {
                continue;
            } else {
                bases.ensure_local(l)?;
            }
        } else if bases.is_cached(l) {
            if present.contains(&l.digest) {
                continue;
            }
            // A layer of a warmed base is mounted from that base's repository when it is on the
            // destination's registry (the registry refuses a mount it cannot make, and the
            // checked file is uploaded instead).
            path = bases.checked_path(l)?;
            mount_from = bases.mount_source(l).filter(|o| same_registry(o, dest));
        } else {
            // A layer downloaded from the destination's registry (a base's, a cache hit's) is
            // mounted from its repository there (as BuildKit and containerd do); the file is
            // the fallback.
            let source = bases.mount_source(l);
            fresh = source.is_none();
            mount_from = source.filter(|o| same_registry(o, dest));
        }
        blobs.push(Blob {
            digest: l.digest.clone(),
            size: l.size,
            source: BlobSource::File(path),
            mount_from,
            fresh,
        });
    }
    blobs.push(Blob {
        digest: image.config_digest.clone(),
        size: image.config.len() as u64,
        source: BlobSource::Bytes(image.config.clone()),
        mount_from: None,
        fresh: true,
    });
    let push_image =
        || runtime.block_on(registry.push_image(dest, &blobs, &image.manifest, image.media_type));
    let mut result = push_image();
    if let (Err(e), true) = (&result, unfetched) {
        // A refused mount falls back to an upload, which needs the file.
        warn!("{dest}: pushing with mounted layers failed ({e}); fetching them and uploading");
        for l in layers {
            bases.ensure_local(l)?;
        }
        result = push_image();
    }
    let pushed = match result {
        // kaniko's --push-ignore-immutable-tag-errors: the tag is there already and stays.
        Err(RegistryError::ImmutableTag { detail, .. }) if ignore_immutable_tag => {
            info!(
                "{dest}: immutable tag error ignored for {}@{} (--push-ignore-immutable-tag-errors): {detail}",
                output::strip_tag(dest),
                image.digest
            );
            return Ok(());
        }
        other => other.map_err(BuildError::registry(format!("pushing {dest}")))?,
    };
    if pushed != image.digest {
        warn!(
            "{dest}: the registry reports digest {pushed}, Kiln computed {}",
            image.digest
        );
    }
    info!(
        "pushed {dest}@{} in {}",
        image.digest,
        secs(started.elapsed())
    );
    Ok(())
}

/// Which of `digests` the repository of `reference` holds, asked several at a time; a
/// failed check counts as absent (the blob is then uploaded).
fn blobs_present(
    registry: &Registry,
    runtime: &tokio::runtime::Runtime,
    reference: &str,
    digests: Vec<String>,
) -> BTreeSet<String> {
    use futures_util::StreamExt;
    runtime.block_on(
        futures_util::stream::iter(digests)
            .map(|digest| async move {
                let present = registry
                    .blob_exists(reference, &digest)
                    .await
                    .unwrap_or(false);
                present.then_some(digest)
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .filter_map(|d| async move { d })
            .collect(),
    )
}

pub(super) const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// Write the image into the OCI layout at `path`, tagged with the first destination's tag.
fn write_layout(
    req: &BuildRequest,
    bases: &BaseImages<'_>,
    path: &str,
    layers: &[LayerFile],
    image: &Assembled,
) -> Result<(), BuildError> {
    let layout_err = |source| BuildError::Layout {
        path: path.to_string(),
        source,
    };
    let layout =
        kiln_oci::registry::layout::OciLayout::create(Path::new(path)).map_err(layout_err)?;
    for layer in layers {
        bases.ensure_local(layer)?;
        layout
            .write_blob_file(&bases.checked_path(layer)?, &layer.digest)
            .map_err(layout_err)?;
    }
    layout.write_blob_bytes(&image.config).map_err(layout_err)?;
    if req.index_member {
        // Named by the index the build of all platforms adds, not by index.json itself.
        layout
            .write_blob_bytes(&image.manifest)
            .map_err(layout_err)?;
        return Ok(());
    }
    let ref_name = req
        .destinations
        .first()
        .and_then(|d| tag_of(d))
        .unwrap_or_else(|| "latest".to_string());
    // BuildKit's OCI exporter dates the index entry (not the manifest) with the image's
    // creation time; the config's `created` is that time (SOURCE_DATE_EPOCH when given).
    let created: Option<String> = serde_json::from_slice::<serde_json::Value>(&image.config)
        .ok()
        .and_then(|c| {
            let created = chrono::DateTime::parse_from_rfc3339(c.get("created")?.as_str()?).ok()?;
            // In BuildKit's format: RFC 3339, whole seconds, UTC.
            Some(
                created
                    .with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
        });
    let annotations = created
        .map(|c| (ANNOTATION_CREATED.to_string(), c))
        .into_iter()
        .collect();
    layout
        .add_manifest_annotated(
            &image.manifest,
            image.media_type,
            Some(&ref_name),
            &annotations,
        )
        .map_err(layout_err)?;
    info!("wrote OCI layout {path} (ref {ref_name})");
    Ok(())
}

/// Digest files in kaniko's formats and the termination message for a controller.
pub fn write_result_files(req: &BuildRequest, result: &BuildResult) -> Result<(), BuildError> {
    let outputs = &req.outputs;
    let files = [
        (&outputs.digest_file, "--digest-file", result.digest.clone()),
        (
            &outputs.image_name_with_digest_file,
            "--image-name-with-digest-file",
            output::names_with_digest(&req.destinations, &result.digest),
        ),
        (
            &outputs.image_name_tag_with_digest_file,
            "--image-name-tag-with-digest-file",
            output::names_tag_with_digest(&req.destinations, &result.digest),
        ),
    ];
    for (path, flag, content) in files {
        if let Some(path) = path {
            std::fs::write(path, content).map_err(io_err(format!("writing {flag} {path}")))?;
        }
    }
    // kaniko writes `$BUILDER_OUTPUT/images` after pushing, one JSON line per destination.
    if let (Some(dir), false) = (std::env::var_os("BUILDER_OUTPUT"), req.no_push) {
        let path = Path::new(&dir).join("images");
        std::fs::write(
            &path,
            output::builder_output(&req.destinations, &result.digest),
        )
        .map_err(io_err(format!(
            "writing $BUILDER_OUTPUT {}",
            path.display()
        )))?;
    }
    let termination = std::env::var_os(kiln_common::termination::TERMINATION_LOG_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(output::TERMINATION_LOG));
    let message = kiln_common::termination::BuildMessage {
        digest: result.digest.clone(),
        references: result.references.clone(),
        commit: result.commit.clone(),
        cache: result.cache,
        size: Some(result.size),
    };
    output::write_termination_log(&termination, &message).map_err(io_err(format!(
        "writing the termination message {}",
        termination.display()
    )))?;
    Ok(())
}

/// Whether two references name repositories on the same registry (so blobs can be mounted).
fn same_registry(a: &str, b: &str) -> bool {
    match (
        kiln_oci::registry::parse_reference(a),
        kiln_oci::registry::parse_reference(b),
    ) {
        (Ok(a), Ok(b)) => a.registry() == b.registry(),
        _ => false,
    }
}

/// The tag of a reference (`reg:5000/a/b:tag` → `tag`), if it has one.
pub(super) fn tag_of(reference: &str) -> Option<String> {
    let name = reference.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(tag_of("127.0.0.1:5000/a/b:v1").as_deref(), Some("v1"));
        assert_eq!(tag_of("127.0.0.1:5000/a/b").as_deref(), None);
        assert_eq!(tag_of("a/b:v1@sha256:abc").as_deref(), Some("v1"));
    }
}
