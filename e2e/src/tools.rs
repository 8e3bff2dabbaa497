//! The independent checks of a result: `skopeo` asks the registry what it serves, `podman`
//! runs the pushed image. Plain HTTP to the local test registry only; never a remote one.

use std::process::Command;

use anyhow::{bail, Context};

/// Common podman flags on these machines (no systemd, no overlay, host network to reach the
/// registry on 127.0.0.1).
pub const PODMAN_GLOBAL: &[&str] = &[
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--storage-driver",
    "vfs",
];

/// Runs a command to completion; stdout on success, an error with stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}: is it installed?"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The manifest digest the registry serves for `reference` (`host:port/repo:tag`).
pub fn registry_digest(reference: &str) -> anyhow::Result<String> {
    let out = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("skopeo inspect output")?;
    v.get("Digest")
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .with_context(|| format!("skopeo inspect of {reference} gave no Digest"))
}

/// Deletes a manifest from the registry (needs `delete.enabled`, which scripts/registry.sh sets).
pub fn registry_delete(reference: &str) -> anyhow::Result<()> {
    run(
        "skopeo",
        &[
            "delete",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    )
    .map(|_| ())
}

/// `podman run --rm` of an image from the local registry (always pulled again, so a tag that
/// moved is seen); returns its standard output.
pub fn podman_run(image: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full: Vec<&str> = PODMAN_GLOBAL.to_vec();
    full.extend([
        "run",
        "--rm",
        "--network",
        "host",
        "--pull=always",
        "--tls-verify=false",
        image,
    ]);
    full.extend(args);
    let out = run("podman", &full);
    // vfs storage keeps a full copy per image: drop the test image once it has run.
    let mut rmi: Vec<&str> = PODMAN_GLOBAL.to_vec();
    rmi.extend(["rmi", "-f", "--ignore", image]);
    let _ = run("podman", &rmi);
    out
}
