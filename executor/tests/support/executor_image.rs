//! The executor images the container-mode tests run: built and pushed by the repository's own
//! script (`scripts/build-executor-image.sh`, static release binaries cached in
//! `$CARGO_TARGET_DIR`), never by another builder.

use std::process::Command;
use std::time::Duration;

use kiln_testkit::{repo_root, run_ok, tail};

/// The static release build plus the image build; generous because 2 cores are shared.
pub const IMAGE_BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

/// Builds and pushes the executor image to `reg` with the repository's script; returns its
/// reference.
pub fn build_executor_image(reg: &str) -> String {
    build_with_script(&format!("{reg}/e2e/kiln-executor:test"), &[])
}

/// Builds and pushes the debug variant (`--debug`: a busybox shell at `/busybox/sh`) to `reg`;
/// returns its reference.
pub fn build_debug_executor_image(reg: &str) -> String {
    build_with_script(&format!("{reg}/e2e/kiln-executor:debug"), &["--debug"])
}

fn build_with_script(image: &str, extra: &[&str]) -> String {
    let script = repo_root().join("scripts/build-executor-image.sh");
    let out = run_ok(
        Command::new("bash")
            .arg(&script)
            .args(["--destination", image, "--insecure"])
            .args(extra),
        IMAGE_BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("building the executor image {image} failed: {e}"));
    assert!(
        out.stdout.trim().starts_with("sha256:"),
        "the script printed no digest: {}",
        tail(&out.stdout, 500)
    );
    image.to_string()
}
