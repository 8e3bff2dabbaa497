//! The one policy for a test that cannot run here (a tool missing, not root): a failure under
//! `CI=true`, a loud skip elsewhere. It must not decide anything else, and never skips quietly.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether this run is CI: `CI=true` (or `1`), as CI systems set it. There a test that cannot
/// run is a failure, so a green run means every test ran.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The Debian package that installs `tool`, for the messages.
fn package_of(tool: &str) -> &str {
    match tool {
        "htpasswd" => "apache2-utils",
        "busybox" => "busybox-static",
        "sha256sum" | "head" => "coreutils",
        "unshare" => "util-linux",
        other => other,
    }
}

/// Where `name` is on `PATH`, if it is.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A test that cannot run here. Under `CI=true` this panics with `reason` (the test fails);
/// elsewhere it prints a loud skip notice and returns, and the caller must return at once.
///
/// The notice goes straight to the process's stderr: `eprintln!` would be captured by the test
/// harness and shown only for a failing test, which is what made skips quiet.
#[track_caller]
pub fn skip_or_fail(reason: &str) {
    // libtest names each test's thread after the test; a `harness = false` binary runs on
    // "main", where the binary's name says more.
    let test = match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => std::env::args()
            .next()
            .and_then(|a| Some(Path::new(&a).file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "this test".to_string()),
    };
    match verdict(ci(), &test, reason) {
        Ok(notice) => {
            let _ = writeln!(std::io::stderr(), "{notice}");
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// What [`skip_or_fail`] does: `Err` is the failure message (under CI), `Ok` the skip notice.
fn verdict(ci: bool, test: &str, reason: &str) -> Result<String, String> {
    if ci {
        Err(format!(
            "{test} cannot run: {reason} (CI=true: a test that cannot run is a failure)"
        ))
    } else {
        Ok(format!(
            "\n*** SKIPPED {test}: {reason}\n*** (this would FAIL under CI=true)\n"
        ))
    }
}

/// The path of `name`, or `None` when it is not installed: then, by [`skip_or_fail`], a failure
/// under CI and a loud skip elsewhere, naming the package to install. The caller returns on
/// `None`: `let Some(_) = require_tool("buildah") else { return };`
#[track_caller]
pub fn require_tool(name: &str) -> Option<PathBuf> {
    require_tools(&[name]).then(|| find_tool(name)).flatten()
}

/// Whether every tool in `names` is installed; when not, [`skip_or_fail`] names all the missing
/// ones at once and this returns `false`, so the caller returns.
#[track_caller]
pub fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| find_tool(n).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let packages: Vec<&str> = missing.iter().map(|t| package_of(t)).collect();
    skip_or_fail(&format!(
        "{} not installed (Debian: apt-get install -y {}; `bash scripts/test.sh` installs it)",
        missing.join(", "),
        packages.join(" ")
    ));
    false
}

/// The path of a tool a test has already asked for with [`require_tool`]/[`require_tools`]:
/// a panic naming the package when it is missing (a test that forgot to ask fails, never passes).
#[track_caller]
pub fn tool(name: &str) -> PathBuf {
    match find_tool(name) {
        Some(path) => path,
        None => panic!(
            "{name} is not installed; this test needs it (Debian: apt-get install -y {})",
            package_of(name)
        ),
    }
}

/// Whether this process runs as root; when not, [`skip_or_fail`] with `why` and `false`.
#[track_caller]
pub fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip_or_fail(&format!("not running as root, and {why}"));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_tool_finds_sh_and_not_nonsense() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("kiln-no-such-tool-here").is_none());
    }

    #[test]
    fn under_ci_it_fails_and_elsewhere_it_skips_loudly() {
        let failure = verdict(true, "t", "skopeo not installed").unwrap_err();
        assert!(
            failure.contains("t cannot run: skopeo not installed"),
            "{failure}"
        );
        assert!(failure.contains("CI=true"), "{failure}");
        let notice = verdict(false, "t", "skopeo not installed").unwrap();
        assert!(
            notice.contains("SKIPPED t: skopeo not installed"),
            "{notice}"
        );
    }

    #[test]
    fn packages_are_named_for_tools_that_differ() {
        assert_eq!(package_of("htpasswd"), "apache2-utils");
        assert_eq!(package_of("skopeo"), "skopeo");
    }
}
