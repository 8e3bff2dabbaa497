//! Caches that make repeated builds cheap: layer-cache keys ([`key`]), the layer cache in a
//! registry repository or OCI layout ([`layer`]) and the base-image cache volume ([`base`]).
//! Nothing here runs build steps; [`crate::build`] decides when to look up and apply.

/// The base-image cache volume shared with kiln-warmer.
pub mod base;
pub mod key;
pub mod layer;
