//! Reading the cache: finding a reference's entry (by digest, or by tag within the TTL) and
//! loading its manifest, config and layers with the verification the caller asks for.

use std::fs;
use std::io;

use chrono::Utc;
use oci_spec::image::{ImageConfiguration, ImageManifest};

use super::index::Entry;
use super::{BaseImageCache, CacheError, CachedImage, CachedLayer};
use crate::registry::{parse_reference, Platform};

impl BaseImageCache {
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
                // The build logs its own line for it, with the time it took.
                tracing::debug!(reference = %image.reference, digest = %image.manifest_digest, cache_dir = %self.dir().display(), "base image read from the cache");
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
            layers_verified: matches!(check, LayerCheck::Hash),
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

/// Same OS and architecture, and the same variant when both name one (arm64 without a
/// variant is v8, as containerd has it).
pub(super) fn same_platform(a: &Platform, b: &Platform) -> bool {
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
