//! `gs://bucket/object` contexts: one media download through the Cloud Storage JSON API.
//! Credentials as Google's Go client (kaniko's) finds them: none against an emulator named by
//! `STORAGE_EMULATOR_HOST`; else `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key, signed
//! into an OAuth2 JWT bearer grant with RS256, or gcloud's `authorized_user` file), gcloud's
//! application-default file, then the metadata server (GKE Workload Identity, GCE). A token is
//! sent only to Google's storage endpoint; neither it nor the key reaches a message.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::Deserialize;

use super::{fetch_to_file, CloudEnv};
use crate::context::http::{client, error_chain, error_summary, uri_encode};

const STORAGE_ENDPOINT: &str = "https://storage.googleapis.com";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Reading an object is all a context needs.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const METADATA_HOST: &str = "metadata.google.internal";

pub(super) fn download(
    bucket: &str,
    object: &str,
    env: &CloudEnv,
    dest: &Path,
) -> Result<u64, String> {
    let (base, token) = match env.get("STORAGE_EMULATOR_HOST") {
        // The Go client's rule: the value is a host[:port] (http assumed) or a URL.
        Some(host) if host.contains("://") => (host.trim_end_matches('/').to_string(), None),
        Some(host) => (format!("http://{}", host.trim_end_matches('/')), None),
        None => (STORAGE_ENDPOINT.to_string(), Some(access_token(env)?)),
    };
    let url = format!(
        "{base}/storage/v1/b/{}/o/{}?alt=media",
        uri_encode(bucket, false),
        uri_encode(object, false)
    );
    let mut request = client()?.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    fetch_to_file(request, "objects.get", dest)
}

/// The fields of a credentials file that are used; `Debug` is not derived, so a key can't be
/// printed by accident.
#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

/// An OAuth2 access token from the first credentials found, in Google's ADC order.
fn access_token(env: &CloudEnv) -> Result<String, String> {
    if let Some(path) = env.get("GOOGLE_APPLICATION_CREDENTIALS") {
        return token_from_file(Path::new(path), "GOOGLE_APPLICATION_CREDENTIALS");
    }
    if let Some(path) = well_known_file(env).filter(|p| p.is_file()) {
        return token_from_file(&path, "gcloud's application default credentials");
    }
    token_from_metadata(env).map_err(|why| {
        format!(
            "no Google credentials: GOOGLE_APPLICATION_CREDENTIALS is not set, gcloud's application default credentials file does not exist, and the metadata server gave no token ({why}); set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or STORAGE_EMULATOR_HOST for an emulator"
        )
    })
}

/// `$CLOUDSDK_CONFIG/application_default_credentials.json`, else under `~/.config/gcloud`.
fn well_known_file(env: &CloudEnv) -> Option<PathBuf> {
    match env.get("CLOUDSDK_CONFIG") {
        Some(dir) => Some(Path::new(dir).join("application_default_credentials.json")),
        None => env.home_file(".config/gcloud/application_default_credentials.json"),
    }
}

fn token_from_file(path: &Path, named_by: &str) -> Result<String, String> {
    let fail = |what: String| format!("credentials file {} ({named_by}): {what}", path.display());
    let text = fs::read_to_string(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    // serde_json's messages quote no input, so the key stays out of this one.
    let file: CredentialsFile = serde_json::from_str(&text)
        .map_err(|e| fail(format!("is not a Google credentials JSON file: {e}")))?;
    let token_uri = file
        .token_uri
        .clone()
        .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
    let form: Vec<(&str, String)> = match file.kind.as_deref() {
        Some("service_account") => {
            let (Some(email), Some(pem)) = (&file.client_email, &file.private_key) else {
                return Err(fail(
                    "a service_account key needs client_email and private_key".to_string(),
                ));
            };
            let assertion =
                service_account_jwt(email, pem, &token_uri, now_secs()).map_err(fail)?;
            vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
                ),
                ("assertion", assertion),
            ]
        }
        Some("authorized_user") => {
            let (Some(id), Some(secret), Some(refresh)) =
                (&file.client_id, &file.client_secret, &file.refresh_token)
            else {
                return Err(fail(
                    "an authorized_user file needs client_id, client_secret and refresh_token"
                        .to_string(),
                ));
            };
            vec![
                ("grant_type", "refresh_token".to_string()),
                ("client_id", id.clone()),
                ("client_secret", secret.clone()),
                ("refresh_token", refresh.clone()),
            ]
        }
        other => {
            return Err(fail(format!(
            "type {other:?} is not supported; use a service_account key or an authorized_user file"
        )))
        }
    };
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&");
    let response = client()
        .map_err(&fail)?
        .post(&token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .map_err(|e| {
            fail(format!(
                "token request to {token_uri} failed: {}",
                error_chain(&e)
            ))
        })?;
    if !response.status().is_success() {
        return Err(fail(format!(
            "the token endpoint {token_uri} refused the credentials: {}",
            error_summary(response)
        )));
    }
    let answer: TokenAnswer = response.json().map_err(|e| {
        fail(format!(
            "the token endpoint {token_uri} sent no access token: {e}"
        ))
    })?;
    Ok(answer.access_token)
}

/// A token of the instance's (or the GKE Workload Identity's) service account.
fn token_from_metadata(env: &CloudEnv) -> Result<String, String> {
    let host = env.get("GCE_METADATA_HOST").unwrap_or(METADATA_HOST);
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
    let response = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", error_summary(response)));
    }
    let answer: TokenAnswer = response.json().map_err(|e| format!("{url}: {e}"))?;
    Ok(answer.access_token)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The JWT a service account presents for an access token (RFC 7523), signed RS256 with its
/// PKCS#8 key through aws-lc-rs (already linked as rustls' crypto provider).
fn service_account_jwt(email: &str, pem: &str, audience: &str, now: u64) -> Result<String, String> {
    let der = pem_body(pem, "PRIVATE KEY")
        .ok_or("private_key is not a PEM \"PRIVATE KEY\" (PKCS#8) block")?;
    let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| "private_key is not a valid RSA PKCS#8 key".to_string())?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": email,
        "scope": SCOPE,
        "aud": audience,
        "iat": now,
        "exp": now + 3600,
    });
    let signing_input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing the token request with private_key failed".to_string())?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

/// The DER bytes of the first `-----BEGIN <label>-----` block.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_jwt_verifies_with_the_public_key() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = key.as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let jwt = service_account_jwt("sa@p.iam", &pem, "https://t/token", 1000).unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public_key().as_ref(),
        )
        .verify(input.as_bytes(), &sig)
        .expect("RS256 signature verifies");
        let claims = input.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], "sa@p.iam");
        assert_eq!(claims["aud"], "https://t/token");
        assert_eq!(claims["exp"], 4600);
    }

    #[test]
    fn emulator_needs_no_credentials_and_bad_keys_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("key.json");
        fs::write(
            &bad,
            r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n"}"#,
        )
        .unwrap();
        let err = token_from_file(&bad, "GOOGLE_APPLICATION_CREDENTIALS").unwrap_err();
        assert!(err.contains("not a valid RSA PKCS#8 key"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
        fs::write(&bad, r#"{"type":"external_account"}"#).unwrap();
        let err = token_from_file(&bad, "x").unwrap_err();
        assert!(err.contains("external_account"), "{err}");
        fs::write(&bad, "not json").unwrap();
        assert!(token_from_file(&bad, "x")
            .unwrap_err()
            .contains("not a Google credentials"));
    }
}
