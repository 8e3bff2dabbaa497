//! One raw instruction → a typed [`Instruction`]: the argument form of each keyword (exec or
//! shell form, name=value pairs, FROM's `AS name`, HEALTHCHECK options, ONBUILD triggers).

use super::flags::{parse_flags, FlagKind};
use super::heredoc::heredoc_word;
use super::mounts::check_mount;
use super::source::RawInstruction;
use super::words::{
    is_ascii_blank, is_separator, parse_json_array, split_command, split_raw_words, split_separated,
};
use super::{err, parse_instruction, ParseError};
use crate::ast::{ArgDecl, CopyArgs, Healthcheck, Instruction, Located, RunArgs, ShellOrExec};
use crate::excerpt::excerpt;

pub(super) enum Parsed {
    From {
        base: String,
        platform: Option<String>,
        name: Option<String>,
    },
    Other(Located),
}

/// The keyword of an instruction's text, upper-cased (as [`split_command`] finds it).
pub(super) fn keyword_of(text: &str) -> String {
    text.trim()
        .split(is_separator)
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// BuildKit's stage-name rule (after lower-casing).
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Parses a Go duration string (`30s`, `1m30s`, `1.5h`, `0`) into seconds, as Docker parses
/// HEALTHCHECK durations; `None` when it is not one (a negative duration included).
fn duration_seconds(s: &str) -> Option<f64> {
    kiln_common::duration::parse(s)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// Turns one instruction's text into a typed instruction.
/// The `--flags` each instruction accepts (every other instruction takes none): the one table
/// the parser reads, public through [`super::instruction_flags`] so that tests can hold every
/// flag to the rule that it changes the build's result or fails it naming the flag.
pub(super) const INSTRUCTION_FLAGS: &[(&str, &[(&str, FlagKind)])] = &[
    ("FROM", &[("platform", FlagKind::Str)]),
    (
        "RUN",
        &[
            ("mount", FlagKind::List),
            ("network", FlagKind::Str),
            ("security", FlagKind::Str),
        ],
    ),
    (
        "COPY",
        &[
            ("from", FlagKind::Str),
            ("chown", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("link", FlagKind::Bool),
            ("exclude", FlagKind::List),
            ("parents", FlagKind::Bool),
        ],
    ),
    (
        "ADD",
        &[
            ("chown", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("link", FlagKind::Bool),
            ("exclude", FlagKind::List),
            ("checksum", FlagKind::Str),
            ("keep-git-dir", FlagKind::Bool),
        ],
    ),
    (
        "HEALTHCHECK",
        &[
            ("interval", FlagKind::Str),
            ("timeout", FlagKind::Str),
            ("start-period", FlagKind::Str),
            ("start-interval", FlagKind::Str),
            ("retries", FlagKind::Str),
        ],
    ),
];

fn flags_of(keyword: &str) -> &'static [(&'static str, FlagKind)] {
    INSTRUCTION_FLAGS
        .iter()
        .find(|(k, _)| *k == keyword)
        .map_or(&[], |(_, flags)| flags)
}

pub(super) fn interpret(raw: RawInstruction, escape: char) -> Result<Parsed, ParseError> {
    let RawInstruction {
        line,
        text,
        heredocs,
    } = raw;
    let (keyword_raw, flags, args) = split_command(&text, escape);
    let keyword = keyword_raw.to_ascii_uppercase();
    let located = |instruction| {
        Ok(Parsed::Other(Located {
            line,
            original: text.clone(),
            instruction,
        }))
    };
    let no_flags = |flags: &[String]| parse_flags(&keyword, flags, &[], line).map(|_| ());
    let require_args = |args: &str| -> Result<(), ParseError> {
        if args.is_empty() {
            return err(line, format!("{keyword} requires at least one argument"));
        }
        Ok(())
    };
    let exactly_one = |args: &str| -> Result<String, ParseError> {
        if args.is_empty() {
            return err(line, format!("{keyword} requires exactly one argument"));
        }
        Ok(args.to_string())
    };

    match keyword.as_str() {
        "FROM" => {
            let mut f = parse_flags(&keyword, &flags, flags_of("FROM"), line)?;
            let words = split_separated(&args);
            let name = match words.as_slice() {
                [_] => None,
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    let lower = name.to_ascii_lowercase();
                    if !valid_stage_name(&lower) {
                        return err(
                            line,
                            format!("invalid name for build stage: `{}`: it must start with a letter and contain only letters, digits, '-', '_' and '.'", excerpt(name)),
                        );
                    }
                    Some(lower)
                }
                _ => {
                    return err(
                        line,
                        "FROM requires either one or three arguments: FROM [--platform=<platform>] <image> [AS <name>]",
                    )
                }
            };
            Ok(Parsed::From { base: words[0].clone(), platform: f.string("platform"), name })
        }
        "RUN" => {
            let mut f = parse_flags(&keyword, &flags, flags_of("RUN"), line)?;
            let mounts = f.list("mount");
            for spec in &mounts {
                if let Err(why) = check_mount(spec) {
                    return err(line, format!("invalid RUN --mount=`{}`: {why}", excerpt(spec)));
                }
            }
            let network = f.string("network");
            if let Some(n) = &network {
                if !matches!(n.as_str(), "default" | "none" | "host") {
                    return err(
                        line,
                        format!("unsupported network mode `{}` for RUN --network: use default, none or host", excerpt(n)),
                    );
                }
            }
            let security = f.string("security");
            if let Some(s) = &security {
                if !matches!(s.as_str(), "sandbox" | "insecure") {
                    return err(
                        line,
                        format!("unsupported security mode `{}` for RUN --security: use sandbox or insecure", excerpt(s)),
                    );
                }
            }
            require_args(&args)?;
            let command = match parse_json_array(&args) {
                Some(Ok(list)) => Some(ShellOrExec::Exec(list)),
                Some(Err(e)) => return err(line, e),
                None => {
                    // As BuildKit's dockerfile2llb: a command that is one heredoc word
                    // (`<<EOF`, `<< EOF`, `3<<EOF`) runs that heredoc's body as the script.
                    let only_heredoc = !heredocs.is_empty() && heredoc_word(&args).is_some();
                    if only_heredoc {
                        None
                    } else {
                        Some(ShellOrExec::Shell(args.clone()))
                    }
                }
            };
            located(Instruction::Run(RunArgs {
                command,
                heredocs,
                mounts,
                network,
                security,
            }))
        }
        "CMD" | "ENTRYPOINT" => {
            no_flags(&flags)?;
            require_args(&args)?;
            let value = match parse_json_array(&args) {
                Some(Ok(list)) => ShellOrExec::Exec(list),
                Some(Err(e)) => return err(line, e),
                None => ShellOrExec::Shell(args.clone()),
            };
            located(if keyword == "CMD" {
                Instruction::Cmd(value)
            } else {
                Instruction::Entrypoint(value)
            })
        }
        "SHELL" => {
            no_flags(&flags)?;
            require_args(&args)?;
            match parse_json_array(&args) {
                Some(Ok(list)) if !list.is_empty() => located(Instruction::Shell(list)),
                Some(Ok(_)) => err(line, "SHELL requires at least one argument: SHELL [\"/bin/sh\", \"-c\"]"),
                Some(Err(e)) => err(line, e),
                None => err(
                    line,
                    "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]",
                ),
            }
        }
        "COPY" | "ADD" => {
            let mut f = parse_flags(&keyword, &flags, flags_of(&keyword), line)?;
            let (mut words, exec_form) = match parse_json_array(&args) {
                Some(Ok(list)) => (list, true),
                Some(Err(e)) => return err(line, e),
                None => (split_separated(&args), false),
            };
            if words.len() < 2 {
                return err(
                    line,
                    format!("{keyword} requires at least two arguments: one or more sources and a destination"),
                );
            }
            let dest = words.pop().unwrap_or_default();
            if heredoc_word(&dest).is_some() {
                return err(line, format!("{keyword} cannot use a heredoc as its destination"));
            }
            // The exec form opens no heredoc, so its words are paths as written (`"<<EOF"`
            // included, as BuildKit's parser keeps it).
            let sources = if exec_form {
                words
            } else {
                words.into_iter().map(|w| heredoc_word(&w).map_or(w, |m| m.name)).collect()
            };
            let link = f.boolean("link");
            let parents = f.boolean("parents");
            let keep_git_dir = f.boolean("keep-git-dir");
            let args = CopyArgs {
                sources,
                dest,
                from: f.string("from"),
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link,
                checksum: f.string("checksum"),
                keep_git_dir,
                exclude: f.list("exclude"),
                parents,
                heredocs,
            };
            located(if keyword == "COPY" { Instruction::Copy(args) } else { Instruction::Add(args) })
        }
        "ENV" | "LABEL" => {
            no_flags(&flags)?;
            require_args(&args)?;
            let pairs = parse_name_values(&keyword, &args, escape, line)?;
            located(if keyword == "ENV" { Instruction::Env(pairs) } else { Instruction::Label(pairs) })
        }
        "ARG" => {
            no_flags(&flags)?;
            require_args(&args)?;
            let mut decls = Vec::new();
            for word in split_raw_words(&args, escape) {
                let (name, default) = match word.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (word.clone(), None),
                };
                if name.is_empty() {
                    return err(line, format!("ARG `{}` has no name: write ARG NAME[=default]", excerpt(&word)));
                }
                decls.push(ArgDecl {
                    name,
                    default,
                    line,
                });
            }
            located(Instruction::Arg(decls))
        }
        "EXPOSE" => {
            no_flags(&flags)?;
            require_args(&args)?;
            located(Instruction::Expose(split_separated(&args)))
        }
        "VOLUME" => {
            no_flags(&flags)?;
            require_args(&args)?;
            let paths = match parse_json_array(&args) {
                Some(Ok(list)) => list,
                Some(Err(e)) => return err(line, e),
                None => split_separated(&args),
            };
            if paths.is_empty() {
                return err(line, "VOLUME requires at least one argument");
            }
            if paths.iter().any(|p| p.trim().is_empty()) {
                return err(line, "VOLUME specified can not be an empty string");
            }
            located(Instruction::Volume(paths))
        }
        "USER" => {
            no_flags(&flags)?;
            located(Instruction::User(exactly_one(&args)?))
        }
        "WORKDIR" => {
            no_flags(&flags)?;
            located(Instruction::Workdir(exactly_one(&args)?))
        }
        "STOPSIGNAL" => {
            no_flags(&flags)?;
            located(Instruction::Stopsignal(exactly_one(&args)?))
        }
        "MAINTAINER" => {
            no_flags(&flags)?;
            located(Instruction::Maintainer(exactly_one(&args)?))
        }
        "ONBUILD" => {
            no_flags(&flags)?;
            require_args(&args)?;
            let trigger_keyword = keyword_of(&args);
            match trigger_keyword.as_str() {
                "ONBUILD" => {
                    return err(line, "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
                }
                "FROM" | "MAINTAINER" => {
                    return err(
                        line,
                        format!("{trigger_keyword} isn't allowed as an ONBUILD trigger"),
                    )
                }
                _ => {}
            }
            // As BuildKit does, heredoc bodies travel with the trigger so it can be re-parsed.
            let mut trigger = args.clone();
            for h in &heredocs {
                trigger.push('\n');
                trigger.push_str(&h.content);
                trigger.push_str(&h.name);
            }
            // Validate now rather than when a child image is built.
            parse_instruction(&trigger, line, escape).map_err(|e| ParseError {
                line,
                message: format!("invalid ONBUILD trigger: {}", e.message),
            })?;
            located(Instruction::Onbuild(trigger))
        }
        "HEALTHCHECK" => interpret_healthcheck(&keyword, &flags, &args, line).and_then(located),
        "" => err(line, "expected an instruction"),
        _ => err(
            line,
            format!("unknown instruction: {} (expected one of FROM, RUN, CMD, LABEL, MAINTAINER, EXPOSE, ENV, ADD, COPY, ENTRYPOINT, VOLUME, USER, WORKDIR, ARG, ONBUILD, STOPSIGNAL, HEALTHCHECK, SHELL)", excerpt(&keyword_raw)),
        ),
    }
}

fn interpret_healthcheck(
    keyword: &str,
    flags: &[String],
    args: &str,
    line: usize,
) -> Result<Instruction, ParseError> {
    // As BuildKit: the type ends at the first blank, and the command starts after the blanks.
    let (kind, rest) = match args.find(is_ascii_blank) {
        Some(i) => (&args[..i], args[i..].trim_start_matches(is_ascii_blank)),
        None => (args, ""),
    };
    if kind.is_empty() {
        return err(
            line,
            "HEALTHCHECK requires at least one argument: NONE or CMD <command>",
        );
    }
    if kind.eq_ignore_ascii_case("NONE") {
        if !rest.is_empty() || !flags.is_empty() {
            return err(line, "HEALTHCHECK NONE takes no arguments or options");
        }
        return Ok(Instruction::Healthcheck(Healthcheck::None));
    }
    let mut f = parse_flags(keyword, flags, flags_of("HEALTHCHECK"), line)?;
    if !kind.eq_ignore_ascii_case("CMD") {
        return err(
            line,
            format!(
                "unknown type `{}` in HEALTHCHECK: use CMD or NONE",
                excerpt(kind)
            ),
        );
    }
    let test = match parse_json_array(rest) {
        Some(Ok(list)) if !list.is_empty() => ShellOrExec::Exec(list),
        Some(Ok(_)) => return err(line, "missing command after HEALTHCHECK CMD"),
        Some(Err(e)) => return err(line, e),
        None if rest.is_empty() => return err(line, "missing command after HEALTHCHECK CMD"),
        None => ShellOrExec::Shell(rest.to_string()),
    };
    let mut duration = |name: &'static str| -> Result<Option<String>, ParseError> {
        match f.string(name) {
            None => Ok(None),
            Some(v) => match duration_seconds(&v) {
                // Like Docker: 0 means "use the default", anything else must be at least 1ms.
                Some(secs) if secs == 0.0 || secs >= 1e-3 => Ok(Some(v)),
                Some(_) => err(line, format!("HEALTHCHECK --{name}=`{}` cannot be less than 1ms", excerpt(&v))),
                None => err(
                    line,
                    format!("HEALTHCHECK --{name}=`{}` is not a duration: write e.g. 30s, 1m30s or 500ms", excerpt(&v)),
                ),
            },
        }
    };
    let interval = duration("interval")?;
    let timeout = duration("timeout")?;
    let start_period = duration("start-period")?;
    let start_interval = duration("start-interval")?;
    let retries = match f.string("retries") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                return err(
                    line,
                    format!(
                        "HEALTHCHECK --retries=`{}` is not a non-negative integer",
                        excerpt(&v)
                    ),
                )
            }
        },
    };
    Ok(Instruction::Healthcheck(Healthcheck::Check {
        test,
        interval,
        timeout,
        start_period,
        start_interval,
        retries,
    }))
}

/// ENV and LABEL arguments: `k=v k2="v 2"` pairs (quotes kept raw), or the legacy `KEY value
/// with spaces` form when the first word has no `=` (ENV/LABEL only, one pair).
fn parse_name_values(
    keyword: &str,
    args: &str,
    escape: char,
    line: usize,
) -> Result<Vec<(String, String)>, ParseError> {
    let words = split_raw_words(args, escape);
    let Some(first) = words.first() else {
        return err(line, format!("{keyword} requires at least one argument"));
    };
    if !first.contains('=') {
        // The legacy form splits on BuildKit's separators only (not a no-break space).
        let Some(i) = args.find(is_separator) else {
            return err(
                line,
                format!(
                    "{keyword} `{0}` has no value: write {keyword} {0}=<value>",
                    excerpt(args)
                ),
            );
        };
        return Ok(vec![(
            args[..i].to_string(),
            args[i..].trim_start_matches(is_separator).to_string(),
        )]);
    }
    let mut pairs = Vec::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return err(
                line,
                format!("syntax error: can't find = in `{}`: {keyword} entries must be of the form name=value", excerpt(&word)),
            );
        };
        if key.is_empty() {
            return err(
                line,
                format!("{keyword} names can not be blank (in `{}`)", excerpt(&word)),
            );
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_seconds("30s"), Some(30.0));
        assert_eq!(duration_seconds("1m30s"), Some(90.0));
        assert_eq!(duration_seconds("0"), Some(0.0));
        assert_eq!(duration_seconds("1.5h"), Some(5400.0));
        assert_eq!(duration_seconds("500ms"), Some(0.5));
        for bad in ["", "30", "s", "1x", "1..2s", "-1s", ".s"] {
            assert_eq!(duration_seconds(bad), None, "{bad}");
        }
    }
}
