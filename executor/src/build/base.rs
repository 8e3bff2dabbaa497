//! Base images: where a stage's starting layers come from (the warmed base-image cache volume, a
//! registry, scratch, or an earlier stage) and how they are applied to its root, in a private
//! directory or in place over `/`. Also keeps track of where each layer blob of the build is
//! (on disk, in the cache volume and verified only when read, or left in a repository), so that
//! publishing can read or copy it. Runs no step and computes no cache key.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::error::io_err;
use super::plan::{Base, BaseKind};
use super::{human, secs, short, BuildError, Builder, IgnorePaths};
use crate::layer::LayerFile;
use crate::run::Isolation;
use crate::unpack::{unpack_layer, unpack_layer_verified, UnpackError, UnpackOptions};
use kiln_oci::base_cache::{BaseImageCache, CachedImage, CachedLayer};
use kiln_oci::image::{oci_layer_media_type, ImageConfig};
use kiln_oci::registry::{parse_reference, Platform, Registry, RemoteImage};

/// An image's config and layers.
#[derive(Clone)]
pub struct Image {
    pub config: ImageConfig,
    pub layers: Vec<LayerFile>,
}

/// The line a build logs for a base image pulled from its registry: platform, manifest digest,
/// layers, their size and the time since `started`; `how` says what else was done meanwhile.
fn log_pulled(
    reference: &str,
    platform: &Platform,
    remote: &RemoteImage,
    image: &Image,
    how: &str,
    started: Instant,
) {
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    info!(
        "pulled {reference} ({platform}: {}, {} layer(s), {}){how} in {}",
        short(&remote.manifest_digest),
        image.layers.len(),
        human(total),
        secs(started.elapsed())
    );
}

/// A base image that is not an index holds one platform, which is used whatever the build asked
/// for (as Docker and BuildKit do); said, as BuildKit's `InvalidBaseImagePlatform` check does.
fn warn_other_platform(reference: &str, config: &ImageConfig, wanted: &Platform) {
    if config.os.is_empty() || config.architecture.is_empty() {
        return;
    }
    if config.os != wanted.os || config.architecture != wanted.architecture {
        warn!(
            "{reference} is a {}/{} image, not {wanted} (it is no image index with that platform); using it as it is",
            config.os, config.architecture
        );
    }
}

/// Base images of one build, and the whereabouts of every layer blob.
pub struct BaseImages<'a> {
    registry: Arc<Registry>,
    runtime: &'a tokio::runtime::Runtime,
    /// The base-image cache volume, with `--cache-dir`.
    cache: Option<BaseImageCache>,
    platform: Platform,
    work_dir: PathBuf,
    ignore: IgnorePaths,
    /// How every layer of the build is unpacked: its bounds (`--max-layer-size`,
    /// `--max-layer-entries`) and the `--max-build-size` budget they all share; the ignored
    /// paths are filled in for each unpack.
    unpack: UnpackOptions,
    /// Layer blobs of base images found in the base-image cache, by path, with the image's
    /// reference. Their digests are checked whenever they are read (while unpacking, or
    /// before an upload or an archive), not when they are found, so each is read once.
    cached_layers: HashMap<PathBuf, String>,
    /// Base images whose cached copy turned out damaged: pulled from their registry from then on.
    damaged: BTreeSet<String>,
    /// Cached layer blobs checked before publishing read them: path → the file to read
    /// (itself, or a copy fetched from the registry when it was damaged).
    checked: RefCell<HashMap<PathBuf, PathBuf>>,
    /// Layers of the image that were not downloaded (base layers of a build that did not need
    /// them, cache hits): digest → reference of a repository holding the blob.
    remote: HashMap<String, String>,
    /// Layers downloaded from a registry: digest → the reference they were pulled from. A
    /// push to the same registry mounts them from there instead of uploading them again.
    pulled: HashMap<String, String>,
    /// Roots of images unpacked for `COPY --from=<image>`, by reference.
    image_roots: HashMap<String, PathBuf>,
    /// The platform manifest digest of every base image read, by reference and platform.
    digests: HashMap<(String, String), String>,
    /// Manifests and configs read from registries, by reference and platform: a base image
    /// whose layers the skip-base decision turned out to need is not asked for twice, and the
    /// whole build uses the one manifest a tag named when it was first read.
    remotes: HashMap<(String, String), (Image, RemoteImage)>,
}

impl<'a> BaseImages<'a> {
    pub fn new(
        registry: Arc<Registry>,
        runtime: &'a tokio::runtime::Runtime,
        cache: Option<BaseImageCache>,
        platform: Platform,
        work_dir: PathBuf,
        ignore: IgnorePaths,
        unpack: UnpackOptions,
    ) -> BaseImages<'a> {
        BaseImages {
            registry,
            runtime,
            cache,
            platform,
            work_dir,
            ignore,
            unpack,
            cached_layers: HashMap::new(),
            damaged: BTreeSet::new(),
            checked: RefCell::new(HashMap::new()),
            remote: HashMap::new(),
            pulled: HashMap::new(),
            image_roots: HashMap::new(),
            digests: HashMap::new(),
            remotes: HashMap::new(),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn blob_dir(&self) -> PathBuf {
        self.work_dir.join("blobs")
    }

    /// The config a `FROM scratch` stage starts with.
    pub fn scratch_config(&self) -> ImageConfig {
        ImageConfig {
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            ..Default::default()
        }
    }

    /// The digest of the manifest `reference` was read as for `platform`, once read.
    pub fn manifest_digest(&self, reference: &str, platform: &Platform) -> Option<&String> {
        self.digests
            .get(&(reference.to_string(), platform.to_string()))
    }

    fn note_digest(&mut self, reference: &str, platform: &Platform, digest: &str) {
        self.digests.insert(
            (reference.to_string(), platform.to_string()),
            digest.to_string(),
        );
    }

    /// A base image for `platform` from the base-image cache when it holds it (layers verified
    /// as they are read), else pulled: manifest and config, then every layer blob (verified)
    /// into the work dir.
    pub fn pull(&mut self, reference: &str, platform: &Platform) -> Result<Image, BuildError> {
        let started = Instant::now();
        let image = match self.cached(reference, platform)? {
            Some(image) => {
                self.log_cached(reference, platform, &image, started);
                image
            }
            None => self.pull_remote(reference, platform)?,
        };
        warn_other_platform(reference, &image.config, platform);
        Ok(image)
    }

    /// The one line a build logs for a base image read from `--cache-dir`, like the one for a
    /// pulled image: platform, manifest digest, layers and time.
    fn log_cached(&self, reference: &str, platform: &Platform, image: &Image, started: Instant) {
        let digest = self.manifest_digest(reference, platform).map(|d| short(d));
        info!(
            "{reference}: read from the base-image cache ({platform}: {}, {} layer(s)) in {}",
            digest.unwrap_or_default(),
            image.layers.len(),
            secs(started.elapsed())
        );
    }

    /// A base image's config and layer records without downloading layers (from the
    /// base-image cache when it holds the image, with its verified files). Returns the
    /// reference the layers can be fetched from later.
    pub fn manifest(
        &mut self,
        reference: &str,
        platform: &Platform,
    ) -> Result<(Image, String), BuildError> {
        if let Some(image) = self.cached(reference, platform)? {
            return Ok((image, reference.to_string()));
        }
        let (image, remote) = self.remote(reference, platform)?;
        Ok((image, remote.reference))
    }

    /// An image's manifest and config from its registry, checked: the config parses and names
    /// one diff_id per layer. The layers' paths are where they go in the work dir.
    fn remote(
        &mut self,
        reference: &str,
        platform: &Platform,
    ) -> Result<(Image, RemoteImage), BuildError> {
        let key = (reference.to_string(), platform.to_string());
        if let Some(read) = self.remotes.get(&key) {
            return Ok(read.clone());
        }
        let remote = self
            .runtime
            .block_on(self.registry.pull_image_for(reference, platform))
            .map_err(BuildError::registry(format!(
                "pulling {reference} ({platform})"
            )))?;
        self.note_digest(reference, platform, &remote.manifest_digest);
        let config: ImageConfig =
            serde_json::from_slice(&remote.config_bytes).map_err(|source| {
                BuildError::ImageConfig {
                    reference: reference.to_string(),
                    digest: remote.config_digest.clone(),
                    cached: false,
                    source,
                }
            })?;
        let descriptors = remote.manifest.layers();
        if descriptors.len() != config.rootfs.diff_ids.len() {
            return Err(BuildError::LayerCount {
                reference: reference.to_string(),
                layers: descriptors.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        let blob_dir = self.blob_dir();
        let layers = descriptors
            .iter()
            .zip(config.rootfs.diff_ids.iter())
            .map(|(desc, diff_id)| LayerFile {
                digest: desc.digest().to_string(),
                diff_id: diff_id.clone(),
                size: desc.size(),
                media_type: oci_layer_media_type(desc.media_type().as_ref()),
                path: blob_dir.join(desc.digest().to_string().replace(':', "-")),
            })
            .collect();
        let read = (Image { config, layers }, remote);
        self.remotes.insert(key, read.clone());
        Ok(read)
    }

    /// Pull a base image from its registry: manifest and config, then every layer blob
    /// (verified) into the work dir.
    fn pull_remote(&mut self, reference: &str, platform: &Platform) -> Result<Image, BuildError> {
        let started = Instant::now();
        let (image, remote) = self.remote(reference, platform)?;
        let blob_dir = self.blob_dir();
        std::fs::create_dir_all(&blob_dir)
            .map_err(io_err(format!("creating {}", blob_dir.display())))?;
        let missing = image
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.path.exists())
            .map(|(i, l)| (i, l.clone()))
            .collect();
        self.start_downloads(reference, &remote.reference, missing)?
            .finish()?;
        log_pulled(reference, platform, &remote, &image, "", started);
        Ok(image)
    }

    /// A base image applied over `root` as it is pulled: from the base-image cache as
    /// [`Self::pull`] and [`Self::unpack_image`] do; from its registry with each layer unpacked
    /// as soon as it and the layers before it are downloaded, while the later ones still
    /// download ([`LAYER_FETCHES`] at a time), so unpacking overlaps the transfer. A failed
    /// download stops the others and is returned as such; a failed unpack waits for the
    /// downloads to end (so a retry finds every layer) and is returned. Sets `pulled` to the
    /// image as soon as its manifest is read, for a retry to unpack again.
    pub fn pull_unpacking(
        &mut self,
        reference: &str,
        platform: &Platform,
        root: &Path,
        pulled: &mut Option<Image>,
    ) -> Result<Image, BuildError> {
        let started = Instant::now();
        if let Some(image) = self.cached(reference, platform)? {
            self.log_cached(reference, platform, &image, started);
            warn_other_platform(reference, &image.config, platform);
            *pulled = Some(image.clone());
            return self.unpack_image(reference, platform, image, root);
        }
        let (image, remote) = self.remote(reference, platform)?;
        warn_other_platform(reference, &image.config, platform);
        *pulled = Some(image.clone());
        let blob_dir = self.blob_dir();
        std::fs::create_dir_all(&blob_dir)
            .map_err(io_err(format!("creating {}", blob_dir.display())))?;
        let mut ready: Vec<bool> = image.layers.iter().map(|l| l.path.exists()).collect();
        let missing: Vec<(usize, LayerFile)> = image
            .layers
            .iter()
            .enumerate()
            .filter(|(i, _)| !ready[*i])
            .map(|(i, l)| (i, l.clone()))
            .collect();
        let downloads = self.start_downloads(reference, &remote.reference, missing)?;
        let mut result = Ok(());
        for (i, layer) in image.layers.iter().enumerate() {
            while !ready[i] {
                let failed = match downloads.done.recv() {
                    Ok(Ok(n)) => {
                        ready[n] = true;
                        continue;
                    }
                    Ok(Err(e)) => e,
                    // The downloads ended without this layer.
                    Err(_) => io_err(format!("pulling {reference}"))(std::io::Error::other(
                        "the layer downloads stopped",
                    )),
                };
                let _ = downloads.finish();
                discard_partial_root(root);
                return Err(failed);
            }
            if let Err(e) = self.unpack(layer, reference, root) {
                result = Err(e);
                break;
            }
        }
        // Every download is over before the layers are used again (a retry, the push).
        let finished = downloads.finish();
        result?;
        finished?;
        for layer in &image.layers {
            self.pulled
                .insert(layer.digest.clone(), remote.reference.clone());
        }
        log_pulled(
            reference,
            platform,
            &remote,
            &image,
            " and unpacked it as it came",
            started,
        );
        Ok(image)
    }

    /// Starts downloading the `missing` layers (index, record) of `reference` from `remote_ref`
    /// into their files, [`LAYER_FETCHES`] at a time (as containerd and BuildKit fetch them),
    /// each verified as it is written, on a thread of its own (the registry's futures are not
    /// `Send`). Each layer's index is sent once it is complete; the first failure is sent and
    /// ends the others.
    fn start_downloads(
        &self,
        reference: &str,
        remote_ref: &str,
        missing: Vec<(usize, LayerFile)>,
    ) -> Result<Downloads, BuildError> {
        let (tx, done) = std::sync::mpsc::channel();
        let registry = Arc::clone(&self.registry);
        let runtime = self.runtime.handle().clone();
        let remote_ref = remote_ref.to_string();
        let name = reference.to_string();
        let thread = std::thread::Builder::new()
            .name("kiln-pull".into())
            .spawn(move || {
                use futures_util::stream::{self, StreamExt, TryStreamExt};
                let registry = &registry;
                let (remote_ref, name) = (&remote_ref, &name);
                let fetched = runtime.block_on(
                    stream::iter(missing.into_iter().map(|(i, layer)| async move {
                        registry
                            .fetch_blob_to_work_file(
                                remote_ref,
                                &layer.digest,
                                layer.size,
                                &layer.path,
                            )
                            .await
                            .map(|_| i)
                            .map_err(BuildError::registry(format!(
                                "fetching layer {} of {name}",
                                layer.digest
                            )))
                    }))
                    .buffer_unordered(LAYER_FETCHES)
                    .try_for_each(|i| {
                        let _ = tx.send(Ok(i));
                        futures_util::future::ready(Ok(()))
                    }),
                );
                if let Err(e) = fetched {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(io_err("starting the layer downloads".to_string()))?;
        Ok(Downloads { thread, done })
    }

    /// The base image from `--cache-dir`, if it holds it (manifest and config verified; each
    /// layer blob is verified when it is read, see [`BaseImages::cached_layers`]).
    fn cached(
        &mut self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<Image>, BuildError> {
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        if self.damaged.contains(reference) {
            return Ok(None);
        }
        let Some(image) = cache
            .find_or_pull(reference, platform)
            .or_else(|| self.kaniko_cached(cache, reference, platform))
        else {
            return Ok(None);
        };
        self.note_digest(reference, platform, &image.manifest_digest);
        let config: ImageConfig =
            serde_json::from_slice(&image.config_bytes).map_err(|source| {
                BuildError::ImageConfig {
                    reference: reference.to_string(),
                    digest: image.config_digest.clone(),
                    cached: true,
                    source,
                }
            })?;
        let layers: Vec<LayerFile> = image.layers.into_iter().map(layer_file).collect();
        if !image.layers_verified {
            for layer in &layers {
                self.cached_layers
                    .insert(layer.path.clone(), reference.to_string());
            }
        }
        Ok(Some(Image { config, layers }))
    }

    /// The base image from an entry of kaniko's warmer in `--cache-dir`, its layers copied
    /// (and verified) into the work dir. kaniko names an entry by the digest of the platform
    /// manifest, so a tag is resolved at the registry first, as kaniko's executor does: a
    /// manifest request, never a blob. Any failure is a warning and a miss.
    fn kaniko_cached(
        &self,
        cache: &BaseImageCache,
        reference: &str,
        platform: &Platform,
    ) -> Option<CachedImage> {
        if !cache.has_kaniko_entries() {
            return None;
        }
        let pinned = parse_reference(reference)
            .ok()
            .and_then(|r| r.digest().map(str::to_string))
            .filter(|d| cache.has_kaniko_entry(d));
        let digest = match pinned {
            Some(digest) => digest,
            None => match self
                .runtime
                .block_on(self.registry.resolve_digest_for(reference, platform))
            {
                Ok(digest) => digest,
                Err(e) => {
                    warn!("{reference}: cannot resolve it to look it up in kaniko's warmed cache: {e}");
                    return None;
                }
            },
        };
        cache.kaniko_find_or_pull(&digest, reference, platform, &self.blob_dir())
    }

    /// Apply a layer over `root`. A blob from the base-image cache is hashed while it is
    /// unpacked. On any failure (a bound passed, the disk full, an unsafe, broken or damaged
    /// layer) a private `root` holds part of the layer: it is removed here, so that nothing
    /// half-unpacked is left to be used, and its space is given back at once.
    pub fn unpack(&self, layer: &LayerFile, image: &str, root: &Path) -> Result<(), BuildError> {
        let opts = UnpackOptions {
            ignore: self.ignore.paths(),
            ..self.unpack.clone()
        };
        let cached = self.is_cached(layer);
        let unpacked = if cached {
            unpack_layer_verified(&layer.path, root, &opts, &layer.digest)
        } else {
            unpack_layer(&layer.path, root, &opts)
        };
        if unpacked.is_err() {
            discard_partial_root(root);
        } else if cached {
            // Hashed while it was unpacked: an upload of it needs no second pass.
            self.checked
                .borrow_mut()
                .insert(layer.path.clone(), layer.path.clone());
        }
        unpacked.map_err(|source| BuildError::Unpack {
            digest: layer.digest.clone(),
            image: image.to_string(),
            source: Box::new(source),
        })?;
        Ok(())
    }

    /// Apply a base image's layers over `root`. When a layer read from the base-image cache
    /// turns out damaged, whatever was applied is thrown away (`root` is emptied) and the
    /// image is pulled from its registry and applied instead, as a damaged cache entry found
    /// up front would have been. Returns the image actually applied.
    pub fn unpack_image(
        &mut self,
        reference: &str,
        platform: &Platform,
        image: Image,
        root: &Path,
    ) -> Result<Image, BuildError> {
        for layer in &image.layers {
            match self.unpack(layer, reference, root) {
                Ok(()) => {}
                Err(BuildError::Unpack { source, .. })
                    if matches!(*source, UnpackError::Digest { .. }) && self.is_cached(layer) =>
                {
                    warn!(
                        "{reference}: cached {source}; discarding {} and pulling the image from its registry",
                        root.display()
                    );
                    self.damaged.insert(reference.to_string());
                    empty_dir(root).map_err(io_err(format!(
                        "emptying {} after a damaged cached layer",
                        root.display()
                    )))?;
                    let image = self.pull_remote(reference, platform)?;
                    for layer in &image.layers {
                        self.unpack(layer, reference, root)?;
                    }
                    return Ok(image);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(image)
    }

    /// The root of an image a `COPY --from` or a `RUN --mount=...,from=` reads, pulled and
    /// unpacked the first time.
    pub fn image_root(&mut self, reference: &str) -> Result<PathBuf, BuildError> {
        if let Some(root) = self.image_roots.get(reference) {
            return Ok(root.clone());
        }
        let root = self
            .work_dir
            .join(format!("images/{}", self.image_roots.len()));
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        // `COPY --from=<image>` reads the image for the target platform, as BuildKit does.
        let platform = self.platform.clone();
        let image = self.pull(reference, &platform)?;
        self.unpack_image(reference, &platform, image, &root)?;
        self.image_roots.insert(reference.to_string(), root.clone());
        Ok(root)
    }

    /// The manifest digest of an image a `COPY --from` or a mount reads, once it was pulled.
    pub fn image_digest(&self, reference: &str) -> Option<&String> {
        self.manifest_digest(reference, &self.platform)
    }

    /// The root of an image a `COPY --from` reads, if it was pulled already.
    pub fn pulled_image_root(&self, reference: &str) -> Option<&PathBuf> {
        self.image_roots.get(reference)
    }

    /// Whether the layer's blob is in the base-image cache (and so checked when it is read).
    pub fn is_cached(&self, layer: &LayerFile) -> bool {
        self.cached_layers.contains_key(&layer.path)
    }

    /// Remember that the blob `digest` was left in the repository of `reference`.
    pub fn left_in(&mut self, digest: &str, reference: String) {
        self.remote.insert(digest.to_string(), reference);
    }

    /// Remember that the blob `digest` was downloaded from the repository of `reference` (a
    /// cache hit's layer): a push to that registry can mount it from there.
    pub fn note_pulled(&mut self, digest: &str, reference: String) {
        self.pulled.insert(digest.to_string(), reference);
    }

    /// The repository holding a layer the build did not download, if it did not.
    pub fn origin(&self, layer: &LayerFile) -> Option<String> {
        self.remote
            .get(&layer.digest)
            .filter(|_| !layer.path.exists())
            .cloned()
    }

    /// The repository a push on the same registry can mount `layer` from: where the build left
    /// it ([`Self::origin`]), where it was downloaded from, or the image it was warmed from into
    /// the base-image cache.
    pub fn mount_source(&self, layer: &LayerFile) -> Option<String> {
        self.origin(layer)
            .or_else(|| self.pulled.get(&layer.digest).cloned())
            .or_else(|| self.cached_layers.get(&layer.path).cloned())
    }

    /// The file to read a layer from for an upload or an archive. A blob from the base-image
    /// cache is hashed first (once per build); a damaged one is fetched from its image's
    /// registry into the work directory instead, with a warning.
    pub fn checked_path(&self, layer: &LayerFile) -> Result<PathBuf, BuildError> {
        let (Some(reference), Some(cache)) = (self.cached_layers.get(&layer.path), &self.cache)
        else {
            return Ok(layer.path.clone());
        };
        if let Some(path) = self.checked.borrow().get(&layer.path) {
            return Ok(path.clone());
        }
        let path = match cache.verify_layer(&layer.digest) {
            Ok(()) => layer.path.clone(),
            Err(e) => {
                warn!("{reference}: {e}; fetching the layer from the registry instead");
                let blob_dir = self.blob_dir();
                std::fs::create_dir_all(&blob_dir)
                    .map_err(io_err(format!("creating {}", blob_dir.display())))?;
                let dest = blob_dir.join(layer.digest.replace(':', "-"));
                if !dest.exists() {
                    self.runtime
                        .block_on(self.registry.fetch_blob_to_work_file(
                            reference,
                            &layer.digest,
                            layer.size,
                            &dest,
                        ))
                        .map_err(BuildError::registry(format!(
                            "fetching layer {} of {reference}",
                            layer.digest
                        )))?;
                }
                dest
            }
        };
        self.checked
            .borrow_mut()
            .insert(layer.path.clone(), path.clone());
        Ok(path)
    }

    /// Make a layer's blob present at its path, fetching it from where it was left (a base
    /// image or the cache repository) when the build did not need it until now.
    pub fn ensure_local(&self, layer: &LayerFile) -> Result<(), BuildError> {
        if layer.path.exists() {
            return Ok(());
        }
        let reference = self
            .remote
            .get(&layer.digest)
            .ok_or_else(|| BuildError::LayerNowhere {
                digest: layer.digest.clone(),
            })?;
        if let Some(parent) = layer.path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        self.runtime
            .block_on(self.registry.fetch_blob_to_work_file(
                reference,
                &layer.digest,
                layer.size,
                &layer.path,
            ))
            .map_err(BuildError::registry(format!(
                "fetching layer {} from {reference}",
                layer.digest
            )))?;
        Ok(())
    }
}

impl Builder<'_> {
    /// Set up the base of a stage in a private root: unpack an image, an earlier stage, or
    /// nothing.
    pub(super) fn prepare_base(
        &mut self,
        base: &Base,
        index: usize,
        root: &Path,
    ) -> Result<Image, BuildError> {
        match base.kind {
            BaseKind::Scratch => Ok(Image {
                config: self.bases.scratch_config(),
                layers: Vec::new(),
            }),
            BaseKind::Stage(parent) => {
                // Re-apply the parent's layers: the parent root stays intact for `COPY --from`.
                let image = self.parent_image(base, index, parent)?;
                let bases = &mut self.bases;
                retry_extract(
                    self.req.extract_retries,
                    EXTRACT_RETRY_DELAY,
                    &base.name,
                    |retry| {
                        if retry {
                            empty_dir(root)
                                .map_err(io_err(format!("emptying {}", root.display())))?;
                        }
                        image
                            .layers
                            .iter()
                            .try_for_each(|l| bases.unpack(l, &base.name, root))
                    },
                )?;
                Ok(image)
            }
            BaseKind::Image => {
                // Pulled and unpacked at once; a retry unpacks the downloaded layers again.
                let mut pulled = None;
                let bases = &mut self.bases;
                retry_extract(
                    self.req.extract_retries,
                    EXTRACT_RETRY_DELAY,
                    &base.name,
                    |retry| {
                        if retry {
                            empty_dir(root)
                                .map_err(io_err(format!("emptying {}", root.display())))?;
                        }
                        match &pulled {
                            Some(image) => bases.unpack_image(
                                &base.name,
                                &base.platform,
                                Image::clone(image),
                                root,
                            ),
                            None => {
                                bases.pull_unpacking(&base.name, &base.platform, root, &mut pulled)
                            }
                        }
                    },
                )
            }
        }
    }

    fn parent_image(&self, base: &Base, index: usize, parent: usize) -> Result<Image, BuildError> {
        let built = self
            .built
            .get(&parent)
            .ok_or_else(|| BuildError::BaseNotBuilt {
                stage: index,
                base: base.name.clone(),
                parent,
            })?;
        Ok(Image {
            config: built.config.clone(),
            layers: built.layers.clone(),
        })
    }

    /// Set up the base of a stage in place: the root is `/`. The base is fetched first (the
    /// registry client still has the executor image's files), then `/` is emptied of everything
    /// not ignored — moving an earlier stage that a later `COPY --from` reads into the work dir
    /// first — and the base's layers are unpacked over it.
    pub(super) fn prepare_in_place(
        &mut self,
        base: &Base,
        index: usize,
    ) -> Result<(PathBuf, Image), BuildError> {
        let root = PathBuf::from("/");
        let image = match base.kind {
            BaseKind::Scratch => Image {
                config: self.bases.scratch_config(),
                layers: Vec::new(),
            },
            BaseKind::Stage(parent) => self.parent_image(base, index, parent)?,
            BaseKind::Image => {
                let image = self.bases.pull(&base.name, &base.platform)?;
                // `/` is emptied before the layers are applied, and a damaged cached layer found
                // half-way could then only be replaced by a pull without the executor image's
                // files: cached layers are checked (and replaced when damaged) before.
                let layers = image
                    .layers
                    .into_iter()
                    .map(|mut layer| {
                        layer.path = self.bases.checked_path(&layer)?;
                        Ok(layer)
                    })
                    .collect::<Result<Vec<_>, BuildError>>()?;
                Image {
                    config: image.config,
                    layers,
                }
            }
        };

        let ignore = self.ignore.paths();
        let started = Instant::now();
        // At most one earlier stage lives at `/`: the one built just before this one.
        let at_root: Option<usize> = self
            .built
            .iter()
            .filter(|(_, b)| b.root == root)
            .map(|(&i, _)| i)
            .max();
        let save = at_root.filter(|&n| self.plan.read_by_copy(n, index));
        let saved_root = save.map(|n| self.work_dir.join(format!("stages/{n}/saved-root")));
        let stats = crate::container::clear_root(&root, &ignore, saved_root.as_deref()).map_err(
            io_err("clearing / for the next base image (in-place build)"),
        )?;
        if let (Some(n), Some(saved)) = (save, &saved_root) {
            info!(
                "moved stage {n}'s files ({} entries) to {} for COPY --from",
                stats.entries,
                saved.display()
            );
            if let Some(built) = self.built.get_mut(&n) {
                built.root = saved.clone();
            }
            self.keep_only_copied_files(n, n + 1..self.plan.stages.len())?;
        } else {
            info!(
                "cleared / ({} entries) in {}",
                stats.entries,
                secs(started.elapsed())
            );
        }
        // Stages left at `/` are gone now; nothing reads them again (their layers remain).
        for built in self.built.values_mut().filter(|b| b.root == root) {
            built.root = PathBuf::new();
        }
        // A retry applies the layers again over what the failed attempt left, as kaniko's does.
        let bases = &mut self.bases;
        retry_extract(
            self.req.extract_retries,
            EXTRACT_RETRY_DELAY,
            &base.name,
            |_| {
                image
                    .layers
                    .iter()
                    .try_for_each(|l| bases.unpack(l, &base.name, &root))
            },
        )?;
        Ok((root, image))
    }

    /// The first link of a stage's key chain: a constant for scratch, the parent stage's last
    /// key, or the base image's identity (config without timestamps, layer digests).
    /// The stage's platform is part of it: the same base (a single-platform image, or scratch)
    /// used for two platforms must not share cached RUN results.
    pub(super) fn base_key(&self, base: &Base, image: &Image) -> String {
        let identity = match base.kind {
            BaseKind::Scratch => crate::cache::key::scratch_key(),
            BaseKind::Stage(parent) => match self.stage_keys.get(&parent) {
                // Already holds the parent's platform, which is this stage's.
                Some(key) => return key.clone(),
                None => image_identity(image),
            },
            BaseKind::Image => image_identity(image),
        };
        crate::cache::key::platform_key(&identity, &base.platform.to_string())
    }

    /// Whether the stage is built in place over `/`.
    pub(super) fn in_place(&self) -> bool {
        self.req.isolation == Isolation::InPlace
    }
}

fn image_identity(image: &Image) -> String {
    let digests: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    crate::cache::key::base_image_key(&image.config, &digests)
}

/// Layer downloads under way (see [`BaseImages::start_downloads`]).
struct Downloads {
    thread: std::thread::JoinHandle<()>,
    /// Each layer's index once it is complete, or the failure that ended them.
    done: std::sync::mpsc::Receiver<Result<usize, BuildError>>,
}

impl Downloads {
    /// Waits for every download to end; the first failure, if any.
    fn finish(self) -> Result<(), BuildError> {
        let _ = self.thread.join();
        self.done
            .try_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }
}

/// How many layers of one base image download at once.
const LAYER_FETCHES: usize = 4;

/// The first wait of `--image-fs-extract-retry` (kaniko's: one second, doubling each time).
pub const EXTRACT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// kaniko's `util.Retry` for `--image-fs-extract-retry`: run `attempt`, and while it fails and
/// retries are left, wait (`delay`, doubling each time) and run it again. `attempt` is told
/// whether it is a retry, so it can first empty what the failed attempt left.
pub fn retry_extract<T>(
    retries: u32,
    delay: Duration,
    image: &str,
    mut attempt: impl FnMut(bool) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let mut result = attempt(false);
    for n in 0..retries {
        let Err(e) = &result else { break };
        // A registry failure (a layer that could not be downloaded, a manifest) is not an
        // extraction's: the registry client retried it already.
        if matches!(e, BuildError::Registry { .. }) {
            break;
        }
        let wait = delay.saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX));
        warn!(
            "unpacking {image} failed ({e}); trying again in {} (--image-fs-extract-retry, {} of {retries})",
            secs(wait),
            n + 1
        );
        std::thread::sleep(wait);
        result = attempt(true);
    }
    result
}

/// The one layer record, from the base-image cache's.
fn layer_file(layer: CachedLayer) -> LayerFile {
    LayerFile {
        digest: layer.digest,
        diff_id: layer.diff_id,
        size: layer.size,
        media_type: oci_layer_media_type(&layer.media_type),
        path: layer.path,
    }
}

/// Remove the root a layer failed to apply to, unless it is `/` (an in-place build, whose
/// container is discarded with the failed build).
fn discard_partial_root(root: &Path) {
    if root == Path::new("/") {
        warn!("/ holds part of a layer that failed to apply; the build stops here");
        return;
    }
    // remove_dir_all never follows symlinks inside the tree.
    match std::fs::remove_dir_all(root) {
        Ok(()) => info!("removed the partly unpacked root {}", root.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(
            "cannot remove the partly unpacked root {}: {e}",
            root.display()
        ),
    }
}

/// Empty a private root (a chroot build's, a `COPY --from` image's) to fill it again.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    // remove_dir_all never follows symlinks inside the tree. The root is gone already when the
    // failed unpack removed it.
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(dir)
}
