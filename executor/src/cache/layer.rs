//! The layer cache (`--cache`, `--cache-repo`): each cached step is a one-layer image (or a
//! zero-layer one when the step changed nothing) tagged with the step's key, in a registry
//! repository or an OCI layout (`oci:/path`), as kaniko stores them. Looks entries up, fetches
//! their layer verified, and stores new ones. It does not compute keys or apply layers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_oci::image::{
    sha256_digest, Descriptor, History, ImageConfig, Manifest, RootFs, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_MANIFEST,
};
use kiln_oci::registry::{
    Blob, BlobSource, LayoutError, OciLayout, Platform, Registry, RegistryError,
};

use crate::layer::LayerFile;

/// Annotation of an entry's manifest: when the entry was stored (RFC 3339), as its config's
/// `created` says too; the TTL reads it.
const CREATED: &str = "org.opencontainers.image.created";

/// Annotation of an entry's layer descriptor: the layer's uncompressed digest (its diff_id), as
/// containerd and BuildKit record it. With [`CREATED`] it lets a lookup skip the config.
const UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// Where a looked-up entry was found: the reference of its tag, or the layout holding it.
enum Source {
    Registry(String),
    Layout(OciLayout),
}

/// The creation time and diff_ids an entry's manifest carries as annotations; `None` when any
/// is missing (the config has them).
fn annotated(manifest: &Manifest) -> Option<(Option<String>, Vec<String>)> {
    let created = manifest.annotations.as_ref()?.get(CREATED)?.clone();
    let diff_ids = manifest
        .layers
        .iter()
        .map(|l| l.annotations.as_ref()?.get(UNCOMPRESSED).cloned())
        .collect::<Option<Vec<String>>>()?;
    Some((Some(created), diff_ids))
}

/// What went wrong with the layer cache. Callers treat every error as a miss (lookups) or a
/// warning (stores): a broken cache never fails a build.
#[derive(Debug, thiserror::Error)]
pub enum LayerCacheError {
    #[error("layer cache {repo}: {source}")]
    Registry {
        repo: String,
        #[source]
        source: RegistryError,
    },
    #[error("layer cache {repo}: {source}")]
    Layout {
        repo: String,
        #[source]
        source: LayoutError,
    },
    #[error(
        "layer cache entry {key} in {repo} is invalid: {detail}; delete the tag so it is rebuilt"
    )]
    Invalid {
        repo: String,
        key: String,
        detail: String,
    },
}

/// Where cached layers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheRepo {
    /// A registry repository, `host/path` without tag.
    Registry(String),
    /// An OCI image layout directory, each entry named by its key.
    Layout(PathBuf),
}

impl CacheRepo {
    /// `--cache-repo` if given (`oci:/path` for a layout), else kaniko's rule: the first
    /// destination's repository with `/cache` appended. `None` when there is neither.
    pub fn from_flags(cache_repo: Option<&str>, destinations: &[String]) -> Option<CacheRepo> {
        if let Some(repo) = cache_repo.filter(|r| !r.is_empty()) {
            if let Some(path) = repo.strip_prefix("oci:") {
                return Some(CacheRepo::Layout(PathBuf::from(path)));
            }
            return Some(CacheRepo::Registry(strip_tag(repo)));
        }
        destinations
            .first()
            .map(|d| CacheRepo::Registry(format!("{}/cache", strip_tag(d))))
    }

    fn describe(&self) -> String {
        match self {
            CacheRepo::Registry(r) => r.clone(),
            CacheRepo::Layout(p) => format!("oci:{}", p.display()),
        }
    }
}

/// `host:5000/a/b:tag@sha256:…` → `host:5000/a/b`.
fn strip_tag(reference: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((repo, _)) => format!("{head}/{repo}"),
            None => name.to_string(),
        },
        None => name.split(':').next().unwrap_or(name).to_string(),
    }
}

/// A cached step found by [`LayerCache::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHit {
    pub key: String,
    /// The step's layer, or `None` when the step changed nothing. Its path is where
    /// [`LayerCache::fetch`] makes the blob available.
    pub layer: Option<LayerFile>,
}

/// The layer cache of one build. Cheap to share (`Arc`) with background store tasks.
#[derive(Debug)]
pub struct LayerCache {
    repo: CacheRepo,
    registry: Arc<Registry>,
    ttl: Duration,
    platform: Platform,
    /// Where layers fetched from a registry repository are written.
    blob_dir: PathBuf,
}

impl LayerCache {
    pub fn new(
        repo: CacheRepo,
        registry: Arc<Registry>,
        ttl: Duration,
        platform: Platform,
        blob_dir: PathBuf,
    ) -> LayerCache {
        LayerCache {
            repo,
            registry,
            ttl,
            platform,
            blob_dir,
        }
    }

    pub fn repo(&self) -> &CacheRepo {
        &self.repo
    }

    pub fn describe(&self) -> String {
        self.repo.describe()
    }

    /// Where a hit's layer blob can be fetched from (a registry reference), for pushes that
    /// copy it to a destination without downloading it first; `None` for a layout.
    pub fn blob_reference(&self, key: &str) -> Option<String> {
        match &self.repo {
            CacheRepo::Registry(r) => Some(format!("{r}:{key}")),
            CacheRepo::Layout(_) => None,
        }
    }

    /// The entry for `key`, if present and created within the TTL. Only the manifest (and, for
    /// an entry without [`CREATED`] and [`UNCOMPRESSED`] annotations, as kaniko and older
    /// versions store them, the config) is read; the layer is fetched by [`LayerCache::fetch`].
    pub async fn lookup(&self, key: &str) -> Result<Option<CacheHit>, LayerCacheError> {
        let registry_err = |source| LayerCacheError::Registry {
            repo: self.describe(),
            source,
        };
        let layout_err = |source| LayerCacheError::Layout {
            repo: self.describe(),
            source,
        };
        let (manifest_bytes, source) = match &self.repo {
            CacheRepo::Registry(repo) => {
                let reference = format!("{repo}:{key}");
                match self.registry.pull_manifest(&reference).await {
                    Ok((bytes, _)) => (bytes, Source::Registry(reference)),
                    Err(RegistryError::NotFound { .. }) => return Ok(None),
                    Err(source) => return Err(registry_err(source)),
                }
            }
            CacheRepo::Layout(dir) => {
                if !dir.join("oci-layout").is_file() {
                    return Ok(None);
                }
                let layout = OciLayout::open(dir).map_err(layout_err)?;
                let Some(desc) = layout.resolve(key) else {
                    return Ok(None);
                };
                let bytes = layout
                    .read_blob_verified(desc.digest().as_ref())
                    .map_err(layout_err)?;
                (bytes, Source::Layout(layout))
            }
        };
        let mut manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| self.invalid(key, e))?;
        let (created, diff_ids) = match annotated(&manifest) {
            Some(found) => found,
            None => {
                let config_bytes = match &source {
                    Source::Layout(layout) => layout
                        .read_blob_verified(&manifest.config.digest)
                        .map_err(layout_err)?,
                    // The manifest again with its config: the tag may have moved in between.
                    Source::Registry(reference) => {
                        let image = match self.registry.pull_image(reference).await {
                            Ok(image) => image,
                            Err(RegistryError::NotFound { .. }) => return Ok(None),
                            Err(source) => return Err(registry_err(source)),
                        };
                        manifest = serde_json::from_slice(&image.manifest_bytes)
                            .map_err(|e| self.invalid(key, e))?;
                        image.config_bytes
                    }
                };
                let config: ImageConfig =
                    serde_json::from_slice(&config_bytes).map_err(|e| self.invalid(key, e))?;
                (config.created, config.rootfs.diff_ids)
            }
        };
        if let Some(created) = created.as_deref() {
            let created =
                chrono::DateTime::parse_from_rfc3339(created).map_err(|e| self.invalid(key, e))?;
            let age = chrono::Utc::now().signed_duration_since(created);
            if age.to_std().map(|a| a > self.ttl).unwrap_or(false) {
                tracing::debug!(key, "cached layer is older than --cache-ttl, ignored");
                return Ok(None);
            }
        }
        let layer = match (manifest.layers.as_slice(), diff_ids.as_slice()) {
            ([], []) => None,
            ([l], [diff_id]) => Some(LayerFile {
                // A layout holds the blob itself; a registry's is fetched into the blob dir.
                path: match &source {
                    Source::Layout(layout) => layout.blob_path(&l.digest),
                    Source::Registry(_) => self.blob_dir.join(l.digest.replace(':', "-")),
                },
                digest: l.digest.clone(),
                diff_id: diff_id.clone(),
                size: l.size,
                media_type: kiln_oci::image::oci_layer_media_type(&l.media_type),
            }),
            (l, d) => {
                return Err(self.invalid(
                    key,
                    format!(
                        "{} layers and {} diff_ids (expected at most one)",
                        l.len(),
                        d.len()
                    ),
                ))
            }
        };
        Ok(Some(CacheHit {
            key: key.to_string(),
            layer,
        }))
    }

    fn invalid(&self, key: &str, detail: impl std::fmt::Display) -> LayerCacheError {
        LayerCacheError::Invalid {
            repo: self.describe(),
            key: key.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Make the hit's layer available as a verified file at its path: a registry blob is
    /// fetched into the blob dir (streamed, digest checked); a layout blob is verified and used
    /// where it is.
    pub async fn fetch(&self, hit: &CacheHit) -> Result<Option<PathBuf>, LayerCacheError> {
        let Some(layer) = &hit.layer else {
            return Ok(None);
        };
        match &self.repo {
            CacheRepo::Registry(repo) => {
                let dest = layer.path.clone();
                if !dest.exists() {
                    self.registry
                        .fetch_blob_to_work_file(
                            &format!("{repo}:{}", hit.key),
                            &layer.digest,
                            layer.size,
                            &dest,
                        )
                        .await
                        .map_err(|source| LayerCacheError::Registry {
                            repo: self.describe(),
                            source,
                        })?;
                }
                Ok(Some(dest))
            }
            CacheRepo::Layout(dir) => {
                let layout_err = |source| LayerCacheError::Layout {
                    repo: self.describe(),
                    source,
                };
                let layout = OciLayout::open(dir).map_err(layout_err)?;
                let digest = layer.digest.clone();
                let check = layout.clone();
                tokio::task::spawn_blocking(move || check.verify_blob(&digest))
                    .await
                    .map_err(|e| self.invalid(&hit.key, e))?
                    .map_err(layout_err)?;
                Ok(Some(layer.path.clone()))
            }
        }
    }

    /// Store a step's result under `key`: its layer (or nothing, for a step that changed
    /// nothing) as a one-layer image whose config records the diff_id, the step and the time
    /// (always the real time, even for reproducible builds, because the TTL reads it).
    pub async fn store(
        &self,
        key: &str,
        layer: Option<&LayerFile>,
        created_by: &str,
    ) -> Result<(), LayerCacheError> {
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let config = ImageConfig {
            created: Some(created.clone()),
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            rootfs: RootFs {
                fs_type: "layers".into(),
                diff_ids: layer.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history: vec![History {
                created_by: Some(created_by.to_string()),
                comment: Some("kiln layer cache".into()),
                empty_layer: layer.is_none(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let config_bytes = serde_json::to_vec(&config).map_err(|e| self.invalid(key, e))?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
            config: Descriptor {
                media_type: MEDIA_TYPE_OCI_CONFIG.to_string(),
                digest: sha256_digest(&config_bytes),
                size: config_bytes.len() as u64,
                annotations: None,
            },
            layers: layer
                .iter()
                .map(|l| Descriptor {
                    annotations: Some([(UNCOMPRESSED.to_string(), l.diff_id.clone())].into()),
                    ..l.descriptor()
                })
                .collect(),
            annotations: Some([(CREATED.to_string(), created)].into()),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| self.invalid(key, e))?;
        match &self.repo {
            CacheRepo::Registry(repo) => {
                let mut blobs: Vec<Blob> = layer
                    .iter()
                    .map(|l| Blob {
                        digest: l.digest.clone(),
                        size: l.size,
                        source: BlobSource::File(l.path.clone()),
                        mount_from: None,
                        fresh: true,
                    })
                    .collect();
                blobs.push(Blob {
                    digest: manifest.config.digest.clone(),
                    size: config_bytes.len() as u64,
                    source: BlobSource::Bytes(config_bytes),
                    mount_from: None,
                    fresh: true,
                });
                self.registry
                    .push_image(
                        &format!("{repo}:{key}"),
                        &blobs,
                        &manifest_bytes,
                        MEDIA_TYPE_OCI_MANIFEST,
                    )
                    .await
                    .map_err(|source| LayerCacheError::Registry {
                        repo: self.describe(),
                        source,
                    })?;
            }
            CacheRepo::Layout(dir) => {
                let dir = dir.clone();
                let layer = layer.cloned();
                let key = key.to_string();
                let result = tokio::task::spawn_blocking(move || -> Result<(), LayoutError> {
                    let layout = OciLayout::create(&dir)?;
                    if let Some(l) = &layer {
                        if !layout.has_blob(&l.digest) {
                            layout.write_blob_file(&l.path, &l.digest)?;
                        }
                    }
                    layout.write_blob_bytes(&config_bytes)?;
                    layout.add_manifest(&manifest_bytes, MEDIA_TYPE_OCI_MANIFEST, Some(&key))?;
                    Ok(())
                })
                .await
                .map_err(|e| self.invalid("(store)", e))?;
                result.map_err(|source| LayerCacheError::Layout {
                    repo: self.describe(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_repo_rules() {
        assert_eq!(
            CacheRepo::from_flags(None, &["reg:5000/a/b:v1".into()]),
            Some(CacheRepo::Registry("reg:5000/a/b/cache".into()))
        );
        assert_eq!(
            CacheRepo::from_flags(Some("reg:5000/c:x"), &[]),
            Some(CacheRepo::Registry("reg:5000/c".into()))
        );
        assert_eq!(
            CacheRepo::from_flags(Some("oci:/tmp/c"), &[]),
            Some(CacheRepo::Layout("/tmp/c".into()))
        );
        assert_eq!(CacheRepo::from_flags(None, &[]), None);
        assert_eq!(strip_tag("reg:5000/a@sha256:00"), "reg:5000/a");
    }

    #[tokio::test]
    async fn layout_store_then_lookup_and_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(Default::default()).unwrap());
        let repo = CacheRepo::Layout(dir.path().join("cache"));
        let cache = LayerCache::new(
            repo.clone(),
            registry.clone(),
            Duration::from_secs(3600),
            Platform::default(),
            dir.path().join("blobs"),
        );
        let key = "ab".repeat(32);
        assert_eq!(cache.lookup(&key).await.unwrap(), None);
        let blob = dir.path().join("layer");
        std::fs::write(&blob, b"not really a tar").unwrap();
        let digest = sha256_digest(b"not really a tar");
        let layer = LayerFile {
            path: blob,
            digest: digest.clone(),
            diff_id: digest.clone(),
            size: 16,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        };
        cache.store(&key, Some(&layer), "RUN x").await.unwrap();
        let hit = cache
            .lookup(&key)
            .await
            .unwrap()
            .expect("stored entry is found");
        assert_eq!(
            hit.layer.as_ref().map(|l| l.digest.as_str()),
            Some(digest.as_str())
        );
        let path = cache.fetch(&hit).await.unwrap().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"not really a tar");
        // A step that changed nothing is a hit without a layer.
        let empty_key = "cd".repeat(32);
        cache.store(&empty_key, None, "RUN true").await.unwrap();
        assert_eq!(cache.lookup(&empty_key).await.unwrap().unwrap().layer, None);
        // An entry older than the TTL is a miss.
        let expired = LayerCache::new(
            repo,
            registry,
            Duration::ZERO,
            Platform::default(),
            dir.path().join("blobs"),
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(expired.lookup(&key).await.unwrap(), None);
    }

    /// An entry stored here carries its time and diff_id as annotations, so a lookup reads the
    /// manifest only (one request for a registry); an entry without them (kaniko's, or stored
    /// before) is read from its config, TTL included.
    #[tokio::test]
    async fn annotated_entries_skip_the_config_and_others_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(Default::default()).unwrap());
        let root = dir.path().join("cache");
        let cache = LayerCache::new(
            CacheRepo::Layout(root.clone()),
            registry,
            Duration::from_secs(3600),
            Platform::default(),
            dir.path().join("blobs"),
        );
        let blob = dir.path().join("layer");
        std::fs::write(&blob, b"compressed").unwrap();
        let layer = LayerFile {
            path: blob,
            digest: sha256_digest(b"compressed"),
            diff_id: sha256_digest(b"uncompressed"),
            size: 10,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        };
        let key = "ef".repeat(32);
        cache.store(&key, Some(&layer), "RUN x").await.unwrap();
        // The config goes: the annotations are enough.
        let layout = OciLayout::open(&root).unwrap();
        let manifest: Manifest = serde_json::from_slice(
            &layout
                .read_blob_verified(layout.resolve(&key).unwrap().digest().as_ref())
                .unwrap(),
        )
        .unwrap();
        std::fs::remove_file(layout.blob_path(&manifest.config.digest)).unwrap();
        let hit = cache.lookup(&key).await.unwrap().expect("annotated entry");
        assert_eq!(hit.layer.unwrap().diff_id, layer.diff_id);

        // kaniko's shape: no annotations; the config says when and what.
        let unannotated = |key: &str, created: &str, diff_id: &str| {
            let config = ImageConfig {
                created: Some(created.into()),
                rootfs: RootFs {
                    fs_type: "layers".into(),
                    diff_ids: vec![diff_id.into()],
                },
                ..Default::default()
            };
            let config_bytes = serde_json::to_vec(&config).unwrap();
            let manifest = Manifest {
                config: Descriptor {
                    media_type: MEDIA_TYPE_OCI_CONFIG.into(),
                    digest: layout.write_blob_bytes(&config_bytes).unwrap(),
                    size: config_bytes.len() as u64,
                    annotations: None,
                },
                layers: vec![layer.descriptor()],
                annotations: None,
                ..manifest.clone()
            };
            layout
                .add_manifest(
                    &serde_json::to_vec(&manifest).unwrap(),
                    MEDIA_TYPE_OCI_MANIFEST,
                    Some(key),
                )
                .unwrap();
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let from_config = sha256_digest(b"from the config");
        unannotated(&"01".repeat(32), &now, &from_config);
        let hit = cache
            .lookup(&"01".repeat(32))
            .await
            .unwrap()
            .expect("kaniko-shaped entry");
        assert_eq!(hit.layer.unwrap().diff_id, from_config);
        unannotated(&"02".repeat(32), "2001-01-01T00:00:00Z", &from_config);
        assert_eq!(
            cache.lookup(&"02".repeat(32)).await.unwrap(),
            None,
            "older than the TTL"
        );
    }
}
