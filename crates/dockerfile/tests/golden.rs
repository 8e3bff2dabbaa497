//! Golden tests for the Dockerfile parser; they only read files under this crate's
//! `testdata/dockerfile/`.
//!
//! - `testdata/dockerfile/<case>/Dockerfile` must parse, and its AST rendered with
//!   `serde_json::to_string_pretty` must equal `<case>/expected`.
//! - `testdata/dockerfile/reject/<case>/Dockerfile` must fail to parse, and the error's
//!   `line N: message` text must contain `<case>/error` (trimmed).
//!
//! Run with `KILN_UPDATE_GOLDEN=1` to (re)write every `expected` file and missing `error` files
//! from the current parser; then review each changed file by eye before committing, since a
//! golden file that records a bug is worse than none. These files record what Kiln's parser
//! says; `buildkit_conformance.rs` checks each of them against BuildKit's own parser, and a new
//! case must be confirmed there or listed in `testdata/unconfirmed.txt` with its reason.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_dockerfile::parse;

mod cases;
use cases::case_dirs;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/dockerfile")
}

fn update() -> bool {
    std::env::var_os("KILN_UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

#[test]
fn accepted_dockerfiles_match_golden_ast() {
    let cases = case_dirs(&root());
    assert!(
        cases.len() >= 40,
        "expected at least 40 golden cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let text = fs::read_to_string(case.join("Dockerfile")).expect("read Dockerfile");
        let rendered = match parse(&text) {
            Ok(df) => serde_json::to_string_pretty(&df).expect("serialize AST") + "\n",
            Err(e) => {
                failures.push(format!("{}: unexpected parse error: {e}", case.display()));
                continue;
            }
        };
        let expected_path = case.join("expected");
        if update() {
            fs::write(&expected_path, &rendered).expect("write expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != rendered {
            failures.push(format!(
                "{}: AST differs from `expected`\n--- expected\n{expected}\n--- got\n{rendered}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn rejected_dockerfiles_fail_with_expected_error() {
    let cases = case_dirs(&root().join("reject"));
    assert!(
        cases.len() >= 12,
        "expected at least 12 reject cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let text = fs::read_to_string(case.join("Dockerfile")).expect("read Dockerfile");
        let message = match parse(&text) {
            Ok(df) => {
                failures.push(format!(
                    "{}: parsed but should fail: {df:?}",
                    case.display()
                ));
                continue;
            }
            Err(e) => e.to_string(),
        };
        let error_path = case.join("error");
        if update() && !error_path.exists() {
            fs::write(&error_path, format!("{message}\n")).expect("write error");
            continue;
        }
        let expected = fs::read_to_string(&error_path).unwrap_or_default();
        let expected = expected.trim();
        if expected.is_empty() || !message.contains(expected) {
            failures.push(format!(
                "{}: error `{message}` does not contain `{expected}`",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
