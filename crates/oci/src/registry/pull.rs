//! Pulling: resolving a reference to one platform's manifest and config, streaming blobs into
//! files with verification, and filling OCI layouts. Every request goes through the registry's
//! mirrors and remaps in order (see `Registry::endpoints`).

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::manifest::OciDescriptor;
use oci_client::Client;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::{Attempt, ErrorContext};
use super::reference::{sha256_hex, with_digest};
use super::{
    parse_reference, sha256_digest, sniff_media_type, Direction, OciLayout, Platform, Reference,
    Registry, RegistryError, RemoteImage, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};

/// Manifest types asked for when resolving a tag or digest.
const ACCEPTED_MANIFESTS: &[&str] = &[
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
];

/// Layer media types that kiln can unpack.
const ACCEPTED_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Largest config blob accepted; configs are a few KiB, so a bigger one is hostile or broken
/// and must not be held in memory.
const MAX_CONFIG_SIZE: i64 = 16 << 20;

impl Registry {
    /// Resolves `reference` to one platform's manifest and config, verifying the manifest
    /// digest (when pulling by digest, and the chosen child of an index always) and the
    /// config digest.
    pub async fn pull_image(&self, reference: &str) -> Result<RemoteImage, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let endpoints = self.endpoints(&r);
        let mut last = None;
        for (i, ep) in endpoints.iter().enumerate() {
            match self.pull_from(ep, &normalized).await {
                Ok(img) => return Ok(img),
                Err(e) => {
                    if i + 1 < endpoints.len() {
                        tracing::warn!(mirror = ep.registry(), reference = %normalized, error = %e, "mirror failed, trying the next source");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::InvalidReference {
            reference: reference.to_string(),
            reason: "no registry to pull from".to_string(),
        }))
    }

    async fn fetch_manifest(
        &self,
        client: &Client,
        ep: &Reference,
        normalized: &str,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let what = match ep.digest() {
            Some(d) => format!("manifest {d}"),
            None => format!("manifest for tag {}", ep.tag().unwrap_or("latest")),
        };
        let ctx = self.ctx(ep, normalized, &what);
        self.retrying(Direction::Pull, &ctx, || async {
            let (body, _) = client
                .pull_manifest_raw(ep, &self.registry_auth(ep), ACCEPTED_MANIFESTS)
                .await
                .map_err(|e| ctx.attempt(e))?;
            let actual = sha256_digest(&body);
            if let Some(expected) = ep.digest() {
                if expected != actual {
                    // A cut-short body is the likely cause; a retry fetches it whole.
                    return Err(Attempt::transient(ctx.mismatch(expected, &actual)));
                }
            }
            Ok((body.to_vec(), actual))
        })
        .await
    }

    async fn pull_from(
        &self,
        ep: &Reference,
        normalized: &str,
    ) -> Result<RemoteImage, RegistryError> {
        let client = self.client_for(ep);
        self.prepare(client, ep).await;
        let (mut bytes, mut digest) = self.fetch_manifest(client, ep, normalized).await?;
        let mut media_type = sniff_media_type(&bytes);
        let invalid = |what: &str, detail: String| RegistryError::InvalidContent {
            registry: ep.registry().to_string(),
            reference: normalized.to_string(),
            what: what.to_string(),
            detail,
        };
        let unsupported = |media_type: &str| RegistryError::UnsupportedMediaType {
            registry: ep.registry().to_string(),
            reference: normalized.to_string(),
            media_type: media_type.to_string(),
        };

        let mut index_digest = None;
        if media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| invalid("image index", e.to_string()))?;
            let wanted = &self.opts.platform;
            let entry = index
                .manifests()
                .iter()
                .find(|m| m.platform().as_ref().is_some_and(|p| wanted.matches(p)))
                .ok_or_else(|| {
                    let available: Vec<String> = index
                        .manifests()
                        .iter()
                        .filter_map(|m| m.platform().as_ref().map(Platform::describe))
                        .collect();
                    RegistryError::PlatformNotFound {
                        registry: ep.registry().to_string(),
                        reference: normalized.to_string(),
                        wanted: wanted.to_string(),
                        available: if available.is_empty() {
                            "none".to_string()
                        } else {
                            available.join(", ")
                        },
                    }
                })?;
            let child = with_digest(ep, entry.digest().as_ref());
            index_digest = Some(digest);
            (bytes, digest) = self.fetch_manifest(client, &child, normalized).await?;
            media_type = sniff_media_type(&bytes);
        }
        if media_type != MEDIA_TYPE_OCI_MANIFEST && media_type != MEDIA_TYPE_DOCKER_MANIFEST {
            return Err(unsupported(&media_type));
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| invalid("manifest", e.to_string()))?;
        let config_media = manifest.config().media_type().to_string();
        if config_media != MEDIA_TYPE_OCI_CONFIG && config_media != MEDIA_TYPE_DOCKER_CONFIG {
            return Err(unsupported(&config_media));
        }
        if let Some(layer) = manifest
            .layers()
            .iter()
            .find(|l| !ACCEPTED_LAYERS.contains(&l.media_type().to_string().as_str()))
        {
            return Err(unsupported(layer.media_type().as_ref()));
        }

        let config_digest = manifest.config().digest().to_string();
        let config_size = manifest.config().size() as i64;
        if !(0..=MAX_CONFIG_SIZE).contains(&config_size) {
            return Err(invalid(
                "config",
                format!("descriptor size {config_size} is outside 0..={MAX_CONFIG_SIZE}"),
            ));
        }
        let what = format!("config {config_digest}");
        let ctx = self.ctx(ep, normalized, &what);
        let desc = OciDescriptor {
            media_type: config_media.clone(),
            digest: config_digest.clone(),
            size: config_size,
            ..OciDescriptor::default()
        };
        let config_bytes = self
            .retrying(Direction::Pull, &ctx, || async {
                let mut bytes: Vec<u8> = Vec::new();
                client
                    .pull_blob(ep, &desc, &mut bytes)
                    .await
                    .map_err(|e| ctx.attempt(e))?;
                let actual = sha256_digest(&bytes);
                if actual != config_digest {
                    return Err(Attempt::transient(ctx.mismatch(&config_digest, &actual)));
                }
                Ok(bytes)
            })
            .await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid("image config", e.to_string()))?;
        tracing::debug!(reference = %normalized, registry = ep.registry(), manifest = %digest, "pulled manifest and config");
        Ok(RemoteImage {
            reference: normalized.to_string(),
            manifest_digest: digest,
            manifest,
            manifest_bytes: bytes,
            manifest_media_type: media_type,
            index_digest,
            config_digest,
            config_bytes,
            config,
        })
    }

    /// Streams blob `digest` of the repository of `reference` into `dest`: written to a
    /// temporary file beside `dest`, hashed on the way, renamed into place only when the
    /// sha256 matches. Returns the number of bytes. Memory use does not grow with the blob.
    pub async fn fetch_blob_to_file(
        &self,
        reference: &str,
        digest: &str,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        if sha256_hex(digest).is_none() {
            return Err(RegistryError::InvalidBlob {
                blob: digest.to_string(),
                detail: format!("not a sha256:<64 hex> digest (for {normalized})"),
            });
        }
        let endpoints = self.endpoints(&r);
        let mut last = None;
        for (i, ep) in endpoints.iter().enumerate() {
            match self.fetch_blob_from(ep, &normalized, digest, dest).await {
                Ok(n) => return Ok(n),
                Err(e) => {
                    if i + 1 < endpoints.len() {
                        tracing::warn!(mirror = ep.registry(), blob = digest, error = %e, "mirror failed, trying the next source");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::InvalidReference {
            reference: reference.to_string(),
            reason: "no registry to pull from".to_string(),
        }))
    }

    async fn fetch_blob_from(
        &self,
        ep: &Reference,
        normalized: &str,
        digest: &str,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        let client = self.client_for(ep);
        self.prepare(client, ep).await;
        let what = format!("blob {digest}");
        let ctx = self.ctx(ep, normalized, &what);
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Each attempt streams into a fresh temporary file, hashed on the way, so a
        // retried download never mixes bytes of two responses.
        let (tmp, written) = self
            .retrying(Direction::Pull, &ctx, || async {
                let tmp = tempfile::Builder::new()
                    .prefix(".kiln-blob-")
                    .tempfile_in(&dir)
                    .map_err(|e| {
                        Attempt::fatal(RegistryError::io(
                            "cannot create a temporary file in",
                            &dir,
                            e,
                        ))
                    })?;
                let written = self.stream_blob(client, ep, digest, &tmp, &ctx).await?;
                Ok((tmp, written))
            })
            .await?;
        tmp.persist(dest)
            .map_err(|e| RegistryError::io("cannot move the blob into", dest, e.error))?;
        tracing::debug!(
            blob = digest,
            registry = ep.registry(),
            bytes = written,
            "fetched blob"
        );
        Ok(written)
    }

    /// One attempt of a blob download into `tmp`, verified against `digest`.
    async fn stream_blob(
        &self,
        client: &Client,
        ep: &Reference,
        digest: &str,
        tmp: &tempfile::NamedTempFile,
        ctx: &ErrorContext<'_>,
    ) -> Result<u64, Attempt> {
        let local = |action: &'static str, e: std::io::Error| {
            Attempt::fatal(RegistryError::io(action, tmp.path(), e))
        };
        let std_file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| local("cannot open", e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut stream = client
            .pull_blob_stream(ep, digest)
            .await
            .map_err(|e| ctx.attempt(e))?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        while let Some(chunk) = stream.next().await {
            // A connection cut mid-body ends here; the caller retries from scratch.
            let chunk = chunk.map_err(|e| Attempt::transient(ctx.map_io(&e)))?;
            hasher.update(&chunk);
            written += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| local("cannot write", e))?;
        }
        file.flush().await.map_err(|e| local("cannot write", e))?;
        file.sync_all().await.map_err(|e| local("cannot sync", e))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            // The temporary file is removed when the caller drops it. A body cut short
            // without a transport error lands here too, so this is worth a retry.
            return Err(Attempt::transient(ctx.mismatch(digest, &actual)));
        }
        Ok(written)
    }

    /// Pulls `reference` (one platform) into an OCI layout: layers not yet in the layout
    /// are streamed into it with verification, then the config and the manifest, which is
    /// recorded in `index.json` under `ref_name` last, so a reader never sees a manifest
    /// whose blobs are missing. Returns the pulled image.
    ///
    /// Manifests are stored byte for byte as served, Docker media types included, so the
    /// layout keeps the registry's digests; skopeo and umoci resolve only OCI-typed entries
    /// by name, kiln reads both.
    pub async fn pull_to_layout(
        &self,
        reference: &str,
        layout: &OciLayout,
        ref_name: Option<&str>,
    ) -> Result<RemoteImage, RegistryError> {
        let image = self.pull_image(reference).await?;
        for layer in image.manifest.layers() {
            let digest = layer.digest().to_string();
            if layout.has_blob(&digest) {
                continue;
            }
            self.fetch_blob_to_file(reference, &digest, &layout.blob_path(&digest))
                .await?;
        }
        let config_digest = layout.write_blob_bytes(&image.config_bytes)?;
        debug_assert_eq!(config_digest, image.config_digest);
        layout.add_manifest(&image.manifest_bytes, &image.manifest_media_type, ref_name)?;
        Ok(image)
    }

    /// Whether blob `digest` exists in the repository of `reference`.
    pub async fn blob_exists(&self, reference: &str, digest: &str) -> Result<bool, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let client = self.client_for(&r);
        self.prepare(client, &r).await;
        let what = format!("blob {digest}");
        let ctx = self.ctx(&r, &normalized, &what);
        self.retrying(Direction::Pull, &ctx, || async {
            client
                .blob_exists(&r, digest)
                .await
                .map_err(|e| ctx.attempt(e))
        })
        .await
    }
}
