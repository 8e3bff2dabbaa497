//! Manifest and index reads that stop at a bound. oci-client reads a whole response body into
//! memory before it looks at it (`pull_manifest_raw`), so a registry serving an endless
//! "manifest" would exhaust the executor's memory; here the body is read chunk by chunk and the
//! read stops at `--max-manifest-size` (and is refused up front when `Content-Length` is already
//! larger). Authorization is oci-client's token flow (its `auth`), sent only to the registry
//! itself, as oci-client does after CVE-2020-15157; the error bodies of failed requests are
//! read up to a small bound too. Blobs are not read here: they are streamed through oci-client
//! and cut at their descriptor's size (`pull.rs`). It pushes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_client::client::ClientProtocol;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use super::error::{Attempt, ErrorContext};
use super::{Reference, Registry, Transport};

/// How long [`Http::open`] waits for a registry's `GET /v2/`.
const OPEN_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a failed request's body is read for its error message.
const ERROR_BODY_LIMIT: usize = 64 << 10;
/// How long a token obtained for bounded reads is reused: the distribution spec makes tokens
/// last at least 60 s when the server says nothing.
const TOKEN_REUSE: Duration = Duration::from_secs(50);

/// The HTTP client of one side's oci-client (a clone: the connections are shared, so a manifest
/// read here and a blob request there reuse each other's), for the reads made here.
#[derive(Clone)]
pub(super) struct Http {
    client: reqwest::Client,
    protocol: ClientProtocol,
    /// Whether each registry is open (see [`Http::open`]), asked once.
    open: Arc<Mutex<HashMap<String, Arc<tokio::sync::OnceCell<bool>>>>>,
}

impl Http {
    pub(super) fn new(protocol: ClientProtocol, client: reqwest::Client) -> Http {
        Http {
            client,
            protocol,
            open: Arc::default(),
        }
    }

    /// Whether `registry` asks for no authorization: its `GET /v2/` answered 200 without a
    /// `WWW-Authenticate` challenge. Asked once per registry and client, concurrent callers
    /// waiting for the one answer. Anything else (a challenge, an error, no answer) is "not
    /// open", and the token flow runs as it always did, reporting what fails.
    ///
    /// oci-client asks `/v2/` for a challenge before every request of a client that holds
    /// credentials for the registry, anonymous ones included, and caches only the tokens it
    /// gets: against an open registry (a local or in-cluster one without authentication) every
    /// request cost a second round trip (31 of the 62 requests of a fully cached rebuild).
    pub(super) async fn open(&self, registry: &str) -> bool {
        let cell = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(registry.to_string())
            .or_default()
            .clone();
        *cell
            .get_or_init(|| async {
                let url = format!("{}://{registry}/v2/", self.scheme_for(registry));
                let client = &self.client;
                // A bounded wait: an answer that does not come means "not open", and the
                // requests that follow report what is wrong as they always did.
                match tokio::time::timeout(OPEN_PROBE_TIMEOUT, client.get(&url).send()).await {
                    Ok(Ok(response)) => {
                        response.status() == reqwest::StatusCode::OK
                            && !response
                                .headers()
                                .contains_key(reqwest::header::WWW_AUTHENTICATE)
                    }
                    Ok(Err(_)) | Err(_) => false,
                }
            })
            .await
    }

    /// `GET {scheme}://{registry}/v2/`, answered with 200 or 401 (what go-containerregistry's
    /// ping accepts); else what failed.
    pub(super) async fn ping(&self, scheme: &str, registry: &str) -> Result<(), String> {
        let url = format!("{scheme}://{registry}/v2/");
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| super::error::error_chain(&e))?;
        match response.status() {
            reqwest::StatusCode::OK | reqwest::StatusCode::UNAUTHORIZED => Ok(()),
            status => Err(format!("{url} answered {status}")),
        }
    }

    /// oci-client's rule (`ClientProtocol::scheme_for`, which it keeps private).
    fn scheme_for(&self, registry: &str) -> &'static str {
        match &self.protocol {
            ClientProtocol::Http => "http",
            ClientProtocol::Https => "https",
            ClientProtocol::HttpsExcept(plain) if plain.iter().any(|r| r == registry) => "http",
            ClientProtocol::HttpsExcept(_) => "https",
        }
    }
}

/// How a bounded read authorizes itself.
#[derive(Clone)]
enum Authorization {
    Anonymous,
    Bearer(String),
    Basic(String, String),
}

/// Authorizations for bounded reads, by scheme, registry and repository, reused for
/// [`TOKEN_REUSE`]: each one costs a `/v2/` request and a token request.
#[derive(Default)]
pub(super) struct TokenCache(Mutex<HashMap<String, (Authorization, Instant)>>);

impl TokenCache {
    fn get(&self, key: &str) -> Option<Authorization> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(_, at)| at.elapsed() < TOKEN_REUSE)
            .map(|(a, _)| a.clone())
    }

    fn put(&self, key: String, authorization: Authorization) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key, (authorization, Instant::now()));
    }

    fn forget(&self, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }
}

impl Registry {
    /// GETs the manifest (or index) `ep` names by tag or digest, accepting `accept`, and reads
    /// at most `limit` bytes of it: a larger one is [`RegistryError::TooLarge`], final. A 401
    /// with a reused token is tried once more with a fresh one.
    pub(super) async fn get_manifest_bounded(
        &self,
        transport: &Transport,
        ep: &Reference,
        accept: &[&str],
        limit: u64,
        ctx: &ErrorContext<'_>,
    ) -> Result<Vec<u8>, Attempt> {
        let registry = ep.resolve_registry();
        let scheme = transport.http.scheme_for(registry);
        let url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{}",
            ep.repository(),
            ep.digest().unwrap_or_else(|| ep.tag().unwrap_or("latest"))
        );
        let key = format!("{scheme}://{registry}/{}", ep.repository());
        loop {
            let (authorization, reused) = match self.tokens.get(&key) {
                Some(a) => (a, true),
                None => {
                    let a = self.authorize(transport, ep, ctx).await?;
                    self.tokens.put(key.clone(), a.clone());
                    (a, false)
                }
            };
            let request = transport
                .http
                .client
                .get(&url)
                .header(reqwest::header::ACCEPT, accept.join(", "));
            let request = match authorization {
                Authorization::Anonymous => request,
                Authorization::Bearer(token) => request.bearer_auth(token),
                Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
            };
            let mut response = request
                .send()
                .await
                .map_err(|e| ctx.attempt(OciDistributionError::RequestError(e)))?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && reused {
                // The reused token may have expired early: one more try with a fresh one.
                self.tokens.forget(&key);
                continue;
            }
            if status != reqwest::StatusCode::OK {
                let body = read_error_body(&mut response).await;
                return Err(ctx.attempt(status_error(status, &url, &body)));
            }
            if let Some(declared) = response.content_length().filter(|n| *n > limit) {
                return Err(Attempt::fatal(ctx.too_large(
                    limit,
                    Some(declared),
                    "--max-manifest-size",
                )));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| ctx.attempt(OciDistributionError::RequestError(e)))?
            {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(Attempt::fatal(ctx.too_large(
                        limit,
                        None,
                        "--max-manifest-size",
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
    }

    /// The authorization oci-client would send for a pull of `ep`: its token flow (a bearer
    /// token when the registry asks for one), else the docker config's basic credentials for
    /// the registry, else none.
    async fn authorize(
        &self,
        transport: &Transport,
        ep: &Reference,
        ctx: &ErrorContext<'_>,
    ) -> Result<Authorization, Attempt> {
        let credentials = self.registry_auth(ep).await.map_err(Attempt::fatal)?;
        if matches!(credentials, RegistryAuth::Anonymous)
            && transport.http.open(ep.resolve_registry()).await
        {
            // Not through oci-client's `auth`: it would store the anonymous credentials in its
            // client, which then asks /v2/ before each of its requests.
            return Ok(Authorization::Anonymous);
        }
        let token = transport
            .oci
            .auth(ep, &credentials, RegistryOperation::Pull)
            .await
            .map_err(|e| ctx.attempt(e))?;
        Ok(match (token, credentials) {
            (Some(token), _) => Authorization::Bearer(token),
            (None, RegistryAuth::Basic(user, password)) => Authorization::Basic(user, password),
            (None, RegistryAuth::Bearer(token)) => Authorization::Bearer(token),
            (None, RegistryAuth::Anonymous) => Authorization::Anonymous,
        })
    }
}

/// At most [`ERROR_BODY_LIMIT`] bytes of a failed response's body; what could be read.
async fn read_error_body(response: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = ERROR_BODY_LIMIT - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    body
}

/// The error oci-client makes of a failed response (its `validate_registry_response`), so that
/// it is classified the same way.
fn status_error(status: reqwest::StatusCode, url: &str, body: &[u8]) -> OciDistributionError {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError {
            url: url.to_string(),
        };
    }
    if status.is_client_error() {
        if let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body) {
            return OciDistributionError::RegistryError {
                envelope,
                url: url.to_string(),
            };
        }
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url: url.to_string(),
        message: String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_follows_the_protocol() {
        let http = |p| Http::new(p, reqwest::Client::new());
        assert_eq!(http(ClientProtocol::Http).scheme_for("r:5000"), "http");
        assert_eq!(http(ClientProtocol::Https).scheme_for("r:5000"), "https");
        let except = http(ClientProtocol::HttpsExcept(vec!["r:5000".into()]));
        assert_eq!(except.scheme_for("r:5000"), "http");
        assert_eq!(except.scheme_for("other:5000"), "https");
    }

    #[test]
    fn failed_responses_are_classified_like_oci_client_does() {
        let e = status_error(reqwest::StatusCode::NOT_FOUND, "u", b"not json");
        assert!(matches!(
            e,
            OciDistributionError::ServerError { code: 404, .. }
        ));
        let e = status_error(
            reqwest::StatusCode::NOT_FOUND,
            "u",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}"#,
        );
        assert!(matches!(e, OciDistributionError::RegistryError { .. }));
        let e = status_error(reqwest::StatusCode::UNAUTHORIZED, "u", b"");
        assert!(matches!(e, OciDistributionError::UnauthorizedError { .. }));
        let e = status_error(reqwest::StatusCode::BAD_GATEWAY, "u", b"down");
        assert!(matches!(
            e,
            OciDistributionError::ServerError { code: 502, .. }
        ));
    }
}
