//! Operator-wide settings that reconcilers read (default images, executor defaults, retry
//! backoff, what an `ImageBuild` or `CacheWarm` may override). Plain data: filled from flags by
//! the binary and by tests directly; it never reads the environment or the API server itself.

use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;

/// `names` as a Pod's `imagePullSecrets` (`None` when empty, so the field is left out).
pub fn pull_secrets(
    names: &[String],
) -> Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|n| k8s_openapi::api::core::v1::LocalObjectReference { name: n.clone() })
            .collect()
    })
}

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Executor image used when an `ImageBuild` does not override it.
    pub executor_image: String,
    /// Warmer image used when a `CacheWarm` does not override it.
    pub warmer_image: String,
    /// Delay before the first retry of a failed attempt; doubled for each further retry.
    pub retry_backoff: Duration,
    /// Cap of the retry delay.
    pub max_retry_backoff: Duration,
    /// Secrets (names, in the object's namespace) the kubelet pulls the executor image with.
    pub executor_image_pull_secrets: Vec<String>,
    /// Secrets the kubelet pulls the warmer image with.
    pub warmer_image_pull_secrets: Vec<String>,
    /// Build queue limits: concurrent builds in the cluster and per namespace (`None`: no limit).
    pub max_concurrent_builds: Option<usize>,
    pub max_concurrent_builds_per_namespace: Option<usize>,
    /// The time reconciles decide by (the system clock; tests move it forward).
    pub clock: crate::clock::Clock,
    /// Retention of finished executor Pods where `spec.retention` says nothing.
    pub retention: crate::image_build::retention::Effective,
    /// Refresh interval of a `CacheWarm` that does not set one.
    pub default_refresh_interval: Duration,
    /// Lines of executor output kept in `status.message` on failure.
    pub failure_lines: usize,
    /// Bytes of executor (or warmer) output kept in `status.message` and Events on failure.
    pub failure_bytes: usize,
    /// Resources of executor Pods whose `ImageBuild` sets no `spec.resources`.
    pub default_resources: Option<ResourceRequirements>,
    /// Push Secret of builds that name no `spec.pushSecret`.
    pub default_push_secret: Option<String>,
    /// Warmed base-image cache claim of builds that name no `spec.cache.warmClaim`.
    pub default_cache_claim: Option<String>,
    /// Registries (host[:port]) executor and warmer Pods reach over plain HTTP, e.g. a registry
    /// inside the cluster; passed to them as `--insecure-registry`.
    pub insecure_registries: Vec<String>,
    /// Registry (or registry path) under which builds that enable the layer cache and name no
    /// `cache.repository` cache their layers, one repository per namespace:
    /// `<cache_registry>/<namespace>/cache`. Unset: the executor's default, `<first
    /// destination>/cache`.
    pub cache_registry: Option<String>,
    /// `allowPrivilegeEscalation` of executor containers: whether a `RUN` step under a non-root
    /// `USER` may gain privileges through setuid programs (`sudo`, `su`) as in `docker build`.
    pub executor_allow_privilege_escalation: bool,
    /// Run executor Pods in a user namespace (`hostUsers: false`): root in the build is not root
    /// on the node.
    pub executor_user_namespace: bool,
    /// What `ImageBuild`s and `CacheWarm`s may override.
    pub overrides: OverridePolicy,
}

/// What the objects may override in the Pods the operator creates; empty lists (the default)
/// allow nothing. An entry is an exact value, or a prefix ending in `*` (`registry.example.com/kiln/*`;
/// `*` alone allows anything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverridePolicy {
    /// `ImageBuild.spec.executorImage` values.
    pub executor_images: Vec<String>,
    /// `CacheWarm.spec.warmerImage` values.
    pub warmer_images: Vec<String>,
    /// `ImageBuild.spec.serviceAccountName` values (names in the build's own namespace).
    pub service_accounts: Vec<String>,
    /// Capabilities `ImageBuild.spec.addCapabilities` may add to the executor container, beyond
    /// the default set (`MKNOD`, `SYS_CHROOT`, …; without `CAP_`).
    pub capabilities: Vec<String>,
}

/// Whether `value` matches one of `patterns` (exact, or a prefix ending in `*`).
pub fn allowed(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => p == value,
    })
}

/// A capability name as Kubernetes spells it: upper case, without the `CAP_` prefix.
pub fn capability_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map(str::to_string)
        .unwrap_or(upper)
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            executor_image: "ghcr.io/kiln-build/kiln-executor:latest".into(),
            warmer_image: "ghcr.io/kiln-build/kiln-warmer:latest".into(),
            retry_backoff: Duration::from_secs(10),
            clock: Default::default(),
            max_retry_backoff: Duration::from_secs(300),
            retention: Default::default(),
            max_concurrent_builds: None,
            max_concurrent_builds_per_namespace: None,
            executor_image_pull_secrets: Vec::new(),
            warmer_image_pull_secrets: Vec::new(),
            default_refresh_interval: Duration::from_secs(24 * 3600),
            failure_lines: 20,
            failure_bytes: 1024,
            default_resources: None,
            default_push_secret: None,
            default_cache_claim: None,
            insecure_registries: Vec::new(),
            cache_registry: None,
            executor_allow_privilege_escalation: true,
            executor_user_namespace: false,
            overrides: OverridePolicy::default(),
        }
    }
}

impl OperatorConfig {
    /// `--insecure-registry=…` for every registry the Pods must reach over plain HTTP.
    pub fn registry_args(&self) -> impl Iterator<Item = String> + '_ {
        self.insecure_registries
            .iter()
            .map(|r| format!("--insecure-registry={r}"))
    }

    /// Delay before starting attempt `next_attempt` (2 = first retry).
    pub fn backoff(&self, next_attempt: i32) -> Duration {
        let exp = u32::try_from(next_attempt.saturating_sub(2))
            .unwrap_or(0)
            .min(20);
        self.retry_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_retry_backoff)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid executor default resources {value:?}: {source}; give a JSON ResourceRequirements such as {{\"limits\":{{\"memory\":\"2Gi\"}}}}")]
pub struct ResourcesError {
    value: String,
    #[source]
    source: serde_json::Error,
}

/// Parses `--executor-default-resources` (JSON, the chart passes `toJson` of a values map); an
/// empty or `{}` value means no default.
pub fn parse_resources(value: &str) -> Result<Option<ResourceRequirements>, ResourcesError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let r: ResourceRequirements =
        serde_json::from_str(trimmed).map_err(|source| ResourcesError {
            value: value.to_string(),
            source,
        })?;
    Ok((r != ResourceRequirements::default()).then_some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let c = OperatorConfig::default();
        assert_eq!(c.backoff(2), Duration::from_secs(10));
        assert_eq!(c.backoff(3), Duration::from_secs(20));
        assert_eq!(c.backoff(4), Duration::from_secs(40));
        assert_eq!(c.backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn allow_lists_match_exactly_or_by_prefix() {
        let none: Vec<String> = Vec::new();
        assert!(!allowed(&none, "reg.local/kiln-executor:1"));
        let list = vec![
            "reg.local/kiln/*".to_string(),
            "reg.local/other:1".to_string(),
        ];
        assert!(allowed(&list, "reg.local/kiln/kiln-executor:dev"));
        assert!(allowed(&list, "reg.local/other:1"));
        assert!(!allowed(&list, "reg.local/other:2"));
        assert!(!allowed(&list, "reg.local/kilnx/executor:1"));
        assert!(allowed(&["*".to_string()], "anything"));
    }

    #[test]
    fn capability_names_are_normalised() {
        assert_eq!(capability_name("cap_mknod"), "MKNOD");
        assert_eq!(capability_name(" SYS_CHROOT "), "SYS_CHROOT");
    }

    #[test]
    fn resources_from_json() {
        let r = parse_resources(r#"{"limits":{"memory":"2Gi"},"requests":{"cpu":"500m"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.limits.unwrap()["memory"].0, "2Gi");
        assert_eq!(r.requests.unwrap()["cpu"].0, "500m");
        assert_eq!(parse_resources("").unwrap(), None);
        assert_eq!(parse_resources("{}").unwrap(), None);
        let e = parse_resources(r#"{"limits":"2Gi"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid executor default resources"), "{e}");
    }
}
