//! Dockerfile text → [`Dockerfile`], following BuildKit's parser: directives, comments,
//! continuations, heredocs, flags and the per-instruction argument forms. Values stay raw
//! (no variable expansion here: that is [`super::expand`]'s job at build time), and nothing is
//! read from disk or executed.

mod flags;
mod heredoc;
mod instructions;
mod mounts;
pub use flags::FlagKind;
pub use mounts::{mount_fields, mount_keys};
mod source;
mod words;

use std::collections::HashMap;

use super::ast::{Dockerfile, Instruction, Located, Stage};
use crate::excerpt::{bounded, excerpt, MESSAGE_BYTES};
use instructions::{interpret, keyword_of, Parsed};
use source::{parse_directives, physical_lines, Source};

/// A Dockerfile that cannot be parsed; `line` is 1-based (the line where the instruction starts).
/// The message quotes the Dockerfile only through bounded excerpts ([`crate::excerpt`]), and
/// its display is one line of bounded length whatever the message holds.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {}", bounded(message, MESSAGE_BYTES))]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

pub(super) fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// Every flag the parser accepts, by instruction (upper-case keyword): its own table.
pub fn instruction_flags() -> impl Iterator<Item = (&'static str, &'static str, FlagKind)> {
    instructions::INSTRUCTION_FLAGS
        .iter()
        .flat_map(|(keyword, flags)| {
            flags
                .iter()
                .map(move |(name, kind)| (*keyword, *name, *kind))
        })
}

/// Parses a Dockerfile read as bytes: it must be UTF-8 (a leading byte-order mark is allowed);
/// otherwise the error names the line and byte offset of the first invalid sequence.
pub fn parse_bytes(bytes: &[u8]) -> Result<Dockerfile, ParseError> {
    parse(decode(bytes)?)
}

/// `bytes` as UTF-8 text, or an error naming the line and byte offset where it is not.
pub fn decode(bytes: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        let (line, column) = position(bytes, offset);
        ParseError {
            line,
            message: format!(
                "invalid UTF-8 at byte offset {offset} ({column} bytes into the line): a Dockerfile must be UTF-8 text"
            ),
        }
    })
}

/// The 1-based line holding byte `offset` of `bytes`, and how many bytes into it `offset` is.
fn position(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (line, before.len() - start)
}

/// Parses a whole Dockerfile (a NUL byte anywhere is refused, with its position).
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    // A NUL byte is never part of a Dockerfile (no command or path can hold one): refuse it
    // with its position rather than fail later on a mangled instruction.
    if let Some(offset) = text.bytes().position(|b| b == 0) {
        let (line, column) = position(text.as_bytes(), offset);
        return err(
            line,
            format!("NUL byte at byte offset {offset} ({column} bytes into the line): a Dockerfile is text; is this a binary file?"),
        );
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = physical_lines(text);
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
                            format!("duplicate stage name `{}` (already used on line {first}): give each stage a unique name", excerpt(name)),
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
    let lines = physical_lines(text);
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
                excerpt(&extra.text)
            ),
        );
    }
    match interpret(raw, escape)? {
        Parsed::Other(located) => Ok(located),
        Parsed::From { .. } => err(start, "FROM is not allowed here: it can only start a stage"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
