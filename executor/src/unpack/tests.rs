//! Tests for unpacking.
