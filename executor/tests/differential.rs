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
#[path = "differential/harness.rs"]
mod harness;
#[path = "differential/rules.rs"]
mod rules;

use std::time::Instant;

use allowlist::Ledger;
use harness::{compare, kiln_build, progress, Buildah, Side};
use kiln_testkit::registry_digest;
use std::path::Path;
use support::{corpus_cases, podman_check, registry, Case};

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

fn selftest() -> bool {
    std::env::var("KILN_DIFF_SELFTEST").is_ok_and(|v| v == "1")
}

/// Whether this runs in CI (`CI=true`, as CI services set it).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
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
