//! Validation of an `ImageBuild` spec beyond what admission already enforces (an object stored
//! before the CRD tightened, or a rule the schema cannot express), and the check of its
//! overrides against what the operator's configuration permits. Pure: no client.

use std::time::Duration;

use super::reason;
use crate::config::{allowed, capability_name, OperatorConfig};
use crate::crd::ImageBuildSpec;
use crate::duration;
use crate::text::one_line;

/// Longest excerpt of a user-given value repeated in a message.
const MAX_ECHO: usize = 128;

/// A spec that passed validation, with its parsed values.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    pub timeout: Option<Duration>,
    pub retries: i32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidSpec {
    #[error("spec.source must set exactly one of git, configMap, persistentVolumeClaim, url; it sets {0}")]
    SourceCount(usize),
    #[error("spec.destinations is empty: give at least one image reference to push to")]
    NoDestination,
    #[error("spec.destinations[{0}] is empty: give an image reference like registry/repo:tag")]
    EmptyDestination(usize),
    #[error("spec.{field}: {source}")]
    Duration {
        field: &'static str,
        source: duration::DurationError,
    },
    #[error("spec.timeout must be at least one second, not {0}")]
    TimeoutTooShort(String),
    #[error(
        "spec.source.git.url {0:?} is an ssh URL, which needs spec.source.git.secretRef naming a \
         kubernetes.io/ssh-auth Secret (ssh-privatekey) with a known_hosts key holding the \
         server's host key line (host keys are always checked); or use the repository's https URL"
    )]
    SshGitUrl(String),
    #[error("spec.retries must be between 0 and 10, not {0}")]
    Retries(i32),
    #[error("spec.buildArgs has an invalid name {0:?}: names are non-empty and contain no '='")]
    BuildArgName(String),
    #[error("spec.{field} {value:?} {problem}: give a relative path with no '..' component")]
    OutsidePath {
        field: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error(
        "spec.secrets[{index}].id {id:?} is not a valid secret id: use 1-128 letters, digits, \
         '.', '_' or '-', starting with a letter or digit"
    )]
    SecretId { index: usize, id: String },
    #[error(
        "spec.secrets[{index}].id {id:?} is given twice: each build secret id names one Secret key"
    )]
    DuplicateSecretId { index: usize, id: String },
    #[error("spec.secrets[{index}].secretKeyRef {field} is empty: name the Secret and its key")]
    SecretKeyRef { index: usize, field: &'static str },
    #[error(
        "spec.executorImage {image:?} is not permitted by the operator's configuration: remove it \
         to build with the default executor image, or ask the cluster administrator to allow it \
         (Helm value overrides.executorImages, operator flag --allowed-executor-image)"
    )]
    ExecutorImageNotPermitted { image: String },
    #[error(
        "spec.serviceAccountName {name:?} is not permitted by the operator's configuration: remove \
         it, or ask the cluster administrator to allow it (Helm value overrides.serviceAccounts, \
         operator flag --allowed-service-account)"
    )]
    ServiceAccountNotPermitted { name: String },
    #[error(
        "spec.addCapabilities {capability:?} is not permitted by the operator's configuration: \
         remove it, or ask the cluster administrator to allow it (Helm value \
         overrides.capabilities, operator flag --allowed-capability)"
    )]
    CapabilityNotPermitted { capability: String },
}

impl InvalidSpec {
    /// The condition reason: `NotPermitted` for an override the operator's configuration
    /// refuses, `InvalidSpec` for everything else.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidSpec::ExecutorImageNotPermitted { .. }
            | InvalidSpec::ServiceAccountNotPermitted { .. }
            | InvalidSpec::CapabilityNotPermitted { .. } => reason::NOT_PERMITTED,
            _ => reason::INVALID_SPEC,
        }
    }
}

/// Checks that `value` names something inside the directory it is relative to: not absolute,
/// no `..` component, no NUL. The same rule as the CRD's (`crd::INSIDE_RULE`).
pub fn inside(field: &'static str, value: &str) -> Result<(), InvalidSpec> {
    let problem = if value.starts_with('/') {
        Some("is an absolute path")
    } else if value.split('/').any(|c| c == "..") {
        Some("leaves its directory through '..'")
    } else if value.contains('\0') {
        Some("contains a NUL character")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(InvalidSpec::OutsidePath {
            field,
            value: one_line(value, MAX_ECHO),
            problem,
        }),
        None => Ok(()),
    }
}

/// Whether `id` is a build secret id Kiln accepts, the rule of the CRD's `SECRET_ID_RULE`.
pub fn secret_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    id.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks `spec.secrets`: valid, unique ids and non-empty Secret references.
fn secrets(spec: &ImageBuildSpec) -> Result<(), InvalidSpec> {
    let mut seen = std::collections::BTreeSet::new();
    for (index, s) in spec.secrets.iter().enumerate() {
        if !secret_id(&s.id) {
            return Err(InvalidSpec::SecretId {
                index,
                id: one_line(&s.id, MAX_ECHO),
            });
        }
        if !seen.insert(s.id.as_str()) {
            return Err(InvalidSpec::DuplicateSecretId {
                index,
                id: s.id.clone(),
            });
        }
        for (field, value) in [
            ("name", &s.secret_key_ref.name),
            ("key", &s.secret_key_ref.key),
        ] {
            if value.trim().is_empty() {
                return Err(InvalidSpec::SecretKeyRef { index, field });
            }
        }
    }
    Ok(())
}

/// Checks the spec's overrides of what the operator decides (executor image, service account,
/// added capabilities) against the operator's configuration, which allows none by default.
/// An override equal to what the operator would use anyway is no override.
pub fn permitted(spec: &ImageBuildSpec, cfg: &OperatorConfig) -> Result<(), InvalidSpec> {
    let policy = &cfg.overrides;
    if let Some(image) = spec.executor_image.as_deref() {
        if image != cfg.executor_image && !allowed(&policy.executor_images, image) {
            return Err(InvalidSpec::ExecutorImageNotPermitted {
                image: one_line(image, MAX_ECHO),
            });
        }
    }
    if let Some(name) = spec.service_account_name.as_deref() {
        if name != "default" && !allowed(&policy.service_accounts, name) {
            return Err(InvalidSpec::ServiceAccountNotPermitted {
                name: one_line(name, MAX_ECHO),
            });
        }
    }
    let permitted_caps: Vec<String> = policy
        .capabilities
        .iter()
        .map(|c| capability_name(c))
        .collect();
    for cap in &spec.add_capabilities {
        let name = capability_name(cap);
        let default = crate::security::BUILD_CAPABILITIES.contains(&name.as_str());
        if !default && !allowed(&permitted_caps, &name) {
            return Err(InvalidSpec::CapabilityNotPermitted {
                capability: one_line(cap, MAX_ECHO),
            });
        }
    }
    Ok(())
}

/// Checks a spec and returns the parsed values the Pod builder needs.
pub fn validate(spec: &ImageBuildSpec) -> Result<ValidSpec, InvalidSpec> {
    let s = &spec.source;
    let count = [
        s.git.is_some(),
        s.config_map.is_some(),
        s.persistent_volume_claim.is_some(),
        s.url.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count != 1 {
        return Err(InvalidSpec::SourceCount(count));
    }
    if spec.destinations.is_empty() {
        return Err(InvalidSpec::NoDestination);
    }
    if let Some(i) = spec.destinations.iter().position(|d| d.trim().is_empty()) {
        return Err(InvalidSpec::EmptyDestination(i));
    }
    let timeout = match &spec.timeout {
        Some(t) => {
            let d = duration::parse(t).map_err(|source| InvalidSpec::Duration {
                field: "timeout",
                source,
            })?;
            if d < Duration::from_secs(1) {
                return Err(InvalidSpec::TimeoutTooShort(t.clone()));
            }
            Some(d)
        }
        None => None,
    };
    if let Some(r) = &spec.retention {
        for (field, value) in [
            ("retention.ttlAfterSucceeded", &r.ttl_after_succeeded),
            ("retention.ttlAfterFailed", &r.ttl_after_failed),
        ] {
            if let Some(v) = value {
                duration::parse(v).map_err(|source| InvalidSpec::Duration { field, source })?;
            }
        }
    }
    if let Some(ttl) = spec.cache.as_ref().and_then(|c| c.ttl.as_ref()) {
        duration::parse(ttl).map_err(|source| InvalidSpec::Duration {
            field: "cache.ttl",
            source,
        })?;
    }
    let retries = spec.retries.unwrap_or(0);
    if !(0..=10).contains(&retries) {
        return Err(InvalidSpec::Retries(retries));
    }
    if let Some(k) = spec
        .build_args
        .keys()
        .find(|k| k.is_empty() || k.contains('='))
    {
        return Err(InvalidSpec::BuildArgName(one_line(k, MAX_ECHO)));
    }
    if let Some(path) = &spec.dockerfile {
        inside("dockerfile", path)?;
    }
    if let Some(url) = s.git.as_ref().map(|g| g.url.as_str()) {
        let has_secret = s.git.as_ref().is_some_and(|g| g.secret_ref.is_some());
        if is_ssh_url(url) && !has_secret {
            return Err(InvalidSpec::SshGitUrl(one_line(url, MAX_ECHO)));
        }
    }
    if let Some(sub) = s.git.as_ref().and_then(|g| g.sub_path.as_deref()) {
        inside("source.git.subPath", sub)?;
    }
    if let Some(sub) = s
        .persistent_volume_claim
        .as_ref()
        .and_then(|p| p.sub_path.as_deref())
    {
        inside("source.persistentVolumeClaim.subPath", sub)?;
    }
    secrets(spec)?;
    Ok(ValidSpec { timeout, retries })
}

/// `ssh://...` or scp-like `user@host:path`.
pub fn is_ssh_url(url: &str) -> bool {
    if url.starts_with("ssh://") || url.starts_with("git+ssh://") {
        return true;
    }
    if url.contains("://") {
        return false;
    }
    // user@host:path (scp syntax): a colon before any slash, after an `@`.
    match (url.find('@'), url.find(':'), url.find('/')) {
        (Some(at), Some(colon), slash) => at < colon && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BuildSource, CacheSpec, ConfigMapSource, GitSource};

    fn spec() -> ImageBuildSpec {
        ImageBuildSpec {
            source: BuildSource {
                git: Some(GitSource {
                    url: "https://example.com/app.git".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            destinations: vec!["reg.local/app:1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_minimal() {
        assert_eq!(
            validate(&spec()).unwrap(),
            ValidSpec {
                timeout: None,
                retries: 0
            }
        );
    }

    #[test]
    fn ssh_git_urls_need_a_secret() {
        for url in [
            "ssh://git@example.com/org/app.git",
            "git@github.com:org/app.git",
            "git+ssh://example.com/app.git",
        ] {
            let mut s = spec();
            s.source.git.as_mut().unwrap().url = url.into();
            let err = validate(&s).unwrap_err();
            assert!(matches!(err, InvalidSpec::SshGitUrl(_)), "{url}: {err}");
            assert!(err.to_string().contains("secretRef"), "{err}");
            assert!(err.to_string().contains("known_hosts"), "{err}");
            // With a Secret (its keys are the kubelet's and the executor's to check).
            s.source.git.as_mut().unwrap().secret_ref = Some(crate::crd::LocalSecretRef {
                name: "deploy-key".into(),
            });
            assert!(validate(&s).is_ok(), "{url}");
        }
        for url in [
            "https://example.com/app.git",
            "https://user@example.com:8443/app.git",
            "git://example.com/app.git",
            "example.com/org/app.git",
            "http://10.0.0.1:8080/git/app.git",
        ] {
            let mut s = spec();
            s.source.git.as_mut().unwrap().url = url.into();
            assert!(validate(&s).is_ok(), "{url}");
        }
    }

    #[test]
    fn retention_durations_are_checked() {
        let mut s = spec();
        s.retention = Some(crate::crd::Retention {
            ttl_after_failed: Some("1 week".into()),
            ..Default::default()
        });
        let err = validate(&s).unwrap_err();
        assert!(
            err.to_string().contains("spec.retention.ttlAfterFailed"),
            "{err}"
        );
    }

    #[test]
    fn parses_timeout_and_retries() {
        let mut s = spec();
        s.timeout = Some("1h30m".into());
        s.retries = Some(3);
        let v = validate(&s).unwrap();
        assert_eq!(v.timeout, Some(Duration::from_secs(5400)));
        assert_eq!(v.retries, 3);
    }

    #[test]
    fn rejects_two_sources_and_none() {
        let mut s = spec();
        s.source.config_map = Some(ConfigMapSource { name: "ctx".into() });
        assert_eq!(validate(&s), Err(InvalidSpec::SourceCount(2)));
        s.source = BuildSource::default();
        assert_eq!(validate(&s), Err(InvalidSpec::SourceCount(0)));
    }

    #[test]
    fn rejects_no_destination() {
        let mut s = spec();
        s.destinations.clear();
        assert_eq!(validate(&s), Err(InvalidSpec::NoDestination));
        s.destinations = vec!["a".into(), " ".into()];
        assert_eq!(validate(&s), Err(InvalidSpec::EmptyDestination(1)));
    }

    #[test]
    fn rejects_bad_durations() {
        let mut s = spec();
        s.timeout = Some("ten minutes".into());
        let e = validate(&s).unwrap_err();
        assert!(
            e.to_string().starts_with("spec.timeout: invalid duration"),
            "{e}"
        );
        s.timeout = Some("10ms".into());
        assert!(matches!(validate(&s), Err(InvalidSpec::TimeoutTooShort(_))));
        s.timeout = None;
        s.cache = Some(CacheSpec {
            enabled: Some(true),
            ttl: Some("1w".into()),
            ..Default::default()
        });
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .starts_with("spec.cache.ttl"));
    }

    #[test]
    fn paths_stay_inside_the_context() {
        let mut s = spec();
        for ok in [
            "Dockerfile",
            "build/Dockerfile",
            "./a/../b",
            "a/..b/c",
            "...",
            "a//b",
        ] {
            s.dockerfile = Some(ok.into());
            // "./a/../b" has a '..' component: only the others pass.
            assert_eq!(validate(&s).is_ok(), ok != "./a/../b", "{ok}");
        }
        for (bad, problem) in [
            ("/kiln/.docker/config.json", "is an absolute path"),
            ("../secret", "leaves its directory"),
            ("a/../../etc/passwd", "leaves its directory"),
            ("a/..", "leaves its directory"),
            ("a\0b", "NUL"),
        ] {
            s.dockerfile = Some(bad.into());
            let e = validate(&s).unwrap_err();
            assert_eq!(e.reason(), "InvalidSpec");
            let m = e.to_string();
            assert!(
                m.starts_with("spec.dockerfile ") && m.contains(problem),
                "{bad}: {m}"
            );
        }
        s.dockerfile = None;
        s.source.git.as_mut().unwrap().sub_path = Some("/etc".into());
        let m = validate(&s).unwrap_err().to_string();
        assert!(m.starts_with("spec.source.git.subPath"), "{m}");
        // The value is repeated on one bounded line only.
        s.source.git.as_mut().unwrap().sub_path = Some(format!("/{}\n{}", "x".repeat(500), "y"));
        let m = validate(&s).unwrap_err().to_string();
        assert!(m.len() < 400 && !m.contains('\n'), "{m}");
    }

    #[test]
    fn overrides_need_the_operators_permission() {
        let cfg = OperatorConfig::default();
        let mut s = spec();
        s.executor_image = Some("evil.example/executor:1".into());
        let e = permitted(&s, &cfg).unwrap_err();
        assert_eq!(e.reason(), "NotPermitted");
        assert!(e.to_string().contains("--allowed-executor-image"), "{e}");
        // The default image named explicitly is no override.
        s.executor_image = Some(cfg.executor_image.clone());
        assert_eq!(permitted(&s, &cfg), Ok(()));
        s.executor_image = None;
        s.service_account_name = Some("deployer".into());
        assert!(matches!(
            permitted(&s, &cfg),
            Err(InvalidSpec::ServiceAccountNotPermitted { .. })
        ));
        s.service_account_name = Some("default".into());
        assert_eq!(permitted(&s, &cfg), Ok(()));
        s.add_capabilities = vec!["MKNOD".into()];
        assert!(matches!(
            permitted(&s, &cfg),
            Err(InvalidSpec::CapabilityNotPermitted { .. })
        ));
        // A capability of the default set needs no permission.
        s.add_capabilities = vec!["CAP_CHOWN".into()];
        assert_eq!(permitted(&s, &cfg), Ok(()));

        let open = OperatorConfig {
            overrides: crate::config::OverridePolicy {
                executor_images: vec!["reg.local/kiln/*".into()],
                service_accounts: vec!["builder".into()],
                capabilities: vec!["cap_mknod".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        s.executor_image = Some("reg.local/kiln/kiln-executor:dev".into());
        s.service_account_name = Some("builder".into());
        s.add_capabilities = vec!["MKNOD".into(), "CAP_MKNOD".into()];
        assert_eq!(permitted(&s, &open), Ok(()));
        s.add_capabilities = vec!["SYS_ADMIN".into()];
        assert!(permitted(&s, &open).is_err());
        s.add_capabilities.clear();
        s.service_account_name = Some("deployer".into());
        assert!(permitted(&s, &open).is_err());
    }

    #[test]
    fn secret_ids_are_checked_and_unique() {
        use crate::crd::{BuildSecret, SecretKeyRef};
        let secret = |id: &str| BuildSecret {
            id: id.into(),
            secret_key_ref: SecretKeyRef {
                name: "npm".into(),
                key: ".npmrc".into(),
            },
        };
        let mut s = spec();
        s.secrets = vec![
            secret("npmrc"),
            secret("GIT_AUTH_TOKEN.github.com"),
            secret("a-1"),
        ];
        assert!(validate(&s).is_ok());
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "../x",
            "a,src=/etc/shadow",
            "a b",
            "é",
        ] {
            s.secrets = vec![secret(bad)];
            let e = validate(&s).unwrap_err();
            assert!(
                matches!(e, InvalidSpec::SecretId { index: 0, .. }),
                "{bad}: {e}"
            );
            assert_eq!(e.reason(), "InvalidSpec");
        }
        s.secrets = vec![secret(&"a".repeat(129))];
        assert!(validate(&s).is_err());
        s.secrets = vec![secret("npmrc"), secret("npmrc")];
        let e = validate(&s).unwrap_err();
        assert_eq!(e.to_string(), "spec.secrets[1].id \"npmrc\" is given twice: each build secret id names one Secret key");
        s.secrets = vec![secret("npmrc")];
        s.secrets[0].secret_key_ref.key = String::new();
        assert!(matches!(
            validate(&s),
            Err(InvalidSpec::SecretKeyRef { field: "key", .. })
        ));
    }

    #[test]
    fn rejects_bad_retries_and_args() {
        let mut s = spec();
        s.retries = Some(11);
        assert_eq!(validate(&s), Err(InvalidSpec::Retries(11)));
        s.retries = None;
        s.build_args.insert("A=B".into(), "x".into());
        assert!(matches!(validate(&s), Err(InvalidSpec::BuildArgName(_))));
    }
}
