//! Layer cache keys and lookups.

/// The base-image cache volume shared with kiln-warmer.
pub mod base;
