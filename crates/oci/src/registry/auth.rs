//! Registry credentials from a docker `config.json`, matched to registries the way Docker
//! matches them: `auths` entries, and which credential helper (`credHelpers`, `credsStore`) a
//! registry's credentials come from. Only reads the file (helpers are run by
//! [`super::keychain`]): never logs, prints or puts a secret in an error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::error::RegistryError;

/// The key under which `docker login` stores Docker Hub credentials.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// One registry's credentials. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`) from `docker login`.
    IdentityToken {
        username: String,
        token: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    /// What oci-client sends. oci-client has no refresh-token grant, so an identity token
    /// is offered as the password of a basic-auth token request, which registries that
    /// issue identity tokens (ACR, Harbor) accept.
    pub(crate) fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::IdentityToken { username, token } => {
                let user = if username.is_empty() {
                    "<token>".to_string()
                } else {
                    username.clone()
                };
                RegistryAuth::Basic(user, token.clone())
            }
        }
    }

    /// The strings that must never appear in a message.
    pub(crate) fn secrets(&self) -> Vec<String> {
        match self {
            Credentials::Basic { username, password } => {
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                vec![password.clone(), b64]
            }
            Credentials::IdentityToken { token, .. } => vec![token.clone()],
        }
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The credentials of a docker config, keyed by normalised registry host, and its credential
/// helpers.
#[derive(Default, Clone)]
pub struct DockerConfig {
    /// The file they came from, for "check your credentials in …" hints.
    pub path: Option<PathBuf>,
    entries: Vec<(String, Credentials)>,
    /// `credHelpers`: registry key (as written) to helper name.
    cred_helpers: BTreeMap<String, String>,
    /// `credsStore`: the helper of every registry without a `credHelpers` entry.
    creds_store: Option<String>,
}

/// The credential helper a registry's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperChoice {
    /// `<name>` of `docker-credential-<name>`.
    pub name: String,
    /// What the helper is asked for: the registry's key, as Docker passes it.
    pub key: String,
    /// `credHelpers` or `credsStore`.
    pub field: &'static str,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field(
                "registries",
                &self.entries.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("cred_helpers", &self.cred_helpers)
            .field("creds_store", &self.creds_store)
            .finish()
    }
}

impl DockerConfig {
    /// Where the docker config is looked for: the explicit path, else
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, else
    /// `/kaniko/.docker/config.json` (kaniko's place, so existing Pod specs keep working).
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            candidates.push(PathBuf::from(dir).join("config.json"));
        }
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(PathBuf::from(home).join(".docker/config.json"));
        }
        candidates.push(PathBuf::from("/kaniko/.docker/config.json"));
        candidates.into_iter().find(|p| p.is_file())
    }

    /// Loads the config found by [`DockerConfig::locate`]; no file means no credentials.
    /// An explicit path that does not exist is an error, since the user asked for it.
    pub fn load(explicit: Option<&Path>) -> Result<DockerConfig, RegistryError> {
        match Self::locate(explicit) {
            Some(path) => {
                let text = std::fs::read(&path).map_err(|e| RegistryError::DockerConfig {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
                let mut cfg = Self::parse(&text, &path)?;
                cfg.path = Some(path);
                Ok(cfg)
            }
            None => Ok(DockerConfig::default()),
        }
    }

    /// Parses config.json content. Errors name the file and entry, never the values.
    pub fn parse(text: &[u8], path: &Path) -> Result<DockerConfig, RegistryError> {
        let file: ConfigFile = serde_json::from_slice(text).map_err(|e| {
            // serde's message may quote a value; keep only where it failed.
            RegistryError::DockerConfig {
                path: path.to_path_buf(),
                detail: format!("not valid JSON (line {}, column {})", e.line(), e.column()),
            }
        })?;
        let mut entries = Vec::new();
        for (key, entry) in file.auths {
            let host = normalize_auth_key(&key);
            let creds =
                entry_credentials(&entry).map_err(|detail| RegistryError::DockerConfig {
                    path: path.to_path_buf(),
                    detail: format!("entry {key:?}: {detail}"),
                })?;
            if let Some(c) = creds {
                entries.push((host, c));
            }
        }
        Ok(DockerConfig {
            path: Some(path.to_path_buf()),
            entries,
            cred_helpers: file.cred_helpers,
            // Docker treats an empty credsStore as none.
            creds_store: file.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// The helper that answers for `registry`, as Docker's `GetCredentialsStore` picks it: the
    /// `credHelpers` entry whose key is exactly the registry's key, else `credsStore`. The key is
    /// what go-containerregistry (and so kaniko) asks Docker's config for: `host[:port]`, and
    /// `https://index.docker.io/v1/` for Docker Hub. When a helper answers for a registry, its
    /// `auths` entry is not used, as in Docker.
    pub fn helper_for(&self, registry: &str) -> Option<HelperChoice> {
        let key = helper_key(registry);
        let (name, field) = match self.cred_helpers.get(&key) {
            Some(name) => (name.clone(), "credHelpers"),
            None => (self.creds_store.clone()?, "credsStore"),
        };
        Some(HelperChoice { name, key, field })
    }

    /// The credentials for `registry` (`host[:port]`, or `docker.io` for Docker Hub).
    pub fn credentials_for(&self, registry: &str) -> Option<&Credentials> {
        let wanted = normalize_auth_key(registry);
        self.entries
            .iter()
            .find(|(host, _)| *host == wanted)
            .map(|(_, c)| c)
    }

    /// A description of the config file for error hints.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("docker config {}", p.display()),
            None => "no docker config.json found; anonymous access was used".to_string(),
        }
    }

    /// Every secret in the config, for redaction.
    pub(crate) fn all_secrets(&self) -> Vec<String> {
        self.entries.iter().flat_map(|(_, c)| c.secrets()).collect()
    }
}

fn entry_credentials(entry: &AuthEntry) -> Result<Option<Credentials>, String> {
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "`auth` is not valid base64 of user:password".to_string())?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| "`auth` does not decode to UTF-8 text".to_string())?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| "`auth` does not decode to user:password".to_string())?;
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    if let Some(token) = entry.identity_token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken {
            username: username.unwrap_or_default(),
            token: token.to_string(),
        }));
    }
    match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() || !password.is_empty() => {
            Ok(Some(Credentials::Basic { username, password }))
        }
        _ => Ok(None),
    }
}

/// The key Docker's config is asked with for `registry`: `host[:port]`, or Docker Hub's
/// historical `https://index.docker.io/v1/`.
pub fn helper_key(registry: &str) -> String {
    match normalize_auth_key(registry).as_str() {
        "docker.io" => DOCKER_HUB_AUTH_KEY.to_string(),
        host => host.to_string(),
    }
}

/// Reduces a config key or registry name to `host[:port]` like Docker's
/// `ConvertToHostname`, mapping every Docker Hub spelling to `docker.io`.
pub fn normalize_auth_key(key: &str) -> String {
    let key = key.trim();
    if key == DOCKER_HUB_AUTH_KEY {
        return "docker.io".to_string();
    }
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> DockerConfig {
        DockerConfig::parse(json.as_bytes(), Path::new("/tmp/config.json")).unwrap()
    }

    #[test]
    fn keys_match_like_docker() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("hub:hubpw");
        let c = cfg(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{b64}"}},
                "https://reg.example:5000/v2/": {{"username": "u", "password": "p"}},
                "plain.example": {{"identitytoken": "tok"}}
            }}}}"#
        ));
        assert_eq!(
            c.credentials_for("docker.io"),
            Some(&Credentials::Basic {
                username: "hub".into(),
                password: "hubpw".into()
            })
        );
        assert_eq!(
            c.credentials_for("index.docker.io"),
            c.credentials_for("docker.io")
        );
        assert_eq!(
            c.credentials_for("reg.example:5000"),
            Some(&Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert!(c.credentials_for("reg.example").is_none());
        assert!(matches!(
            c.credentials_for("plain.example"),
            Some(Credentials::IdentityToken { .. })
        ));
    }

    #[test]
    fn secrets_never_in_debug_or_errors() {
        let c = cfg(r#"{"auths": {"r.example": {"username": "u", "password": "s3cret-pw"}}}"#);
        let dbg = format!("{c:?} {:?}", c.credentials_for("r.example"));
        assert!(!dbg.contains("s3cret-pw"), "{dbg}");
        let e = DockerConfig::parse(
            br#"{"auths": {"r": {"auth": "s3cret-not-base64!"}}}"#,
            Path::new("/x"),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("not valid base64"), "{e}");
    }

    #[test]
    fn helpers_are_picked_like_docker() {
        let c = cfg(r#"{
            "auths": {"a.example": {"username": "u", "password": "p"}},
            "credHelpers": {"a.example": "ecr-login", "https://index.docker.io/v1/": "hub",
                            "b.example:5000": "b"},
            "credsStore": "store"
        }"#);
        let pick = |r: &str| c.helper_for(r).map(|h| (h.name, h.key, h.field));
        assert_eq!(
            pick("A.example"),
            Some(("ecr-login".into(), "a.example".into(), "credHelpers"))
        );
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                pick(hub),
                Some((
                    "hub".into(),
                    "https://index.docker.io/v1/".into(),
                    "credHelpers"
                ))
            );
        }
        assert_eq!(
            pick("b.example:5000"),
            Some(("b".into(), "b.example:5000".into(), "credHelpers"))
        );
        // Another port is another registry: the store answers for it.
        assert_eq!(
            pick("b.example"),
            Some(("store".into(), "b.example".into(), "credsStore"))
        );
        let no_store = cfg(r#"{"credsStore": "", "credHelpers": {"x.example": "x"}}"#);
        assert_eq!(no_store.helper_for("y.example"), None);
    }

    #[test]
    fn explicit_missing_config_is_an_error() {
        let e = DockerConfig::load(Some(Path::new("/nonexistent/kiln/config.json"))).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/kiln/config.json"),
            "{e}"
        );
    }
}
