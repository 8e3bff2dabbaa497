//! Why an HTTPS request failed when the error does not say: a registry that requires client
//! certificates (mutual TLS) rejects a connection without one only after the TLS 1.3 handshake,
//! so the client sees a closed connection, not a TLS error. One diagnostic `GET /v2/` records
//! whether the server asks for a client certificate. It presents none, sends no credentials and
//! does not check the server's certificate (it only learns what the server asks for), and its
//! answer is never used for anything else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{auth, RegistryError};

/// How long the diagnostic request may take: it only adds to an error.
const DIAGNOSIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Records that the server asked for a client certificate; offers none.
#[derive(Debug, Default)]
struct Asked(AtomicBool);

impl ResolvesClientCert for Asked {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any server certificate (signatures are still checked): the diagnostic request must
/// reach the point where the server asks for a client certificate even when its certificate is
/// not trusted, and it carries nothing to protect.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether the HTTPS server at `registry` (`host[:port]`) asks for a client certificate.
pub(super) async fn asks_for_client_certificate(registry: &str) -> bool {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let asked = Arc::new(Asked::default());
    let Ok(config) = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let mut config = config
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_cert_resolver(asked.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let Ok(client) = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(DIAGNOSIS_TIMEOUT)
        .user_agent(super::USER_AGENT)
        .build()
    else {
        return false;
    };
    let _ = client.get(format!("https://{registry}/v2/")).send().await;
    asked.0.load(Ordering::SeqCst)
}

impl super::Registry {
    /// `error`, or, when it is an HTTPS request that failed without an HTTP status after the
    /// connection was made (a refused connection or a timeout is not asked about) on a registry
    /// given no client certificate, and that registry asks for one, a [`RegistryError::Tls`]
    /// that says so.
    pub(super) async fn explain(&self, error: RegistryError) -> RegistryError {
        let (registry, reference, detail) = match &error {
            RegistryError::Registry {
                registry,
                reference,
                detail,
            }
            | RegistryError::Transient {
                registry,
                reference,
                detail,
                ..
            } => (registry, reference, detail),
            _ => return error,
        };
        let host = auth::normalize_auth_key(registry);
        let has_identity = self
            .opts
            .registry_client_certs
            .iter()
            .any(|c| auth::normalize_auth_key(&c.registry) == host);
        if has_identity
            || !detail.contains("https://")
            || !asks_for_client_certificate(registry).await
        {
            return error;
        }
        RegistryError::Tls {
            registry: registry.clone(),
            reference: reference.clone(),
            detail: format!(
                "{detail}; the registry asks for a client certificate and none was presented"
            ),
        }
    }
}
