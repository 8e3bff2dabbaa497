//! The base-image cache (`--cache-dir`): the one definition of the cache volume that
//! kiln-warmer fills and kiln-executor reads. It is an OCI image layout whose `index.json`
//! entries name the original reference, the platform and the time of warming; every read is
//! verified by digest. It does not unpack, build or decide when to pull: callers do.
//! The executor also reads the entries kaniko's warmer writes into such a directory (`kaniko`
//! module), which the warmer never writes.
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

mod index;
mod kaniko;
#[cfg(test)]
mod kaniko_tests;
mod lookup;
mod store;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use oci_spec::image::{ImageConfiguration, ImageManifest};

use crate::registry::{LayoutError, OciLayout, Platform, RegistryError};

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
    /// Whether every layer blob was hashed already: false from [`BaseImageCache::find`],
    /// whose caller checks each layer as it reads it.
    pub layers_verified: bool,
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
    /// Whether the directory is an OCI layout (kiln-warmer's); a directory that kaniko's
    /// warmer alone filled has none, and then has no entries of Kiln's.
    is_layout: bool,
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
        Ok(BaseImageCache {
            layout,
            ttl,
            is_layout: true,
        })
    }

    /// Opens the cache in `dir` for reading, writing nothing there: an OCI layout as
    /// [`BaseImageCache::open`] does, or any other directory (one kaniko's warmer filled, or
    /// an empty one), which then has no entries of Kiln's. A build reads the cache this way,
    /// so a read-only volume, or one only kaniko's warmer wrote, works.
    pub fn open_existing(dir: &Path, ttl: Duration) -> Result<BaseImageCache, CacheError> {
        if dir.join("oci-layout").exists() {
            return BaseImageCache::open(dir, ttl);
        }
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(BaseImageCache {
                layout: OciLayout::unchecked(dir),
                ttl,
                is_layout: false,
            }),
            Ok(_) => Err(CacheError::Io {
                action: "cannot use",
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            }),
            Err(source) => Err(CacheError::Io {
                action: "cannot open",
                path: dir.to_path_buf(),
                source,
            }),
        }
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
}
