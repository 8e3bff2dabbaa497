//! Kiln's Dockerfile parser against BuildKit's, the parser Docker builds with. Kiln's own golden
//! files (`golden.rs`) were written from Kiln's output, so they catch changes, not wrong
//! behaviour; these tests bring an independent source:
//!
//! - `buildkit_parser_testfiles`: BuildKit's parser test cases (`frontend/dockerfile/parser/
//!   testfiles/*/{Dockerfile,result}` and `testfiles-negative/*/Dockerfile`, which must be
//!   rejected, and `testfile-line/Dockerfile` of its line-number test), downloaded from the Go
//!   module proxy at test time, never copied here. Kiln's parse of each Dockerfile, put in
//!   BuildKit's dump format, must equal BuildKit's `result` (and the lines, exec forms and
//!   heredocs BuildKit's parser records); a difference must be listed, with its reason, in
//!   `testdata/buildkit-testfiles.allow`.
//! - `golden_files_are_confirmed_by_buildkit`: BuildKit's parser itself (built from the same
//!   module by `scripts/buildkit-parse.sh`) runs over every golden Dockerfile of
//!   `testdata/dockerfile/`; a golden file it does not confirm (a different parse, or a different
//!   verdict on a rejected file) must be listed, with its reason, in `testdata/unconfirmed.txt`.
//!
//! Both fail on an unlisted difference, on a listed case that now agrees or no longer exists,
//! and when no case was compared. What is set aside as a difference of representation, not of
//! meaning, is named in `buildkit/normalise.rs`. Without Go (and no earlier build in
//! /var/cache/kiln/peers) they fail under `CI=true` and are skipped loudly elsewhere.

mod buildkit;
mod cases;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use buildkit::compare::{compare, Agreement};
use buildkit::{case_dirs, normalise, peer, read_list, BuildKit, BUILDKIT_VERSION};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn read_text(path: &Path) -> Result<String, String> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8(bytes).map_err(|_| "the Dockerfile is not UTF-8 text".to_string())
}

/// Checks the outcomes against a committed list of known differences: every difference listed,
/// every listed case still differing. Returns the failures.
fn check_list(
    list_path: &Path,
    outcomes: &BTreeMap<String, Result<Agreement, String>>,
    what: &str,
) -> Vec<String> {
    let listed = read_list(list_path);
    let mut failures = Vec::new();
    for (case, outcome) in outcomes {
        match (outcome, listed.get(case)) {
            (Err(report), None) => failures.push(format!(
                "{case}: {what}, and it is not listed in {}:\n{report}",
                list_path.display()
            )),
            (Ok(_), Some(reason)) => failures.push(format!(
                "{case}: listed in {} ({reason}) but Kiln and BuildKit now agree: remove the entry",
                list_path.display()
            )),
            _ => {}
        }
    }
    for case in listed.keys() {
        if !outcomes.contains_key(case) {
            failures.push(format!(
                "{case}: listed in {} but there is no such case: remove the entry",
                list_path.display()
            ));
        }
    }
    failures
}

fn rules_legend() -> String {
    let rules: Vec<String> = normalise::RULES
        .iter()
        .map(|(name, why)| format!("  {name}: {why}"))
        .collect();
    format!(
        "normalisations applied before comparing:\n{}",
        rules.join("\n")
    )
}

fn summary(line: &str) {
    // Straight to stderr: the harness would show eprintln! output only for a failing test.
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn buildkit_parser_testfiles() {
    let Some(peer) = peer() else { return };
    let mut outcomes: BTreeMap<String, Result<Agreement, String>> = BTreeMap::new();
    let mut harness = Vec::new();

    let cases = case_dirs(&peer.testfiles("testfiles"));
    let answers = peer.parse(
        &cases
            .iter()
            .map(|c| c.join("Dockerfile"))
            .collect::<Vec<_>>(),
    );
    for (case, bk) in cases.iter().zip(&answers) {
        let name = format!("testfiles/{}", case.file_name().unwrap().to_string_lossy());
        // The helper must be BuildKit's parser: its dump is BuildKit's own expected result.
        let result = fs::read_to_string(case.join("result")).unwrap_or_default();
        if bk.parse_error.is_some() || format!("{}\n", bk.dump) != result {
            harness.push(format!(
                "{name}: buildkit-parse's dump differs from BuildKit's own `result` file \
                 (error {:?}):\n{}\n--- result\n{result}",
                bk.parse_error, bk.dump
            ));
            continue;
        }
        let outcome = read_text(&case.join("Dockerfile")).and_then(|text| compare(&text, bk));
        outcomes.insert(name, outcome);
    }

    // The file of BuildKit's line-number test: no `result`, but BuildKit's lines are compared.
    let line_case = peer.testfiles("testfile-line");
    let bk = peer.parse(&[line_case.join("Dockerfile")]).remove(0);
    let outcome = read_text(&line_case.join("Dockerfile")).and_then(|text| compare(&text, &bk));
    outcomes.insert("testfile-line".to_string(), outcome);

    let negative = case_dirs(&peer.testfiles("testfiles-negative"));
    let answers = peer.parse(
        &negative
            .iter()
            .map(|c| c.join("Dockerfile"))
            .collect::<Vec<_>>(),
    );
    for (case, bk) in negative.iter().zip(&answers) {
        let name = format!(
            "testfiles-negative/{}",
            case.file_name().unwrap().to_string_lossy()
        );
        if bk.parse_error.is_none() {
            harness.push(format!(
                "{name}: BuildKit's parser accepts a file of its own negative tests"
            ));
            continue;
        }
        let outcome = read_text(&case.join("Dockerfile")).and_then(|text| {
            match kiln_dockerfile::parse(&text) {
                Err(_) => Ok(Agreement::BothReject {
                    instructions: 0,
                    same: 0,
                }),
                Ok(df) => Err(format!(
                    "Kiln accepts it ({} stage(s)); BuildKit's parser rejects it: {}",
                    df.stages.len(),
                    bk.parse_error.as_deref().unwrap_or_default()
                )),
            }
        });
        outcomes.insert(name, outcome);
    }
    assert!(harness.is_empty(), "{}", harness.join("\n\n"));
    kiln_testkit::require_cases(
        "BuildKit parser testfiles",
        outcomes.len(),
        "the downloaded module",
    );

    let list = testdata().join("buildkit-testfiles.allow");
    let failures = check_list(&list, &outcomes, "Kiln and BuildKit disagree");
    let count =
        |f: fn(&Result<Agreement, String>) -> bool| outcomes.values().filter(|o| f(o)).count();
    let both_reject: Vec<String> = outcomes
        .iter()
        .filter_map(|(case, o)| match o {
            Ok(Agreement::BothReject { instructions, same }) => Some(format!(
                "{case} ({instructions} instructions agree, {same} of them parsed the same)"
            )),
            _ => None,
        })
        .collect();
    summary(&format!(
        "BuildKit {BUILDKIT_VERSION} parser testfiles: {} compared, {} the same parse, {} rejected by both, {} differences (listed or not)\n  rejected by both: {}",
        outcomes.len(),
        count(|o| matches!(o, Ok(Agreement::Same { .. }))),
        count(|o| matches!(o, Ok(Agreement::BothReject { .. }))),
        count(Result::is_err),
        both_reject.join(", ")
    ));
    assert!(
        failures.is_empty(),
        "{}\n\n{}",
        failures.join("\n\n"),
        rules_legend()
    );
}

#[test]
fn golden_files_are_confirmed_by_buildkit() {
    let Some(peer) = peer() else { return };
    let root = testdata().join("dockerfile");
    let mut cases: Vec<(String, PathBuf, bool)> = case_dirs(&root)
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                p,
                true,
            )
        })
        .collect();
    cases.extend(case_dirs(&root.join("reject")).into_iter().map(|p| {
        let name = format!("reject/{}", p.file_name().unwrap().to_string_lossy());
        (name, p, false)
    }));
    kiln_testkit::require_cases("golden files", cases.len(), "testdata/dockerfile");
    let answers: Vec<BuildKit> = peer.parse(
        &cases
            .iter()
            .map(|c| c.1.join("Dockerfile"))
            .collect::<Vec<_>>(),
    );

    let mut outcomes = BTreeMap::new();
    let mut stale = Vec::new();
    for ((name, dir, accepted), bk) in cases.iter().zip(&answers) {
        let text = read_text(&dir.join("Dockerfile")).unwrap_or_else(|e| panic!("{name}: {e}"));
        // What is confirmed is the golden file: it must still be Kiln's answer (golden.rs
        // checks the same; a stale golden file would otherwise be confirmed by proxy).
        let kiln = kiln_dockerfile::parse(&text);
        if *accepted {
            let expected = fs::read_to_string(dir.join("expected")).unwrap_or_default();
            let rendered = kiln
                .as_ref()
                .map(|df| serde_json::to_string_pretty(df).expect("serialize AST") + "\n");
            if rendered.as_deref().ok() != Some(expected.as_str()) {
                stale.push(format!(
                    "{name}: `expected` is not Kiln's parse (run golden.rs)"
                ));
            }
        } else {
            let error = fs::read_to_string(dir.join("error")).unwrap_or_default();
            let message = kiln.as_ref().err().map(ToString::to_string);
            if !message.is_some_and(|m| !error.trim().is_empty() && m.contains(error.trim())) {
                stale.push(format!(
                    "{name}: `error` is not Kiln's error (run golden.rs)"
                ));
            }
        }
        let outcome = match compare(&text, bk) {
            Ok(Agreement::Same { .. }) if !accepted => {
                Err("Kiln's golden file rejects it; BuildKit parses it the same way".to_string())
            }
            other => other,
        };
        outcomes.insert(name.clone(), outcome);
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));

    let list = testdata().join("unconfirmed.txt");
    let failures = check_list(
        &list,
        &outcomes,
        "BuildKit does not confirm this golden file",
    );
    let confirmed = outcomes.values().filter(|o| o.is_ok()).count();
    summary(&format!(
        "golden files: {} checked against BuildKit {BUILDKIT_VERSION}'s parser, {confirmed} confirmed, {} unconfirmed",
        outcomes.len(),
        outcomes.len() - confirmed
    ));
    assert!(
        failures.is_empty(),
        "{}\n\n{}",
        failures.join("\n\n"),
        rules_legend()
    );
}
