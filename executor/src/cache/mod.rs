//! Caches that make repeated builds cheap: layer-cache keys ([`key`]), the layer cache in a
//! registry repository or OCI layout ([`layer`]), its lookups started ahead of the steps
//! ([`prefetch`]) and the base-image cache volume ([`base`]).
//! Nothing here runs build steps; [`crate::build`] decides when to look up and apply.

/// The base-image cache volume shared with kiln-warmer.
pub mod base;
pub mod key;
pub mod layer;
pub mod prefetch;
