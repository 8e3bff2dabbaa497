//! Layer cache keys and lookups.
