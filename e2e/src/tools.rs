//! The independent checks of a result, from the shared test kit (`kiln_testkit`): `skopeo` asks
//! the registry what it serves (the cluster itself runs the pushed images). This module only
//! adapts them to the harness's `anyhow` errors; plain HTTP to the local test registry only.

use std::process::Command;

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
