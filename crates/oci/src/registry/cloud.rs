//! The keychains kaniko v1.24 tries after the docker config (`pkg/creds/creds.go`: a
//! go-containerregistry multi-keychain of the docker config, `google.Keychain`, the ECR helper,
//! the ACR helper and the GitLab CI helper, the first non-anonymous answer winning), reduced to
//! what decides them: which registry hosts each one answers for, and GitLab's environment
//! variables. Pure: it runs nothing and reads the environment only in [`GitLabCi::from_env`];
//! the helpers are run by [`super::keychain`].

use std::fmt;

use super::auth::Credentials;

/// A kaniko keychain Kiln asks through a credential helper program, for the registries whose
/// host it matches, as kaniko's compiled-in copy of that helper would be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudKeychain {
    /// go-containerregistry's `google.Keychain` (Application Default Credentials, then
    /// `gcloud`), asked through `docker-credential-gcr`, which tries the same sources.
    Google,
    /// amazon-ecr-credential-helper's `ECRHelper`: `docker-credential-ecr-login`.
    Ecr,
    /// docker-credential-acr-env's `ACRCredHelper`: `docker-credential-acr-env`.
    Acr,
}

impl CloudKeychain {
    /// In kaniko's order.
    pub const ALL: [CloudKeychain; 3] = [
        CloudKeychain::Google,
        CloudKeychain::Ecr,
        CloudKeychain::Acr,
    ];

    /// `<name>` of the `docker-credential-<name>` program that answers for it.
    pub fn helper(self) -> &'static str {
        match self {
            CloudKeychain::Google => "gcr",
            CloudKeychain::Ecr => "ecr-login",
            CloudKeychain::Acr => "acr-env",
        }
    }

    /// The registries it is for, in words.
    pub fn registries(self) -> &'static str {
        match self {
            CloudKeychain::Google => "Google Artifact Registry and GCR",
            CloudKeychain::Ecr => "Amazon ECR",
            CloudKeychain::Acr => "Azure Container Registry",
        }
    }

    /// Whether kaniko's keychain answers for `registry` (`host[:port]`, as go-containerregistry's
    /// `RegistryStr`). Case-sensitive, as in Go.
    pub fn matches(self, registry: &str) -> bool {
        match self {
            CloudKeychain::Google => is_google(registry),
            CloudKeychain::Ecr => go_hostname(registry).is_some_and(is_ecr_host),
            CloudKeychain::Acr => go_hostname(registry).is_some_and(is_acr_host),
        }
    }

    /// The one that answers for `registry`, if any (the patterns do not overlap).
    pub fn for_registry(registry: &str) -> Option<CloudKeychain> {
        Self::ALL.into_iter().find(|k| k.matches(registry))
    }
}

/// `google.Keychain`'s `isGoogle` (go-containerregistry v0.20.4, `pkg/v1/google/keychain.go`),
/// on the whole `host[:port]`: a port makes it no match.
fn is_google(registry: &str) -> bool {
    registry == "gcr.io"
        || registry.ends_with(".gcr.io")
        || registry.ends_with(".pkg.dev")
        || registry.ends_with(".google.com")
}

/// amazon-ecr-credential-helper v0.9.1 `api.ExtractRegistry`: `public.ecr.aws`, or
/// `^(\d{12})\.dkr\.ecr(\-fips)?\.([a-zA-Z0-9][a-zA-Z0-9-_]*)\.(amazonaws\.com(\.cn)?|
/// sc2s\.sgov\.gov|c2s\.ic\.gov|cloud\.adc-e\.uk|csp\.hci\.ic\.gov)$`, matched by hand (the
/// region cannot hold a dot, so splitting at dots follows the expression exactly).
fn is_ecr_host(host: &str) -> bool {
    if host == "public.ecr.aws" {
        return true;
    }
    let Some((account, rest)) = host.split_once('.') else {
        return false;
    };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some(rest) = rest.strip_prefix("dkr.ecr") else {
        return false;
    };
    let rest = rest.strip_prefix("-fips").unwrap_or(rest);
    let Some((region, domain)) = rest.strip_prefix('.').and_then(|r| r.split_once('.')) else {
        return false;
    };
    let region_ok = region
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    region_ok
        && matches!(
            domain,
            "amazonaws.com"
                | "amazonaws.com.cn"
                | "sc2s.sgov.gov"
                | "c2s.ic.gov"
                | "cloud.adc-e.uk"
                | "csp.hci.ic.gov"
        )
}

/// docker-credential-acr-env (2023-03-04) `isACRRegistry`: `mcr.microsoft.com`, or a host
/// ending in `.azurecr.io`, `.azurecr.cn`, `.azurecr.de` or `.azurecr.us`. Its expression is
/// not anchored (`a.azurecr.io.example.com` matches it, and would get an Azure AD token sent
/// to it); Kiln requires the suffix, on purpose.
fn is_acr_host(host: &str) -> bool {
    host == "mcr.microsoft.com"
        || [".azurecr.io", ".azurecr.cn", ".azurecr.de", ".azurecr.us"]
            .iter()
            .any(|s| host.ends_with(s))
}

/// The host of Go's `url.Parse("https://" + registry).Hostname()`: the port and an IPv6
/// address's brackets removed; `None` where Go's parser fails (a port that is not a number).
fn go_hostname(registry: &str) -> Option<&str> {
    let authority = registry.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return valid_port(after).then_some(inside);
    }
    match host.rsplit_once(':') {
        Some((name, port)) => valid_port(&format!(":{port}")).then_some(name),
        None => Some(host),
    }
}

/// Go's `validOptionalPort`: empty, or `:` and digits.
fn valid_port(port: &str) -> bool {
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// GitLab CI's registry credentials, as ePirat/docker-credential-gitlabci v1.0.0 (the last of
/// kaniko's keychains) reads them: `CI_REGISTRY`, `CI_REGISTRY_USER`, `CI_REGISTRY_PASSWORD`.
/// `Debug` shows no password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GitLabCi {
    /// `CI_REGISTRY`: `host[:port]`, optionally with a scheme.
    pub registry: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for GitLabCi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitLabCi")
            .field("registry", &self.registry)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl GitLabCi {
    /// The variables of this process; `None` without `CI_REGISTRY`.
    pub fn from_env() -> Option<GitLabCi> {
        let var = |n: &str| std::env::var_os(n).map(|v| v.to_string_lossy().into_owned());
        Some(GitLabCi {
            registry: var("CI_REGISTRY")?,
            user: var("CI_REGISTRY_USER"),
            password: var("CI_REGISTRY_PASSWORD"),
        })
    }

    /// Whether `CI_REGISTRY` names `registry`: same host (ports ignored) and HTTPS, as the
    /// helper's `matchRegistryURL` compares `https://<registry>` with it.
    pub fn names(&self, registry: &str) -> bool {
        let (scheme, rest) = match self.registry.split_once("://") {
            Some((s, r)) if s == "https" || s == "http" => (s, r),
            _ => ("https", self.registry.as_str()),
        };
        let ours = go_hostname(rest);
        scheme == "https" && ours.is_some_and(|h| !h.is_empty()) && ours == go_hostname(registry)
    }

    /// The credentials for `registry`: `CI_REGISTRY_USER` and `CI_REGISTRY_PASSWORD` when
    /// `CI_REGISTRY` names it and both are set (both empty: none).
    pub fn credentials_for(&self, registry: &str) -> Option<Credentials> {
        if !self.names(registry) {
            return None;
        }
        let (user, password) = (self.user.clone()?, self.password.clone()?);
        match (user.as_str(), password.is_empty()) {
            ("", true) => None,
            ("<token>", _) => Some(Credentials::IdentityToken {
                username: String::new(),
                token: password,
            }),
            _ => Some(Credentials::Basic {
                username: user,
                password,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hosts of the Go sources' own tests (ecr-login `TestExtractRegistry`, acr-env
    /// `TestIsACRHelper`; google.Keychain's rule has no host table there), as registries.
    #[test]
    fn hosts_match_as_in_kanikos_keychains() {
        use CloudKeychain::*;
        let table: &[(&str, Option<CloudKeychain>)] = &[
            // ecr-login TestExtractRegistry (URLs reduced to their registry).
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com", Some(Ecr)),
            ("123456789012.dkr.ecr.us-west-2.amazonaws.com", Some(Ecr)),
            (
                "210987654321.dkr.ecr.cn-north-1.amazonaws.com.cn",
                Some(Ecr),
            ),
            ("210987654321.dkr.ecr.us-iso-east-1.c2s.ic.gov", Some(Ecr)),
            (
                "123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov",
                Some(Ecr),
            ),
            (
                "123456789012.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk",
                Some(Ecr),
            ),
            (
                "123456789012.dkr.ecr.us-isof-east-1.csp.hci.ic.gov",
                Some(Ecr),
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                Some(Ecr),
            ),
            ("public.ecr.aws", Some(Ecr)),
            (".dkr.ecr.not-real.amazonaws.com", None),
            ("not.ecr.io", None),
            (
                "123456789012.dkr.ecr.us-west-2.amazonaws.com.fake.example.com",
                None,
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com.fake.example.com",
                None,
            ),
            (
                "210987654321.dkr.ecr.cn-north-1.amazonaws.com.cn.fake.example.com.cn",
                None,
            ),
            ("public.ecr.aws.fake.example.com", None),
            // A port is not part of the host the expression sees.
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",
                Some(Ecr),
            ),
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com:x", None),
            ("12345678901.dkr.ecr.us-east-1.amazonaws.com", None),
            ("123456789012.dkr.ecr._us.amazonaws.com", None),
            ("123456789012.dkr.ecr.us_east-1.amazonaws.com", Some(Ecr)),
            ("123456789012.DKR.ECR.us-east-1.amazonaws.com", None),
            // acr-env TestIsACRHelper.
            ("myregistry.azurecr.io", Some(Acr)),
            ("myregistry.azurecr.cn", Some(Acr)),
            ("myregistry.azurecr.de", Some(Acr)),
            ("myregistry.azurecr.us", Some(Acr)),
            ("mcr.microsoft.com", Some(Acr)),
            ("myregistry.azurecr.me", None),
            ("notacr.xcr.example", None),
            ("127.0.0.1:12345", None),
            ("localhost:12345", None),
            ("notaurl-)(*$@)(*@)(*", None),
            ("myregistry.azurecr.io:5000", Some(Acr)),
            // Matched by acr-env's unanchored expression; not by Kiln.
            ("myregistry.azurecr.io.example.com", None),
            // google.Keychain's isGoogle, on the whole registry string.
            ("gcr.io", Some(Google)),
            ("eu.gcr.io", Some(Google)),
            ("europe-docker.pkg.dev", Some(Google)),
            ("us-central1-docker.pkg.dev", Some(Google)),
            ("source.developers.google.com", Some(Google)),
            ("gcr.io:443", None),
            ("gcr.io.example.com", None),
            ("mygcr.io", None),
            ("pkg.dev", None),
            // Neither.
            ("docker.io", None),
            ("index.docker.io", None),
            ("ghcr.io", None),
            ("registry.example.com", None),
        ];
        for (registry, want) in table {
            assert_eq!(CloudKeychain::for_registry(registry), *want, "{registry}");
        }
    }

    #[test]
    fn go_hostnames() {
        assert_eq!(go_hostname("h.example:5000"), Some("h.example"));
        assert_eq!(go_hostname("[::1]:5000"), Some("::1"));
        assert_eq!(go_hostname("[::1]x"), None);
        assert_eq!(go_hostname("h.example/v2/x"), Some("h.example"));
        assert_eq!(go_hostname("h.example:"), Some("h.example"));
    }

    fn gitlab(registry: &str) -> GitLabCi {
        GitLabCi {
            registry: registry.into(),
            user: Some("gitlab-ci-token".into()),
            password: Some("job-token-secret".into()),
        }
    }

    /// The cases of docker-credential-gitlabci's `TestMatchRegistryURL`.
    #[test]
    fn gitlab_ci_registry_matches_like_the_helper() {
        assert!(gitlab("registry.example.org").names("registry.example.org"));
        assert!(gitlab("https://registry.example.org").names("registry.example.org"));
        assert!(!gitlab("registry.example.org").names("registry.example.com"));
        assert!(!gitlab("https://registry.example.org").names("registry.example.com"));
        assert!(!gitlab("http://registry.example.org").names("registry.example.org"));
        assert!(!gitlab("https://").names(""));
        assert!(!gitlab("").names(""));
        // Ports are not compared (url.Hostname).
        assert!(gitlab("registry.example.org:5050").names("registry.example.org"));
        assert!(gitlab("registry.example.org").names("registry.example.org:443"));

        let c = gitlab("registry.example.org");
        assert_eq!(
            c.credentials_for("registry.example.org"),
            Some(Credentials::Basic {
                username: "gitlab-ci-token".into(),
                password: "job-token-secret".into()
            })
        );
        assert_eq!(c.credentials_for("other.example.org"), None);
        let no_password = GitLabCi {
            password: None,
            ..c.clone()
        };
        assert_eq!(no_password.credentials_for("registry.example.org"), None);
        assert!(!format!("{c:?}").contains("job-token-secret"));
    }
}
