//! Pieces every Kiln program shares that belong to no domain: logging set-up, Go durations and the
//! Kubernetes termination message. Must stay small and free of image, registry and Kubernetes code.

pub mod duration;
pub mod logging;
pub mod termination;
