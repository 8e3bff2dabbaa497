//! OCI images and registries, shared by kiln-executor and kiln-warmer: registry access (pull,
//! push, auth), OCI image layouts, image config and manifest types, platforms, and the base-image
//! cache volume the warmer fills and the executor reads, the registry flags both programs
//! take, and the bounds on what a registry or an image may make them read. Knows nothing of
//! Dockerfiles or builds.

pub mod base_cache;
pub mod flags;
pub mod image;
pub mod limits;
pub mod platform;
pub mod registry;
