//! Dockerfile text → [`Dockerfile`], following BuildKit's parser: directives, comments,
//! continuations, heredocs, flags and the per-instruction argument forms. Values stay raw
//! (no variable expansion here: that is [`super::expand`]'s job at build time), and nothing is
//! read from disk or executed.

use std::collections::HashMap;

use super::ast::{
    ArgDecl, CopyArgs, Dockerfile, Healthcheck, Heredoc, Instruction, Located, RunArgs,
    ShellOrExec, Stage,
};

/// A Dockerfile that cannot be parsed; `line` is 1-based (the line where the instruction starts).
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let (directives, first_body_line) = parse_directives(&lines)?;
    let escape = directives.escape;

    let mut source = Source {
        lines: &lines,
        pos: first_body_line,
        first_line: 1,
        escape,
    };
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage_names: HashMap<String, usize> = HashMap::new();
    let mut saw_instruction = false;

    while let Some(raw) = source.next_instruction()? {
        saw_instruction = true;
        let line = raw.line;
        match interpret(raw, escape)? {
            Parsed::From {
                base,
                platform,
                name,
            } => {
                if let Some(name) = &name {
                    if let Some(first) = stage_names.insert(name.clone(), line) {
                        return err(
                            line,
                            format!("duplicate stage name `{name}` (already used on line {first}): give each stage a unique name"),
                        );
                    }
                }
                stages.push(Stage {
                    index: stages.len(),
                    name,
                    base,
                    platform,
                    line,
                    instructions: Vec::new(),
                });
            }
            Parsed::Other(located) => match stages.last_mut() {
                Some(stage) => stage.instructions.push(located),
                None => match located.instruction {
                    Instruction::Arg(decls) => meta_args.extend(decls),
                    _ => {
                        let keyword = keyword_of(&located.original);
                        return err(
                            line,
                            format!("{keyword} before the first FROM: only ARG may come before FROM (no build stage in current context)"),
                        );
                    }
                },
            },
        }
    }

    if !saw_instruction {
        return err(
            1,
            "the Dockerfile has no instructions: it needs at least a FROM line",
        );
    }
    if stages.is_empty() {
        return err(
            lines.len().max(1),
            "the Dockerfile has no FROM instruction: add a FROM line to start a build stage",
        );
    }
    Ok(Dockerfile {
        escape,
        syntax: directives.syntax,
        meta_args,
        stages,
    })
}

/// Parses one instruction (with its heredoc bodies, if any) — used for `ONBUILD` triggers when
/// they fire. `line` is the line number reported in errors; `FROM` is refused since it is not an
/// instruction inside a stage.
pub fn parse_instruction(text: &str, line: usize, escape: char) -> Result<Located, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut source = Source {
        lines: &lines,
        pos: 0,
        first_line: line,
        escape,
    };
    let Some(raw) = source.next_instruction()? else {
        return err(
            line,
            "expected an instruction, found only blank lines or comments",
        );
    };
    let start = raw.line;
    if let Some(extra) = source.next_instruction()? {
        return err(
            extra.line,
            format!(
                "expected a single instruction, found a second one: `{}`",
                extra.text
            ),
        );
    }
    match interpret(raw, escape)? {
        Parsed::Other(located) => Ok(located),
        Parsed::From { .. } => err(start, "FROM is not allowed here: it can only start a stage"),
    }
}

struct Directives {
    escape: char,
    syntax: Option<String>,
}

/// Reads the parser directives (`# escape=`, `# syntax=`, `# check=`) at the top of the file.
/// Like BuildKit, the first line that is not a known directive (a comment, an empty line, an
/// instruction or an unknown `# key=value`) ends the directive section.
fn parse_directives(lines: &[&str]) -> Result<(Directives, usize), ParseError> {
    let mut directives = Directives {
        escape: '\\',
        syntax: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((key, value)) = directive(line) else {
            return Ok((directives, i));
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            return Ok((directives, i));
        }
        if seen.contains(&key) {
            return err(
                i + 1,
                format!("only one `{key}` parser directive can be used"),
            );
        }
        match key.as_str() {
            "escape" => {
                directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return err(
                            i + 1,
                            format!(
                        "invalid escape character `{other}` in `# escape=` directive: use \\ or `"
                    ),
                        )
                    }
                }
            }
            "syntax" => directives.syntax = Some(value.to_string()),
            // `# check=` configures BuildKit's linter: accepted and ignored.
            _ => {}
        }
        seen.push(key);
    }
    Ok((directives, lines.len()))
}

/// Matches `#[ \t]*key[ \t]*=[ \t]*value` (BuildKit's directive regex) on a left-trimmed line.
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let key_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let rest = rest.trim_start_matches([' ', '\t']).strip_prefix('=')?;
    let value = rest.trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    Some((key, value))
}

/// Reads logical instructions from physical lines: skips comments and blank lines, joins
/// continuation lines, and collects heredoc bodies.
struct Source<'a> {
    lines: &'a [&'a str],
    pos: usize,
    /// Line number of `lines[0]`.
    first_line: usize,
    escape: char,
}

/// One instruction as text, before interpretation.
struct RawInstruction {
    line: usize,
    /// Continuations joined, heredoc bodies excluded.
    text: String,
    heredocs: Vec<Heredoc>,
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

impl Source<'_> {
    fn line_no(&self, index: usize) -> usize {
        self.first_line + index
    }

    /// Removes a trailing escape character (optionally followed by blanks); returns whether the
    /// line is complete (had no continuation).
    fn trim_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(self.escape) {
            Some(rest) => (rest, false),
            None => (line, true),
        }
    }

    fn next_instruction(&mut self) -> Result<Option<RawInstruction>, ParseError> {
        while self.pos < self.lines.len() {
            let index = self.pos;
            self.pos += 1;
            let physical = self.lines[index];
            if is_comment(physical) {
                continue;
            }
            let (first, mut complete) = self.trim_continuation(physical.trim_start());
            if complete && first.trim().is_empty() {
                continue;
            }
            let mut text = first.to_string();
            while !complete && self.pos < self.lines.len() {
                let next = self.lines[self.pos];
                self.pos += 1;
                // Comment and empty lines inside a continuation are dropped (BuildKit warns
                // about the empty ones but accepts them).
                if is_comment(next) || next.trim_start().is_empty() {
                    continue;
                }
                let (part, done) = self.trim_continuation(next);
                text.push_str(part);
                complete = done;
            }
            let text = text.trim().to_string();
            let line = self.line_no(index);
            let heredocs = self.read_heredocs(&text, line)?;
            return Ok(Some(RawInstruction {
                line,
                text,
                heredocs,
            }));
        }
        Ok(None)
    }

    /// Reads the bodies of the heredocs that `text` opens, in order, from the following lines.
    fn read_heredocs(&mut self, text: &str, line: usize) -> Result<Vec<Heredoc>, ParseError> {
        let mut out = Vec::new();
        for marker in heredoc_markers(text) {
            let mut body = String::new();
            let mut terminated = false;
            while self.pos < self.lines.len() {
                let physical = self.lines[self.pos];
                self.pos += 1;
                let candidate = if marker.chomp {
                    physical.trim_start_matches('\t')
                } else {
                    physical
                };
                if candidate == marker.name {
                    terminated = true;
                    break;
                }
                body.push_str(candidate);
                body.push('\n');
            }
            if !terminated {
                return err(
                    line,
                    format!(
                        "unterminated heredoc <<{}: add a line containing only `{}` after its body",
                        marker.name, marker.name
                    ),
                );
            }
            out.push(Heredoc {
                name: marker.name,
                content: body,
                expand: marker.expand,
            });
        }
        Ok(out)
    }
}

/// What a `<<NAME` word declares.
struct HeredocMarker {
    name: String,
    chomp: bool,
    expand: bool,
}

/// Recognises a heredoc word like BuildKit's `^(\d*)<<(-?)([^<]*)$`, quotes removed from the
/// name; a quoted name (`<<"EOF"`, `<<'EOF'`) disables expansion of the body.
fn parse_heredoc_word(word: &str) -> Option<HeredocMarker> {
    let rest = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let expand = !rest.contains(['"', '\'']);
    let name: String = rest.chars().filter(|&c| c != '"' && c != '\'').collect();
    if name.is_empty() {
        return None;
    }
    Some(HeredocMarker {
        name,
        chomp,
        expand,
    })
}

/// The heredocs an instruction line opens: only RUN, COPY and ADD in shell form (and the same
/// as an ONBUILD trigger) can have them.
fn heredoc_markers(text: &str) -> Vec<HeredocMarker> {
    let (keyword, _, args) = split_command(text);
    let mut keyword = keyword.to_ascii_uppercase();
    let mut args = args;
    if keyword == "ONBUILD" {
        let (sub, _, sub_args) = split_command(&args);
        keyword = sub.to_ascii_uppercase();
        args = sub_args;
    }
    if !matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") || parse_json_array(&args).is_some() {
        return Vec::new();
    }
    split_raw_words(&args, '\\')
        .iter()
        .filter_map(|w| parse_heredoc_word(w))
        .collect()
}

/// Splits `KEYWORD --flags… rest` (BuildKit `splitCommand` + `extractBuilderFlags`): flags are
/// the leading words that start with `--`, with quotes and backslashes processed; a bare `--`
/// ends them.
fn split_command(text: &str) -> (String, Vec<String>, String) {
    let text = text.trim();
    let (keyword, rest) = match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    };
    let (flags, rest) = extract_flags(rest);
    (keyword.to_string(), flags, rest.trim().to_string())
}

fn extract_flags(line: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut rest = line;
    loop {
        let trimmed = rest.trim_start();
        if !trimmed.starts_with("--") {
            return (flags, trimmed);
        }
        // Read one word, honouring quotes and backslashes.
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        let mut iter = trimmed.char_indices();
        let mut end = trimmed.len();
        while let Some((i, c)) = iter.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '"' || c == '\'' => {
                    quote = Some(c);
                    blank_ok = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if let Some((_, n)) = iter.next() {
                        word.push(n);
                    }
                }
                _ => word.push(c),
            }
        }
        rest = &trimmed[end..];
        if word == "--" && !blank_ok {
            return (flags, rest.trim_start());
        }
        if blank_ok || !word.is_empty() {
            flags.push(word);
        }
    }
}

/// Splits on whitespace, keeping quotes and escapes in the words (BuildKit `parseWords`).
fn split_raw_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None => {
                if c.is_whitespace() {
                    if in_word && (blank_ok || !word.is_empty()) {
                        words.push(std::mem::take(&mut word));
                    }
                    in_word = false;
                    blank_ok = false;
                    continue;
                }
                in_word = true;
                if c == '"' || c == '\'' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    // A trailing escape is dropped; otherwise keep it with the escaped char.
                    let Some(n) = chars.next() else { continue };
                    word.push(c);
                    word.push(n);
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
                if c == escape && q != '\'' {
                    let Some(n) = chars.next() else {
                        quote = None;
                        continue;
                    };
                    word.push(c);
                    word.push(n);
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// The exec form: a JSON array of strings. `None` when the text is not a JSON array (then it is
/// shell form); `Some(Err)` when it is an array with non-string members. Like Docker (Go's
/// `json.Decoder`), text after the closing `]` is ignored.
fn parse_json_array(text: &str) -> Option<Result<Vec<String>, String>> {
    let text = text.trim();
    if !text.starts_with('[') {
        return None;
    }
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    let Some(Ok(serde_json::Value::Array(items))) = stream.next() else {
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            serde_json::Value::String(s) => out.push(s),
            other => {
                return Some(Err(format!(
                    "when using JSON array syntax, arrays must contain only strings (found {other})"
                )))
            }
        }
    }
    Some(Ok(out))
}

enum Parsed {
    From {
        base: String,
        platform: Option<String>,
        name: Option<String>,
    },
    Other(Located),
}

fn keyword_of(text: &str) -> String {
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Str,
    Bool,
    List,
}

/// Parsed `--flag` values of one instruction.
#[derive(Default)]
struct Flags {
    strings: HashMap<&'static str, String>,
    bools: HashMap<&'static str, bool>,
    lists: HashMap<&'static str, Vec<String>>,
}

impl Flags {
    fn string(&mut self, name: &str) -> Option<String> {
        self.strings.remove(name)
    }
    fn boolean(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }
    fn list(&mut self, name: &str) -> Vec<String> {
        self.lists.remove(name).unwrap_or_default()
    }
}

fn parse_flags(
    keyword: &str,
    flags: &[String],
    spec: &[(&'static str, FlagKind)],
    line: usize,
) -> Result<Flags, ParseError> {
    let mut out = Flags::default();
    for flag in flags {
        let body = flag.strip_prefix("--").unwrap_or(flag);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(&(name, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            let accepted = if spec.is_empty() {
                format!("{keyword} takes no flags")
            } else {
                let names: Vec<String> = spec.iter().map(|(n, _)| format!("--{n}")).collect();
                format!("{keyword} accepts {}", names.join(", "))
            };
            return err(
                line,
                format!("unknown flag --{name} for {keyword}: {accepted}"),
            );
        };
        match kind {
            FlagKind::Bool => {
                let v = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(_) => {
                        return err(
                            line,
                            format!(
                                "flag --{name} of {keyword} expects true or false, not `{}`",
                                value.unwrap_or_default()
                            ),
                        )
                    }
                };
                if out.bools.insert(name, v).is_some() {
                    return err(line, format!("flag --{name} of {keyword} is given twice"));
                }
            }
            FlagKind::Str | FlagKind::List => {
                let Some(value) = value else {
                    return err(
                        line,
                        format!("flag --{name} of {keyword} needs a value: write --{name}=<value>"),
                    );
                };
                if kind == FlagKind::List {
                    out.lists.entry(name).or_default().push(value.to_string());
                } else if out.strings.insert(name, value.to_string()).is_some() {
                    return err(line, format!("flag --{name} of {keyword} is given twice"));
                }
            }
        }
    }
    Ok(out)
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
fn interpret(raw: RawInstruction, escape: char) -> Result<Parsed, ParseError> {
    let RawInstruction {
        line,
        text,
        heredocs,
    } = raw;
    let (keyword_raw, flags, args) = split_command(&text);
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
            let mut f = parse_flags(&keyword, &flags, &[("platform", FlagKind::Str)], line)?;
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_] => None,
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    let lower = name.to_ascii_lowercase();
                    if !valid_stage_name(&lower) {
                        return err(
                            line,
                            format!("invalid name for build stage: `{name}`: it must start with a letter and contain only letters, digits, '-', '_' and '.'"),
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
            Ok(Parsed::From { base: words[0].to_string(), platform: f.string("platform"), name })
        }
        "RUN" => {
            let mut f = parse_flags(
                &keyword,
                &flags,
                &[
                    ("mount", FlagKind::List),
                    ("network", FlagKind::Str),
                    ("security", FlagKind::Str),
                ],
                line,
            )?;
            let network = f.string("network");
            if let Some(n) = &network {
                if !matches!(n.as_str(), "default" | "none" | "host") {
                    return err(
                        line,
                        format!("unsupported network mode `{n}` for RUN --network: use default, none or host"),
                    );
                }
            }
            let security = f.string("security");
            if let Some(s) = &security {
                if !matches!(s.as_str(), "sandbox" | "insecure") {
                    return err(
                        line,
                        format!("unsupported security mode `{s}` for RUN --security: use sandbox or insecure"),
                    );
                }
            }
            require_args(&args)?;
            let command = match parse_json_array(&args) {
                Some(Ok(list)) => Some(ShellOrExec::Exec(list)),
                Some(Err(e)) => return err(line, e),
                None => {
                    let words = split_raw_words(&args, '\\');
                    let only_heredoc = words.len() == 1 && parse_heredoc_word(&words[0]).is_some();
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
                mounts: f.list("mount"),
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
            let spec: &[(&'static str, FlagKind)] = if keyword == "COPY" {
                &[
                    ("from", FlagKind::Str),
                    ("chown", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("exclude", FlagKind::List),
                    ("parents", FlagKind::Bool),
                ]
            } else {
                &[
                    ("chown", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("exclude", FlagKind::List),
                    ("checksum", FlagKind::Str),
                    ("keep-git-dir", FlagKind::Bool),
                ]
            };
            let mut f = parse_flags(&keyword, &flags, spec, line)?;
            let mut words = match parse_json_array(&args) {
                Some(Ok(list)) => list,
                Some(Err(e)) => return err(line, e),
                None => args.split_whitespace().map(str::to_string).collect(),
            };
            if words.len() < 2 {
                return err(
                    line,
                    format!("{keyword} requires at least two arguments: one or more sources and a destination"),
                );
            }
            let dest = words.pop().unwrap_or_default();
            if parse_heredoc_word(&dest).is_some() {
                return err(line, format!("{keyword} cannot use a heredoc as its destination"));
            }
            let sources = words
                .into_iter()
                .map(|w| parse_heredoc_word(&w).map_or(w, |m| m.name))
                .collect();
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
                    return err(line, format!("ARG `{word}` has no name: write ARG NAME[=default]"));
                }
                decls.push(ArgDecl { name, default });
            }
            located(Instruction::Arg(decls))
        }
        "EXPOSE" => {
            no_flags(&flags)?;
            require_args(&args)?;
            located(Instruction::Expose(args.split_whitespace().map(str::to_string).collect()))
        }
        "VOLUME" => {
            no_flags(&flags)?;
            require_args(&args)?;
            let paths = match parse_json_array(&args) {
                Some(Ok(list)) => list,
                Some(Err(e)) => return err(line, e),
                None => args.split_whitespace().map(str::to_string).collect(),
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
            format!("unknown instruction: {keyword_raw} (expected one of FROM, RUN, CMD, LABEL, MAINTAINER, EXPOSE, ENV, ADD, COPY, ENTRYPOINT, VOLUME, USER, WORKDIR, ARG, ONBUILD, STOPSIGNAL, HEALTHCHECK, SHELL)"),
        ),
    }
}

fn interpret_healthcheck(
    keyword: &str,
    flags: &[String],
    args: &str,
    line: usize,
) -> Result<Instruction, ParseError> {
    let (kind, rest) = match args.find(char::is_whitespace) {
        Some(i) => (&args[..i], args[i..].trim()),
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
    let mut f = parse_flags(
        keyword,
        flags,
        &[
            ("interval", FlagKind::Str),
            ("timeout", FlagKind::Str),
            ("start-period", FlagKind::Str),
            ("start-interval", FlagKind::Str),
            ("retries", FlagKind::Str),
        ],
        line,
    )?;
    if !kind.eq_ignore_ascii_case("CMD") {
        return err(
            line,
            format!("unknown type `{kind}` in HEALTHCHECK: use CMD or NONE"),
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
                Some(_) => err(line, format!("HEALTHCHECK --{name}=`{v}` cannot be less than 1ms")),
                None => err(
                    line,
                    format!("HEALTHCHECK --{name}=`{v}` is not a duration: write e.g. 30s, 1m30s or 500ms"),
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
                    format!("HEALTHCHECK --retries=`{v}` is not a non-negative integer"),
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
        let Some(i) = args.find(char::is_whitespace) else {
            return err(
                line,
                format!("{keyword} `{args}` has no value: write {keyword} {args}=<value>"),
            );
        };
        return Ok(vec![(
            args[..i].to_string(),
            args[i..].trim_start().to_string(),
        )]);
    }
    let mut pairs = Vec::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return err(
                line,
                format!("syntax error: can't find = in `{word}`: {keyword} entries must be of the form name=value"),
            );
        };
        if key.is_empty() {
            return err(
                line,
                format!("{keyword} names can not be blank (in `{word}`)"),
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
    fn directive_matching() {
        assert_eq!(directive("# escape=`"), Some(("escape", "`")));
        assert_eq!(
            directive("#syntax = docker/dockerfile:1 "),
            Some(("syntax", "docker/dockerfile:1"))
        );
        assert_eq!(directive("# just a comment"), None);
        assert_eq!(directive("# key="), None);
        assert_eq!(directive("RUN x"), None);
    }

    #[test]
    fn flags_are_extracted_with_quotes_removed() {
        let (kw, flags, rest) = split_command("COPY --chown=\"a b\" --link  src dst");
        assert_eq!(kw, "COPY");
        assert_eq!(flags, ["--chown=a b", "--link"]);
        assert_eq!(rest, "src dst");
        let (_, flags, rest) = split_command("RUN -- --not-a-flag");
        assert!(flags.is_empty());
        assert_eq!(rest, "--not-a-flag");
    }

    #[test]
    fn raw_words_keep_quotes_and_escapes() {
        assert_eq!(
            split_raw_words(r#"a="x y" b=\"c"#, '\\'),
            [r#"a="x y""#, r#"b=\"c"#]
        );
        assert_eq!(split_raw_words("'' x", '\\'), ["''", "x"]);
    }

    #[test]
    fn heredoc_words() {
        let m = parse_heredoc_word("<<-\"EOT\"").unwrap();
        assert_eq!((m.name.as_str(), m.chomp, m.expand), ("EOT", true, false));
        assert!(parse_heredoc_word("<<").is_none());
        assert!(parse_heredoc_word("a<<EOF").is_none());
        assert!(parse_heredoc_word("2<<EOF").is_some());
    }

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

    #[test]
    fn parse_instruction_reads_one_trigger() {
        let l = parse_instruction("RUN <<EOF\necho hi\nEOF", 7, '\\').unwrap();
        assert_eq!(l.line, 7);
        assert_eq!(l.original, "RUN <<EOF");
        match l.instruction {
            Instruction::Run(r) => {
                assert_eq!(r.command, None);
                assert_eq!(r.heredocs[0].content, "echo hi\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_instruction("FROM x", 1, '\\').is_err());
        assert!(parse_instruction("RUN a\nRUN b", 1, '\\')
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
