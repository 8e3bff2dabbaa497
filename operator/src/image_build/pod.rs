//! The executor Pod of one attempt, computed from the `ImageBuild` alone. Pure: the same build,
//! generation and attempt always give the same Pod, so creating it is idempotent.
//!
//! The Pod speaks to `kiln-executor` only through its kaniko-compatible command line, its
//! volumes and `DOCKER_CONFIG`; the executor answers through the termination message
//! ([`ExecutorResult`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EnvVar, PersistentVolumeClaimVolumeSource, Pod, PodSpec,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::run_mounts;
use super::validate::ValidSpec;
use crate::config::OperatorConfig;
use crate::crd::ImageBuild;
use crate::docker_config::DockerConfig;
use crate::{names, security};

pub use crate::docker_config::DOCKER_CONFIG_DIR;

/// Name of the executor container (the one whose termination message is read).
pub const CONTAINER: &str = "executor";
/// Where the build context is mounted for ConfigMap and PVC sources.
pub const WORKSPACE: &str = "/workspace";
/// Where the Secret of `spec.source.git.secretRef` is mounted (`--git-secret-dir`), under the
/// executor's directory that steps with private namespaces cannot see.
pub const GIT_SECRET_DIR: &str = "/kiln/git-credentials";
/// Name of the Pod volume holding it.
pub const GIT_SECRET_VOLUME: &str = "git-credentials";
/// Where the warmed cache volume is mounted (`--cache-dir`).
pub const CACHE_DIR: &str = "/cache";

/// What the executor writes to its termination message on success (compact JSON): one type
/// shared with the executor.
pub use kiln_common::termination::BuildMessage as ExecutorResult;

/// `git://host/path#ref`, the kaniko spelling of a git context, from any of the URL forms users
/// write (`https://`, `http://`, `git://` or no scheme); an ssh URL (`ssh://`, `git+ssh://`,
/// scp-like `user@host:path`) is passed as it is, with its `#ref`.
pub fn git_context(url: &str, revision: Option<&str>) -> String {
    if super::validate::is_ssh_url(url) {
        return match revision {
            Some(r) if !r.is_empty() => format!("{url}#{r}"),
            _ => url.to_string(),
        };
    }
    let rest = ["https://", "http://", "git://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
        .unwrap_or(url);
    match revision {
        Some(r) if !r.is_empty() => format!("git://{rest}#{r}"),
        _ => format!("git://{rest}"),
    }
}

/// The build as the operator runs it: the operator-wide executor defaults (push Secret,
/// resources, warmed cache claim, the namespace's layer-cache repository) filled in where the
/// build sets none.
pub fn with_defaults(build: &ImageBuild, cfg: &OperatorConfig) -> ImageBuild {
    let mut b = build.clone();
    let namespace = b.namespace().unwrap_or_default();
    let spec = &mut b.spec;
    if spec.push_secret.as_deref().is_none_or(str::is_empty) {
        spec.push_secret = cfg.default_push_secret.clone();
    }
    if spec.resources.is_none() {
        spec.resources = cfg.default_resources.clone();
    }
    if let Some(claim) = &cfg.default_cache_claim {
        let cache = spec.cache.get_or_insert_with(Default::default);
        if cache.warm_claim.as_deref().is_none_or(str::is_empty) {
            cache.warm_claim = Some(claim.clone());
        }
    }
    if let (Some(registry), Some(cache)) = (&cfg.cache_registry, spec.cache.as_mut()) {
        // One repository per namespace: a build reads cached layers only from the repository
        // its own namespace writes (or the one it names), never another tenant's.
        if cache.enabled == Some(true) && cache.repository.as_deref().is_none_or(str::is_empty) {
            cache.repository = Some(namespace_cache_repo(registry, &namespace));
        }
    }
    b
}

/// `<registry>/<namespace>/cache`: the layer-cache repository of builds in `namespace` that
/// name none, when the operator has a cache registry.
pub fn namespace_cache_repo(registry: &str, namespace: &str) -> String {
    format!("{}/{namespace}/cache", registry.trim_end_matches('/'))
}

/// The executor's arguments, in a stable order.
pub fn executor_args(build: &ImageBuild) -> Vec<String> {
    let spec = &build.spec;
    let mut args = Vec::new();
    let mut flag = |name: &str, value: &str| args.push(format!("--{name}={value}"));
    let src = &spec.source;
    if let Some(git) = &src.git {
        flag("context", &git_context(&git.url, git.revision.as_deref()));
        if let Some(sub) = git.sub_path.as_deref().filter(|s| !s.is_empty()) {
            flag("context-sub-path", sub);
        }
        if git.secret_ref.is_some() {
            flag("git-secret-dir", GIT_SECRET_DIR);
        }
    } else if src.config_map.is_some() || src.persistent_volume_claim.is_some() {
        flag("context", &format!("dir://{WORKSPACE}"));
    } else if let Some(url) = &src.url {
        flag("context", url);
    }
    flag(
        "dockerfile",
        spec.dockerfile.as_deref().unwrap_or("Dockerfile"),
    );
    for d in &spec.destinations {
        flag("destination", d);
    }
    for (k, v) in &spec.build_args {
        flag("build-arg", &format!("{k}={v}"));
    }
    if let Some(t) = spec.target.as_deref().filter(|t| !t.is_empty()) {
        flag("target", t);
    }
    if !spec.platforms.is_empty() {
        flag("custom-platform", &spec.platforms.join(","));
    }
    for (k, v) in &spec.labels {
        flag("label", &format!("{k}={v}"));
    }
    if let Some(cache) = &spec.cache {
        if cache.enabled == Some(true) {
            flag("cache", "true");
            if let Some(repo) = &cache.repository {
                flag("cache-repo", repo);
            }
            if let Some(ttl) = &cache.ttl {
                flag("cache-ttl", ttl);
            }
        }
        if cache.warm_claim.is_some() {
            flag("cache-dir", CACHE_DIR);
        }
    }
    args.extend(run_mounts::args(spec));
    args
}

/// Labels that link a Pod to its build, generation and attempt.
pub fn pod_labels(build_name: &str, generation: i64, attempt: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            crate::MANAGED_BY.to_string(),
        ),
        (
            "app.kubernetes.io/name".to_string(),
            "kiln-executor".to_string(),
        ),
        (
            crate::LABEL_BUILD.to_string(),
            names::label_value(build_name),
        ),
        (crate::LABEL_GENERATION.to_string(), generation.to_string()),
        (crate::LABEL_ATTEMPT.to_string(), attempt.to_string()),
    ])
}

/// The executor Pod for `attempt` of the build's current generation.
pub fn desired_pod(
    build: &ImageBuild,
    valid: &ValidSpec,
    cfg: &OperatorConfig,
    attempt: i32,
) -> Pod {
    let build = &with_defaults(build, cfg);
    let spec = &build.spec;
    let name = build.name_any();
    let generation = build.meta().generation.unwrap_or(0);
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut env = Vec::new();

    let src = &spec.source;
    if let Some(cm) = &src.config_map {
        volumes.push(Volume {
            name: "context".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "context".into(),
            mount_path: WORKSPACE.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(pvc) = &src.persistent_volume_claim {
        volumes.push(Volume {
            name: "context".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "context".into(),
            mount_path: WORKSPACE.into(),
            sub_path: pvc.sub_path.clone().filter(|s| !s.is_empty()),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(secret) = &spec.push_secret {
        DockerConfig::from_secret(secret).add_to(&mut volumes, &mut mounts, &mut env);
    }
    // The git Secret as files (a missing Secret keeps the Pod from starting, which the kubelet
    // reports like a missing push Secret); whichever keys it has are there.
    if let Some(secret) = src.git.as_ref().and_then(|g| g.secret_ref.as_ref()) {
        volumes.push(Volume {
            name: GIT_SECRET_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                default_mode: Some(0o400),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: GIT_SECRET_VOLUME.into(),
            mount_path: GIT_SECRET_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    // The context flag is kaniko's `git://` spelling, which the executor fetches over https
    // unless GIT_PULL_METHOD says otherwise: an `http://` URL keeps its scheme that way.
    if let Some(git) = &src.git {
        if git.url.starts_with("http://") {
            env.push(EnvVar {
                name: "GIT_PULL_METHOD".into(),
                value: Some("http".into()),
                ..Default::default()
            });
        }
    }
    if let Some(claim) = spec.cache.as_ref().and_then(|c| c.warm_claim.as_ref()) {
        volumes.push(Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "cache".into(),
            mount_path: CACHE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    run_mounts::add_to(spec, &mut volumes, &mut mounts);

    let extra_caps: Vec<String> = spec
        .add_capabilities
        .iter()
        .map(|c| crate::config::capability_name(c))
        .collect();
    let container = Container {
        name: CONTAINER.into(),
        image: Some(
            spec.executor_image
                .clone()
                .unwrap_or_else(|| cfg.executor_image.clone()),
        ),
        args: Some(
            executor_args(build)
                .into_iter()
                .chain(cfg.registry_args())
                .collect(),
        ),
        env: (!env.is_empty()).then_some(env),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        resources: spec.resources.clone(),
        termination_message_path: Some("/dev/termination-log".into()),
        // If the executor dies before writing its message, the tail of its output is reported.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(security::executor_container(cfg, &extra_caps)),
        ..Default::default()
    };

    Pod {
        metadata: ObjectMeta {
            name: Some(names::build_pod_name(&name, generation, attempt)),
            namespace: build.namespace(),
            labels: Some(pod_labels(&name, generation, attempt)),
            owner_references: build.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            // No environment variables describing the namespace's Services: nothing a build
            // needs, and less for a RUN step to read.
            enable_service_links: Some(false),
            security_context: Some(security::pod()),
            host_users: cfg.executor_user_namespace.then_some(false),
            image_pull_secrets: crate::config::pull_secrets(&cfg.executor_image_pull_secrets),
            service_account_name: spec.service_account_name.clone(),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            active_deadline_seconds: valid
                .timeout
                .map(|t| (t.as_secs_f64().ceil() as i64).max(1)),
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        BuildSource, CacheSpec, ConfigMapSource, GitSource, ImageBuildSpec, PvcSource,
    };
    use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::time::Duration;

    fn build(source: BuildSource) -> ImageBuild {
        let mut b = ImageBuild::new(
            "app",
            ImageBuildSpec {
                source,
                destinations: vec!["reg.local/app:1".into(), "reg.local/app:latest".into()],
                ..Default::default()
            },
        );
        b.metadata.namespace = Some("ns".into());
        b.metadata.uid = Some("uid-1".into());
        b.metadata.generation = Some(4);
        b
    }

    fn git() -> BuildSource {
        BuildSource {
            git: Some(GitSource {
                url: "https://example.com/org/app.git".into(),
                revision: Some("refs/heads/main".into()),
                sub_path: Some("svc".into()),
                secret_ref: None,
            }),
            ..Default::default()
        }
    }

    fn valid() -> ValidSpec {
        ValidSpec {
            timeout: None,
            retries: 0,
        }
    }

    fn container(p: &Pod) -> &Container {
        &p.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn git_source_args_and_identity() {
        let b = build(git());
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 2);
        assert_eq!(p.metadata.name.as_deref(), Some("app-build-4-2"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        let c = container(&p);
        assert_eq!(
            c.args.as_ref().unwrap(),
            &vec![
                "--context=git://example.com/org/app.git#refs/heads/main".to_string(),
                "--context-sub-path=svc".into(),
                "--dockerfile=Dockerfile".into(),
                "--destination=reg.local/app:1".into(),
                "--destination=reg.local/app:latest".into(),
            ]
        );
        assert_eq!(
            c.image.as_deref(),
            Some(OperatorConfig::default().executor_image.as_str())
        );
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let s = p.spec.as_ref().unwrap();
        assert_eq!(s.restart_policy.as_deref(), Some("Never"));
        assert_eq!(s.automount_service_account_token, Some(false));
        assert_eq!(s.enable_service_links, Some(false));
        assert_eq!(s.host_users, None);
        assert_eq!(
            s.security_context
                .as_ref()
                .unwrap()
                .seccomp_profile
                .as_ref()
                .unwrap()
                .type_,
            "RuntimeDefault"
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(caps.add.as_ref().unwrap().len(), 8);
        assert_eq!(s.active_deadline_seconds, None);
        assert!(s.volumes.is_none());
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ImageBuild");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[crate::LABEL_BUILD], "app");
        assert_eq!(labels[crate::LABEL_GENERATION], "4");
        assert_eq!(labels[crate::LABEL_ATTEMPT], "2");
    }

    /// An `http://` repository is fetched over http, not over kaniko's default https.
    #[test]
    fn http_git_urls_keep_their_scheme() {
        let pull_method = |url: &str| {
            let mut src = git();
            src.git.as_mut().unwrap().url = url.into();
            let p = desired_pod(&build(src), &valid(), &OperatorConfig::default(), 1);
            let c = &p.spec.unwrap().containers[0];
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == "GIT_PULL_METHOD")
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            pull_method("http://git.local:8080/org/app.git").as_deref(),
            Some("http")
        );
        assert_eq!(pull_method("https://example.com/org/app.git"), None);
        assert_eq!(pull_method("example.com/org/app.git"), None);
    }

    #[test]
    fn git_context_forms() {
        assert_eq!(git_context("git://h/r.git", None), "git://h/r.git");
        assert_eq!(git_context("h/r.git", Some("v1")), "git://h/r.git#v1");
        assert_eq!(git_context("http://h/r", Some("")), "git://h/r");
    }

    #[test]
    fn configmap_source_mounts_workspace() {
        let b = build(BuildSource {
            config_map: Some(ConfigMapSource { name: "ctx".into() }),
            ..Default::default()
        });
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let c = container(&p);
        assert_eq!(c.args.as_ref().unwrap()[0], "--context=dir:///workspace");
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.mount_path.as_str()),
            ("context", "/workspace")
        );
        let v = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(v.config_map.as_ref().unwrap().name, "ctx");
    }

    #[test]
    fn git_secret_is_mounted_never_passed_as_a_value() {
        let mut src = git();
        src.git.as_mut().unwrap().secret_ref = Some(crate::crd::LocalSecretRef {
            name: "git-creds".into(),
        });
        let b = build(src);
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let c = container(&p);
        let args = c.args.as_ref().unwrap();
        assert!(args.contains(&format!("--git-secret-dir={GIT_SECRET_DIR}")));
        assert!(!args.iter().any(|a| a.contains("git-creds")), "{args:?}");
        assert!(c
            .env
            .iter()
            .flatten()
            .all(|e| e.value_from.is_none() && !e.name.starts_with("GIT_")));
        let v = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let v = v.iter().find(|v| v.name == GIT_SECRET_VOLUME).unwrap();
        let secret = v.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("git-creds"));
        assert_eq!(
            (secret.default_mode, secret.optional),
            (Some(0o400), Some(false))
        );
        let m = c.volume_mounts.as_ref().unwrap();
        let m = m.iter().find(|m| m.name == GIT_SECRET_VOLUME).unwrap();
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            (GIT_SECRET_DIR, Some(true))
        );
        // The executor's command line takes the flag.
        let o = parse_executor(args);
        assert_eq!(o.git_secret_dir.as_deref(), Some(GIT_SECRET_DIR));
    }

    #[test]
    fn ssh_urls_are_passed_as_they_are() {
        assert_eq!(
            git_context("ssh://git@git.local:2222/org/app.git", Some("main")),
            "ssh://git@git.local:2222/org/app.git#main"
        );
        assert_eq!(
            git_context("git@github.com:org/app.git", None),
            "git@github.com:org/app.git"
        );
        assert_eq!(
            git_context("https://example.com/org/app.git", Some("v1")),
            "git://example.com/org/app.git#v1"
        );
    }

    #[test]
    fn image_pull_secrets_come_from_the_operator_config() {
        let b = build(git());
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        assert_eq!(p.spec.as_ref().unwrap().image_pull_secrets, None);
        let cfg = OperatorConfig {
            executor_image_pull_secrets: vec!["ghcr".into(), "quay".into()],
            ..Default::default()
        };
        let p = desired_pod(&b, &valid(), &cfg, 1);
        let names: Vec<String> = p
            .spec
            .unwrap()
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, vec!["ghcr", "quay"]);
    }

    #[test]
    fn pvc_source_uses_sub_path() {
        let b = build(BuildSource {
            persistent_volume_claim: Some(PvcSource {
                claim_name: "src".into(),
                sub_path: Some("proj".into()),
            }),
            ..Default::default()
        });
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let c = container(&p);
        assert_eq!(c.args.as_ref().unwrap()[0], "--context=dir:///workspace");
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(m.sub_path.as_deref(), Some("proj"));
        assert_eq!(m.read_only, Some(true));
        let v = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(
            v.persistent_volume_claim.as_ref().unwrap().claim_name,
            "src"
        );
    }

    #[test]
    fn url_source_passes_through() {
        let b = build(BuildSource {
            url: Some("https://example.com/ctx.tar.gz".into()),
            ..Default::default()
        });
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        assert_eq!(
            container(&p).args.as_ref().unwrap()[0],
            "--context=https://example.com/ctx.tar.gz"
        );
    }

    #[test]
    fn push_secret_is_mounted_as_docker_config() {
        let mut b = build(git());
        b.spec.push_secret = Some("regcred".into());
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let c = container(&p);
        let env = c.env.as_ref().unwrap();
        assert_eq!(env[0].name, "DOCKER_CONFIG");
        assert_eq!(env[0].value.as_deref(), Some("/kiln/.docker"));
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(m.mount_path, "/kiln/.docker");
        assert_eq!(m.read_only, Some(true));
        let v = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        let s = v.secret.as_ref().unwrap();
        assert_eq!(s.secret_name.as_deref(), Some("regcred"));
        let item = &s.items.as_ref().unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            (".dockerconfigjson", "config.json")
        );
    }

    #[test]
    fn cache_flags_and_warm_volume() {
        let mut b = build(git());
        b.spec.cache = Some(CacheSpec {
            enabled: Some(true),
            repository: Some("reg.local/cache".into()),
            ttl: Some("168h".into()),
            warm_claim: Some("warm".into()),
            ..Default::default()
        });
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let c = container(&p);
        let args = c.args.as_ref().unwrap();
        for want in [
            "--cache=true",
            "--cache-repo=reg.local/cache",
            "--cache-ttl=168h",
            "--cache-dir=/cache",
        ] {
            assert!(
                args.contains(&want.to_string()),
                "{want} missing from {args:?}"
            );
        }
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.mount_path.as_str()),
            ("cache", "/cache")
        );
        let v = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(
            v.persistent_volume_claim.as_ref().unwrap().claim_name,
            "warm"
        );
    }

    #[test]
    fn build_args_target_labels_sorted() {
        let mut b = build(git());
        b.spec.build_args = [("B".to_string(), "2".to_string()), ("A".into(), "1".into())].into();
        b.spec.labels = [(
            "org.opencontainers.image.source".to_string(),
            "x".to_string(),
        )]
        .into();
        b.spec.target = Some("final".into());
        b.spec.dockerfile = Some("build/Dockerfile".into());
        let args = executor_args(&b);
        assert_eq!(
            &args[2..],
            &[
                "--dockerfile=build/Dockerfile",
                "--destination=reg.local/app:1",
                "--destination=reg.local/app:latest",
                "--build-arg=A=1",
                "--build-arg=B=2",
                "--target=final",
                "--label=org.opencontainers.image.source=x",
            ]
        );
    }

    #[test]
    fn scheduling_resources_deadline_and_image_override() {
        let mut b = build(git());
        b.spec.resources = Some(ResourceRequirements {
            limits: Some([("memory".to_string(), Quantity("2Gi".into()))].into()),
            ..Default::default()
        });
        b.spec.node_selector = [("kubernetes.io/arch".to_string(), "amd64".to_string())].into();
        b.spec.tolerations = vec![Toleration {
            key: Some("builds".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        b.spec.service_account_name = Some("builder".into());
        b.spec.executor_image = Some("reg.local/kiln-executor:dev".into());
        let v = ValidSpec {
            timeout: Some(Duration::from_millis(90_500)),
            retries: 0,
        };
        let p = desired_pod(&b, &v, &OperatorConfig::default(), 1);
        let s = p.spec.as_ref().unwrap();
        assert_eq!(s.active_deadline_seconds, Some(91));
        assert_eq!(s.service_account_name.as_deref(), Some("builder"));
        assert_eq!(
            s.node_selector.as_ref().unwrap()["kubernetes.io/arch"],
            "amd64"
        );
        assert_eq!(
            s.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("builds")
        );
        let c = &s.containers[0];
        assert_eq!(c.image.as_deref(), Some("reg.local/kiln-executor:dev"));
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
            "2Gi"
        );
    }

    #[test]
    fn permitted_capabilities_and_user_namespace() {
        let mut b = build(git());
        b.spec.add_capabilities = vec!["cap_mknod".into()];
        let cfg = OperatorConfig {
            executor_user_namespace: true,
            ..Default::default()
        };
        let p = desired_pod(&b, &valid(), &cfg, 1);
        let s = p.spec.as_ref().unwrap();
        assert_eq!(s.host_users, Some(false));
        let add = s.containers[0]
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap()
            .add
            .clone()
            .unwrap();
        assert!(add.contains(&"MKNOD".to_string()), "{add:?}");
    }

    #[test]
    fn long_build_names_give_valid_pod_names_and_labels() {
        let mut b = build(git());
        b.metadata.name = Some(format!("{}.{}", "a".repeat(200), "b".repeat(52)));
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let name = p.metadata.name.as_deref().unwrap();
        assert!(name.len() <= 63 && name.ends_with("-build-4-1"), "{name}");
        let label = &p.metadata.labels.as_ref().unwrap()[crate::LABEL_BUILD];
        assert_eq!(label.len(), 63, "{label}");
        assert_eq!(*label, names::label_value(&b.name_any()));
    }

    #[test]
    fn layer_cache_defaults_to_the_namespaces_repository() {
        let mut b = build(git());
        b.spec.cache = Some(CacheSpec {
            enabled: Some(true),
            ..Default::default()
        });
        let cfg = OperatorConfig {
            cache_registry: Some("cache.local:5000/kiln/".into()),
            ..Default::default()
        };
        let args = executor_args(&with_defaults(&b, &cfg));
        assert!(
            args.contains(&"--cache-repo=cache.local:5000/kiln/ns/cache".to_string()),
            "{args:?}"
        );
        // Without a cache registry the executor derives it from the first destination.
        let args = executor_args(&with_defaults(&b, &OperatorConfig::default()));
        assert!(
            !args.iter().any(|a| a.starts_with("--cache-repo")),
            "{args:?}"
        );
        // A repository the build names wins; a disabled cache gets none.
        b.spec.cache.as_mut().unwrap().repository = Some("reg.local/mine".into());
        let args = executor_args(&with_defaults(&b, &cfg));
        assert!(args.contains(&"--cache-repo=reg.local/mine".to_string()));
        b.spec.cache = Some(CacheSpec::default());
        let eff = with_defaults(&b, &cfg);
        assert_eq!(eff.spec.cache.unwrap().repository, None);
    }

    #[test]
    fn same_inputs_same_pod() {
        let b = build(git());
        let cfg = OperatorConfig::default();
        assert_eq!(
            desired_pod(&b, &valid(), &cfg, 1),
            desired_pod(&b, &valid(), &cfg, 1)
        );
        assert_ne!(
            desired_pod(&b, &valid(), &cfg, 1).metadata.name,
            desired_pod(&b, &valid(), &cfg, 2).metadata.name
        );
    }

    /// The arguments the operator generates, parsed by the real `kiln-executor` command line.
    fn parse_executor(args: &[String]) -> kiln_executor::cli::Options {
        use clap::Parser;
        let mut argv = vec!["kiln-executor".to_string()];
        argv.extend_from_slice(args);
        kiln_executor::cli::Options::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("kiln-executor rejects the operator's args {args:?}: {e}"))
    }

    #[test]
    fn platforms_become_one_custom_platform_list() {
        let mut b = build(git());
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let o = parse_executor(container(&p).args.as_ref().unwrap());
        assert_eq!(o.custom_platform, None);
        b.spec.platforms = vec!["linux/amd64".into(), "linux/arm64/v8".into()];
        let p = desired_pod(&b, &valid(), &OperatorConfig::default(), 1);
        let o = parse_executor(container(&p).args.as_ref().unwrap());
        assert_eq!(
            o.custom_platform.as_deref(),
            Some("linux/amd64,linux/arm64/v8")
        );
    }

    #[test]
    fn executor_cli_accepts_every_generated_flag() {
        let mut b = build(git());
        b.spec.build_args = [("A".to_string(), "1=2".to_string())].into();
        b.spec.labels = [("k".to_string(), "v".to_string())].into();
        b.spec.target = Some("final".into());
        b.spec.dockerfile = Some("build/Dockerfile".into());
        b.spec.cache = Some(CacheSpec {
            enabled: Some(true),
            repository: Some("reg.local/cache".into()),
            ttl: Some("168h".into()),
            warm_claim: Some("warm".into()),
            ..Default::default()
        });
        let o = parse_executor(&executor_args(&b));
        assert_eq!(o.context, "git://example.com/org/app.git#refs/heads/main");
        assert_eq!(o.context_sub_path, "svc");
        assert_eq!(o.dockerfile, "build/Dockerfile");
        assert_eq!(
            o.destinations,
            vec!["reg.local/app:1", "reg.local/app:latest"]
        );
        assert_eq!(
            o.build_arg_pairs(),
            vec![("A".to_string(), "1=2".to_string())]
        );
        assert_eq!(o.target.as_deref(), Some("final"));
        assert_eq!(o.labels, vec!["k=v"]);
        assert!(o.cache);
        assert_eq!(o.cache_repo.as_deref(), Some("reg.local/cache"));
        assert_eq!(o.cache_ttl.as_deref(), Some("168h"));
        assert_eq!(o.cache_dir.as_deref(), Some(CACHE_DIR));
        assert!(o.secrets.is_empty() && o.mount_cache_dir.is_none());

        // Build secrets and the mount cache.
        b.spec.secrets = vec![crate::crd::BuildSecret {
            id: "npmrc".into(),
            secret_key_ref: crate::crd::SecretKeyRef {
                name: "npm".into(),
                key: ".npmrc".into(),
            },
        }];
        b.spec.cache.as_mut().unwrap().mount_cache_claim = Some("run-cache".into());
        let o = parse_executor(&executor_args(&b));
        assert_eq!(o.secrets, vec!["id=npmrc,src=/kiln/secrets/npmrc/value"]);
        assert_eq!(
            o.mount_cache_dir.as_deref(),
            Some(run_mounts::MOUNT_CACHE_DIR)
        );

        // The other sources: a mounted directory and a URL.
        let cm = build(BuildSource {
            config_map: Some(ConfigMapSource { name: "ctx".into() }),
            ..Default::default()
        });
        let o = parse_executor(&executor_args(&cm));
        assert_eq!(o.context, "dir:///workspace");
        assert_eq!(o.context_sub_path, "");
        assert!(!o.cache && o.cache_dir.is_none());
        let url = build(BuildSource {
            url: Some("https://example.com/ctx.tar.gz".into()),
            ..Default::default()
        });
        assert_eq!(
            parse_executor(&executor_args(&url)).context,
            "https://example.com/ctx.tar.gz"
        );
    }

    #[test]
    fn operator_defaults_fill_unset_fields_only() {
        let cfg = OperatorConfig {
            default_push_secret: Some("team-push".into()),
            default_cache_claim: Some("base-cache".into()),
            default_resources: Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity("4Gi".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = desired_pod(&build(git()), &valid(), &cfg, 1);
        let c = container(&p);
        let o = parse_executor(c.args.as_ref().unwrap());
        assert_eq!(o.cache_dir.as_deref(), Some(CACHE_DIR));
        assert!(
            !o.cache,
            "a default warm cache does not turn on the layer cache"
        );
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
            "4Gi"
        );
        assert_eq!(c.env.as_ref().unwrap()[0].name, "DOCKER_CONFIG");
        let vols = p.spec.as_ref().unwrap().volumes.clone().unwrap();
        let secret = vols.iter().find_map(|v| v.secret.as_ref()).unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("team-push"));
        let claim = vols
            .iter()
            .find_map(|v| v.persistent_volume_claim.as_ref())
            .unwrap();
        assert_eq!(claim.claim_name, "base-cache");
        assert_eq!(claim.read_only, Some(true));

        // What the build sets wins.
        let mut own = build(git());
        own.spec.push_secret = Some("mine".into());
        own.spec.cache = Some(CacheSpec {
            warm_claim: Some("my-cache".into()),
            ..Default::default()
        });
        own.spec.resources = Some(ResourceRequirements::default());
        let eff = with_defaults(&own, &cfg);
        assert_eq!(eff.spec.push_secret.as_deref(), Some("mine"));
        assert_eq!(
            eff.spec.cache.as_ref().unwrap().warm_claim.as_deref(),
            Some("my-cache")
        );
        assert_eq!(eff.spec.resources, Some(ResourceRequirements::default()));
        // No defaults configured: the build is unchanged.
        assert_eq!(
            with_defaults(&own, &OperatorConfig::default()).spec,
            own.spec
        );
    }
}
