//! `s3://bucket/key` contexts: one GET signed with AWS Signature Version 4. Credentials and region
//! come from the places the AWS SDK for Go v2 (kaniko's) reads first: the `AWS_*` variables, then
//! the shared credentials and config files of `AWS_PROFILE`. `S3_ENDPOINT` and
//! `S3_FORCE_PATH_STYLE` work as in kaniko. Written here rather than with an AWS SDK crate: one
//! signed GET needs only HMAC and SHA-256, which are already linked.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{fetch_to_file, hmac_sha256, sha256_hex, CloudEnv};
use crate::context::http::{client, uri_encode};

/// SHA-256 of an empty body, the payload hash of a GET.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Where the SDK would fall back to when no region is configured anywhere: the SDK fails, Kiln
/// uses the region of AWS's global endpoint (documented in the README).
const DEFAULT_REGION: &str = "us-east-1";

/// Static AWS credentials. `Debug` never shows the secret or the session token.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

pub(super) fn download(
    bucket: &str,
    key: &str,
    env: &CloudEnv,
    dest: &Path,
) -> Result<u64, String> {
    let profile = env
        .first(&["AWS_PROFILE", "AWS_DEFAULT_PROFILE"])
        .unwrap_or("default")
        .to_string();
    let creds = credentials(env, &profile)?;
    let region = region(env, &profile);
    let (url, host, path) = object_url(bucket, key, env, &region)?;
    let signed = sign(
        "GET",
        &host,
        &path,
        &[("x-amz-content-sha256", EMPTY_SHA256)],
        &creds,
        &region,
        Utc::now(),
    );
    let mut request = client()?.get(url);
    for (name, value) in signed {
        request = request.header(name, value);
    }
    fetch_to_file(request, &format!("GetObject (region {region})"), dest)
}

/// The object's URL, its `Host` header value and its canonical (encoded) path. Without
/// `S3_ENDPOINT`: AWS's virtual-hosted URL. With it: the endpoint, path-style when
/// `S3_FORCE_PATH_STYLE=true` (kaniko honours that variable only together with an endpoint) or
/// when virtual hosting cannot work.
fn object_url(
    bucket: &str,
    key: &str,
    env: &CloudEnv,
    region: &str,
) -> Result<(String, String, String), String> {
    let encoded_key = uri_encode(key, true);
    let Some(endpoint) = env.get("S3_ENDPOINT") else {
        let host = format!("{bucket}.s3.{region}.amazonaws.com");
        let path = format!("/{encoded_key}");
        return Ok((format!("https://{host}{path}"), host, path));
    };
    let base = reqwest::Url::parse(endpoint).map_err(|e| {
        format!("S3_ENDPOINT {endpoint:?} is not a URL ({e}); use e.g. https://minio.example:9000")
    })?;
    let Some(endpoint_host) = base.host_str() else {
        return Err(format!("S3_ENDPOINT {endpoint:?} names no host"));
    };
    // As the SDK's endpoint rules: an IP-address endpoint, or a bucket that is not one DNS
    // label, cannot be virtual-hosted, so those go path-style too.
    let force_path = env
        .get("S3_FORCE_PATH_STYLE")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || endpoint_host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
        || bucket.contains('.');
    let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
    let prefix = base.path().trim_end_matches('/');
    let (host, path) = if force_path {
        (
            format!("{endpoint_host}{port}"),
            format!("{prefix}/{}/{encoded_key}", uri_encode(bucket, false)),
        )
    } else {
        (
            format!("{bucket}.{endpoint_host}{port}"),
            format!("{prefix}/{encoded_key}"),
        )
    };
    Ok((format!("{}://{host}{path}", base.scheme()), host, path))
}

/// The first credentials found: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
/// `AWS_SESSION_TOKEN`), then `profile` in the shared credentials file, then in the config file.
fn credentials(env: &CloudEnv, profile: &str) -> Result<Credentials, String> {
    let id = env.first(&["AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY"]);
    let secret = env.first(&["AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY"]);
    match (id, secret) {
        (Some(id), Some(secret)) => {
            return Ok(Credentials {
                access_key_id: id.to_string(),
                secret_access_key: secret.to_string(),
                session_token: env.get("AWS_SESSION_TOKEN").map(str::to_string),
            })
        }
        (Some(_), None) => {
            return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_string())
        }
        (None, Some(_)) => {
            return Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_string())
        }
        (None, None) => {}
    }
    let files = [
        (credentials_file(env), profile.to_string()),
        (config_file(env), config_section(profile)),
    ];
    for (path, section) in files {
        let Some(path) = path else { continue };
        let Some(values) = read_ini_section(&path, &section)? else {
            continue;
        };
        let get = |k: &str| values.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let (Some(id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("aws_session_token"),
            });
        }
    }
    Err(format!(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials), or give profile \"{profile}\" static keys in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials); web identity, SSO and instance-role credentials are not read"
    ))
}

/// `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region` in the config file, else us-east-1.
fn region(env: &CloudEnv, profile: &str) -> String {
    if let Some(r) = env.first(&["AWS_REGION", "AWS_DEFAULT_REGION"]) {
        return r.to_string();
    }
    config_file(env)
        .and_then(|path| {
            read_ini_section(&path, &config_section(profile))
                .ok()
                .flatten()
        })
        .and_then(|values| values.into_iter().find(|(k, _)| k == "region"))
        .map(|(_, v)| v)
        .unwrap_or_else(|| DEFAULT_REGION.to_string())
}

fn credentials_file(env: &CloudEnv) -> Option<PathBuf> {
    env.get("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env.home_file(".aws/credentials"))
}

fn config_file(env: &CloudEnv) -> Option<PathBuf> {
    env.get("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| env.home_file(".aws/config"))
}

/// The config file names profiles `[profile NAME]`, except `[default]`.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    }
}

/// The `key = value` pairs of `[section]` in an INI file; `None` when the file or the section
/// does not exist. Errors name the file only, never a value.
fn read_ini_section(path: &Path, section: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    Ok(parse_ini_section(&text, section))
}

fn parse_ini_section(text: &str, section: &str) -> Option<Vec<(String, String)>> {
    let mut inside = false;
    let mut found = None::<Vec<(String, String)>>;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.split_whitespace().collect::<Vec<_>>().join(" ") == section;
            if inside {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            found
                .get_or_insert_with(Vec::new)
                .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    found
}

/// SigV4 headers for a request without a body: `x-amz-date`, the given `headers` (already in the
/// request: they are signed too), `x-amz-security-token` when there is a session token, and
/// `Authorization`. Returned in the order to send them.
fn sign(
    method: &str,
    host: &str,
    canonical_path: &str,
    headers: &[(&str, &str)],
    creds: &Credentials,
    region: &str,
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let day = now.format("%Y%m%d").to_string();
    let mut signed: Vec<(String, String)> = vec![
        ("host".into(), host.to_string()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    signed.extend(
        headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string())),
    );
    if let Some(token) = &creds.session_token {
        signed.push(("x-amz-security-token".into(), token.clone()));
    }
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let payload_hash = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-content-sha256"))
        .map_or(EMPTY_SHA256, |(_, v)| v);
    let canonical_request = format!(
        "{method}\n{canonical_path}\n\n{canonical_headers}\n{signed_names}\n{payload_hash}"
    );
    let scope = format!("{day}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        day.as_bytes(),
    );
    for part in [region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
        creds.access_key_id
    );
    signed
        .into_iter()
        .filter(|(k, _)| k != "host")
        .chain(std::iter::once((
            "authorization".to_string(),
            authorization,
        )))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> CloudEnv {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CloudEnv::from_lookup(move |k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    /// AWS's documented example "GET Object" of Signature Version 4 (S3 API reference,
    /// sig-v4-header-based-auth).
    #[test]
    fn signs_awss_documented_example() {
        let creds = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let now = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let headers = sign(
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/test.txt",
            &[
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
            ],
            &creds,
            "us-east-1",
            now,
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn endpoints_and_path_style() {
        let aws = env(&[]);
        let (url, host, path) = object_url("b", "d/ctx.tar.gz", &aws, "eu-west-1").unwrap();
        assert_eq!(url, "https://b.s3.eu-west-1.amazonaws.com/d/ctx.tar.gz");
        assert_eq!(
            (host.as_str(), path.as_str()),
            ("b.s3.eu-west-1.amazonaws.com", "/d/ctx.tar.gz")
        );
        let minio = env(&[
            ("S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("S3_FORCE_PATH_STYLE", "true"),
        ]);
        let (url, host, _) = object_url("b", "a b", &minio, "us-east-1").unwrap();
        assert_eq!(url, "http://127.0.0.1:9000/b/a%20b");
        assert_eq!(host, "127.0.0.1:9000");
        let vhost = env(&[("S3_ENDPOINT", "https://s3.example")]);
        let (url, _, _) = object_url("b", "k", &vhost, "us-east-1").unwrap();
        assert_eq!(url, "https://b.s3.example/k");
        let (url, _, _) = object_url("a.b", "k", &vhost, "us-east-1").unwrap();
        assert_eq!(url, "https://s3.example/a.b/k");
        let ip = env(&[("S3_ENDPOINT", "http://127.0.0.1:9000/")]);
        let (url, _, _) = object_url("b", "k", &ip, "us-east-1").unwrap();
        assert_eq!(url, "http://127.0.0.1:9000/b/k");
        assert!(object_url("b", "k", &env(&[("S3_ENDPOINT", "not a url")]), "r").is_err());
    }

    #[test]
    fn credentials_from_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(".aws")).unwrap();
        fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = sdef\n\n[ci]\naws_access_key_id=AKCI\naws_secret_access_key=sci\naws_session_token=tci\n",
        )
        .unwrap();
        fs::write(
            dir.path().join(".aws/config"),
            "[default]\nregion = eu-central-1\n[profile ci]\nregion=ap-south-1\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap();
        let e = env(&[("HOME", home)]);
        assert_eq!(credentials(&e, "default").unwrap().access_key_id, "AKDEF");
        assert_eq!(region(&e, "default"), "eu-central-1");
        let ci = credentials(&e, "ci").unwrap();
        assert_eq!(ci.session_token.as_deref(), Some("tci"));
        assert_eq!(region(&e, "ci"), "ap-south-1");
        let vars = env(&[
            ("HOME", home),
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "senv"),
            ("AWS_REGION", "us-west-2"),
        ]);
        assert_eq!(
            credentials(&vars, "default").unwrap().access_key_id,
            "AKENV"
        );
        assert_eq!(region(&vars, "default"), "us-west-2");
        let err = credentials(&env(&[("HOME", "/nonexistent")]), "default").unwrap_err();
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
        assert!(!format!("{ci:?}").contains("sci"));
        assert_eq!(region(&env(&[]), "default"), "us-east-1");
    }
}
