//! Caches that make repeated builds cheap: layer-cache keys ([`key`]), the layer cache in a
//! registry repository or OCI layout ([`layer`]), its lookups started ahead of the steps
//! ([`prefetch`]). The base-image cache volume shared with kiln-warmer is [`kiln_oci::base_cache`].
//! Nothing here runs build steps; [`crate::build`] decides when to look up and apply.

pub mod key;
pub mod layer;
pub mod prefetch;
