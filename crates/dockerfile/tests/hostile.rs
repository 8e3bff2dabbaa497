//! Hostile and malformed Dockerfiles through the library: parsing ([`parse_bytes`]), then what
//! the executor and the warmer do next with the FROM lines (global ARG defaults and FROM values
//! expanded, each stage resolved). Each case must end without a panic or a stack overflow, in
//! time linear in its size, and when it is refused, with one line of bounded length that names
//! the expected Dockerfile line. Everything runs on a thread with a small stack, so a recursion
//! that depends on the input shows up here as a crash rather than in production.
//!
//! Times are printed (`--nocapture`) but not asserted: the machine is shared.

use std::collections::BTreeMap;
use std::time::Instant;

use kiln_dockerfile::expand::{expand_word, ExpandError, MAX_NESTING};
use kiln_dockerfile::stages::{Base, FromPlatform, Stages};
use kiln_dockerfile::{parse_bytes, Dockerfile};

/// Stack of the thread the cases run on: far below the 2 MiB of a Rust thread and the 8 MiB of
/// a main thread, so that any recursion bounded by input size rather than by a constant fails.
const SMALL_STACK: usize = 256 * 1024;

/// The longest error line a case may produce.
const MAX_ERROR_BYTES: usize = 512;

/// What the library must make of a case.
enum Expect {
    /// Refused, with an error naming this 1-based line.
    Refused(usize),
    /// Accepted by the library (the executor may still refuse it; see
    /// `executor/tests/malformed_dockerfiles.rs`), and this check holds of the result.
    Accepted(fn(&Dockerfile, &Stages<'_>)),
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, input: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        input: input.into(),
        expect,
    }
}

/// `${a:-` nested `depth` times around `x`.
fn nested_default(depth: usize) -> String {
    format!("{}x{}", "${a:-".repeat(depth), "}".repeat(depth))
}

/// What the library makes of `input`: the parsed Dockerfile, or the first error as displayed.
fn run(input: &[u8], check: impl FnOnce(&Dockerfile, &Stages<'_>)) -> Result<(), String> {
    let dockerfile = parse_bytes(input).map_err(|e| e.to_string())?;
    let stages = Stages::new(
        &dockerfile,
        &BTreeMap::new(),
        [("TARGETARCH".to_string(), "amd64".to_string())],
        FromPlatform::Honour,
    );
    if let Some(e) = stages.unexpanded_defaults().first() {
        return Err(e.to_string());
    }
    for stage in stages.all() {
        stage.map_err(|e| e.to_string())?;
    }
    check(&dockerfile, &stages);
    Ok(())
}

fn cases() -> Vec<Case> {
    use Expect::{Accepted, Refused};
    let mut out = Vec::new();

    // Heredocs: unterminated after 100,000 lines, and terminated after as many.
    let body = "echo line\n".repeat(100_000);
    out.push(case(
        "unterminated heredoc of 100k lines",
        format!("FROM scratch\nRUN <<EOF\n{body}"),
        Refused(2),
    ));
    out.push(case(
        "heredoc of 100k lines",
        format!("FROM scratch\nRUN <<EOF\n{body}EOF\nBOGUS\n"),
        Refused(100_004),
    ));
    out.push(case(
        "heredoc marker of 1 MB never closed",
        format!("FROM scratch\nRUN <<{}\n", "E".repeat(1 << 20)),
        Refused(2),
    ));
    out.push(case(
        "10,000 heredocs on one line",
        format!(
            "FROM scratch\nRUN {}\n{}",
            "<<A ".repeat(10_000),
            "body\nA\n".repeat(10_000)
        ),
        Accepted(|df, _| {
            let Some(kiln_dockerfile::Instruction::Run(run)) =
                df.stages[0].instructions.first().map(|l| &l.instruction)
            else {
                panic!("expected a RUN");
            };
            assert_eq!(run.heredocs.len(), 10_000);
        }),
    ));

    // Continuations: a 10 MB line continued up to the end of the file.
    out.push(case(
        "continuation at EOF after a 10 MB line",
        format!("FROM scratch\nRUN \\\n{} \\", "x".repeat(10 << 20)),
        Accepted(|df, _| assert_eq!(df.stages[0].instructions.len(), 1)),
    ));
    out.push(case(
        "unknown instruction continued over a 1 MB line to EOF",
        format!("FROM scratch\nRUNX \\\n{} \\", "x".repeat(1 << 20)),
        Refused(2),
    ));
    out.push(case(
        "10 MB unknown instruction",
        "X".repeat(10 << 20),
        Refused(1),
    ));

    // Bytes that are not Dockerfile text.
    out.push(case(
        "NUL bytes",
        b"FROM scratch\nRUN echo a\0b\n".to_vec(),
        Refused(2),
    ));
    out.push(case(
        "invalid UTF-8",
        b"FROM scratch\nLABEL a=b\nRUN echo \xff\xfe\n".to_vec(),
        Refused(3),
    ));
    out.push(case(
        "byte-order mark in the middle",
        "FROM scratch\n\u{feff}RUN echo\n",
        Refused(2),
    ));
    out.push(case(
        "binary garbage",
        // Byte 128 is the first that is not UTF-8; byte 10, a newline, comes before it.
        (0..=255u8).cycle().take(1 << 16).collect::<Vec<u8>>(),
        Refused(2),
    ));

    // JSON forms nested 1 MB deep: no recursion in the decoder.
    out.push(case(
        "SHELL with 1 MB of [ nesting",
        format!("FROM scratch\nSHELL {}\n", "[".repeat(1 << 20)),
        Refused(2),
    ));
    out.push(case(
        "CMD with 1 MB of balanced [] nesting (shell form, as in BuildKit)",
        format!(
            "FROM scratch\nCMD {}{}\n",
            "[".repeat(1 << 19),
            "]".repeat(1 << 19)
        ),
        Accepted(|_, _| {}),
    ));
    out.push(case(
        "exec form with a huge non-string member",
        format!(
            "FROM scratch\nCMD [{{\"a\": \"{}\"}}]\n",
            "v".repeat(1 << 20)
        ),
        Refused(2),
    ));

    // Flags.
    out.push(case(
        "unknown flag of 1 MB",
        format!("FROM scratch\nCOPY --{}=1 a b\n", "x".repeat(1 << 20)),
        Refused(2),
    ));
    out.push(case(
        "100,000 unknown flags",
        format!("FROM scratch\nRUN {}true\n", "--x ".repeat(100_000)),
        Refused(2),
    ));
    out.push(case(
        "--mount garbage",
        "FROM scratch\nRUN --mount=type=cache,target=/c \\\n  --mount=type=nope,,,=== true\n",
        Refused(2),
    ));
    out.push(case(
        "--mount of 1 MB without a target",
        format!(
            "FROM scratch\nRUN --mount=type=cache,id={} true\n",
            "i".repeat(1 << 20)
        ),
        Refused(2),
    ));
    out.push(case(
        "bool flag with a 1 MB value",
        format!("FROM scratch\nCOPY --link={} a b\n", "y".repeat(1 << 20)),
        Refused(2),
    ));

    // Expansion of FROM lines and global ARGs.
    out.push(case(
        "FROM with 10,000 ARG substitutions",
        format!("ARG a=x\nFROM img:{}\n", "$a".repeat(10_000)),
        Accepted(|_, stages| {
            let resolved = stages.resolve(0).expect("resolves");
            assert_eq!(resolved.from.len(), 4 + 10_000);
        }),
    ));
    out.push(case("${ unterminated", "ARG a\nFROM img:${a\n", Refused(2)));
    out.push(case(
        "unterminated quote in FROM",
        "FROM \"img\n",
        Refused(1),
    ));
    out.push(case(
        "ARG default nested 2,000 deep",
        format!("ARG v={}\nFROM scratch\n", nested_default(2_000)),
        Refused(1),
    ));
    out.push(case(
        "FROM nested 100,000 deep",
        format!("FROM img:{}\n", nested_default(100_000)),
        Refused(1),
    ));
    out.push(case(
        "ARG doubling 40 times",
        {
            let mut text = String::from("ARG a0=xxxxxxxx\n");
            for i in 1..=40 {
                text.push_str(&format!("ARG a{i}=$a{p}$a{p}\n", p = i - 1));
            }
            text.push_str("FROM img:$a40\n");
            text
        },
        // 8 bytes doubled 20 times is 8 MiB, past the 4 MiB bound, on the 21st ARG line.
        Refused(21),
    ));
    out.push(case(
        "ARG cycle (ARGs are read in order: both end up empty)",
        "ARG a=$b\nARG b=$a\nFROM img:x$a$b\n",
        Accepted(|_, stages| assert_eq!(stages.resolve(0).unwrap().from, "img:x")),
    ));
    out.push(case(
        "pattern that backtracking matches in exponential time",
        format!(
            "ARG v={}\nFROM img:${{v#{}b}}\n",
            "a".repeat(5_000),
            "*a".repeat(30)
        ),
        Accepted(|_, stages| assert_eq!(stages.resolve(0).unwrap().from.len(), 4 + 5_000)),
    ));

    // Stages.
    out.push(case(
        "FROM of a later stage (the executor refuses it)",
        "FROM later\nFROM scratch AS later\n",
        Accepted(|df, _| {
            assert_eq!(
                kiln_dockerfile::stages::same_or_later_stage(df, "later", 0),
                Some(1)
            )
        }),
    ));
    out.push(case(
        "COPY --from its own stage (the executor refuses it)",
        "FROM scratch AS a\nCOPY --from=a /x /y\n",
        Accepted(|df, _| {
            assert_eq!(
                kiln_dockerfile::stages::same_or_later_stage(df, "a", 0),
                Some(0)
            )
        }),
    ));
    out.push(case(
        "stage name of 1 MB",
        format!("FROM scratch AS {}\n", "1".repeat(1 << 20)),
        Refused(1),
    ));
    out.push(case(
        "duplicate stage name",
        "FROM scratch AS a\nFROM scratch AS a\n",
        Refused(2),
    ));

    // Empty and near-empty files.
    out.push(case("empty file", "", Refused(1)));
    out.push(case(
        "100,000 comment lines only",
        "# nothing here\n".repeat(100_000),
        Refused(1),
    ));

    // Instructions that cannot nest or repeat.
    out.push(case(
        "ONBUILD ONBUILD",
        "FROM scratch\nONBUILD ONBUILD RUN true\n",
        Refused(2),
    ));
    out.push(case(
        "ONBUILD FROM",
        "FROM scratch\nONBUILD FROM scratch\n",
        Refused(2),
    ));
    out.push(case(
        "ONBUILD with a 1 MB unknown trigger",
        format!("FROM scratch\nONBUILD {}\n", "Z".repeat(1 << 20)),
        Refused(2),
    ));
    out.push(case(
        "MAINTAINER of 1 MB",
        format!("FROM scratch\nMAINTAINER {}\n", "m".repeat(1 << 20)),
        Accepted(|_, _| {}),
    ));
    out.push(case(
        "escape directive set twice",
        "# escape=`\n# escape=\\\nFROM scratch\n",
        Refused(2),
    ));
    out.push(case(
        "escape directive with a 1 MB value",
        format!("# escape={}\nFROM scratch\n", "q".repeat(1 << 20)),
        Refused(1),
    ));

    // Size.
    out.push(case(
        "1,000,000 short lines",
        format!("FROM scratch\n{}", "ENV a=b\n".repeat(1_000_000)),
        Accepted(|df, _| assert_eq!(df.stages[0].instructions.len(), 1_000_000)),
    ));
    out.push(case(
        "error after 1,000,000 short lines",
        format!("FROM scratch\n{}NOPE\n", "ENV a=b\n".repeat(1_000_000)),
        Refused(1_000_002),
    ));
    out.push(case(
        "instruction before FROM, 1 MB long",
        format!("RUN {}\nFROM scratch\n", "r".repeat(1 << 20)),
        Refused(1),
    ));
    out
}

/// Runs `f` on a thread with [`SMALL_STACK`]; a stack overflow aborts the test process, a
/// panic fails the test.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn a thread")
        .join()
        .unwrap_or_else(|_| panic!("the case panicked (see above)"))
}

#[test]
fn malformed_dockerfiles_fail_with_one_bounded_line_naming_the_line() {
    let cases = cases();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for Case {
        name,
        input,
        expect,
    } in cases
    {
        let size = input.len();
        let started = Instant::now();
        let (outcome, expect) = on_small_stack(move || {
            let outcome = match &expect {
                Expect::Refused(_) => run(&input, |_, _| {}),
                Expect::Accepted(check) => run(&input, check),
            };
            (outcome, expect)
        });
        eprintln!(
            "{name}: {size} bytes in {:.3}s: {}",
            started.elapsed().as_secs_f64(),
            outcome.as_ref().err().map_or("accepted", String::as_str)
        );
        match (expect, outcome) {
            (Expect::Refused(line), Err(message)) => {
                let prefix = format!("line {line}: ");
                if !message.starts_with(&prefix) {
                    failures.push(format!("{name}: expected `{prefix}…`, got `{message}`"));
                }
                if message.contains(['\n', '\r']) || message.len() > MAX_ERROR_BYTES {
                    failures.push(format!(
                        "{name}: not one short line ({} bytes): {message:?}",
                        message.len()
                    ));
                }
            }
            (Expect::Refused(line), Ok(())) => failures.push(format!(
                "{name}: accepted, expected an error on line {line}"
            )),
            (Expect::Accepted(_), Err(message)) => {
                failures.push(format!("{name}: refused: {message}"))
            }
            (Expect::Accepted(_), Ok(())) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The 10 MB unknown instruction of issue 12: one short error naming line 1, quoting a bounded
/// excerpt of the line and nothing of what follows it.
#[test]
fn a_10_mb_unknown_instruction_gives_a_short_error() {
    let mut text = "Q".repeat(10 << 20);
    text.push_str(" secret-token\nFROM scratch\n");
    let message = on_small_stack(move || parse_bytes(text.as_bytes()).unwrap_err().to_string());
    assert!(message.len() < 1024, "{} bytes", message.len());
    assert!(
        message.starts_with("line 1: unknown instruction: QQQ"),
        "{message}"
    );
    assert!(message.contains('…'), "{message}");
    assert!(!message.contains("secret-token"), "{message}");
}

/// `${a:-${a:-…}}` 2,000 and 100,000 deep: a clean error at the nesting bound, on a small
/// stack, through every way the lexer recurses (defaults, quoted defaults, patterns).
#[test]
fn deep_nesting_errors_cleanly_on_a_small_stack() {
    for depth in [2_000, 100_000] {
        let words = [
            nested_default(depth),
            format!("{}x{}", "\"${a:-".repeat(depth), "}\"".repeat(depth)),
            format!("{}x{}", "${a#".repeat(depth), "}".repeat(depth)),
            format!("{}x{}", "${a/".repeat(depth), "/r}".repeat(depth)),
        ];
        for word in words {
            let err =
                on_small_stack(move || expand_word(&word, &|_| None, '\\').expect_err("too deep"));
            assert!(
                matches!(err, ExpandError::TooDeep { limit, .. } if limit == MAX_NESTING),
                "{err}"
            );
            assert!(err.to_string().len() < 300, "{err}");
        }
    }
    // At the bound itself, expansion works on the same small stack.
    let at_bound = nested_default(MAX_NESTING);
    let value = on_small_stack(move || expand_word(&at_bound, &|_| None, '\\'));
    assert_eq!(value.as_deref(), Ok("x"));
    // And the ARG line is named through the stage resolution.
    let text = format!("ARG v={}\nFROM scratch\n", nested_default(2_000));
    let message = on_small_stack(move || {
        let df = parse_bytes(text.as_bytes()).expect("parses");
        let stages = Stages::new(&df, &BTreeMap::new(), [], FromPlatform::Ignore);
        let e = stages
            .unexpanded_defaults()
            .first()
            .expect("an error")
            .clone();
        assert!(matches!(
            stages.resolve(0).map(|r| r.base),
            Ok(Base::Scratch)
        ));
        e.to_string()
    });
    assert!(
        message.starts_with("line 1: cannot expand the default of `ARG v="),
        "{message}"
    );
    assert!(message.len() < 512, "{message}");
}

/// Invalid UTF-8 is reported with its line and byte offset.
#[test]
fn invalid_utf8_names_line_and_offset() {
    let err = parse_bytes(b"FROM scratch\nRUN echo \xc3\x28\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(
        err.message
            .starts_with("invalid UTF-8 at byte offset 22 (9 bytes into the line)"),
        "{err}"
    );
    // A leading byte-order mark is fine, as in BuildKit.
    assert!(parse_bytes(b"\xef\xbb\xbfFROM scratch\n").is_ok());
}
