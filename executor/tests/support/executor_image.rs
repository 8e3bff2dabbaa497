//! The executor image the container-mode tests run: built and pushed by the repository's own
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
    let image = format!("{reg}/e2e/kiln-executor:test");
    let script = repo_root().join("scripts/build-executor-image.sh");
    let out = run_ok(
        Command::new("bash")
            .arg(&script)
            .args(["--destination", &image, "--insecure"]),
        IMAGE_BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("building the executor image failed: {e}"));
    assert!(
        out.stdout.trim().starts_with("sha256:"),
        "the script printed no digest: {}",
        tail(&out.stdout, 500)
    );
    image
}
