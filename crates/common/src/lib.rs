//! Pieces every Kiln program shares that belong to no domain: logging set-up, Go durations and
//! flag values, the Kubernetes termination message. Must stay small and free of image, registry and Kubernetes code.

pub mod duration;
pub mod goflag;
pub mod logging;
pub mod termination;
