//! How each request reaches its registry: plain HTTP or HTTPS, which certificates are trusted and
//! which client certificate is presented. It follows kaniko v1.24 (go-containerregistry v0.20):
//! HTTPS everywhere, except that a registry kaniko's `name.Registry.Scheme()` calls local
//! ([`may_fall_back`]) is tried over HTTPS first and then over plain HTTP (`transport/ping.go`),
//! and a registry named insecure is plain HTTP. The fallback is decided once per registry and
//! run, by a `GET /v2/`. Certificate and key files are read when the registry client is made,
//! the system's CA certificates once per process by the first transport made or by
//! [`load_system_certificates`] (both before an in-place build replaces `/`). It makes no other
//! request and never logs credentials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::Client;

use super::{auth, bounded, Reference, Registry, RegistryError, RegistryOptions, Side};

/// A client certificate and its key presented to one registry for mutual TLS (kaniko's
/// `--registry-client-cert REG=CERT,KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub registry: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One transport setting: oci-client's client (pushes, tokens, blob streams) and a plain HTTP
/// client with the same settings for the reads oci-client would hold whole in memory.
#[derive(Clone)]
pub(super) struct Transport {
    pub oci: Client,
    pub http: bounded::Http,
}

/// The TLS material of one registry beyond the system's: read from the files once.
#[derive(Clone, Default)]
pub(super) struct TlsFiles {
    /// CA certificates (PEM blocks) trusted in addition to the system's.
    pub roots: Vec<Vec<u8>>,
    /// Certificate chain and key, PEM, for mutual TLS.
    pub identity: Option<Vec<u8>>,
}

/// What distinguishes one side's transports from the other's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SideSettings {
    pub insecure: bool,
    pub skip_tls_verify: bool,
}

/// The clients of one side.
#[derive(Clone)]
pub(super) struct Transports {
    /// The HTTPS clients; `None` on a side that is insecure, where every request goes over
    /// plain HTTP (each client builds a store of the system's CA certificates when it is made).
    tls: Option<TlsTransports>,
    /// Plain HTTP: registries named insecure and those that fell back. Made on first use.
    plain: Arc<OnceLock<Result<Transport, String>>>,
}

/// The HTTPS clients of one side.
#[derive(Clone)]
struct TlsTransports {
    /// Verifies TLS certificates, unless the side skips verification everywhere.
    verified: Transport,
    /// For registries in `skip_tls_verify_registries`: oci-client has one certificate policy
    /// per client, so those need a second one. Made only when some registry is listed, since
    /// each client parses the system's CA certificates when it is made.
    unverified: Option<Transport>,
    /// Registries with their own CA or client certificate, by normalised name.
    own: HashMap<String, Transport>,
}

/// Whether kaniko would try plain HTTP after HTTPS for `registry` (`host[:port]` as written in
/// the image name) without being told: go-containerregistry v0.20's `Registry.Scheme()`, quirks
/// kept. An IPv4 address in 10/8, 172.16/12 or 192.168/16 (port ignored), `localhost:PORT` (not
/// bare `localhost`), a name ending `.local` or `.localhost` (with or without a port), and any
/// name that contains `127.0.0.1` or `::1`.
pub fn may_fall_back(registry: &str) -> bool {
    let host = registry.split(':').next().unwrap_or(registry);
    let rfc1918 = host
        .parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_private());
    let without_port = match registry.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => registry,
    };
    let local_suffix = [".local", ".localhost"]
        .iter()
        .any(|s| without_port.ends_with(s));
    rfc1918
        || registry.starts_with("localhost:")
        || local_suffix
        || registry.contains("127.0.0.1")
        || registry.contains("::1")
}

impl TlsFiles {
    /// The files `opts` names for `registry` (normalised), read and checked now.
    fn load(opts: &RegistryOptions, registry: &str) -> Result<TlsFiles, RegistryError> {
        let mut files = TlsFiles::default();
        // The last value given for a registry wins, as in kaniko's map.
        if let Some((given, path)) = opts
            .registry_certificates
            .iter()
            .rev()
            .find(|(r, _)| auth::normalize_auth_key(r) == registry)
        {
            let invalid = |reason: String| RegistryError::InvalidOption {
                option: "--registry-certificate",
                value: format!("{given}={}", path.display()),
                reason,
            };
            let pem = read(path).map_err(invalid)?;
            files.roots = pem_certificates(&pem);
            if files.roots.is_empty() {
                return Err(invalid(format!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
            for block in &files.roots {
                reqwest::Certificate::from_pem(block).map_err(|e| {
                    invalid(format!(
                        "{} holds an invalid certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        if let Some(c) = opts
            .registry_client_certs
            .iter()
            .rev()
            .find(|c| auth::normalize_auth_key(&c.registry) == registry)
        {
            let invalid = |reason: String| RegistryError::InvalidOption {
                option: "--registry-client-cert",
                value: format!("{}={},{}", c.registry, c.cert.display(), c.key.display()),
                reason,
            };
            let mut pem = read(&c.cert).map_err(invalid)?;
            if pem_certificates(&pem).is_empty() {
                return Err(invalid(format!(
                    "{} holds no PEM certificate",
                    c.cert.display()
                )));
            }
            pem.push(b'\n');
            pem.extend(read(&c.key).map_err(invalid)?);
            reqwest::Identity::from_pem(&pem).map_err(|e| {
                invalid(format!(
                    "{} and {} are not a PEM certificate and its private key: {e}",
                    c.cert.display(),
                    c.key.display()
                ))
            })?;
            files.identity = Some(pem);
        }
        Ok(files)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The `CERTIFICATE` blocks of a PEM bundle, each on its own (oci-client takes one certificate
/// per entry).
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]).into_bytes());
        rest = &rest[end..];
    }
    out
}

/// Every registry that has TLS files of its own, normalised.
fn registries_with_files(opts: &RegistryOptions) -> Vec<String> {
    let mut out: Vec<String> = opts
        .registry_certificates
        .iter()
        .map(|(r, _)| auth::normalize_auth_key(r))
        .chain(
            opts.registry_client_certs
                .iter()
                .map(|c| auth::normalize_auth_key(&c.registry)),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Reads every certificate and key file `opts` names, once, so that both sides share them.
pub(super) fn load_files(
    opts: &RegistryOptions,
) -> Result<HashMap<String, TlsFiles>, RegistryError> {
    registries_with_files(opts)
        .into_iter()
        .map(|r| TlsFiles::load(opts, &r).map(|f| (r, f)))
        .collect()
}

/// The system's CA certificates (DER), as `rustls-native-certs` reads them (`SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, else the distribution's bundle and directory).
pub(super) type SystemRoots = Arc<Vec<Vec<u8>>>;

/// The system's CA certificates, read once per process, when the first registry client is made
/// (so before an in-place build replaces `/`). Every HTTPS client trusts exactly these plus the
/// registry's own `--registry-certificate` files, which is what reqwest's platform verifier
/// trusts on Linux; but that verifier reads the whole store again for every client made, a few
/// milliseconds each, and a build makes several clients (two sides of each registry client)
/// before its first request. Unreadable files are skipped with a warning, as the verifier
/// skips them; when nothing can be read the list is empty and each client falls back to the
/// platform verifier, which then fails as it always did.
pub(super) fn system_roots() -> SystemRoots {
    static ROOTS: OnceLock<SystemRoots> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::warn!("reading the system's CA certificates: {error}");
            }
            Arc::new(distinct(loaded.certs.iter().map(|c| c.to_vec()).collect()))
        })
        .clone()
}

/// Each certificate once. A distribution's store usually has every CA twice: in the bundle
/// (`SSL_CERT_FILE`) and as a file of its own in the directory (`SSL_CERT_DIR`, which
/// `rustls-native-certs` reads too when it is set); every client made parses each copy.
fn distinct(mut certs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    certs.sort_unstable();
    certs.dedup();
    certs
}

/// Reads the system's CA certificates now, if no client has yet. A client is made when first
/// needed (the plain HTTP one, which follows redirects to HTTPS, and none over HTTPS on an
/// insecure side): an in-place build calls this before it replaces `/`, so that what every
/// client trusts is the container's store, never the image's.
pub fn load_system_certificates() {
    system_roots();
}

/// One transport with `protocol`, `accept_invalid` and `files`.
fn make(
    protocol: ClientProtocol,
    accept_invalid: bool,
    files: &TlsFiles,
) -> Result<Transport, RegistryError> {
    let system = system_roots();
    let config = ClientConfig {
        tls_certs_only: system
            .iter()
            .map(|der| Certificate {
                encoding: CertificateEncoding::Der,
                data: der.clone(),
            })
            .collect(),
        protocol: protocol.clone(),
        accept_invalid_certificates: accept_invalid,
        extra_root_certificates: files
            .roots
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect(),
        client_identity_pem: files.identity.clone(),
        // Uploads are one streamed PUT: a stream cannot be replayed into the
        // chunked-then-monolithic fallback, and a single request is what every
        // registry supports.
        use_monolithic_push: true,
        // Index resolution is done here, against the configured platform.
        platform_resolver: None,
        connect_timeout: Some(super::CONNECT_TIMEOUT),
        read_timeout: Some(super::READ_TIMEOUT),
        user_agent: super::USER_AGENT,
        ..ClientConfig::default()
    };
    let oci = Client::try_from(config).map_err(|e| RegistryError::Client {
        detail: e.to_string(),
    })?;
    let http = bounded::Http::new(protocol, oci.http_client().clone());
    Ok(Transport { oci, http })
}

/// The clients of one side: certificates verified unless the side skips that everywhere,
/// unverified clients for the listed registries, one client per registry with TLS files of its
/// own, and a plain HTTP client made when first needed.
pub(super) fn transports(
    opts: &RegistryOptions,
    side: &SideSettings,
    files: &HashMap<String, TlsFiles>,
) -> Result<Transports, RegistryError> {
    let plain = Arc::default();
    if side.insecure {
        return Ok(Transports { tls: None, plain });
    }
    let none = TlsFiles::default();
    let verified = make(ClientProtocol::Https, side.skip_tls_verify, &none)?;
    let unverified = if side.skip_tls_verify || opts.skip_tls_verify_registries.is_empty() {
        None
    } else {
        Some(make(ClientProtocol::Https, true, &none)?)
    };
    let own = files
        .iter()
        .map(|(registry, f)| {
            let skip = side.skip_tls_verify || skips_verification(opts, registry);
            make(ClientProtocol::Https, skip, f).map(|t| (registry.clone(), t))
        })
        .collect::<Result<_, _>>()?;
    Ok(Transports {
        tls: Some(TlsTransports {
            verified,
            unverified,
            own,
        }),
        plain,
    })
}

fn skips_verification(opts: &RegistryOptions, registry: &str) -> bool {
    opts.skip_tls_verify_registries
        .iter()
        .any(|s| auth::normalize_auth_key(s) == registry)
}

fn named_insecure(opts: &RegistryOptions, registry: &str) -> bool {
    opts.insecure_registries
        .iter()
        .any(|s| auth::normalize_auth_key(s) == registry)
}

impl Transports {
    /// The HTTPS client for `registry` (normalised); `None` on an insecure side.
    fn tls(&self, opts: &RegistryOptions, registry: &str) -> Option<&Transport> {
        let tls = self.tls.as_ref()?;
        if let Some(t) = tls.own.get(registry) {
            return Some(t);
        }
        Some(match &tls.unverified {
            Some(u) if skips_verification(opts, registry) => u,
            _ => &tls.verified,
        })
    }

    fn plain(&self) -> Result<&Transport, RegistryError> {
        self.plain
            .get_or_init(|| {
                make(ClientProtocol::Http, false, &TlsFiles::default()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|detail| RegistryError::Client {
                detail: detail.clone(),
            })
    }
}

impl Registry {
    /// The transport for a request to `r` on `side`: plain HTTP when the side or the registry
    /// is insecure, or when kaniko's rule lets the registry fall back and HTTPS failed there;
    /// else HTTPS with the registry's own certificates, if any.
    pub(super) async fn transport_for(
        &self,
        r: &Reference,
        side: Side,
    ) -> Result<&Transport, RegistryError> {
        let transports = match side {
            Side::Pull => &self.pull,
            Side::Push => &self.push,
        };
        let registry = auth::normalize_auth_key(r.registry());
        let tls = match transports.tls(&self.opts, &registry) {
            Some(tls) if !named_insecure(&self.opts, &registry) => tls,
            _ => return transports.plain(),
        };
        if !may_fall_back(r.registry()) {
            return Ok(tls);
        }
        if self.falls_back(r, tls, transports).await? {
            transports.plain()
        } else {
            Ok(tls)
        }
    }

    /// Whether `r`'s registry is reached over plain HTTP: decided once per registry and run,
    /// like go-containerregistry's ping, by `GET /v2/` over HTTPS and, when that fails, over
    /// plain HTTP. An answer of 200 or 401 succeeds. When both fail nothing is decided: the
    /// request goes over HTTPS and reports its own error, and the next one asks again.
    async fn falls_back(
        &self,
        r: &Reference,
        tls: &Transport,
        transports: &Transports,
    ) -> Result<bool, RegistryError> {
        let host = r.resolve_registry().to_string();
        let mut decided = self.schemes.lock().await;
        if let Some(plain) = decided.get(&host) {
            return Ok(*plain);
        }
        let https = match tls.http.ping("https", &host).await {
            Ok(()) => {
                decided.insert(host, false);
                return Ok(false);
            }
            Err(e) => e,
        };
        let plain = transports.plain()?;
        match plain.http.ping("http", &host).await {
            Ok(()) => {
                tracing::info!(
                    registry = r.registry(),
                    https_error = %https,
                    "registry does not answer over HTTPS: using plain HTTP, as kaniko does for \
                     loopback, private and .local registries"
                );
                decided.insert(host, true);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_where_go_containerregistry_does() {
        for name in [
            "127.0.0.1:5000",
            "127.0.0.1",
            "[::1]:5000",
            "localhost:5000",
            "registry.local",
            "registry.local:5000",
            "my.localhost",
            "my.localhost:443",
            "10.1.2.3",
            "10.1.2.3:5000",
            "172.16.0.1:5000",
            "172.31.255.255",
            "192.168.1.10:443",
            // ggcr matches these substrings anywhere.
            "127.0.0.1.nip.io",
            "[fe80::1]:5000",
        ] {
            assert!(may_fall_back(name), "{name}");
        }
        for name in [
            "docker.io",
            "index.docker.io",
            "gcr.io",
            "registry.example.com:5000",
            "localhost",
            "127.0.0.2:5000",
            "8.8.8.8",
            "172.32.0.1:5000",
            "11.0.0.1",
            "192.169.0.1",
            "local",
            "registry.locals",
            "registry.local.example.com",
            "localhost.example.com:5000",
        ] {
            assert!(!may_fall_back(name), "{name}");
        }
    }

    #[test]
    fn pem_bundles_split_into_certificates() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let bundle = format!("# a comment\n{one}\n\n{one}\ntrailing");
        let certs = pem_certificates(bundle.as_bytes());
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], format!("{one}\n").into_bytes());
        assert!(pem_certificates(b"no pem here").is_empty());
        assert!(pem_certificates(b"-----BEGIN CERTIFICATE-----\nunterminated").is_empty());
    }

    #[test]
    fn each_system_certificate_is_kept_once() {
        let certs = distinct(vec![
            b"b".to_vec(),
            b"a".to_vec(),
            b"b".to_vec(),
            b"a".to_vec(),
        ]);
        assert_eq!(certs, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn an_insecure_side_has_no_https_client() {
        let opts = RegistryOptions::default();
        let files = HashMap::new();
        let insecure = SideSettings {
            insecure: true,
            skip_tls_verify: false,
        };
        let t = transports(&opts, &insecure, &files).unwrap();
        assert!(t.tls(&opts, "registry.example").is_none());
        assert!(t.plain().is_ok());
        let secure = SideSettings {
            insecure: false,
            skip_tls_verify: false,
        };
        let t = transports(&opts, &secure, &files).unwrap();
        assert!(t.tls(&opts, "registry.example").is_some());
    }
}
