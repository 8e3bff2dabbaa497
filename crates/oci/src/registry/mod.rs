//! Registry access (pull, push, auth) and OCI image layouts. Shared with kiln-warmer.
//! Knows nothing about builds: it moves manifests, configs and blobs between registries,
//! files and layouts, verifying every digest, and it never logs or reports credentials.

pub mod auth;
pub mod error;
pub mod layout;
pub mod reference;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use auth::{Credentials, DockerConfig};
pub use error::RegistryError;
pub use layout::{LayoutError, OciLayout};
pub use reference::{normalize_reference, parse_reference, Reference};

/// Platforms are defined in [`crate::platform`]; re-exported where the registry client has always
/// offered them.
pub use crate::platform::Platform;

use error::{Attempt, ErrorContext};
use reference::{is_docker_hub, sha256_hex, with_digest, with_registry};

/// The digest helper and OCI media types are defined once, in [`crate::image`].
pub use crate::image::{sha256_digest, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST};
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MEDIA_TYPE_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

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

/// Size of the pieces a file is read in when uploading; memory per upload stays at this.
const UPLOAD_READ_CHUNK: usize = 1 << 20;

/// How many blobs are uploaded at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// The longest wait between two attempts of a request, however many retries are allowed.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How to reach registries. `Default` is HTTPS everywhere with verification, no mirrors,
/// no retries (1 s base delay when some are allowed), the host's Linux platform and the
/// usual docker config locations.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Plain HTTP to all registries.
    pub insecure: bool,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// HTTPS without certificate verification for all registries.
    pub skip_tls_verify: bool,
    /// Registries reached over HTTPS without certificate verification.
    pub skip_tls_verify_registries: Vec<String>,
    /// Pull-through mirrors for docker.io images (`host[:port][/prefix]`), tried in order
    /// before docker.io itself, like kaniko's `--registry-mirror`.
    pub mirrors: Vec<String>,
    /// Registry remaps for pulls in kaniko's `--registry-map` form,
    /// `original=remap1;remap2` (e.g. `index.docker.io=mirror.gcr.io;other.io/prefix`):
    /// images of `original` are tried on each remap in order, then on `original`. Checked
    /// by [`Registry::new`].
    pub registry_maps: Vec<String>,
    /// Retries of each push request (blob check, mount, upload, manifest) after a transient
    /// failure: 5xx, 408, 429, refused or reset connections, timeouts, truncated bodies.
    /// kaniko's `--push-retry`; 0 tries once. 4xx answers are never retried.
    pub push_retries: u32,
    /// The same for pulls (manifests, configs, blobs): kaniko's `--image-download-retry`.
    pub pull_retries: u32,
    /// Wait before the first retry; it doubles for each further one, up to 30 s.
    pub retry_base_delay: Duration,
    /// The platform picked from image indexes.
    pub platform: Platform,
    /// An explicit docker config.json; else `$DOCKER_CONFIG/config.json`,
    /// `~/.docker/config.json`, `/kaniko/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: false,
            insecure_registries: Vec::new(),
            skip_tls_verify: false,
            skip_tls_verify_registries: Vec::new(),
            mirrors: Vec::new(),
            registry_maps: Vec::new(),
            push_retries: 0,
            pull_retries: 0,
            retry_base_delay: Duration::from_secs(1),
            platform: Platform::default(),
            docker_config: None,
        }
    }
}

/// Parses kaniko `--registry-map` values into (normalised original registry, remaps in
/// order); the same original given twice keeps all remaps, in the order given.
pub fn parse_registry_maps(values: &[String]) -> Result<Vec<(String, Vec<String>)>, RegistryError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for value in values {
        let invalid = |reason: &str| RegistryError::InvalidOption {
            option: "--registry-map",
            value: value.clone(),
            reason: reason.to_string(),
        };
        let (from, to) = value
            .split_once('=')
            .ok_or_else(|| invalid("expected original=remap1;remap2"))?;
        let from = auth::normalize_auth_key(from);
        if from.is_empty() {
            return Err(invalid("the original registry is empty"));
        }
        let remaps: Vec<String> = to
            .split(';')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if remaps.is_empty() {
            return Err(invalid("no registry to remap to"));
        }
        match out.iter_mut().find(|(f, _)| *f == from) {
            Some((_, existing)) => existing.extend(remaps),
            None => out.push((from, remaps)),
        }
    }
    Ok(out)
}

/// A pulled image: its manifest (for one platform) and config, both verified.
#[derive(Debug, Clone)]
pub struct RemoteImage {
    /// The normalised reference that was asked for (e.g. `docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of `manifest_bytes` (the platform manifest, not the index).
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    /// The manifest exactly as served.
    pub manifest_bytes: Vec<u8>,
    /// The manifest's media type (OCI or Docker v2 schema 2).
    pub manifest_media_type: String,
    /// Digest of the index or manifest list the manifest was picked from, if any.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
}

/// A blob to push.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>` of the content.
    pub digest: String,
    pub size: u64,
    pub source: BlobSource,
    /// A repository (an image reference; tag or digest ignored) known to hold this blob,
    /// e.g. the base image a layer came from. When it is on the destination's registry the
    /// blob is mounted from it instead of uploaded; the upload is the fallback.
    pub mount_from: Option<String>,
}

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// Streamed from the file when uploaded; never read whole into memory.
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// A registry client: one per build (or warm), holding credentials and token caches.
pub struct Registry {
    opts: RegistryOptions,
    /// Verifies TLS certificates, unless `skip_tls_verify` turns that off everywhere.
    client: Client,
    /// For registries in `skip_tls_verify_registries`: oci-client has one certificate policy
    /// per client, so those need a second one. Made only when some registry is listed, since
    /// each client loads and parses the system's CA certificates when it is made.
    unverified: Option<Client>,
    auth: DockerConfig,
    config_desc: String,
    secrets: Vec<String>,
    /// `opts.registry_maps`, parsed.
    maps: Vec<(String, Vec<String>)>,
}

/// Which kind of request a retry policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Pull,
    Push,
}

/// What happened to one blob of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobOutcome {
    Present,
    Mounted,
    Uploaded,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("opts", &self.opts)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Builds the HTTP clients and loads the docker config.
    pub fn new(opts: RegistryOptions) -> Result<Registry, RegistryError> {
        let auth = DockerConfig::load(opts.docker_config.as_deref())?;
        let maps = parse_registry_maps(&opts.registry_maps)?;
        let protocol = if opts.insecure {
            ClientProtocol::Http
        } else {
            let mut list: Vec<String> = opts
                .insecure_registries
                .iter()
                .map(|r| auth::normalize_auth_key(r))
                .collect();
            // oci-client addresses Docker Hub as index.docker.io.
            if list.iter().any(|r| r == "docker.io") {
                list.push("index.docker.io".to_string());
            }
            ClientProtocol::HttpsExcept(list)
        };
        let make = |accept_invalid: bool| -> Result<Client, RegistryError> {
            let config = ClientConfig {
                protocol: protocol.clone(),
                accept_invalid_certificates: accept_invalid,
                // Uploads are one streamed PUT: a stream cannot be replayed into the
                // chunked-then-monolithic fallback, and a single request is what every
                // registry supports.
                use_monolithic_push: true,
                // Index resolution is done here, against the configured platform.
                platform_resolver: None,
                connect_timeout: Some(std::time::Duration::from_secs(30)),
                read_timeout: Some(std::time::Duration::from_secs(300)),
                user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
                ..ClientConfig::default()
            };
            Client::try_from(config).map_err(|e| RegistryError::Client {
                detail: e.to_string(),
            })
        };
        let client = make(opts.skip_tls_verify)?;
        let unverified = if opts.skip_tls_verify || opts.skip_tls_verify_registries.is_empty() {
            None
        } else {
            Some(make(true)?)
        };
        let config_desc = auth.describe();
        let secrets = auth.all_secrets();
        Ok(Registry {
            opts,
            client,
            unverified,
            auth,
            config_desc,
            secrets,
            maps,
        })
    }

    /// The options this registry was created with.
    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    fn client_for(&self, r: &Reference) -> &Client {
        let host = auth::normalize_auth_key(r.registry());
        match &self.unverified {
            Some(unverified)
                if self
                    .opts
                    .skip_tls_verify_registries
                    .iter()
                    .any(|s| auth::normalize_auth_key(s) == host) =>
            {
                unverified
            }
            _ => &self.client,
        }
    }

    fn registry_auth(&self, r: &Reference) -> RegistryAuth {
        match self.auth.credentials_for(r.registry()) {
            Some(c) => c.to_registry_auth(),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Hands the credentials for `r`'s registry to the client. oci-client then runs the
    /// token or basic flow on each request and caches tokens per repository and operation;
    /// a failed token request surfaces as a 401 on the request itself, classified there.
    async fn prepare(&self, client: &Client, r: &Reference) {
        let auth = self.registry_auth(r);
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
    }

    fn ctx<'a>(&'a self, ep: &'a Reference, reference: &'a str, what: &'a str) -> ErrorContext<'a> {
        ErrorContext {
            registry: ep.registry(),
            reference,
            what,
            config: &self.config_desc,
            secrets: &self.secrets,
            push: false,
        }
    }

    fn push_ctx<'a>(
        &'a self,
        ep: &'a Reference,
        reference: &'a str,
        what: &'a str,
    ) -> ErrorContext<'a> {
        ErrorContext {
            push: true,
            ..self.ctx(ep, reference, what)
        }
    }

    /// Runs `op` until it succeeds, fails for good (4xx, bad content) or has used the
    /// retries allowed for `direction`, waiting `retry_base_delay * 2^n` (at most 30 s)
    /// before retry n+1. Each attempt must start over from nothing (a fresh request, a
    /// fresh temporary file), which is why `op` is a closure.
    async fn retrying<T, F, Fut>(
        &self,
        direction: Direction,
        ctx: &ErrorContext<'_>,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let retries = match direction {
            Direction::Pull => self.opts.pull_retries,
            Direction::Push => self.opts.push_retries,
        };
        let mut done = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Attempt { error, transient }) => {
                    done += 1;
                    if !transient {
                        return Err(error);
                    }
                    if done > retries {
                        return Err(ctx.gave_up(error, done, direction == Direction::Push));
                    }
                    let delay = retry_delay(self.opts.retry_base_delay, done - 1);
                    tracing::warn!(
                        registry = ctx.registry,
                        what = ctx.what,
                        attempt = done,
                        retries,
                        delay_ms = delay.as_millis() as u64,
                        error = %error,
                        "transient registry failure, retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Where to fetch `r` from: its `--registry-map` remaps in order, then for Docker Hub
    /// images the mirrors, then the registry itself.
    fn endpoints(&self, r: &Reference) -> Vec<Reference> {
        let mut out = Vec::new();
        let host = auth::normalize_auth_key(r.registry());
        for (_, remaps) in self.maps.iter().filter(|(from, _)| *from == host) {
            out.extend(remaps.iter().map(|m| with_registry(r, m)));
        }
        if is_docker_hub(r) {
            out.extend(self.opts.mirrors.iter().map(|m| with_registry(r, m)));
        }
        out.push(r.clone());
        out
    }

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

    /// Pushes an image: every blob the repository does not have yet (checked with HEAD;
    /// mounted from `Blob::mount_from` when that repository is on the same registry, else
    /// uploaded), then `manifest_bytes` exactly as given, only once every blob the manifest
    /// names is confirmed in the repository, so a push that fails half-way never leaves a
    /// manifest pointing at a missing blob. Blobs named by the manifest but not in `blobs`
    /// must already exist there. Each request is retried `push_retries` times on transient
    /// failures. Returns the manifest digest (`sha256:` of `manifest_bytes`).
    pub async fn push_image(
        &self,
        reference: &str,
        blobs: &[Blob],
        manifest_bytes: &[u8],
        manifest_media_type: &str,
    ) -> Result<String, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let manifest_digest = sha256_digest(manifest_bytes);
        if let Some(d) = r.digest() {
            if d != manifest_digest {
                return Err(self
                    .push_ctx(&r, &normalized, "manifest")
                    .mismatch(d, &manifest_digest));
            }
        }
        for b in blobs {
            if sha256_hex(&b.digest).is_none() {
                return Err(RegistryError::InvalidBlob {
                    blob: b.digest.clone(),
                    detail: format!("not a sha256:<64 hex> digest (pushing {normalized})"),
                });
            }
        }
        let client = self.client_for(&r);
        self.prepare(client, &r).await;

        // Any failure here returns before the manifest is sent; the blobs still in flight
        // are dropped with the stream.
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(blobs.iter())
            .map(|b| self.push_blob(client, &r, &normalized, b))
            .buffered(UPLOAD_CONCURRENCY)
            .try_collect()
            .await?;
        let count = |o: BlobOutcome| outcomes.iter().filter(|x| **x == o).count();
        tracing::info!(
            reference = %normalized,
            uploaded = count(BlobOutcome::Uploaded),
            mounted = count(BlobOutcome::Mounted),
            present = count(BlobOutcome::Present),
            "blobs pushed"
        );

        // The registry would refuse a manifest naming a missing blob, but saying which
        // blob is missing is more useful than its error. Checked several at a time; the
        // first missing one in manifest order is reported.
        let unlisted: Vec<String> = manifest_blob_digests(manifest_bytes)
            .into_iter()
            .filter(|d| !blobs.iter().any(|b| b.digest == *d))
            .collect();
        let checks: Vec<Result<(), RegistryError>> = futures_util::stream::iter(unlisted)
            .map(|d| {
                let (r, normalized) = (&r, &normalized);
                async move {
                    let what = format!("blob {d} (named by the manifest but not given)");
                    let ctx = self.push_ctx(r, normalized, &what);
                    let present = self
                        .retrying(Direction::Push, &ctx, || async {
                            client.blob_exists(r, &d).await.map_err(|e| ctx.attempt(e))
                        })
                        .await?;
                    if present {
                        Ok(())
                    } else {
                        Err(RegistryError::NotFound {
                            registry: r.registry().to_string(),
                            reference: normalized.clone(),
                            what,
                        })
                    }
                }
            })
            .buffered(UPLOAD_CONCURRENCY)
            .collect()
            .await;
        checks.into_iter().collect::<Result<(), RegistryError>>()?;

        let ctx = self.push_ctx(&r, &normalized, "manifest");
        let invalid_type = || {
            ctx.other(format!(
                "invalid manifest media type {manifest_media_type:?}"
            ))
        };
        self.retrying(Direction::Push, &ctx, || async {
            let content_type = manifest_media_type
                .parse()
                .map_err(|_| Attempt::fatal(invalid_type()))?;
            client
                .push_manifest_raw(&r, manifest_bytes.to_vec(), content_type)
                .await
                .map_err(|e| ctx.attempt(e))
        })
        .await?;
        tracing::info!(reference = %normalized, digest = %manifest_digest, "pushed manifest");
        Ok(manifest_digest)
    }

    /// Uploads one blob to the repository of `reference` before the image is pushed (a layer
    /// sent while later build steps run). [`Registry::push_image`] then finds it there with one
    /// HEAD request; a failure here only means that push uploads it itself.
    pub async fn push_blob_ahead(&self, reference: &str, blob: &Blob) -> Result<(), RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let client = self.client_for(&r);
        self.prepare(client, &r).await;
        self.push_blob(client, &r, &normalized, blob)
            .await
            .map(|_| ())
    }

    /// Makes one blob present in the repository of `r`: nothing to do when it is there,
    /// else a cross-repository mount when possible, else an upload.
    async fn push_blob(
        &self,
        client: &Client,
        r: &Reference,
        normalized: &str,
        blob: &Blob,
    ) -> Result<BlobOutcome, RegistryError> {
        let what = format!("blob {}", blob.digest);
        let ctx = self.push_ctx(r, normalized, &what);
        let exists = self
            .retrying(Direction::Push, &ctx, || async {
                client
                    .blob_exists(r, &blob.digest)
                    .await
                    .map_err(|e| ctx.attempt(e))
            })
            .await;
        match exists {
            Ok(true) => {
                tracing::debug!(blob = %blob.digest, "blob already in the repository, skipped");
                return Ok(BlobOutcome::Present);
            }
            Ok(false) => {}
            // A token scoped for push may not allow HEAD on a repository that does not
            // exist yet; uploading is then the right move.
            Err(RegistryError::Unauthorized { .. } | RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(source) = self.mount_source(r, blob) {
            let mounted = self
                .retrying(Direction::Push, &ctx, || async {
                    client
                        .mount_blob(r, &source, &blob.digest)
                        .await
                        .map_err(|e| ctx.attempt(e))
                })
                .await;
            match mounted {
                Ok(()) => {
                    tracing::debug!(blob = %blob.digest, from = source.repository(), "mounted blob");
                    return Ok(BlobOutcome::Mounted);
                }
                // 202 (the registry started an upload instead: no access to the source,
                // or it does not have the blob) and every other refusal fall back to an
                // upload, which reports real problems itself.
                Err(e) => {
                    tracing::debug!(blob = %blob.digest, from = source.repository(), error = %e, "mount refused, uploading");
                }
            }
        }
        let invalid = |detail: String| RegistryError::InvalidBlob {
            blob: blob.digest.clone(),
            detail,
        };
        match &blob.source {
            BlobSource::Bytes(data) => {
                if data.len() as u64 != blob.size {
                    return Err(invalid(format!(
                        "{} bytes given but size says {}",
                        data.len(),
                        blob.size
                    )));
                }
                let actual = sha256_digest(data);
                if actual != blob.digest {
                    return Err(invalid(format!("the given bytes hash to {actual}")));
                }
            }
            BlobSource::File(path) => {
                let len = std::fs::metadata(path)
                    .map_err(|e| RegistryError::io("cannot stat blob file", path, e))?
                    .len();
                if len != blob.size {
                    return Err(invalid(format!(
                        "{} has {len} bytes but size says {}",
                        path.display(),
                        blob.size
                    )));
                }
            }
        }
        // Every attempt starts a new upload session with a fresh stream from the start of
        // the source. The registry checks the digest of what it receives when the upload
        // is committed, so the file is not hashed a second time here.
        self.retrying(Direction::Push, &ctx, || async {
            match &blob.source {
                BlobSource::Bytes(data) => client
                    .push_blob_stream(r, bytes_stream(data.clone()), &blob.digest, Some(blob.size))
                    .await
                    .map_err(|e| ctx.attempt(e)),
                BlobSource::File(path) => {
                    let file = tokio::fs::File::open(path).await.map_err(|e| {
                        Attempt::fatal(RegistryError::io("cannot open blob file", path, e))
                    })?;
                    client
                        .push_blob_stream(r, file_stream(file), &blob.digest, Some(blob.size))
                        .await
                        .map_err(|e| ctx.attempt(e))
                }
            }
        })
        .await?;
        tracing::debug!(blob = %blob.digest, bytes = blob.size, "uploaded blob");
        Ok(BlobOutcome::Uploaded)
    }

    /// The repository to mount `blob` from: its `mount_from` when that parses, is on the
    /// same registry as `r` and is another repository.
    fn mount_source(&self, r: &Reference, blob: &Blob) -> Option<Reference> {
        let source = parse_reference(blob.mount_from.as_deref()?).ok()?;
        let same_registry =
            auth::normalize_auth_key(source.registry()) == auth::normalize_auth_key(r.registry());
        (same_registry && source.repository() != r.repository()).then_some(source)
    }
}

/// The wait before retry `n` (0-based): `base * 2^n`, at most [`MAX_RETRY_DELAY`].
fn retry_delay(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .min(MAX_RETRY_DELAY)
}

/// The media type of a manifest document: its `mediaType` field, or inferred from its
/// shape when absent (OCI allows omitting it).
fn sniff_media_type(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<i64>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let Ok(p) = serde_json::from_slice::<Probe>(bytes) else {
        return "unparseable manifest".to_string();
    };
    if let Some(m) = p.media_type.filter(|m| !m.is_empty()) {
        return m;
    }
    match (p.schema_version, p.manifests, p.config) {
        (Some(1), _, _) => MEDIA_TYPE_DOCKER_SCHEMA1.to_string(),
        (_, Some(_), _) => MEDIA_TYPE_OCI_INDEX.to_string(),
        (_, _, Some(_)) => MEDIA_TYPE_OCI_MANIFEST.to_string(),
        _ => "unknown manifest type".to_string(),
    }
}

/// Config and layer digests named by an image manifest (empty for other documents).
fn manifest_blob_digests(bytes: &[u8]) -> Vec<String> {
    let media = sniff_media_type(bytes);
    if media != MEDIA_TYPE_OCI_MANIFEST && media != MEDIA_TYPE_DOCKER_MANIFEST {
        return Vec::new();
    }
    match serde_json::from_slice::<ImageManifest>(bytes) {
        Ok(m) => std::iter::once(m.config().digest().to_string())
            .chain(m.layers().iter().map(|l| l.digest().to_string()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

// The upload streams are generic over the byte type so that oci-client's `bytes::Bytes`
// is inferred at the call site without a direct dependency on the `bytes` crate.
fn bytes_stream<B: From<Vec<u8>> + Send + 'static>(
    data: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<B, OciDistributionError>> + Send + 'static {
    futures_util::stream::once(async move { Ok(B::from(data)) })
}

fn file_stream<B: From<Vec<u8>> + Send + 'static>(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<B, OciDistributionError>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; UPLOAD_READ_CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((B::from(buf), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_and_are_capped() {
        let base = Duration::from_secs(1);
        let d: Vec<u64> = (0..7).map(|n| retry_delay(base, n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(base, 200), MAX_RETRY_DELAY);
    }

    #[test]
    fn registry_maps_parse_like_kaniko() {
        let maps = parse_registry_maps(&[
            "index.docker.io=mirror.gcr.io;other.io/hub".to_string(),
            "https://Quay.io/=q.local".to_string(),
            "docker.io=third.io".to_string(),
        ])
        .unwrap();
        assert_eq!(
            maps,
            vec![
                (
                    "docker.io".to_string(),
                    vec![
                        "mirror.gcr.io".into(),
                        "other.io/hub".into(),
                        "third.io".into()
                    ]
                ),
                ("quay.io".to_string(), vec!["q.local".to_string()]),
            ]
        );
        for bad in ["nothing", "=x", "a.io=", "a.io=;"] {
            assert!(parse_registry_maps(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn sniffs_media_types() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#),
            MEDIA_TYPE_OCI_INDEX
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"config":{}}"#),
            MEDIA_TYPE_OCI_MANIFEST
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":1}"#),
            MEDIA_TYPE_DOCKER_SCHEMA1
        );
    }
}
