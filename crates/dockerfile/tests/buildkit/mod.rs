//! The independent side of the parser conformance tests: BuildKit's own Dockerfile parser,
//! built by `scripts/buildkit-parse.sh` from the Go module proxy (pinned and hash-checked by
//! `scripts/buildkit-parse/go.{mod,sum}`), and BuildKit's parser test files that script lays
//! beside it. This module runs them and reads their answers; how Kiln's parse is put in the
//! same terms is [`render`], what is set aside as a mere difference of representation is
//! [`normalise`], and the verdict on one Dockerfile is [`compare`]. Nothing here is copied from
//! BuildKit into the repository.

pub mod compare;
pub mod dump;
pub mod normalise;
pub mod render;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

/// The BuildKit release compared against: the one `scripts/buildkit-parse/go.mod` requires (the
/// test checks the two agree), with its module hash in `go.sum`.
pub const BUILDKIT_VERSION: &str = "v0.34.2";

/// A build from a cold module cache on two loaded cores takes a few minutes; a hang must still
/// fail the test.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

pub fn repo_root() -> PathBuf {
    kiln_testkit::repo_root()
}

/// Where the built parser and BuildKit's test files are.
pub struct Peer {
    pub dir: PathBuf,
}

impl Peer {
    /// `testfiles`, `testfiles-negative` or `testfile-line` (a Dockerfile whose line numbers
    /// BuildKit's parser_test.go checks).
    pub fn testfiles(&self, set: &str) -> PathBuf {
        self.dir.join(set)
    }

    /// BuildKit's parser run over each file (one run for all of them).
    pub fn parse(&self, files: &[PathBuf]) -> Vec<BuildKit> {
        if files.is_empty() {
            return Vec::new();
        }
        let mut cmd = Command::new(self.dir.join("buildkit-parse"));
        cmd.args(files);
        let out = kiln_testkit::run_bounded(&mut cmd, kiln_testkit::TOOL_TIMEOUT)
            .unwrap_or_else(|e| panic!("running BuildKit's parser: {e}"));
        assert!(
            out.success(),
            "buildkit-parse failed ({:?}): {}",
            out.status,
            kiln_testkit::tail(&out.stderr, 2000)
        );
        let results: Vec<BuildKit> = out
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("buildkit-parse printed `{l}`: {e}"))
            })
            .collect();
        assert_eq!(
            results.len(),
            files.len(),
            "buildkit-parse answered for {} of {} files",
            results.len(),
            files.len()
        );
        results
    }
}

/// Builds (or finds) BuildKit's parser once per test binary. `None` when Go or the module proxy
/// is missing and nothing was built before: then, by the test kit's policy, the test fails under
/// `CI=true` and is skipped loudly elsewhere (the caller returns).
pub fn peer() -> Option<&'static Peer> {
    static PEER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = PEER.get_or_init(|| {
        check_pinned_version();
        let script = repo_root().join("scripts/buildkit-parse.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        let out = kiln_testkit::run_bounded(&mut cmd, BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("building BuildKit's parser: {e}"));
        match out.status {
            Some(0) => Ok(PathBuf::from(out.stdout.trim())),
            Some(3) => Err(format!(
                "BuildKit's parser cannot be built here ({}): {}",
                script.display(),
                out.stderr.trim()
            )),
            _ => panic!(
                "{} failed ({:?}); its output:\n{}",
                script.display(),
                out.status,
                kiln_testkit::tail(&out.stderr, 4000)
            ),
        }
    });
    match built {
        Ok(dir) => {
            static P: OnceLock<Peer> = OnceLock::new();
            Some(P.get_or_init(|| Peer { dir: dir.clone() }))
        }
        Err(why) => {
            kiln_testkit::skip_or_fail(why);
            None
        }
    }
}

/// The version named here is the one the build script pins.
fn check_pinned_version() {
    let go_mod = repo_root().join("scripts/buildkit-parse/go.mod");
    let text = fs::read_to_string(&go_mod).unwrap_or_else(|e| panic!("{}: {e}", go_mod.display()));
    let pinned = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("require github.com/moby/buildkit "))
        .map(str::trim);
    assert_eq!(
        pinned,
        Some(BUILDKIT_VERSION),
        "{} and BUILDKIT_VERSION in this test must name the same BuildKit release",
        go_mod.display()
    );
}

/// What `buildkit-parse` printed for one Dockerfile (see scripts/buildkit-parse/main.go).
#[derive(Debug, Clone, Deserialize)]
pub struct BuildKit {
    pub parse_error: Option<String>,
    pub dump: String,
    pub escape: String,
    pub syntax: Option<String>,
    pub nodes: Vec<BkNode>,
    pub instructions_error: Option<String>,
    pub instructions_error_line: Option<usize>,
    pub stages: Vec<BkStage>,
    pub meta_args: Vec<BkMetaArg>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BkNode {
    pub line: usize,
    pub end_line: usize,
    pub dump: String,
    pub json: bool,
    pub heredocs: Vec<BkHeredoc>,
    pub instruction_error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BkHeredoc {
    pub name: String,
    pub fd: u64,
    pub expand: bool,
    pub chomp: bool,
    pub content: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BkStage {
    pub name: String,
    pub base: String,
    pub platform: String,
    pub line: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BkMetaArg {
    pub name: String,
    pub default: Option<String>,
}

pub use crate::cases::case_dirs;

/// A committed list of cases with one reason each: `case: reason` lines, `#` comments. Every
/// listed case must exist, be listed once and have a reason.
pub fn read_list(path: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (case, reason) = line.split_once(": ").unwrap_or_else(|| {
            panic!(
                "{}:{}: expected `case: reason`, found `{line}`",
                path.display(),
                i + 1
            )
        });
        assert!(
            !reason.trim().is_empty(),
            "{}:{}: `{case}` has no reason",
            path.display(),
            i + 1
        );
        assert!(
            out.insert(case.trim().to_string(), reason.trim().to_string())
                .is_none(),
            "{}:{}: `{case}` is listed twice",
            path.display(),
            i + 1
        );
    }
    out
}
