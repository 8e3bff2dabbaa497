//! Pulling: resolving a reference to one platform's manifest and config, streaming blobs into
//! files with verification, and filling OCI layouts. Every request goes through the registry's
//! mirrors and remaps in order (see `Registry::endpoints`), on the side (`Side`) of the
//! reference asked for. Nothing is read past its bound: manifests, indexes and configs stop at
//! `max_manifest_size`, a blob at its descriptor's size (a longer or shorter one is an error,
//! and its digest is still checked), and a layer blob larger than `max_layer_size` allows is
//! refused before it is fetched.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::Client;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::{Attempt, ErrorContext};
use super::reference::{sha256_hex, with_digest};
use super::{
    parse_reference, sha256_digest, sniff_media_type, Direction, OciLayout, Platform, Reference,
    Registry, RegistryError, RemoteImage, Side, MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

/// A platform's manifest as served, with the index it was picked from.
struct PlatformManifest {
    bytes: Vec<u8>,
    digest: String,
    media_type: String,
    index_digest: Option<String>,
}

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

impl Registry {
    /// Resolves `reference` to one platform's manifest and config, verifying the manifest
    /// digest (when pulling by digest, and the chosen child of an index always) and the
    /// config digest.
    pub async fn pull_image(&self, reference: &str) -> Result<RemoteImage, RegistryError> {
        self.pull_image_for(reference, &self.opts.platform).await
    }

    /// [`Registry::pull_image`] for `platform` rather than the client's: a stage's
    /// `FROM --platform` names the platform of its base image alone.
    pub async fn pull_image_for(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<RemoteImage, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let side = self.side(&r, Direction::Pull);
        let endpoints = self.endpoints(&r);
        first_endpoint(&endpoints, reference, &normalized, |ep| {
            self.pull_from(ep, &normalized, side, platform)
        })
        .await
    }

    async fn fetch_manifest(
        &self,
        ep: &Reference,
        normalized: &str,
        side: Side,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let what = match ep.digest() {
            Some(d) => format!("manifest {d}"),
            None => format!("manifest for tag {}", ep.tag().unwrap_or("latest")),
        };
        let ctx = self.ctx(ep, normalized, &what);
        let transport = self.transport_for(ep, side).await?;
        self.retrying(Direction::Pull, &ctx, || async {
            let body = self
                .get_manifest_bounded(
                    transport,
                    ep,
                    ACCEPTED_MANIFESTS,
                    self.opts.max_manifest_size,
                    &ctx,
                )
                .await?;
            let actual = sha256_digest(&body);
            if let Some(expected) = ep.digest() {
                if expected != actual {
                    // A cut-short body is the likely cause; a retry fetches it whole.
                    return Err(Attempt::transient(ctx.mismatch(expected, &actual)));
                }
            }
            Ok((body, actual))
        })
        .await
    }

    /// The digest of the platform manifest `reference` resolves to, as the registry serves it
    /// now: the manifest (and, for an image index, the chosen child manifest) is fetched and
    /// checked, no blob is. This is how an entry of kaniko's warmer is found, since kaniko names
    /// its entries by that digest (and kaniko's executor asks the registry for it the same way).
    pub async fn resolve_digest(&self, reference: &str) -> Result<String, RegistryError> {
        self.resolve_digest_for(reference, &self.opts.platform)
            .await
    }

    /// [`Registry::resolve_digest`] for `platform` rather than the client's.
    pub async fn resolve_digest_for(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<String, RegistryError> {
        Ok(self.pull_manifest_for(reference, platform).await?.1)
    }

    /// The platform manifest `reference` resolves to (for the client's platform) and its
    /// digest, checked as [`Registry::resolve_digest`] checks it; no blob is fetched. For a
    /// reader that finds what it needs in the manifest and its annotations.
    pub async fn pull_manifest(&self, reference: &str) -> Result<(Vec<u8>, String), RegistryError> {
        self.pull_manifest_for(reference, &self.opts.platform).await
    }

    async fn pull_manifest_for(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let side = self.side(&r, Direction::Pull);
        let endpoints = self.endpoints(&r);
        first_endpoint(&endpoints, reference, &normalized, |ep| async {
            let m = self
                .platform_manifest(ep, &normalized, side, platform)
                .await?;
            if m.media_type != MEDIA_TYPE_OCI_MANIFEST && m.media_type != MEDIA_TYPE_DOCKER_MANIFEST
            {
                return Err(RegistryError::UnsupportedMediaType {
                    registry: ep.registry().to_string(),
                    reference: normalized.clone(),
                    media_type: m.media_type,
                });
            }
            Ok((m.bytes, m.digest))
        })
        .await
    }

    /// Fetches the manifest of `ep` and, when it is an image index, the child manifest for
    /// the wanted platform. Checks nothing but digests and the platform choice.
    async fn platform_manifest(
        &self,
        ep: &Reference,
        normalized: &str,
        side: Side,
        wanted: &Platform,
    ) -> Result<PlatformManifest, RegistryError> {
        self.prepared(ep, side).await?;
        let (mut bytes, mut digest) = self.fetch_manifest(ep, normalized, side).await?;
        let mut media_type = sniff_media_type(&bytes);
        let mut index_digest = None;
        if media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::InvalidContent {
                    registry: ep.registry().to_string(),
                    reference: normalized.to_string(),
                    what: "image index".to_string(),
                    detail: e.to_string(),
                })?;
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
            (bytes, digest) = self.fetch_manifest(&child, normalized, side).await?;
            media_type = sniff_media_type(&bytes);
        }
        Ok(PlatformManifest {
            bytes,
            digest,
            media_type,
            index_digest,
        })
    }

    async fn pull_from(
        &self,
        ep: &Reference,
        normalized: &str,
        side: Side,
        platform: &Platform,
    ) -> Result<RemoteImage, RegistryError> {
        let PlatformManifest {
            bytes,
            digest,
            media_type,
            index_digest,
        } = self
            .platform_manifest(ep, normalized, side, platform)
            .await?;
        let client = self.client_for(ep, side).await?;
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

        if let Some(max) = self.opts.max_layer_size {
            let cap = crate::limits::max_compressed_size(max);
            if let Some(layer) = manifest.layers().iter().find(|l| l.size() > cap) {
                let what = format!("layer {}", layer.digest());
                return Err(self.ctx(ep, normalized, &what).too_large(
                    cap,
                    Some(layer.size()),
                    "--max-layer-size",
                ));
            }
        }

        let config_digest = manifest.config().digest().to_string();
        let config_size = manifest.config().size();
        let what = format!("config {config_digest}");
        let ctx = self.ctx(ep, normalized, &what);
        if config_size > self.opts.max_manifest_size {
            return Err(ctx.too_large(
                self.opts.max_manifest_size,
                Some(config_size),
                "--max-manifest-size",
            ));
        }
        let config_bytes = self
            .retrying(Direction::Pull, &ctx, || async {
                let mut bytes: Vec<u8> = Vec::new();
                let actual = self
                    .read_blob(client, ep, &config_digest, config_size, &ctx, |chunk| {
                        bytes.extend_from_slice(chunk)
                    })
                    .await?;
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
    /// sha256 matches and exactly `size` bytes (its descriptor's) came. Reading stops at `size`:
    /// a longer blob is refused without being read further. A layer blob larger than
    /// `max_layer_size` allows is refused before it is requested. Returns the number of bytes.
    /// Memory use does not grow with the blob. The file is synced to its disk before it is
    /// renamed, for stores that outlive the process (the base-image cache, a layout);
    /// [`Registry::fetch_blob_to_work_file`] skips that.
    pub async fn fetch_blob_to_file(
        &self,
        reference: &str,
        digest: &str,
        size: u64,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        self.fetch_blob_into(reference, digest, size, dest, true)
            .await
    }

    /// [`Registry::fetch_blob_to_file`] for a file that lives only as long as the build (its
    /// work directory): verified the same way, not synced to the disk, which a crash would not
    /// need and which costs a journal commit per blob.
    pub async fn fetch_blob_to_work_file(
        &self,
        reference: &str,
        digest: &str,
        size: u64,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        self.fetch_blob_into(reference, digest, size, dest, false)
            .await
    }

    async fn fetch_blob_into(
        &self,
        reference: &str,
        digest: &str,
        size: u64,
        dest: &Path,
        sync: bool,
    ) -> Result<u64, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        if sha256_hex(digest).is_none() {
            return Err(RegistryError::InvalidBlob {
                blob: digest.to_string(),
                detail: format!("not a sha256:<64 hex> digest (for {normalized})"),
            });
        }
        if let Some(max) = self.opts.max_layer_size {
            let cap = crate::limits::max_compressed_size(max);
            if size > cap {
                let what = format!("blob {digest}");
                return Err(self.ctx(&r, &normalized, &what).too_large(
                    cap,
                    Some(size),
                    "--max-layer-size",
                ));
            }
        }
        let side = self.side(&r, Direction::Pull);
        let endpoints = self.endpoints(&r);
        let what = format!("blob {digest}");
        first_endpoint(&endpoints, reference, &what, |ep| {
            let dest = BlobDest { path: dest, sync };
            self.fetch_blob_from(ep, &normalized, digest, size, dest, side)
        })
        .await
    }

    async fn fetch_blob_from(
        &self,
        ep: &Reference,
        normalized: &str,
        digest: &str,
        size: u64,
        dest: BlobDest<'_>,
        side: Side,
    ) -> Result<u64, RegistryError> {
        let client = self.prepared(ep, side).await?;
        let what = format!("blob {digest}");
        let ctx = self.ctx(ep, normalized, &what);
        let dir = match dest.path.parent() {
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
                let written = self
                    .stream_blob(client, ep, digest, size, &tmp, &ctx)
                    .await?;
                Ok((tmp, written))
            })
            .await?;
        if dest.sync {
            let file = tmp.as_file().try_clone();
            tokio::task::spawn_blocking(move || file.and_then(|f| f.sync_all()))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|e| RegistryError::io("cannot sync", tmp.path(), e))?;
        }
        let dest = dest.path;
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

    /// One attempt of a blob download into `tmp`, verified against `digest` and `size`.
    async fn stream_blob(
        &self,
        client: &Client,
        ep: &Reference,
        digest: &str,
        size: u64,
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
            .pull_blob_stream_unverified(ep, digest)
            .await
            .map_err(|e| ctx.attempt(e))?;
        let mut read = BoundedBlob::new(size);
        while let Some(item) = stream.next().await {
            let chunk = read.admit(item).map_err(|s| s.attempt(size, ctx))?;
            file.write_all(chunk.as_ref())
                .await
                .map_err(|e| local("cannot write", e))?;
        }
        let actual = read.finish().map_err(|s| s.attempt(size, ctx))?;
        file.flush().await.map_err(|e| local("cannot write", e))?;
        if actual != digest {
            // The temporary file is removed when the caller drops it.
            return Err(Attempt::transient(ctx.mismatch(digest, &actual)));
        }
        Ok(size)
    }

    /// One attempt at reading blob `digest` (`size` bytes by its descriptor) of `ep` into
    /// `sink`; returns the digest of what was read (the caller compares it).
    async fn read_blob(
        &self,
        client: &Client,
        ep: &Reference,
        digest: &str,
        size: u64,
        ctx: &ErrorContext<'_>,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<String, Attempt> {
        let mut stream = client
            .pull_blob_stream_unverified(ep, digest)
            .await
            .map_err(|e| ctx.attempt(e))?;
        let mut read = BoundedBlob::new(size);
        while let Some(item) = stream.next().await {
            sink(read.admit(item).map_err(|s| s.attempt(size, ctx))?.as_ref());
        }
        read.finish().map_err(|s| s.attempt(size, ctx))
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
            self.fetch_blob_to_file(reference, &digest, layer.size(), &layout.blob_path(&digest))
                .await?;
        }
        let config_digest = layout.write_blob_bytes(&image.config_bytes)?;
        debug_assert_eq!(config_digest, image.config_digest);
        layout.add_manifest(&image.manifest_bytes, &image.manifest_media_type, ref_name)?;
        Ok(image)
    }

    /// Whether blob `digest` exists in the repository of `reference` (without asking when this
    /// process has seen it there).
    pub async fn blob_exists(&self, reference: &str, digest: &str) -> Result<bool, RegistryError> {
        let r = parse_reference(reference)?;
        if self.seen.has(&r, digest) {
            return Ok(true);
        }
        let normalized = r.whole();
        let client = self.prepared(&r, self.side(&r, Direction::Pull)).await?;
        let what = format!("blob {digest}");
        let ctx = self.ctx(&r, &normalized, &what);
        let present = self
            .retrying(Direction::Pull, &ctx, || async {
                client
                    .blob_exists(&r, digest)
                    .await
                    .map_err(|e| ctx.attempt(e))
            })
            .await?;
        if present {
            self.seen.note(&r, digest);
        } else {
            self.seen.note_absent(&r, digest);
        }
        Ok(present)
    }
}

/// Where a downloaded blob goes, and whether it is synced to its disk before it is renamed there.
struct BlobDest<'a> {
    path: &'a Path,
    sync: bool,
}

/// The reading of one blob: hashes what comes and stops at the descriptor's size.
struct BoundedBlob {
    expected: u64,
    read: u64,
    hasher: Sha256,
}

/// Why the reading of a blob stopped early.
enum Stop {
    /// A chunk went past the descriptor's size; the bytes seen with it.
    Longer(u64),
    /// The body ended before the descriptor's size; the bytes read.
    Shorter(u64),
    /// The transport failed (a cut connection). The stream is not verified by oci-client:
    /// this reading hashes every byte once, and the caller compares the digest.
    Transport(std::io::Error),
}

impl Stop {
    /// The failed attempt: a longer blob ends it for good (the registry serves another blob
    /// than the manifest describes); a cut connection or a short body is worth a retry.
    fn attempt(self, expected: u64, ctx: &ErrorContext<'_>) -> Attempt {
        match self {
            Stop::Longer(seen) => Attempt::fatal(ctx.size_mismatch(expected, seen)),
            Stop::Shorter(read) => Attempt::transient(ctx.size_mismatch(expected, read)),
            Stop::Transport(e) => Attempt::transient(ctx.map_io(&e)),
        }
    }
}

impl BoundedBlob {
    fn new(expected: u64) -> BoundedBlob {
        BoundedBlob {
            expected,
            read: 0,
            hasher: Sha256::new(),
        }
    }

    /// One item of the body stream: a chunk that fits within the descriptor's size (hashed),
    /// or why the read stops.
    fn admit<B: AsRef<[u8]>>(&mut self, item: Result<B, std::io::Error>) -> Result<B, Stop> {
        let chunk = item.map_err(Stop::Transport)?;
        let seen = self.read.saturating_add(chunk.as_ref().len() as u64);
        if seen > self.expected {
            return Err(Stop::Longer(seen));
        }
        self.read = seen;
        self.hasher.update(chunk.as_ref());
        Ok(chunk)
    }

    /// The digest of the blob, once the body has ended at exactly the descriptor's size.
    fn finish(self) -> Result<String, Stop> {
        if self.read != self.expected {
            // Cut short without a transport error.
            return Err(Stop::Shorter(self.read));
        }
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

/// Try `endpoints` in order (the `--registry-map`/mirror endpoints, then the registry itself):
/// the first success wins, a failure with endpoints left is logged and the next one tried, and
/// the last failure is returned. `what` names what is fetched, for the log.
async fn first_endpoint<'a, T, F, Fut>(
    endpoints: &'a [Reference],
    reference: &str,
    what: &str,
    mut attempt: F,
) -> Result<T, RegistryError>
where
    F: FnMut(&'a Reference) -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut last = None;
    for (i, ep) in endpoints.iter().enumerate() {
        match attempt(ep).await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if i + 1 < endpoints.len() {
                    tracing::warn!(mirror = ep.registry(), what, error = %e, "mirror failed, trying the next source");
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
