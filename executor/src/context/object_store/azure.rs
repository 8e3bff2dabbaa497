//! Azure Blob contexts: kaniko's URL forms (`https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB`
//! and the China, Germany and US Government clouds' equivalents), plus, for Azurite or another
//! endpoint, URLs under `KILN_AZURE_BLOB_ENDPOINT` (e.g. `http://127.0.0.1:10000/devstoreaccount1`,
//! path-style: the account is the endpoint's first path segment). One GET Blob signed with the
//! account key from `AZURE_STORAGE_ACCESS_KEY` (Shared Key); the key never reaches a message.

use std::path::Path;

use base64::Engine;

use super::{fetch_to_file, hmac_sha256, CloudEnv};
use crate::context::http::client;

/// The blob service hosts kaniko recognises (`constants.AzureBlobStorageHostRegEx`).
const CLOUD_SUFFIXES: [&str; 4] = [
    ".blob.core.windows.net",
    ".blob.core.chinacloudapi.cn",
    ".blob.core.cloudapi.de",
    ".blob.core.usgovcloudapi.net",
];

/// A service version every current Azure Storage endpoint and Azurite serve.
const API_VERSION: &str = "2021-08-06";

/// A blob to download: the URL to GET (as given, already percent-encoded as the user wrote it)
/// and the parts of it that Shared Key signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobUrl {
    url: String,
    account: String,
    /// The URL's path (encoded), which the canonicalized resource signs.
    path: String,
    container: String,
    blob: String,
}

impl BlobUrl {
    /// `url` when it names a blob: an https URL on one of the Azure clouds' blob hosts (as kaniko
    /// recognises it), or a URL under `endpoint` (`KILN_AZURE_BLOB_ENDPOINT`). `None` otherwise.
    pub fn parse(url: &str, endpoint: Option<&str>) -> Option<BlobUrl> {
        let url = url.split('#').next().unwrap_or(url);
        if let Some(endpoint) = endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            if let Some(rest) = url.strip_prefix(endpoint).and_then(|r| r.strip_prefix('/')) {
                let parsed = reqwest::Url::parse(endpoint).ok()?;
                let in_path = parsed.path().trim_matches('/');
                let account = match in_path.split('/').next() {
                    Some(first) if !first.is_empty() => first.to_string(),
                    _ => parsed.host_str()?.split('.').next()?.to_string(),
                };
                return BlobUrl::from_parts(url, account, rest);
            }
        }
        let rest = url.strip_prefix("https://")?;
        let (host, path) = rest.split_once('/')?;
        let account = CLOUD_SUFFIXES
            .iter()
            .find_map(|suffix| host.strip_suffix(suffix))
            .filter(|a| !a.is_empty() && !a.contains('.'))?;
        BlobUrl::from_parts(url, account.to_string(), path)
    }

    /// `container_and_blob` is the URL's path after the account part: `CONTAINER/BLOB...`.
    fn from_parts(url: &str, account: String, container_and_blob: &str) -> Option<BlobUrl> {
        let parsed = reqwest::Url::parse(url).ok()?;
        let (container, blob) = container_and_blob
            .split('?')
            .next()?
            .split_once('/')
            .unwrap_or((container_and_blob, ""));
        Some(BlobUrl {
            url: format!(
                "{}://{}{}",
                parsed.scheme(),
                host_port(&parsed)?,
                parsed.path()
            ),
            account,
            path: parsed.path().to_string(),
            container: container.to_string(),
            blob: blob.to_string(),
        })
    }

    /// The URL without any query (a SAS token in a query is dropped: the account key is used).
    pub fn describe(&self) -> String {
        self.url.clone()
    }

    pub fn download(&self, env: &CloudEnv, dest: &Path) -> Result<u64, String> {
        if self.container.is_empty() || self.blob.is_empty() {
            return Err(
                "names no blob; use https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH/TO/context.tar.gz"
                    .to_string(),
            );
        }
        let key = env.get("AZURE_STORAGE_ACCESS_KEY").ok_or(
            "AZURE_STORAGE_ACCESS_KEY is not set; it must hold the storage account's access key",
        )?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| "AZURE_STORAGE_ACCESS_KEY is not a base64 account key".to_string())?;
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let authorization = shared_key(&self.account, &key, "GET", &date, &self.path);
        let request = client()?
            .get(&self.url)
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header("Authorization", authorization);
        fetch_to_file(
            request,
            &format!(
                "Get Blob (account {}, container {}, blob {})",
                self.account, self.container, self.blob
            ),
            dest,
        )
    }
}

fn host_port(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// The `Authorization` header of a body-less request with only `x-ms-date` and `x-ms-version`
/// (Shared Key for Blob, service version 2009-09-19 and later).
fn shared_key(account: &str, key: &[u8], method: &str, date: &str, path: &str) -> String {
    // VERB, then Content-Encoding .. Range (eleven standard headers, all empty here), then the
    // canonicalized x-ms- headers and resource.
    let string_to_sign = format!(
        "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{account}{path}"
    );
    let signature = base64::engine::general_purpose::STANDARD
        .encode(hmac_sha256(key, string_to_sign.as_bytes()));
    format!("SharedKey {account}:{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kanikos_hosts_and_the_endpoint_override() {
        let b = BlobUrl::parse(
            "https://acct.blob.core.windows.net/ctr/dir/ctx.tar.gz",
            None,
        )
        .unwrap();
        assert_eq!(
            (b.account.as_str(), b.container.as_str(), b.blob.as_str()),
            ("acct", "ctr", "dir/ctx.tar.gz")
        );
        assert_eq!(b.path, "/ctr/dir/ctx.tar.gz");
        assert!(BlobUrl::parse("https://acct.blob.core.usgovcloudapi.net/c/b", None).is_some());
        assert!(BlobUrl::parse("https://example.com/c/b.tar.gz", None).is_none());
        assert!(BlobUrl::parse("http://acct.blob.core.windows.net/c/b", None).is_none());
        let endpoint = Some("http://127.0.0.1:10000/devstoreaccount1/");
        let a = BlobUrl::parse(
            "http://127.0.0.1:10000/devstoreaccount1/ctr/ctx.tar.gz",
            endpoint,
        )
        .unwrap();
        assert_eq!(
            (a.account.as_str(), a.container.as_str(), a.blob.as_str()),
            ("devstoreaccount1", "ctr", "ctx.tar.gz")
        );
        assert_eq!(a.path, "/devstoreaccount1/ctr/ctx.tar.gz");
        assert!(BlobUrl::parse("http://127.0.0.1:10001/x/c/b", endpoint).is_none());
        let host_style = BlobUrl::parse(
            "https://acct.blob.example/c/b",
            Some("https://acct.blob.example"),
        )
        .unwrap();
        assert_eq!(host_style.account, "acct");
    }

    #[test]
    fn shared_key_string_to_sign() {
        // HMAC over the exact string Azure documents for a GET with x-ms-date and x-ms-version.
        let key = b"key";
        let got = shared_key(
            "acct",
            key,
            "GET",
            "Fri, 26 Jun 2015 23:39:12 GMT",
            "/ctr/b",
        );
        let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
            key,
            b"GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-version:2021-08-06\n/acct/ctr/b",
        ));
        assert_eq!(got, format!("SharedKey acct:{expected}"));
    }
}
