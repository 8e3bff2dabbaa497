//! Tests for snapshots.
