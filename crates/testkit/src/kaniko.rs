//! kaniko's flags and environment variables, read from kaniko's own source at test time
//! (`scripts/kaniko-flags.sh` builds `scripts/kaniko-flags/main.go`, which parses kaniko v1.24's
//! `cmd/*/cmd/root.go` with go/parser), and the README's classification table of them: the
//! two sides of the flag-parity tests of kiln-executor and kiln-warmer. The table in README.md
//! is the one list; these checks fail for a kaniko flag or variable without a row, for a flag a
//! program's parser refuses, and for a "same" row that names no existing test.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::{repo_root, run_bounded, skip_or_fail, tail};

/// How long building the lister may take (first run: the module download).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// One flag definition of kaniko's.
#[derive(Debug, Clone)]
pub struct KanikoFlag {
    pub long: String,
    /// One letter, or empty.
    pub short: String,
    /// `string`, `bool`, `int`, `duration` or `value` (a `pflag.Value`).
    pub kind: String,
    /// The Go type of a `value` flag's target (`multiArg`, `keyValueArg`, …), else `kind`.
    pub go_type: String,
    /// The default as written in kaniko's source (a literal, or a Go name).
    pub default: String,
    pub deprecated: bool,
    pub hidden: bool,
}

/// What kaniko's source defines.
#[derive(Debug)]
pub struct Kaniko {
    /// Per program (`executor`, `warmer`).
    pub programs: Vec<(String, Vec<KanikoFlag>)>,
    /// Environment variables kaniko's cmd/ and pkg/ code reads.
    pub env: Vec<String>,
    /// Whether kaniko sets a pflag normalisation function (it does not in v1.24).
    pub normalize_func: bool,
}

impl Kaniko {
    pub fn flags(&self, program: &str) -> &[KanikoFlag] {
        self.programs
            .iter()
            .find(|(p, _)| p == program)
            .map(|(_, f)| f.as_slice())
            .unwrap_or_else(|| panic!("kaniko-flags printed no `{program}`"))
    }
}

/// The directory `scripts/kaniko-flags.sh` fills from kaniko's module (the lister, `kaniko-src/`,
/// `kaniko-integration/`), built once per test binary; `Err` when Go or the module proxy is
/// missing and nothing was built before (the caller applies the skip policy).
fn peer_dir() -> Result<&'static PathBuf, &'static String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("scripts/kaniko-flags.sh");
        let out = run_bounded(Command::new("bash").arg(&script), BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        match out.status {
            Some(0) => Ok(PathBuf::from(out.stdout.trim())),
            Some(3) => Err(format!(
                "kaniko's module cannot be had here ({}): {}",
                script.display(),
                out.stderr.trim()
            )),
            _ => panic!(
                "{} failed ({:?}):\n{}",
                script.display(),
                out.status,
                tail(&out.stderr, 4000)
            ),
        }
    })
    .as_ref()
}

/// kaniko's `integration/` directory (its integration Dockerfiles and their build context), from
/// the module at the pinned version; `None` (after the policy's skip, or a failure under
/// `CI=true`) when Go or the module proxy is missing and nothing was fetched before.
pub fn integration_dir() -> Option<PathBuf> {
    match peer_dir() {
        Ok(dir) => Some(dir.join("kaniko-integration")),
        Err(why) => {
            skip_or_fail(why);
            None
        }
    }
}

/// kaniko's flags and variables, from its source; `None` (after the policy's skip, or a failure
/// under `CI=true`) when Go or the module proxy is missing and nothing was built before.
pub fn kaniko() -> Option<&'static Kaniko> {
    static KANIKO: OnceLock<Result<Kaniko, String>> = OnceLock::new();
    let read = KANIKO.get_or_init(|| {
        let dir = peer_dir().map_err(Clone::clone)?;
        let listed = run_bounded(
            Command::new(dir.join("kaniko-flags")).arg(dir.join("kaniko-src")),
            crate::TOOL_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("running kaniko-flags: {e}"));
        assert!(
            listed.success(),
            "kaniko-flags failed: {}",
            tail(&listed.stderr, 2000)
        );
        Ok(parse_listing(&listed.stdout))
    });
    match read {
        Ok(k) => Some(k),
        Err(why) => {
            skip_or_fail(why);
            None
        }
    }
}

fn parse_listing(json: &str) -> Kaniko {
    let v: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("kaniko-flags printed bad JSON: {e}"));
    let text = |f: &Value, k: &str| f[k].as_str().unwrap_or_default().to_string();
    let programs = v["programs"]
        .as_object()
        .expect("programs")
        .iter()
        .map(|(program, flags)| {
            let flags = flags
                .as_array()
                .expect("flags")
                .iter()
                .map(|f| KanikoFlag {
                    long: text(f, "long"),
                    short: text(f, "short"),
                    kind: text(f, "kind"),
                    go_type: text(f, "go_type"),
                    default: text(f, "default"),
                    deprecated: f["deprecated"].as_bool().unwrap_or(false),
                    hidden: f["hidden"].as_bool().unwrap_or(false),
                })
                .collect();
            (program.clone(), flags)
        })
        .collect();
    let env = v["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| text(e, "name"))
        .collect();
    Kaniko {
        programs,
        env,
        normalize_func: v["normalize_func"].as_bool().unwrap_or(true),
    }
}

/// A row of the README's table "kaniko flags and variables".
#[derive(Debug, Clone)]
pub struct Row {
    /// The backquoted names of the first cell: `--flag`, `-f`, `VARIABLE`.
    pub names: Vec<String>,
    /// `executor` or `warmer` when the first cell says so, else both.
    pub program: Option<String>,
    /// `same`, `different by design` or `refused`.
    pub class: String,
    pub note: String,
}

impl Row {
    fn applies_to(&self, program: &str) -> bool {
        self.program.as_deref().is_none_or(|p| p == program)
    }
}

/// The classes a row may have.
pub const CLASSES: &[&str] = &["same", "different by design", "refused"];

/// The README's table: the rows between the heading `### kaniko flags and variables` and the
/// next heading.
pub fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n### kaniko flags and variables")
        .nth(1)
        .expect("README.md has a section `### kaniko flags and variables`");
    let section = section.split("\n#").next().unwrap_or(section);
    let rows: Vec<Row> = section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|--") && !l.starts_with("| flag"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert!(
                cells.len() >= 3,
                "README table row with fewer than 3 cells: {l}"
            );
            let names = cells[0]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            let program = ["executor", "warmer"]
                .into_iter()
                .find(|p| cells[0].contains(&format!("({p})")))
                .map(str::to_string);
            Row {
                names,
                program,
                class: cells[1].to_string(),
                note: cells[2..].join("|"),
            }
        })
        .collect();
    assert!(!rows.is_empty(), "the README's kaniko table has no rows");
    rows
}

/// The row that classifies `name` for `program`.
pub fn row_for<'a>(rows: &'a [Row], program: &str, name: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.applies_to(program) && r.names.iter().any(|n| n == name))
}

/// Checks one kaniko program against Kiln's parser and the README: every flag (long and
/// shorthand) parses with a valid value (`parse` gets the arguments after the program name and
/// returns the parser's error), and has a row with a known class; a "same" row names a test
/// (`test: \`name\``) that exists in the repository. Panics with every problem found.
pub fn check_program(program: &str, parse: impl Fn(&[String]) -> Result<(), String>) {
    let Some(kaniko) = kaniko() else { return };
    assert!(
        !kaniko.normalize_func,
        "kaniko sets a pflag normalisation function now: Kiln's parsers must apply it"
    );
    let rows = readme_rows();
    let mut problems = Vec::new();
    for flag in kaniko.flags(program) {
        let long = format!("--{}", flag.long);
        let value = match sample_value(flag) {
            Ok(v) => v,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        // pflag: a boolean takes its value only after `=` (`--flag true` is the flag and an
        // argument); other flags take it after `=` or as the next argument.
        let short = format!("-{}", flag.short);
        let mut spellings = vec![vec![format!("{long}={value}")]];
        if flag.kind == "bool" {
            spellings.push(vec![long.clone()]);
            if !flag.short.is_empty() {
                spellings.push(vec![short.clone()]);
            }
        } else {
            spellings.push(vec![long.clone(), value.clone()]);
            if !flag.short.is_empty() {
                spellings.push(vec![short.clone(), value.clone()]);
            }
        }
        for args in spellings {
            if let Err(e) = parse(&args) {
                problems.push(format!(
                    "kiln-{program} refuses kaniko's `{}`: {}",
                    args.join(" "),
                    e.lines().next().unwrap_or("")
                ));
            }
        }
        match row_for(&rows, program, &long) {
            None => problems.push(format!(
                "kaniko {program} flag {long} has no row in README.md's kaniko table"
            )),
            Some(row) => {
                if !flag.short.is_empty() && !row.names.contains(&format!("-{}", flag.short)) {
                    problems.push(format!(
                        "README row of {long} ({program}) does not name its shorthand -{}",
                        flag.short
                    ));
                }
                problems.extend(check_row(row, &long));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Checks that every environment variable kaniko reads has a row with a known class.
pub fn check_env() {
    let Some(kaniko) = kaniko() else { return };
    let rows = readme_rows();
    let mut problems = Vec::new();
    for name in &kaniko.env {
        match rows.iter().find(|r| r.names.iter().any(|n| n == name)) {
            None => problems.push(format!(
                "kaniko reads ${name}, which has no row in README.md's kaniko table"
            )),
            Some(row) => problems.extend(check_row(row, name)),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn check_row(row: &Row, name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !CLASSES.contains(&row.class.as_str()) {
        problems.push(format!(
            "README row of {name}: class `{}` is none of {CLASSES:?}",
            row.class
        ));
    }
    if row.note.trim().is_empty() {
        problems.push(format!("README row of {name} has no note"));
    }
    if row.class == "same" {
        match named_test(&row.note) {
            None => problems.push(format!(
                "README row of {name} is `same` but names no test (`test: \\`name\\``)"
            )),
            Some(test) if !test_exists(&test) => problems.push(format!(
                "README row of {name} names test `{test}`, which no .rs file defines"
            )),
            Some(_) => {}
        }
    }
    problems
}

/// The test a note names: the backquoted word after `test: `, last path segment.
fn named_test(note: &str) -> Option<String> {
    let after = note.split("test: `").nth(1)?;
    let name = after.split('`').next()?;
    Some(name.rsplit("::").next().unwrap_or(name).to_string())
}

/// Whether some .rs file under the repository defines `fn name(`.
fn test_exists(name: &str) -> bool {
    static SOURCES: OnceLock<String> = OnceLock::new();
    let sources = SOURCES.get_or_init(|| {
        let mut all = String::new();
        for dir in ["executor", "warmer", "crates", "operator", "e2e"] {
            collect_rs(&repo_root().join(dir), &mut all);
        }
        all
    });
    sources.contains(&format!("fn {name}("))
}

fn collect_rs(dir: &std::path::Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                collect_rs(&path, out);
            }
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}

/// A value kaniko would accept for `flag`: its default when that is a literal of the right
/// kind, else a sample of its type. An unknown `pflag.Value` type is an error to fix here.
fn sample_value(flag: &KanikoFlag) -> Result<String, String> {
    let literal =
        !flag.default.is_empty() && !flag.default.contains('.') && !flag.default.contains('*');
    Ok(match flag.go_type.as_str() {
        "bool" => "true".into(),
        "int" if flag.default.parse::<i64>().is_ok() => flag.default.clone(),
        "int" => "1".into(),
        "duration" => "336h".into(),
        "string" if literal => flag.default.clone(),
        "string" if flag.long.to_lowercase().contains("platform") => "linux/amd64".into(),
        "string" if flag.long.to_lowercase().contains("snapshot") => "redo".into(),
        "string" => "/x".into(),
        "multiArg" => "x".into(),
        // kaniko's one keyValueArg whose value is a pair (its help text's own example).
        "keyValueArg" if flag.long == "registry-client-cert" => {
            "registry.example=/etc/kiln/client.pem,/etc/kiln/client.key".into()
        }
        "keyValueArg" => "registry.example=/etc/kiln/registry.pem".into(),
        "multiKeyMultiValueArg" => "registry.example=mirror.example".into(),
        "Compression" => "zstd".into(),
        "KanikoGitOptions" => "branch=main".into(),
        other => {
            return Err(format!(
            "kaniko flag --{} has a value type `{other}` this test has no sample for: add one in \
                 crates/testkit/src/kaniko.rs",
            flag.long
        ))
        }
    })
}
