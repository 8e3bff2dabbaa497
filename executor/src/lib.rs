//! kiln-executor library: everything that builds an image lives here; the binary only parses flags and calls [`build::run_build`].
//! It must not depend on Kubernetes: the operator drives it only through a Pod spec.

pub mod build;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod container;
pub mod context;
pub mod copier;
pub mod credentials;
pub mod fsutil;
pub mod layer;
pub mod output;
pub mod pargz;
pub mod rootfs;
pub mod run;
pub mod run_mounts;
pub mod snapshot;
pub mod stage_files;
pub mod stop;
pub mod unpack;
