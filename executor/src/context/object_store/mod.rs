//! Object-store build contexts as kaniko v1.24 reads them: `s3://bucket/key`, `gs://bucket/key`
//! (the key defaults to `context.tar.gz` when the URL names only the bucket) and Azure Blob URLs
//! (`https://ACCOUNT.blob.core.windows.net/container/blob` and the other Azure clouds). The object
//! is a (gzip, zstd or plain) tarball, downloaded here and unpacked by the caller with the tarball
//! context code. Credentials come from the environment as each provider's SDK reads them; they
//! are sent only to that provider's endpoint and never appear in a message or a log line.

mod azure;
mod gcs;
mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::ContextError;

/// kaniko's object name when an `s3://` or `gs://` URL names only a bucket.
const DEFAULT_OBJECT: &str = "context.tar.gz";

/// The environment variables object-store contexts read, captured once when the options are
/// built (so a test can hand its own). `Debug` shows the names only, never a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CloudEnv {
    vars: BTreeMap<&'static str, String>,
}

/// Every variable read: the AWS SDK's, kaniko's S3 endpoint settings, Google's, Azure's and
/// Kiln's Azure endpoint override. `HOME` locates `~/.aws` and gcloud's credentials file.
const CLOUD_VARS: [&str; 20] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "S3_ENDPOINT",
    "S3_FORCE_PATH_STYLE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
    "GCE_METADATA_HOST",
    "AZURE_STORAGE_ACCESS_KEY",
    "KILN_AZURE_BLOB_ENDPOINT",
    "HOME",
    "CLOUDSDK_CONFIG",
];

impl CloudEnv {
    /// Capture the variables object-store contexts read from `get`; empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> CloudEnv {
        let vars = CLOUD_VARS
            .iter()
            .filter_map(|&name| Some((name, get(name).filter(|v| !v.is_empty())?)))
            .collect();
        CloudEnv { vars }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The first of `names` that is set.
    fn first(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.get(n))
    }

    /// A file under `$HOME`, for the SDKs' default file locations.
    fn home_file(&self, rel: &str) -> Option<PathBuf> {
        self.get("HOME").map(|home| Path::new(home).join(rel))
    }
}

impl fmt::Debug for CloudEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

/// A parsed object-store context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ObjectSource {
    S3 { bucket: String, key: String },
    Gcs { bucket: String, object: String },
    Azure(azure::BlobUrl),
}

impl ObjectSource {
    /// `s3://` and `gs://` URLs, split as kaniko's `GetNameAndFilepathFromURI` does: the host is
    /// the bucket, the path without its leading `/` the object (`context.tar.gz` when empty).
    pub fn parse_bucket_url(scheme: &str, rest: &str) -> Result<ObjectSource, ContextError> {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let key = if key.is_empty() { DEFAULT_OBJECT } else { key };
        let (bucket, key) = (bucket.to_string(), key.to_string());
        if bucket.is_empty() {
            return Err(ContextError::ObjectStore {
                location: format!("{scheme}://{rest}"),
                message: format!("names no bucket; use {scheme}://BUCKET/PATH/TO/context.tar.gz"),
            });
        }
        Ok(match scheme {
            "s3" => ObjectSource::S3 { bucket, key },
            _ => ObjectSource::Gcs {
                bucket,
                object: key,
            },
        })
    }

    /// An `https://` (or, through `KILN_AZURE_BLOB_ENDPOINT`, any) URL that names an Azure blob.
    pub fn parse_azure(url: &str, env: &CloudEnv) -> Option<ObjectSource> {
        azure::BlobUrl::parse(url, env.get("KILN_AZURE_BLOB_ENDPOINT")).map(ObjectSource::Azure)
    }

    /// How the object is named in messages (no credentials: none are ever part of these URLs).
    pub fn describe(&self) -> String {
        match self {
            ObjectSource::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            ObjectSource::Gcs { bucket, object } => format!("gs://{bucket}/{object}"),
            ObjectSource::Azure(blob) => blob.describe(),
        }
    }

    /// Download the object into a new file under `dir` and return its path.
    pub fn download(&self, env: &CloudEnv, dir: &Path) -> Result<PathBuf, ContextError> {
        let dest = dir.join("context-object.tar");
        let result = match self {
            ObjectSource::S3 { bucket, key } => s3::download(bucket, key, env, &dest),
            ObjectSource::Gcs { bucket, object } => gcs::download(bucket, object, env, &dest),
            ObjectSource::Azure(blob) => blob.download(env, &dest),
        };
        match result {
            Ok(bytes) => {
                tracing::info!(
                    "downloaded build context {} ({bytes} bytes)",
                    self.describe()
                );
                Ok(dest)
            }
            Err(message) => Err(ContextError::ObjectStore {
                location: self.describe(),
                message,
            }),
        }
    }
}

/// Send `request` and save a successful body at `dest`; an unsuccessful answer becomes an error
/// naming what was asked (`what`, never a header) and what the server said.
fn fetch_to_file(
    request: reqwest::blocking::RequestBuilder,
    what: &str,
    dest: &Path,
) -> Result<u64, String> {
    let response = request
        .send()
        .map_err(|e| format!("{what}: request failed: {}", super::http::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!(
            "{what}: the server answered {}",
            super::http::error_summary(response)
        ));
    }
    super::http::save_body(response, dest)
}

/// Hex of SHA-256.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// HMAC-SHA-256 with the already-linked aws-lc-rs (rustls' crypto provider), so that no second
/// crypto stack is compiled in.
fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, data).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_split_like_kaniko() {
        let s3 = |rest: &str| ObjectSource::parse_bucket_url("s3", rest).unwrap();
        assert_eq!(
            s3("b/dir/ctx.tgz"),
            ObjectSource::S3 {
                bucket: "b".into(),
                key: "dir/ctx.tgz".into()
            }
        );
        for rest in ["b", "b/"] {
            assert_eq!(
                s3(rest),
                ObjectSource::S3 {
                    bucket: "b".into(),
                    key: "context.tar.gz".into()
                }
            );
        }
        assert_eq!(
            ObjectSource::parse_bucket_url("gs", "g/x").unwrap(),
            ObjectSource::Gcs {
                bucket: "g".into(),
                object: "x".into()
            }
        );
        assert!(ObjectSource::parse_bucket_url("s3", "/k").is_err());
    }

    #[test]
    fn env_debug_shows_names_only() {
        let env = CloudEnv::from_lookup(|k| {
            (k == "AWS_SECRET_ACCESS_KEY").then(|| "s3cr3t-value".to_string())
        });
        let shown = format!("{env:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("s3cr3t"));
        assert_eq!(env.get("AWS_REGION"), None);
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
