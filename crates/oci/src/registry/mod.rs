//! Registry access (pull, push, auth) and OCI image layouts. Shared with kiln-warmer.
//! Knows nothing about builds: it moves manifests, configs and blobs between registries,
//! files and layouts, verifying every digest and reading no more than the bounds allow
//! (manifests and configs up to `max_manifest_size`, a blob up to its descriptor's size), and
//! it never logs or reports credentials.

pub mod auth;
pub mod cloud;
pub mod credhelper;
pub mod error;
pub mod keychain;
pub mod layout;
pub mod reference;

mod bounded;
mod diagnose;
mod pull;
mod push;
mod seen;
mod transport;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use oci_spec::image::{ImageConfiguration, ImageManifest};

pub use auth::{Credentials, DockerConfig};
pub use credhelper::HelperSettings;
pub use error::RegistryError;
pub use keychain::Keychain;
pub use layout::{LayoutError, OciLayout};
pub use push::{GrowingBlob, STREAM_PIECE};
pub use reference::{normalize_reference, parse_reference, Reference};
pub use transport::{load_system_certificates, may_fall_back, ClientCert};

/// Platforms are defined in [`crate::platform`]; re-exported where the registry client has always
/// offered them.
pub use crate::platform::Platform;

use error::{Attempt, ErrorContext};
use reference::{is_docker_hub, with_registry};
use transport::{SideSettings, Transport, Transports};

/// The digest helper and OCI media types are defined once, in [`crate::image`].
pub use crate::image::{sha256_digest, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST};
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MEDIA_TYPE_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The longest wait between two attempts of a request, however many retries are allowed.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

/// How to reach registries. `Default` is HTTPS everywhere with verification, no mirrors,
/// no retries (1 s base delay when some are allowed), the host's Linux platform, the usual
/// docker config locations and the default bounds of [`crate::limits`].
///
/// Every request is on one of two sides (see [`Side`]): a push, or a read of a repository in
/// `push_repositories`, is on the push side; every other read (base images, `COPY --from`) is
/// on the pull side. `insecure` weakens the push side only and `insecure_pull` and
/// `skip_tls_verify_pull` the pull side only, as kaniko's flags do.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Plain HTTP to all registries, for the push side (kaniko's `--insecure`).
    pub insecure: bool,
    /// Plain HTTP to all registries, for the pull side (kaniko's `--insecure-pull`).
    pub insecure_pull: bool,
    /// Registries (`host[:port]`) reached over plain HTTP, both sides.
    pub insecure_registries: Vec<String>,
    /// HTTPS without certificate verification for all registries, both sides.
    pub skip_tls_verify: bool,
    /// HTTPS without certificate verification for all registries, pull side only.
    pub skip_tls_verify_pull: bool,
    /// Registries reached over HTTPS without certificate verification, both sides.
    pub skip_tls_verify_registries: Vec<String>,
    /// (registry, PEM file of CA certificates) trusted for that registry in addition to the
    /// system's, both sides (kaniko's `--registry-certificate`). Read by [`Registry::new`].
    pub registry_certificates: Vec<(String, PathBuf)>,
    /// Client certificates presented to one registry each for mutual TLS, both sides
    /// (kaniko's `--registry-client-cert`). Read by [`Registry::new`].
    pub registry_client_certs: Vec<ClientCert>,
    /// Repositories (image references; tag and digest ignored) the build writes to: its
    /// destinations and its layer cache. Reading them is on the push side, as kaniko reads its
    /// cache repository with its push settings (`pkg/cache/cache.go`).
    pub push_repositories: Vec<String>,
    /// Pull-through mirrors for docker.io images (`host[:port][/prefix]`), tried in order
    /// before docker.io itself, like kaniko's `--registry-mirror`.
    pub mirrors: Vec<String>,
    /// Registry remaps for pulls in kaniko's `--registry-map` form,
    /// `original=remap1;remap2` (e.g. `index.docker.io=mirror.gcr.io;other.io/prefix`):
    /// images of `original` are tried on each remap in order, then on `original`. Checked
    /// by [`Registry::new`].
    pub registry_maps: Vec<String>,
    /// An image that has remaps or mirrors is fetched from them only, never from its own
    /// registry (kaniko's `--skip-default-registry-fallback`).
    pub skip_default_registry_fallback: bool,
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
    /// Where the credential helpers the docker config names are looked for, and how they run.
    pub credential_helpers: HelperSettings,
    /// The most bytes read of a manifest, an image index or an image config
    /// (`--max-manifest-size`); `u64::MAX` for no bound.
    pub max_manifest_size: u64,
    /// The largest layer, decompressed (`--max-layer-size`): a layer blob larger than
    /// [`crate::limits::max_compressed_size`] of it is refused before it is downloaded.
    pub max_layer_size: Option<u64>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: false,
            insecure_pull: false,
            insecure_registries: Vec::new(),
            skip_tls_verify: false,
            skip_tls_verify_pull: false,
            skip_tls_verify_registries: Vec::new(),
            registry_certificates: Vec::new(),
            registry_client_certs: Vec::new(),
            push_repositories: Vec::new(),
            mirrors: Vec::new(),
            registry_maps: Vec::new(),
            skip_default_registry_fallback: false,
            push_retries: 0,
            pull_retries: 0,
            retry_base_delay: Duration::from_secs(1),
            platform: Platform::default(),
            docker_config: None,
            credential_helpers: HelperSettings::default(),
            max_manifest_size: crate::limits::DEFAULT_MAX_MANIFEST_SIZE,
            max_layer_size: Some(crate::limits::DEFAULT_MAX_LAYER_SIZE),
        }
    }
}

/// Which settings a request goes with: kaniko's pull flags or its push flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reading images the build does not write: base images, `COPY --from=<image>`.
    Pull,
    /// Writing (destinations, the layer cache), and reading a repository the build writes.
    Push,
}

/// Parses kaniko `--registry-map` values into (normalised original registry, remaps in
/// order); the same original given twice keeps all remaps, in the order given. A value is
/// kaniko's: `ORIG=REMAP` pairs separated by `;` (`a.io=m1;b.io=m2`), an empty value meaning
/// nothing. Kiln also reads an item without `=` as one more remap of the pair before it
/// (`a.io=m1;m2`), which kaniko refuses.
pub fn parse_registry_maps(values: &[String]) -> Result<Vec<(String, Vec<String>)>, RegistryError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for value in values.iter().filter(|v| !v.is_empty()) {
        let invalid = |reason: &str| RegistryError::InvalidOption {
            option: "--registry-map",
            value: value.clone(),
            reason: reason.to_string(),
        };
        let mut current: Option<usize> = None;
        for item in value.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let remap = match item.split_once('=') {
                Some((from, to)) => {
                    let from = auth::normalize_auth_key(from);
                    if from.is_empty() {
                        return Err(invalid("the original registry is empty"));
                    }
                    let i = match out.iter().position(|(f, _)| *f == from) {
                        Some(i) => i,
                        None => {
                            out.push((from, Vec::new()));
                            out.len() - 1
                        }
                    };
                    current = Some(i);
                    to.trim()
                }
                None => item,
            };
            let i =
                current.ok_or_else(|| invalid("expected ORIGINAL=REMAP pairs separated by ;"))?;
            if remap.is_empty() {
                return Err(invalid("no registry to remap to"));
            }
            out[i].1.push(remap.to_string());
        }
        if current.is_none() {
            return Err(invalid("expected ORIGINAL=REMAP pairs separated by ;"));
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
    /// Made by this build (a layer its steps wrote): up to [`push::ASK_FIRST_ABOVE`] bytes it is
    /// uploaded without asking the repository first, like an in-memory blob.
    pub fresh: bool,
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
    /// The clients of the pull side and of the push side (the same ones when both sides have
    /// the same settings).
    pull: Transports,
    push: Transports,
    /// Credentials by registry: the docker config and its helpers, shared with other clients
    /// of the same run.
    keychain: Arc<Keychain>,
    /// `opts.registry_maps`, parsed.
    maps: Vec<(String, Vec<String>)>,
    /// `opts.push_repositories` as (normalised registry, repository).
    push_repos: Vec<(String, String)>,
    /// Authorization for the bounded reads of [`bounded`], by registry and repository.
    tokens: bounded::TokenCache,
    /// Whether a registry that may fall back to plain HTTP did, by host, once decided.
    schemes: tokio::sync::Mutex<HashMap<String, bool>>,
    /// Which repository holds which blob, and which blobs are being sent (see [`seen`]).
    seen: seen::Seen,
}

/// Which kind of request a retry policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Pull,
    Push,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("opts", &self.opts)
            .field("keychain", &self.keychain)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Builds the HTTP clients and loads the docker config.
    pub fn new(opts: RegistryOptions) -> Result<Registry, RegistryError> {
        let keychain = Keychain::load(
            opts.docker_config.as_deref(),
            opts.credential_helpers.clone(),
        )?;
        Self::with_keychain(opts, keychain)
    }

    /// Builds the HTTP clients around a keychain that other clients of the run share, so that
    /// each credential helper is asked once per registry whatever the number of clients
    /// (`opts.docker_config` and `opts.credential_helpers` are the keychain's business then).
    pub fn with_keychain(
        opts: RegistryOptions,
        keychain: Arc<Keychain>,
    ) -> Result<Registry, RegistryError> {
        let maps = parse_registry_maps(&opts.registry_maps)?;
        let pull_settings = SideSettings {
            insecure: opts.insecure_pull,
            skip_tls_verify: opts.skip_tls_verify || opts.skip_tls_verify_pull,
        };
        let push_settings = SideSettings {
            insecure: opts.insecure,
            skip_tls_verify: opts.skip_tls_verify,
        };
        let files = transport::load_files(&opts)?;
        let push = transport::transports(&opts, &push_settings, &files)?;
        let pull = if pull_settings == push_settings {
            push.clone()
        } else {
            transport::transports(&opts, &pull_settings, &files)?
        };
        let push_repos = opts
            .push_repositories
            .iter()
            .filter_map(|r| parse_reference(r).ok())
            .map(|r| {
                (
                    auth::normalize_auth_key(r.registry()),
                    r.repository().to_string(),
                )
            })
            .collect();
        Ok(Registry {
            opts,
            pull,
            push,
            keychain,
            maps,
            push_repos,
            tokens: bounded::TokenCache::default(),
            schemes: Default::default(),
            seen: Default::default(),
        })
    }

    /// The options this registry was created with.
    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The side of a request for `r`: every push, and every read of a repository the build
    /// writes, is on the push side.
    fn side(&self, r: &Reference, direction: Direction) -> Side {
        let host = auth::normalize_auth_key(r.registry());
        let written = self
            .push_repos
            .iter()
            .any(|(reg, repo)| *reg == host && repo == r.repository());
        if direction == Direction::Push || written {
            Side::Push
        } else {
            Side::Pull
        }
    }

    async fn client_for(&self, r: &Reference, side: Side) -> Result<&Client, RegistryError> {
        Ok(&self.transport_for(r, side).await?.oci)
    }

    /// The credentials for `r`'s registry; the first call for a registry whose credentials
    /// come from a credential helper runs it.
    async fn registry_auth(&self, r: &Reference) -> Result<RegistryAuth, RegistryError> {
        Ok(match self.keychain.credentials_for(r.registry()).await? {
            Some(c) => c.to_registry_auth(),
            None => RegistryAuth::Anonymous,
        })
    }

    /// The client for `r` on `side`, with the credentials for `r`'s registry handed to it.
    /// oci-client then runs the token or basic flow on each request and caches tokens per
    /// repository and operation; a failed token request surfaces as a 401 on the request
    /// itself, classified there. An open registry reached anonymously gets no credentials at
    /// all (see [`bounded::Http::open`]), so oci-client sends its requests without asking
    /// `/v2/` for a challenge first.
    async fn prepared(&self, r: &Reference, side: Side) -> Result<&Client, RegistryError> {
        let transport = self.transport_for(r, side).await?;
        let auth = self.registry_auth(r).await?;
        if matches!(auth, RegistryAuth::Anonymous)
            && transport.http.open(r.resolve_registry()).await
        {
            return Ok(&transport.oci);
        }
        transport
            .oci
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        Ok(&transport.oci)
    }

    fn ctx<'a>(&'a self, ep: &'a Reference, reference: &'a str, what: &'a str) -> ErrorContext<'a> {
        ErrorContext {
            registry: ep.registry(),
            reference,
            what,
            config: self.keychain.describe_for(ep.registry()),
            secrets: self.keychain.secrets(),
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
                        return Err(self.explain(error).await);
                    }
                    if done > retries {
                        let error = ctx.gave_up(error, done, direction == Direction::Push);
                        return Err(self.explain(error).await);
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
    /// images the mirrors, then the registry itself, unless there were remaps or mirrors and
    /// `skip_default_registry_fallback` is set.
    fn endpoints(&self, r: &Reference) -> Vec<Reference> {
        let mut out = Vec::new();
        let host = auth::normalize_auth_key(r.registry());
        for (_, remaps) in self.maps.iter().filter(|(from, _)| *from == host) {
            out.extend(remaps.iter().map(|m| with_registry(r, m)));
        }
        if is_docker_hub(r) {
            out.extend(self.opts.mirrors.iter().map(|m| with_registry(r, m)));
        }
        if out.is_empty() || !self.opts.skip_default_registry_fallback {
            out.push(r.clone());
        }
        out
    }
}

/// The wait before retry `n` (0-based): `base * 2^n`, at most [`MAX_RETRY_DELAY`].
fn retry_delay(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .min(MAX_RETRY_DELAY)
}

/// The media type of a manifest document: its `mediaType` field, or inferred from its
/// shape when absent (OCI allows omitting it).
pub(crate) fn sniff_media_type(bytes: &[u8]) -> String {
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
        // kaniko's form: pairs separated by `;`, the same original again adding a remap.
        let maps =
            parse_registry_maps(&["a.io=m1;b.io=m2;a.io=m3".to_string(), String::new()]).unwrap();
        assert_eq!(
            maps,
            vec![
                ("a.io".to_string(), vec!["m1".to_string(), "m3".to_string()]),
                ("b.io".to_string(), vec!["m2".to_string()]),
            ]
        );
        for bad in ["nothing", "=x", "a.io=", "a.io=;", ";", "m1;a.io=m2"] {
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
