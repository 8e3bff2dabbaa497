//! The one error type of registry access, and the translation of oci-client failures into it.
//! It must never carry credentials: every message is built from registry names, references,
//! digests and status codes only, and free text from servers goes through [`redact`].

use std::path::PathBuf;

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// The texts by which kaniko v1.24 (`pkg/executor/push.go`, `errTagImmutable`) knows a push
/// refused because the tag is immutable: Artifact Registry's and ECR's messages.
pub const IMMUTABLE_TAG_MESSAGES: &[&str] = &[
    "The repository has enabled tag immutability",
    "cannot be overwritten because the repository is immutable",
];

/// What went wrong while talking to a registry or reading a docker config.
///
/// Each message names the registry and reference and says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}; use a name like registry.example.com/team/app:tag or app@sha256:<64 hex>")]
    InvalidReference { reference: String, reason: String },

    #[error("unauthorized for {reference} on registry {registry}: check the credentials for {registry} ({config})")]
    Unauthorized {
        registry: String,
        reference: String,
        config: String,
    },

    #[error("access to {reference} denied by registry {registry}: the account ({config}) may not {action} this repository; check its permissions on {registry} and the image name")]
    Denied {
        registry: String,
        reference: String,
        config: String,
        /// "pull from" or "push to".
        action: &'static str,
    },

    #[error("{what} for {reference} failed on registry {registry} after {attempts} attempt(s): {detail}; the registry or the network failed transiently: try again, or allow retries with {}=N", retry_flag(*.push))]
    Transient {
        registry: String,
        reference: String,
        what: String,
        attempts: u32,
        detail: String,
        /// A push (`--push-retry`) rather than a pull (`--image-download-retry`).
        push: bool,
    },

    #[error("invalid {option} value {value:?}: {reason}")]
    InvalidOption {
        option: &'static str,
        value: String,
        reason: String,
    },

    #[error(
        "{what} not found for {reference} on registry {registry}: check the image name and tag"
    )]
    NotFound {
        registry: String,
        reference: String,
        what: String,
    },

    #[error("cannot reach registry {registry} for {reference} ({detail}): check the address; for a plain-HTTP registry use --insecure-registry={registry}, for a self-signed certificate --skip-tls-verify-registry={registry}")]
    Unreachable {
        registry: String,
        reference: String,
        detail: String,
    },

    #[error(
        "TLS with registry {registry} failed for {reference} ({detail}): {}",
        tls_advice(registry, detail)
    )]
    Tls {
        registry: String,
        reference: String,
        detail: String,
    },

    #[error("digest mismatch for {what} of {reference} from registry {registry}: expected {expected}, got {actual}; the registry or a proxy served corrupted content, retry or check the registry's storage")]
    DigestMismatch {
        registry: String,
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error("unsupported media type {media_type} for {reference} on registry {registry}: kiln reads Docker v2 schema 2 and OCI manifests, indexes and configs only")]
    UnsupportedMediaType {
        registry: String,
        reference: String,
        media_type: String,
    },

    #[error("platform {wanted} not found in the image index of {reference} on registry {registry}; available: {available}; choose one of these with --custom-platform (or a stage's FROM --platform)")]
    PlatformNotFound {
        registry: String,
        reference: String,
        wanted: String,
        available: String,
    },

    #[error("{what} of {reference} from registry {registry} is larger than {} (the {flag} bound){}: refusing to read it; the registry is broken or hostile, or raise {flag} if the image is genuine", crate::limits::human_size(*limit), declared.map(|n| format!("; it says {n} bytes")).unwrap_or_default())]
    TooLarge {
        registry: String,
        reference: String,
        what: String,
        limit: u64,
        /// The size the registry or the descriptor announced, when one did.
        declared: Option<u64>,
        flag: &'static str,
    },

    #[error("{what} of {reference} from registry {registry} is {} its descriptor's {expected} bytes{}: the registry serves other content than the manifest describes; refusing it", if *longer { "longer than" } else { "shorter than" }, if *longer { String::new() } else { format!(" ({actual} bytes)") })]
    SizeMismatch {
        registry: String,
        reference: String,
        what: String,
        expected: u64,
        /// Bytes received (for a longer blob: as far as the read went, past `expected`).
        actual: u64,
        longer: bool,
    },

    #[error("invalid {what} for {reference} from registry {registry}: {detail}")]
    InvalidContent {
        registry: String,
        reference: String,
        what: String,
        detail: String,
    },

    /// The registry refuses to overwrite a tag of an immutable repository (kaniko's
    /// `--push-ignore-immutable-tag-errors` recognises it by [`IMMUTABLE_TAG_MESSAGES`]).
    #[error("registry {registry} refused to push {reference}: the tag exists and the repository's tags are immutable ({detail}); push a new tag, or pass --push-ignore-immutable-tag-errors to count this as pushed")]
    ImmutableTag {
        registry: String,
        reference: String,
        detail: String,
    },

    #[error("registry {registry} failed a request for {reference}: {detail}")]
    Registry {
        registry: String,
        reference: String,
        detail: String,
    },

    #[error("cannot read docker config {path}: {detail}; fix the file or point --docker-config / $DOCKER_CONFIG elsewhere")]
    DockerConfig { path: PathBuf, detail: String },

    /// A credential helper gave no answer (boxed: the rest of this enum is smaller).
    #[error(transparent)]
    CredentialHelper(Box<CredentialHelperError>),

    #[error("invalid blob {blob}: {detail}")]
    InvalidBlob { blob: String, detail: String },

    #[error("cannot create the HTTP client: {detail}")]
    Client { detail: String },

    #[error(transparent)]
    Layout(#[from] super::layout::LayoutError),

    #[error("{action} {path}: {source}; check that the directory exists, is writable and has free space")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a credential helper gave no credentials for a registry.
#[derive(Debug, thiserror::Error)]
#[error("credential helper docker-credential-{helper} ({source_desc}) gave no credentials for registry {registry}: {detail}; check that the helper is installed, configured and allowed to get credentials for {registry} (run `echo {registry_key} | docker-credential-{helper} get` where the build runs), or change the docker config")]
pub struct CredentialHelperError {
    /// `<name>` of `docker-credential-<name>`.
    pub helper: String,
    pub registry: String,
    /// What was sent to the helper: the registry's key in the docker config.
    pub registry_key: String,
    /// Where it was named: "credHelpers in docker config /path/config.json" or "credsStore in …".
    pub source_desc: String,
    /// Why: never the helper's stdout.
    pub detail: String,
}

impl RegistryError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        RegistryError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Whether a failure's text (its whole error chain) is rustls refusing the server's certificate
/// or the server refusing the connection at the TLS level (an alert: typically no, or an
/// unaccepted, client certificate). Neither gets better by retrying.
pub(crate) fn is_tls_failure(detail: &str) -> bool {
    detail.contains("invalid peer certificate") || detail.contains("received fatal alert")
}

/// What to do about a TLS failure, from its text.
fn tls_advice(registry: &str, detail: &str) -> String {
    if detail.contains("invalid peer certificate") {
        format!("the registry's certificate is not trusted: pass the CA that issued it with --registry-certificate={registry}=/path/to/ca.pem (PEM), or skip verification with --skip-tls-verify-registry={registry}")
    } else {
        format!("the registry refused the TLS connection, most likely for want of an accepted client certificate: pass one with --registry-client-cert={registry}=/path/to/cert.pem,/path/to/key.pem")
    }
}

fn retry_flag(push: bool) -> &'static str {
    if push {
        "--push-retry"
    } else {
        "--image-download-retry"
    }
}

/// The outcome of one failed attempt of a request: the error, and whether trying again
/// may succeed (5xx, 408, 429, refused or cut connections, timeouts, truncated bodies).
#[derive(Debug)]
pub(crate) struct Attempt {
    pub error: RegistryError,
    pub transient: bool,
}

impl Attempt {
    pub(crate) fn transient(error: RegistryError) -> Attempt {
        Attempt {
            error,
            transient: true,
        }
    }

    pub(crate) fn fatal(error: RegistryError) -> Attempt {
        Attempt {
            error,
            transient: false,
        }
    }
}

/// Whether an oci-client failure is worth retrying. 4xx answers (bad credentials, denied,
/// not found) are final, except 408 and 429 which ask the client to come back.
pub(crate) fn is_transient(err: &OciDistributionError) -> bool {
    let status_transient = |code: u16| code >= 500 || code == 408 || code == 429;
    match err {
        OciDistributionError::ServerError { code, .. } => status_transient(*code),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Toomanyrequests)),
        OciDistributionError::RequestError(e) => match e.status() {
            Some(s) => status_transient(s.as_u16()),
            None if is_tls_failure(&error_chain(e)) => false,
            None => {
                e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()
            }
        },
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// Where a failing request went; used to build errors from oci-client failures.
pub(crate) struct ErrorContext<'a> {
    pub registry: &'a str,
    pub reference: &'a str,
    /// What was being fetched or pushed ("manifest", "blob sha256:…", "config").
    pub what: &'a str,
    /// Where the registry's credentials came from, for the "check your credentials" hint.
    pub config: String,
    /// Secrets that must not leak into a message even if a server echoes them.
    pub secrets: &'a Secrets,
    /// Whether the request is part of a push (for "may not push to" advice).
    pub push: bool,
}

impl ErrorContext<'_> {
    fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.to_string(),
            reference: self.reference.to_string(),
            config: self.config.clone(),
        }
    }

    fn not_found(&self) -> RegistryError {
        RegistryError::NotFound {
            registry: self.registry.to_string(),
            reference: self.reference.to_string(),
            what: self.what.to_string(),
        }
    }

    fn denied(&self) -> RegistryError {
        RegistryError::Denied {
            registry: self.registry.to_string(),
            reference: self.reference.to_string(),
            config: self.config.clone(),
            action: if self.push { "push to" } else { "pull from" },
        }
    }

    /// Classifies one failed attempt: the user-facing error and whether to retry.
    pub(crate) fn attempt(&self, err: OciDistributionError) -> Attempt {
        Attempt {
            transient: is_transient(&err),
            error: self.map(err),
        }
    }

    /// The error reported once a transient failure has used up its retries: connection
    /// problems keep their "cannot reach" advice, the rest say how often it was tried.
    pub(crate) fn gave_up(&self, error: RegistryError, attempts: u32, push: bool) -> RegistryError {
        match error {
            RegistryError::Registry { detail, .. } => RegistryError::Transient {
                registry: self.registry.to_string(),
                reference: self.reference.to_string(),
                what: self.what.to_string(),
                attempts,
                detail,
                push,
            },
            other => other,
        }
    }

    pub(crate) fn other(&self, detail: impl AsRef<str>) -> RegistryError {
        RegistryError::Registry {
            registry: self.registry.to_string(),
            reference: self.reference.to_string(),
            detail: self.secrets.redact(detail.as_ref()),
        }
    }

    pub(crate) fn too_large(
        &self,
        limit: u64,
        declared: Option<u64>,
        flag: &'static str,
    ) -> RegistryError {
        RegistryError::TooLarge {
            registry: self.registry.to_string(),
            reference: self.reference.to_string(),
            what: self.what.to_string(),
            limit,
            declared,
            flag,
        }
    }

    pub(crate) fn size_mismatch(&self, expected: u64, actual: u64) -> RegistryError {
        RegistryError::SizeMismatch {
            registry: self.registry.to_string(),
            reference: self.reference.to_string(),
            what: self.what.to_string(),
            expected,
            actual,
            longer: actual > expected,
        }
    }

    pub(crate) fn mismatch(&self, expected: &str, actual: &str) -> RegistryError {
        RegistryError::DigestMismatch {
            registry: self.registry.to_string(),
            reference: self.reference.to_string(),
            what: self.what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// Classifies an oci-client failure into the variant that tells the user what to do.
    pub(crate) fn map(&self, err: OciDistributionError) -> RegistryError {
        // Before the status decides: a registry may send it with 400, 403 or anything else.
        let text = match &err {
            OciDistributionError::RegistryError { envelope, .. } => Some(envelope.to_string()),
            OciDistributionError::ServerError { message, .. } => Some(message.clone()),
            _ => None,
        };
        if let Some(text) = text.filter(|t| IMMUTABLE_TAG_MESSAGES.iter().any(|m| t.contains(m))) {
            return RegistryError::ImmutableTag {
                registry: self.registry.to_string(),
                reference: self.reference.to_string(),
                detail: self.secrets.redact(first_line(&text)),
            };
        }
        match err {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => self.unauthorized(),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                    self.denied()
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized))
                {
                    self.unauthorized()
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    self.not_found()
                } else {
                    self.other(envelope.to_string())
                }
            }
            OciDistributionError::ServerError { code: 401, .. } => self.unauthorized(),
            OciDistributionError::ServerError { code: 403, .. } => self.denied(),
            OciDistributionError::ServerError { code: 404, .. } => self.not_found(),
            OciDistributionError::ServerError { code, message, .. } => {
                self.other(format!("HTTP {code}: {}", first_line(&message)))
            }
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => self.mismatch(&expected, &actual),
            OciDistributionError::UnsupportedMediaTypeError(media_type)
            | OciDistributionError::IncompatibleLayerMediaTypeError(media_type) => {
                RegistryError::UnsupportedMediaType {
                    registry: self.registry.to_string(),
                    reference: self.reference.to_string(),
                    media_type,
                }
            }
            OciDistributionError::RequestError(e) => {
                if e.status().is_some_and(|s| s.as_u16() == 401) {
                    self.unauthorized()
                } else if e.status().is_some_and(|s| s.as_u16() == 403) {
                    self.denied()
                } else if e.status().is_some_and(|s| s.as_u16() == 404) {
                    self.not_found()
                } else if is_tls_failure(&error_chain(&e)) {
                    RegistryError::Tls {
                        registry: self.registry.to_string(),
                        reference: self.reference.to_string(),
                        detail: self.secrets.redact(&error_chain(&e)),
                    }
                } else if e.is_connect() || e.is_timeout() {
                    RegistryError::Unreachable {
                        registry: self.registry.to_string(),
                        reference: self.reference.to_string(),
                        detail: self.secrets.redact(&error_chain(&e)),
                    }
                } else {
                    self.other(error_chain(&e))
                }
            }
            OciDistributionError::IoError(e) => self.map_io(&e),
            other => self.other(other.to_string()),
        }
    }

    /// Stream errors from oci-client arrive as `io::Error`s that may wrap a digest failure.
    pub(crate) fn map_io(&self, e: &std::io::Error) -> RegistryError {
        if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
        {
            return self.mismatch(expected, actual);
        }
        self.other(error_chain(e))
    }
}

/// The error and its sources on one line, because reqwest hides the useful part
/// ("connection refused", "invalid certificate") in the source chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("").trim();
    // Servers may answer with whole HTML pages; keep error lines short.
    match line.char_indices().nth(200) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// Every secret known so far: the docker config's, and each credential helper's answer once it
/// came. Shared by a registry client and its error contexts; only ever grows.
#[derive(Default)]
pub(crate) struct Secrets(std::sync::RwLock<Vec<String>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map(|s| s.len()).unwrap_or(0);
        write!(f, "Secrets({n} redacted)")
    }
}

impl Secrets {
    pub(crate) fn add(&self, more: Vec<String>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(more);
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, &self.0.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Replaces every non-empty secret in `text` with `<redacted>`, as a last line of defence
/// should a server echo a credential back in an error body.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_secrets() {
        let secrets = vec!["hunter22".to_string()];
        assert_eq!(
            redact("bad password hunter22!", &secrets),
            "bad password <redacted>!"
        );
        let shared = Secrets::default();
        shared.add(secrets);
        assert_eq!(format!("{shared:?}"), "Secrets(1 redacted)");
    }

    #[test]
    fn server_404_is_not_found() {
        let ctx = ErrorContext {
            registry: "r.example",
            reference: "r.example/a:b",
            what: "manifest",
            config: "none".into(),
            secrets: &Secrets::default(),
            push: false,
        };
        let e = ctx.map(OciDistributionError::ServerError {
            code: 404,
            url: "u".into(),
            message: "".into(),
        });
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("check the image name and tag"));
    }
}
