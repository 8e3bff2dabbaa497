//! Conformance with kaniko's own integration Dockerfiles: every file of `integration/dockerfiles`
//! in kaniko v1.24.0's Go module (fetched at test time by `scripts/kaniko-flags.sh`, never kept
//! in this repository) is built by Kiln and by buildah from kaniko's integration directory (its
//! build context), with its base images rewritten to the local test images
//! (`testdata/kaniko-dockerfiles/bases`), and the two images are compared by the differential
//! test's comparison (`differential/harness.rs`: files, modes, owners, xattrs, config; not
//! histories). The lists in `testdata/kaniko-dockerfiles/` say what is not compared that way:
//!   skip            not built (needs the internet, an image no local one stands for, or a kaniko
//!                   test flag), one reason each
//!   differences     buildah is not the reference there (BuildKit's behaviour wins): Kiln's image
//!                   is run with podman and its output checked instead
//!   known-failures  Kiln defects: built, compared, and expected to differ
//!   args            kaniko's build args and targets for a Dockerfile
//! The test fails on an unlisted failure, on a listed name that kaniko no longer has, on a known
//! failure or listed difference that now matches, and when fewer than [`MIN_COMPARED`] were
//! built and compared.
//!
//! Run it through `bash scripts/test.sh`, or by hand (registry and base images up):
//!   KILN_TEST_REGISTRY=127.0.0.1:5000 cargo test -p kiln-executor --test kaniko_dockerfiles

mod support;

#[allow(dead_code)] // History tolerances and reports are the corpus test's.
#[path = "differential/allowlist.rs"]
mod allowlist;
#[allow(dead_code)] // The corpus test uses the rest.
#[path = "differential/harness.rs"]
mod harness;
#[path = "kaniko_dockerfiles/lists.rs"]
mod lists;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use allowlist::{Ledger, Tolerance, Tolerated};
use harness::{compare_contents, kiln_build, progress, Buildah, Side};
use lists::Lists;
use support::{image_config, podman_check, registry, run_ok, Aspect, Case};

/// The fewest Dockerfiles that must be built and compared (passed, or judged by a run check) for
/// the test to pass: what this machine reaches, less a small margin.
const MIN_COMPARED: usize = 40;

/// Differences between buildah and Kiln that the comparison tolerates here (the corpus's own
/// allowlist names corpus cases; its entries for every case concern histories, not read here).
const TOLERATED: &[Tolerance] = &[Tolerance {
    name: "run-date",
    cases: &[
        "Dockerfile_test_cache",
        "Dockerfile_test_cache_oci",
        "Dockerfile_test_multistage",
    ],
    what: Tolerated::Path {
        paths: &["/date"],
        aspects: &[Aspect::Content],
    },
    why: "`RUN date > /date` writes the time of the build",
}];

/// How a Dockerfile came out.
enum Outcome {
    Passed,
    /// A listed difference whose run check passed.
    RunChecked,
    /// A listed known failure that still fails.
    KnownFailure,
    Skipped(String),
    Failed(Vec<String>),
}

/// Every Dockerfile of kaniko's `integration/dockerfiles` (the `.dockerignore` files beside
/// them are not Dockerfiles).
fn dockerfiles(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".dockerignore"))
        .collect()
}

/// Builds `name` both ways from a copy of `integration` under `work`; returns the differences
/// (empty: they match) and the Kiln image.
fn build_and_compare(
    name: &str,
    integration: &Path,
    lists: &Lists,
    reg: &str,
    work: &Path,
    ledger: &mut Ledger,
) -> (Vec<String>, Option<String>) {
    let context = work.join("context");
    if let Err(e) = run_ok(
        Command::new("cp").arg("-a").arg(integration).arg(&context),
        Duration::from_secs(120),
    ) {
        return (vec![format!("cannot copy the context: {e}")], None);
    }
    let text = fs::read_to_string(integration.join("dockerfiles").join(name))
        .unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
    let rewritten = match lists.rewrite(&text, reg) {
        Ok(t) => t,
        Err(e) => return (vec![e], None),
    };
    // Both builders read `Dockerfile` at the context root (kaniko's integration directory has
    // none); a `<Dockerfile>.dockerignore` beside kaniko's goes beside it.
    fs::write(context.join("Dockerfile"), rewritten).unwrap();
    let ignore = integration
        .join("dockerfiles")
        .join(format!("{name}.dockerignore"));
    if ignore.exists() {
        fs::copy(&ignore, context.join("Dockerfile.dockerignore")).unwrap();
    }
    let mut build_args = Vec::new();
    let mut target = None;
    for a in lists.args.get(name).into_iter().flatten() {
        if let Some(t) = a.strip_prefix("--target=") {
            target = Some(t.to_string());
        } else {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            build_args.push((k.to_string(), v.to_string()));
        }
    }
    let case = Case {
        // buildah's local tag is made of it, and image names are lower case.
        name: name.to_ascii_lowercase(),
        dir: context,
        build_args,
        target,
        requires: None,
        platform: None,
    };
    let repo = format!("{reg}/kaniko-dockerfiles/{}", name.to_ascii_lowercase());
    let reference = format!("{repo}:buildah");
    let candidate = format!("{repo}:kiln");
    // Kiln builds even when buildah fails: a listed difference is then judged by a run.
    let buildah = Buildah::new(work);
    let reference_built = buildah.build(&case, &reference, "buildah", false);
    drop(buildah);
    if let Err(e) = kiln_build(&case, &candidate, work) {
        return (vec![e], None);
    }
    if let Err(e) = reference_built {
        return (vec![format!("reference build: {e}")], Some(candidate));
    }
    let sides = Side::fetch_contents(&reference, work, "buildah")
        .and_then(|r| Ok((r, Side::fetch_contents(&candidate, work, "kiln")?)));
    let problems = match sides {
        Ok((r, c)) => compare_contents(name, &r, &c, TOLERATED, ledger),
        Err(e) => vec![e],
    };
    (problems, Some(candidate))
}

/// Judges Kiln's `image` by `check`: its output when run with podman, or for `config.<Field>`
/// (what a run cannot show, such as an Entrypoint that fails) that config field as JSON.
fn run_check(image: &str, check: &lists::RunCheck) -> Result<(), String> {
    if let [field] = &check.args[..] {
        if let Some(field) = field.strip_prefix("config.") {
            let want: serde_json::Value = serde_json::from_str(&check.expected)
                .map_err(|e| format!("{}: not JSON: {e}", check.expected))?;
            let config = image_config(image).map_err(|e| format!("cannot read a config: {e}"))?;
            let got = &config["config"][field];
            return if *got == want {
                Ok(())
            } else {
                Err(format!("config.{field}: expected {want}, got {got}"))
            };
        }
    }
    let args: Vec<&str> = check.args.iter().map(String::as_str).collect();
    podman_check(image, &args, &check.expected.replace("\\n", "\n"))
}

fn check(name: &str, integration: &Path, lists: &Lists, reg: &str, ledger: &mut Ledger) -> Outcome {
    if let Some(why) = lists.skip.get(name) {
        return Outcome::Skipped(why.clone());
    }
    let work = tempfile::Builder::new()
        .prefix("kiln-kaniko-df-")
        .tempdir()
        .unwrap();
    let (problems, image) = build_and_compare(name, integration, lists, reg, work.path(), ledger);
    if let Some(check) = lists.differences.get(name) {
        let Some(image) = image else {
            return Outcome::Failed(problems);
        };
        if problems.is_empty() {
            return Outcome::Failed(vec![format!(
                "listed in testdata/kaniko-dockerfiles/differences, but Kiln and buildah now \
                 match: delete the entry ({})",
                check.why
            )]);
        }
        return match run_check(&image, check) {
            Ok(()) => Outcome::RunChecked,
            Err(e) => Outcome::Failed(vec![format!("run check: {e}")]),
        };
    }
    if lists.known_failures.contains_key(name) {
        return if problems.is_empty() {
            Outcome::Failed(vec![
                "listed in testdata/kaniko-dockerfiles/known-failures, but it now matches \
                 buildah: delete the entry"
                    .to_string(),
            ])
        } else {
            Outcome::KnownFailure
        };
    }
    if problems.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed(problems)
    }
}

#[test]
fn kaniko_integration_dockerfiles_match_buildah() {
    if !kiln_testkit::require_tools(&["buildah", "skopeo", "umoci", "podman"]) {
        return;
    }
    let Some(module) = kiln_testkit::kaniko::integration_dir() else {
        return;
    };
    // A private copy: another test may rebuild the peer directory meanwhile.
    let snapshot = tempfile::tempdir().unwrap();
    let integration = snapshot.path().join("integration");
    run_ok(
        Command::new("cp").arg("-a").arg(&module).arg(&integration),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("cannot copy {}: {e}", module.display()));
    let reg = registry();
    let lists = Lists::read();
    let names = dockerfiles(&integration.join("dockerfiles"));
    let mut failures = lists.stale(&names);

    progress(&format!(
        "kaniko Dockerfiles: {} in kaniko v1.24.0's integration/dockerfiles",
        names.len()
    ));
    let mut ledger = Ledger::default();
    let (mut passed, mut run_checked, mut known) = (0, 0, 0);
    let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in &names {
        let start = Instant::now();
        let outcome = check(name, &integration, &lists, &reg, &mut ledger);
        let secs = start.elapsed().as_secs_f32();
        match outcome {
            Outcome::Passed => {
                passed += 1;
                progress(&format!("  ok     {name} ({secs:.1}s)"));
            }
            Outcome::RunChecked => {
                run_checked += 1;
                progress(&format!(
                    "  ok-run {name} ({secs:.1}s, differs; run check passed)"
                ));
            }
            Outcome::KnownFailure => {
                known += 1;
                progress(&format!(
                    "  known  {name} ({secs:.1}s): {}",
                    lists.known_failures[name]
                ));
            }
            Outcome::Skipped(why) => {
                skipped.entry(why).or_default().push(name.clone());
            }
            Outcome::Failed(problems) => {
                progress(&format!("  FAIL   {name} ({secs:.1}s)"));
                failures.push(format!("=== {name}\n{}", problems.join("\n")));
            }
        }
    }
    let ran: Vec<String> = names.iter().cloned().collect();
    for t in ledger.stale(TOLERATED, &ran, true) {
        failures.push(format!(
            "tolerance {} hid nothing: delete it ({})",
            t.name, t.why
        ));
    }
    let skip_count: usize = skipped.values().map(Vec::len).sum();
    let failed = names.len() - passed - run_checked - known - skip_count;
    let mut summary = format!(
        "kaniko Dockerfiles: {passed} passed, {run_checked} passed by a run check (listed \
         differences), {known} known failures, {skip_count} skipped, {failed} failed\nskipped:\n"
    );
    for (why, which) in &skipped {
        summary.push_str(&format!("  {} x {why}: {}\n", which.len(), which.join(" ")));
    }
    progress(&summary);
    let compared = passed + run_checked;
    if compared < MIN_COMPARED {
        failures.push(format!(
            "only {compared} Dockerfiles were built and compared; the test requires at least \
             {MIN_COMPARED}"
        ));
    }
    assert!(failures.is_empty(), "{}\n{summary}", failures.join("\n"));
}
