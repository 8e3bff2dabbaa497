//! Writing the cache: pulling an image's layers, config and manifest into it (the warmer's
//! work), and cleaning the temporary files interrupted writers leave.

use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use futures_util::StreamExt;

use super::index::Entry;
use super::{BaseImageCache, CacheError, CachedImage, Stored, LAYER_CONCURRENCY};
use crate::registry::Registry;

impl BaseImageCache {
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
            .map(|(digest, size)| {
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
                        .fetch_blob_to_file(&reference, &digest, size, &self.layout.blob_path(&digest))
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
                layers_verified: true,
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
}
