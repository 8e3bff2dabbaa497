//! OCI images and registries, shared by kiln-executor and kiln-warmer: registry access (pull,
//! push, auth), OCI image layouts, image config and manifest types, platforms, and the base-image
//! cache volume the warmer fills and the executor reads, and the registry flags both programs
//! take. Knows nothing of Dockerfiles or builds.

pub mod base_cache;
pub mod flags;
pub mod image;
pub mod platform;
pub mod registry;
