//! Reconciling a `CacheWarm`: validate (pure) → desired warmer Pod (pure) → apply (I/O) →
//! status (pure, then one server-side-apply patch). Only [`controller`] talks to the API server.

pub mod controller;
pub mod pod;
pub mod status;

pub use controller::{reconcile, Context};
pub use pod::{desired_pod, WarmerResult};
pub use status::{plan, validate, Observation, Plan};

/// Condition reasons used on `CacheWarm`s.
pub mod reason {
    pub const WARMING: &str = "Warming";
    pub const WARMED: &str = "Warmed";
    pub const WARM_FAILED: &str = "WarmFailed";
    pub const POD_DELETED: &str = "PodDeleted";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A warmer image the operator's configuration does not allow.
    pub const NOT_PERMITTED: &str = "NotPermitted";
}
