//! Reconciling an `ImageBuild`: validate (pure) → desired Pod (pure) → apply (I/O) → status
//! (pure, then one server-side-apply patch). Only [`controller`] talks to the API server.

pub mod admission;
pub mod controller;
pub mod pod;
pub mod queue;
pub mod retention;
pub mod run_mounts;
pub mod status;
pub mod validate;

pub use controller::{reconcile, Context};
pub use pod::{desired_pod, ExecutorResult};
pub use status::{observe_pod, plan, plan_cancelled, Observation, Plan, PodOutcome};
pub use validate::{permitted, validate, InvalidSpec, ValidSpec};

/// Condition reasons used on `ImageBuild`s.
pub mod reason {
    pub const BUILDING: &str = "Building";
    pub const PUSHED: &str = "Pushed";
    pub const BUILD_FAILED: &str = "BuildFailed";
    pub const TIMEOUT: &str = "Timeout";
    pub const POD_DELETED: &str = "PodDeleted";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// An override (executor image, service account, capability) the operator's configuration
    /// does not allow.
    pub const NOT_PERMITTED: &str = "NotPermitted";
    pub const RETRYING: &str = "Retrying";
    /// The kernel killed the executor for exceeding its memory limit.
    pub const OOM_KILLED: &str = "OOMKilled";
    /// The kubelet evicted the executor Pod (node pressure, an ephemeral-storage limit).
    pub const EVICTED: &str = "Evicted";
    /// The kubelet cannot pull the executor image (it backed off, or the reference is invalid).
    pub const EXECUTOR_IMAGE_PULL_FAILED: &str = "ExecutorImagePullFailed";
    /// The scheduler finds no node for the executor Pod (while waiting, and as the failure when
    /// spec.timeout passes before it is placed).
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// spec.cancel stopped the build.
    pub const CANCELLED: &str = "Cancelled";
    /// Waiting for a slot of the build queue.
    pub const QUEUED: &str = "Queued";
    /// A new generation replaced a run still in progress (in status.history).
    pub const SUPERSEDED: &str = "Superseded";
}
