//! Path helpers other modules have always imported from here; the resolution itself lives in
//! [`crate::rootfs`], next to the writer that relies on it. Nothing is defined here.

pub use crate::rootfs::{clean_abs, resolve_in_root};
