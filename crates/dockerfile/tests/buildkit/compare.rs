//! The verdict on one Dockerfile: does Kiln's parser agree with BuildKit's? Both accept it and
//! parse it the same (after [`super::normalise`]), or both reject it (and agree instruction by
//! instruction on what they can parse), or they disagree, with a report that shows both sides
//! in BuildKit's dump format. It must not decide what counts as known (that is the test's
//! committed lists).

use std::fmt::Write as _;

use kiln_dockerfile::{parse, parse_instruction, Dockerfile};

use super::normalise::{self, ERROR_LINE, FRAGMENTS, NO_STAGE_IS_REJECTED};
use super::render::{self, Inst};
use super::BuildKit;

/// How the two parsers agree on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// Both accept it and parse `instructions` instructions the same.
    Same { instructions: usize },
    /// Both reject it; its `instructions` instructions were compared one by one and agree:
    /// `same` of them parsed the same by both, the others rejected by both.
    BothReject { instructions: usize, same: usize },
}

/// Compares Kiln's parse of `text` with BuildKit's answer for the same file; `Err` is the
/// report of every difference.
pub fn compare(text: &str, bk: &BuildKit) -> Result<Agreement, String> {
    let kiln = parse(text);
    let bk_verdict = if let Some(e) = &bk.parse_error {
        Err(format!("its parser: {e}"))
    } else if let Some(e) = &bk.instructions_error {
        Err(format!("its instruction layer: {e}"))
    } else if bk.stages.is_empty() {
        Err(format!("no build stage ({NO_STAGE_IS_REJECTED})"))
    } else {
        Ok(())
    };
    match (kiln, bk_verdict) {
        (Ok(df), Ok(())) => {
            let diffs = whole_file(&df, bk);
            if diffs.is_empty() {
                Ok(Agreement::Same {
                    instructions: bk.nodes.len(),
                })
            } else {
                Err(diffs.join("\n"))
            }
        }
        (Err(kiln_error), Err(bk_error)) => {
            let (compared, same, mut diffs) = fragments(text, bk);
            if let Some(line) = bk.instructions_error_line {
                if line != kiln_error.line {
                    diffs.push(format!(
                        "rejected at different lines ({ERROR_LINE}): Kiln line {}, BuildKit line {line}",
                        kiln_error.line
                    ));
                }
            }
            if diffs.is_empty() {
                Ok(Agreement::BothReject {
                    instructions: compared,
                    same,
                })
            } else {
                Err(format!(
                    "both reject the file (Kiln: {kiln_error}; BuildKit: {bk_error}), but not \
                     alike ({FRAGMENTS}, {ERROR_LINE}):\n{}",
                    diffs.join("\n")
                ))
            }
        }
        (Ok(_), Err(bk_error)) => {
            let (_, _, diffs) = fragments(text, bk);
            Err(format!(
                "Kiln accepts the file; BuildKit rejects it: {bk_error}{}",
                fragment_details(&diffs)
            ))
        }
        (Err(kiln_error), Ok(())) => {
            let (_, _, diffs) = fragments(text, bk);
            Err(format!(
                "Kiln rejects the file ({kiln_error}); BuildKit accepts it{}",
                fragment_details(&diffs)
            ))
        }
    }
}

fn fragment_details(diffs: &[String]) -> String {
    if diffs.is_empty() {
        String::new()
    } else {
        format!(
            "\ninstruction by instruction ({FRAGMENTS}):\n{}",
            diffs.join("\n")
        )
    }
}

/// Shows an instruction the way `Dump()` does, with what the dump leaves out.
fn shown(i: &Inst) -> String {
    let mut s = format!("({})", i.node);
    if let Some(j) = i.json {
        let _ = write!(s, " json={j}");
    }
    for h in &i.heredocs {
        let _ = write!(
            s,
            " heredoc[{} fd={} expand={} body={}]",
            h.name,
            h.fd,
            h.expand,
            super::dump::go_quote(&h.content)
        );
    }
    s
}

/// The differences between two instructions after the pair rules; empty when they agree.
fn differ(where_: &str, mut kiln: Inst, mut bk: Inst) -> Option<String> {
    normalise::pair(&mut kiln, &mut bk);
    if kiln == bk {
        return None;
    }
    let line = |i: &Inst| i.line.map_or("-".to_string(), |l| l.to_string());
    Some(format!(
        "{where_}:\n    Kiln     (line {}) {}\n    BuildKit (line {}) {}",
        line(&kiln),
        shown(&kiln),
        line(&bk),
        shown(&bk)
    ))
}

fn whole_file(df: &Dockerfile, bk: &BuildKit) -> Vec<String> {
    let mut diffs = Vec::new();
    if df.escape.to_string() != bk.escape {
        diffs.push(format!(
            "escape character: Kiln `{}`, BuildKit `{}`",
            df.escape, bk.escape
        ));
    }
    if df.syntax != bk.syntax {
        diffs.push(format!(
            "syntax directive: Kiln {:?}, BuildKit {:?}",
            df.syntax, bk.syntax
        ));
    }
    let kiln = render::dockerfile(df);
    let mut theirs = Vec::new();
    for n in &bk.nodes {
        match normalise::buildkit(n) {
            Ok(i) => theirs.push(i),
            Err(e) => diffs.push(format!("BuildKit's dump of line {}: {e}", n.line)),
        }
    }
    let theirs = normalise::group_meta_args(theirs);
    for (i, pair) in kiln.iter().zip(theirs.iter()).enumerate() {
        if let Some(d) = differ(
            &format!("instruction {}", i + 1),
            pair.0.clone(),
            pair.1.clone(),
        ) {
            diffs.push(d);
        }
    }
    for extra in kiln.iter().skip(theirs.len()) {
        diffs.push(format!("only Kiln has {}", shown(extra)));
    }
    for extra in theirs.iter().skip(kiln.len()) {
        diffs.push(format!("only BuildKit has {}", shown(extra)));
    }
    // What BuildKit's instruction layer made of the stages and meta ARGs.
    let kiln_stages: Vec<(String, String, String, usize)> = df
        .stages
        .iter()
        .map(|s| {
            (
                s.name.clone().unwrap_or_default(),
                s.base.clone(),
                s.platform.clone().unwrap_or_default(),
                s.line,
            )
        })
        .collect();
    let bk_stages: Vec<(String, String, String, usize)> = bk
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.base.clone(), s.platform.clone(), s.line))
        .collect();
    if kiln_stages != bk_stages {
        diffs.push(format!(
            "stages (name, base, platform, line): Kiln {kiln_stages:?}, BuildKit {bk_stages:?}"
        ));
    }
    let kiln_meta: Vec<(String, Option<String>)> = df
        .meta_args
        .iter()
        .map(|a| (a.name.clone(), a.default.clone()))
        .collect();
    let bk_meta: Vec<(String, Option<String>)> = bk
        .meta_args
        .iter()
        .map(|a| (a.name.clone(), a.default.clone()))
        .collect();
    if kiln_meta != bk_meta {
        diffs.push(format!(
            "meta ARGs (name, default): Kiln {kiln_meta:?}, BuildKit {bk_meta:?}"
        ));
    }
    diffs
}

/// Each instruction BuildKit's parser found, parsed by Kiln on its own (FRAGMENTS): how many
/// were compared, how many of them both parsed the same, and the differences.
fn fragments(text: &str, bk: &BuildKit) -> (usize, usize, Vec<String>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let escape = bk.escape.chars().next().unwrap_or('\\');
    let mut diffs = Vec::new();
    let mut same = 0;
    for n in &bk.nodes {
        let (start, end) = (n.line.max(1), n.end_line.min(lines.len()));
        let fragment = lines.get(start - 1..end).unwrap_or_default().join("\n");
        let is_from = fragment
            .split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("FROM"));
        let kiln = if is_from {
            // A FROM is not an instruction inside a stage: parse it as a one-stage file, padded
            // so that its line number stays the same.
            let mut padded = String::new();
            let mut pad = start - 1;
            if escape != '\\' {
                padded.push_str("# escape=`\n");
                pad = pad.saturating_sub(1);
            }
            padded.push_str(&"\n".repeat(pad));
            padded.push_str(&fragment);
            parse(&padded)
                .map_err(|e| e.to_string())
                .map(|df| render::from(&df.stages[0]))
        } else {
            parse_instruction(&fragment, start, escape)
                .map_err(|e| e.to_string())
                .map(|l| render::located(&l, escape))
        };
        let where_ = format!("line {start} `{}`", fragment.replace('\n', "\\n"));
        match (kiln, &n.instruction_error) {
            (Ok(kiln), None) => match normalise::buildkit(n) {
                Ok(theirs) => match differ(&where_, kiln, theirs) {
                    Some(d) => diffs.push(d),
                    None => same += 1,
                },
                Err(e) => diffs.push(format!("{where_}: BuildKit's dump: {e}")),
            },
            (Err(_), Some(_)) => {}
            (Ok(kiln), Some(e)) => diffs.push(format!(
                "{where_}:\n    Kiln accepts it as {}\n    BuildKit rejects it: {e}",
                shown(&kiln)
            )),
            (Err(e), None) => diffs.push(format!(
                "{where_}:\n    Kiln rejects it: {e}\n    BuildKit accepts it as ({})",
                n.dump
            )),
        }
    }
    (bk.nodes.len(), same, diffs)
}
