//! `ImageBuild`: one image built by one executor Pod (per spec generation and attempt).
// kube's printcolumn(...) repeats `type_`/`priority` keys by design; clippy mistakes them for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::Phase;

/// Build an OCI image from a Dockerfile and push it to one or more registries.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    namespaced,
    status = "ImageBuildStatus",
    shortname = "ib",
    shortname = "ibuild",
    category = "kiln",
    doc = "An image built from a Dockerfile by a kiln-executor Pod and pushed to its destinations",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.image.digest"),
    printcolumn(
        name = "Attempts",
        type_ = "integer",
        json_path = ".status.attempts",
        priority = "1"
    ),
    printcolumn(
        name = "Pod",
        type_ = "string",
        json_path = ".status.podName",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.cache) || !has(self.cache.repository) || (has(self.cache.enabled) && self.cache.enabled)"
).message("spec.cache.repository is set but spec.cache.enabled is not true: enable the cache or remove the repository"))]
#[x_kube(validation = Rule::new(
    "!has(self.cache) || !has(self.cache.ttl) || (has(self.cache.enabled) && self.cache.enabled)"
).message("spec.cache.ttl is set but spec.cache.enabled is not true: enable the cache or remove the ttl"))]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildSpec {
    /// Where the build context comes from: exactly one of git, configMap, persistentVolumeClaim, url.
    pub source: BuildSource,
    /// Path of the Dockerfile inside the context (default `Dockerfile`): relative, with no `..`
    /// component, so it never names a file outside the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new(super::INSIDE_RULE).message(
        "spec.dockerfile must be a path inside the build context: relative, with no '..' component"
    ))]
    pub dockerfile: Option<String>,
    /// Stage to build (name or index); the last stage when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Build arguments (`ARG` values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// Platforms to build for, like `linux/amd64` or `linux/arm64/v8` (default: the node's):
    /// with several, one image per platform pushed as one OCI image index (the executor's
    /// `--custom-platform a,b`); `RUN` steps of a platform other than the node's run under QEMU
    /// emulation (see the README).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        inner(regex(pattern = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub platforms: Vec<String>,
    /// Image references to push to; at least one, none repeated.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 512)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub destinations: Vec<String>,
    /// Name of a `kubernetes.io/dockerconfigjson` Secret with the registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub push_secret: Option<String>,
    /// Build secrets for `RUN --mount=type=secret,id=<id>`: each id is one key of a Secret in
    /// the build's namespace, mounted read-only (mode 0400) into the executor Pod only, under
    /// `/kiln/secrets/<id>/`, and given to the executor as `--secret id=<id>,src=<file>`. The
    /// value never enters a layer, the config, the status, an Event or the Pod's arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub secrets: Vec<BuildSecret>,
    /// Layer cache in a registry repository and base images from a warmed cache volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Labels added to the image config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Resources of the executor container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the executor Pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the executor Pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Service account the executor Pod runs as (its token is never mounted). Only names the
    /// operator's configuration allows are accepted (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Wall-clock limit of one attempt, like `30m` or `1h30m` (Pod activeDeadlineSeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::duration::DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// How many times a failed attempt is rerun (with exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    /// Executor image to use instead of the operator's default. Only images the operator's
    /// configuration allows are accepted (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub executor_image: Option<String>,
    /// Capabilities to add to the executor container beyond the default set (CHOWN,
    /// DAC_OVERRIDE, FOWNER, FSETID, KILL, SETFCAP, SETGID, SETUID), like `MKNOD` to keep the
    /// device nodes of a base image's layers (without it they are skipped with a log line).
    /// Only capabilities the operator's configuration allows are accepted (none by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^(CAP_)?[A-Z][A-Z0-9_]*$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub add_capabilities: Vec<String>,
    /// Asks for a new run of the same build: any new value (a date, a counter, a commit) starts
    /// one, as every spec change does; applying the same value again starts nothing. With
    /// GitOps, change it in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub rerun: Option<String>,
    /// `true` stops a running build (its executor Pod is deleted) and ends it in phase
    /// `Cancelled`; nothing is built while it is `true`. Set it to `false` (or remove it) to
    /// build again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// How long finished executor Pods (and their logs) are kept, and how many; the operator's
    /// defaults (Helm `executor.retention`) for what is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// Retention of finished executor Pods: each is deleted once its TTL has passed or when more
/// than the limit of its kind (newest kept) exist. The Pod of a build still in progress is kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Delete a succeeded Pod this long after it finished, like `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::duration::DURATION_PATTERN))]
    pub ttl_after_succeeded: Option<String>,
    /// Delete a failed Pod this long after it finished, like `168h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::duration::DURATION_PATTERN))]
    pub ttl_after_failed: Option<String>,
    /// Keep at most this many succeeded Pods (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub succeeded_limit: Option<i32>,
    /// Keep at most this many failed Pods (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_limit: Option<i32>,
}

/// The build context. Exactly one field is set (enforced at admission).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(validation = Rule::new(
    "[has(self.git), has(self.configMap), has(self.persistentVolumeClaim), has(self.url)].filter(x, x).size() == 1"
).message("spec.source must set exactly one of git, configMap, persistentVolumeClaim, url"))]
#[serde(rename_all = "camelCase")]
pub struct BuildSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
    /// An `https://` (or `http://`) URL of a tar or tar.gz archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub url: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Repository URL (`https://`, `http://` or `git://`, with or without scheme prefix `git://`).
    #[schemars(length(min = 1))]
    pub url: String,
    /// Branch, tag or commit; the default branch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Directory of the repository to use as the context (relative, no `..` component).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new(super::INSIDE_RULE).message(
        "spec.source.git.subPath must be a path inside the repository: relative, with no '..' component"
    ))]
    pub sub_path: Option<String>,
    /// Credentials of a private repository: a Secret in the build's namespace with the key
    /// `token`, or `username` and `password` (a `kubernetes.io/basic-auth` Secret), for
    /// `https://` and `http://` URLs; for `ssh://` and `user@host:path` URLs, `ssh-privatekey`
    /// (a `kubernetes.io/ssh-auth` Secret) and `known_hosts` with the server's host key line
    /// (host keys are always checked). Mounted read-only into the executor Pod only; never in its
    /// arguments, environment, the status or an Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalSecretRef>,
}

/// A Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// ConfigMap whose keys are the context files.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory of the volume holding the context (relative, no `..` component).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new(super::INSIDE_RULE).message(
        "spec.source.persistentVolumeClaim.subPath must be a path inside the volume: relative, with no '..' component"
    ))]
    pub sub_path: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Cache layers in a registry repository (`--cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Repository of the layer cache (`--cache-repo`): the only repository the build reads cached
    /// layers from. When unset, the operator's per-namespace cache repository
    /// (`<cacheRegistry>/<namespace>/cache`) if it has one, else `<first destination>/cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// How long cached layers stay valid, like `168h` (`--cache-ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::duration::DURATION_PATTERN))]
    pub ttl: Option<String>,
    /// PVC filled by a `CacheWarm`; mounted read-only at `/cache` (`--cache-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_claim: Option<String>,
    /// PVC keeping `RUN --mount=type=cache` directories between builds; mounted read-write at
    /// `/kiln/mount-cache` (`--mount-cache-dir`). Builds sharing a ReadWriteMany claim coordinate
    /// through file locks on it (`sharing=locked` waits, `private` gets a fresh directory);
    /// a ReadWriteOnce claim confines the builds using it to one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub mount_cache_claim: Option<String>,
}

/// One build secret: the id a Dockerfile names (`RUN --mount=type=secret,id=<id>`) and the
/// Secret key holding its value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSecret {
    /// The secret id: letters, digits, `.`, `_`, `-`, starting with a letter or digit (at most
    /// 128 characters); unique within the build.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(super::SECRET_ID_RULE).message(
        "spec.secrets[].id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (like npmrc or GIT_AUTH_TOKEN)"
    ))]
    pub id: String,
    /// The Secret key holding the value.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the build's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// What the operator observed, written only by the operator (server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Executor Pod of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Attempts started for the observed generation (1 for the first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<BuiltImage>,
    /// What was built from: the commit of a git source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
    /// Layer-cache lookups of the last build (spec.cache.enabled only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Human-readable summary; on failure the last lines of the executor's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the operator first saw this generation waiting for a slot of the build queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Time>,
    /// Place in the build queue while Queued (1: next to start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// The last runs that ended (at most 10), newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunRecord>,
}

/// One run of an ImageBuild: a generation's build, with its retries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The generation built.
    pub generation: i64,
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub result: Phase,
    /// The reason of its end (`Pushed`, `BuildFailed`, `OOMKilled`, `Cancelled`, `Superseded`
    /// when a new spec replaced it while it ran ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Attempts it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// The pushed image's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuiltImage {
    /// Manifest digest, `sha256:...`.
    pub digest: String,
    /// Pushed references, `registry/repo:tag@sha256:...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// Bytes the image takes in a registry: its config and compressed layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The commit the git source was checked out at (full id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStatus {
    /// Steps whose layer came from the cache.
    pub hits: i64,
    /// Steps that ran.
    pub misses: i64,
}
