//! Malformed and hostile Dockerfiles through the real `kiln-executor` binary: each build must
//! fail with exit code 1 (no panic, no abort), end with one `kiln-executor: …` line that names
//! the Dockerfile line and stays short, print that error once, and quote no more of the file
//! than a bounded excerpt. Every case fails before anything is pulled or run (`--no-push`, no
//! registry, no base image), so the test needs no tool and no network.
//!
//! The library-level twin with more cases is `crates/dockerfile/tests/hostile.rs`.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_testkit::run_bounded;

/// Generous for a debug build on a shared machine; every case is linear in its input.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The longest the final error line may be.
const MAX_ERROR_LINE: usize = 1024;

struct Case {
    name: &'static str,
    dockerfile: Vec<u8>,
    extra: &'static [&'static str],
    /// The Dockerfile line the error must name.
    line: usize,
    /// Text the error must hold besides the line.
    needle: &'static str,
    /// Whether nothing but the error may be printed (the build fails before any step logs).
    only_the_error: bool,
}

fn case(
    name: &'static str,
    dockerfile: impl Into<Vec<u8>>,
    line: usize,
    needle: &'static str,
) -> Case {
    Case {
        name,
        dockerfile: dockerfile.into(),
        extra: &[],
        line,
        needle,
        only_the_error: true,
    }
}

fn cases() -> Vec<Case> {
    let mut secret_tail = "Q".repeat(10 << 20);
    secret_tail.push_str(" secret-token-from-the-file\nFROM scratch\n");
    vec![
        case(
            "10 MB unknown instruction",
            secret_tail,
            1,
            "unknown instruction: QQQQ",
        ),
        case(
            "invalid UTF-8",
            b"FROM scratch\nLABEL a=b\nRUN echo \xff\n".to_vec(),
            3,
            "invalid UTF-8 at byte offset 32 (9 bytes into the line)",
        ),
        case(
            "NUL byte",
            b"FROM scratch\nRUN echo \0\n".to_vec(),
            2,
            "NUL byte at byte offset 22",
        ),
        case(
            "SHELL nested 1 MB deep",
            format!("FROM scratch\nSHELL {}\n", "[".repeat(1 << 20)),
            2,
            "SHELL requires the arguments to be in JSON form",
        ),
        case(
            "unterminated heredoc after 100k lines",
            format!("FROM scratch\nRUN <<EOF\n{}", "echo x\n".repeat(100_000)),
            2,
            "unterminated heredoc <<EOF",
        ),
        case(
            "--mount garbage",
            "FROM scratch\nRUN --mount=type=nope,,,=== true\n",
            2,
            "unsupported mount type `nope`",
        ),
        case("empty Dockerfile", "", 1, "has no instructions"),
        case(
            "FROM its own stage",
            "FROM me AS me\n",
            1,
            "`me` is this stage itself",
        ),
        Case {
            extra: &["--target", "first"],
            ..case(
                "FROM a later stage",
                "FROM later AS first\nFROM scratch AS later\n",
                1,
                "stage `later` is defined later (line 2)",
            )
        },
        case(
            "COPY --from cycle",
            "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n",
            2,
            "stage `b` is defined later (line 3)",
        ),
        case(
            "COPY --from its own stage",
            "FROM scratch AS a\nCOPY --from=a /x /x\n",
            2,
            "`a` is this stage itself",
        ),
        case(
            "invalid image reference",
            "FROM scratch AS ok\nFROM Not::A/Reference\n",
            2,
            "`Not::A/Reference` is not a valid image reference",
        ),
        case(
            "FROM with 10,000 ARG substitutions",
            format!("ARG a=x\nFROM img:{}\n", "$a".repeat(10_000)),
            2,
            "is not a valid image reference",
        ),
        Case {
            // The step is logged before it fails, so more than the error is printed.
            only_the_error: false,
            ..case(
                "ARG nested 100,000 deep",
                format!(
                    "FROM scratch\nARG v={}x{}\n",
                    "${a:-".repeat(100_000),
                    "}".repeat(100_000)
                ),
                2,
                "nested more than 32 deep",
            )
        },
    ]
}

#[test]
fn malformed_dockerfiles_fail_with_one_short_line_naming_the_line() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = check(case) {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn check(case: &Case) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ctx = dir.path().join("ctx");
    fs::create_dir(&ctx).map_err(|e| e.to_string())?;
    fs::write(ctx.join("Dockerfile"), &case.dockerfile).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.arg("--context")
        .arg(format!("dir://{}", ctx.display()))
        .arg("--no-push")
        .args(case.extra)
        .env("KILN_TERMINATION_LOG", dir.path().join("termination"))
        .env_remove("KILN_LOG");
    let started = Instant::now();
    let out = run_bounded(&mut cmd, TIMEOUT).map_err(|e| e.to_string())?;
    eprintln!(
        "{}: {} bytes of Dockerfile, failed in {:.2}s with {} bytes of stderr",
        case.name,
        case.dockerfile.len(),
        started.elapsed().as_secs_f64(),
        out.stderr.len()
    );
    let shown = || kiln_testkit::tail(&out.stderr, 2000);
    if out.status != Some(1) {
        return Err(format!(
            "exit status {:?}, expected 1:\n{}",
            out.status,
            shown()
        ));
    }
    if out.stderr.contains("panicked") {
        return Err(format!("panicked:\n{}", shown()));
    }
    let last = out
        .stderr
        .trim_end_matches('\n')
        .lines()
        .last()
        .unwrap_or("");
    let Some(message) = last.strip_prefix("kiln-executor: ") else {
        return Err(format!("the last line is not the error:\n{}", shown()));
    };
    if last.len() > MAX_ERROR_LINE {
        return Err(format!("the error line has {} bytes", last.len()));
    }
    let line = format!("line {}: ", case.line);
    if !message.contains(&line) || !message.contains(case.needle) {
        return Err(format!(
            "expected `{line}` and `{}` in: {message}",
            case.needle
        ));
    }
    if out.stderr.matches(message).count() != 1 {
        return Err(format!("the error is printed more than once:\n{}", shown()));
    }
    if case.only_the_error && out.stderr.len() > MAX_ERROR_LINE {
        return Err(format!(
            "{} bytes of stderr for a build that fails before its first step:\n{}",
            out.stderr.len(),
            shown()
        ));
    }
    if out.stderr.contains("secret-token-from-the-file") {
        return Err("text past the excerpt of the line reached stderr".to_string());
    }
    if !out.stdout.is_empty() {
        return Err(format!("stdout is not empty: {}", out.stdout));
    }
    Ok(())
}
