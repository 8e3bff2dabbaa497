//! The reference builder and Kiln side by side: buildah and kiln-executor builds of one case
//! pushed to the test registry, the two images read back through independent tools, and their
//! comparison under an allowlist. Shared by the corpus test (`differential.rs`) and the kaniko
//! Dockerfile test (`kaniko_dockerfiles.rs`); it must not read Kiln's own view of an image.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::allowlist::{self, Ledger, Tolerance};
use super::support::{
    diff_configs, diff_steps, fetch_rootfs, image_config, image_steps, layer_count, run_bounded,
    run_ok, scan_tree, skopeo_fetch, tree_differences, Case, Step, Tree, BUILDAH_FLAGS,
};

/// Longest a single build may take before it is killed (the Debian apt case is the slowest).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Labels a builder adds on its own (none while buildah runs with `--identity-label=false`).
pub const IGNORED_LABEL_PREFIXES: &[&str] = &["io.buildah."];

/// Progress goes straight to the process's stderr: `eprintln!` would be captured by the test
/// harness until the end, and this test runs for minutes in CI.
pub fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A buildah with storage of its own under a case's work directory: intermediate images of
/// `--layers` builds never pile up in (or get reused from) the machine's shared storage, and
/// everything goes when the work directory does.
pub struct Buildah {
    root: PathBuf,
}

impl Buildah {
    pub fn new(work: &Path) -> Buildah {
        Buildah {
            root: work.join("buildah"),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.args(BUILDAH_FLAGS)
            .arg("--root")
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("run"));
        cmd
    }

    /// Builds `case` (squashed, or one layer per instruction with `layers`) and pushes it to
    /// `dest`.
    pub fn build(&self, case: &Case, dest: &str, side: &str, layers: bool) -> Result<(), String> {
        let local = format!("localhost/kiln-diff/{}:{side}", case.name);
        let mut cmd = self.command();
        cmd.args([
            "bud",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--identity-label=false",
            // The OCI config format has no Healthcheck, Shell or OnBuild: buildah drops them
            // unless it writes Docker's format, which kiln's config must match field for field.
            "--format",
            "docker",
        ]);
        if layers {
            cmd.arg("--layers");
        }
        cmd.arg("-f")
            .arg(case.reference_dockerfile())
            .args(["-t", &local]);
        for (k, v) in case.build_args_for(side) {
            cmd.arg("--build-arg").arg(format!("{k}={v}"));
        }
        if let Some(t) = &case.target {
            cmd.arg("--target").arg(t);
        }
        if let Some(p) = &case.platform {
            cmd.arg("--platform").arg(p);
        }
        cmd.arg(&case.dir);
        // buildah 1.28's chroot isolation sometimes fails to set up a RUN under load ("Close_Fd
        // sealing memfd copy: Device or resource busy"); that is the reference tool's flake, not
        // a build result, so only that failure is retried, a bounded number of times.
        let mut attempt = 1;
        loop {
            match run_ok(&mut cmd, BUILD_TIMEOUT) {
                Ok(_) => break,
                Err(e) if attempt < 3 && e.to_string().contains("sealing memfd copy") => {
                    progress(&format!(
                        "  buildah hit its memfd flake on {} (attempt {attempt}); retrying",
                        case.name
                    ));
                    attempt += 1;
                }
                Err(e) => return Err(format!("buildah build failed: {e}")),
            }
        }
        run_ok(
            self.command().args([
                "push",
                "--quiet",
                "--tls-verify=false",
                &local,
                &format!("docker://{dest}"),
            ]),
            BUILD_TIMEOUT,
        )
        .map(|_| ())
        .map_err(|e| format!("buildah push failed: {e}"))
    }
}

impl Drop for Buildah {
    /// vfs keeps a full copy of the root per layer: empty the storage (through buildah, which
    /// knows its layout) before the work directory is deleted.
    fn drop(&mut self) {
        let _ = run_bounded(
            self.command().args(["rmi", "--all", "--force"]),
            Duration::from_secs(120),
        );
    }
}

/// Builds `case` with kiln and pushes it to `dest`; returns the digest kiln reported in
/// `--digest-file`. This is the one place the executor's command line is spelled out.
pub fn kiln_build(case: &Case, dest: &str, work: &Path) -> Result<String, String> {
    let digest_file = work.join("kiln.digest");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.arg("--context")
        .arg(format!("dir://{}", case.dir.display()))
        .arg("--dockerfile")
        .arg(case.dockerfile())
        .arg("--destination")
        .arg(dest)
        .arg("--insecure")
        .arg("--insecure-pull")
        .arg("--digest-file")
        .arg(&digest_file)
        // RUN --mount=type=cache starts empty, as buildah's does, and leaves nothing behind.
        .arg("--mount-cache-dir")
        .arg(work.join("kiln-mount-cache"));
    for (k, v) in case.build_args_for("kiln") {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    if let Some(t) = &case.target {
        cmd.arg("--target").arg(t);
    }
    if let Some(p) = &case.platform {
        cmd.arg("--custom-platform").arg(p);
    }
    run_ok(&mut cmd, BUILD_TIMEOUT).map_err(|e| format!("kiln build failed: {e}"))?;
    let digest = fs::read_to_string(&digest_file)
        .map_err(|e| {
            format!(
                "kiln exited 0 but wrote no --digest-file {}: {e}",
                digest_file.display()
            )
        })?
        .trim()
        .to_string();
    Ok(digest)
}

/// What the comparison reads of one side: the flattened tree, the config, and the steps of the
/// build that commits each instruction.
pub struct Side {
    pub tree: Tree,
    pub config: serde_json::Value,
    pub steps: Vec<Step>,
}

impl Side {
    /// Reads `image` (flattened) and `steps_image` (its history and layers) from the registry
    /// into `work`, under tags that start with `tag`.
    pub fn fetch(image: &str, steps_image: &str, work: &Path, tag: &str) -> Result<Side, String> {
        let rootfs =
            fetch_rootfs(image, work, tag).map_err(|e| format!("cannot fetch or flatten: {e}"))?;
        let tree =
            scan_tree(&rootfs).map_err(|e| format!("cannot scan {}: {e}", rootfs.display()))?;
        let config = image_config(image).map_err(|e| format!("cannot read a config: {e}"))?;
        let layout = work.join("layout");
        let steps_tag = format!("{tag}-steps");
        if steps_image != image {
            skopeo_fetch(steps_image, &layout, &steps_tag)
                .map_err(|e| format!("cannot fetch {steps_image}: {e}"))?;
        }
        let steps = image_steps(
            &layout,
            if steps_image == image {
                tag
            } else {
                &steps_tag
            },
        )?;
        Ok(Side {
            tree,
            config,
            steps,
        })
    }

    /// Reads `image` (flattened) and its config only, for a comparison without histories.
    #[allow(dead_code)] // The corpus test reads histories too.
    pub fn fetch_contents(image: &str, work: &Path, tag: &str) -> Result<Side, String> {
        let rootfs =
            fetch_rootfs(image, work, tag).map_err(|e| format!("cannot fetch or flatten: {e}"))?;
        let tree =
            scan_tree(&rootfs).map_err(|e| format!("cannot scan {}: {e}", rootfs.display()))?;
        let config = image_config(image).map_err(|e| format!("cannot read a config: {e}"))?;
        Ok(Side {
            tree,
            config,
            steps: Vec::new(),
        })
    }
}

/// Compares the flattened trees and configs of a reference and a candidate for `case` under the
/// allowlist `list` (histories are not read); returns every difference left.
pub fn compare_contents(
    case: &str,
    reference: &Side,
    candidate: &Side,
    list: &[Tolerance],
    ledger: &mut Ledger,
) -> Vec<String> {
    let mut problems = Vec::new();
    let files = allowlist::filter_paths(
        case,
        tree_differences(&reference.tree, &candidate.tree),
        list,
        ledger,
    );
    if !files.is_empty() {
        problems.push("files (buildah != kiln):".to_string());
        problems.extend(files.iter().map(ToString::to_string));
    }
    let config = diff_configs(&reference.config, &candidate.config, IGNORED_LABEL_PREFIXES);
    if !config.is_empty() {
        problems.push("config (buildah != kiln):".to_string());
        problems.extend(config);
    }
    problems
}

/// Compares a reference and a candidate for `case` under the allowlist `list`: trees, configs
/// and histories; returns every difference left (empty: they match), section by section.
pub fn compare(
    case: &str,
    reference: &Side,
    candidate: &Side,
    list: &[Tolerance],
    ledger: &mut Ledger,
) -> Vec<String> {
    let mut problems = compare_contents(case, reference, candidate, list, ledger);
    let expected = allowlist::canonical_steps(case, &reference.steps, list, ledger);
    let actual = allowlist::canonical_steps(case, &candidate.steps, list, ledger);
    let steps = allowlist::filter_steps(case, diff_steps(&expected, &actual), list, ledger);
    if !steps.is_empty() {
        problems.push(format!(
            "history and layers (buildah --layers != kiln; {} != {} layers, {} != {} entries):",
            layer_count(&reference.steps),
            layer_count(&candidate.steps),
            reference.steps.len(),
            candidate.steps.len()
        ));
        problems.extend(steps.iter().map(ToString::to_string));
    }
    problems
}
