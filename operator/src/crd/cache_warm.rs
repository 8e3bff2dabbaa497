//! `CacheWarm`: a set of base images pulled into a PVC by a warmer Pod, refreshed periodically.
// kube's printcolumn(...) repeats `type_`/`priority` keys by design; clippy mistakes them for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Phase;

/// Keep base images in a volume so builds start without downloading them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "CacheWarm",
    namespaced,
    status = "CacheWarmStatus",
    shortname = "cw",
    category = "kiln",
    doc = "Base images pulled into a cache volume by a kiln-warmer Pod, refreshed periodically",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Images", type_ = "integer", json_path = ".status.imageCount"),
    printcolumn(name = "Last Warm", type_ = "date", json_path = ".status.lastWarmTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CacheWarmSpec {
    /// Image references to keep in the cache, none repeated.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 512)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub images: Vec<String>,
    /// Existing PersistentVolumeClaim the cache is written to.
    #[schemars(length(min = 1, max = 253))]
    pub claim: String,
    /// `kubernetes.io/dockerconfigjson` Secret used to pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    /// How often the images are pulled again, like `1h` (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::duration::DURATION_PATTERN))]
    pub refresh_interval: Option<String>,
    /// Platform to pull, like `linux/amd64` (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"))]
    pub platform: Option<String>,
    /// Several platforms to pull every image for (with `platform`, that one too), as a
    /// multi-platform ImageBuild reads them from the warmed cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        inner(regex(pattern = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub platforms: Vec<String>,
    /// Warmer image to use instead of the operator's default. Only images the operator's
    /// configuration allows are accepted (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub warmer_image: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheWarmStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Warm runs started for the observed generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<i32>,
    /// When the current run finished, successfully or not (unset while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the last successful warm finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_warm_time: Option<Time>,
    /// Images the cache holds after the last successful warm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<WarmedImage>,
    /// Number of images in `images` (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmedImage {
    pub reference: String,
    /// Manifest digest held in the cache.
    pub digest: String,
}
