//! The independent checks of a result, from the shared test kit (`kiln_testkit`): `skopeo` asks
//! the registry what it serves, `podman` runs the pushed image. This module only adapts them to
//! the harness's `anyhow` errors; plain HTTP to the local test registry only, never a remote one.

use std::process::Command;

pub use kiln_testkit::PODMAN_FLAGS as PODMAN_GLOBAL;

/// Runs a command to completion within the test kit's bound; stdout on success, an error with
/// its output otherwise.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    Ok(kiln_testkit::run_ok(Command::new(program).args(args), kiln_testkit::TOOL_TIMEOUT)?.stdout)
}

/// The manifest digest the registry serves for `reference` (`host:port/repo:tag`).
pub fn registry_digest(reference: &str) -> anyhow::Result<String> {
    Ok(kiln_testkit::registry_digest(reference)?)
}

/// Deletes a manifest from the registry (needs `delete.enabled`, which scripts/registry.sh sets).
pub fn registry_delete(reference: &str) -> anyhow::Result<()> {
    Ok(kiln_testkit::skopeo_delete(reference)?)
}

/// `podman run --rm` of an image from the local registry (always pulled again, so a tag that
/// moved is seen, and removed afterwards); returns its standard output.
pub fn podman_run(image: &str, args: &[&str]) -> anyhow::Result<String> {
    Ok(kiln_testkit::podman_run(image, args)?.stdout)
}
