//! The base-image cache (`--cache-dir`): the one definition of the cache volume that
//! kiln-warmer fills and kiln-executor reads. It is an OCI image layout whose `index.json`
//! entries name the original reference, the platform and the time of warming; every read is
//! verified by digest. It does not unpack, build or decide when to pull: callers do.
//!
//! Layout of an entry in `index.json` (one per reference and platform):
//!
//! ```json
//! { "mediaType": "application/vnd.oci.image.manifest.v1+json",
//!   "digest": "sha256:…", "size": 428,
//!   "platform": { "os": "linux", "architecture": "amd64" },
//!   "annotations": {
//!     "org.opencontainers.image.ref.name": "127.0.0.1:5000/kiln-test/busybox:latest",
//!     "dev.kiln.platform": "linux/amd64",
//!     "dev.kiln.warmed-at": "2025-01-02T03:04:05Z",
//!     "dev.kiln.index-digest": "sha256:…" } }
//! ```
//!
//! The manifest is the platform's image manifest, stored byte for byte as the registry
//! served it (so its digest is the registry's); `dev.kiln.index-digest` is present when the
//! reference resolved to an image index, so a lookup by the index digest finds it too.
//!
//! Crash safety: blobs are written to dot-prefixed temporary files in `blobs/sha256/` and
//! renamed into place once their digest matches, and the `index.json` entry is written last,
//! so a killed warmer leaves at most dot-prefixed temporary files, which readers never open
//! (they only open `blobs/sha256/<hex>`) and [`BaseImageCache::clean_temp_files`] removes.
//!
//! Corruption policy: [`BaseImageCache::lookup`] returns [`CacheError::Corrupt`] (or
//! [`CacheError::Missing`]) when a blob of the entry does not hash to its digest; it never
//! returns an unverified image. Callers treat such an error as a miss and pull from the
//! registry (the warmer re-pulls and replaces the blob; [`CacheError::is_damage`] tells
//! those errors apart from I/O failures on the volume). A build reads a layer blob once, so
//! it uses [`BaseImageCache::find`] instead, which hashes the manifest and config but leaves
//! each layer's digest to be checked while the layer is read (the unpacker does it in the
//! same pass), and treats a mismatch found then the same way.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde_json::{json, Value};

use crate::registry::layout::ANNOTATION_REF_NAME;
use crate::registry::{
    parse_reference, LayoutError, OciLayout, Platform, Registry, RegistryError,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST,
};

/// When the entry was warmed, RFC 3339 in UTC.
pub const ANNOTATION_WARMED_AT: &str = "dev.kiln.warmed-at";
/// The platform the entry was resolved for (`os/arch[/variant]`).
pub const ANNOTATION_PLATFORM: &str = "dev.kiln.platform";
/// The digest of the image index the manifest was picked from, if any.
pub const ANNOTATION_INDEX_DIGEST: &str = "dev.kiln.index-digest";
/// kaniko's default `--cache-ttl` (two weeks).
pub const DEFAULT_TTL: Duration = Duration::from_secs(336 * 3600);
/// How many layers of one image are downloaded at once.
pub const LAYER_CONCURRENCY: usize = 4;

const INDEX_FILE: &str = "index.json";

/// What went wrong with the base-image cache; messages name the reference, digest or file.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("base-image cache: {0}")]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cached blob {digest} at {path} is corrupted ({detail}); it is re-pulled by `kiln-warmer` (or delete the file and warm again)")]
    Corrupt {
        digest: String,
        path: PathBuf,
        detail: String,
    },
    #[error("cached blob {digest} is missing at {path} although index.json names it; warm the image again")]
    Missing { digest: String, path: PathBuf },
    #[error("invalid {what} {digest} in the base-image cache: {detail}; warm the image again with --force")]
    Invalid {
        what: &'static str,
        digest: String,
        detail: String,
    },
    #[error("{action} {path}: {source}; check that the cache directory exists and is writable")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CacheError {
    /// True when the cache holds a damaged or incomplete entry (as opposed to an I/O or
    /// registry failure): the caller should pull the image from the registry instead.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            CacheError::Corrupt { .. } | CacheError::Missing { .. } | CacheError::Invalid { .. }
        )
    }

    fn from_blob(e: LayoutError) -> CacheError {
        match e {
            LayoutError::DigestMismatch {
                path,
                expected,
                actual,
            } => CacheError::Corrupt {
                digest: expected,
                detail: format!("its content hashes to {actual}"),
                path,
            },
            LayoutError::MissingBlob { dir, digest } => CacheError::Missing {
                path: blob_path_in(&dir, &digest),
                digest,
            },
            other => CacheError::Layout(other),
        }
    }
}

fn blob_path_in(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    dir.join("blobs").join(alg).join(hex)
}

/// One layer of a cached image; `path` holds the compressed blob, verified by the lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    pub digest: String,
    /// The uncompressed tar's digest, from the config's `rootfs.diff_ids`.
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    pub path: PathBuf,
}

/// An image read from (or just written to) the cache, every blob verified; from
/// [`BaseImageCache::find`], the layer blobs are left for their reader to verify.
#[derive(Debug, Clone)]
pub struct CachedImage {
    /// The normalised reference that was asked for.
    pub reference: String,
    pub platform: Platform,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    /// The image index the manifest was picked from, when there was one.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    pub layers: Vec<CachedLayer>,
    /// When the entry was warmed; `None` for entries written without the annotation.
    pub warmed_at: Option<DateTime<Utc>>,
}

/// What [`BaseImageCache::store`] did.
#[derive(Debug, Clone)]
pub struct Stored {
    pub image: CachedImage,
    /// Layers downloaded from the registry.
    pub fetched_layers: usize,
    /// Layers already in the cache (verified) and not downloaded.
    pub reused_layers: usize,
    /// Bytes of layers downloaded.
    pub fetched_bytes: u64,
}

/// The base-image cache directory. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct BaseImageCache {
    layout: OciLayout,
    ttl: Duration,
}

impl BaseImageCache {
    /// Opens the cache in `dir`, creating an empty layout there when there is none. An
    /// existing layout is only read, so a read-only volume works. `ttl` is how long an
    /// entry resolved from a tag counts as current (entries by digest never expire).
    pub fn open(dir: &Path, ttl: Duration) -> Result<BaseImageCache, CacheError> {
        let layout = if dir.join("oci-layout").is_file() {
            OciLayout::open(dir)?
        } else {
            OciLayout::create(dir)?
        };
        Ok(BaseImageCache { layout, ttl })
    }

    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The underlying OCI layout (for tools that read blobs by digest).
    pub fn layout(&self) -> &OciLayout {
        &self.layout
    }

    /// Finds `reference` for `platform` and returns it verified, or `None` when the cache
    /// does not hold it. By digest (`repo@sha256:…`, tag ignored): the entry whose manifest
    /// or image index has that digest, whatever its age. By tag: the newest entry for that
    /// normalised reference and platform, if warmed within the TTL; an older one is `None`.
    ///
    /// Reads and hashes every blob of the entry (layers streamed, never held in memory): a
    /// blob that does not match is [`CacheError::Corrupt`], an absent one
    /// [`CacheError::Missing`]; see the module documentation for what callers do then.
    pub fn lookup(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<CachedImage>, CacheError> {
        self.get(reference, platform, LayerCheck::Hash)
    }

    /// [`BaseImageCache::lookup`] without hashing the layer blobs: the manifest and config
    /// are verified, and each layer blob must be there with the size its descriptor gives
    /// ([`CacheError::Missing`], [`CacheError::Corrupt`] otherwise), but its content is not
    /// read. Whoever reads a layer of the returned image must check its digest while reading
    /// (the executor's `unpack::unpack_layer_verified`) or first ([`BaseImageCache::verify_layer`]),
    /// so that a 50 MiB base layer is read once per build instead of twice.
    pub fn find(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<CachedImage>, CacheError> {
        self.get(reference, platform, LayerCheck::Size)
    }

    fn get(
        &self,
        reference: &str,
        platform: &Platform,
        check: LayerCheck,
    ) -> Result<Option<CachedImage>, CacheError> {
        let Some(entry) = self.find_entry(reference, platform)? else {
            return Ok(None);
        };
        let normalized = parse_reference(reference)?.whole();
        self.load(&entry, &normalized, platform, check).map(Some)
    }

    /// Hashes the layer blob `digest` of an image returned by [`BaseImageCache::find`].
    pub fn verify_layer(&self, digest: &str) -> Result<(), CacheError> {
        self.layout
            .verify_blob(digest)
            .map_err(CacheError::from_blob)
    }

    /// [`BaseImageCache::find`] for a build: any failure (damaged entry, unreadable volume)
    /// is logged as a warning naming the reason and gives `None`, so the build pulls the
    /// image from the registry instead, exactly as without a cache. The layer blobs are not
    /// hashed yet: see [`BaseImageCache::find`].
    pub fn find_or_pull(&self, reference: &str, platform: &Platform) -> Option<CachedImage> {
        match self.find(reference, platform) {
            Ok(Some(image)) => {
                tracing::info!(reference = %image.reference, digest = %image.manifest_digest, cache_dir = %self.dir().display(), "base image read from the cache");
                Some(image)
            }
            Ok(None) => {
                tracing::debug!(reference, cache_dir = %self.dir().display(), "base image not in the cache (or expired)");
                None
            }
            Err(e) => {
                tracing::warn!(reference, error = %e, "cannot use the cached base image; pulling it from the registry");
                None
            }
        }
    }

    /// Like [`BaseImageCache::lookup`] without reading blobs: whether a current entry is
    /// recorded, and its manifest digest. For reporting, never for using the image.
    pub fn current_digest(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<String>, CacheError> {
        Ok(self.find_entry(reference, platform)?.map(|e| e.digest))
    }

    fn find_entry(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<Entry>, CacheError> {
        let r = parse_reference(reference)?;
        let entries = self.entries()?;
        if let Some(digest) = r.digest() {
            // A manifest names one platform, so its digest alone decides; an index digest
            // needs the platform the manifest was picked for.
            let hit = entries
                .iter()
                .find(|e| e.digest == digest)
                .or_else(|| {
                    entries.iter().find(|e| {
                        e.index_digest.as_deref() == Some(digest)
                            && e.platform
                                .as_ref()
                                .is_some_and(|p| same_platform(p, platform))
                    })
                })
                .cloned();
            return Ok(hit);
        }
        let normalized = r.whole();
        let newest = entries
            .into_iter()
            .filter(|e| {
                e.ref_name.as_deref() == Some(normalized.as_str())
                    && e.platform
                        .as_ref()
                        .is_some_and(|p| same_platform(p, platform))
            })
            .max_by_key(|e| e.warmed_at);
        let Some(entry) = newest else {
            return Ok(None);
        };
        let fresh = entry.warmed_at.is_some_and(|t| {
            let age = Utc::now().signed_duration_since(t);
            // A warm time in the future (clock skew between nodes) counts as fresh.
            age.to_std().map(|a| a <= self.ttl).unwrap_or(true)
        });
        if !fresh {
            tracing::debug!(reference = %normalized, warmed_at = ?entry.warmed_at, ttl = ?self.ttl, "cached base image expired");
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// Reads an entry's manifest and config with verification, and checks its layers.
    fn load(
        &self,
        entry: &Entry,
        reference: &str,
        platform: &Platform,
        check: LayerCheck,
    ) -> Result<CachedImage, CacheError> {
        let manifest_bytes = self
            .layout
            .read_blob_verified(&entry.digest)
            .map_err(CacheError::from_blob)?;
        let (manifest, config_bytes, config) =
            self.read_manifest_and_config(&manifest_bytes, &entry.digest)?;
        let mut layers = Vec::with_capacity(manifest.layers().len());
        for (i, l) in manifest.layers().iter().enumerate() {
            let layer = self.layer(&config, i, l, &entry.digest)?;
            match check {
                LayerCheck::Hash => self.verify_layer(&layer.digest)?,
                LayerCheck::Size => check_size(&layer)?,
            }
            layers.push(layer);
        }
        Ok(CachedImage {
            reference: reference.to_string(),
            platform: entry.platform.clone().unwrap_or_else(|| platform.clone()),
            manifest_digest: entry.digest.clone(),
            manifest_media_type: entry.media_type.clone(),
            manifest_bytes,
            manifest,
            index_digest: entry.index_digest.clone(),
            config_digest: config_digest_of(&config_bytes),
            config_bytes,
            config,
            layers,
            warmed_at: entry.warmed_at,
        })
    }

    fn read_manifest_and_config(
        &self,
        manifest_bytes: &[u8],
        manifest_digest: &str,
    ) -> Result<(ImageManifest, Vec<u8>, ImageConfiguration), CacheError> {
        let manifest: ImageManifest =
            serde_json::from_slice(manifest_bytes).map_err(|e| CacheError::Invalid {
                what: "manifest",
                digest: manifest_digest.to_string(),
                detail: e.to_string(),
            })?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self
            .layout
            .read_blob_verified(&config_digest)
            .map_err(CacheError::from_blob)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| CacheError::Invalid {
                what: "image config",
                digest: config_digest.clone(),
                detail: e.to_string(),
            })?;
        if config.rootfs().diff_ids().len() != manifest.layers().len() {
            return Err(CacheError::Invalid {
                what: "image config",
                digest: config_digest,
                detail: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs().diff_ids().len(),
                    manifest.layers().len()
                ),
            });
        }
        Ok((manifest, config_bytes, config))
    }

    fn layer(
        &self,
        config: &ImageConfiguration,
        i: usize,
        l: &oci_spec::image::Descriptor,
        manifest_digest: &str,
    ) -> Result<CachedLayer, CacheError> {
        let digest = l.digest().to_string();
        let diff_id =
            config
                .rootfs()
                .diff_ids()
                .get(i)
                .cloned()
                .ok_or_else(|| CacheError::Invalid {
                    what: "manifest",
                    digest: manifest_digest.to_string(),
                    detail: format!("layer {i} has no diff_id in the config"),
                })?;
        Ok(CachedLayer {
            path: self.layout.blob_path(&digest),
            size: l.size(),
            media_type: l.media_type().to_string(),
            diff_id,
            digest,
        })
    }

    /// Pulls `reference` (for the registry's platform) into the cache and records it as
    /// warmed now. Layers already present are verified and kept (re-downloaded when
    /// corrupted); with `force` every layer is downloaded again. Layers are fetched
    /// [`LAYER_CONCURRENCY`] at a time, each into a temporary file renamed into place once
    /// its digest matches; the config and manifest follow, and the `index.json` entry is
    /// written last, so an interrupted store never leaves an entry with missing blobs.
    pub async fn store(
        &self,
        registry: &Registry,
        reference: &str,
        force: bool,
    ) -> Result<Stored, CacheError> {
        let platform = registry.options().platform.clone();
        let image = registry.pull_image(reference).await?;
        if image.config.rootfs().diff_ids().len() != image.manifest.layers().len() {
            return Err(CacheError::Invalid {
                what: "image config",
                digest: image.config_digest.clone(),
                detail: format!(
                    "{} diff_ids for {} layers",
                    image.config.rootfs().diff_ids().len(),
                    image.manifest.layers().len()
                ),
            });
        }

        // Several references can share layers: each digest is fetched once here, and
        // concurrent stores of the same blob each write their own temporary file, the
        // last rename winning with identical content.
        let mut digests: Vec<(String, u64)> = Vec::new();
        for l in image.manifest.layers() {
            let d = l.digest().to_string();
            if !digests.iter().any(|(x, _)| *x == d) {
                digests.push((d, l.size()));
            }
        }
        let results: Vec<Result<Option<u64>, CacheError>> = futures_util::stream::iter(digests)
            .map(|(digest, _size)| {
                let reference = reference.to_string();
                async move {
                    if !force && self.layout.has_blob(&digest) {
                        let layout = self.layout.clone();
                        let d = digest.clone();
                        let check = tokio::task::spawn_blocking(move || layout.verify_blob(&d))
                            .await
                            .map_err(|e| CacheError::Io {
                                action: "cannot verify",
                                path: self.layout.blob_path(&digest),
                                source: io::Error::other(e.to_string()),
                            })?;
                        match check {
                            Ok(()) => return Ok(None),
                            Err(e) => {
                                tracing::warn!(blob = %digest, error = %e, "cached layer is damaged, downloading it again");
                            }
                        }
                    }
                    let started = std::time::Instant::now();
                    let n = registry
                        .fetch_blob_to_file(&reference, &digest, &self.layout.blob_path(&digest))
                        .await?;
                    tracing::debug!(reference = %reference, blob = %digest, bytes = n, seconds = started.elapsed().as_secs_f64(), "layer downloaded");
                    Ok(Some(n))
                }
            })
            .buffer_unordered(LAYER_CONCURRENCY)
            .collect()
            .await;
        let (mut fetched_layers, mut reused_layers, mut fetched_bytes) = (0, 0, 0);
        for r in results {
            match r? {
                Some(n) => {
                    fetched_layers += 1;
                    fetched_bytes += n;
                }
                None => reused_layers += 1,
            }
        }

        let config_digest = self.layout.write_blob_bytes(&image.config_bytes)?;
        let manifest_digest = self.layout.write_blob_bytes(&image.manifest_bytes)?;
        debug_assert_eq!(config_digest, image.config_digest);
        debug_assert_eq!(manifest_digest, image.manifest_digest);

        let warmed_at = Utc::now();
        let entry = Entry {
            media_type: image.manifest_media_type.clone(),
            digest: image.manifest_digest.clone(),
            size: image.manifest_bytes.len() as u64,
            ref_name: Some(image.reference.clone()),
            platform: Some(platform.clone()),
            warmed_at: Some(warmed_at),
            index_digest: image.index_digest.clone(),
        };
        self.record(&entry)?;

        let mut layers = Vec::with_capacity(image.manifest.layers().len());
        for (i, l) in image.manifest.layers().iter().enumerate() {
            layers.push(self.layer(&image.config, i, l, &image.manifest_digest)?);
        }
        Ok(Stored {
            image: CachedImage {
                reference: image.reference,
                platform,
                manifest_digest: image.manifest_digest,
                manifest_media_type: image.manifest_media_type,
                manifest_bytes: image.manifest_bytes,
                manifest: image.manifest,
                index_digest: image.index_digest,
                config_digest: image.config_digest,
                config_bytes: image.config_bytes,
                config: image.config,
                layers,
                warmed_at: Some(warmed_at),
            },
            fetched_layers,
            reused_layers,
            fetched_bytes,
        })
    }

    /// Removes temporary files (dot-prefixed) left in the cache by interrupted writers, if
    /// not modified for `older_than`: a writer still downloading keeps its file's mtime
    /// recent, so a live warmer on the same volume is not disturbed. Returns how many were
    /// removed. Readers ignore these files whether or not they are cleaned.
    pub fn clean_temp_files(&self, older_than: Duration) -> Result<usize, CacheError> {
        let now = SystemTime::now();
        let mut removed = 0;
        for dir in [
            self.layout.dir().to_path_buf(),
            self.layout.dir().join("blobs/sha256"),
        ] {
            let rd = fs::read_dir(&dir).map_err(|source| CacheError::Io {
                action: "cannot list",
                path: dir.clone(),
                source,
            })?;
            for ent in rd.flatten() {
                let name = ent.file_name();
                if !name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(meta) = ent.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age >= older_than && fs::remove_file(ent.path()).is_ok() {
                    tracing::info!(path = %ent.path().display(), "removed a temporary file left by an interrupted warm");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Every entry of `index.json` (entries written by other tools included).
    fn entries(&self) -> Result<Vec<Entry>, CacheError> {
        let index = self.read_index()?;
        Ok(index
            .get("manifests")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Entry::from_json).collect())
            .unwrap_or_default())
    }

    fn read_index(&self) -> Result<Value, CacheError> {
        let path = self.layout.dir().join(INDEX_FILE);
        let text = fs::read(&path).map_err(|source| CacheError::Io {
            action: "cannot read",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            CacheError::Layout(LayoutError::InvalidIndex {
                path,
                detail: e.to_string(),
            })
        })
    }

    /// Adds `entry` to `index.json`, replacing the entry for the same reference and
    /// platform. `OciLayout::add_manifest` knows only the ref-name annotation, so the index
    /// is updated here under the same protocol: an exclusive `flock` on the layout
    /// directory, the new index written to a temporary file and renamed over the old one.
    fn record(&self, entry: &Entry) -> Result<(), CacheError> {
        let dir = self.layout.dir();
        let _lock = DirLock::acquire(dir)?;
        let mut index = self.read_index()?;
        let path = dir.join(INDEX_FILE);
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| {
                CacheError::Layout(LayoutError::InvalidIndex {
                    path: path.clone(),
                    detail: "no manifests array".to_string(),
                })
            })?;
        manifests.retain(|m| {
            let Some(old) = Entry::from_json(m) else {
                return true;
            };
            !(old.ref_name == entry.ref_name && old.platform_key() == entry.platform_key())
        });
        manifests.push(entry.to_json());
        let body = serde_json::to_vec(&index).map_err(|e| {
            CacheError::Layout(LayoutError::InvalidIndex {
                path: path.clone(),
                detail: e.to_string(),
            })
        })?;
        write_atomic(dir, &path, &body)
    }
}

/// How much [`BaseImageCache::load`] reads of the layer blobs.
#[derive(Debug, Clone, Copy)]
enum LayerCheck {
    /// Hash each blob: the entry is verified whole.
    Hash,
    /// Only check each blob is there with its descriptor's size; the reader hashes it.
    Size,
}

/// A layer blob is there and has the size its descriptor says.
fn check_size(layer: &CachedLayer) -> Result<(), CacheError> {
    match fs::metadata(&layer.path) {
        Ok(meta) if meta.is_file() && meta.len() == layer.size => Ok(()),
        Ok(meta) if meta.is_file() => Err(CacheError::Corrupt {
            digest: layer.digest.clone(),
            path: layer.path.clone(),
            detail: format!(
                "it has {} bytes, the manifest says {}",
                meta.len(),
                layer.size
            ),
        }),
        Ok(_) => Err(CacheError::Missing {
            digest: layer.digest.clone(),
            path: layer.path.clone(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CacheError::Missing {
            digest: layer.digest.clone(),
            path: layer.path.clone(),
        }),
        Err(source) => Err(CacheError::Io {
            action: "cannot stat",
            path: layer.path.clone(),
            source,
        }),
    }
}

/// An `index.json` entry as the cache sees it.
#[derive(Debug, Clone)]
struct Entry {
    media_type: String,
    digest: String,
    size: u64,
    ref_name: Option<String>,
    platform: Option<Platform>,
    warmed_at: Option<DateTime<Utc>>,
    index_digest: Option<String>,
}

impl Entry {
    fn from_json(m: &Value) -> Option<Entry> {
        let media_type = m.get("mediaType")?.as_str()?.to_string();
        if media_type != MEDIA_TYPE_OCI_MANIFEST && media_type != MEDIA_TYPE_DOCKER_MANIFEST {
            return None;
        }
        let ann = |k: &str| {
            m.get("annotations")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let platform = ann(ANNOTATION_PLATFORM)
            .and_then(|p| p.parse::<Platform>().ok())
            .or_else(|| {
                let p = m.get("platform")?;
                Some(Platform {
                    os: p.get("os")?.as_str()?.to_string(),
                    architecture: p.get("architecture")?.as_str()?.to_string(),
                    variant: p.get("variant").and_then(Value::as_str).map(str::to_string),
                })
            });
        Some(Entry {
            media_type,
            digest: m.get("digest")?.as_str()?.to_string(),
            size: m.get("size").and_then(Value::as_u64).unwrap_or(0),
            ref_name: ann(ANNOTATION_REF_NAME),
            platform,
            warmed_at: ann(ANNOTATION_WARMED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            index_digest: ann(ANNOTATION_INDEX_DIGEST),
        })
    }

    fn to_json(&self) -> Value {
        let mut annotations = serde_json::Map::new();
        if let Some(r) = &self.ref_name {
            annotations.insert(ANNOTATION_REF_NAME.into(), json!(r));
        }
        if let Some(p) = &self.platform {
            annotations.insert(ANNOTATION_PLATFORM.into(), json!(p.to_string()));
        }
        if let Some(t) = &self.warmed_at {
            annotations.insert(
                ANNOTATION_WARMED_AT.into(),
                json!(t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            );
        }
        if let Some(d) = &self.index_digest {
            annotations.insert(ANNOTATION_INDEX_DIGEST.into(), json!(d));
        }
        let mut v = json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "annotations": annotations,
        });
        if let Some(p) = &self.platform {
            let mut pj = json!({ "os": p.os, "architecture": p.architecture });
            if let Some(var) = &p.variant {
                pj["variant"] = json!(var);
            }
            v["platform"] = pj;
        }
        v
    }

    fn platform_key(&self) -> Option<String> {
        self.platform.as_ref().map(Platform::to_string)
    }
}

/// Same OS and architecture, and the same variant when both name one (arm64 without a
/// variant is v8, as containerd has it).
fn same_platform(a: &Platform, b: &Platform) -> bool {
    if a.os != b.os || a.architecture != b.architecture {
        return false;
    }
    let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
        ("arm64", None) => Some("v8".to_string()),
        (_, v) => v.map(str::to_string),
    };
    match (&a.variant, &b.variant) {
        (None, _) | (_, None) => true,
        _ => norm(a) == norm(b),
    }
}

fn config_digest_of(bytes: &[u8]) -> String {
    crate::registry::sha256_digest(bytes)
}

fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io {
            action,
            path,
            source,
        }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io("cannot create a temporary file in", dir))?;
    tmp.write_all(bytes)
        .map_err(io("cannot write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("cannot sync", dir))?;
    let perm = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file()
        .set_permissions(perm)
        .map_err(io("cannot set permissions in", dir))?;
    tmp.persist(dest)
        .map_err(|e| io("cannot rename into", dest)(e.error))?;
    Ok(())
}

/// An exclusive `flock` on the layout directory, the lock `OciLayout` takes for its own
/// index updates; released when dropped.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, CacheError> {
        let f = File::open(dir).map_err(|source| CacheError::Io {
            action: "cannot open",
            path: dir.to_path_buf(),
            source,
        })?;
        // SAFETY: flock on a descriptor owned by `f`, which lives as long as the lock.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(CacheError::Io {
                action: "cannot lock",
                path: dir.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(DirLock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_image(cache: &BaseImageCache, layer: &[u8]) -> (String, String) {
        let layout = cache.layout();
        let layer_digest = layout.write_blob_bytes(layer).unwrap();
        let diff_id = crate::registry::sha256_digest(b"uncompressed");
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        }))
        .unwrap();
        let config_digest = layout.write_blob_bytes(&config).unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap();
        let manifest_digest = layout.write_blob_bytes(&manifest).unwrap();
        (manifest_digest, layer_digest)
    }

    fn entry(digest: &str, name: &str, warmed_at: DateTime<Utc>) -> Entry {
        Entry {
            media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
            digest: digest.to_string(),
            size: 1,
            ref_name: Some(name.to_string()),
            platform: Some("linux/amd64".parse().unwrap()),
            warmed_at: Some(warmed_at),
            index_digest: Some(
                "sha256:1111111111111111111111111111111111111111111111111111111111111111"
                    .to_string(),
            ),
        }
    }

    #[test]
    fn tag_entries_expire_digest_entries_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BaseImageCache::open(tmp.path(), Duration::from_secs(3600)).unwrap();
        let (md, _) = write_image(&cache, b"layer one");
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let old = Utc::now() - chrono::Duration::hours(2);
        cache.record(&entry(&md, "r.example/a:1", old)).unwrap();
        assert!(cache.lookup("r.example/a:1", &amd64).unwrap().is_none());
        let by_digest = cache
            .lookup(&format!("r.example/a@{md}"), &amd64)
            .unwrap()
            .expect("digest entries never expire");
        assert_eq!(by_digest.manifest_digest, md);
        assert_eq!(by_digest.layers.len(), 1);
        let by_index = cache
            .lookup(
                "r.example/a@sha256:1111111111111111111111111111111111111111111111111111111111111111",
                &amd64,
            )
            .unwrap()
            .expect("found by index digest");
        assert_eq!(by_index.manifest_digest, md);

        // Re-recording replaces the entry (same reference and platform), now fresh.
        cache
            .record(&entry(&md, "r.example/a:1", Utc::now()))
            .unwrap();
        let hit = cache.lookup("r.example/a:1", &amd64).unwrap().unwrap();
        assert_eq!(hit.reference, "r.example/a:1");
        assert_eq!(cache.entries().unwrap().len(), 1);
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert!(cache.lookup("r.example/a:1", &arm).unwrap().is_none());
    }

    #[test]
    fn corrupt_and_missing_layers_are_reported_with_their_path() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BaseImageCache::open(tmp.path(), DEFAULT_TTL).unwrap();
        let (md, ld) = write_image(&cache, b"layer two");
        cache
            .record(&entry(&md, "r.example/b:1", Utc::now()))
            .unwrap();
        let p: Platform = "linux/amd64".parse().unwrap();
        fs::write(cache.layout().blob_path(&ld), b"layer tw0").unwrap();
        let e = cache.lookup("r.example/b:1", &p).unwrap_err();
        assert!(
            matches!(&e, CacheError::Corrupt { digest, .. } if *digest == ld),
            "{e}"
        );
        assert!(e.is_damage());
        assert!(e
            .to_string()
            .contains(&cache.layout().blob_path(&ld).display().to_string()));
        // A build finds the entry without reading the layer, and its reader finds the damage.
        let found = cache
            .find("r.example/b:1", &p)
            .unwrap()
            .expect("same size: found");
        let e = cache.verify_layer(&found.layers[0].digest).unwrap_err();
        assert!(
            matches!(&e, CacheError::Corrupt { digest, .. } if *digest == ld),
            "{e}"
        );
        // A layer of the wrong size is damage the build sees before reading it.
        fs::write(cache.layout().blob_path(&ld), b"layer two, longer").unwrap();
        let e = cache.find("r.example/b:1", &p).unwrap_err();
        assert!(
            matches!(&e, CacheError::Corrupt { .. }) && e.is_damage(),
            "{e}"
        );
        assert!(
            e.to_string().contains("17 bytes, the manifest says 9"),
            "{e}"
        );
        assert!(cache.find_or_pull("r.example/b:1", &p).is_none());
        fs::remove_file(cache.layout().blob_path(&ld)).unwrap();
        let e = cache.lookup("r.example/b:1", &p).unwrap_err();
        assert!(matches!(e, CacheError::Missing { .. }), "{e}");
        let e = cache.find("r.example/b:1", &p).unwrap_err();
        assert!(matches!(e, CacheError::Missing { .. }), "{e}");
    }

    #[test]
    fn old_temp_files_are_cleaned_and_recent_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BaseImageCache::open(tmp.path(), DEFAULT_TTL).unwrap();
        let stale = tmp.path().join("blobs/sha256/.kiln-blob-stale");
        fs::write(&stale, b"partial").unwrap();
        let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_mtime(&stale, old).unwrap();
        let live = tmp.path().join("blobs/sha256/.kiln-blob-live");
        fs::write(&live, b"partial").unwrap();
        assert_eq!(cache.clean_temp_files(Duration::from_secs(600)).unwrap(), 1);
        assert!(!stale.exists());
        assert!(live.exists());
    }

    #[test]
    fn platforms_match_like_containerd() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert!(same_platform(&p("linux/arm64"), &p("linux/arm64/v8")));
        assert!(!same_platform(&p("linux/arm/v6"), &p("linux/arm/v7")));
        assert!(!same_platform(&p("linux/amd64"), &p("linux/arm64")));
    }
}
