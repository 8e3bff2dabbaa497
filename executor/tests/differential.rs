//! Differential tests: every case of `testdata/corpus` is built by kiln and by buildah (the
//! reference), the images are pushed to the local test registry, pulled back with skopeo,
//! flattened with umoci, and compared: path by path (type, mode, owner, size, content, link target,
//! hardlink groups, extended attributes, the root directory included; never timestamps), config
//! field by config field, and history step by step (`created_by` and the kind of layer each step
//! adds). A few images are also run with podman. It must not judge kiln by kiln's own reading of
//! an image: only independent tools fetch and flatten. Every tolerated difference is a named
//! entry of `differential/allowlist.rs`.
//!
//! Layers: `buildah bud` squashes a stage into one layer, so the reference is built twice: as is
//! (trees and config come from that build) and with `--layers`, which commits each instruction
//! as Docker's classic builder does (the history and layers come from that one). The `--layers`
//! build is not used for trees because buildah 1.28 then drops a WORKDIR directory that no later
//! step commits (config-fields' /srv). The rule: both histories have the same entries with the
//! same canonical `created_by`, and each entry adds the same kind of layer (none, an empty tar,
//! or a tar with entries); the allowlist names the places where builders differ there.
//!
//! Run it through `bash scripts/test.sh` (which starts the registry and base images), or by hand:
//!   KILN_TEST_REGISTRY=127.0.0.1:5000 cargo test -p kiln-executor --test differential
//! `KILN_DIFF_CASES=a,b` runs a subset (a filter that selects nothing fails); `KILN_DIFF_SELFTEST=1`
//! builds the "kiln" side with buildah too, which shows the harness itself (fetch, flatten,
//! compare) is sound; it fails under `CI=true`, where it would compare buildah with itself.

mod support;

#[path = "differential/allowlist.rs"]
mod allowlist;
#[path = "differential/apt_repo.rs"]
mod apt_repo;
#[path = "differential/comparer.rs"]
mod comparer;
#[path = "differential/demo.rs"]
mod demo;
#[path = "differential/rules.rs"]
mod rules;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use allowlist::{Ledger, Tolerance};
use kiln_testkit::registry_digest;
use support::{
    corpus_cases, diff_configs, diff_steps, fetch_rootfs, image_config, image_steps, layer_count,
    podman_check, registry, run_bounded, run_ok, scan_tree, skopeo_fetch, tree_differences, Case,
    BUILDAH_FLAGS,
};

/// Longest a single build may take before it is killed (the Debian apt case is the slowest).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Labels a builder adds on its own (none while buildah runs with `--identity-label=false`).
const IGNORED_LABEL_PREFIXES: &[&str] = &["io.buildah."];

/// Images that are also run with podman: (case, arguments, expected trimmed stdout). They check
/// that the config written actually works for a runtime: Entrypoint/Cmd, User, PATH from ENV.
const RUN_CHECKS: &[(&str, &[&str], &str)] = &[
    ("busybox-run", &[], "hello"),
    ("config-fields", &[], "config"),
    ("shell-and-entrypoint", &[], "from-entrypoint"),
    ("user-run", &["id", "-u"], "1000"),
    ("env-run-visibility", &["tool"], "custom-tool"),
    ("debian-apt", &[], "Hello, world!"),
];

/// Progress goes straight to the process's stderr: `eprintln!` would be captured by the test
/// harness until the end, and this test runs for minutes in CI.
fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn selftest() -> bool {
    std::env::var("KILN_DIFF_SELFTEST").is_ok_and(|v| v == "1")
}

/// Whether this runs in CI (`CI=true`, as CI services set it).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A buildah with storage of its own under a case's work directory: intermediate images of
/// `--layers` builds never pile up in (or get reused from) the machine's shared storage, and
/// everything goes when the work directory does.
struct Buildah {
    root: PathBuf,
}

impl Buildah {
    fn new(work: &Path) -> Buildah {
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
    fn build(&self, case: &Case, dest: &str, side: &str, layers: bool) -> Result<(), String> {
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
fn kiln_build(case: &Case, dest: &str, work: &Path) -> Result<String, String> {
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
    pub tree: support::Tree,
    pub config: serde_json::Value,
    pub steps: Vec<support::Step>,
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
}

/// Compares a reference and a candidate for `case` under the allowlist `list`; returns every
/// difference left (empty: they match), section by section.
pub fn compare(
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

/// Builds one case both ways and returns every difference found (empty: the case passes).
fn check_case(case: &Case, reg: &str, work: &Path, ledger: &mut Ledger) -> Vec<String> {
    let reference = format!("{reg}/diff/{}:buildah", case.name);
    let reference_steps = format!("{reg}/diff/{}:buildah-layers", case.name);
    let candidate = format!("{reg}/diff/{}:kiln", case.name);
    let candidate_steps = format!("{reg}/diff/{}:kiln-layers", case.name);
    let buildah = Buildah::new(work);

    if let Err(e) = buildah
        .build(case, &reference, "buildah", false)
        .and_then(|()| buildah.build(case, &reference_steps, "buildah", true))
    {
        return vec![format!("reference build: {e}")];
    }
    let (kiln_digest, candidate_steps) = if selftest() {
        let built = buildah
            .build(case, &candidate, "kiln", false)
            .and_then(|()| buildah.build(case, &candidate_steps, "kiln", true));
        if let Err(e) = built {
            return vec![format!("selftest build: {e}")];
        }
        (None, candidate_steps)
    } else {
        match kiln_build(case, &candidate, work) {
            Ok(d) => (Some(d), candidate.clone()),
            Err(e) => return vec![e],
        }
    };
    drop(buildah);

    let mut problems = Vec::new();
    if let Some(d) = kiln_digest {
        match registry_digest(&candidate) {
            Ok(served) if served == d => {}
            Ok(served) => problems.push(format!(
                "  --digest-file says {d:?} but the registry serves {served} for {candidate}"
            )),
            Err(e) => problems.push(format!("  cannot read the pushed digest: {e}")),
        }
    }
    let sides = Side::fetch(&reference, &reference_steps, work, "buildah").and_then(|r| {
        let c = Side::fetch(&candidate, &candidate_steps, work, "kiln")?;
        Ok((r, c))
    });
    match sides {
        Ok((r, c)) => problems.extend(compare(&case.name, &r, &c, rules::ALLOWLIST, ledger)),
        Err(e) => problems.push(e),
    }
    if let Some((_, args, expected)) = RUN_CHECKS.iter().find(|(n, _, _)| *n == case.name) {
        if let Err(e) = podman_check(&candidate, args, expected) {
            problems.push(format!("  {e}"));
        }
    }
    problems
}

/// Makes the case's own copy (see [`Case::materialize`]) and checks it.
fn run_case(
    case: &Case,
    reg: &str,
    apt: &mut Option<apt_repo::AptRepo>,
    ledger: &mut Ledger,
) -> Vec<String> {
    let work = match tempfile::Builder::new()
        .prefix(&format!("kiln-diff-{}-", case.name))
        .tempdir()
    {
        Ok(w) => w,
        Err(e) => return vec![format!("cannot create a temporary directory: {e}")],
    };
    let mut substitutions = Vec::new();
    if case.uses(apt_repo::PLACEHOLDER) {
        if apt.is_none() {
            match apt_repo::AptRepo::start() {
                Ok(repo) => *apt = Some(repo),
                Err(e) => return vec![format!("cannot start the loopback apt repository: {e}")],
            }
        }
        if let Some(repo) = apt {
            substitutions.push((apt_repo::PLACEHOLDER, repo.url()));
        }
    }
    match case.materialize(work.path(), reg, &substitutions) {
        Ok(copy) => check_case(&copy, reg, work.path(), ledger),
        Err(e) => vec![e],
    }
}

#[test]
fn corpus_matches_buildah() {
    if selftest() && in_ci() {
        panic!(
            "KILN_DIFF_SELFTEST=1 under CI=true: the selftest builds both sides with buildah, so it \
             compares buildah with itself and says nothing about kiln; unset KILN_DIFF_SELFTEST"
        );
    }
    let reg = registry();
    let cases = corpus_cases().unwrap_or_else(|e| panic!("{e}"));
    let full = std::env::var_os("KILN_DIFF_CASES").is_none();
    let mode = if selftest() {
        "SELFTEST: both sides built by buildah"
    } else {
        "kiln vs buildah"
    };
    progress(&format!("differential: {} cases, {mode}", cases.len()));

    let mut ledger = Ledger::default();
    let mut apt = None;
    let mut failed = Vec::new();
    for case in &cases {
        let start = Instant::now();
        let problems = run_case(case, &reg, &mut apt, &mut ledger);
        let secs = start.elapsed().as_secs_f32();
        if problems.is_empty() {
            progress(&format!("  ok    {} ({secs:.1}s)", case.name));
        } else {
            progress(&format!("  FAIL  {} ({secs:.1}s)", case.name));
            failed.push((case.name.clone(), problems));
        }
    }
    drop(apt);

    let ran: Vec<String> = cases.iter().map(|c| c.name.clone()).collect();
    let stale = ledger.stale(rules::ALLOWLIST, &ran, full);
    progress(&rules::summary(&ledger, &stale));
    // A stale entry fails only a kiln run: the selftest compares buildah with itself, where the
    // entries for kiln's ways hide nothing by design.
    let stale_fails = !stale.is_empty() && !selftest();

    if !failed.is_empty() || stale_fails {
        let mut report = format!(
            "differential: {} of {} cases differ ({mode}):\n",
            failed.len(),
            cases.len()
        );
        for (name, problems) in &failed {
            report.push_str(&format!("\n=== {name}\n"));
            for p in problems {
                report.push_str(p);
                report.push('\n');
            }
        }
        if stale_fails {
            report.push_str(
                "\nstale allowlist entries (they matched nothing although their cases ran; \
                 delete them from executor/tests/differential/rules.rs):\n",
            );
            for t in &stale {
                report.push_str(&format!("  {}: {}\n", t.name, t.why));
            }
        }
        if !failed.is_empty() {
            let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
            report.push_str(&format!(
                "\nfailed cases: {}\nrerun some with KILN_DIFF_CASES={}\n",
                names.join(" "),
                names.join(",")
            ));
        }
        panic!("{report}");
    }
}
