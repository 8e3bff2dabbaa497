//! kiln-operator library: CRD types, the pure reconcile pipelines for `ImageBuild` and
//! `CacheWarm`, and the I/O glue (controllers, leader election, metrics). Binaries only wire
//! these together; nothing here parses command lines or installs signal handlers.

pub mod clock;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod crd;
pub mod docker_config;
pub mod duration;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod ownership;
pub mod pod_events;
pub mod runtime;
pub mod security;
pub mod text;

pub mod cache_warm;
pub mod image_build;

/// The field manager under which the operator writes every status (server-side apply).
pub const FIELD_MANAGER: &str = "kiln-operator";
/// Label on every Pod the operator creates, naming the owning `ImageBuild` (its name, or past 63
/// characters the shortened form of [`names::label_value`]).
pub const LABEL_BUILD: &str = "kiln.dev/image-build";
/// Label on every Pod the operator creates, naming the owning `CacheWarm` (as [`LABEL_BUILD`]).
pub const LABEL_WARM: &str = "kiln.dev/cache-warm";
/// Label carrying the `metadata.generation` of the owner the Pod was created for.
pub const LABEL_GENERATION: &str = "kiln.dev/generation";
/// Label carrying the attempt (build) or run (warm) number.
pub const LABEL_ATTEMPT: &str = "kiln.dev/attempt";
/// `app.kubernetes.io/managed-by` value: the watch on Pods is restricted to these.
pub const MANAGED_BY: &str = "kiln-operator";
